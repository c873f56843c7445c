"""In CI a test may not pass by skipping for want of Docker, Chromium or a Prefect server."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SKIPPING = """
import pytest

@pytest.mark.skipif(True, reason="no Docker engine answers here")
def test_needs_docker():
    pass

@pytest.mark.skipif(True, reason="this machine has CUDA")
def test_other_skip():
    pass
"""


@pytest.mark.parametrize(("ci", "outcomes"), [("true", {"errors": 1, "skipped": 1}),
                                              ("", {"skipped": 2})])  # fmt: skip
def test_a_skip_for_missing_infrastructure_fails_in_ci(pytester, monkeypatch, ci, outcomes) -> None:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_skipping=SKIPPING)
    monkeypatch.setenv("CI", ci)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(**outcomes)
    if ci:
        result.stdout.fnmatch_lines(["*skipped in CI, where it must run*no Docker engine*"])

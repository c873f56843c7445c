from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Prefect keeps its database and results here, never in the user's home, and stays offline.
_PREFECT_HOME = tempfile.mkdtemp(prefix="prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["PREFECT_SERVER_LOGGING_LEVEL"] = "WARNING"


# Skips that mean "this machine lacks what the test needs" (a Docker engine, Chromium). In CI
# (CI=true, as .ci/run sets) the machine must have them: such a skip fails the run instead of
# letting it pass untested.
INFRASTRUCTURE = ("no Docker engine", "no Chromium", "no Prefect server")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci():
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
        if any(what in reason for what in INFRASTRUCTURE):
            report.outcome = "failed"
            report.longrepr = f"skipped in CI, where it must run: {reason}"


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    from tasks._common import LOCAL_SERVER_STARTUP_SECONDS

    with prefect_test_harness(server_startup_timeout=LOCAL_SERVER_STARTUP_SECONDS):
        yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_server) -> str:
    """That server's API, for commands run in processes of their own (which would otherwise
    each start a temporary server: seconds apiece)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture
def textured() -> np.ndarray:
    """A 64x64 RGB image with texture everywhere (a crop of a real photo)."""
    from deepfake.sources.sample import SAMPLE_PHOTOS, photo_path

    _, package, name = SAMPLE_PHOTOS[0]
    image = Image.open(photo_path(package, name)).convert("RGB")
    return np.asarray(image.crop((200, 200, 264, 264))).copy()


def png_bytes(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path: Path, textured: np.ndarray) -> Path:
    """A user folder: good images in nested folders plus one empty and one garbage file."""
    root = tmp_path / "photos"
    (root / "a" / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        noisy = np.clip(textured.astype(int) + rng.integers(-20, 20, textured.shape), 0, 255)
        folder = root if i % 2 else root / "a" / "b"
        fmt, ext = ("JPEG", "jpg") if i % 3 == 0 else ("PNG", "png")
        (folder / f"img{i}.{ext}").write_bytes(png_bytes(noisy.astype(np.uint8), fmt=fmt))
    (root / "empty.png").write_bytes(b"")
    (root / "a" / "not_an_image.jpg").write_bytes(b"hello, I am text")
    (root / "notes.txt").write_text("ignored: not an image suffix")
    return root


@pytest.fixture(scope="session")
def loopback_stack(tmp_path_factory):
    """`prefect server start` on loopback (its UI too), stopped at the end with its workers."""
    from tests.loopback import Stack

    stack = Stack(tmp_path_factory.mktemp("loopback"))
    stack.start(
        "server", "start", "--host", "127.0.0.1", "--port", str(stack.port), log="server.log"
    )
    try:
        stack.wait_healthy()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def deployed_pipeline_run(loopback_stack):
    """One run of the pipeline-local deployment on the loopback stack: (flow run, worker logs)."""
    from tests.loopback import run_pipeline_deployment

    return run_pipeline_deployment(loopback_stack)

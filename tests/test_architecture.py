"""The library's shape: no import cycle, no Prefect inside it, registries light enough for the
settings to read."""

from __future__ import annotations

import ast

from tests.import_graph import LIBRARY, cycles, graph


def test_the_library_has_no_import_cycle() -> None:
    eager, _ = graph()
    assert len(eager) > 30
    assert cycles(eager) == []


def test_cycle_search_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_library_never_imports_prefect() -> None:
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            assert not any(n.split(".")[0] == "prefect" for n in names), path


def test_package_inits_only_re_export() -> None:
    for init in LIBRARY.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        kinds = {type(node).__name__ for node in tree.body[1:]}  # after the docstring
        assert kinds <= {"ImportFrom", "Assign"}, (init, kinds)


def test_prefect_is_pinned_once_and_the_server_image_falls_in_the_range() -> None:
    import re
    import tomllib
    from importlib import metadata
    from pathlib import Path

    import yaml
    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pins = [Requirement(r) for r in project["dependencies"] if r.startswith("prefect")]
    assert len(pins) == 1 and pins[0].name == "prefect"
    allowed = pins[0].specifier
    assert allowed.contains(metadata.version("prefect"))  # what is installed here
    compose = yaml.safe_load((root / "docker" / "compose.yaml").read_text())
    server = compose["services"]["prefect-server"]["image"]
    tag = re.fullmatch(r"prefecthq/prefect:(\d+\.\d+\.\d+)-python3\.\d+", server)
    assert tag and allowed.contains(tag.group(1)), server
    deployments = yaml.safe_load((root / "prefect.yaml").read_text())
    assert allowed.contains(str(deployments["prefect-version"]))
    assert not allowed.contains("3.8.2")  # the websocket of older clients fails auth
    for dockerfile in (root / "docker").glob("Dockerfile*"):  # no second pin in the images
        assert (
            "prefect==" not in dockerfile.read_text() and "prefect>=" not in dockerfile.read_text()
        )

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

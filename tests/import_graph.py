"""The library's import graph, from its source (nothing is imported), and its cycles.

    python -m tests.import_graph          # every module and the library modules it imports

An edge is a module-level import of another ``deepfake`` module (imports inside functions run
later and are listed apart, as "lazy"); importing ``deepfake.a.b`` imports package ``deepfake.a``
first, so that is an edge too. The tests assert that the graph has no cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "deepfake"


def module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _target(name: str, modules: set[str]) -> str | None:
    """The library module an imported dotted name refers to (a module, or a name in one)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(tree: ast.Module, modules: set[str]) -> tuple[set[str], set[str]]:
    """(module-level imports, imports inside functions) of library modules."""
    eager: set[str] = set()
    lazy: set[str] = set()

    def visit(node: ast.AST, inside_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return  # only for type checkers: never runs
        if isinstance(node, ast.Import | ast.ImportFrom):
            bases = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [f"{node.module}.{alias.name}" for alias in node.names]
            )
            for base in bases:
                found = _target(base, modules)
                if found:
                    (lazy if inside_function else eager).add(found)
            return
        for child in ast.iter_child_nodes(node):
            nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, inside_function or nested)

    visit(tree, False)
    return eager, lazy


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> modules it imports at import time, module -> modules it imports lazily)."""
    paths = {module_name(p): p for p in sorted(LIBRARY.rglob("*.py"))}
    modules = set(paths)
    eager, lazy = {}, {}
    for name, path in paths.items():
        eager[name], lazy[name] = imports(ast.parse(path.read_text()), modules)
        parent = name.rpartition(".")[0]
        if parent in modules:  # a submodule's package is imported before it
            eager[name].add(parent)
        eager[name].discard(name)
        lazy[name] -= eager[name] | {name}
    return eager, lazy


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (each reported once, from where it closes)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def main() -> int:
    eager, lazy = graph()
    for name in sorted(eager):
        line = f"{name} -> {', '.join(sorted(eager[name])) or '(nothing)'}"
        if lazy[name]:
            line += f"   [lazy: {', '.join(sorted(lazy[name]))}]"
        print(line)
    found = cycles(eager)
    edges = sum(map(len, eager.values()))
    print(f"\n{len(eager)} modules, {edges} import-time edges, {len(found)} cycles")
    for cycle in found:
        print(f"  cycle: {' -> '.join(cycle)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

"""The package's import graph: nothing in dql_model imports jobs/, and no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dql_model"


def imports() -> dict[str, set[str]]:
    """Module -> every dql_model module or top-level package it imports, at module level or inside functions."""
    modules = {}
    for file in PACKAGE.rglob("*.py"):
        name = ".".join(file.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = file
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        found = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m.split(".")[0] in ("dql_model", "jobs")} - {name, "dql_model"}
    return graph


def test_dql_model_never_imports_jobs():
    offenders = {name: sorted(m for m in used if m.split(".")[0] == "jobs") for name, used in imports().items()}
    assert {name: used for name, used in offenders.items() if used} == {}


def test_no_import_cycles():
    graph = imports()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == path[0]:
                cycles.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest module
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert cycles == []


def test_the_graph_sees_lazy_imports():
    """A check that finds nothing must be able to find something: tasks imports gate inside a function."""
    assert "dql_model.gate" in imports()["dql_model.tasks"]

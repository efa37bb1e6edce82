"""The package's import graph: role packages in one downward order, no circles, nothing in dql_model imports jobs/.

The order, lowest first (a package may import its own modules and any package on a lower floor;
packages on the same floor never import each other):

    errors, faults           standard library only: what bad input is, where a test may kill a run
    contract                 schemas, warehouse paths, row rules, step names (no I/O)
    config                   one dataclass per concern, YAML and environment overrides
    warehouse                storage, locks, run dates, quality gates, stored rows -> arrays
    evaluation | simulation | publishing | ops | importers
    learning                 sequences, networks, agent, training loop, device, registry
    scoring                  tonight's lists from a registered model
    judging                  gate, baselines, off-policy night, simulated value, report
    pipeline                 the steps of a night, the shop loop
    cli
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dql_model"

FLOORS = (
    ("errors", "faults"),
    ("contract",),
    ("config",),
    ("warehouse",),
    ("evaluation", "simulation", "publishing", "ops", "importers"),
    ("learning",),
    ("scoring",),
    ("judging",),
    ("pipeline",),
    ("cli",),
)
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}
MAX_TOP_LEVEL_MODULES = 8


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    modules = {}
    for file in package.rglob("*.py"):
        name = ".".join(file.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = file
    return modules


def imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> every dql_model module or top-level package it imports, at module level or inside functions."""
    modules = module_files(package)
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        found = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                raise AssertionError(f"{file}: relative import; dql_model imports by absolute name only")
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m.split(".")[0] in ("dql_model", "jobs")} - {name, "dql_model"}
    return graph


def room(module: str) -> str:
    """dql_model.learning.train -> learning; dql_model.config -> config."""
    return module.split(".")[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a package above the importer's floor, or of another package on the same floor."""
    wrong = []
    for module, used in sorted(graph.items()):
        if module == "dql_model":
            continue
        here = room(module)
        for target in sorted(used):
            if target.split(".")[0] != "dql_model":
                continue
            there = room(target)
            if there != here and FLOOR[there] >= FLOOR[here]:
                wrong.append(f"{module} (floor {FLOOR[here]}, {here}) imports {target} (floor {FLOOR[there]}, {there})")
    return wrong


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == path[0]:
                found.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest module
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return found


def test_every_room_has_a_floor():
    rooms = {room(module) for module in imports() if module != "dql_model"}
    assert rooms - FLOOR.keys() == set(), "a new package or top-level module needs its floor in FLOORS"


def test_no_package_imports_one_above_it():
    assert upward_imports(imports()) == []


def test_few_top_level_modules():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_dql_model_never_imports_jobs():
    offenders = {name: sorted(m for m in used if m.split(".")[0] == "jobs") for name, used in imports().items()}
    assert {name: used for name, used in offenders.items() if used} == {}


def test_no_import_cycles():
    assert cycles(imports()) == []


def test_the_graph_sees_lazy_imports():
    """A check that finds nothing must be able to find something: the task bodies import the gate inside functions."""
    assert "dql_model.judging.gate" in imports()["dql_model.pipeline.tasks"]


def test_a_planted_upward_import_is_caught(tmp_path):
    """The order check on a copy of the package with one upward import added: it must name it."""
    import shutil

    copy = tmp_path / "dql_model"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    planted = copy / "warehouse" / "storage.py"
    planted.write_text(planted.read_text() + "\n\ndef _planted():\n    from dql_model.learning import train\n")
    wrong = upward_imports(imports(copy))
    assert wrong == ["dql_model.warehouse.storage (floor 3, warehouse) imports dql_model.learning.train (floor 5, learning)"]


def test_a_planted_circle_is_caught():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]

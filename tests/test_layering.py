"""The import arrows of docs/architecture.md: each package imports only what its layer may, nothing inside
core/ imports in a circle, and only the task modules (core/engine/tasks/) name a concrete task."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.engine.items import TARGET_ITEMS, ClassItems, MaskItems
from core.engine.rules import RULE_KINDS
from core.engine.tasks import TASKS
from core.jobs.kind_names import KIND_NAMES

ROOT = Path(__file__).resolve().parents[1]
OURS = {"core", "api", "worker", "cli", "migrations", "bench", "tests"}

# package -> fitcycle modules it may import (prefix match); anything of ours not listed is forbidden.
ALLOWED: dict[str, tuple[str, ...]] = {
    "core/engine": ("core.engine",),
    "core/datasets": (
        "core.datasets",
        "core.storage",
        "core.engine.items",
        "core.engine.rules",
        "core.engine.tasks",
        "core.engine.labelling",
        "core.engine.masks",
        "core.engine.images",
        "core.engine.errors",
        "core.engine.splits",
        "core.engine.paths",
        "core.engine.text.labels",
    ),
    "core/storage": ("core.storage", "core.config", "core.retry"),
    "core/db": ("core.db", "core.retry"),
    "core/jobs": ("core.jobs", "core.engine", "core.datasets", "core.storage"),
    "api": ("api", "core"),
    "worker": ("worker", "core"),
    "cli": (
        "cli",
        "api",
        "worker",
        "core.config",
        "core.logs",
        "core.jobs",
        "core.engine.errors",
        "core.engine.inference",
        "core.engine.text.bundle",
        "core.engine.rules",
        "core.engine.splits",
        "core.datasets.samples",
        "core.datasets.text_samples",
    ),
}
# The engine must stay free of databases, brokers and HTTP.
ENGINE_FORBIDDEN_THIRD_PARTY = (
    "sqlalchemy",
    "celery",
    "kombu",
    "redis",
    "fastapi",
    "starlette",
    "minio",
    "httpx",
    "requests",
    "alembic",
)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_its_layer_may(package: str) -> None:
    bad = []
    for path in _files(package):
        for name in _imports(path):
            if name.split(".")[0] not in OURS:
                continue
            if not any(name == a or name.startswith(a + ".") for a in ALLOWED[package]):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_engine_imports_no_db_broker_or_http_code() -> None:
    bad = [
        f"{p.relative_to(ROOT)} imports {n}"
        for p in _files("core/engine")
        for n in _imports(p)
        if n.split(".")[0] in ENGINE_FORBIDDEN_THIRD_PARTY
    ]
    assert not bad, "\n".join(bad)


def test_the_layering_test_sees_the_engine() -> None:
    assert len(_files("core/engine")) > 10


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _names_a_task(node: ast.AST) -> str | None:
    """The task a comparison names (`task == "segmentation"`, `kind in ("points", "values")`), or None."""
    if not isinstance(node, ast.Compare):
        return None
    for side in [node.left, *node.comparators]:
        for c in ast.walk(side):
            if isinstance(c, ast.Constant) and c.value in TASKS:
                return str(c.value)
    return None


# Names a task shares with a labelling rule (labels="points") or a stored target kind: they may appear as
# those, never in a comparison that picks a behaviour.
SHARED_NAMES = set(RULE_KINDS) | set(TARGET_ITEMS) | {ClassItems.target_kind, MaskItems.target_kind}


@pytest.mark.parametrize("package", ["core", "api", "worker", "cli"])
def test_only_the_task_modules_name_a_concrete_task(package: str) -> None:
    """Outside core/engine/tasks/: no comparison with a task's name, no task name in a string (except the rule
    and target-kind names it shares), and no import of a concrete task module (the registry gives tasks)."""
    tasks_dir = ROOT / "core" / "engine" / "tasks"
    allowed_modules = {"core.engine.tasks", "core.engine.tasks.base"}
    bad = []
    for path in _files(package):
        if path.is_relative_to(tasks_dir):
            continue
        where = path.relative_to(ROOT)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            named = _names_a_task(node)
            if named is not None and isinstance(node, ast.Compare):
                bad.append(f"{where}:{node.lineno} compares with the task '{named}'")
            elif isinstance(node, ast.Constant) and node.value in TASKS and node.value not in SHARED_NAMES:
                bad.append(f"{where}:{node.lineno} names the task '{node.value}'")
        for name in _imports(path):
            if name.startswith("core.engine.tasks.") and name not in allowed_modules:
                bad.append(f"{where} imports {name}")
    assert not bad, "\n".join(bad)


def test_every_task_is_registered_with_its_own_items() -> None:
    assert set(TASKS) == {"classification", "multilabel", "points", "values", "segmentation"}
    assert len({t.items_type for t in TASKS.values()}) == len(TASKS)
    assert all(t.main_metric in t.metrics for t in TASKS.values())


def test_nothing_in_core_imports_in_a_circle() -> None:
    """No circle, counting imports inside functions and the package __init__ each import runs first. (The
    learner <-> callbacks <-> lr_finder circle ended with events.py.)"""
    modules = {_module(p): p for p in _files("core")}
    graph = {m: sorted(_edges(p, modules, type_hints=False) - {m}) for m, p in modules.items()}
    assert not _circles(graph), "\n".join(" -> ".join(c) for c in _circles(graph))


# Modules tied by type hints alone (`if TYPE_CHECKING:`): the Task <-> Learner/DataLoaders/Predictor and
# Callback <-> Learner circle of the engine, not yet broken with small protocols (as JobContext breaks the jobs'
# one). The list may only shrink: a module that leaves it must leave it here too, and nothing may join it.
TYPE_HINT_CIRCLE = {
    "core.engine.callbacks",
    "core.engine.data",
    "core.engine.distributed",
    "core.engine.events",
    "core.engine.export",
    "core.engine.inference",
    "core.engine.interpret",
    "core.engine.learner",
    "core.engine.lr_finder",
    "core.engine.tasks",
    "core.engine.tasks.base",
    "core.engine.tasks.classification",
    "core.engine.tasks.multilabel",
    "core.engine.tasks.points",
    "core.engine.tasks.regression",
    "core.engine.tasks.segmentation",
    "core.engine.tasks.values",
}


def test_type_hints_tie_no_new_modules_into_a_circle() -> None:
    modules = {_module(p): p for p in _files("core")}
    graph = {m: sorted(_edges(p, modules, type_hints=True) - {m}) for m, p in modules.items()}
    tied = {m for component in _strongly_connected(graph) if len(component) > 1 for m in component}
    assert tied == TYPE_HINT_CIRCLE, (
        f"joined: {sorted(tied - TYPE_HINT_CIRCLE)}; left: {sorted(TYPE_HINT_CIRCLE - tied)}"
    )


def _strongly_connected(graph: dict[str, list[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in graph[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = set()
            while True:
                n = stack.pop()
                component.add(n)
                if n == m:
                    break
            found.append(component)

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return found


def _edges(path: Path, modules: dict[str, Path], type_hints: bool) -> set[str]:
    """The modules of `modules` that importing `path` runs (with `type_hints`, also those it imports for type
    checking): each named module and the packages above it (but not the importer's own packages, which are
    already running when it imports a sibling)."""
    own = _module(path).split(".")
    mine = {".".join(own[:i]) for i in range(1, len(own) + 1)}
    found: set[str] = set()
    for name in _all_imports(path, type_hints):
        parts = name.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - mine
    return found & set(modules)


def _all_imports(path: Path, type_hints: bool) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = (
        set()
        if type_hints
        else {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for part in node.body
            for n in ast.walk(part)
        }
    )
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _circles(graph: dict[str, list[str]]) -> list[list[str]]:
    circles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                circles.append([*path[path.index(n) :], n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return circles


def _kind_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Where a module writes a job kind's name as kind knowledge: compared with (`kind == "stage2"`, `in
    ("stage2", ...)`), passed or stored as a kind (`kind="retrain"`, `{"kind": "retrain"}`), keyed by kinds
    (`{"stage1": ...}`), or listed with another kind. Phase tags ("stage1" of fine_tune's phases, a timer's
    "lr_find") share the names and are not kind knowledge."""
    found: list[tuple[int, str]] = []

    def kinds_in(node: ast.AST) -> list[str]:
        return [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in KIND_NAMES]

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            found += [(node.lineno, k) for k in kinds_in(node)]
        elif isinstance(node, ast.keyword) and node.arg == "kind":
            found += [(node.value.lineno, k) for k in kinds_in(node.value)]
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "kind":
                    found += [(value.lineno, k) for k in kinds_in(value)]
            keyed = [k.value for k in node.keys if isinstance(k, ast.Constant) and k.value in KIND_NAMES]
            if len(keyed) >= 2:
                found += [(node.lineno, k) for k in keyed]
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            listed = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in KIND_NAMES]
            if len(listed) >= 2:
                found += [(node.lineno, k) for k in listed]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("Literal"):
            found += [(node.lineno, k) for k in kinds_in(node.slice)]
    return found


# The kinds' homes, and the engine, which knows no job kinds (its phases "stage1"/"stage2" share their names).
KIND_HOMES = (ROOT / "core" / "jobs" / "kinds", ROOT / "core" / "jobs" / "kind_names.py", ROOT / "core" / "engine")


@pytest.mark.parametrize("package", ["core", "api", "worker", "cli"])
def test_only_the_kinds_registry_names_a_job_kind(package: str) -> None:
    """Outside core/jobs/kinds/ (and kind_names.py, the names its types use) code asks the registry; the engine
    knows no job kinds at all."""
    bad = []
    for path in _files(package):
        if any(path == home or path.is_relative_to(home) for home in KIND_HOMES):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        bad += [f"{path.relative_to(ROOT)}:{line} names the job kind '{k}'" for line, k in _kind_literals(tree)]
    for template in sorted((ROOT / "api" / "ui" / "templates").glob("*.html")):
        text = template.read_text()
        bad += [f"{template.relative_to(ROOT)} names the job kind '{k}'" for k in KIND_NAMES if f'"{k}"' in text]
    assert not bad, "\n".join(bad)


def test_the_kind_rule_sees_kind_knowledge() -> None:
    """The rule catches each shape kind knowledge took before the registry (from the tree before issue 21)."""
    before = (
        'if job.kind == "stage2": pass\n'
        'ok = body.kind in ("stage2", "interpret", "retrain")\n'
        'JobCreate(kind="retrain", dataset_id=d)\n'
        'runners = {"fine_tune": a, "stage1": b}\n'
        'JobKind = Literal["fine_tune", "stage1"]\n'
        'DEMO = {"kind": "fine_tune"}\n'
    )
    assert len({line for line, _ in _kind_literals(ast.parse(before))}) == 6
    phases = 'Phase("stage1", "stage1", 1, 0.1)\nwith timer.phase("lr_find"): pass\n'
    assert _kind_literals(ast.parse(phases)) == []


def _task_result_keys() -> set[str]:
    """The keys a task's interpretation puts in a job's result (each task's `result_keys`)."""
    return {key for task in TASKS.values() for key in task.result_keys}


@pytest.mark.parametrize("package", ["core/jobs", "api", "worker", "cli"])
def test_no_task_result_key_outside_the_tasks(package: str) -> None:
    """What a task's result holds (per_class, mean_iou, thresholds, ...) is the task's: code outside
    core/engine/tasks/ asks it (`Task.headline`) rather than listing its keys. Keys the platform itself writes
    (error_rate, every classification job's headline; per_class, the gate's per-class scores of every task) are
    not task knowledge."""
    shared = {"error_rate", "per_class"}
    bad = []
    for path in _files(package):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in _task_result_keys() - shared:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} names the task result key '{node.value}'")
    assert not bad, "\n".join(bad)

"""The import arrows of docs/architecture.md: each package imports only what its layer may, nothing inside
core/ imports in a circle, and only the task modules (core/engine/tasks/) name a concrete task."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.engine.items import TARGET_ITEMS, ClassItems, MaskItems
from core.engine.rules import RULE_KINDS
from core.engine.tasks import TASKS

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
        "core.engine.rules",
        "core.datasets.samples",
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


def _runtime_imports(path: Path) -> list[str]:
    """Modules a file imports when it runs (at the top or inside functions; `if TYPE_CHECKING:` blocks left
    out), with `from package import module` resolved to the module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for part in node.body
        for n in ast.walk(part)
    }
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


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_nothing_in_core_imports_in_a_circle() -> None:
    """The learner <-> callbacks <-> lr_finder circle ended with events.py; keep it that way."""
    modules = {_module(p): p for p in _files("core")}
    graph = {m: sorted({n for n in _runtime_imports(p) if n in modules and n != m}) for m, p in modules.items()}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

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
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


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

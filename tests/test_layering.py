"""The import arrows of DESIGN.md: each package imports only what its layer may."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"core", "api", "worker", "cli", "migrations", "bench", "tests"}

# package -> fitcycle modules it may import (prefix match); anything of ours not listed is forbidden.
ALLOWED: dict[str, tuple[str, ...]] = {
    "core/engine": ("core.engine",),
    "core/datasets": (
        "core.datasets",
        "core.storage",
        "core.engine.labelling",
        "core.engine.masks",
        "core.engine.images",
        "core.engine.errors",
        "core.engine.splits",
        "core.engine.paths",
    ),
    "core/storage": ("core.storage", "core.config"),
    "core/db": ("core.db",),
    "core/jobs": ("core.jobs", "core.engine", "core.datasets", "core.storage"),
    "api": ("api", "core"),
    "worker": ("worker", "core"),
    "cli": (
        "cli",
        "api",
        "worker",
        "core.config",
        "core.jobs",
        "core.engine.errors",
        "core.engine.inference",
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

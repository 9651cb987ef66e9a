"""Shared fixtures: small real-image datasets written to disk once per session."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest
import torch

from core.datasets.samples import FASHION_DIR, write_sample

# Keep CPU tests from fighting over the machine's two cores, and make runs repeatable.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FASHION_4 = ["trouser", "bag", "sneaker", "dress"]

# The distributed stack (SeaweedFS, PostgreSQL, Redis, API and worker processes), shared by tests/platform and
# tests/security: started once per session, and only when a test asks for it.
pytest_plugins = ["tests.platform.stack"]


@pytest.fixture(scope="session", autouse=True)
def _require_fashion_mnist() -> None:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST is missing: run 'make setup' (it installs Debian's dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def fashion_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 Fashion-MNIST classes, 40 images each, 32 px, one folder per class."""
    return write_sample(
        "fashion-mnist", tmp_path_factory.mktemp("fashion") / "data", per_class=40, size=32, classes=FASHION_4
    )


@pytest.fixture(scope="session")
def fashion_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same kind of images, flat, labelled by labels.csv."""
    return write_sample(
        "fashion-mnist",
        tmp_path_factory.mktemp("fashion_csv") / "data",
        per_class=20,
        size=32,
        layout="csv",
        classes=FASHION_4,
    )


@pytest.fixture(scope="session")
def fashion_names(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Flat files named label_NNNN.png."""
    return write_sample(
        "fashion-mnist",
        tmp_path_factory.mktemp("fashion_re") / "data",
        per_class=20,
        size=32,
        layout="name_re",
        classes=FASHION_4,
    )


SCENARIO_STEP = pytest.StashKey[str]()


@pytest.fixture
def step(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Names the step a long scenario test is in (`step("upload")`): when it fails, its report says in which."""

    def enter(name: str) -> None:
        request.node.stash[SCENARIO_STEP] = name

    return enter


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and SCENARIO_STEP in item.stash:
        report.sections.append(("scenario", f"failed in step: {item.stash[SCENARIO_STEP]}"))

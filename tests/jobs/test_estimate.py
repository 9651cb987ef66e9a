"""An estimate before a job runs (issue 27, part 1), in the engine: the probe times the job's real model at its size,
and its kind's phases, named as the job's timings are, come out near what the job then takes. A small job is mostly
fixed costs, so the bound here is loose (half to twice); bench/estimate_accuracy.py measures 1-minute-plus jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.jobs.context import LocalJobContext
from core.jobs.kinds import get_kind
from core.jobs.runner import run_spec
from core.jobs.spec import TrainSpec
from core.jobs.training import label_items


def _spec(data: Path, **changes: Any) -> TrainSpec:
    fields: dict[str, Any] = {
        "data": str(data),
        "arch": "resnet18",
        "pretrained": "none",
        "size": 48,
        "bs": 16,
        "freeze_epochs": 1,
        "epochs": 3,
        "lr": 3e-3,
        "onnx": False,
    }
    return TrainSpec(**{**fields, **changes})


def test_the_probe_estimates_each_phase_the_job_then_takes(fashion_folder: Path, tmp_path: Path) -> None:
    spec = _spec(fashion_folder)
    probe = spec.model_copy(update={"kind": "estimate", "estimate_of": "fine_tune"})
    answer = run_spec(probe, LocalJobContext(tmp_path / "probe", show_progress=False))
    assert answer["estimate_of"] == "fine_tune"
    found = answer["estimate"]
    assert set(found["phases"]) == {"build", "fit:train", "interpretation", "export", "drift_reference"}
    assert found["total_seconds"] == pytest.approx(sum(found["phases"].values()), abs=0.01)
    assert found["peak_memory_bytes"] > 0 and found["stored_bytes"] > found["probe"]["bundle_bytes"] > 0
    assert (
        found["counts"]["n_train"] + found["counts"]["n_valid"] == 160
        and found["counts"]["train_batches"] == len(label_items(spec).indices(False)) // 16
    )

    result = run_spec(spec, LocalJobContext(tmp_path / "job", show_progress=False))
    actual = result["timings"]
    assert set(found["phases"]) <= set(actual)  # named as the job's own timings are
    ratio = actual["total"] / found["total_seconds"]
    assert 0.5 <= ratio <= 2.0, (found["phases"], actual)
    fit = actual["fit:train"] / found["phases"]["fit:train"]
    assert 0.5 <= fit <= 2.0, (found["phases"], actual)


def test_kinds_without_an_estimate_say_so(fashion_folder: Path, tmp_path: Path) -> None:
    assert get_kind("interpret").estimate is None and get_kind("estimate").internal
    probe = _spec(fashion_folder, kind="estimate", estimate_of="interpret", init_bundle="x")
    with pytest.raises(ValueError, match="has no estimate yet"):
        run_spec(probe, LocalJobContext(tmp_path, show_progress=False))

"""The fine-tune recipe as a job: stopped mid stage 2 and resumed from its checkpoint, it finishes with
the same weights, metrics and curves as a run that was never interrupted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from core.engine.callbacks import TrainingStopped
from core.jobs.context import LocalJobContext
from core.jobs.runner import run_train
from core.jobs.spec import TrainSpec


class StopInStage2(LocalJobContext):
    """A context whose job is cancelled right after its second mid-epoch checkpoint in stage 2."""

    def __init__(self, out: Path) -> None:
        super().__init__(out, show_progress=False)
        self.saved_mid_stage2 = 0

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        super().save_checkpoint(state)
        if state["tag"] == "stage2" and state["position"]["batch"] > 0:
            self.saved_mid_stage2 += 1

    def should_stop(self) -> bool:
        return self.saved_mid_stage2 >= 2


@pytest.fixture(scope="module")
def pretrained_bundle(fashion_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("source")
    spec = TrainSpec(
        data=str(fashion_folder), arch="resnet18", pretrained="none", size=32, bs=16, freeze_epochs=0, epochs=1, lr=5e-3
    )
    run_train(spec, LocalJobContext(out, show_progress=False))
    return out / "export"


def test_a_job_stopped_mid_stage2_resumes_to_the_same_result(
    fashion_csv: Path, pretrained_bundle: Path, tmp_path: Path
) -> None:
    spec = TrainSpec(
        data=str(fashion_csv),
        labels="csv",
        csv="labels.csv",
        arch="resnet18",
        pretrained=str(pretrained_bundle),
        size=32,
        bs=8,
        freeze_epochs=1,
        epochs=2,
        lr="find",
        checkpoint_every_n_steps=2,
        metrics=["error_rate"],
    )
    whole = run_train(spec, LocalJobContext(tmp_path / "whole", show_progress=False))

    crashed = StopInStage2(tmp_path / "crashed")
    with pytest.raises(TrainingStopped):
        run_train(spec, crashed)
    state = crashed.latest_checkpoint()
    assert state is not None and state["tag"] == "stage2" and state["position"]["batch"] == 4

    resumed = run_train(spec, LocalJobContext(tmp_path / "crashed", show_progress=False))
    assert resumed["error_rate"] == whole["error_rate"]
    assert [e["tag"] for e in resumed["epochs"]] == ["stage1", "stage2", "stage2"]  # no epoch twice
    assert [e["valid_loss"] for e in resumed["epochs"]] == pytest.approx([e["valid_loss"] for e in whole["epochs"]])
    assert resumed["lrs"] == whole["lrs"]  # lr_find is not run again: the chosen rate came from the checkpoint
    a = load_file(str(tmp_path / "whole" / "export" / "weights.safetensors"))
    b = load_file(str(tmp_path / "crashed" / "export" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


class StopAtSecondSize(LocalJobContext):
    """Cancelled right after the first mid-epoch checkpoint of the plan's second size."""

    def __init__(self, out: Path) -> None:
        super().__init__(out, show_progress=False)
        self.stop = False

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        super().save_checkpoint(state)
        self.stop = self.stop or (state["tag"] == "48px-stage1" and state["position"]["batch"] > 0)

    def should_stop(self) -> bool:
        return self.stop


def test_progressive_resizing_runs_each_size_and_resumes_inside_the_plan(
    fashion_folder: Path, pretrained_bundle: Path, tmp_path: Path
) -> None:
    spec = TrainSpec(
        data=str(fashion_folder),
        arch="resnet18",
        pretrained=str(pretrained_bundle),
        size=32,
        bs=16,
        freeze_epochs=1,
        epochs=1,
        lr=3e-3,
        checkpoint_every_n_steps=2,
        metrics=["error_rate"],
        plan=[{"size": 32}, {"size": 48, "epochs": 2}],
    )
    whole = run_train(spec, LocalJobContext(tmp_path / "whole", show_progress=False))
    assert [e["tag"] for e in whole["epochs"]] == [
        "32px-stage1",
        "32px-stage2",
        "48px-stage1",
        "48px-stage2",
        "48px-stage2",
    ]
    manifest = json.loads((tmp_path / "whole" / "export" / "manifest.json").read_text())
    assert manifest["input_size"] == 48  # the bundle serves the last size of the plan

    stopped = StopAtSecondSize(tmp_path / "resumed")
    with pytest.raises(TrainingStopped):
        run_train(spec, stopped)
    resumed = run_train(spec, LocalJobContext(tmp_path / "resumed", show_progress=False))
    assert [e["tag"] for e in resumed["epochs"]] == [e["tag"] for e in whole["epochs"]]
    a = load_file(str(tmp_path / "whole" / "export" / "weights.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "export" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

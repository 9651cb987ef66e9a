"""A job's fixed cost, kept small and measured: metrics.json says how long each phase took; interpretation,
thresholds and top losses come from the last validation pass (the same numbers a second pass gives) instead
of a second pass; every plot is written and reported before the job returns; and the CLI starts without
importing the engine."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from core.datasets.samples import write_mosaics, write_silhouette_masks, write_silhouette_points
from core.engine.interpret import KeepValidOutputs, kept_valid_outputs
from core.engine.learner import Learner
from core.jobs.context import LocalJobContext
from core.jobs.runner import run_spec
from core.jobs.spec import TrainSpec
from core.jobs.training import build_learner

SMALL = {"arch": "resnet18", "pretrained": "none", "size": 32, "bs": 16, "augment": False, "seed": 1}


class RecordingContext(LocalJobContext):
    """A local context that remembers which artifacts were reported, and from which thread."""

    def __init__(self, out: Path) -> None:
        super().__init__(out, show_progress=False)
        self.reported: list[tuple[str, int]] = []

    def artifact_written(self, name: str) -> None:
        assert (self.out / name).exists(), f"{name} reported before it was written"
        self.reported.append((name, threading.get_ident()))


def test_a_job_records_its_phases_reuses_the_last_validation_pass_and_writes_every_plot(
    fashion_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_second_pass(self: Learner) -> tuple[torch.Tensor, torch.Tensor]:
        raise AssertionError("the job predicted the validation set again")

    monkeypatch.setattr(Learner, "get_preds", no_second_pass)
    spec = TrainSpec(data=str(fashion_folder), freeze_epochs=1, epochs=1, lr=5e-3, **SMALL)
    ctx = RecordingContext(tmp_path)
    result = run_spec(spec, ctx)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    timings = metrics["timings"]
    assert timings == result["timings"]
    # From scratch the recipe is one phase of freeze_epochs + epochs epochs, tagged "train".
    phases = {"build", "show_batch", "fit:train", "interpretation", "export", "drift_reference", "plots"}
    assert set(timings) == phases | {"total"}
    assert all(isinstance(v, float) and v >= 0 for v in timings.values())
    assert sum(v for k, v in timings.items() if k != "total") <= timings["total"]
    assert timings["fit:train"] >= sum(e["seconds"] for e in metrics["epochs"])
    assert metrics["timings_background"]["plots"] > 0
    assert (tmp_path / "export" / "drift_reference.json").is_file()  # answered by the bundle, not get_preds

    plots = ["plots/show_batch.png", "plots/losses.png", "plots/confusion_matrix.png", "plots/top_losses.png"]
    for name in plots:
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and img.width > 100
    reported = [name for name, _ in ctx.reported]
    assert set(plots) <= set(reported) and reported[-1] == "metrics.json"
    assert {thread for _, thread in ctx.reported} == {threading.get_ident()}  # uploads stay on the job's thread
    interp = json.loads((tmp_path / "interpretation.json").read_text())
    assert interp["error_rate"] == pytest.approx(metrics["error_rate"])  # the same pass as the last epoch's


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory, fashion_folder: Path) -> dict[str, dict[str, Any]]:
    """A small dataset of each kind of target, as job spec fields."""
    root = tmp_path_factory.mktemp("kinds")
    return {
        "classification": {"data": str(fashion_folder)},
        "multilabel": {
            "data": str(write_mosaics(root / "mosaics", count=96, seed=1)),
            "labels": "csv",
            "csv": "labels.csv",
            "label_col": "tags",
            "label_delim": " ",
        },
        "points": {
            "data": str(write_silhouette_points(root / "points", count=72, seed=4)),
            "labels": "points",
            "csv": "points.csv",
        },
        "segmentation": {
            "data": str(write_silhouette_masks(root / "masks", count=48, side=32, seed=4)),
            "labels": "masks",
            "void": "void",
        },
    }


@pytest.mark.parametrize("kind", ["classification", "multilabel", "points", "segmentation"])
def test_interpretation_from_the_last_validation_pass_equals_a_second_pass(
    kind: str, datasets: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    spec = TrainSpec(**(SMALL | datasets[kind]), freeze_epochs=0, epochs=2)
    learn = build_learner(spec, LocalJobContext(tmp_path, show_progress=False)).learn
    learn.add_cbs([KeepValidOutputs()])
    learn.fit_one_cycle(2, 3e-3)

    kept = kept_valid_outputs(learn)
    assert kept is not None
    task = learn.dls.task
    reused = task.interpret(learn, None, kept)
    again = task.interpret(learn)  # the model in eval mode over the unaugmented validation loader, again
    assert reused.as_dict() == again.as_dict()  # every number, thresholds (multi-label) and top losses included

    # Weights changed after the pass (here by hand): the kept outputs no longer describe the model.
    with torch.no_grad():
        next(learn.model.parameters()).add_(1.0)
    assert kept_valid_outputs(learn) is None


def test_the_cli_starts_without_the_engine() -> None:
    code = (
        "import sys\n"
        "from cli.main import build_parser\n"
        "import cli.platform, cli.remote, cli.serve\n"
        "build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'matplotlib', 'PIL', 'numpy') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr

    from cli import main, remote
    from core.engine.rules import RULE_KINDS
    from core.jobs import spec

    # The CLI names these itself, to start without importing the engine; they must stay the engine's.
    assert main.DEFAULT_ARCH == spec.DEFAULT_ARCH
    assert remote.RULE_KINDS == RULE_KINDS

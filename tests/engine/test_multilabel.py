"""Multi-label classification on real images (2x2 Fashion-MNIST mosaics): sigmoid head, BCE,
accuracy_thresh and fbeta, per-class thresholds tuned on validation and applied by the Predictor."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.datasets.samples import write_mosaics
from core.engine.export import read_manifest
from core.engine.inference import Predictor
from core.engine.items import MultiLabelItems
from core.engine.labelling import from_csv
from core.engine.metrics import accuracy_thresh, fbeta
from core.engine.tasks.multilabel import MultiLabelPrediction

FITCYCLE = str(Path(sys.executable).parent / "fitcycle")


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mosaics(tmp_path_factory.mktemp("mosaics") / "data", count=480, seed=1)


def test_delimited_labels_make_multi_hot_targets(mosaics: Path) -> None:
    items = from_csv(mosaics, "labels.csv", label_col="tags", label_delim=" ")
    assert isinstance(items, MultiLabelItems) and items.classes == ["bag", "dress", "sneaker", "trouser"]
    assert any(len(items.label_set(i)) >= 2 for i in range(len(items)))
    assert any(items.label_set(i) == [] for i in range(len(items)))  # all-blank mosaics carry no tag


def test_metrics_as_numbers() -> None:
    targs = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    perfect = torch.where(targs > 0, 5.0, -5.0)
    assert accuracy_thresh(perfect, targs) == 1.0 and fbeta(perfect, targs) == pytest.approx(1.0, abs=1e-6)
    everything = torch.full_like(targs, 5.0)  # predict every class: recall 1, precision 2/3 and 1/3
    expected = (10 / 11 + 5 / 7) / 2  # F2 = 5PR / (4P + R) per item, averaged
    assert fbeta(everything, targs) == pytest.approx(expected, abs=1e-6)


def _baselines(mosaics: Path) -> tuple[float, float]:
    """fbeta of predicting every class, and accuracy of predicting each class's majority."""
    with (mosaics / "labels.csv").open() as f:
        rows = [set(r["tags"].split()) for r in csv.DictReader(f)]
    classes = sorted(set().union(*rows))
    targs = torch.tensor([[float(c in r) for c in classes] for r in rows])
    prior = targs.mean(0)
    majority = torch.where(prior > 0.5, 5.0, -5.0).expand_as(targs)
    return fbeta(torch.full_like(targs, 5.0), targs), accuracy_thresh(majority, targs, thresh=0.5)


def test_train_and_predict_multi_label_through_the_cli(mosaics: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = subprocess.run(
        [
            FITCYCLE,
            "train",
            str(mosaics),
            "--from-csv",
            "labels.csv",
            "--label-col",
            "tags",
            "--label-delim",
            " ",
            "--arch",
            "resnet18",
            "--pretrained",
            "none",
            "--size",
            "56",
            "--bs",
            "16",
            "--freeze-epochs",
            "0",
            "--epochs",
            "6",
            "--lr",
            "3e-3",
            "--seed",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    all_fbeta, majority_acc = _baselines(mosaics)
    print(
        f"fbeta {metrics['fbeta']:.3f} (predict-all {all_fbeta:.3f}), accuracy_thresh "
        f"{metrics['accuracy_thresh']:.3f} (majority {majority_acc:.3f})"
    )
    assert metrics["fbeta"] > all_fbeta + 0.03
    assert metrics["accuracy_thresh"] > majority_acc + 0.1

    manifest = read_manifest(out / "export")
    assert manifest["task"] == "multilabel" and manifest["activation"] == "sigmoid"
    assert len(manifest["thresholds"]) == 4 and all(0 < t < 1 for t in manifest["thresholds"])
    interp = json.loads((out / "interpretation.json").read_text())
    assert set(interp["per_label"]) == {"bag", "dress", "sneaker", "trouser"}
    assert (out / "plots" / "threshold_curve.png").is_file()

    # The Predictor applies the tuned thresholds: every returned label is above its own threshold.
    predictor = Predictor(out / "export")
    images = sorted((mosaics / "images").glob("*.png"))[:20]
    for p in predictor.predict_batch(images):
        assert isinstance(p, MultiLabelPrediction)
        above = [c for c, v, t in zip(predictor.classes, p.probs, manifest["thresholds"], strict=True) if v > t]
        assert p.labels == above
    line = subprocess.run(
        [FITCYCLE, "predict", str(out / "export"), str(images[0]), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "labels" in json.loads(line.stdout)

"""Value regression on real images: how much of each scene the animal silhouette covers and how tall it is
(read off the segmentation masks), learned from the pixels through `fitcycle train --from-values-csv` and over
REST, better than predicting the training mean."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.datasets.samples import SEGMENTATION_CODES, write_silhouette_masks
from core.engine.inference import Predictor

FITCYCLE = str(Path(sys.executable).parent / "fitcycle")


def write_values(root: Path) -> Path:
    """values.csv: name, animal_share (of the image's pixels), animal_height (of the image's side), from the
    silhouette in each mask."""
    with (root / "values.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "animal_share", "animal_height"])
        for mask_path in sorted((root / "masks").glob("*.png")):
            animal = np.asarray(Image.open(mask_path)) == SEGMENTATION_CODES.index("animal")
            rows = np.flatnonzero(animal.any(axis=1))
            height = (rows.max() - rows.min() + 1) / animal.shape[0] if rows.size else 0.0
            w.writerow([f"images/{mask_path.name}", round(float(animal.mean()), 4), round(float(height), 4)])
    return root


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_values(write_silhouette_masks(tmp_path_factory.mktemp("values") / "data", count=300, side=40, seed=9))


def test_train_and_predict_values_through_the_cli(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--arch", "resnet18", "--pretrained", "none", "--size", "32", "--resize-method", "squish", "--bs", "16"]
    recipe = ["--seed", "2", "--freeze-epochs", "0", "--epochs", "8", "--lr", "3e-3"]
    res = subprocess.run(
        [FITCYCLE, "train", str(scenes), "--from-values-csv", "values.csv", *args, *recipe, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    interp = json.loads((out / "interpretation.json").read_text())
    baseline = interp["baseline_mean_target_error"]
    print(f"mae {metrics['mae']:.4f}, rmse {metrics['rmse']:.4f}, mean-target baseline {baseline:.4f}")
    assert metrics["task"] == "values" and metrics["main_metric"] == "mae"
    assert metrics["mae"] < 0.7 * baseline
    predictor = Predictor(out / "export")
    assert predictor.classes == ["animal_share", "animal_height"]
    line = json.loads(
        subprocess.run(
            [FITCYCLE, "predict", str(out / "export"), str(scenes / "images" / "00000.png"), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )
    # The CLI prints what the bundle's Predictor answers in-process: the same numbers, in the target order.
    local = predictor.predict(scenes / "images" / "00000.png").public()
    assert set(line) == {"path", "values"} and line["values"] == pytest.approx(local["values"], rel=1e-5)

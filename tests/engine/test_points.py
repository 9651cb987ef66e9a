"""Keypoint regression on real images (silhouettes on textures): points move with the augmentation,
MSE training beats predicting the mean point, and prediction answers in the original image's pixels."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.datasets.samples import write_silhouette_points
from core.engine.data import DataConfig, ImageDataLoaders
from core.engine.errors import DataError
from core.engine.export import read_manifest
from core.engine.inference import Predictor
from core.engine.labelling import from_targets_csv, from_targets_json
from core.engine.tasks import task_of
from core.engine.tasks.points import PointsPrediction
from core.engine.transforms import AugmentConfig, BatchAugment, get_transforms

FITCYCLE = str(Path(sys.executable).parent / "fitcycle")


@pytest.fixture(scope="module")
def silhouettes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_silhouette_points(tmp_path_factory.mktemp("points") / "data", count=360, seed=4)


def test_points_follow_flips_rotation_and_zoom() -> None:
    # A bright dot: after augmentation the moved point must sit on the moved dot.
    x = torch.zeros(16, 3, 33, 33)
    x[:, :, 8, 24] = 1.0
    point = torch.tensor([[(24.5 / 33) * 2 - 1, (8.5 / 33) * 2 - 1]]).expand(16, 1, 2).clone()
    cfg = AugmentConfig(max_rotate=20, max_zoom=1.2, max_warp=0, max_lighting=0, p_affine=1.0)
    out, moved, _ = BatchAugment(cfg).apply(x, torch.Generator().manual_seed(0), point)
    assert moved is not None
    for img, p in zip(out, moved[:, 0], strict=True):
        peak = divmod(int(img[0].argmax()), 33)
        found = torch.tensor([(peak[1] + 0.5) / 33 * 2 - 1, (peak[0] + 0.5) / 33 * 2 - 1])
        assert (found - p).abs().max() < 0.12  # within about two pixels


def test_targets_load_and_resize_with_the_image(silhouettes: Path) -> None:
    items = from_targets_csv(silhouettes, "points.csv", "points")
    assert task_of(items).name == "points" and items.classes == ["centroid", "top"]
    dls = ImageDataLoaders(items, DataConfig(size=48, resize_method="squish", bs=8, augment=None))
    _, y = dls.valid.dataset[0]
    raw = items.targets[items.indices(True)[0]]
    assert y[0] == pytest.approx(raw[0] / 72 * 2 - 1, abs=1e-5) and y[1] == pytest.approx(raw[1] / 60 * 2 - 1, abs=1e-5)
    augmented = ImageDataLoaders(
        items, DataConfig(size=48, resize_method="squish", bs=8, augment=get_transforms(max_warp=0.0))
    )
    xb, yb = augmented.one_batch()
    assert yb.shape == (8, 4) and xb.shape == (8, 3, 48, 48)


def _mean_point_error(folder: Path) -> float:
    with (folder / "points.csv").open() as f:
        rows = [[float(r[k]) for k in ("centroid_x", "centroid_y", "top_x", "top_y")] for r in csv.DictReader(f)]
    t = torch.tensor(rows).view(-1, 2, 2) / torch.tensor([72.0, 60.0])
    return float((t - t.mean(0)).norm(dim=2).mean())


def test_every_loader_of_points_data_keeps_the_warp_off(silhouettes: Path) -> None:
    """The no-warp rule lives in the task, so the API's show_batch (which builds its own loaders) follows it
    too; and the loaders leave the caller's config alone when they shrink the batch size."""
    items = from_targets_csv(silhouettes, "points.csv", "points")
    augment = get_transforms(max_warp=0.4)
    config = DataConfig(size=32, bs=4096, augment=augment)
    dls = ImageDataLoaders(items, config)
    assert dls.train.augment is not None and dls.train.augment.config.max_warp == 0.0
    assert dls.train.augment.config.max_rotate == augment.max_rotate  # only the warp is limited
    assert config.bs == 4096 and config.augment is augment and augment.max_warp == 0.4  # not mutated
    assert dls.config.bs == len(items.indices(False))
    as_values = from_targets_csv(silhouettes, "points.csv", "values")  # the same numbers as values: warp stays
    values_augment = ImageDataLoaders(as_values, config).train.augment
    assert values_augment is not None and values_augment.config.max_warp == 0.4


def test_train_and_predict_points_through_the_cli(silhouettes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = subprocess.run(
        [
            FITCYCLE,
            "train",
            str(silhouettes),
            "--from-points-csv",
            "points.csv",
            "--arch",
            "resnet18",
            "--pretrained",
            "none",
            "--size",
            "48",
            "--resize-method",
            "squish",
            "--bs",
            "16",
            "--freeze-epochs",
            "0",
            "--epochs",
            "8",
            "--lr",
            "3e-3",
            "--seed",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    interp = json.loads((out / "interpretation.json").read_text())
    baseline = interp["baseline_mean_target_error"]
    print(
        f"point_error {metrics['point_error']:.3f} of the side, mean-point baseline {baseline:.3f} "
        f"(whole set {_mean_point_error(silhouettes):.3f})"
    )
    assert metrics["point_error"] < 0.7 * baseline
    assert read_manifest(out / "export")["task"] == "points"

    # Predictions come back in the original 72 x 60 pixels.
    predictor = Predictor(out / "export")
    with (silhouettes / "points.csv").open() as f:
        rows = list(csv.DictReader(f))[:30]
    errors = []
    for row in rows:
        p = predictor.predict(silhouettes / row["name"])
        assert isinstance(p, PointsPrediction)
        truth = [(float(row["centroid_x"]), float(row["centroid_y"])), (float(row["top_x"]), float(row["top_y"]))]
        errors += [((px - tx) ** 2 + (py - ty) ** 2) ** 0.5 for (px, py), (tx, ty) in zip(p.points, truth, strict=True)]
    assert sum(errors) / len(errors) < 0.7 * _mean_point_error(silhouettes) * 66  # in pixels, ~ side 66
    line = json.loads(
        subprocess.run(
            [FITCYCLE, "predict", str(out / "export"), str(silhouettes / rows[0]["name"]), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )
    assert len(line["points"]) == 2
    assert (out / "plots" / "top_losses.png").is_file()


def test_targets_from_json_match_the_csv(silhouettes: Path, tmp_path: Path) -> None:
    with (silhouettes / "points.csv").open() as f:
        rows = list(csv.DictReader(f))
    pairs = {
        r["name"]: [[float(r["centroid_x"]), float(r["centroid_y"])], [float(r["top_x"]), float(r["top_y"])]]
        for r in rows
    }
    root = tmp_path / "ds"  # the JSON files must sit inside the dataset's folder
    shutil.copytree(silhouettes, root)
    by_csv = from_targets_csv(root, "points.csv", "points")
    (root / "points.json").write_text(json.dumps(pairs))
    by_map = from_targets_csv(root, "points.json", "points")
    assert by_map.keys == by_csv.keys and by_map.targets == by_csv.targets and by_map.is_valid == by_csv.is_valid
    assert by_map.classes == ["p0", "p1"]
    records = [{"name": k, "points": v} for k, v in pairs.items()]
    records[0]["points"] = [[1.0, 2.0]]  # one point where the others have two
    records[1]["points"] = "12,4"  # not a list of numbers
    records[2]["name"] = "../escape.png"
    (root / "records.json").write_text(json.dumps(records))
    items = from_targets_json(root, "records.json", "points")
    reasons = [r.reason for r in items.rejected]
    assert len(items) == len(rows) - 3 and sum("are not 2 points numbers" in r for r in reasons) == 2
    assert any("escapes the dataset folder" in r for r in reasons)
    values = [{"name": k, "values": [v[0][0] / 72]} for k, v in pairs.items()]
    (root / "values.json").write_text(json.dumps(values))
    assert task_of(from_targets_json(root, "values.json", "values")).name == "values"
    (root / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        from_targets_json(root, "bad.json")
    with pytest.raises(DataError, match="csv: '/etc/passwd' is absolute"):
        from_targets_json(root, "/etc/passwd")

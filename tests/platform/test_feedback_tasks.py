"""Multi-label, points and segmentation each go once around the loop: predict, feedback in the task's own
shape, a version with it, a retrain scored against the champion in the task's own metric."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.datasets.samples import write_mosaics, write_silhouette_masks, write_silhouette_points
from tests.platform.services import Client
from tests.platform.stack import Stack, make_zip

TINY = {"arch": "resnet18", "pretrained": "none", "bs": 16, "freeze_epochs": 0, "epochs": 1, "lr": 3e-3}


def around_the_loop(
    c: Client, ds: dict[str, Any], size: int, images: list[Path], targets: list[dict[str, Any]]
) -> dict[str, Any]:
    first = c.wait(c.submit(kind="fine_tune", dataset_id=ds["id"], size=size, **TINY)["id"])
    assert first["state"] == "succeeded", first["error"]
    for image, target in zip(images, targets, strict=True):
        answer = c.post(f"/models/{first['model_id']}/predict", files={"file": (image.name, image.read_bytes())})
        assert answer.status_code == 200, answer.text
        res = c.post(f"/predictions/{answer.json()['prediction_id']}/feedback", json=target)
        assert res.status_code == 201, res.text
    version = c.post(f"/datasets/{ds['id']}/versions", json={"add_feedback": "all"})
    assert version.status_code == 201, version.text
    assert version.json()["changes"]["added"] == len(images)
    retrain = c.wait(c.submit(kind="retrain", dataset_id=ds["id"], freeze_epochs=0, epochs=1)["id"])
    assert retrain["state"] == "succeeded", retrain["error"]
    decision = retrain["result"]["decision"]
    assert decision["action"] in ("promoted", "rejected")
    assert decision["scores"]["challenger"]["n_items"] == decision["scores"]["champion"]["n_items"] > 0
    return dict(decision)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return stack.new_project("tasks-loop")[0]


def test_multi_label_feedback_is_a_label_set(client: Client, tmp_path: Path) -> None:
    folder = write_mosaics(tmp_path / "m", count=80, seed=5)
    ds = client.upload(
        "mosaics",
        make_zip(folder, tmp_path / "m.zip"),
        labels="csv",
        csv="labels.csv",
        label_col="tags",
        label_delim=" ",
    ).json()
    extra = write_mosaics(tmp_path / "extra", count=4, seed=9)
    images = sorted((extra / "images").glob("*.png"))[:4]
    decision = around_the_loop(client, ds, 56, images, [{"labels": ["bag", "dress"]}] * len(images))
    assert decision["scores"]["champion"]["metric"] == "fbeta"


def test_points_feedback_is_pixels(client: Client, tmp_path: Path) -> None:
    folder = write_silhouette_points(tmp_path / "p", count=90, seed=2)
    ds = client.upload("points", make_zip(folder, tmp_path / "p.zip"), labels="points", csv="points.csv").json()
    extra = write_silhouette_points(tmp_path / "extra", count=4, seed=11)
    images = sorted(p for p in extra.glob("**/*.png"))[:4]
    decision = around_the_loop(client, ds, 32, images, [{"points": [[30, 30], [30, 10]]}] * len(images))
    assert decision["scores"]["champion"]["metric"] == "point_error"


def test_segmentation_feedback_is_a_mask(client: Client, tmp_path: Path) -> None:
    folder = write_silhouette_masks(tmp_path / "s", count=60, side=32, seed=4)
    ds = client.upload("scenes", make_zip(folder, tmp_path / "s.zip"), labels="masks", void="void").json()
    extra = write_silhouette_masks(tmp_path / "extra", count=4, side=32, seed=12)
    images = sorted((extra / "images").glob("*.png"))[:4]
    targets = []
    for image in images:
        mask = np.asarray(Image.open(extra / "masks" / image.name))
        buf = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8), mode="L").save(buf, format="PNG")
        targets.append({"mask": base64.b64encode(buf.getvalue()).decode()})
    decision = around_the_loop(client, ds, 32, images, targets)
    assert decision["scores"]["champion"]["metric"] == "mean_iou"

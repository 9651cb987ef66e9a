"""The other tasks over REST: multi-label (labels above each class's tuned threshold), keypoints (answers in
the image's own pixels) and a progressive-resizing plan."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from core.datasets.samples import write_mosaics, write_silhouette_points
from core.engine.inference import Predictor
from tests.platform.conftest import Stack, make_zip


def test_multi_label_dataset_job_and_predict(stack: Stack, tmp_path: Path) -> None:
    a = stack.a
    folder = write_mosaics(tmp_path / "mosaics", count=160, seed=3)
    res = a.upload(
        "mosaics",
        make_zip(folder, tmp_path / "m.zip"),
        labels="csv",
        csv="labels.csv",
        label_col="tags",
        label_delim=" ",
    )
    assert res.status_code == 201, res.text
    ds = res.json()
    assert ds["classes"] == ["bag", "dress", "sneaker", "trouser"] and ds["labels"]["label_delim"] == " "
    job = a.wait(
        a.submit(
            kind="fine_tune",
            dataset_id=ds["id"],
            arch="resnet18",
            pretrained="none",
            size=56,
            bs=16,
            freeze_epochs=0,
            epochs=2,
            lr=3e-3,
        )["id"]
    )
    assert job["state"] == "succeeded", job["error"]
    assert {"fbeta", "accuracy_thresh"} <= set(job["result"])
    image = (folder / "images" / "00000.png").read_bytes()
    body = a.post(f"/models/{job['model_id']}/predict", files={"file": ("m.png", image)}).json()
    assert isinstance(body["labels"], list) and len(body["predictions"]) == 4
    manifest = a.get(f"/jobs/{job['id']}/artifacts/export/manifest.json").json()
    thresholds = dict(zip(manifest["classes"], manifest["thresholds"], strict=True))
    assert body["labels"] == sorted(c for c, p in body["predictions"] if p > thresholds[c])


def test_progressive_resizing_plan_over_rest(stack: Stack, fashion_zip: Path) -> None:
    a = stack.a
    ds = a.upload("plan", fashion_zip).json()
    bad = a.post("/jobs", json={"kind": "stage1", "dataset_id": ds["id"], "plan": [{"size": 32}]})
    assert bad.status_code == 422 and "plan belongs to a fine_tune job" in bad.json()["detail"]
    bad = a.post("/jobs", json={"kind": "fine_tune", "dataset_id": ds["id"], "plan": [{"size": 8}]})
    assert bad.status_code == 422 and "plan" in bad.text
    job = a.wait(
        a.submit(
            kind="fine_tune",
            dataset_id=ds["id"],
            arch="resnet18",
            pretrained="none",
            bs=16,
            freeze_epochs=0,
            epochs=1,
            lr=5e-3,
            plan=[{"size": 24}, {"size": 32}],
        )["id"]
    )
    assert job["state"] == "succeeded", job["error"]
    tags = [e["tag"] for e in a.get(f"/jobs/{job['id']}/metrics").json()["epochs"]]
    assert tags == ["24px-train", "32px-train"]


def test_points_dataset_job_and_predict(stack: Stack, tmp_path: Path) -> None:
    a = stack.a
    folder = write_silhouette_points(tmp_path / "pts", count=120, seed=5)
    res = a.upload("points", make_zip(folder, tmp_path / "p.zip"), labels="points", csv="points.csv")
    assert res.status_code == 201, res.text
    ds = res.json()
    assert ds["classes"] == ["centroid", "top"] and ds["counts"]["items"]["train"] > 0
    job = a.wait(
        a.submit(
            kind="fine_tune",
            dataset_id=ds["id"],
            arch="resnet18",
            pretrained="none",
            size=48,
            resize_method="squish",
            bs=16,
            freeze_epochs=0,
            epochs=2,
            lr=3e-3,
        )["id"]
    )
    assert job["state"] == "succeeded", job["error"]
    assert "point_error" in job["result"] and "error_rate" not in job["result"]
    image = folder / "images" / "00000.png"
    body = a.post(f"/models/{job['model_id']}/predict", files={"file": ("x.png", image.read_bytes())}).json()
    assert set(body) == {"points"} and len(body["points"]) == 2
    # The endpoint answers exactly what the bundle's Predictor answers in-process (original pixels).
    with zipfile.ZipFile(io.BytesIO(a.get(f"/models/{job['model_id']}/bundle").content)) as zf:
        zf.extractall(tmp_path / "bundle")
    local = Predictor(tmp_path / "bundle").predict(image)
    flat = [v for xy in body["points"] for v in xy]
    assert flat == pytest.approx([v for xy in local.points for v in xy], rel=1e-4, abs=1e-3)

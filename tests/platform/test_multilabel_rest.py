"""Multi-label over REST: upload a CSV with delimited tags, fine-tune, predict returns the labels above
each class's tuned threshold."""

from __future__ import annotations

from pathlib import Path

from core.datasets.samples import write_mosaics
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

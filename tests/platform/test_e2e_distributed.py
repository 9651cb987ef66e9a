"""End to end on the distributed stack: a real API process (uvicorn) and a real Celery worker over
HTTP, PostgreSQL, Redis and an S3 server. upload -> lr_find -> stage1 -> lr_find (unfrozen) ->
stage2 with the suggested rates -> interpret -> predict and predict-url."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.platform.services import Client
from tests.platform.stack import ImageServer, Stack

LITE = {"arch": "efficientnet_lite0", "size": 64, "bs": 16, "seed": 3}


def course_flow(a: Client, archive: Path, image_server: ImageServer, step: Callable[[str], None]) -> dict[str, Any]:
    """upload -> lr_find -> stage1 (watched over SSE) -> lr_find on it -> stage2 'auto' -> interpret ->
    predict and predict-url; returns the stage-2 job."""
    step("upload")
    # Upload: 201 with id, version, classes, counts per class and split.
    res = a.upload("fashion", archive)
    assert res.status_code == 201, res.text
    ds = res.json()
    assert ds["version"] == 1 and ds["classes"] == ["bag", "dress", "sneaker", "trouser"]
    assert sum(c["train"] + c["valid"] for c in ds["counts"].values()) == 160 and ds["rejected"] == []
    assert len(a.get(f"/datasets/{ds['id']}/items", params={"limit": 500}).json()["data"]) == 160
    assert a.get(f"/datasets/{ds['id']}/show_batch", params={"size": 32}).headers["content-type"] == "image/png"

    step("lr_find on the frozen body")
    # lr_find on the frozen ImageNet body.
    sweep = a.wait(a.submit(kind="lr_find", dataset_id=ds["id"], pretrained="imagenet", **LITE)["id"])
    assert sweep["state"] == "succeeded", sweep["error"]
    valley = sweep["result"]["suggestions"]["valley"]
    assert sweep["result"]["frozen"] is True

    step("stage 1 over SSE")
    # Stage 1 at the suggested rate, watched live over server-sent events.
    stage1_id = a.submit(kind="stage1", dataset_id=ds["id"], pretrained="imagenet", epochs=2, lr=valley, **LITE)["id"]
    events: list[str] = []
    with a.http.stream("GET", f"/jobs/{stage1_id}/events", timeout=600) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
                if line == "event: end":
                    break
    assert {"state", "batch", "epoch", "end"} <= set(events)
    stage1 = a.wait(stage1_id)
    assert stage1["state"] == "succeeded", stage1["error"]
    assert stage1["model_id"] and stage1["result"]["lrs"]["base_lr"] == pytest.approx(valley)

    step("lr_find unfrozen and stage 2 auto")
    # lr_find on the stage-1 model, unfrozen; then stage 2 with 'auto' rates from it. As the README says it:
    # no arch, size or seed repeated — a job with a parent inherits them, and its answer shows the result.
    child = {"dataset_id": ds["id"], "parent_job_id": stage1_id, "bs": 16}
    queued = a.submit(kind="lr_find", **child)
    assert {k: queued["spec"][k] for k in ("arch", "size", "seed")} == {
        "arch": "efficientnet_lite0",
        "size": 64,
        "seed": 3,
    }
    sweep2 = a.wait(queued["id"])
    assert sweep2["state"] == "succeeded", sweep2["error"]
    assert sweep2["result"]["frozen"] is False
    stage2 = a.wait(a.submit(kind="stage2", epochs=2, **child)["id"])
    assert stage2["state"] == "succeeded", stage2["error"]
    high = valley / 5
    low = min(sweep2["result"]["suggestions"]["valley"] / 10, high / 10)
    assert stage2["result"]["lrs"]["stage2_range"] == pytest.approx([low, high])
    how = stage2["result"]["lrs"]["stage2_rates"]  # which suggestion and which rates 'auto' used
    assert how["suggestion"] == "valley" and how["suggestion_from"] == f"lr_find job {sweep2['id']}"
    assert how["stage1_lr"] == pytest.approx(valley) and [how["low"], how["high"]] == pytest.approx([low, high])
    metrics = a.get(f"/jobs/{stage2['id']}/metrics").json()
    assert [e["tag"] for e in metrics["epochs"]] == ["stage2", "stage2"]
    assert all(e["valid_loss"] is not None and "error_rate" in e["metrics"] for e in metrics["epochs"])
    assert len(metrics["batches"]) >= 10
    print("stage1 error_rate", stage1["result"]["error_rate"], "stage2 error_rate", stage2["result"]["error_rate"])
    assert stage2["result"]["error_rate"] < 0.55  # 4 classes: chance 0.75 (quality: tests/engine/test_transfer.py)

    step("interpret")
    # Interpret the stage-2 model.
    interp = a.wait(a.submit(kind="interpret", dataset_id=ds["id"], parent_job_id=stage2["id"], bs=16, folds=0)["id"])
    assert interp["state"] == "succeeded", interp["error"]
    names = {x["name"] for x in a.get(f"/jobs/{interp['id']}/artifacts").json()["data"]}
    assert {"interpretation.json", "plots/confusion_matrix.png", "plots/top_losses.png"} <= names
    summary = a.get(f"/jobs/{interp['id']}/artifacts/interpretation.json").json()
    assert summary["error_rate"] == pytest.approx(stage2["result"]["error_rate"])

    step("the model: bundle and predict")
    # The model: metadata, bundle, predict (file and URL).
    model = a.get(f"/models/{stage2['model_id']}").json()
    assert model["classes"] == ds["classes"] and model["job_id"] == stage2["id"]
    assert a.get(f"/models/{model['id']}/bundle").headers["content-type"] == "application/zip"
    image = (image_server.folder / "bag.png").read_bytes()
    by_file = a.post(f"/models/{model['id']}/predict", files={"file": ("bag.png", image)}).json()["predictions"]
    probs = [p for _, p in by_file]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
    assert {label for label, _ in by_file} == set(ds["classes"])
    by_url = a.post(f"/models/{model['id']}/predict-url", json={"url": f"{image_server.base}/bag.png"})
    assert by_url.status_code == 200, by_url.text
    assert by_url.json()["predictions"][0][0] == by_file[0][0]
    assert by_url.json()["predictions"][0][1] == pytest.approx(by_file[0][1], abs=1e-5)

    return stage2


@pytest.mark.slow
def test_the_course_flow_over_rest(
    stack: Stack, fashion_zip64: Path, image_server: ImageServer, step: Callable[[str], None]
) -> None:
    a = stack.a
    stage2 = course_flow(a, fashion_zip64, image_server, step)
    # Everything the jobs wrote lives in S3, under the project's prefix.
    keys = stack.store().list(f"projects/{stack.project_a}/jobs/{stage2['id']}/")
    assert any(k.endswith("export/weights.safetensors") for k in keys)
    # Retention: the checkpoint went once the export was stored, and the job says what that freed.
    assert not any("/checkpoints/" in k for k in keys)
    assert stage2["result"]["checkpoint_bytes_freed"] > 1_000_000
    manifest = json.loads(a.get(f"/jobs/{stage2['id']}/artifacts/export/manifest.json").content)
    assert manifest["arch"] == "efficientnet_lite0"
    assert httpx.get(a.base + "/health").json()["checks"] == {"database": "ok", "store": "ok", "broker": "ok"}

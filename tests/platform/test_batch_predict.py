"""Batch prediction as a job, over the stack (issue 27, part 2): a `predict` job answers a dataset version with a
model (its name's champion by default), its progress shows over SSE, its answers download as one JSON Lines or CSV
file through REST and the CLI, and what cannot be a predict job says why."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import httpx

from tests.platform.services import fitcycle
from tests.platform.stack import Stack


def test_predict_job_answers_a_version_and_downloads(stack: Stack, fashion_zip: Path, tmp_path: Path) -> None:
    c, _ = stack.new_project("batch-predict")
    ds = c.upload("answers", fashion_zip).json()
    spec = {"arch": "resnet18", "pretrained": "none", "size": 32, "bs": 16, "freeze_epochs": 0, "epochs": 2, "lr": 3e-3}
    trained = c.wait(c.submit(kind="fine_tune", dataset_id=ds["id"], **spec)["id"])
    assert trained["state"] == "succeeded", trained["error"]

    job = c.submit(kind="batch_predict", dataset_id=ds["id"], predict_chunk=16)  # the name's champion answers
    states = []
    with httpx.stream(
        "GET", f"{c.base}/jobs/{job['id']}/events", headers={"Authorization": f"Bearer {c.key}"}, timeout=120
    ) as events:
        for line in events.iter_lines():
            if line.startswith("data: ") and '"progress"' in line:
                states.append(json.loads(line[6:]))
    done = c.get(f"/jobs/{job['id']}").json()
    assert done["state"] == "succeeded", done["error"]
    assert done["spec"]["from_model_id"] == trained["model_id"] and done["model_id"] is None
    result = done["result"]
    assert result["items"] == ds["n_items"] == 120 and result["chunks"] == 8
    assert 0 <= result["accuracy"] <= 1 and result["items_per_second"] > 0
    assert any(s["progress"].get("total") == 120 for s in states)  # its progress came over SSE

    res = c.get(f"/jobs/{job['id']}/predictions", params={"format": "jsonl"})
    assert res.status_code == 200 and res.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in res.text.splitlines()]
    assert len(rows) == 120 and len({r["key"] for r in rows}) == 120
    assert {"key", "answer", "uncertainty", "label"} <= set(rows[0])
    hits = sum(r["answer"]["top"][0] == r["label"] for r in rows)
    assert result["accuracy"] == hits / 120

    env = {**stack.env, "FITCYCLE_URL": c.base.removesuffix("/api/v1"), "FITCYCLE_KEY": c.key}
    out = tmp_path / "answers.csv"
    fitcycle("jobs", "predictions", job["id"][:8], "--format", "csv", "--out", str(out), env=env)
    table = list(csv.reader(io.StringIO(out.read_text())))
    assert table[0] == ["key", "answer", "uncertainty"] and [t[0] for t in table[1:]] == [r["key"] for r in rows]

    # What is no predict job, or cannot be one, says why.
    res = c.get(f"/jobs/{trained['id']}/predictions")
    assert res.status_code == 404 and "predict job" in res.json()["detail"]
    res = c.post("/jobs", json={"kind": "batch_predict", "dataset_id": ds["id"], "name": "nothing-here"})
    assert res.status_code == 422 and "no champion" in res.json()["detail"]
    res = c.post("/jobs", json={"kind": "batch_predict", "dataset_id": ds["id"], "epochs": 3, "lr": 0.1})
    assert res.status_code == 422 and "lr" in res.json()["detail"]

"""A worker SIGKILLed in the middle of an epoch: a new worker resumes the job from its last checkpoint;
it ends `succeeded` exactly once, and no epoch is recorded twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.datasets.samples import write_sample
from tests.platform.services import wait_for
from tests.platform.stack import Stack, make_zip


@pytest.mark.slow
def test_sigkilled_worker_resumes_from_checkpoint(stack: Stack, tmp_path: Path) -> None:
    a = stack.a
    data = write_sample("fashion-mnist", tmp_path / "data", per_class=80, size=48, classes=["bag", "trouser"])
    ds = a.upload("crash", make_zip(data, tmp_path / "crash.zip")).json()
    job = a.submit(
        kind="stage1", dataset_id=ds["id"], arch="resnet18", pretrained="none", size=48, bs=8, epochs=3, lr=3e-3, seed=1
    )

    # Wait until the job is well into its second epoch, with a mid-epoch checkpoint saved, then SIGKILL.
    def mid_epoch() -> bool:
        j = a.get(f"/jobs/{job['id']}").json()
        names = {x["name"] for x in a.get(f"/jobs/{job['id']}/artifacts").json()["data"]}
        return (
            j["state"] == "running"
            and j["epoch"] == 1
            and 5 <= (j["batch"] or 0) <= 12
            and "checkpoints/last.pt" in names
        )

    wait_for(mid_epoch, 300, "the job to reach the middle of epoch 2", interval=0.1)
    killed_at = a.get(f"/jobs/{job['id']}").json()
    stack.worker.kill()
    assert a.get(f"/jobs/{job['id']}").json()["state"] == "running"  # the row still says so: the lease will tell

    time.sleep(1)
    stack.start_worker()
    done = a.wait(job["id"], timeout=600)
    assert done["state"] == "succeeded", done["error"] or stack.logs()
    assert done["attempts"] == 2
    assert done["model_id"]

    metrics = a.get(f"/jobs/{job['id']}/metrics").json()
    assert [(e["tag"], e["epoch"]) for e in metrics["epochs"]] == [("stage1", 0), ("stage1", 1), ("stage1", 2)]
    iters = [b["iter"] for b in metrics["batches"]]
    assert iters == sorted(set(iters))  # the curve continues where it stopped: one row per step
    n_batches = killed_at["progress"]["n_batches"]
    assert iters == list(range(3 * n_batches))
    assert len(a.get("/models").json()["data"]) >= 1
    assert sum(m["job_id"] == job["id"] for m in a.get("/models").json()["data"]) == 1


def test_cancel_stops_a_running_job_and_keeps_its_checkpoint(stack: Stack, tmp_path: Path) -> None:
    a = stack.a
    data = write_sample("fashion-mnist", tmp_path / "data", per_class=60, size=48, classes=["bag", "trouser"])
    ds = a.upload("cancel", make_zip(data, tmp_path / "cancel.zip")).json()
    job = a.submit(
        kind="stage1", dataset_id=ds["id"], arch="resnet18", pretrained="none", size=48, bs=8, epochs=20, lr=3e-3
    )
    wait_for(lambda: (a.get(f"/jobs/{job['id']}").json()["batch"] or 0) >= 4, 300, "the job to be training")
    res = a.post(f"/jobs/{job['id']}/cancel")
    assert res.status_code == 202 and res.json()["cancel_requested"] is True
    done = a.wait(job["id"], timeout=120)
    assert done["state"] == "cancelled" and done["model_id"] is None
    assert (done["progress"]["epoch"], done["progress"]["n_epoch"]) < (19, 20)  # stopped early, not at the end
    names = {x["name"] for x in a.get(f"/jobs/{job['id']}/artifacts").json()["data"]}
    assert "checkpoints/last.pt" in names
    again = a.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "nothing to cancel" in again.json()["detail"]

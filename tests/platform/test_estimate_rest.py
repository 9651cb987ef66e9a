"""An estimate before a job runs, over the stack (issue 27, part 1): `dry_run: true` queues a probe on a worker of
the job's queue instead of the job; its result is the job's expected seconds per phase and in all, its peak memory
and stored bytes; the job queued with `estimate_job_id` then carries it (its page sets it against the actual), and
the CLI's `--estimate` prints it. What has no estimate says so."""

from __future__ import annotations

from pathlib import Path

from tests.platform.services import fitcycle
from tests.platform.stack import Stack

SPEC = {"arch": "resnet18", "pretrained": "none", "size": 32, "bs": 16, "freeze_epochs": 0, "epochs": 2, "lr": 3e-3}


def test_a_dry_run_estimates_the_job_before_it_is_queued(stack: Stack, fashion_zip: Path) -> None:
    c, _ = stack.new_project("estimates")
    ds = c.upload("estimated", fashion_zip).json()
    before = c.get("/jobs").json()["count"]
    probe = c.submit(kind="fine_tune", dataset_id=ds["id"], dry_run=True, **SPEC)
    assert probe["kind"] == "estimate" and probe["spec"]["estimate_of"] == "fine_tune"
    probe = c.wait(probe["id"])
    assert probe["state"] == "succeeded", probe["error"]
    found = probe["result"]["estimate"]
    assert list(found["phases"])[:2] == ["build", "fit:train"] and found["total_seconds"] > 0
    assert found["peak_memory_bytes"] > 0 and found["stored_bytes"] > 0
    assert c.get("/jobs").json()["count"] == before + 1  # the probe alone: no fine_tune job was queued

    job = c.wait(c.submit(kind="fine_tune", dataset_id=ds["id"], estimate_job_id=probe["id"], **SPEC)["id"])
    assert job["state"] == "succeeded", job["error"]
    assert job["spec"]["estimate_job_id"] == probe["id"]
    assert set(found["phases"]) <= set(job["result"]["timings"])  # phase for phase, estimate against actual
    page = c.get(f"/jobs/{job['id']}").json()
    assert page["result"]["timings"]["total"] > 0

    env = {**stack.env, "FITCYCLE_URL": c.base.removesuffix("/api/v1"), "FITCYCLE_KEY": c.key}
    sets = [x for k, v in SPEC.items() for x in ("--set", f"{k}={v}")]
    out = fitcycle("jobs", "submit", "fine_tune", "--dataset", ds["id"], *sets, "--estimate", env=env, timeout=300)
    assert "fit:train" in out and "total" in out and "estimate_job_id=" in out

    # What cannot be estimated, or named as an estimate, says why.
    res = c.post("/jobs", json={"kind": "estimate", "dataset_id": ds["id"]})
    assert res.status_code == 422 and "dry_run" in res.json()["detail"]
    res = c.post(
        "/jobs", json={"kind": "interpret", "dataset_id": ds["id"], "parent_job_id": job["id"], "dry_run": True}
    )
    assert res.status_code == 422 and "no estimate yet" in res.json()["detail"]
    res = c.post("/jobs", json={"kind": "fine_tune", "dataset_id": ds["id"], "estimate_job_id": job["id"], **SPEC})
    assert res.status_code == 422 and "estimate_job_id" in res.json()["detail"]

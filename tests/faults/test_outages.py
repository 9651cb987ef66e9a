"""Parts of the fleet fail mid-job, and the job still ends `succeeded` exactly once, every epoch and step
recorded once, nothing stored lost: PostgreSQL restarted (the worker's writes wait it out; the API answers 503
with Retry-After meanwhile), Redis killed and restarted (its messages lost; the reaper re-sends), the S3 server
stopped and started again (uploads retried; no partial object visible), and a worker frozen past its lease (its
successor resumes; when it wakes, its fenced writes are refused)."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.faults.conftest import FaultStack, log_of, small_job
from tests.platform.services import wait_for

pytestmark = pytest.mark.slow


def running_at(faults: FaultStack, job_id: str, epoch: int, min_batch: int) -> dict[str, Any]:
    def there() -> dict[str, Any] | None:
        j = faults.a.get(f"/jobs/{job_id}").json()
        ok = j["state"] == "running" and (j["epoch"] or 0) >= epoch and (j["batch"] or 0) >= min_batch
        return j if ok else None

    job: dict[str, Any] = wait_for(there, 300, f"job {job_id} to reach epoch {epoch}, batch {min_batch}", 0.1)
    return job


def assert_recorded_once(faults: FaultStack, job: dict[str, Any]) -> None:
    assert job["state"] == "succeeded", job["error"] or faults.stack.logs()
    n_batches = job["progress"]["n_batches"]  # the job's own: a seed draws its own split
    metrics = faults.a.get(f"/jobs/{job['id']}/metrics").json()
    assert [(e["tag"], e["epoch"]) for e in metrics["epochs"]] == [("stage1", 0), ("stage1", 1), ("stage1", 2)]
    assert [b["iter"] for b in metrics["batches"]] == list(range(3 * n_batches))  # none lost, none twice
    models = [m for m in faults.a.get("/models").json()["data"] if m["job_id"] == job["id"]]
    assert len(models) == 1


def assert_objects_whole(faults: FaultStack, job_id: str) -> None:
    """Every artifact row names an object that is there, with the size and checksum recorded when written."""
    store = faults.stack.store()
    artifacts = faults.a.get(f"/jobs/{job_id}/artifacts").json()["data"]
    assert any(a["name"] == "export/manifest.json" for a in artifacts)
    engine = create_engine(faults.pg.url)
    with engine.connect() as c:
        rows = c.execute(text("SELECT name, key, size, sha256 FROM artifacts WHERE job_id = :j"), {"j": job_id}).all()
    engine.dispose()
    assert len(rows) == len(artifacts)
    for name, key, size, sha256 in rows:
        data = store.get_bytes(key)
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha256, name


def test_postgres_restart_mid_job(faults: FaultStack, faults_dataset: str) -> None:
    a, worker = faults.a, faults.stack.worker
    job = small_job(faults, faults_dataset, seed=11)
    running_at(faults, str(job["id"]), epoch=1, min_batch=2)
    faults.pg.stop()
    try:
        res = a.get(f"/jobs/{job['id']}")
        assert res.status_code == 503, res.text
        assert int(res.headers["Retry-After"]) >= 1
        assert res.headers["content-type"].startswith("application/problem+json")
        assert "database is not answering" in res.json()["detail"]
        assert a.get("/health").status_code == 503  # not ready...
        assert a.get("/live").json() == {"status": "alive"}  # ...but alive: no restart for a database outage
        wait_for(lambda: "the database is not answering" in worker.tail(20000), 60, "the worker to wait for it")
    finally:
        faults.pg.start()
    assert a.get(f"/jobs/{job['id']}").status_code == 200  # back on its own
    done = a.wait(str(job["id"]))
    assert done["attempts"] == 1  # the outage was shorter than the lease: nobody took the job over
    assert_recorded_once(faults, done)


def test_redis_killed_and_restarted_mid_job(faults: FaultStack, faults_dataset: str) -> None:
    a = faults.a
    first = small_job(faults, faults_dataset, seed=12)
    running_at(faults, str(first["id"]), epoch=0, min_batch=2)
    second = small_job(faults, faults_dataset, seed=13)  # its message waits in Redis: the one worker is busy
    assert a.get(f"/jobs/{second['id']}").json()["state"] == "queued"
    faults.redis.kill()  # no persistence: the second job's message is gone with it
    faults.redis.start()
    for job in (first, second):
        done = a.wait(str(job["id"]))
        assert done["attempts"] == 1, done
        assert_recorded_once(faults, done)
    # The broker works again for new work too.
    third = a.submit(kind="lr_find", dataset_id=faults_dataset, arch="resnet18", pretrained="none", size=48, bs=8)
    assert a.wait(str(third["id"]))["state"] == "succeeded"


def test_s3_stopped_mid_job(faults: FaultStack, faults_dataset: str) -> None:
    a, worker, s3 = faults.a, faults.stack.worker, faults.stack.s3
    job = small_job(faults, faults_dataset, seed=14)
    running_at(faults, str(job["id"]), epoch=0, min_batch=4)
    s3.stop()
    try:
        wait_for(lambda: "the server is not answering" in worker.tail(20000), 60, "the worker to retry an upload")
        time.sleep(10)  # the outage itself: ten seconds more of retries against a stopped server
    finally:
        s3.start()
    done = a.wait(str(job["id"]))
    assert done["attempts"] == 1
    assert_recorded_once(faults, done)
    assert_objects_whole(faults, str(job["id"]))


def test_a_frozen_worker_cannot_write_once_its_lease_is_taken_over(faults: FaultStack, faults_dataset: str) -> None:
    a, st = faults.a, faults.stack
    second = st.start_worker()
    job_id = ""
    frozen = 0
    try:
        job = small_job(faults, faults_dataset, seed=15)
        job_id = str(job["id"])
        running_at(faults, job_id, epoch=0, min_batch=4)
        engine = create_engine(faults.pg.url)
        with engine.connect() as c:
            owner = c.execute(text("SELECT lease_owner FROM jobs WHERE id = :j"), {"j": job_id}).scalar_one()
        engine.dispose()
        frozen = int(owner.split(":")[1])  # host:pid:nonce
        os.kill(frozen, signal.SIGSTOP)  # alive, holding the job, silent: a long GC pause, a stuck disk
        took_over = wait_for(
            lambda: (j := a.get(f"/jobs/{job_id}").json())["attempts"] == 2 and j["state"] == "running" and j,
            120,
            "another worker to take the job over",
        )
        assert took_over
        os.kill(frozen, signal.SIGCONT)
        frozen_log = next(p for p in st.workers if p.proc.pid == frozen).log
        wait_for(lambda: "lost its lease" in log_of(frozen_log), 60, "the woken worker to find its lease gone")
        frozen = 0
        done = a.wait(job_id)
        assert done["attempts"] == 2
        assert_recorded_once(faults, done)
        assert_objects_whole(faults, job_id)
        engine = create_engine(faults.pg.url)
        with engine.connect() as c:
            stored = c.execute(text("SELECT key FROM artifacts WHERE job_id = :j"), {"j": job_id}).scalars().all()
        engine.dispose()
        attempt_of = {k: k.split(f"/jobs/{job_id}/attempts/")[1].split("/")[0] for k in stored}
        assert set(attempt_of.values()) <= {"1", "2"}, stored  # the first attempt's early plots may stay
        assert all(a == "2" for k, a in attempt_of.items() if "/export/" in k or k.endswith("metrics.json")), stored
    finally:
        if frozen:
            os.kill(frozen, signal.SIGCONT)
        second.stop()
        st.workers.remove(second)

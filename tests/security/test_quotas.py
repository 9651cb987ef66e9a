"""Quotas per project, on an API process of the same fleet with small limits: active jobs, event streams,
stored bytes and requests per minute; a job names one of the server's queues, a plan has at most 8 steps."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.platform.services import wait_for
from tests.security.attacks import good_members, noise_png, write_zip
from tests.security.conftest import Tight, Victim


def test_queue_must_be_configured_and_plan_is_capped(unchanged: Victim) -> None:
    spec = {"kind": "fine_tune", "dataset_id": unchanged.dataset["id"], "arch": "resnet18", "pretrained": "none"}
    res = unchanged.client.post("/jobs", json={**spec, "queue": "celery\n[ERROR] forged log line"})
    assert res.status_code == 422 and "queue" in res.json()["detail"] and "fitcycle" in res.json()["detail"]
    res = unchanged.client.post("/jobs", json={**spec, "plan": [{"size": 32}] * 9})
    assert res.status_code == 422 and "plan" in res.text


def test_quotas_hold_and_say_which(tight: Tight, tmp_path: Path) -> None:
    c = tight.client
    # Stored bytes: 200 KB. A small dataset fits; a second one that would pass the quota is refused whole.
    small = c.upload("pets", write_zip(tmp_path / "a.zip", good_members()))
    assert small.status_code == 201, small.text
    noisy = {f"{k}/{i}.png": noise_png(100, i + 100 * (k == "a")) for k in ("a", "b") for i in range(20)}
    res = c.upload("more", write_zip(tmp_path / "b.zip", noisy))
    assert res.status_code == 413 and "FITCYCLE_MAX_STORED_BYTES" in res.json()["detail"], res.text
    assert [d["name"] for d in c.get("/datasets").json()["data"]] == ["pets"]

    # Active jobs: 2 queued on a queue nobody serves; the third is 429.
    spec = {"kind": "stage1", "dataset_id": small.json()["id"], "arch": "resnet18", "pretrained": "none"}
    jobs = [c.post("/jobs", json={**spec, "queue": "parked"}) for _ in range(2)]
    assert [j.status_code for j in jobs] == [202, 202]
    third = c.post("/jobs", json={**spec, "queue": "parked"})
    assert third.status_code == 429 and "FITCYCLE_MAX_ACTIVE_JOBS" in third.json()["detail"]

    # Event streams: 1 open at a time.
    job_id = jobs[0].json()["id"]
    auth = {"Authorization": f"Bearer {c.key}"}
    with (
        httpx.Client(base_url=c.base, headers=auth, timeout=30) as http,
        http.stream("GET", f"/jobs/{job_id}/events") as first,
    ):
        assert first.status_code == 200
        second = c.get(f"/jobs/{job_id}/events")
        assert second.status_code == 429 and "FITCYCLE_MAX_EVENT_STREAMS" in second.json()["detail"]
    for j in jobs:
        assert c.post(f"/jobs/{j.json()['id']}/cancel").status_code == 202
    # The closed stream gave its slot back (the job is over now, so this stream ends at once).
    wait_for(lambda: c.get(f"/jobs/{job_id}/events").status_code == 200, 10, "the stream slot to come back")

    # Requests per minute: 40; the answer says when to come back.
    statuses = [c.get("/datasets").status_code for _ in range(45)]
    assert statuses.count(429) >= 1
    limited = c.get("/datasets")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1

"""Prometheus metrics and Flower's task events. The API's /metrics (no key) counts requests by route template and
status, times predicts, says how many answers wait to be logged, and reads jobs by state and kind and the queues'
depth at scrape time; a worker started
with FITCYCLE_WORKER_METRICS_PORT serves job and epoch durations, images/s and its heartbeat; the API and the
worker send Celery's task events over Redis, which is what Flower shows."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from celery import Celery

from core.datasets.samples import write_sample
from tests.platform.services import free_port, start, wait_for
from tests.platform.stack import Stack, make_zip


def sample(text: str, name: str, **labels: str) -> float | None:
    """A sample's value from Prometheus' text format (labels matched as given, in any order)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit("} ", 1)[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


class TaskEvents:
    """Celery's task events on the stack's Redis broker, as Flower receives them, collected in a thread."""

    def __init__(self, broker: str) -> None:
        self.app = Celery(broker=broker, set_as_current=False)
        self.events: list[dict[str, Any]] = []
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        with self.app.connection() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> TaskEvents:
        self._thread.start()

        def probe_arrived() -> bool:  # events are published to whoever listens then: listen before the job
            with self.app.events.default_dispatcher() as dispatcher:
                dispatcher.send("fitcycle-probe")
            time.sleep(0.2)
            return any(e["type"] == "fitcycle-probe" for e in self.events)

        wait_for(probe_arrived, 30, "the event receiver to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)

    def of(self, task_id: str) -> list[str]:
        return [e["type"] for e in self.events if e.get("uuid") == task_id]


def test_the_api_and_a_worker_serve_their_metrics(stack: Stack, tmp_path: Path) -> None:
    client, _ = stack.new_project("metrics")
    server = stack.a.base.removesuffix("/api/v1")
    # This worker, with its metrics port, takes the queue's jobs while it runs.
    stack.worker.stop()
    port = free_port()
    worker = start("worker", ["worker"], {**stack.env, "FITCYCLE_WORKER_METRICS_PORT": str(port)}, stack.workdir)
    stack.workers.append(worker)
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200, 90, "the worker's metrics")

    data = write_sample("fashion-mnist", tmp_path / "data", per_class=20, size=32, classes=["bag", "trouser"])
    ds = client.upload("metered", make_zip(data, tmp_path / "m.zip")).json()
    spec = {"arch": "resnet18", "pretrained": "none", "size": 32, "bs": 16, "freeze_epochs": 0, "epochs": 2}
    with TaskEvents(stack.env["FITCYCLE_BROKER_URL"]) as flower:
        job = client.wait(client.submit(kind="fine_tune", dataset_id=ds["id"], **spec)["id"])
        assert job["state"] == "succeeded", job["error"]
        sent = [e for e in flower.events if e["type"] == "task-sent" and job["id"] in str(e.get("args"))]
        assert len(sent) == 1 and sent[0]["name"] == "fitcycle.run_job"  # the API's send
        wait_for(lambda: "task-succeeded" in flower.of(sent[0]["uuid"]), 30, "the worker's task-succeeded event")
        assert flower.of(sent[0]["uuid"])[-3:] == ["task-received", "task-started", "task-succeeded"]
    image = next((data / "bag").glob("*.png")).read_bytes()
    assert client.post(f"/models/{job['model_id']}/predict", files={"file": ("b.png", image)}).status_code == 200
    assert httpx.get(f"{stack.a.base}/jobs").status_code == 401  # no key: refused, and counted

    api = httpx.get(f"{server}/metrics")  # no key
    assert api.status_code == 200 and api.headers["content-type"].startswith("text/plain")
    text = api.text
    assert (sample(text, "fitcycle_jobs", state="succeeded", kind="fine_tune") or 0) >= 1
    assert sample(text, "fitcycle_queue_depth", queue="fitcycle") == 0  # nothing waits
    route = "/api/v1/jobs/{job_id}"
    assert (sample(text, "fitcycle_http_requests_total", route=route, method="GET", status="200") or 0) >= 1
    assert (sample(text, "fitcycle_http_requests_total", route="unmatched", method="GET", status="401") or 0) >= 1
    assert (sample(text, "fitcycle_predict_seconds_count", source="file") or 0) >= 1
    assert (sample(text, "fitcycle_predict_batch_images_count") or 0) >= 1  # micro-batching is on by default
    depth = "fitcycle_prediction_log_queue_depth"  # answers not yet written to the prediction log
    wait_for(lambda: sample(httpx.get(f"{server}/metrics").text, depth) == 0, 10, "the prediction log to be written")
    assert job["id"] not in text and ds["id"] not in text  # labels are templates, never ids

    mine = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert sample(mine, "fitcycle_job_seconds_count", kind="fine_tune", outcome="succeeded") == 1
    assert sample(mine, "fitcycle_epoch_seconds_count") == 2
    assert (sample(mine, "fitcycle_images_per_second") or 0) > 0
    heartbeat = sample(mine, "fitcycle_worker_heartbeat_timestamp_seconds") or 0
    assert time.time() - heartbeat < 30

"""Stopping processes the way supervisors do. A worker sent SIGTERM mid-epoch checkpoints at the next batch
and hands its job back to the queue (not failed, not cancelled), then exits within a bounded time; another
worker resumes the job, which ends `succeeded` exactly once with every step recorded once. Killing `fitcycle
serve`, by SIGTERM or SIGKILL, leaves no worker behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from core.datasets.samples import write_sample
from tests.platform.services import Client, fitcycle, free_port, start, wait_for
from tests.platform.stack import Stack, make_zip


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is gone for our purposes
        return f.read().split(") ", 1)[1][0] != "Z"


@pytest.mark.slow
def test_a_sigtermed_worker_checkpoints_and_hands_its_job_back(stack: Stack, tmp_path: Path) -> None:
    a = stack.a
    data = write_sample("fashion-mnist", tmp_path / "data", per_class=80, size=48, classes=["bag", "trouser"])
    ds = a.upload("sigterm", make_zip(data, tmp_path / "sigterm.zip")).json()
    job = a.submit(
        kind="stage1", dataset_id=ds["id"], arch="resnet18", pretrained="none", size=48, bs=8, epochs=3, lr=3e-3, seed=2
    )
    wait_for(
        lambda: (j := a.get(f"/jobs/{job['id']}").json())["state"] == "running" and j["epoch"] == 1 and j["batch"],
        300,
        "the job to be in its second epoch",
        interval=0.1,
    )
    worker = stack.worker
    started = time.monotonic()
    os.kill(worker.proc.pid, signal.SIGTERM)  # the worker itself, as a supervisor's stop does
    worker.proc.wait(timeout=60)
    took = time.monotonic() - started
    handed = a.get(f"/jobs/{job['id']}").json()
    assert handed["state"] == "queued" and handed["error"] is None, handed
    assert took < 30, f"the worker took {took:.1f} s to stop"
    names = {x["name"] for x in a.get(f"/jobs/{job['id']}/artifacts").json()["data"]}
    assert "checkpoints/last.pt" in names
    stopped_at = handed["progress"]
    assert "handed back to the queue" in worker.tail()

    stack.start_worker()
    done = a.wait(job["id"], timeout=600)
    assert done["state"] == "succeeded", done["error"] or stack.logs()
    assert done["attempts"] == 2 and done["model_id"]
    metrics = a.get(f"/jobs/{job['id']}/metrics").json()
    assert [(e["tag"], e["epoch"]) for e in metrics["epochs"]] == [("stage1", 0), ("stage1", 1), ("stage1", 2)]
    iters = [b["iter"] for b in metrics["batches"]]
    assert iters == list(range(3 * stopped_at["n_batches"]))  # no step lost, none recorded twice


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_serve_leaves_no_worker_behind(tmp_path: Path, sig: int) -> None:
    data_dir = tmp_path / "fitcycle"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITCYCLE_")}
    env["PYTHONUNBUFFERED"] = "1"
    key = fitcycle("keys", "create", "--project", "stop", "--data-dir", str(data_dir), env=env).splitlines()[-1]
    port = free_port()
    serve = start("serve", ["serve", "--data-dir", str(data_dir), "--port", str(port)], env, tmp_path)
    try:
        client = Client(f"http://127.0.0.1:{port}/api/v1", key)
        wait_for(lambda: client.get("/health").status_code == 200, 90, "fitcycle serve to answer")
        ready = data_dir / ".worker-ready"
        worker_pid = int(wait_for(lambda: ready.exists() and ready.read_text().strip(), 90, "the worker"))
        assert alive(worker_pid)
        os.kill(serve.proc.pid, sig)  # serve alone, not its group: the worker must notice by itself
        serve.proc.wait(timeout=60)
        wait_for(lambda: not alive(worker_pid), 30, f"the worker to go after serve got {signal.Signals(sig).name}")
    except BaseException:
        print(serve.tail(6000))
        raise
    finally:
        serve.kill()

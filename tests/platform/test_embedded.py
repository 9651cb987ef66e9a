"""The same flow on the embedded default, through `fitcycle serve`: SQLite, a local object store and
Celery's filesystem broker under one data dir — no server installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.platform.services import BIN, Client, Process, fitcycle, free_port, start, wait_for
from tests.platform.stack import ImageServer
from tests.platform.test_e2e_distributed import course_flow

DEMO_MIN_ACCURACY = 0.83  # the demo's recipe measured 0.851-0.858 here (bench/demo_frontier.py); some slack for CPUs


@pytest.mark.slow
def test_fitcycle_serve_runs_the_course_flow(
    tmp_path: Path, fashion_zip64: Path, image_server: ImageServer, step: Callable[[str], None]
) -> None:
    data_dir = tmp_path / "fitcycle"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITCYCLE_")}
    env.update(
        PYTHONUNBUFFERED="1",
        FITCYCLE_REPORT_EVERY_N_BATCHES="1",
        FITCYCLE_URL_FETCH_ALLOW_HOSTS=json.dumps([image_server.base.removeprefix("http://")]),
    )
    key = fitcycle("keys", "create", "--project", "laptop", "--data-dir", str(data_dir), env=env).splitlines()[-1]
    port = free_port()
    serve = start("serve", ["serve", "--data-dir", str(data_dir), "--port", str(port)], env, tmp_path)
    try:
        client = Client(f"http://127.0.0.1:{port}/api/v1", key)
        wait_for(lambda: client.get("/health").status_code == 200, 90, "fitcycle serve to answer /health")
        health = client.get("/health").json()
        assert health["checks"] == {"database": "ok", "store": "ok", "broker": "ok"}
        stage2 = course_flow(client, fashion_zip64, image_server, step)
        # Everything lives under the one data dir.
        assert (data_dir / "fitcycle.db").is_file()
        assert any((data_dir / "objects").rglob("weights.safetensors"))
        assert (data_dir / "broker" / "queue").is_dir()
        assert (data_dir / "broker" / "control").is_dir() and not (Path.cwd() / "control").exists()
        assert stage2["state"] == "succeeded"
        cli_client_verbs(
            env | {"FITCYCLE_URL": f"http://127.0.0.1:{port}", "FITCYCLE_KEY": key}, fashion_zip64, tmp_path
        )
    except BaseException:
        print(serve.tail(8000))
        raise
    finally:
        serve.stop()


def cli_client_verbs(env: dict[str, str], archive: Path, tmp_path: Path) -> None:
    """The same server through `fitcycle datasets/jobs/models`: upload, submit --watch (a bar with the loss
    and a line per epoch), an artifact, predict."""
    ds = json.loads(fitcycle("datasets", "upload", "cli-data", str(archive), env=env))
    res = subprocess.run(
        [
            str(BIN / "fitcycle"),
            "jobs",
            "submit",
            "fine_tune",
            "--dataset",
            ds["id"],
            "--set",
            "arch=resnet18",
            "--set",
            "pretrained=none",
            "--set",
            "size=32",
            "--set",
            "bs=16",
            "--set",
            "freeze_epochs=0",
            "--set",
            "epochs=2",
            "--set",
            "lr=0.005",
            "--watch",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    job_id, report = res.stdout.split("\n", 1)
    assert json.loads(report)["state"] == "succeeded"
    assert "loss=" in res.stderr and "train epoch 1: train_loss=" in res.stderr and "error_rate=" in res.stderr
    out = tmp_path / "losses.png"
    fitcycle("jobs", "artifact", job_id, "plots/losses.png", "--out", str(out), env=env)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model_id = json.loads(report)["model_id"]
    with zipfile.ZipFile(archive) as zf:
        image = tmp_path / "one.png"
        image.write_bytes(zf.read(next(n for n in zf.namelist() if n.endswith(".png"))))
    line = json.loads(fitcycle("models", "predict", model_id, str(image), env=env))
    assert line["path"] == str(image) and len(line["predictions"]) == 4
    bad = subprocess.run(
        [str(BIN / "fitcycle"), "jobs", "submit", "stage1", "--dataset", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "404" in bad.stderr and "no dataset 'nope'" in bad.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _serve_demo(data_dir: Path, env: dict[str, str], logdir: Path) -> tuple[Process, int, str]:
    """`fitcycle serve --demo` until its ready banner is out: (process, port, output so far)."""
    port = free_port()
    serve = start("serve", ["serve", "--data-dir", str(data_dir), "--port", str(port), "--demo"], env, logdir)
    wait_for(lambda: "  export FITCYCLE_URL=" in serve.tail(20000), 300, "the demo banner", interval=0.5)
    return serve, port, serve.tail(20000)


@pytest.mark.slow
def test_make_run_twice_reuses_the_demo_and_leaves_no_worker_behind(tmp_path: Path) -> None:
    """`make run` is `fitcycle serve --demo`: the ready banner comes after the start-up logs, with commands
    that run as printed; a second start reuses the demo's key, dataset and job; killing serve (SIGTERM, then
    SIGKILL) takes its worker with it."""
    data_dir = tmp_path / "fitcycle"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITCYCLE_")} | {"PYTHONUNBUFFERED": "1"}

    serve, port, first = _serve_demo(data_dir, env, tmp_path)
    worker = int((data_dir / ".worker-ready").read_text())
    try:
        assert first.index("fitcycle is ready.") > first.index("worker ready")
        assert "alembic" not in first and "-------------- fitcycle@" not in first  # no migration chatter, no banner
        assert "demo key created" in first and "uploaded: 5000 Fashion-MNIST images" in first and "queued" in first
        watch = next(line for line in first.splitlines() if " jobs watch " in line).split("#")[0].split()
        assert watch[0] == ".venv/bin/fitcycle" or Path(watch[0]).is_absolute(), watch
        key = first.split("FITCYCLE_KEY=", 1)[1].split()[0]
        follow = {"FITCYCLE_URL": f"http://127.0.0.1:{port}", "FITCYCLE_KEY": key}
        res = subprocess.run(watch, env=env | follow, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0 and json.loads(res.stdout)["state"] == "succeeded", res.stderr
        # serve says what the demo made: a model worth showing (its job time is bench/demo_frontier.py's to measure).
        wait_for(lambda: "Demo model ready: accuracy " in serve.tail(20000), 60, "the demo's outcome line")
        said = serve.tail(20000).split("Demo model ready: accuracy ", 1)[1]
        print("demo:", said.splitlines()[0])
        assert float(said.split()[0]) >= DEMO_MIN_ACCURACY and " s of job time" in said.splitlines()[0]
    finally:
        os.kill(serve.proc.pid, signal.SIGTERM)
        serve.proc.wait(timeout=60)
    wait_for(lambda: not _alive(worker), 30, "the worker to end with serve (SIGTERM)")

    serve, _, second = _serve_demo(data_dir, env, tmp_path)
    worker = int((data_dir / ".worker-ready").read_text())
    os.kill(serve.proc.pid, signal.SIGKILL)
    serve.proc.wait(timeout=60)
    wait_for(lambda: not _alive(worker), 30, "the worker to end with serve (SIGKILL)")
    assert "demo key reused" in second and "reused (version 1, 5000 images)" in second
    assert "reused (succeeded, model " in second and "nothing new queued" in second

"""`fitcycle serve`: the API and one worker on one machine. Start-up is quiet; once the API answers and the
worker is ready it prints, last, what to run next — with the path of this very `fitcycle` (it is not on PATH
after `make run`). `--demo` makes (or, on later runs, reuses) a demo project, its key, a real sample dataset
and a fine-tune job, and says which it reused."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from cli.platform import masked_url, settings_from
from core.jobs.kind_names import DEFAULT_KIND

if TYPE_CHECKING:
    from core.config import Settings

DEMO_DATASET = "fashion-mnist"
# The demo's data and job, chosen by measurement (bench/demo_frontier.py, the frontier in docs/performance.md):
# 5,000 Fashion-MNIST images at their own 28 px and a ResNet-18 trained from scratch for 5 epochs reach about
# 0.85 accuracy in under 2 minutes of job time on 2 CPU cores. Fine-tuning the ImageNet-pretrained
# EfficientNet-Lite0 got at best 0.79 in that time: its features want larger images than these, and at 48-64 px
# it costs 2-4x more per image on a CPU. Augmentation is off: in 5 epochs it costs more than it gives
# (0.73 -> 0.58 with it on, measured at 64 px).
DEMO_SAMPLE = {"per_class": 500, "size": 28}
DEMO_JOB = {
    "kind": DEFAULT_KIND,
    "arch": "resnet18",
    "pretrained": "none",
    "size": 28,
    "bs": 128,
    "freeze_epochs": 0,
    "epochs": 5,
    "lr": 1e-2,
    "augment": False,
}


def fitcycle_command() -> str:
    """How to run this fitcycle from the current folder (e.g. `.venv/bin/fitcycle`)."""
    exe = Path(sys.executable).parent / "fitcycle"
    try:
        shown = exe.relative_to(Path.cwd())
    except ValueError:
        shown = exe
    return shlex.quote(str(shown))


def _wait_ready(base: str, ready_file: Path | None, timeout: float = 600) -> bool:
    """True once the API answers /health and the worker (if any) has written its ready file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            api_ok = httpx.get(f"{base}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            api_ok = False
        if api_ok and (ready_file is None or ready_file.exists()):
            return True
        time.sleep(0.3)
    return False


def _demo_key(settings: Settings, base: str) -> tuple[str, bool]:
    """The demo project's key: the one kept in the data dir while it still works, else a new one."""
    from api.admin import create_key

    path = settings.data_dir / "demo" / "key"
    if path.is_file():
        key = path.read_text().strip()
        if httpx.get(f"{base}/datasets", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200:
            return key, True
    _, _, key = create_key(settings, "demo", name="demo")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key, False


@dataclass
class Demo:
    """What the demo made or reused."""

    said: list[str]
    key: str
    job_id: str
    model_id: str | None
    sample: Path


def _demo(settings: Settings, base: str) -> Demo:
    """Make or reuse the demo's key, dataset and job."""
    from core.datasets.samples import write_sample

    key, key_reused = _demo_key(settings, base)
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=300)
    folder = settings.data_dir / "demo" / DEMO_DATASET
    said = [f"demo key {'reused' if key_reused else 'created'} (kept in {settings.data_dir / 'demo' / 'key'})"]

    datasets = http.get("/datasets").json()["data"]
    ds = next((d for d in datasets if d["name"] == DEMO_DATASET), None)
    if ds is None:
        archive = settings.data_dir / "demo" / f"{DEMO_DATASET}.zip"
        if not archive.exists():
            write_sample("fashion-mnist", folder, per_class=DEMO_SAMPLE["per_class"], size=DEMO_SAMPLE["size"])
            shutil.make_archive(str(archive.with_suffix("")), "zip", folder)
        with archive.open("rb") as f:
            res = http.post("/datasets", data={"name": DEMO_DATASET}, files={"archive": (archive.name, f)})
        res.raise_for_status()
        ds = res.json()
        said.append(f"dataset {ds['id']} uploaded: {ds['n_items']} Fashion-MNIST images")
    else:
        said.append(f"dataset {ds['id']} reused (version {ds['version']}, {ds['n_items']} images)")

    jobs = http.get("/jobs", params={"limit": 500}).json()["data"]
    job = next(
        (
            j
            for j in jobs
            if j["dataset_version_id"] == ds["version_id"]
            and j["kind"] == DEMO_JOB["kind"]
            and j["state"] not in ("failed", "cancelled")
        ),
        None,
    )
    if job is None:
        res = http.post("/jobs", json={**DEMO_JOB, "dataset_id": ds["id"]})
        res.raise_for_status()
        job = res.json()
        said.append(f"fine-tune job {job['id']} queued")
    else:
        model = f", model {job['model_id']}" if job.get("model_id") else ""
        said.append(f"fine-tune job {job['id']} reused ({job['state']}{model}): nothing new queued")
    return Demo(said, key, job["id"], job.get("model_id"), folder)


def _banner(settings: Settings, base: str, demo: Demo | None) -> str:
    fc = fitcycle_command()
    server = base.removesuffix("/api/v1")
    lines = [
        "",
        "fitcycle is ready.",
        f"  web UI    {server}/   (sign in with a project key)",
        f"  API       {base}      docs {server}/docs",
        f"  data dir  {settings.data_dir.resolve()}   database {masked_url(settings.sqlalchemy_url)}",
        f"  the CLI   {fc}   (or: source {Path(fc).parent}/activate, then fitcycle ...)",
    ]
    if demo is None:
        lines.append(f"  a key:    {fc} keys create --project NAME --data-dir {settings.data_dir}")
        return "\n".join(lines) + "\n"
    job, model = demo.job_id, demo.model_id
    lines += [
        "Demo: " + "; ".join(demo.said),
        f"  export FITCYCLE_URL={server} FITCYCLE_KEY={demo.key}",
        f"  {fc} jobs watch {job}            # progress bar with loss and metrics",
        f"  {fc} jobs show {job}",
        f'  curl -sN -H "Authorization: Bearer $FITCYCLE_KEY" {base}/jobs/{job}/events',
        f"  {fc} models predict {model or '<model_id from jobs show>'} {demo.sample}/bag/0000.png",
    ]
    return "\n".join(lines) + "\n"


def demo_outcome(job: dict[str, Any]) -> str:
    """What the demo's job made, in one line: its validation accuracy and its job time (start to end on the
    worker), or how it ended otherwise."""
    if job["state"] != "succeeded":
        return f"Demo job {job['id']} {job['state']}" + (f": {job['error']}" if job.get("error") else "")
    result = job["result"]
    seconds = (result.get("timings") or {}).get("total")
    n_valid = sum(c.get("valid", 0) for c in (result.get("counts") or {}).values())
    accuracy = result.get("accuracy")
    shown = f"accuracy {accuracy:.3f}" if isinstance(accuracy, int | float) else "no accuracy"
    took = f"{seconds:.0f} s of job time" if isinstance(seconds, int | float) else "its time unknown"
    return f"Demo model ready: {shown} on {n_valid} validation images, {took} (model {job.get('model_id')})"


def _follow_demo(base: str, demo: Demo, timeout: float = 3600) -> None:
    """Print the demo job's outcome once it ends (a reused finished job: at once)."""
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {demo.key}"}, timeout=30)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            job = http.get(f"/jobs/{demo.job_id}").json()
        except httpx.HTTPError:
            job = {"state": "unknown"}
        if job.get("state") in ("succeeded", "failed", "cancelled"):
            print(demo_outcome(job), flush=True)
            return
        time.sleep(2)


def _announce(settings: Settings, base: str, ready_file: Path | None, demo: bool) -> None:
    if not _wait_ready(base, ready_file):
        print("fitcycle: the API or the worker did not come up within 10 minutes; see the log above", flush=True)
        return
    try:
        made = _demo(settings, base) if demo else None
        print(_banner(settings, base, made), flush=True)
    except httpx.HTTPError as exc:
        print(f"fitcycle: the demo could not be set up: {exc}", flush=True)
        return
    if made is not None:
        _follow_demo(base, made)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.admin import prepare_database
    from api.main import create_app
    from core.logs import setup_logging

    settings = settings_from(args)
    setup_logging(settings.log_format)
    prepare_database(settings)
    base = f"http://{args.host}:{args.port}/api/v1"
    env = {**os.environ, "FITCYCLE_DATA_DIR": str(settings.data_dir.resolve())}
    worker, ready_file = None, None
    if not args.no_worker:
        ready_file = settings.data_dir / ".worker-ready"
        ready_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", "cli.main", "worker", "--ready-file", str(ready_file)]
        worker = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    print(f"fitcycle: starting the API on {base}" + ("" if args.no_worker else " and one worker"), flush=True)
    threading.Thread(target=_announce, args=(settings, base, ready_file, args.demo), daemon=True).start()
    try:
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level="info" if args.access_log else "warning",
            access_log=args.access_log,
            log_config=None,  # ours (core/logs.py): one format, the request id on every line
            # Longer than a client's or a proxy's idle keep-alive (75 s is nginx's): a server that closes an idle
            # connection first races the client's next request on it, which then fails with a reset.
            timeout_keep_alive=75,
            # X-Forwarded-Proto/-For are believed from these proxies only (None: uvicorn's 127.0.0.1 and ::1): behind
            # a TLS proxy the request's scheme is then https, and the web UI's session cookie stays Secure.
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
        )
    finally:
        _stop(worker)
    return 0


def _die_with_parent() -> None:
    """In the worker, before it runs: ask Linux for SIGTERM when `serve` dies, however it dies. (uvicorn
    re-raises the SIGTERM it caught once it has shut down, so the process ends before any `finally` of ours.)"""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _stop(worker: subprocess.Popen[Any] | None) -> None:
    if worker is not None and worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)

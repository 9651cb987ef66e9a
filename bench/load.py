"""Load: a burst of tiny jobs against a distributed fitcycle on this machine, and many concurrent predict clients
against one API process with micro-batching on and off.

    PYTHONPATH=. .venv/bin/python bench/load.py --jobs 1000 --burst-arch efficientnet_lite0 --store local
    PYTHONPATH=. .venv/bin/python bench/load.py --predict-clients 100 --seconds 60  # predict under load
    PYTHONPATH=. .venv/bin/python bench/load.py --predict-clients 100 --seconds 60 --arch resnet34 --size 224
    PYTHONPATH=. .venv/bin/python bench/load.py --quick   # both, small: 50 jobs; 10 clients for 5 s

Everything runs on 127.0.0.1: a fresh PostgreSQL database (dropped afterwards), a Redis database number of its
own (flushed), SeaweedFS as the object store (--store local: a folder), one API process (`fitcycle serve
--no-worker`) and --workers `fitcycle worker` processes (each imports torch: about 640 MB apiece).

Jobs: each is a fine_tune of an untrained --burst-arch (resnet18 unless set) at 16 px, one epoch of 8 digits (the
cheapest job that runs the whole path: claim, data, training, export, a model registered), all sent at once.
Prints submit p50/p95, the drain rate against the ideal one (workers / a job's median run time, from the same
run), and checks that every job succeeded on its first attempt and made exactly one model. Each job keeps its
model's export bundle (resnet18: about 90 MB, efficientnet_lite0: about 33 MB) and deletes its checkpoints once
exported (SeaweedFS reclaims deleted space only when it vacuums): 1,000 resnet18 jobs need about 100 GB of disk,
1,000 efficientnet_lite0 jobs on the local store about 40 GB. The bench stops the burst while 5 GB are left.

Predict: an untrained --arch at --size px (default resnet18 at 32 px) trained for one epoch through the platform.
The clients (prebuilt requests over keep-alive connections, bench/rawhttp.py; --client httpx for httpx) each
post one image per request for --seconds to the API with micro-batching on
(FITCYCLE_PREDICT_BATCH_WINDOW_MS=--window-ms), then to a fresh API with it off (0). The baseline is
Predictor.predict_batch in this process on the same images, --max-batch at a time. Prints the error rate (and the
first failed answer's body), latency p50/p95/p99, throughput, the served/in-process ratio, the CPU each process on
the machine spent per answered request, the API process's CPU per answered image against the in-process CPU per
image (a ratio that does not depend on where the load generator and the services run: target <= 1.15), and the
RSS of the API and worker processes before and after the load (target: growth under 10%). --no-keep-inputs turns
the project's keep_inputs off; --profile DIR writes py-spy's collapsed stacks of the API under each load, sampled
while a thread holds the GIL: where its Python time goes (pip install py-spy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import torch

from bench import rawhttp
from core.datasets.samples import write_sample
from core.engine.inference import Predictor
from tests.platform.services import (
    Client,
    Process,
    fitcycle,
    free_port,
    postgres_database,
    redis_database,
    seaweedfs,
    start,
    wait_for,
)

FINISHED = ("succeeded", "failed", "cancelled")
MIN_FREE_DISK = 5e9  # bytes: a burst that would leave less stops (CI and the services share this disk)


# ----- the platform: services, workers, and an API process started on demand ----------------------------------


@dataclass
class Platform:
    env: dict[str, str]
    workdir: Path
    key: str
    workers: list[Process]
    what: str  # its services, in words

    @contextmanager
    def api(self, **settings: str) -> Iterator[tuple[Process, Client]]:
        """One `fitcycle serve --no-worker` with these FITCYCLE_* settings on top, answering, then stopped."""
        port = free_port()
        proc = start("api", ["serve", "--no-worker", "--port", str(port)], {**self.env, **settings}, self.workdir)
        client = Client(f"http://127.0.0.1:{port}/api/v1", self.key)
        try:
            wait_for(lambda: client.get("/health").status_code == 200, 120, "the API")
            yield proc, client
        except BaseException:
            print(f"--- api log ---\n{proc.tail()}", file=sys.stderr)
            raise
        finally:
            client.http.close()
            proc.stop()


@contextmanager
def platform(workdir: Path, store: str, n_workers: int) -> Iterator[Platform]:
    """PostgreSQL, Redis, SeaweedFS (or a local store) and `n_workers` workers that are consuming."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITCYCLE_")}
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(
        PYTHONUNBUFFERED="1",
        TMPDIR=str(workdir / "tmp"),
        FITCYCLE_DATA_DIR=str(workdir / "data"),
        FITCYCLE_MAX_ACTIVE_JOBS="1000000",  # the burst is the point: no per-project cap
        FITCYCLE_REQUESTS_PER_MINUTE="0",  # nor a rate limit
        FITCYCLE_LOOP_INTERVAL_SECONDS="0",  # no webhooks or retraining policies in the way
    )
    with ExitStack() as stack:
        env["FITCYCLE_DATABASE_URL"] = stack.enter_context(postgres_database())
        env["FITCYCLE_BROKER_URL"] = stack.enter_context(redis_database())
        what = "PostgreSQL, Redis, a local store"
        if store == "seaweedfs":
            what = "PostgreSQL, Redis, SeaweedFS"
            s3 = stack.enter_context(seaweedfs(workdir / "s3"))
            env.update(
                FITCYCLE_STORAGE="s3",
                FITCYCLE_S3_ENDPOINT=s3.endpoint,
                FITCYCLE_S3_ACCESS_KEY=s3.access_key,
                FITCYCLE_S3_SECRET_KEY=s3.secret_key,
                FITCYCLE_S3_BUCKET="fitcycle-bench",
            )
        fitcycle("db", "upgrade", env=env)
        key = fitcycle("keys", "create", "--project", "bench", env=env).splitlines()[-1]
        workers: list[Process] = []
        try:
            ready = [workdir / f"worker{i}.ready" for i in range(n_workers)]
            for i, flag in enumerate(ready):
                workers.append(start(f"worker{i}", ["worker", "--ready-file", str(flag)], env, workdir))
            for i, flag in enumerate(ready):
                wait_for(flag.is_file, 300, f"worker {i} to consume")
            yield Platform(env, workdir, key, workers, what)
        except BaseException:
            for w in workers:
                print(f"--- {w.name} log ---\n{w.tail()}", file=sys.stderr)
            raise
        finally:
            for w in workers:
                w.stop()


# ----- figures -------------------------------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile (inclusive method)."""
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


def rss_mb(pid: int) -> float:
    """VmRSS of a process and its descendants, in MB (from /proc/PID/status)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0) / 1024
    return total


def cpu_by_command() -> dict[str, float]:
    """CPU seconds (user + system) used so far by every process on the machine, summed by command name."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        used[name] = used.get(name, 0.0) + (int(rest[11]) + int(rest[12])) / ticks
    return used


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) one process has used so far, all its threads together (/proc/PID/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[int, int]:
    """(busy, all) CPU ticks of the whole machine so far, from /proc/stat (idle and iowait are not busy)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the machine's CPU time that was busy between two machine_cpu() readings."""
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def batch_images(base: str) -> tuple[float, float]:
    """(images, forward passes) of the API's predict micro-batcher so far, from its /metrics."""
    text = httpx.get(base.removesuffix("/api/v1") + "/metrics").text
    values = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("fitcycle_predict_batch_images_")
    )
    return float(values.get("fitcycle_predict_batch_images_sum", 0)), float(
        values.get("fitcycle_predict_batch_images_count", 0)
    )


def wait_for_the_log(base: str) -> None:
    """Until the API's prediction log has written every answer (its write-behind queue is empty), so that the CPU
    read next includes writing them."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = httpx.get(base.removesuffix("/api/v1") + "/metrics").text.splitlines()
        depth = next((ln.split()[-1] for ln in lines if ln.startswith("fitcycle_prediction_log_queue_depth ")), "0")
        if float(depth) == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("the API's prediction log did not catch up within 60 s")


def cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> str:
    """Where the machine's CPU went during a load, in ms per answered request, biggest first."""
    spent = {k: after[k] - before.get(k, 0.0) for k in after}
    top = sorted(((v, k) for k, v in spent.items() if v > 0.05), reverse=True)[:6]
    total = sum(v for v, _ in top)
    parts = "  ".join(f"{k} {v / max(1, requests) * 1000:.1f}" for v, k in top)
    return f"CPU ms per request: {parts}  (these together {total / max(1, requests) * 1000:.1f})"


def rss_of(api: Process, workers: list[Process]) -> dict[str, float]:
    return {"api": rss_mb(api.proc.pid), **{w.name: rss_mb(w.proc.pid) for w in workers}}


def print_rss(label: str, before: dict[str, float], after: dict[str, float]) -> float:
    """One line per process: before -> after and the growth; returns the largest growth in percent."""
    worst = 0.0
    for name in before:
        growth = (after[name] - before[name]) / before[name] * 100
        worst = max(worst, growth)
        print(f"RSS {label} {name:>8}: {before[name]:7.1f} MB -> {after[name]:7.1f} MB  ({growth:+.1f}%)")
    return worst


def zipped(folder: Path) -> Path:
    return Path(shutil.make_archive(str(folder), "zip", folder))


def seconds_between(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


# ----- part a: a burst of tiny jobs ----------------------------------------------------------------------------


async def submit_burst(base: str, key: str, spec: dict[str, Any], n: int, connections: int) -> list[tuple[str, float]]:
    """POST /jobs n times at once (over at most `connections` connections): each job's id and submit seconds."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=300) as http:

        async def one() -> tuple[str, float]:
            t = time.perf_counter()
            r = await http.post("/jobs", json=spec)
            took = time.perf_counter() - t
            if r.status_code != 202:
                raise RuntimeError(f"POST /jobs answered {r.status_code}: {r.text[:300]}")
            return str(r.json()["id"]), took

        return await asyncio.gather(*(one() for _ in range(n)))


def jobs_by_id(client: Client, ids: list[str]) -> dict[str, dict[str, Any]]:
    """These jobs, by id: GET /jobs page by page, and GET /jobs/{id} for any the pages missed (they are ordered
    by creation time only, so paging over equal times may skip one)."""
    out: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = client.get("/jobs", params={"offset": offset, "limit": 500}).json()
        out.update((j["id"], j) for j in page["data"])
        offset += len(page["data"])
        if not page["data"] or offset >= page["count"]:
            break
    for job_id in ids:
        if job_id not in out:
            out[job_id] = client.get(f"/jobs/{job_id}").json()
    return out


def disk_used(folder: Path) -> float:
    """Bytes of the files under folder."""
    return float(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()))


def job_burst(pf: Platform, n: int, connections: int, arch: str, tmp: Path) -> None:
    folder = write_sample("digits", tmp / "digits", per_class=4, size=16, classes=["zero", "one"])
    spec: dict[str, Any] = {
        "kind": "fine_tune",
        "arch": arch,
        "pretrained": "none",
        "size": 16,
        "bs": 4,
        "freeze_epochs": 0,
        "epochs": 1,
        "lr": 1e-3,
    }
    with pf.api() as (api, client):
        spec["dataset_id"] = client.upload("digits", zipped(folder)).json()["id"]
        # Warm-up: one job alone (it makes the dataset's registry name: the first registrations of a name, made at
        # once by two workers, race in repos.register_model and one fails), then one job per worker, so that each
        # has imported what training needs and holds the data.
        for wave in ([client.submit(**spec)["id"]], [client.submit(**spec)["id"] for _ in pf.workers]):
            for job_id in wave:
                warm = client.wait(job_id, timeout=600)
                assert warm["state"] == "succeeded", f"a warm-up job {warm['state']}: {warm['error']}"
        rss_before = rss_of(api, pf.workers)
        rss_during: dict[int, dict[str, float]] = {}

        submitted = asyncio.run(submit_burst(client.base, client.key, spec, n, connections))
        ids = [job_id for job_id, _ in submitted]
        submit = [s for _, s in submitted]  # printed now: a burst stopped early (the disk guard) still shows it
        print(f"submit (all {n} at once, {connections} connections): p50 {pct(submit, 50) * 1000:.1f} ms")
        print(f"submit p95 {pct(submit, 95) * 1000:.1f} ms   max {max(submit) * 1000:.1f} ms", flush=True)
        print(f"(a submit's time includes its wait for a free connection: all {n} were accepted within")
        print(f"{max(submit):.1f} s, {n / max(submit):.0f} jobs/s, while the workers were training)", flush=True)
        deadline = time.monotonic() + max(900.0, 30.0 * n / len(pf.workers))
        while True:
            jobs = jobs_by_id(client, ids)
            done = sum(jobs[i]["state"] in FINISHED for i in ids)
            for quarter in (1, 2, 3):  # is memory growth a plateau or a leak: RSS at each quarter of the drain
                if done >= quarter * n / 4 and quarter not in rss_during:
                    rss_during[quarter] = rss_of(api, pf.workers)
            if done == n:
                break
            free = shutil.disk_usage(pf.workdir).free
            if free < MIN_FREE_DISK:
                raise RuntimeError(
                    f"stopped after {done} of {n} jobs: {free / 1e9:.1f} GB of disk left. Each job keeps its "
                    "model's export bundle (resnet18's weights and model.onnx: about 90 MB), and SeaweedFS "
                    "reclaims the checkpoints a job deletes (about 135 MB) only when it vacuums"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {n} jobs finished in time")
            time.sleep(1.0 if n <= 100 else 5.0)
        rss_after = rss_of(api, pf.workers)
        models = Counter(m["job_id"] for m in client.get("/models").json()["data"])

    burst = [jobs[i] for i in ids]
    states = Counter(j["state"] for j in burst)
    once = sum(j["attempts"] == 1 for j in burst)
    one_model = sum(models[j["id"]] == 1 and j["model_id"] is not None for j in burst)
    first = min(j["created_at"] for j in burst)
    last = max(j["finished_at"] for j in burst if j["finished_at"])
    drain = seconds_between(first, last)
    runs = [seconds_between(j["started_at"], j["finished_at"]) for j in burst if j["started_at"] and j["finished_at"]]
    run_p50 = statistics.median(runs)
    ideal = len(pf.workers) / run_p50
    print(f"jobs: {n} x fine_tune {arch} at 16 px, one epoch of 8 images; {len(pf.workers)} workers; {pf.what}")
    print(f"disk: the platform's folder holds {disk_used(pf.workdir) / 1e9:.1f} GB after the burst")
    print(f"drain: {n} jobs in {drain:.1f} s, {n / drain:.2f} jobs/s")
    print(f"a job's run time p50 {run_p50:.2f} s: ideal {ideal:.2f} jobs/s with {len(pf.workers)} workers")
    print(f"drain/ideal ratio: {n / drain / ideal:.3f}")
    print(f"succeeded {states['succeeded']}/{n}" + "".join(f", {s} {k}" for s, k in states.items() if s != "succeeded"))
    print(f"ran once (attempts == 1) {once}/{n}")
    print(f"one model each {one_model}/{n}")
    worst = print_rss("jobs", rss_before, rss_after)
    for name in rss_before:
        points = [(0, rss_before), *((q * 25, rss_during[q]) for q in sorted(rss_during)), (100, rss_after)]
        print(f"RSS jobs {name:>8} along the drain (MB): " + "   ".join(f"{at}% {r[name]:.0f}" for at, r in points))
    print(f"RSS growth over the burst, worst process: {worst:+.1f}% (target < 10%)")
    failed = [j for j in burst if j["state"] != "succeeded"][:3]
    for j in failed:
        print(f"  job {j['id']} {j['state']}: {j['error']}")


# ----- part b: predict under load, micro-batching on and off ---------------------------------------------------


@dataclass
class LoadRun:
    latencies: list[float] = field(default_factory=list)  # of the answered requests, seconds
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    answers: dict[int, dict[str, float]] = field(default_factory=dict)  # image index -> {label: probability}
    cpu: float = 0.0  # this process's CPU seconds meanwhile (the load generator shares the machine)
    first_error: dict[str, str] = field(default_factory=dict)  # error kind -> the first such answer's body

    @property
    def total(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    @property
    def rate(self) -> float:
        """Answered requests per second."""
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


async def hammer(
    base: str, key: str, path: str, images: list[bytes], clients: int, seconds: float, how: str = "raw"
) -> LoadRun:
    """`clients` concurrent clients, each posting one image per request until `seconds` have passed, over one
    keep-alive connection each: prebuilt requests (`how` "raw", bench/rawhttp.py) or httpx ("httpx")."""
    run = LoadRun()
    url = httpx.URL(base)
    host, port = url.host, url.port or 80
    headers = {"Authorization": f"Bearer {key}"}
    prebuilt = [
        rawhttp.multipart_post(f"{host}:{port}", url.path + path, headers, "file", f"{k}.png", image, "image/png")
        for k, image in enumerate(images)
    ]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=120) as http:
        cpu, start = time.process_time(), time.perf_counter()
        deadline = start + seconds

        async def post(conn: rawhttp.Connection, k: int) -> tuple[int, bytes]:
            if how == "raw":
                return await asyncio.wait_for(conn.send(prebuilt[k]), 120)
            r = await http.post(path, files={"file": (f"{k}.png", images[k], "image/png")})
            return r.status_code, r.content

        async def client(i: int) -> None:
            n, conn = i, rawhttp.Connection(host, port)
            while time.perf_counter() < deadline:
                k, n = n % len(images), n + clients
                t = time.perf_counter()
                try:
                    status, body = await post(conn, k)
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                    run.errors[type(exc).__name__] += 1
                    continue
                if status != 200:
                    run.errors[f"HTTP {status}"] += 1
                    run.first_error.setdefault(f"HTTP {status}", body[:300].decode(errors="replace"))
                    continue
                run.latencies.append(time.perf_counter() - t)
                if k not in run.answers:
                    run.answers[k] = {label: p for label, p in json.loads(body)["predictions"]}
            conn.close()

        await asyncio.gather(*(client(i) for i in range(clients)))
        run.elapsed, run.cpu = time.perf_counter() - start, time.process_time() - cpu
    return run


def in_process(predictor: Predictor, images: list[bytes], batch: int, seconds: float) -> tuple[float, float]:
    """Images per second through Predictor.predict_batch, `batch` at a time (decoding included), and the CPU
    cores this process kept busy meanwhile."""
    predictor.predict_batch(images[:batch])  # warm-up
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for i in range(0, len(images), batch):
            done += len(predictor.predict_batch(images[i : i + batch]))
    elapsed = time.perf_counter() - start
    return done / elapsed, (time.process_time() - cpu) / elapsed


def train_model(client: Client, folder: Path, arch: str, size: int) -> str:
    """An untrained `arch` at `size` px, one epoch through the platform; its model id."""
    ds = client.upload("fashion", zipped(folder)).json()
    job = client.wait(
        client.submit(
            kind="fine_tune",
            dataset_id=ds["id"],
            arch=arch,
            pretrained="none",
            size=size,
            bs=16,
            freeze_epochs=0,
            epochs=1,
            lr=1e-3,
        )["id"],
        timeout=900,
    )
    assert job["state"] == "succeeded", job["error"]
    return str(job["model_id"])


@dataclass
class PredictPlan:
    clients: int
    seconds: float
    window_ms: float
    max_batch: int
    arch: str
    size: int
    keep_inputs: bool
    profile: Path | None  # py-spy's collapsed stacks of the API under each load go here, when set
    http: str  # the load generator's client: "raw" (prebuilt requests) or "httpx"


def profiled(api: Process, out: Path | None, seconds: float) -> ExitStack:
    """While the block runs, py-spy samples the API process into `out` (collapsed stacks), when `out` is set."""
    stack = ExitStack()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [spy, "record", "--pid", str(api.proc.pid), "--format", "raw", "--subprocesses", "--nonblocking", "--gil"]
        cmd += ["--output", str(out), "--duration", str(max(1, int(seconds))), "--rate", "50"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(proc.wait, 60)
    return stack


def predict_load(pf: Platform, plan: PredictPlan, tmp: Path) -> None:
    clients, seconds, window_ms, max_batch = plan.clients, plan.seconds, plan.window_ms, plan.max_batch
    folder = write_sample("fashion-mnist", tmp / "fashion", per_class=16, size=plan.size, classes=["trouser", "bag"])
    images = [p.read_bytes() for p in sorted(folder.rglob("*.png"))]
    with pf.api() as (_, client):
        model_id = train_model(client, folder, plan.arch, plan.size)
        client.http.patch("/project", json={"keep_inputs": plan.keep_inputs}).raise_for_status()
        bundle_zip = tmp / "bundle.zip"
        bundle_zip.write_bytes(client.get(f"/models/{model_id}/bundle").content)
    with zipfile.ZipFile(bundle_zip) as z:
        z.extractall(tmp / "bundle")
    predictor = Predictor(tmp / "bundle")
    local_rate, local_cores = in_process(predictor, images, max_batch, min(seconds, 15.0))
    local = {label: p for label, p in predictor.predict(images[0]).public()["predictions"]}
    path = f"/models/{model_id}/predict"

    runs: dict[str, LoadRun] = {}
    cpu: dict[str, str] = {}  # mode -> where the CPU went
    busy: dict[str, float] = {}  # mode -> the share of the machine's CPU time that was busy
    api_cpu: dict[str, float] = {}  # mode -> the API process's CPU seconds per answered request
    batches: dict[str, float] = {}  # mode -> images per forward pass, on average
    rss: dict[str, tuple[dict[str, float], dict[str, float], dict[str, float]]] = {}
    modes = {"batched": window_ms, "unbatched": 0.0}
    for mode, window in modes.items():
        settings = {"FITCYCLE_PREDICT_BATCH_WINDOW_MS": str(window), "FITCYCLE_PREDICT_MAX_BATCH": str(max_batch)}
        with pf.api(**settings) as (api, client):
            cold = rss_of(api, pf.workers)
            # Warm-up at full concurrency: the model loaded, the threadpool and allocator grown, before "before".
            asyncio.run(hammer(client.base, client.key, path, images, clients, min(3.0, seconds / 2), plan.http))
            before = rss_of(api, pf.workers)
            cpu_before, machine_before, batched_before = cpu_by_command(), machine_cpu(), batch_images(client.base)
            api_before = process_cpu(api.proc.pid)
            with profiled(api, plan.profile and plan.profile / f"{mode}.txt", seconds):
                runs[mode] = asyncio.run(hammer(client.base, client.key, path, images, clients, seconds, plan.http))
            wait_for_the_log(client.base)
            api_cpu[mode] = (process_cpu(api.proc.pid) - api_before) / max(1, len(runs[mode].latencies))
            cpu[mode] = cpu_per_request(cpu_before, cpu_by_command(), len(runs[mode].latencies))
            busy[mode] = busy_share(machine_before, machine_cpu())
            batched_after = batch_images(client.base)
            batches[mode] = (batched_after[0] - batched_before[0]) / max(1.0, batched_after[1] - batched_before[1])
            rss[mode] = (cold, before, rss_of(api, pf.workers))

    print(
        f"predict: {plan.arch} at {plan.size} px on CPU ({torch.get_num_threads()} threads here), {clients} clients x"
        f" {seconds:g} s, one image per request, keep_inputs {'on' if plan.keep_inputs else 'off'}, client"
        f" {plan.http}; batching: window {window_ms:g} ms, at most {max_batch}"
    )
    print(
        f"in-process Predictor.predict_batch ({max_batch} at a time): {local_rate:.1f} images/s, {local_cores:.2f}"
        f" cores busy ({local_cores / local_rate * 1000:.1f} ms of CPU per image)"
    )
    for mode, r in runs.items():
        lat = r.latencies or [float("nan")]
        errors = sum(r.errors.values())
        print(
            f"{mode:>9}: errors {errors / max(1, r.total):.2%} ({errors}/{r.total})"
            + "".join(f" {k}: {v}" for k, v in r.errors.items())
        )
        for kind, body in r.first_error.items():
            print(f"{mode:>9}: the first {kind}: {body}")
        print(
            f"{mode:>9}: p50 {pct(lat, 50) * 1000:.1f} ms   p95 {pct(lat, 95) * 1000:.1f} ms   "
            f"p99 {pct(lat, 99) * 1000:.1f} ms"
        )
        print(f"{mode:>9}: {r.rate:.1f} req/s   (the load generator used {r.cpu:.1f} CPU s of {r.elapsed:.1f} s)")
        if batches[mode]:
            print(f"{mode:>9}: {batches[mode]:.1f} images per forward pass on average")
        print(f"{mode:>9}: {cpu[mode]}; the machine's CPUs were {busy[mode]:.0%} busy")
    local_cpu = local_cores / local_rate  # CPU seconds per image in-process
    for mode, r in runs.items():
        print(f"served/in-process throughput ratio, {mode}: {r.rate / local_rate:.3f}")
        print(
            f"API CPU per served image / in-process CPU per image, {mode}: {api_cpu[mode] / local_cpu:.3f}"
            f" ({api_cpu[mode] * 1000:.1f} ms / {local_cpu * 1000:.1f} ms; target <= 1.15)"
        )
    if runs["unbatched"].rate:
        print(f"batched/unbatched throughput ratio: {runs['batched'].rate / runs['unbatched'].rate:.2f}")
    worst = 0.0
    for mode, (cold, before, after) in rss.items():
        print(f"RSS {mode} api at start {cold['api']:.1f} MB (before: after a warm-up at full concurrency)")
        worst = max(worst, print_rss(mode, before, after))
    print(f"RSS growth under load, worst process: {worst:+.1f}% (target < 10%)")
    # The same image's answer from both modes and from the Predictor here: batching must not change it.
    reference, diffs = runs["unbatched"].answers, []
    for r in runs.values():
        for k, answer in r.answers.items():
            diffs += [abs(p - reference[k][c]) for c, p in answer.items() if k in reference]
        diffs += [abs(r.answers[0][c] - p) for c, p in local.items() if 0 in r.answers]
    print(f"answers: max |dp| across modes and in-process {max(diffs, default=float('nan')):.2e} (target <= 1e-6)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=0, help="jobs in the burst (0: skip that part)")
    p.add_argument("--burst-arch", default="resnet18", help="the burst's jobs' architecture (untrained)")
    p.add_argument("--burst-connections", type=int, default=64, help="connections the burst is sent over")
    p.add_argument("--predict-clients", type=int, default=0, help="concurrent predict clients (0: skip that part)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long each predict load lasts")
    p.add_argument("--window-ms", type=float, default=5.0, help="FITCYCLE_PREDICT_BATCH_WINDOW_MS of the batched run")
    p.add_argument("--max-batch", type=int, default=32, help="FITCYCLE_PREDICT_MAX_BATCH, and the baseline's batch")
    p.add_argument("--arch", default="resnet18", help="the predict model's architecture (untrained, one epoch)")
    p.add_argument("--size", type=int, default=32, help="the predict model's input size, px")
    p.add_argument("--keep-inputs", action=argparse.BooleanOptionalAction, default=True, help="keep_inputs on or off")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw", help="the predict load generator's HTTP client")
    p.add_argument("--profile", type=Path, help="folder for py-spy's collapsed stacks of the API under each load")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--store", choices=["seaweedfs", "local"], default="seaweedfs")
    p.add_argument("--quick", action="store_true", help="a smoke run: 50 jobs, 10 clients for 5 s (unless set)")
    args = p.parse_args()
    if args.quick:
        args.jobs = args.jobs or 50
        args.predict_clients = args.predict_clients or 10
        args.seconds = 5.0 if args.seconds == p.get_default("seconds") else args.seconds
    if not args.jobs and not args.predict_clients:
        p.error("nothing to run: give --jobs N, --predict-clients N, or --quick")
    tmp = Path(tempfile.mkdtemp(prefix="fitcycle-bench-"))
    try:
        with platform(tmp / "platform", args.store, args.workers) as pf:
            if args.jobs:
                job_burst(pf, args.jobs, args.burst_connections, args.burst_arch, tmp)
            if args.predict_clients:
                plan = PredictPlan(
                    args.predict_clients,
                    args.seconds,
                    args.window_ms,
                    args.max_batch,
                    args.arch,
                    args.size,
                    args.keep_inputs,
                    args.profile,
                    args.client,
                )
                predict_load(pf, plan, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

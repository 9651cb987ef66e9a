"""Queue latency: submit -> worker start (the job's started_at minus created_at), p50 and p95, on Redis
and on the embedded filesystem broker, measured in the same run.

    .venv/bin/python bench/queue_latency.py [--jobs 20]

Each job is a tiny lr_find that the bench cancels as soon as it starts, so the worker is idle again
when the next one is submitted: what is measured is the queue, not training.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path

from core.datasets.samples import write_sample
from tests.platform.services import (
    Client,
    fitcycle,
    free_port,
    postgres_database,
    redis_database,
    start,
    wait_for,
)


@contextmanager
def platform(workdir: Path, broker: str) -> Iterator[Client]:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITCYCLE_")}
    env.update(PYTHONUNBUFFERED="1", FITCYCLE_DATA_DIR=str(workdir / "data"))
    with ExitStack() as stack:
        if broker == "redis":
            env["FITCYCLE_DATABASE_URL"] = stack.enter_context(postgres_database())
            env["FITCYCLE_BROKER_URL"] = stack.enter_context(redis_database())
            fitcycle("db", "upgrade", env=env)
        key = fitcycle("keys", "create", "--project", "bench", env=env).splitlines()[-1]
        port = free_port()
        proc = start("serve", ["serve", "--port", str(port)], env, workdir)
        try:
            client = Client(f"http://127.0.0.1:{port}/api/v1", key)
            wait_for(lambda: client.get("/health").status_code == 200, 120, "the API")
            yield client
        finally:
            proc.stop()


def measure(client: Client, archive: Path, n: int) -> list[float]:
    ds = client.upload("tiny", archive).json()
    spec = {"kind": "lr_find", "dataset_id": ds["id"], "arch": "resnet18", "pretrained": "none", "size": 16, "bs": 4}
    client.wait(client.submit(**spec)["id"])  # warm-up: the worker imports torch and fetches the data once
    out = []
    for _ in range(n):
        job = client.submit(**spec)
        started = client.wait(job["id"], timeout=120, states=("running", "succeeded", "failed", "cancelled"))
        client.post(f"/jobs/{job['id']}/cancel")
        client.wait(job["id"], timeout=120)
        t0, t1 = (datetime.fromisoformat(started[k]) for k in ("created_at", "started_at"))
        out.append((t1 - t0).total_seconds())
    return out


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fitcycle-bench-"))
    try:
        folder = write_sample("digits", tmp / "digits", per_class=4, size=16, classes=["zero", "one"])
        archive = Path(shutil.make_archive(str(tmp / "digits"), "zip", folder))
        results = {}
        for broker in ("embedded", "redis"):
            with platform(tmp / broker, broker) as client:
                t = time.perf_counter()
                results[broker] = measure(client, archive, args.jobs)
                print(f"{broker}: {args.jobs} jobs in {time.perf_counter() - t:.1f}s")
        for broker, xs in results.items():
            print(
                f"{broker:>9}: submit -> worker start  "
                f"p50 {pct(xs, 50) * 1000:7.1f} ms   p95 {pct(xs, 95) * 1000:7.1f} ms"
            )
        ratio = statistics.median(results["embedded"]) / statistics.median(results["redis"])
        print(f"embedded/redis p50 ratio: {ratio:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

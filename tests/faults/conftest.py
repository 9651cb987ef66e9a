"""A distributed fitcycle whose PostgreSQL, Redis and S3 server belong to the fault tests alone, so they can
stop, kill and restart them mid-job: a private PostgreSQL cluster and Redis on ports of their own, SeaweedFS,
one API process and one worker process (tests may start more). They last as long as tests/faults, not the
whole session: stopped, the API's one-second reaper loop and the idle services stop costing the later tests CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.datasets.samples import write_sample
from tests.faults.services import PrivatePostgres, PrivateRedis, private_postgres, private_redis
from tests.platform.services import Client, fitcycle, free_port, seaweedfs, start, wait_for
from tests.platform.stack import BUCKET, Stack, make_zip


@dataclass
class FaultStack:
    stack: Stack
    pg: PrivatePostgres
    redis: PrivateRedis

    @property
    def a(self) -> Client:
        return self.stack.a


@pytest.fixture(scope="package")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    workdir = tmp_path_factory.mktemp("faults")
    (workdir / "tmp").mkdir()
    with seaweedfs(workdir / "s3") as s3, private_postgres() as pg, private_redis(workdir / "redis") as redis:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": str(workdir / "tmp"),
            "FITCYCLE_DATA_DIR": str(workdir / "data"),
            "FITCYCLE_DATABASE_URL": pg.url,
            "FITCYCLE_STORAGE": "s3",
            "FITCYCLE_S3_ENDPOINT": s3.endpoint,
            "FITCYCLE_S3_ACCESS_KEY": s3.access_key,
            "FITCYCLE_S3_SECRET_KEY": s3.secret_key,
            "FITCYCLE_S3_BUCKET": BUCKET,
            "FITCYCLE_BROKER_URL": redis.url,
            "FITCYCLE_LEASE_SECONDS": "10",
            "FITCYCLE_REAPER_INTERVAL_SECONDS": "1",
            "FITCYCLE_REQUEUE_AFTER_SECONDS": "5",
            "FITCYCLE_LOOP_INTERVAL_SECONDS": "1",
            "FITCYCLE_CHECKPOINT_EVERY_N_STEPS": "3",
            "FITCYCLE_REPORT_EVERY_N_BATCHES": "1",
        }
        fitcycle("db", "upgrade", env=env)
        key = fitcycle("keys", "create", "--project", "faults", env=env).strip().splitlines()
        port = free_port()
        api = start("api", ["serve", "--no-worker", "--port", str(port)], env, workdir)
        client = Client(f"http://127.0.0.1:{port}/api/v1", key[-1])
        st = Stack(env, s3, workdir, api, client, client, key[0].split("(")[1][:-1])
        st.start_worker()
        try:
            wait_for(lambda: client.get("/health").status_code == 200, 90, "the API to answer /health")
            yield FaultStack(st, pg, redis)
        except BaseException:
            print(st.logs(), "\n--- postgres ---\n", pg.log())
            raise
        finally:
            for p in [*st.workers, api]:
                p.stop()


@pytest.fixture(scope="package")
def faults_dataset(faults: FaultStack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One small real dataset (Fashion-MNIST bags and trousers, 48 px) for every fault test's jobs."""
    folder = tmp_path_factory.mktemp("faults-data")
    data = write_sample("fashion-mnist", folder / "data", per_class=80, size=48, classes=["bag", "trouser"])
    res = faults.a.upload("faults", make_zip(data, folder / "faults.zip"))
    assert res.status_code == 201, res.text
    return str(res.json()["id"])


def small_job(faults: FaultStack, dataset_id: str, seed: int) -> dict[str, object]:
    """Three epochs of 16 steps, a checkpoint every 3 steps: about half a minute here."""
    return faults.a.submit(
        kind="stage1",
        dataset_id=dataset_id,
        arch="resnet18",
        pretrained="none",
        size=48,
        bs=8,
        epochs=3,
        lr=3e-3,
        seed=seed,
    )


def log_of(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""

"""The distributed stack for platform and security tests (a pytest plugin, loaded by tests/conftest.py, so both
folders share one stack per session): SeaweedFS (S3), PostgreSQL, Redis, an API process and a worker process,
with two projects (A and B) and their keys."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from core.datasets.samples import write_sample
from core.storage.s3 import S3Store
from tests.platform.services import (
    Client,
    Process,
    S3Server,
    fitcycle,
    free_port,
    postgres_database,
    redis_database,
    seaweedfs,
    start,
    wait_for,
)

BUCKET = "fitcycle-test"


class ImageHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files from a folder; /to-metadata redirects to the cloud metadata address; a POST (a webhook
    delivery) is kept in `received` with its headers and answered 204."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    timed: ClassVar[list[tuple[dict[str, str], bytes, float]]] = []  # the same, with the path and arrival time
    hung: ClassVar[list[float]] = []  # arrivals at /hang, which never answers (its thread sleeps 30 s)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path == "/hang":
            ImageHandler.hung.append(time.time())
            time.sleep(30)
            return
        ImageHandler.received.append((headers, body))
        ImageHandler.timed.append(({**headers, "path": self.path}, body, time.time()))
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:
        if self.path == "/to-metadata":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class ImageServer:
    base: str
    folder: Path


@pytest.fixture(scope="session")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageServer]:
    folder = tmp_path_factory.mktemp("www")
    shutil.copy(
        write_sample("fashion-mnist", folder / "src", per_class=1, size=64, classes=["bag"]) / "bag" / "0000.png",
        folder / "bag.png",
    )
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), lambda *a: ImageHandler(*a, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield ImageServer(f"http://127.0.0.1:{port}", folder)
    server.shutdown()


@dataclass
class Stack:
    """A running distributed fitcycle."""

    env: dict[str, str]
    s3: S3Server
    workdir: Path
    api: Process
    a: Client
    b: Client
    project_a: str
    workers: list[Process] = field(default_factory=list)

    def start_worker(self) -> Process:
        worker = start("worker", ["worker"], self.env, self.workdir)
        self.workers.append(worker)
        return worker

    @property
    def worker(self) -> Process:
        return self.workers[-1]

    def store(self) -> S3Store:
        return S3Store(self.s3.endpoint, self.s3.access_key, self.s3.secret_key, BUCKET)

    def restart_api(self) -> None:
        """Stop the API process and start another on the same port (the clients keep their base URL)."""
        port = self.a.base.split(":")[-1].split("/")[0]
        self.api.stop()
        self.api = start("api", ["serve", "--no-worker", "--port", port], self.env, self.workdir)
        wait_for(lambda: self.a.get("/health").status_code == 200, 90, "the restarted API to answer /health")

    def new_project(self, name: str, *extra: str) -> tuple[Client, str]:
        """A client with a new admin key of project `name` (made if needed), and the project's id."""
        out = fitcycle("keys", "create", "--project", name, *extra, env=self.env).strip().splitlines()
        return Client(self.a.base, out[-1]), out[0].split("(")[1][:-1]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in [self.api, *self.workers])


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, image_server: ImageServer) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    (workdir / "tmp").mkdir()  # the processes' TMPDIR: where request bodies spool (tests look in it)
    with seaweedfs(workdir / "s3") as s3, postgres_database() as pg, redis_database() as broker:
        host = image_server.base.removeprefix("http://")
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": str(workdir / "tmp"),
            "FITCYCLE_DATA_DIR": str(workdir / "data"),
            "FITCYCLE_DATABASE_URL": pg,
            "FITCYCLE_STORAGE": "s3",
            "FITCYCLE_S3_ENDPOINT": s3.endpoint,
            "FITCYCLE_S3_ACCESS_KEY": s3.access_key,
            "FITCYCLE_S3_SECRET_KEY": s3.secret_key,
            "FITCYCLE_S3_BUCKET": BUCKET,
            "FITCYCLE_BROKER_URL": broker,
            "FITCYCLE_LEASE_SECONDS": "6",
            "FITCYCLE_REAPER_INTERVAL_SECONDS": "1",
            "FITCYCLE_LOOP_INTERVAL_SECONDS": "1",
            "FITCYCLE_CHECKPOINT_EVERY_N_STEPS": "3",
            "FITCYCLE_REPORT_EVERY_N_BATCHES": "1",
            "FITCYCLE_MAX_EXTRACTED_BYTES": str(30 * 1024**2),
            "FITCYCLE_URL_FETCH_ALLOW_HOSTS": json.dumps([host]),
        }
        fitcycle("db", "upgrade", env=env)
        key_a = fitcycle("keys", "create", "--project", "alpha", env=env).strip().splitlines()
        key_b = fitcycle("keys", "create", "--project", "beta", env=env).strip().splitlines()[-1]
        port = free_port()
        api = start("api", ["serve", "--no-worker", "--port", str(port)], env, workdir)
        base = f"http://127.0.0.1:{port}/api/v1"
        st = Stack(env, s3, workdir, api, Client(base, key_a[-1]), Client(base, key_b), key_a[0].split("(")[1][:-1])
        st.start_worker()
        try:
            wait_for(lambda: st.a.get("/health").status_code == 200, 90, "the API to answer /health")
            yield st
        except BaseException:
            print(st.logs())
            raise
        finally:
            for p in [*st.workers, st.api]:
                p.stop()


def make_zip(folder: Path, dest: Path) -> Path:
    return Path(shutil.make_archive(str(dest.with_suffix("")), "zip", folder))


@pytest.fixture(scope="session")
def fashion_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 Fashion-MNIST classes, 30 images each, 32 px, zipped as class folders."""
    tmp = tmp_path_factory.mktemp("zip")
    folder = write_sample(
        "fashion-mnist", tmp / "data", per_class=30, size=32, classes=["trouser", "bag", "sneaker", "dress"]
    )
    return make_zip(folder, tmp / "fashion.zip")


@pytest.fixture(scope="session")
def fashion_zip64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 Fashion-MNIST classes, 40 images each, 64 px (EfficientNet-Lite0 needs more than 32 px)."""
    tmp = tmp_path_factory.mktemp("zip64")
    folder = write_sample(
        "fashion-mnist", tmp / "data", per_class=40, size=64, classes=["trouser", "bag", "sneaker", "dress"]
    )
    return make_zip(folder, tmp / "fashion64.zip")

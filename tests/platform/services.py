"""Real services for platform tests: a SeaweedFS S3 server, a fresh PostgreSQL database, a Redis
database, and fitcycle's own API and worker processes — all started and stopped by the tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} did not happen within {timeout}s (last error: {last})")


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen[bytes]
    args: list[str] = field(default_factory=list)
    log: Path | None = None

    def stop(self) -> None:
        """Stop the server (its data stays on disk): clients see connections refused until start()."""
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)

    def start(self) -> None:
        """Start it again on the same ports and data, and wait until it answers."""
        from minio import Minio

        assert self.log is not None
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        client = Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)
        wait_for(lambda: client.list_buckets() is not None, 60, "SeaweedFS S3 answering")


@contextmanager
def seaweedfs(workdir: Path) -> Iterator[S3Server]:
    """`weed mini` bound to 127.0.0.1 with an access key (without -s3.config it would accept anyone)."""
    access, secret = "fitcycle-test", uuid.uuid4().hex
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "fitcycle",
                        "credentials": [{"accessKey": access, "secretKey": secret}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    s3 = free_port()
    args = [
        str(BIN / "weed"),
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        f"-s3.port={s3}",
        f"-master.port={free_port()}",
        f"-volume.port={free_port()}",
        f"-filer.port={free_port()}",
        f"-admin.port={free_port()}",
        "-admin.ui=false",
        "-webdav=false",
    ]
    log = workdir / "weed.log"
    log.write_bytes(b"")
    server = S3Server(f"127.0.0.1:{s3}", access, secret, None, args, log)  # type: ignore[arg-type]
    try:
        server.start()
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"fitcycle_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@contextmanager
def redis_database() -> Iterator[str]:
    """A Redis database number of our own, flushed before and after."""
    import redis

    db = 1 + os.getpid() % 14
    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    client.flushdb()
    try:
        yield f"redis://127.0.0.1:6379/{db}"
    finally:
        client.flushdb()


def fitcycle(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    """Run a fitcycle command to completion; returns stdout."""
    res = subprocess.run([str(BIN / "fitcycle"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"fitcycle {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res.stdout


@dataclass
class Process:
    """A background fitcycle process in its own process group (so a kill takes its children too)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def start(name: str, args: list[str], env: dict[str, str], logdir: Path) -> Process:
    log = logdir / f"{name}-{uuid.uuid4().hex[:6]}.log"
    out = log.open("wb")
    proc = subprocess.Popen(
        [str(BIN / "fitcycle"), *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    return Process(name, proc, log)


@dataclass
class Client:
    """A thin HTTP client with a project key."""

    base: str
    key: str
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=120)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.post(path, **kw)

    def upload(self, name: str, archive: Path, **fields: str) -> httpx.Response:
        with archive.open("rb") as f:
            return self.post("/datasets", data={"name": name, **fields}, files={"archive": (archive.name, f)})

    def submit(self, **spec: Any) -> dict[str, Any]:
        res = self.post("/jobs", json=spec)
        assert res.status_code == 202, res.text
        return dict(res.json())

    def wait(
        self, job_id: str, timeout: float = 600, states: tuple[str, ...] = ("succeeded", "failed", "cancelled")
    ) -> dict[str, Any]:
        job: dict[str, Any] = wait_for(
            lambda: (j := self.get(f"/jobs/{job_id}").json())["state"] in states and j,
            timeout,
            f"job {job_id} to finish",
            interval=0.3,
        )
        return job

"""Services that fault tests stop and start themselves: a private PostgreSQL cluster and a private Redis, each
on a port of its own (the machine's own servers are never touched)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.platform.services import free_port, wait_for


def _as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its commands as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class PrivatePostgres:
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*_as_postgres(), "pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "pg.log"), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-w", "-o", opts, "start")

    def stop(self) -> None:
        self._ctl("-w", "-m", "fast", "stop")

    def log(self) -> str:
        path = self.folder / "pg.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A throwaway PostgreSQL cluster (initdb, trust auth, 127.0.0.1 only) that the test may stop and start."""
    folder = Path(tempfile.mkdtemp(prefix="fitcycle-pg-"))  # not under pytest's tmp: postgres must reach it
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    pg = PrivatePostgres(folder, free_port())
    try:
        subprocess.run(
            [*_as_postgres(), "initdb", "-D", str(folder / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        pg.start()
        yield pg
    finally:
        with suppress(subprocess.CalledProcessError):  # already stopped
            pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class PrivateRedis:
    folder: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.folder / "redis.log").open("ab") as out:
            self.proc = subprocess.Popen(args, cwd=self.folder, stdout=out, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        wait_for(client.ping, 30, "the private Redis to answer")

    def kill(self) -> None:
        """Gone at once, and everything it held with it (no persistence): messages in flight are lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


@contextmanager
def private_redis(folder: Path) -> Iterator[PrivateRedis]:
    folder.mkdir(parents=True, exist_ok=True)
    server = PrivateRedis(folder, free_port())
    try:
        server.start()
        yield server
    finally:
        server.kill()

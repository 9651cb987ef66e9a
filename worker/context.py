"""The JobContext of a platform job: metrics become rows, checkpoints and artifacts go to the object
store (recorded as artifact rows), and 'should I stop?' asks the database (cancel, or lost lease)."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.db import repos
from core.db.session import session_scope
from core.engine.checkpoint import load_checkpoint, save_checkpoint
from core.storage.base import ObjectStore
from core.storage.layout import job_prefix
from worker import metrics

CHECKPOINT = "checkpoints/last.pt"


CONTENT_TYPES = {
    ".json": "application/json",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
}


def content_type_of(name: str) -> str:
    """Our own table: the system's guesses are wrong for our files (.pt came out as a SNES page table)."""
    return CONTENT_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


class DbJobContext:
    """Connects a running job to the database and the object store."""

    show_progress = False

    def __init__(
        self,
        job_id: str,
        project_id: str,
        owner: str,
        sessions: sessionmaker[Session],
        store: ObjectStore,
        work_dir: Path,
        shutdown: threading.Event | None = None,
    ) -> None:
        self.job_id, self.owner, self.sessions, self.store = job_id, owner, sessions, store
        self.shutdown = shutdown or threading.Event()  # set when the worker is asked to stop (SIGTERM)
        self.n_train = 0  # training images per epoch, for the images/s metric
        self.prefix = job_prefix(project_id, job_id)
        self.work = work_dir
        self.lease_lost = threading.Event()
        self._checked_at = 0.0
        self._stop = False
        self._fit_started: dict[str, tuple[float, int]] = {}

    # ----- metrics ---------------------------------------------------------------------------------
    def on_batch(self, row: dict[str, Any]) -> None:
        tag = row.get("tag") or ""
        started = self._fit_started.setdefault(tag, (time.monotonic(), int(row["iter"])))
        done = int(row["iter"]) - started[1] + 1
        total = int(row.get("n_epoch", 1)) * int(row.get("n_batches", 1))
        rate = (time.monotonic() - started[0]) / max(1, done)
        progress = {
            "stage": tag,
            "epoch": row["epoch"],
            "n_epoch": row.get("n_epoch"),
            "batch": row["batch"],
            "n_batches": row.get("n_batches"),
            "eta_seconds": round(rate * max(0, total - row["iter"] - 1), 1),
        }
        with session_scope(self.sessions) as s:
            repos.record_batch(s, self.job_id, row)
            repos.set_progress(s, self.job_id, self.owner, progress)

    def on_epoch(self, row: dict[str, Any]) -> None:
        with session_scope(self.sessions) as s:
            repos.record_epoch(s, self.job_id, row)
        seconds = float(row.get("seconds") or 0.0)
        if seconds > 0:
            metrics.EPOCH_SECONDS.observe(seconds)
            if self.n_train:
                metrics.IMAGES_PER_SECOND.set(self.n_train / seconds)

    # ----- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        local = save_checkpoint(state, self.work / "checkpoint-upload.pt")
        self._upload(CHECKPOINT, local)

    def latest_checkpoint(self) -> dict[str, Any] | None:
        key = f"{self.prefix}/artifacts/{CHECKPOINT}"
        if not self.store.exists(key):
            return None
        local = self.store.get_file(key, self.work / "checkpoint-download.pt")
        return load_checkpoint(local)

    # ----- artifacts -------------------------------------------------------------------------------
    def artifact_path(self, name: str) -> Path:
        path = self.work / "artifacts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def artifact_written(self, name: str) -> None:
        path = self.work / "artifacts" / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            self._upload(f.relative_to(self.work / "artifacts").as_posix(), f)

    def _upload(self, name: str, path: Path) -> None:
        key = f"{self.prefix}/artifacts/{name}"
        content_type = content_type_of(name)
        size = self.store.put_file(key, path, content_type)
        with session_scope(self.sessions) as s:
            repos.record_artifact(s, self.job_id, name, key, size, content_type)

    # ----- control ---------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        """Cancelled, the lease went to another worker, or the worker is shutting down; asks the database at most
        once a second."""
        if self._stop or self.lease_lost.is_set() or self.shutdown.is_set():
            return True
        now = time.monotonic()
        if now - self._checked_at >= 1.0:
            self._checked_at = now
            with session_scope(self.sessions) as s:
                cancel, owned = repos.job_control(s, self.job_id, self.owner)
            self._stop = cancel or not owned
        return self._stop


def new_work_dir(base: Path, job_id: str) -> Path:
    """A private scratch folder for one run of a job."""
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"job-{job_id[:8]}-", dir=base))

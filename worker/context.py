"""The JobContext of a platform job: metrics become rows, checkpoints and artifacts go to the object
store (recorded as artifact rows), and 'should I stop?' asks the database (cancel, or lost lease).

Every write is fenced: it checks, in its own transaction, that this worker still holds the job under the
attempt number its claim got (the fencing token), and raises LeaseLost otherwise. Objects go under the
attempt's own prefix, so a worker that lost its lease never overwrites what its successor stored. Database
writes ride out an outage (retried with backoff for db_retry_seconds)."""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.db import repos
from core.db.outage import retrying
from core.db.session import session_scope
from core.engine.checkpoint import load_checkpoint, save_checkpoint
from core.storage.base import ObjectStore
from core.storage.layout import attempt_prefix
from worker import metrics
from worker.trials import TrialReporter

CHECKPOINT = "checkpoints/last.pt"
log = logging.getLogger("fitcycle.worker")


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
        token: int = 1,
        db_retry_seconds: float = 120.0,
    ) -> None:
        self.job_id, self.owner, self.sessions, self.store = job_id, owner, sessions, store
        self.token = token  # the fencing token: the attempt number this worker's claim got
        self.db_retry_seconds = db_retry_seconds
        self.shutdown = shutdown or threading.Event()  # set when the worker is asked to stop (SIGTERM)
        self.n_train = 0  # training images per epoch, for the images/s metric
        self.prefix = attempt_prefix(project_id, job_id, token)
        self.work = work_dir
        self.lease_lost = threading.Event()
        self._checked_at = 0.0
        self._stop = False
        self._fit_started: dict[str, tuple[float, int]] = {}
        self.notices: list[dict[str, Any]] = []  # what the job changed on its own (core.engine.memory's backoff)
        self._progress: dict[str, Any] = {}
        self.planned_epochs = 0  # the epochs of all its fits (the whole job's ETA)
        self.estimated_phases: dict[str, float] = {}  # its dry run's estimate, when it follows one
        self._fits: dict[str, int] = {}  # each fit's epochs, as its batches report them
        self.trial: TrialReporter | None = None  # a search's trial: each epoch's objective goes to its study

    # ----- metrics ---------------------------------------------------------------------------------
    def on_batch(self, row: dict[str, Any]) -> None:
        tag = row.get("tag") or ""
        started = self._fit_started.setdefault(tag, (time.monotonic(), int(row["iter"])))
        done = int(row["iter"]) - started[1] + 1
        total = int(row.get("n_epoch", 1)) * int(row.get("n_batches", 1))
        rate = (time.monotonic() - started[0]) / max(1, done)
        fit_left = rate * max(0, total - row["iter"] - 1)
        n_epoch = int(row.get("n_epoch", 1))
        progress = {
            "stage": tag,
            "epoch": row["epoch"],
            "n_epoch": row.get("n_epoch"),
            "batch": row["batch"],
            "n_batches": row.get("n_batches"),
            "eta_seconds": round(fit_left + self._after(tag, rate, int(row.get("n_batches", 1)), n_epoch), 1),
            "fit_eta_seconds": round(fit_left, 1),
        }
        if self.notices:
            progress["notices"] = self.notices
        self._progress = progress

        def write(s: Session) -> None:
            repos.record_batch(s, self.job_id, row)
            repos.set_progress(s, self.job_id, self.owner, progress, self.token)

        self.fenced("batch metrics", write)

    def _after(self, tag: str, rate: float, n_batches: int, n_epoch: int) -> float:
        """The seconds the job has left after the fit `tag`: its dry run's estimate of the phases that follow, else
        its epochs still to come (`planned_epochs`) at this fit's rate (an end's export and plots not counted)."""
        phases = list(self.estimated_phases)
        if f"fit:{tag}" in phases:
            return sum(self.estimated_phases[p] for p in phases[phases.index(f"fit:{tag}") + 1 :])
        self._fits[tag] = n_epoch
        seen = sum(self._fits.values())
        return rate * n_batches * max(0, self.planned_epochs - seen)

    def on_progress(self, row: dict[str, Any]) -> None:
        """A job that is no fit (a predict job's chunks): its progress, and an ETA from its rate so far."""
        done, total = int(row["done"]), max(1, int(row["total"]))
        rate = float(row["seconds"]) / max(1, done - int(row.get("started", 0)))
        progress = {
            "stage": row.get("stage", ""),
            "epoch": 0,
            "n_epoch": 1,
            "batch": row["chunk"],
            "n_batches": row["n_chunks"],
            "done": done,
            "total": total,
            "eta_seconds": round(rate * (total - done), 1),
        }
        self._progress = progress
        self.fenced("progress", lambda s: repos.set_progress(s, self.job_id, self.owner, progress, self.token))

    def on_notice(self, notice: dict[str, Any]) -> None:
        """Something the job changed on its own (out of memory: a smaller micro-batch): on the job's page at once."""
        log.warning("job %s: %s", self.job_id, notice)
        self.notices.append(notice)
        progress = {**self._progress, "notices": self.notices}
        self.fenced("a notice", lambda s: repos.set_progress(s, self.job_id, self.owner, progress, self.token))

    def on_epoch(self, row: dict[str, Any]) -> None:
        self.fenced("epoch metrics", lambda s: repos.record_epoch(s, self.job_id, row))
        if self.trial is not None and self.trial.report(row):
            self._stop = True  # pruned: the job stops before its next batch, at this epoch's end
        seconds = float(row.get("seconds") or 0.0)
        if seconds > 0:
            metrics.EPOCH_SECONDS.observe(seconds)
            if self.n_train:
                metrics.IMAGES_PER_SECOND.set(self.n_train / seconds)

    # ----- checkpoints -----------------------------------------------------------------------------
    @property
    def pruned(self) -> bool:
        """The search's pruner stopped this trial."""
        return self.trial is not None and self.trial.pruned

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.pruned:
            return  # a pruned trial never resumes: its stop writes nothing
        local = save_checkpoint(state, self.work / "checkpoint-upload.pt")
        self._upload(CHECKPOINT, local)

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The job's last checkpoint, whichever attempt wrote it, if its bytes are the ones recorded: a torn or
        altered object is never loaded (the job then starts over, and the log says why)."""
        with session_scope(self.sessions) as s:
            artifact = repos.get_artifact(s, self.job_id, CHECKPOINT)
        if artifact is None or not self.store.exists(artifact.key):
            return None
        local = self.store.get_file(artifact.key, self.work / "checkpoint-download.pt")
        if artifact.sha256 is not None and sha256_of(local) != artifact.sha256:
            log.error(
                "job %s: its checkpoint %s does not match the checksum recorded when it was written; "
                "not loading it, the job starts over",
                self.job_id,
                artifact.key,
            )
            return None
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
        self.fenced("an artifact", lambda s: None)  # a worker that lost the job stores nothing more
        key = f"{self.prefix}/{name}"
        content_type = content_type_of(name)
        digest = sha256_of(path)
        size = self.store.put_file(key, path, content_type)
        self.fenced(
            f"artifact {name}", lambda s: repos.record_artifact(s, self.job_id, name, key, size, content_type, digest)
        )

    def fenced(self, what: str, write: Any) -> None:
        """Run `write(session)` in one transaction behind the fencing check, through a database outage."""

        def transaction() -> None:
            with session_scope(self.sessions) as s:
                repos.fence(s, self.job_id, self.owner, self.token)
                write(s)

        try:
            retrying(transaction, f"job {self.job_id}: writing {what}", self.db_retry_seconds)
        except repos.LeaseLost:
            self.lease_lost.set()
            raise

    # ----- control ---------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        """Cancelled, the lease went to another worker, or the worker is shutting down; asks the database at most
        once a second."""
        if self._stop or self.lease_lost.is_set() or self.shutdown.is_set():
            return True
        now = time.monotonic()
        if now - self._checked_at >= 1.0:
            self._checked_at = now
            try:
                with session_scope(self.sessions) as s:
                    cancel, owned = repos.job_control(s, self.job_id, self.owner, self.token)
            except Exception:  # the database is away: keep training; the next write waits for it
                log.warning("job %s: could not ask the database whether to stop; training on", self.job_id)
                return False
            self._stop = cancel or not owned
            if not owned:
                self.lease_lost.set()
        return self._stop


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_work_dir(base: Path, job_id: str) -> Path:
    """A private scratch folder for one run of a job."""
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"job-{job_id[:8]}-", dir=base))

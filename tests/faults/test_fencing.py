"""The fencing token, on a real PostgreSQL: once a job's lease is taken over, every write of the worker that
lost it (metrics, progress, artifacts, the model, the job's end) is refused, and its objects cannot overwrite
its successor's. A checkpoint whose bytes differ from the checksum recorded when it was written is never loaded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from core.db import repos
from core.db.models import JobRow, utcnow
from core.db.session import make_engine, make_sessionmaker, session_scope, upgrade
from core.storage.local import LocalStore
from tests.platform.services import postgres_database
from worker.context import CHECKPOINT, DbJobContext


@pytest.fixture(scope="module")
def sessions() -> Iterator[sessionmaker[Session]]:
    with postgres_database() as url:
        upgrade(url)
        engine = make_engine(url)
        yield make_sessionmaker(engine)
        engine.dispose()


def new_job(sessions: sessionmaker[Session]) -> tuple[str, str]:
    with session_scope(sessions) as s:
        project = repos.get_or_create_project(s, f"fencing-{repos.new_id()[:8]}")
        dataset = repos.create_dataset(s, repos.new_id(), project.id, "d")
        version = repos.add_dataset_version(
            s,
            id=repos.new_id(),
            dataset_id=dataset.id,
            version=1,
            labels={},
            split="random",
            classes=[],
            counts={},
            n_items=0,
            rejected=[],
            prefix="p",
            n_bytes=0,
        )
        job = repos.create_job(
            s, project_id=project.id, kind="stage1", spec={}, dataset_version_id=version.id, queue="fitcycle"
        )
        return job.id, project.id


def expire(sessions: sessionmaker[Session], job_id: str) -> None:
    with session_scope(sessions) as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def context(sessions: sessionmaker[Session], job_id: str, project_id: str, owner: str, token: int, tmp: Path) -> Any:
    work = tmp / owner
    work.mkdir(exist_ok=True)
    return DbJobContext(job_id, project_id, owner, sessions, LocalStore(tmp / "objects"), work, token=token)


def test_a_worker_whose_lease_was_taken_over_writes_nothing(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    job_id, project_id = new_job(sessions)
    with session_scope(sessions) as s:
        first = repos.claim(s, job_id, "worker-a", 60)
    assert first is not None and first.attempts == 1
    old = context(sessions, job_id, project_id, "worker-a", 1, tmp_path)
    row = {"tag": "stage1", "epoch": 0, "batch": 0, "iter": 0, "loss": 1.0, "smooth_loss": 1.0, "lr": 0.1, "mom": 0.9}
    old.on_batch(row)
    old.save_checkpoint({"step": 1})

    expire(sessions, job_id)  # worker-a froze past its lease; worker-b claims the job
    with session_scope(sessions) as s:
        second = repos.claim(s, job_id, "worker-b", 60)
    assert second is not None and second.attempts == 2
    new = context(sessions, job_id, project_id, "worker-b", 2, tmp_path)
    assert new.latest_checkpoint() == {"step": 1}  # the successor resumes from what attempt 1 stored
    new.save_checkpoint({"step": 2})

    for write in (
        lambda: old.on_batch({**row, "iter": 1, "batch": 1}),
        lambda: old.on_epoch({"tag": "stage1", "epoch": 0, "train_loss": 1.0, "valid_loss": 1.0, "seconds": 1.0}),
        lambda: old.save_checkpoint({"step": 99}),
    ):
        with pytest.raises(repos.LeaseLost):
            write()
    assert old.lease_lost.is_set() and old.should_stop()
    with session_scope(sessions) as s:
        assert [b.iter for _, b in repos.batch_metrics(s, job_id)] == [0]
        assert repos.epoch_metrics(s, job_id) == []
        assert not repos.finish(s, job_id, "worker-a", "failed", error="stale", token=1)
        assert not repos.release(s, job_id, "worker-a", token=1)
        assert not repos.renew_lease(s, job_id, "worker-a", 60, token=1)
        with pytest.raises(repos.LeaseLost):
            repos.fence(s, job_id, "worker-a", 1)
    assert new.latest_checkpoint() == {"step": 2}  # attempt 1's late write went nowhere
    stale = tmp_path / "objects" / old.prefix / "checkpoints" / "last.pt"
    assert torch.load(stale, weights_only=True) == {"step": 1}  # refused before a byte was uploaded
    with session_scope(sessions) as s:
        assert repos.get_job(s, job_id).state == "running"  # type: ignore[union-attr]
        assert repos.finish(s, job_id, "worker-b", "succeeded", token=2)


def test_a_torn_or_altered_checkpoint_is_never_loaded(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    job_id, project_id = new_job(sessions)
    with session_scope(sessions) as s:
        assert repos.claim(s, job_id, "worker-a", 60) is not None
    ctx = context(sessions, job_id, project_id, "worker-a", 1, tmp_path)
    ctx.save_checkpoint({"weights": torch.arange(1000.0)})
    loaded = ctx.latest_checkpoint()
    assert loaded is not None and torch.equal(loaded["weights"], torch.arange(1000.0))
    with session_scope(sessions) as s:
        artifact = repos.get_artifact(s, job_id, CHECKPOINT)
    assert artifact is not None and artifact.sha256 is not None
    stored = tmp_path / "objects" / artifact.key
    whole = stored.read_bytes()
    stored.write_bytes(whole[: len(whole) // 2])  # torn: the first half of the bytes
    assert ctx.latest_checkpoint() is None
    stored.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))  # one bit flipped
    assert ctx.latest_checkpoint() is None
    stored.write_bytes(whole)
    assert ctx.latest_checkpoint() is not None


def test_two_jobs_registering_a_new_name_at_once_both_get_a_version(sessions: sessionmaker[Session]) -> None:
    """Two jobs finishing together under a name that does not exist yet: one makes the name, the other waits on
    it (no duplicate-key failure), and they get versions 1 and 2."""
    job_id, project_id = new_job(sessions)
    with session_scope(sessions) as s:
        first = repos.get_job(s, job_id)
        assert first is not None
        second = repos.create_job(
            s, project_id=project_id, kind="stage1", spec={}, dataset_version_id=first.dataset_version_id, queue="q"
        )
        models = [
            repos.create_model(
                s,
                project_id=project_id,
                job_id=j,
                arch="resnet18",
                classes=["a", "b"],
                metrics={},
                bundle_prefix=f"p-{j}",
                dataset_version_id=first.dataset_version_id,
            ).id
            for j in (job_id, second.id)
        ]
    assert len(set(models)) == 2
    for round_ in range(5):
        start, errors, versions = threading.Barrier(2), list[Exception](), list[int | None]()
        threads = [
            threading.Thread(target=register, args=(sessions, m, f"race-{round_}", start, errors, versions))
            for m in models
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert sorted(v or 0 for v in versions) == [1, 2]


def register(
    sessions: sessionmaker[Session],
    model_id: str,
    name: str,
    start: threading.Barrier,
    errors: list[Exception],
    versions: list[int | None],
) -> None:
    try:
        start.wait()
        with session_scope(sessions) as s:
            versions.append(repos.register_model(s, model_id, name, as_challenger=False).version)
    except Exception as exc:
        errors.append(exc)

"""Jobs and their state machine: queued -> running (claimed under a lease by one worker) -> succeeded | failed |
cancelled. Every write a running job makes is fenced by the attempt number its claim got, so a worker whose
lease was taken over can no longer change the job; the reaper re-queues jobs whose worker died."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.orm import Session

from core.db import domain as d
from core.db.models import ArtifactRow, BatchMetricRow, EpochMetricRow, JobRow, utcnow
from core.db.repos._rows import new_id, to

ACTIVE_STATES = ("queued", "running")


class LeaseLost(Exception):
    """This worker's hold on a job was taken over (its lease expired and another worker claimed it)."""


# ----- making and reading jobs ------------------------------------------------------------------------------
def create_job(
    s: Session,
    *,
    project_id: str,
    kind: str,
    spec: dict[str, Any],
    dataset_version_id: str,
    queue: str,
    parent_job_id: str | None = None,
    by_admin: bool = True,
    search_id: str | None = None,
    trial_number: int | None = None,
) -> d.Job:
    """A new queued job (the caller sends its message once the transaction commits)."""
    row = JobRow(
        id=new_id(),
        state="queued",
        project_id=project_id,
        kind=kind,
        spec=spec,
        dataset_version_id=dataset_version_id,
        parent_job_id=parent_job_id,
        queue=queue,
        by_admin=by_admin,
        search_id=search_id,
        trial_number=trial_number,
    )
    s.add(row)
    s.flush()
    return to(d.Job, row)


def get_job(s: Session, job_id: str, project_id: str | None = None) -> d.Job | None:
    row = s.get(JobRow, job_id)
    if row is None or (project_id is not None and row.project_id != project_id):
        return None
    return to(d.Job, row)


def list_jobs(s: Session, project_id: str, limit: int = 100, offset: int = 0) -> tuple[list[d.Job], int]:
    q = select(JobRow).where(JobRow.project_id == project_id)
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = s.scalars(q.order_by(JobRow.created_at.desc()).limit(limit).offset(offset))
    return [to(d.Job, r) for r in rows], total


def job_counts(s: Session) -> list[tuple[str, str, int]]:
    """(state, kind, how many jobs), over every project."""
    rows = s.execute(select(JobRow.state, JobRow.kind, func.count()).group_by(JobRow.state, JobRow.kind))
    return [(str(state), str(kind), int(n)) for state, kind, n in rows]


def active_jobs(s: Session, project_id: str) -> int:
    """Queued and running jobs of a project."""
    return _count(s, JobRow.project_id == project_id, JobRow.state.in_(ACTIVE_STATES))


# ----- jobs related to a job, a dataset version, a model or a name ------------------------------------------
def _spec(key: str) -> ColumnElement[str]:
    """The string at `key` of a job's spec, read in SQL (`->>` on PostgreSQL, JSON_EXTRACT on SQLite)."""
    field: ColumnElement[str] = JobRow.spec[key].as_string()
    return field


def _jobs(s: Session, *where: ColumnElement[bool], order: Any = JobRow.created_at) -> list[d.Job]:
    """The jobs matching every condition, oldest first unless told otherwise: the one query behind the lookups
    below."""
    return [to(d.Job, r) for r in s.scalars(select(JobRow).where(*where).order_by(order))]


def _count(s: Session, *where: ColumnElement[bool]) -> int:
    return int(s.scalar(select(func.count()).select_from(JobRow).where(*where)) or 0)


def child_jobs(s: Session, parent_job_id: str, kind: str, state: str = "succeeded") -> list[d.Job]:
    """The children of a job of one kind in one state, the last finished first."""
    where = (JobRow.parent_job_id == parent_job_id, JobRow.kind == kind, JobRow.state == state)
    return _jobs(s, *where, order=JobRow.finished_at.desc())


def children_of(s: Session, job_id: str) -> list[d.Job]:
    """Jobs that continue from this one (any kind, any state)."""
    return _jobs(s, JobRow.parent_job_id == job_id)


def jobs_on_versions(s: Session, version_ids: list[str]) -> list[d.Job]:
    """Every job that trained or evaluated on one of these dataset versions."""
    return _jobs(s, JobRow.dataset_version_id.in_(version_ids))


def jobs_using_model(s: Session, project_id: str, model_id: str) -> list[d.Job]:
    """Queued or running jobs that start from this model (pretrained = its id)."""
    active = (JobRow.project_id == project_id, JobRow.state.in_(ACTIVE_STATES))
    return _jobs(s, *active, _spec("pretrained_model_id") == model_id)


def active_jobs_of_name(s: Session, project_id: str, name: str, kind: str) -> int:
    """Queued or running jobs of one kind (core.jobs.kinds) for a registry name."""
    active = (JobRow.project_id == project_id, JobRow.state.in_(ACTIVE_STATES))
    return _count(s, *active, JobRow.kind == kind, _spec("name") == name)


# ----- the state machine: claim, lease, fence, finish -------------------------------------------------------
def mark_enqueued(s: Session, job_id: str) -> None:
    s.execute(update(JobRow).where(JobRow.id == job_id).values(enqueued_at=utcnow()))


def claim(s: Session, job_id: str, owner: str, lease_seconds: float) -> d.Job | None:
    """queued -> running for `owner`, by a conditional update. A running job is taken over only when its
    lease has expired (its worker died). Returns the job when this owner now holds it, else None."""
    now = utcnow()
    result = s.execute(
        update(JobRow)
        .where(
            JobRow.id == job_id,
            (JobRow.state == "queued") | ((JobRow.state == "running") & (JobRow.lease_expires_at < now)),
        )
        .values(
            state="running",
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=JobRow.attempts + 1,
            started_at=func.coalesce(JobRow.started_at, now),
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return get_job(s, job_id)


def _held(job_id: str, owner: str, token: int | None) -> ColumnElement[bool]:
    """The rows of job `job_id` that `owner` holds; with `token` (the attempt it claimed), that attempt only."""
    cond = (JobRow.id == job_id) & (JobRow.state == "running") & (JobRow.lease_owner == owner)
    return cond & (JobRow.attempts == token) if token is not None else cond


def fence(s: Session, job_id: str, owner: str, token: int) -> None:
    """The fencing check of every write a running job makes: raise LeaseLost unless `owner` still holds the job
    under fencing token `token` (the attempt number its claim got). On PostgreSQL the job row is locked FOR
    SHARE until the transaction ends, so a takeover cannot slip in between this check and the write."""
    query = select(JobRow.id).where(_held(job_id, owner, token))
    if s.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    if s.scalar(query) is None:
        raise LeaseLost(f"job {job_id}: attempt {token} of {owner} no longer holds the lease")


def renew_lease(s: Session, job_id: str, owner: str, lease_seconds: float, token: int | None = None) -> bool:
    """Extend the lease; False when this owner no longer holds the job."""
    result = s.execute(
        update(JobRow)
        .where(_held(job_id, owner, token))
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def set_progress(s: Session, job_id: str, owner: str, progress: dict[str, Any], token: int | None = None) -> None:
    s.execute(update(JobRow).where(_held(job_id, owner, token)).values(progress=progress))


def job_control(s: Session, job_id: str, owner: str, token: int | None = None) -> tuple[bool, bool]:
    """(cancel requested, this owner still holds the job)."""
    row = s.get(JobRow, job_id)
    if row is None:
        return True, False
    s.refresh(row)
    held = row.state == "running" and row.lease_owner == owner and (token is None or row.attempts == token)
    return row.cancel_requested, held


def finish(
    s: Session,
    job_id: str,
    owner: str,
    state: str,
    error: str | None = None,
    result: dict[str, Any] | None = None,
    model_id: str | None = None,
    token: int | None = None,
) -> bool:
    """running -> succeeded | failed | cancelled, only by the lease owner (so a job finishes once)."""
    assert state in d.TERMINAL_STATES
    values: dict[str, Any] = {"state": state, "finished_at": utcnow(), "lease_expires_at": None, "error": error}
    if result is not None:
        values["result"] = result
    if model_id is not None:
        values["model_id"] = model_id
    res = s.execute(update(JobRow).where(_held(job_id, owner, token)).values(**values))
    return res.rowcount == 1  # type: ignore[attr-defined]


def release(s: Session, job_id: str, owner: str, token: int | None = None) -> bool:
    """running -> queued by its lease owner (a worker shutting down hands the job back; it resumes from its
    checkpoint wherever it runs next). False when this owner no longer holds it."""
    res = s.execute(
        update(JobRow)
        .where(_held(job_id, owner, token))
        .values(state="queued", lease_owner=None, lease_expires_at=None, enqueued_at=utcnow())
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def request_cancel(s: Session, job_id: str) -> d.Job | None:
    """A queued job is cancelled at once; a running one is asked to stop at its next batch."""
    s.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.state == "queued")
        .values(state="cancelled", finished_at=utcnow(), cancel_requested=True)
    )
    s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.state == "running").values(cancel_requested=True))
    return get_job(s, job_id)


def reap(s: Session, requeue_after_seconds: float) -> list[str]:
    """Re-queue running jobs whose lease expired, and find queued jobs whose message seems lost.
    Returns the ids to enqueue again (enqueued_at is bumped, so each is re-sent once per period)."""
    now = utcnow()
    expired = list(s.scalars(select(JobRow.id).where(JobRow.state == "running", JobRow.lease_expires_at < now)))
    if expired:
        s.execute(
            update(JobRow)
            .where(JobRow.id.in_(expired), JobRow.state == "running", JobRow.lease_expires_at < now)
            .values(state="queued", lease_owner=None, lease_expires_at=None)
        )
    stale = list(
        s.scalars(
            select(JobRow.id).where(
                JobRow.state == "queued",
                func.coalesce(JobRow.enqueued_at, JobRow.created_at) < now - timedelta(seconds=requeue_after_seconds),
            )
        )
    )
    ids = sorted(set(expired) | set(stale))
    if ids:
        s.execute(update(JobRow).where(JobRow.id.in_(ids)).values(enqueued_at=now))
    return ids


# ----- deleting ----------------------------------------------------------------------------------------------
def delete_job(s: Session, job_id: str) -> None:
    """The job row with its metrics and artifact rows."""
    for table in (EpochMetricRow, BatchMetricRow, ArtifactRow):
        s.execute(delete(table).where(table.job_id == job_id))
    s.execute(delete(JobRow).where(JobRow.id == job_id))

"""Repositories: functions over a Session that return domain objects. The caller's session scope commits."""

from __future__ import annotations

import hashlib
import math
import secrets
import uuid
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import domain as d
from core.db.models import (
    ApiKeyRow,
    ArtifactRow,
    BatchMetricRow,
    DatasetRow,
    DatasetVersionRow,
    DecisionRow,
    DeliveryRow,
    EpochMetricRow,
    FeedbackRow,
    FleetLeaseRow,
    JobRow,
    ModelNameRow,
    ModelRow,
    PredictionRow,
    ProjectRow,
    UiSessionRow,
    WebhookRow,
    utcnow,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")
KEY_PREFIX = "fc_"


def new_id() -> str:
    """A random UUID4 string."""
    return str(uuid.uuid4())


def _to(cls: type[D], row: object) -> D:
    """A domain object from a row: each of the dataclass's fields read from the row's attribute of the same
    name (so the dataclass is the one field list), and every datetime in UTC."""
    return cls(**{f.name: _utc(getattr(row, f.name)) for f in fields(cls)})


def _utc(value: Any) -> Any:
    """SQLite hands back naive datetimes; treat them as the UTC they were written in."""
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value


# ----- projects and keys ---------------------------------------------------------------------------
def hash_key(key: str) -> str:
    """SHA-256 of an API key (keys are 256-bit random, so a fast hash is enough)."""
    return hashlib.sha256(key.encode()).hexdigest()


SESSION_PREFIX = "fs_"


def create_ui_session(s: Session, key_id: str, days: int) -> str:
    """A new web UI session for a key: returns its token (only the hash is stored)."""
    token = SESSION_PREFIX + secrets.token_urlsafe(32)
    s.add(UiSessionRow(token_hash=hash_key(token), key_id=key_id, expires_at=utcnow() + timedelta(days=days)))
    s.flush()
    return token


def end_ui_session(s: Session, token: str) -> None:
    s.execute(delete(UiSessionRow).where(UiSessionRow.token_hash == hash_key(token)))


def caller_for_session(s: Session, token: str) -> d.Caller | None:
    """The caller behind a web UI session that has not expired, made with a key that still works."""
    row = s.get(UiSessionRow, hash_key(token))
    if row is None or _utc(row.expires_at) <= utcnow():
        return None
    return _active_caller(s, ApiKeyRow.id == row.key_id)


def caller_for(s: Session, credential: tuple[str, str]) -> d.Caller | None:
    """The caller behind ("bearer", key) or ("session", token)."""
    kind, secret = credential
    return caller_for_session(s, secret) if kind == "session" else caller_for_key(s, secret)


def get_or_create_project(s: Session, name: str) -> d.Project:
    row = s.scalar(select(ProjectRow).where(ProjectRow.name == name))
    if row is None:
        row = ProjectRow(id=new_id(), name=name)
        s.add(row)
        s.flush()
    return _to(d.Project, row)


def get_project(s: Session, project_id: str) -> d.Project | None:
    row = s.get(ProjectRow, project_id)
    return _to(d.Project, row) if row else None


def lock_project(s: Session, project_id: str) -> d.Project:
    """The project, its row locked until the transaction ends (PostgreSQL; SQLite writes one at a time): what
    two transactions that read and change its settings (the gold set) take first."""
    row = s.get(ProjectRow, project_id, with_for_update=True)
    assert row is not None, project_id
    return _to(d.Project, row)


def update_project_settings(s: Session, project_id: str, changes: dict[str, Any]) -> d.Project:
    row = s.get(ProjectRow, project_id)
    assert row is not None, project_id
    row.settings = {**(row.settings or {}), **changes}
    s.flush()
    return _to(d.Project, row)


def list_projects(s: Session) -> list[d.Project]:
    return [_to(d.Project, r) for r in s.scalars(select(ProjectRow).order_by(ProjectRow.name))]


def create_api_key(
    s: Session, project_id: str, *, name: str = "", admin: bool = False, expires_at: datetime | None = None
) -> tuple[str, d.ApiKey]:
    """Make a new key for a project; only its hash is stored. Returns the key (shown once) and its record."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKeyRow(
        id=new_id(),
        project_id=project_id,
        prefix=key[:10],
        key_hash=hash_key(key),
        name=name,
        admin=admin,
        created_at=utcnow(),
        expires_at=expires_at,
    )
    s.add(row)
    s.flush()
    return key, _to(d.ApiKey, row)


def caller_for_key(s: Session, key: str) -> d.Caller | None:
    """The project and key record of a key that is neither revoked nor expired (looked up every time: a
    revoked key is refused at once)."""
    return _active_caller(s, ApiKeyRow.key_hash == hash_key(key))


def _active_caller(s: Session, which: Any) -> d.Caller | None:
    """The project and record of the key `which` selects, when it is neither revoked nor expired."""
    found = s.execute(
        select(ProjectRow, ApiKeyRow)
        .join(ApiKeyRow, ApiKeyRow.project_id == ProjectRow.id)
        .where(which, ApiKeyRow.revoked_at.is_(None))
    ).first()
    if found is None:
        return None
    record = _to(d.ApiKey, found[1])
    return d.Caller(_to(d.Project, found[0]), record) if record.state == "active" else None


def list_api_keys(s: Session, project_id: str | None = None) -> list[tuple[str, d.ApiKey]]:
    """(project name, key record) of every key, oldest first; of one project when given."""
    q = select(ProjectRow.name, ApiKeyRow).join(ProjectRow, ApiKeyRow.project_id == ProjectRow.id)
    if project_id is not None:
        q = q.where(ApiKeyRow.project_id == project_id)
    return [(name, _to(d.ApiKey, row)) for name, row in s.execute(q.order_by(ApiKeyRow.created_at))]


def find_api_keys(s: Session, ref: str) -> list[d.ApiKey]:
    """Keys matching a reference: the whole key, its id, or a prefix of the key (at least 6 characters)."""
    ref = ref.strip()
    rows = list(s.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(ref))))
    rows = rows or list(s.scalars(select(ApiKeyRow).where(ApiKeyRow.id == ref)))
    if not rows and len(ref) >= 6:
        rows = list(s.scalars(select(ApiKeyRow).where(ApiKeyRow.prefix.startswith(ref[:10], autoescape=True))))
    return [_to(d.ApiKey, r) for r in rows]


def revoke_api_key(s: Session, key_id: str) -> d.ApiKey | None:
    """Mark a key revoked (once; revoking again keeps the first time)."""
    row = s.get(ApiKeyRow, key_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        s.flush()
    return _to(d.ApiKey, row)


# ----- datasets ------------------------------------------------------------------------------------
def create_dataset(s: Session, dataset_id: str, project_id: str, name: str) -> d.Dataset:
    row = DatasetRow(id=dataset_id, project_id=project_id, name=name)
    s.add(row)
    s.flush()
    return _to(d.Dataset, row)


def lock_dataset(s: Session, dataset_id: str) -> None:
    """Hold the dataset's row until the transaction ends: one version cut at a time (PostgreSQL)."""
    s.execute(select(DatasetRow.id).where(DatasetRow.id == dataset_id).with_for_update())


def next_version_number(s: Session, dataset_id: str) -> int:
    current = s.scalar(select(func.max(DatasetVersionRow.version)).where(DatasetVersionRow.dataset_id == dataset_id))
    return (current or 0) + 1


def add_dataset_version(s: Session, **values: Any) -> d.DatasetVersion:
    row = DatasetVersionRow(**values)
    s.add(row)
    s.flush()
    return _to(d.DatasetVersion, row)


def get_dataset(s: Session, project_id: str, dataset_id: str) -> d.Dataset | None:
    row = s.get(DatasetRow, dataset_id)
    return _to(d.Dataset, row) if row and row.project_id == project_id else None


def list_datasets(s: Session, project_id: str) -> list[d.Dataset]:
    rows = s.scalars(select(DatasetRow).where(DatasetRow.project_id == project_id).order_by(DatasetRow.created_at))
    return [_to(d.Dataset, r) for r in rows]


def project_versions(s: Session, project_id: str) -> dict[str, list[d.DatasetVersion]]:
    """Every version of every dataset of a project, by dataset id, oldest first (one query)."""
    rows = s.scalars(
        select(DatasetVersionRow)
        .join(DatasetRow, DatasetRow.id == DatasetVersionRow.dataset_id)
        .where(DatasetRow.project_id == project_id)
        .order_by(DatasetVersionRow.dataset_id, DatasetVersionRow.version)
    )
    out: dict[str, list[d.DatasetVersion]] = {}
    for r in rows:
        out.setdefault(r.dataset_id, []).append(_to(d.DatasetVersion, r))
    return out


def dataset_versions(s: Session, dataset_id: str) -> list[d.DatasetVersion]:
    rows = s.scalars(
        select(DatasetVersionRow).where(DatasetVersionRow.dataset_id == dataset_id).order_by(DatasetVersionRow.version)
    )
    return [_to(d.DatasetVersion, r) for r in rows]


def stored_bytes(s: Session, project_id: str) -> int:
    """What a project's dataset versions and job artifacts take in the object store."""
    datasets = s.scalar(
        select(func.coalesce(func.sum(DatasetVersionRow.n_bytes), 0))
        .join(DatasetRow, DatasetVersionRow.dataset_id == DatasetRow.id)
        .where(DatasetRow.project_id == project_id)
    )
    artifacts = s.scalar(
        select(func.coalesce(func.sum(ArtifactRow.size), 0))
        .join(JobRow, ArtifactRow.job_id == JobRow.id)
        .where(JobRow.project_id == project_id)
    )
    return int(datasets or 0) + int(artifacts or 0)


def active_jobs(s: Session, project_id: str) -> int:
    """Queued and running jobs of a project."""
    return int(
        s.scalar(select(func.count()).where(JobRow.project_id == project_id, JobRow.state.in_(("queued", "running"))))
        or 0
    )


def get_version(s: Session, version_id: str) -> d.DatasetVersion | None:
    row = s.get(DatasetVersionRow, version_id)
    return _to(d.DatasetVersion, row) if row else None


# ----- jobs: the state machine -----------------------------------------------------------------------
def create_job(s: Session, **values: Any) -> d.Job:
    row = JobRow(id=new_id(), state="queued", **values)
    s.add(row)
    s.flush()
    return _to(d.Job, row)


def get_job(s: Session, job_id: str, project_id: str | None = None) -> d.Job | None:
    row = s.get(JobRow, job_id)
    if row is None or (project_id is not None and row.project_id != project_id):
        return None
    return _to(d.Job, row)


def list_jobs(s: Session, project_id: str, limit: int = 100, offset: int = 0) -> tuple[list[d.Job], int]:
    q = select(JobRow).where(JobRow.project_id == project_id)
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = s.scalars(q.order_by(JobRow.created_at.desc()).limit(limit).offset(offset))
    return [_to(d.Job, r) for r in rows], total


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


class LeaseLost(Exception):
    """This worker's hold on a job was taken over (its lease expired and another worker claimed it)."""


def _held(job_id: str, owner: str, token: int | None) -> Any:
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


def request_cancel(s: Session, job_id: str) -> d.Job | None:
    """A queued job is cancelled at once; a running one is asked to stop at its next batch."""
    s.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.state == "queued")
        .values(state="cancelled", finished_at=utcnow(), cancel_requested=True)
    )
    s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.state == "running").values(cancel_requested=True))
    return get_job(s, job_id)


def job_counts(s: Session) -> list[tuple[str, str, int]]:
    """(state, kind, how many jobs), over every project."""
    rows = s.execute(select(JobRow.state, JobRow.kind, func.count()).group_by(JobRow.state, JobRow.kind))
    return [(str(state), str(kind), int(n)) for state, kind, n in rows]


def release(s: Session, job_id: str, owner: str, token: int | None = None) -> bool:
    """running -> queued by its lease owner (a worker shutting down hands the job back; it resumes from its
    checkpoint wherever it runs next). False when this owner no longer holds it."""
    res = s.execute(
        update(JobRow)
        .where(_held(job_id, owner, token))
        .values(state="queued", lease_owner=None, lease_expires_at=None, enqueued_at=utcnow())
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def job_control(s: Session, job_id: str, owner: str, token: int | None = None) -> tuple[bool, bool]:
    """(cancel requested, this owner still holds the job)."""
    row = s.get(JobRow, job_id)
    if row is None:
        return True, False
    s.refresh(row)
    held = row.state == "running" and row.lease_owner == owner and (token is None or row.attempts == token)
    return row.cancel_requested, held


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


def set_progress(s: Session, job_id: str, owner: str, progress: dict[str, Any], token: int | None = None) -> None:
    s.execute(update(JobRow).where(_held(job_id, owner, token)).values(progress=progress))


def child_jobs(s: Session, parent_job_id: str, kind: str, state: str = "succeeded") -> list[d.Job]:
    rows = s.scalars(
        select(JobRow)
        .where(JobRow.parent_job_id == parent_job_id, JobRow.kind == kind, JobRow.state == state)
        .order_by(JobRow.finished_at.desc())
    )
    return [_to(d.Job, r) for r in rows]


# ----- metrics (idempotent: a resumed job re-reporting an epoch replaces it) ---------------------------
def _upsert(s: Session, table: Any, values: dict[str, Any], keys: list[str]) -> None:
    dialect = s.get_bind().dialect.name
    ins = pg_insert(table) if dialect == "postgresql" else sqlite_insert(table)
    stmt = ins.values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_={k: v for k, v in values.items() if k not in keys})
    s.execute(stmt)


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def record_epoch(s: Session, job_id: str, row: dict[str, Any]) -> None:
    base = {"epoch", "tag", "train_loss", "valid_loss", "seconds"}
    _upsert(
        s,
        EpochMetricRow,
        {
            "job_id": job_id,
            "tag": row.get("tag") or "",
            "epoch": int(row["epoch"]),
            "train_loss": _finite(row.get("train_loss")),
            "valid_loss": _finite(row.get("valid_loss")),
            "metrics": {k: _finite(v) for k, v in row.items() if k not in base},
            "seconds": float(row.get("seconds", 0.0)),
            "created_at": utcnow(),
        },
        ["job_id", "tag", "epoch"],
    )


def record_batch(s: Session, job_id: str, row: dict[str, Any]) -> None:
    _upsert(
        s,
        BatchMetricRow,
        {
            "job_id": job_id,
            "tag": row.get("tag") or "",
            "iter": int(row["iter"]),
            "epoch": int(row["epoch"]),
            "batch": int(row["batch"]),
            "loss": _finite(row["loss"]) or 0.0,
            "smooth_loss": _finite(row["smooth_loss"]) or 0.0,
            "lr": float(row["lr"]),
            "mom": float(row["mom"]),
        },
        ["job_id", "tag", "iter"],
    )


def epoch_metrics(s: Session, job_id: str) -> list[d.EpochMetric]:
    rows = s.scalars(select(EpochMetricRow).where(EpochMetricRow.job_id == job_id).order_by(EpochMetricRow.id))
    return [_to(d.EpochMetric, r) for r in rows]


def batch_metrics(s: Session, job_id: str, after_id: int = 0) -> list[tuple[int, d.BatchMetric]]:
    rows = s.scalars(
        select(BatchMetricRow)
        .where(BatchMetricRow.job_id == job_id, BatchMetricRow.id > after_id)
        .order_by(BatchMetricRow.id)
    )
    return [(r.id, _to(d.BatchMetric, r)) for r in rows]


# ----- artifacts and models ---------------------------------------------------------------------------
def record_artifact(
    s: Session, job_id: str, name: str, key: str, size: int, content_type: str, sha256: str | None = None
) -> None:
    _upsert(
        s,
        ArtifactRow,
        {
            "id": new_id(),
            "job_id": job_id,
            "name": name,
            "key": key,
            "size": size,
            "content_type": content_type,
            "sha256": sha256,
            "created_at": utcnow(),
        },
        ["job_id", "name"],
    )


def artifacts(s: Session, job_id: str) -> list[d.Artifact]:
    rows = s.scalars(select(ArtifactRow).where(ArtifactRow.job_id == job_id).order_by(ArtifactRow.name))
    return [_to(d.Artifact, r) for r in rows]


def get_artifact(s: Session, job_id: str, name: str) -> d.Artifact | None:
    row = s.scalar(select(ArtifactRow).where(ArtifactRow.job_id == job_id, ArtifactRow.name == name))
    return _to(d.Artifact, row) if row else None


def create_model(s: Session, **values: Any) -> d.Model:
    existing = s.scalar(select(ModelRow).where(ModelRow.job_id == values["job_id"]))
    if existing is not None:
        return _to(d.Model, existing)
    row = ModelRow(id=new_id(), **values)
    s.add(row)
    s.flush()
    return _to(d.Model, row)


def get_model(s: Session, model_id: str, project_id: str | None = None) -> d.Model | None:
    row = s.get(ModelRow, model_id)
    if row is None or (project_id is not None and row.project_id != project_id):
        return None
    return _to(d.Model, row)


def list_models(s: Session, project_id: str) -> list[d.Model]:
    rows = s.scalars(select(ModelRow).where(ModelRow.project_id == project_id).order_by(ModelRow.created_at))
    return [_to(d.Model, r) for r in rows]


# ----- the registry ----------------------------------------------------------------------------------
def model_name(s: Session, project_id: str, name: str, lock: bool = False) -> d.ModelName | None:
    q = select(ModelNameRow).where(ModelNameRow.project_id == project_id, ModelNameRow.name == name)
    row = s.scalar(q.with_for_update() if lock else q)
    return _to(d.ModelName, row) if row else None


def list_model_names(s: Session, project_id: str) -> list[d.ModelName]:
    rows = s.scalars(select(ModelNameRow).where(ModelNameRow.project_id == project_id).order_by(ModelNameRow.name))
    return [_to(d.ModelName, r) for r in rows]


def register_model(s: Session, model_id: str, name: str, as_challenger: bool) -> d.Model:
    """Give a model the next version of `name` (made on first use). The first model of a name becomes its
    champion; a later one becomes the challenger when `as_challenger` (a retrain), else just a version."""
    row = s.get(ModelRow, model_id)
    assert row is not None, model_id
    # Made if missing without a race: two jobs finishing at once under a new name both insert; one wins, the
    # other's insert does nothing, and both then wait on the one row's lock.
    insert_new = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    s.execute(
        insert_new(ModelNameRow)
        .values(id=new_id(), project_id=row.project_id, name=name, policy={})
        .on_conflict_do_nothing(index_elements=["project_id", "name"])
    )
    entry = s.scalar(
        select(ModelNameRow)
        .where(ModelNameRow.project_id == row.project_id, ModelNameRow.name == name)
        .with_for_update()
    )
    assert entry is not None
    if row.name != name or row.version is None:
        top = s.scalar(
            select(func.max(ModelRow.version)).where(ModelRow.project_id == row.project_id, ModelRow.name == name)
        )
        row.name, row.version = name, int(top or 0) + 1
    if entry.champion_id is None:
        entry.champion_id = row.id
    elif as_challenger and entry.champion_id != row.id:
        entry.challenger_id = row.id
    s.flush()
    return _to(d.Model, row)


def versions_per_name(s: Session, project_id: str) -> dict[str, int]:
    """How many models each registry name of a project has (one query)."""
    rows = s.execute(
        select(ModelRow.name, func.count())
        .where(ModelRow.project_id == project_id, ModelRow.name.is_not(None))
        .group_by(ModelRow.name)
    )
    return {str(name): int(n) for name, n in rows}


def models_of_name(s: Session, project_id: str, name: str) -> list[d.Model]:
    rows = s.scalars(
        select(ModelRow).where(ModelRow.project_id == project_id, ModelRow.name == name).order_by(ModelRow.version)
    )
    return [_to(d.Model, r) for r in rows]


def set_champion(s: Session, project_id: str, name: str, model_id: str, decision: dict[str, Any]) -> d.Decision:
    """Make model_id the champion of name (the old one is recorded in the decision) and record it."""
    entry = s.scalar(
        select(ModelNameRow).where(ModelNameRow.project_id == project_id, ModelNameRow.name == name).with_for_update()
    )
    assert entry is not None, name
    previous = entry.champion_id
    entry.champion_id = model_id
    if entry.challenger_id == model_id:
        entry.challenger_id = None
    return record_decision(s, project_id, name, model_id=model_id, champion_id=previous, **decision)


def first_champion_decision(s: Session, project_id: str, name: str, model_id: str, job_id: str) -> d.Decision:
    """Record that a name's first model became its champion (there was nothing to weigh it against)."""
    return record_decision(
        s,
        project_id,
        name,
        action="promoted",
        model_id=model_id,
        champion_id=None,
        scores={},
        reason="the first model of the name: it has no champion to be judged against",
        actor="gate",
        job_id=job_id,
    )


def record_decision(s: Session, project_id: str, name: str, **values: Any) -> d.Decision:
    row = DecisionRow(id=new_id(), project_id=project_id, name=name, **values)
    s.add(row)
    s.flush()
    return _to(d.Decision, row)


def decisions(s: Session, project_id: str, name: str) -> list[d.Decision]:
    rows = s.scalars(
        select(DecisionRow)
        .where(DecisionRow.project_id == project_id, DecisionRow.name == name)
        .order_by(DecisionRow.created_at)
    )
    return [_to(d.Decision, r) for r in rows]


def delete_model_name(s: Session, entry_id: str) -> None:
    s.execute(delete(ModelNameRow).where(ModelNameRow.id == entry_id))


def set_policy(s: Session, project_id: str, name: str, policy: dict[str, Any]) -> d.ModelName | None:
    entry = s.scalar(select(ModelNameRow).where(ModelNameRow.project_id == project_id, ModelNameRow.name == name))
    if entry is None:
        return None
    entry.policy = policy
    s.flush()
    return _to(d.ModelName, entry)


# ----- predictions and feedback ------------------------------------------------------------------------
def record_prediction(s: Session, **values: Any) -> None:
    """One answered image (a plain INSERT: the predict path writes one per request, and skips the ORM's flush)."""
    s.execute(insert(PredictionRow).values(**values))


def get_prediction(s: Session, project_id: str, prediction_id: str) -> d.PredictionRecord | None:
    row = s.get(PredictionRow, prediction_id)
    return _to(d.PredictionRecord, row) if row and row.project_id == project_id else None


def list_predictions(
    s: Session, project_id: str, name: str | None, model_id: str | None, order: str, limit: int, unlabelled: bool
) -> list[d.PredictionRecord]:
    q = select(PredictionRow).where(PredictionRow.project_id == project_id)
    if name is not None:
        q = q.where(PredictionRow.name == name)
    if model_id is not None:
        q = q.where(PredictionRow.model_id == model_id)
    if unlabelled:
        q = q.where(~select(FeedbackRow.id).where(FeedbackRow.prediction_id == PredictionRow.id).exists())
    if order == "uncertainty":
        q = q.order_by(PredictionRow.uncertainty.desc(), PredictionRow.created_at.desc())
    else:
        q = q.order_by(PredictionRow.created_at.desc())
    return [_to(d.PredictionRecord, r) for r in s.scalars(q.limit(limit))]


def add_feedback(s: Session, **values: Any) -> tuple[d.Feedback, bool]:
    """Store feedback; with an idempotency key already used in the project, the stored one (and False)."""
    key = values.get("idempotency_key")
    if key is not None:
        found = s.scalar(
            select(FeedbackRow).where(
                FeedbackRow.project_id == values["project_id"], FeedbackRow.idempotency_key == key
            )
        )
        if found is not None:
            return _to(d.Feedback, found), False
    row = FeedbackRow(**{"id": new_id(), **values})
    try:
        with s.begin_nested():  # a savepoint: the same key sent twice at once stores one
            s.add(row)
            s.flush()
    except IntegrityError:
        found = s.scalar(
            select(FeedbackRow).where(
                FeedbackRow.project_id == values["project_id"], FeedbackRow.idempotency_key == key
            )
        )
        if found is None:
            raise
        return _to(d.Feedback, found), False
    return _to(d.Feedback, row), True


def list_feedback(
    s: Session, project_id: str, name: str | None = None, unused: bool = False, prediction_ids: list[str] | None = None
) -> list[tuple[d.Feedback, d.PredictionRecord]]:
    """Feedback with its prediction, oldest first."""
    q = (
        select(FeedbackRow, PredictionRow)
        .join(PredictionRow, FeedbackRow.prediction_id == PredictionRow.id)
        .where(FeedbackRow.project_id == project_id)
    )
    if name is not None:
        q = q.where(PredictionRow.name == name)
    if unused:
        q = q.where(FeedbackRow.used_in.is_(None))
    if prediction_ids is not None:
        q = q.where(FeedbackRow.prediction_id.in_(prediction_ids))
    rows = s.execute(q.order_by(FeedbackRow.created_at))
    return [(_to(d.Feedback, f), _to(d.PredictionRecord, p)) for f, p in rows]


def get_feedback(s: Session, project_id: str, feedback_id: str) -> d.Feedback | None:
    row = s.get(FeedbackRow, feedback_id)
    return _to(d.Feedback, row) if row is not None and row.project_id == project_id else None


def delete_unused_feedback(s: Session, project_id: str, feedback_id: str) -> bool:
    """Delete feedback not yet taken into a dataset version (a cut that takes it at once wins: False)."""
    done = s.execute(
        delete(FeedbackRow).where(
            FeedbackRow.id == feedback_id, FeedbackRow.project_id == project_id, FeedbackRow.used_in.is_(None)
        )
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def mark_feedback_used(s: Session, feedback_ids: list[str], version_id: str) -> None:
    if feedback_ids:
        s.execute(update(FeedbackRow).where(FeedbackRow.id.in_(feedback_ids)).values(used_in=version_id))


def count_unused_feedback(s: Session, project_id: str, name: str) -> int:
    q = (
        select(func.count(FeedbackRow.id))
        .join(PredictionRow, FeedbackRow.prediction_id == PredictionRow.id)
        .where(FeedbackRow.project_id == project_id, PredictionRow.name == name, FeedbackRow.used_in.is_(None))
    )
    return int(s.scalar(q) or 0)


# ----- webhooks and the fleet's own loop -------------------------------------------------------------
def create_webhook(s: Session, **values: Any) -> d.Webhook:
    row = WebhookRow(**{"id": new_id(), **values})
    s.add(row)
    s.flush()
    return _to(d.Webhook, row)


def list_webhooks(s: Session, project_id: str) -> list[d.Webhook]:
    rows = s.scalars(select(WebhookRow).where(WebhookRow.project_id == project_id).order_by(WebhookRow.created_at))
    return [_to(d.Webhook, r) for r in rows]


def delete_webhook(s: Session, project_id: str, webhook_id: str) -> bool:
    done = s.execute(delete(WebhookRow).where(WebhookRow.id == webhook_id, WebhookRow.project_id == project_id))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def emit(s: Session, project_id: str, event: str, payload: dict[str, Any]) -> int:
    """Queue `event` for every webhook of the project that asked for it; returns how many deliveries."""
    hooks = [h for h in list_webhooks(s, project_id) if event in h.events]
    for hook in hooks:
        s.add(DeliveryRow(id=new_id(), project_id=project_id, webhook_id=hook.id, event=event, payload=payload))
    s.flush()
    return len(hooks)


def due_deliveries(s: Session, limit: int = 50) -> list[tuple[d.Delivery, d.Webhook]]:
    q = (
        select(DeliveryRow, WebhookRow)
        .join(WebhookRow, DeliveryRow.webhook_id == WebhookRow.id)
        .where(DeliveryRow.state == "pending", DeliveryRow.next_attempt_at <= utcnow())
        .order_by(DeliveryRow.next_attempt_at)
        .limit(limit)
    )
    return [(_to(d.Delivery, r), _to(d.Webhook, w)) for r, w in s.execute(q)]


def delivery_attempted(s: Session, delivery_id: str, error: str | None, retry_at: datetime | None) -> None:
    """Record an attempt: delivered (no error), pending again until retry_at, or failed (no retry_at)."""
    row = s.get(DeliveryRow, delivery_id)
    if row is None:
        return
    row.attempts += 1
    row.last_error = error
    if error is None:
        row.state, row.delivered_at = "delivered", utcnow()
    elif retry_at is not None:
        row.next_attempt_at = retry_at
    else:
        row.state = "failed"
    s.flush()


def list_deliveries(s: Session, project_id: str, webhook_id: str) -> list[d.Delivery]:
    rows = s.scalars(
        select(DeliveryRow)
        .where(DeliveryRow.project_id == project_id, DeliveryRow.webhook_id == webhook_id)
        .order_by(DeliveryRow.created_at)
    )
    return [_to(d.Delivery, r) for r in rows]


def hold_fleet_lease(s: Session, name: str, owner: str, seconds: float) -> bool:
    """Take or renew the fleet-wide lease `name` for `owner`; False while another process holds it."""
    now = utcnow()
    row = s.scalar(select(FleetLeaseRow).where(FleetLeaseRow.name == name).with_for_update())
    if row is None:
        s.add(FleetLeaseRow(name=name, owner=owner, expires_at=now + timedelta(seconds=seconds)))
        try:
            s.flush()
        except IntegrityError:  # another process made it first
            s.rollback()
            return False
        return True
    if row.owner != owner and _utc(row.expires_at) > now:
        return False
    row.owner, row.expires_at = owner, now + timedelta(seconds=seconds)
    s.flush()
    return True


def policy_names(s: Session) -> list[d.ModelName]:
    """Every registry name, of every project, whose policy was set (an unset policy retrains nothing)."""
    rows = s.scalars(select(ModelNameRow).order_by(ModelNameRow.created_at))
    return [_to(d.ModelName, r) for r in rows if (r.policy or {}).get("min_feedback")]


def active_retrains(s: Session, project_id: str, name: str) -> int:
    rows = s.scalars(
        select(JobRow).where(
            JobRow.project_id == project_id, JobRow.kind == "retrain", JobRow.state.in_(("queued", "running"))
        )
    )
    return sum(1 for r in rows if (r.spec or {}).get("name") == name)


# ----- deleting ------------------------------------------------------------------------------------
def jobs_on_versions(s: Session, version_ids: list[str]) -> list[d.Job]:
    """Every job that trained or evaluated on one of these dataset versions."""
    rows = s.scalars(select(JobRow).where(JobRow.dataset_version_id.in_(version_ids)).order_by(JobRow.created_at))
    return [_to(d.Job, r) for r in rows]


def children_of(s: Session, job_id: str) -> list[d.Job]:
    """Jobs that continue from this one (any kind, any state)."""
    return [_to(d.Job, r) for r in s.scalars(select(JobRow).where(JobRow.parent_job_id == job_id))]


def jobs_using_model(s: Session, project_id: str, model_id: str) -> list[d.Job]:
    """Queued or running jobs that start from this model (pretrained = its id)."""
    rows = s.scalars(select(JobRow).where(JobRow.project_id == project_id, JobRow.state.in_(("queued", "running"))))
    return [_to(d.Job, r) for r in rows if (r.spec or {}).get("pretrained_model_id") == model_id]


def delete_dataset_version(s: Session, version_id: str) -> None:
    s.execute(delete(DatasetVersionRow).where(DatasetVersionRow.id == version_id))


def delete_dataset(s: Session, dataset_id: str) -> None:
    s.execute(delete(DatasetVersionRow).where(DatasetVersionRow.dataset_id == dataset_id))
    s.execute(delete(DatasetRow).where(DatasetRow.id == dataset_id))


def delete_job(s: Session, job_id: str) -> None:
    """The job row with its metrics and artifact rows."""
    for table in (EpochMetricRow, BatchMetricRow, ArtifactRow):
        s.execute(delete(table).where(table.job_id == job_id))
    s.execute(delete(JobRow).where(JobRow.id == job_id))


def delete_model(s: Session, model_id: str) -> None:
    """The model row; its job keeps its record (model_id cleared)."""
    row = s.get(ModelRow, model_id)
    if row is None:
        return
    s.execute(update(JobRow).where(JobRow.model_id == model_id).values(model_id=None))
    s.execute(update(ModelNameRow).where(ModelNameRow.challenger_id == model_id).values(challenger_id=None))
    s.execute(delete(ModelRow).where(ModelRow.id == model_id))


def delete_artifacts(s: Session, job_id: str, prefix: str) -> int:
    """Forget a job's artifacts whose names start with prefix; returns the bytes they took."""
    where = (ArtifactRow.job_id == job_id, ArtifactRow.name.startswith(prefix, autoescape=True))
    freed = s.scalar(select(func.coalesce(func.sum(ArtifactRow.size), 0)).where(*where)) or 0
    s.execute(delete(ArtifactRow).where(*where))
    return int(freed)


def stored_bytes_of_job(s: Session, job_id: str) -> int:
    return int(s.scalar(select(func.coalesce(func.sum(ArtifactRow.size), 0)).where(ArtifactRow.job_id == job_id)) or 0)

"""SQLAlchemy 2.0 models. Rows never leave core.db: repositories turn them into domain objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Timezone-aware now, in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class ProjectRow(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # e.g. keep_inputs


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=true())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class DatasetRow(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetVersionRow(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    labels: Mapped[dict[str, Any]] = mapped_column()  # the labelling rule and its parameters
    split: Mapped[str] = mapped_column(String(20))  # random | folder | column
    classes: Mapped[list[Any]] = mapped_column()
    counts: Mapped[dict[str, Any]] = mapped_column()
    n_items: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[list[Any]] = mapped_column()
    prefix: Mapped[str] = mapped_column(String(300))  # object-store prefix of files/ and manifest.json
    n_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # stored files' bytes
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A version cut from another (feedback, relabels, removals): which one, why, and what changed.
    parent_version: Mapped[int | None] = mapped_column(Integer, default=None)
    note: Mapped[str] = mapped_column(Text, default="", server_default="")
    changes: Mapped[dict[str, Any]] = mapped_column(default=dict)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_lease", "state", "lease_expires_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20), default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column()
    dataset_version_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"))
    parent_job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), default=None)
    queue: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    model_id: Mapped[str | None] = mapped_column(String(36), default=None)
    # Queued by an admin key or the fleet loop: the gate may promote its model on its own (a member's waits).
    by_admin: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # A trial of a hyperparameter search: the search, and the number of its Optuna trial.
    search_id: Mapped[str | None] = mapped_column(
        ForeignKey("searches.id", ondelete="SET NULL"), default=None, index=True
    )
    trial_number: Mapped[int | None] = mapped_column(Integer, default=None)


class SearchRow(Base):
    """A hyperparameter search: a base job body, a space over its fields, and the Optuna study (in this same
    database) whose trials are ordinary jobs (jobs.search_id)."""

    __tablename__ = "searches"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(20), default="running")  # running | succeeded | failed | cancelled
    base: Mapped[dict[str, Any]] = mapped_column()  # the job body every trial starts from
    space: Mapped[dict[str, Any]] = mapped_column()  # field path -> distribution
    trials: Mapped[int] = mapped_column(Integer)  # at most this many trials
    parallel: Mapped[int] = mapped_column(Integer)  # trials queued or running at once
    metric: Mapped[str] = mapped_column(String(50))
    direction: Mapped[str] = mapped_column(String(10))  # maximize | minimize
    pruner: Mapped[str] = mapped_column(String(20))
    sampler: Mapped[str] = mapped_column(String(20))
    seed: Mapped[int | None] = mapped_column(Integer, default=None)
    register_as: Mapped[str | None] = mapped_column(String(200), default=None)
    lr_find_job_id: Mapped[str | None] = mapped_column(String(36), default=None)  # lr: around_lr_find
    lr_range: Mapped[list[Any] | None] = mapped_column(default=None)
    adopt_job_id: Mapped[str | None] = mapped_column(String(36), default=None)  # register_as: the best trial's
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    by_admin: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class EpochMetricRow(Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("job_id", "tag", "epoch"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tag: Mapped[str] = mapped_column(String(20))
    epoch: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float | None] = mapped_column(Float)
    valid_loss: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column()
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BatchMetricRow(Base):
    __tablename__ = "batch_metrics"
    __table_args__ = (UniqueConstraint("job_id", "tag", "iter"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tag: Mapped[str] = mapped_column(String(20))
    iter: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float] = mapped_column(Float)
    smooth_loss: Mapped[float] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    mom: Mapped[float] = mapped_column(Float)


class ArtifactRow(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(300))
    key: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str | None] = mapped_column(String(64))  # of the object as written; a checkpoint is verified on load
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelRow(Base):
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    arch: Mapped[str] = mapped_column(String(50))
    classes: Mapped[list[Any]] = mapped_column()
    metrics: Mapped[dict[str, Any]] = mapped_column()
    bundle_prefix: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The registry: the model name it belongs to, its version under that name, and the data it learnt from.
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    version: Mapped[int | None] = mapped_column(Integer, default=None)
    dataset_version_id: Mapped[str | None] = mapped_column(String(36), default=None)


class ModelNameRow(Base):
    """A registry entry: the champion serves the name, a challenger waits for (or lost) its decision."""

    __tablename__ = "model_names"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    champion_id: Mapped[str | None] = mapped_column(String(36), default=None)
    challenger_id: Mapped[str | None] = mapped_column(String(36), default=None)
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DecisionRow(Base):
    """One change (or refusal to change) of a name's champion, with the scores and the reason."""

    __tablename__ = "decisions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(20))  # promoted | rejected | manual
    model_id: Mapped[str] = mapped_column(String(36))  # the challenger, or the model promoted by hand
    champion_id: Mapped[str | None] = mapped_column(String(36), default=None)  # the champion it was weighed against
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(200), default="")  # "gate", or the key that promoted
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PredictionRow(Base):
    """One answered image: the active-learning queue, and what feedback corrects."""

    __tablename__ = "predictions"
    __table_args__ = (
        Index("ix_predictions_project_created", "project_id", "created_at"),
        Index("ix_predictions_model_created", "model_id", "created_at"),  # a model's drift window
        Index("ix_predictions_created", "created_at"),  # the models that served lately
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(String(36), index=True)
    name: Mapped[str | None] = mapped_column(String(200), default=None)  # the model's registry name
    source: Mapped[str] = mapped_column(String(20))  # file | url | name
    filename: Mapped[str] = mapped_column(String(300), default="")
    input_key: Mapped[str | None] = mapped_column(String(500), default=None)  # the image in the store, if kept
    answer: Mapped[dict[str, Any]] = mapped_column(default=dict)
    uncertainty: Mapped[float] = mapped_column(Float, default=0.0)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # input and mask kept
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The image's cheap statistic (core.engine.drift.input_stats), for the drift window; None for texts
    inputs: Mapped[list[Any] | None] = mapped_column(JSON, default=None)


class DriftStateRow(Base):
    """A served model's drift, as the last check found it (api/drift.py): the window's scores against the model's
    reference, and its alarm while one is open."""

    __tablename__ = "drift_states"
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)
    window_size: Mapped[int] = mapped_column(Integer, default=0)  # answers in the window
    newest: Mapped[str | None] = mapped_column(String(36), default=None)  # the window's newest prediction
    newest_at: Mapped[datetime | None] = mapped_column(default=None)  # and when it was answered
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)  # signal -> Shift.as_dict()
    threshold: Mapped[float | None] = mapped_column(Float, default=None)
    reference_items: Mapped[int | None] = mapped_column(Integer, default=None)  # None: no reference to watch by
    # The open alarm, explained; SQL NULL when none is (none_as_null: not JSON's null, which `IS NULL` misses)
    alarm: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), default=None)
    alarm_since: Mapped[datetime | None] = mapped_column(default=None)
    alarms: Mapped[int] = mapped_column(Integer, default=0)  # alarms raised so far


class DriftPointRow(Base):
    """One point of a model's drift scores over time (the charts on the models and registry pages)."""

    __tablename__ = "drift_points"
    __table_args__ = (Index("ix_drift_points_model_at", "model_id", "at"), Index("ix_drift_points_at", "at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    scores: Mapped[dict[str, Any]] = mapped_column(default=dict)  # signal -> score


class FeedbackRow(Base):
    """A person's correction of a prediction (or its confirmation), in the task's own target shape."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("project_id", "idempotency_key"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    prediction_id: Mapped[str] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    target: Mapped[dict[str, Any]] = mapped_column()
    key_id: Mapped[str] = mapped_column(String(36))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    used_in: Mapped[str | None] = mapped_column(String(36), default=None)  # the dataset version it went into
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # its mask, if any
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UiSessionRow(Base):
    """A web UI sign-in: the hash of the browser's random token, the key it was made with, and its expiry."""

    __tablename__ = "ui_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class WebhookRow(Base):
    """Where a project wants to hear about events, and the secret its deliveries are signed with."""

    __tablename__ = "webhooks"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[Any]] = mapped_column()
    secret: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())  # off: no deliveries
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryRow(Base):
    """One event for one webhook: pending until delivered, retried with backoff, failed after the last try."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_state_next", "state", "next_attempt_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]] = mapped_column()
    state: Mapped[str] = mapped_column(String(20), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class FleetLeaseRow(Base):
    """A named job of the whole fleet (the policy loop) and which process holds it until when."""

    __tablename__ = "fleet_leases"
    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column()

"""Plain domain objects the repositories return (never live ORM rows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TERMINAL_STATES = ("succeeded", "failed", "cancelled", "pruned")  # pruned: a search's trial stopped early
DRIFT_THRESHOLD = 0.25  # PSI: past 0.25 a population has shifted significantly (the credit-scoring rule of thumb)
DRIFT_WINDOW = 500


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def keep_inputs(self) -> bool:
        """Whether predicted images are stored (what feedback turns into training items); default on."""
        return bool(self.settings.get("keep_inputs", True))

    @property
    def input_retention_days(self) -> int | None:
        """How many days a prediction (and its kept input) is kept; None: until deleted."""
        days = self.settings.get("input_retention_days")
        return int(days) if days else None

    @property
    def drift_threshold(self) -> float | None:
        """The population stability index past which a served model's drift raises an alarm; None: no alarms."""
        value = self.settings.get("drift_threshold", DRIFT_THRESHOLD)
        return float(value) if value is not None else None

    @property
    def drift_window(self) -> int:
        """How many of a model's latest answers (of the last 24 hours) its drift is measured on."""
        return int(self.settings.get("drift_window") or DRIFT_WINDOW)

    @property
    def gold(self) -> dict[str, Any] | None:
        """The frozen dataset version the promotion gate also scores on: {dataset_id, dataset, version,
        version_id}, or None."""
        gold = self.settings.get("gold")
        return dict(gold) if gold else None


@dataclass(frozen=True)
class Dataset:
    id: str
    project_id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class DatasetVersion:
    id: str
    dataset_id: str
    version: int
    labels: dict[str, Any]
    split: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    n_items: int
    rejected: list[dict[str, str]]
    prefix: str
    created_at: datetime
    n_bytes: int = 0
    parent_version: int | None = None
    note: str = ""
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiKey:
    """A project key as listed: never the key itself, only its first characters."""

    id: str
    project_id: str
    prefix: str
    name: str
    admin: bool
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def state(self) -> str:
        """active, expired or revoked."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            return "expired"
        return "active"


@dataclass(frozen=True)
class UiSession:
    """A web UI sign-in as listed: when it began and when it ends, and whether it is the asking browser's own
    (never its token, nor the token's hash)."""

    created_at: datetime
    expires_at: datetime
    current: bool


@dataclass(frozen=True)
class Caller:
    """Who made a request: the project and the key it came with."""

    project: Project
    key: ApiKey


@dataclass(frozen=True)
class Job:
    id: str
    project_id: str
    kind: str
    state: str
    spec: dict[str, Any]
    dataset_version_id: str
    parent_job_id: str | None
    queue: str
    created_at: datetime
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    attempts: int
    cancel_requested: bool
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    model_id: str | None = None
    by_admin: bool = True  # queued by an admin key or the fleet loop
    search_id: str | None = None  # a hyperparameter search's trial
    trial_number: int | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the job succeeded, failed or was cancelled."""
        return self.state in TERMINAL_STATES

    @property
    def epoch(self) -> int | None:
        """The epoch it is in, from its last progress report."""
        return self.progress.get("epoch")

    @property
    def batch(self) -> int | None:
        """The batch of that epoch it is at."""
        return self.progress.get("batch")

    @property
    def eta_seconds(self) -> float | None:
        """Seconds its worker expects the current stage still to take (none once it has ended)."""
        return None if self.is_terminal else self.progress.get("eta_seconds")


@dataclass(frozen=True)
class EpochMetric:
    tag: str
    epoch: int
    train_loss: float | None
    valid_loss: float | None
    metrics: dict[str, float | None]
    seconds: float


@dataclass(frozen=True)
class BatchMetric:
    tag: str
    iter: int
    epoch: int
    batch: int
    loss: float
    smooth_loss: float
    lr: float
    mom: float


@dataclass(frozen=True)
class Artifact:
    id: str
    job_id: str
    name: str
    key: str
    size: int
    content_type: str
    sha256: str | None = None


@dataclass(frozen=True)
class Model:
    id: str
    project_id: str
    job_id: str
    arch: str
    classes: list[str]
    metrics: dict[str, Any]
    bundle_prefix: str
    created_at: datetime
    name: str | None = None
    version: int | None = None
    dataset_version_id: str | None = None

    @property
    def task(self) -> str:
        """The task it answers (as its job recorded it)."""
        return str(self.metrics.get("task", ""))


@dataclass(frozen=True)
class ModelName:
    """A registry entry: the champion answers for the name; a challenger waits for (or lost) its decision."""

    id: str
    project_id: str
    name: str
    champion_id: str | None
    challenger_id: str | None
    policy: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Decision:
    id: str
    project_id: str
    name: str
    action: str  # promoted | rejected | manual
    model_id: str
    champion_id: str | None
    scores: dict[str, Any]
    reason: str
    actor: str
    job_id: str | None
    created_at: datetime

    def event(self) -> dict[str, Any]:
        """What a webhook hears of this decision."""
        return {
            "name": self.name,
            "action": self.action,
            "model_id": self.model_id,
            "champion_before": self.champion_id,
            "reason": self.reason,
            "scores": self.scores,
            "job_id": self.job_id,
        }


@dataclass(frozen=True)
class PredictionRecord:
    """A logged answer: its model, what it answered, and its input's key in the store when kept."""

    id: str
    project_id: str
    model_id: str
    name: str | None
    source: str
    filename: str
    input_key: str | None
    answer: dict[str, Any]
    uncertainty: float
    created_at: datetime
    stored_bytes: int = 0  # its kept input and the masks its answer carries, counted toward the quota
    inputs: list[float] | None = None  # its image's cheap statistic (core.engine.drift.input_stats); None: a text


@dataclass(frozen=True)
class Feedback:
    id: str
    project_id: str
    prediction_id: str
    target: dict[str, Any]
    key_id: str
    idempotency_key: str | None
    used_in: str | None
    created_at: datetime


WEBHOOK_EVENTS = ("job.succeeded", "job.failed", "model.promoted", "retrain.rejected", "model.drift")


@dataclass(frozen=True)
class Webhook:
    id: str
    project_id: str
    url: str
    events: list[str]
    secret: str
    created_at: datetime
    active: bool = True


@dataclass(frozen=True)
class Delivery:
    id: str
    project_id: str
    webhook_id: str
    event: str
    payload: dict[str, Any]
    state: str  # pending | delivered | failed
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True)
class Search:
    """A hyperparameter search (api/services/searches.py drives it; its trials are jobs)."""

    id: str
    project_id: str
    state: str
    base: dict[str, Any]
    space: dict[str, Any]
    trials: int
    parallel: int
    metric: str
    direction: str
    pruner: str
    sampler: str
    seed: int | None
    register_as: str | None
    lr_find_job_id: str | None
    lr_range: list[Any] | None
    adopt_job_id: str | None
    result: dict[str, Any]
    error: str | None
    by_admin: bool
    created_at: datetime
    finished_at: datetime | None

    @property
    def study_name(self) -> str:
        """Its Optuna study's name (one study per search)."""
        return f"fitcycle-search-{self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.state != "running"


@dataclass(frozen=True)
class DriftState:
    """A served model's drift as last checked: the window's size and newest answer, each signal's score with what
    moved, and the open alarm (None when none is)."""

    model_id: str
    project_id: str
    name: str | None
    checked_at: datetime
    window_size: int
    newest: str | None
    newest_at: datetime | None
    scores: dict[str, Any]
    threshold: float | None
    reference_items: int | None
    alarm: dict[str, Any] | None
    alarm_since: datetime | None
    alarms: int


@dataclass(frozen=True)
class DriftPoint:
    at: datetime
    scores: dict[str, float]

"""HTTP shapes: their own pydantic models, separate from database rows and domain objects. An answer about a
domain object (a `Public`) is read off it by field name, so each resource's field list is written once, here."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.jobs.spec import JobKind, JobSettings


class Public(BaseModel):
    """An answer made from a domain object: each field is the object's attribute of the same name (a property
    too); `extra` gives what the object does not hold (a URL, its dataset's name)."""

    @classmethod
    def of(cls, obj: object, **extra: Any) -> Self:
        values = {name: getattr(obj, name) for name in cls.model_fields if name not in extra and hasattr(obj, name)}
        return cls.model_validate({**values, **extra})


class Rejection(BaseModel):
    key: str
    reason: str


class DatasetPublic(Public):
    id: str
    name: str
    version: int
    version_id: str
    labels: dict[str, Any]
    split: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    n_items: int
    rejected: list[Rejection]
    created_at: datetime
    versions: list[int] = Field(default_factory=list)
    warnings: list[str] = Field(
        default_factory=list, description="e.g. classes whose validation share is far from valid_pct"
    )


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


class ItemPublic(BaseModel):
    key: str
    label: str
    valid: bool
    targets: list[float] | None = None
    mask: str | None = None


class ItemsPublic(BaseModel):
    data: list[ItemPublic]
    count: int


class LabelsPublic(Public):
    classes: list[str]
    counts: dict[str, dict[str, int]]


class JobCreate(JobSettings):
    """A job to queue: the training settings of a job spec, with the spec's defaults and checks, and what only
    a job over REST names: its kind, dataset, parent and queue. `parent_job_id` continues from that job's model
    (how stage 2 follows stage 1) and takes its settings unless given; `lr` is a number, [low, high], 'find' or
    'auto'."""

    kind: JobKind
    dataset_id: str = Field(max_length=36)
    dataset_version: int | None = Field(None, ge=1, description="default: the latest version")
    parent_job_id: str | None = Field(None, max_length=36)
    queue: str | None = Field(None, max_length=100, description="one of the server's queues (default: its first)")
    # Where a REST job differs from the spec: a model id for weights, and None for "the server decides".
    pretrained: str = Field("imagenet", max_length=36, description="'imagenet', 'none', or a model of this project")
    arch: str | None = Field(  # type: ignore[assignment]
        None, max_length=50, description="default: efficientnet_lite0 (ImageNet weights ship with it), or the parent's"
    )
    lr: float | tuple[float, float] | Literal["find", "auto"] | None = Field(  # type: ignore[assignment]
        None, description="default: 'auto' for stage2, 3e-3 for stage1, 2e-3 otherwise"
    )

    @field_validator("lr", mode="before")
    @classmethod
    def _rate_range(cls, v: object) -> object:
        if isinstance(v, list) and len(v) != 2:
            raise ValueError("a rate range is [low, high]")
        return v


class JobPublic(Public):
    id: str
    kind: str
    state: str
    dataset_version_id: str
    parent_job_id: str | None
    queue: str
    spec: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    cancel_requested: bool
    epoch: int | None
    batch: int | None
    eta_seconds: float | None
    progress: dict[str, Any]
    result: dict[str, Any]
    error: str | None
    model_id: str | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class EpochRow(Public):
    tag: str
    epoch: int
    train_loss: float | None
    valid_loss: float | None
    seconds: float
    metrics: dict[str, float | None]


class BatchRow(Public):
    tag: str
    iter: int
    epoch: int
    batch: int
    loss: float
    smooth_loss: float
    lr: float
    mom: float


class MetricsPublic(BaseModel):
    epochs: list[EpochRow]
    batches: list[BatchRow]


class ArtifactPublic(Public):
    name: str
    size: int
    content_type: str
    url: str


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    count: int


class ModelPublic(Public):
    id: str
    job_id: str
    arch: str
    classes: list[str]
    metrics: dict[str, Any]
    created_at: datetime
    bundle_url: str


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class PredictUrl(BaseModel):
    url: str = Field(max_length=2048)


class Predictions(BaseModel):
    """[label, probability] pairs, most probable first (the course's classify-url answer)."""

    top: tuple[str, float] | None = Field(None, description="classification: the most probable (label, probability)")
    predictions: list[tuple[str, float]] | None = Field(
        None, description="classification: every class, most probable first"
    )
    labels: list[str] | None = Field(None, description="multi-label: every class above its tuned threshold")
    points: list[list[float]] | None = Field(None, description="points task: (x, y) in the image's own pixels")
    values: list[float] | None = Field(None, description="values task: the predicted numbers")
    mask: str | None = Field(
        None, description="segmentation: base64 PNG, the image's size, each pixel's value the index of its code"
    )
    shares: dict[str, float] | None = Field(None, description="segmentation: share of the image's pixels per class")


class FilePredictions(Predictions):
    filename: str
    error: str | None = Field(None, description="why this file got no answer (the others still did)")


class BatchPredictions(BaseModel):
    results: list[FilePredictions]


class ArchitecturePublic(BaseModel):
    name: str
    imagenet_weights: bool = Field(description="whether ImageNet weights are on this server (pretrained='imagenet')")
    default: bool
    layer_groups: int = Field(description="groups for discriminative learning rates (the head included)")


class ArchitecturesPublic(BaseModel):
    data: list[ArchitecturePublic]
    count: int


class Deleted(BaseModel):
    """What a DELETE removed."""

    deleted: str = Field(description="what it was, e.g. 'dataset 1234 (versions 1, 2)'")
    objects: int = Field(description="objects removed from storage")
    bytes: int = Field(description="bytes those objects took, as recorded")


class KeyCreate(BaseModel):
    """A new key for the caller's project. Only an admin key may make one (or make another admin)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200, description="what the key is for (shown in listings)")
    admin: bool = Field(False, description="an admin key can make, list and revoke the project's keys")
    expires_in_days: float | None = Field(None, gt=0, le=3650, description="default: never expires")


class KeyPublic(Public):
    id: str
    prefix: str = Field(description="the key's first characters, to recognise it")
    name: str
    admin: bool
    state: Literal["active", "expired", "revoked"]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyPublic):
    key: str = Field(description="the key itself: shown this once, never again")


class KeysPublic(BaseModel):
    data: list[KeyPublic]
    count: int

"""HTTP shapes: their own pydantic models, separate from database rows and domain objects. An answer about a
domain object (a `Public`) is read off it by field name, so each resource's field list is written once, here."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

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
    parent_version: int | None = Field(None, description="the version this one was cut from")
    note: str = ""
    changes: dict[str, Any] = Field(default_factory=dict, description="what the cut changed in its parent")


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
    name: str | None = Field(
        None, max_length=200, description="the registry name its model joins (default: the dataset's name)"
    )
    from_model: str | None = Field(
        None, max_length=36, description="retrain: the model to start from (default: the name's champion)"
    )
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
    name: str | None = Field(None, description="its registry name")
    version: int | None = Field(None, description="its version under that name")
    dataset_version_id: str | None = Field(None, description="the dataset version it learnt from")


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
    prediction_id: str | None = Field(None, description="the logged prediction: send feedback to it")


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


Pair = Annotated[list[float], Field(min_length=2, max_length=2)]  # a point: [x, y]


class GoldRef(BaseModel):
    """A dataset version kept as the project's gold set."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(max_length=64)
    version: int | None = Field(None, ge=1, description="default: the dataset's latest version, pinned now")


class ProjectSettings(BaseModel):
    """The caller's project's settings (an admin key changes them); a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    keep_inputs: bool | None = Field(
        None, description="store each predicted image (what feedback turns into training items); default on"
    )
    gold: GoldRef | None = Field(
        None,
        description="a frozen dataset version the promotion gate also scores challenger and champion on (all "
        "its items; keep it out of training); null to stop",
    )


class ProjectPublic(BaseModel):
    id: str
    name: str
    settings: dict[str, Any]


class DecisionPublic(Public):
    id: str
    name: str
    action: str = Field(description="promoted | rejected | approved (waits for a person) | manual")
    model_id: str
    champion_id: str | None = Field(description="the champion before the decision")
    scores: dict[str, Any]
    reason: str
    actor: str
    job_id: str | None
    created_at: datetime


class RegistryEntry(BaseModel):
    name: str
    champion_id: str | None
    challenger_id: str | None
    policy: dict[str, Any] = Field(description="the policy with its defaults filled in")
    retrains_on_feedback: bool = Field(False, description="whether the policy sets min_feedback (the loop retrains)")
    versions: int


class RegistryPublic(BaseModel):
    data: list[RegistryEntry]
    count: int


class RegistryDetail(RegistryEntry):
    models: list[ModelPublic]
    decisions: list[DecisionPublic]


class DecisionsPublic(BaseModel):
    data: list[DecisionPublic]
    count: int


class Promote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(max_length=36)
    reason: str = Field("", max_length=2000)


class PolicyUpdate(BaseModel):
    """A name's retraining policy: fields left out keep their value, a field sent as null goes back to its
    default (min_feedback: null turns retraining on feedback off)."""

    model_config = ConfigDict(extra="forbid")

    min_feedback: int | None = Field(
        None, ge=1, le=1_000_000, description="set it to retrain on its own once this many corrections wait"
    )
    min_improvement: float | None = Field(None, ge=-1, le=1)
    max_class_drop: float | None = Field(None, ge=0, le=1)
    auto_promote: bool | None = None


class PredictionPublic(Public):
    id: str
    model_id: str
    name: str | None
    source: str
    filename: str
    answer: dict[str, Any]
    uncertainty: float
    has_input: bool
    created_at: datetime


class PredictionsPublic(BaseModel):
    data: list[PredictionPublic]
    count: int


class Target(BaseModel):
    """A target in its task's shape: label, labels, points ([x, y] pixels), values or mask (base64 PNG)."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(None, max_length=200)
    labels: list[str] | None = Field(None, max_length=1000)
    points: list[Pair] | list[float] | None = Field(None, max_length=10_000)
    values: list[float] | None = Field(None, max_length=10_000)
    mask: str | None = Field(None, max_length=28 * 1024 * 1024, description="base64 PNG")
    new_class: bool = Field(
        False,
        description="label/labels: true to add a class the model and its dataset do not have yet (else a label "
        "outside them is refused as a likely typo)",
    )


class FeedbackCreate(Target):
    """One of: the task's target (label, labels, points, values, mask) or {"correct": true}."""

    correct: bool | None = None


class FeedbackPublic(Public):
    id: str
    prediction_id: str
    target: dict[str, Any]
    key_id: str
    used_in: str | None
    created_at: datetime


class FeedbackList(BaseModel):
    data: list[FeedbackPublic]
    count: int


class Relabel(Target):
    item: str = Field(max_length=1000)


class VersionCreate(BaseModel):
    """A new version cut from another: feedback added, items relabelled or removed."""

    model_config = ConfigDict(extra="forbid")

    from_version: int | None = Field(None, ge=1, description="default: the latest")
    add_feedback: Literal["all"] | list[Annotated[str, Field(max_length=36)]] | None = Field(
        None,
        max_length=100_000,
        description='"all" unused feedback on this dataset\'s models, or prediction ids',
    )
    relabel: list[Relabel] = Field(default_factory=list, max_length=100_000)
    remove: list[str] = Field(default_factory=list, max_length=100_000)
    note: str = Field("", max_length=2000)


class VersionDiff(BaseModel):
    version: int
    against: int
    added: list[str]
    removed: list[str]
    relabelled: list[dict[str, Any]]
    counts: dict[str, int]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="http(s); fetched through the same SSRF guard as predict-url")
    events: list[Literal["job.succeeded", "job.failed", "model.promoted", "retrain.rejected"]] = Field(
        min_length=1, max_length=4
    )
    secret: str = Field(min_length=16, max_length=200, description="signs each delivery (HMAC-SHA256)")


class WebhookPublic(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: datetime


class WebhooksPublic(BaseModel):
    data: list[WebhookPublic]
    count: int


class DeliveryPublic(Public):
    id: str
    webhook_id: str
    event: str
    payload: dict[str, Any]
    state: str
    attempts: int
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveriesPublic(BaseModel):
    data: list[DeliveryPublic]
    count: int


class Suspect(BaseModel):
    item: str
    valid: bool
    given: dict[str, Any] = Field(
        description="the item's target: {label}, {labels}, {points}, {values}; a mask's item: {shares} of its classes"
    )
    suggested: dict[str, Any] = Field(
        description="the out-of-fold model's answer as a relabel ({label}, {labels}, {points}, {values}, {mask}): "
        "{'item': item, **suggested} in a version's relabel accepts it"
    )
    probability: float | None = Field(None, description="classification: of the suggested class")
    given_probability: float | None = Field(None, description="classification: of the given label")
    loss: float = Field(
        description="the order of the list: -log(given_probability) for a class, mean binary cross-entropy for a "
        "label set, the item's error for points or values, the share of pixels that disagree for a mask"
    )
    image_url: str


class SuspectsPublic(BaseModel):
    data: list[Suspect]
    count: int = Field(description="suspects in all (data holds the first `limit`)")
    dataset_id: str
    version: int

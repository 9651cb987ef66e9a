"""HTTP shapes: their own pydantic models, separate from database rows and domain objects. An answer about a
domain object (a `Public`) is read off it by field name, so each resource's field list is written once, here."""

from __future__ import annotations

import base64
import binascii
import functools
import operator
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, cast
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from core.db.domain import BatchMetric, EpochMetric
from core.engine.splits import MAX_SEED
from core.engine.tasks import TASKS, Task
from core.engine.tasks.base import MAX_LABEL_CHARS
from core.engine.weights_files import WeightsKind
from core.jobs.kind_names import KindName
from core.jobs.kinds import JobKind
from core.jobs.kinds.base import LR_FORM_TEXT
from core.jobs.spec import JobSettings

# The largest whole number a request may send where the database keeps one (a version number, an offset): a
# 32-bit INTEGER's, so that no number is too large for its column (422, not 500).
MAX_INT = 2**31 - 1


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
    label: str = Field(description="its class ('' for a text with no label)")
    valid: bool
    targets: list[float] | None = None
    mask: str | None = None
    text: str | None = Field(None, description="a dataset of texts: the text (its first 2,000 characters)")


class ItemsPublic(BaseModel):
    data: list[ItemPublic]
    count: int
    n_unlabelled: int | None = Field(None, description="a dataset of texts: how many have no label")


class LabelsPublic(Public):
    classes: list[str]
    counts: dict[str, dict[str, int]]


class JobCreate(JobSettings):
    """A job to queue: the training settings of a job spec, with the spec's defaults and checks, and what only
    a job over REST names: its kind, dataset, parent and queue. `parent_job_id` continues from that job's model
    (how stage 2 follows stage 1) and takes its settings unless given. What each kind takes, its defaults
    among them: GET /api/v1/job-kinds."""

    kind: KindName
    dataset_id: str = Field(max_length=36)
    dataset_version: int | None = Field(None, ge=1, le=MAX_INT, description="default: the latest version")
    parent_job_id: str | None = Field(None, max_length=36)
    queue: str | None = Field(None, max_length=100, description="one of the server's queues (default: its first)")
    name: str | None = Field(
        None, max_length=200, description="the registry name its model joins (default: the dataset's name)"
    )
    dry_run: StrictBool = Field(
        False,
        description="queue no job: a probe (a tiny `estimate` job on a worker of the queue: a few timed batches of "
        "the real model at the real size) answers with the job's expected seconds per phase and in all, its peak "
        "memory and the bytes it will store (its result's `estimate`)",
    )
    estimate_job_id: str | None = Field(
        None, max_length=36, description="the dry run this job follows: its page sets the estimate against the actual"
    )
    from_model: str | None = Field(
        None,
        max_length=36,
        description="retrain: the model to start from; predict: the model that answers (default: the name's champion)",
    )


class JobRerun(BaseModel):
    """What to change when queueing a job again (nothing: the same job on the same dataset version)."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="another seed (its split and its draws change with it)"
    )
    deterministic: StrictBool | None = Field(None, description="torch's deterministic algorithms on or off")
    queue: str | None = Field(None, max_length=100, description="another of the server's queues (default: the job's)")


class FactDifference(BaseModel):
    """One recorded fact (core/jobs/provenance.py) that differs between a job and its rerun, as 'a.b' keys."""

    fact: str
    before: Any
    after: Any


class RerunComparison(BaseModel):
    """A rerun against the job it reran: whether the weights came out bit-identical, and which recorded facts
    differ."""

    of: str = Field(description="the job this one reran")
    identical: bool | None = Field(description="the weights' sha256 equal (null until both jobs have exported a model)")
    weights_sha256: str | None
    original_weights_sha256: str | None
    differences: list[FactDifference] = Field(description="the recorded facts that differ (empty: none)")
    note: str = Field(description="what the comparison says, in a sentence")


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
    search_id: str | None = Field(None, description="the hyperparameter search this job is a trial of")
    trial_number: int | None = None
    rerun: RerunComparison | None = Field(
        None, description="a rerun (POST /jobs/{id}/rerun): against the job it reran (GET /jobs/{id} only)"
    )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class MetricsPublic(BaseModel):
    """A job's curves: one row per epoch and the sampled batches, the domain's own rows (core/db/domain.py)."""

    epochs: list[EpochMetric]
    batches: list[BatchMetric]


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


class Explain(BaseModel):
    """Whether an answer carries a heatmap, and for which class (a classification or multi-label model's)."""

    explain: StrictBool = Field(
        False,
        description="add a heatmap (Grad-CAM: where in the image the evidence for a class is) to the answer; "
        "classification and multi-label models only",
    )
    heatmap_class: str | None = Field(
        None,
        max_length=MAX_LABEL_CHARS,
        description="the class the heatmap is for (implies explain; default: the most probable class)",
    )

    @property
    def wanted(self) -> bool:
        return self.explain or self.heatmap_class is not None


class PredictUrl(Explain):
    url: str = Field(max_length=2048, description="an http:// or https:// URL of an image on a public host")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        """The URL's shape, like any other field's (422); whether its host may be fetched is the fetcher's (400)."""
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname or any(ord(ch) <= 32 for ch in v):
            raise ValueError("an http:// or https:// URL with a host, without spaces or control characters")
        try:
            parts.port  # noqa: B018 (a port that is not a number from 0 to 65535 raises)
        except ValueError:
            raise ValueError("the port is not a number from 1 to 65535") from None
        return v


# A file in JSON: base64 text. Answers carry it as the engine's public() encodes it; requests (a mask target) are
# decoded here, at the edge, so that the services and the tasks see the PNG's bytes.
PNG_SCHEMA = {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png"}
MAX_PNG_BASE64 = 28 * 1024 * 1024  # a 20 MB PNG


def _decode_png(value: object) -> object:
    if isinstance(value, str):
        if len(value) > MAX_PNG_BASE64:
            raise ValueError(f"at most {MAX_PNG_BASE64:,} characters of base64")
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError("not base64 text (a PNG, base64-encoded)") from None
    return value


def _query_bool(value: object) -> object:
    """A query string's boolean: true or false, as the document says (not 1, yes or on)."""
    if isinstance(value, str):
        if value not in ("true", "false"):
            raise ValueError("true or false")
        return value == "true"
    return value


QueryBool = Annotated[bool, BeforeValidator(_query_bool)]  # JSON bodies' booleans are StrictBool
Base64Png = Annotated[str, WithJsonSchema(PNG_SCHEMA)]
PngBytes = Annotated[
    bytes,
    BeforeValidator(_decode_png),
    PlainSerializer(lambda b: base64.b64encode(b).decode(), return_type=str, when_used="json"),
    WithJsonSchema({**PNG_SCHEMA, "maxLength": MAX_PNG_BASE64}),
]


class Answer(BaseModel):
    """One image's answer: one schema per task (below, made from each task's answer_fields), told apart by
    `task`, with the logged prediction's id."""

    model_config = ConfigDict(extra="forbid")

    task: str


HEATMAP_FIELDS: dict[str, Any] = {
    "heatmap": (
        Base64Png | None,
        Field(
            None,
            description="explain=true: where in the image the evidence for heatmap_class is (Grad-CAM), an 8-bit "
            "greyscale PNG of the image's own size, 255 the strongest",
        ),
    ),
    "heatmap_class": (str | None, Field(None, description="explain=true: the class the heatmap is for")),
}


def _answer_schema(task: Task) -> type[Answer]:
    fields: dict[str, Any] = {
        name: (Base64Png if kind is bytes else kind, Field(description=text))
        for name, (kind, text) in task.answer_fields.items()
    }
    if task.explains:
        fields |= HEATMAP_FIELDS
    return create_model(
        f"{task.name.title()}Answer",
        __base__=Answer,
        __doc__=f"A {task.name} model's answer.",
        task=(cast(Any, Literal)[task.name], Field(description="the model's task: which answer this is")),
        **fields,
        prediction_id=(str, Field(description="the logged prediction: send feedback to it")),
    )


ANSWERS: dict[str, type[Answer]] = {name: _answer_schema(task) for name, task in TASKS.items()}
FILE_ANSWERS: dict[str, type[Answer]] = {
    name: create_model(
        f"{name.title()}FileAnswer",
        __base__=schema,
        __doc__=f"A {name} model's answer for one of the files.",
        filename=(str, Field(description="the file's name, as sent")),
    )
    for name, schema in ANSWERS.items()
}


class FileError(BaseModel):
    filename: str
    error: str = Field(description="why this file got no answer (the others still did)")


def _one_of(schemas: Iterable[type[Answer]]) -> Any:
    """One answer of these schemas, told apart by its task: a union discriminated by `task`."""
    return Annotated[functools.reduce(operator.or_, schemas), Field(discriminator="task")]


if TYPE_CHECKING:  # for mypy, the base classes; at run time, the unions discriminated by task
    PredictAnswer = Answer
    FileResult = Answer | FileError
else:
    PredictAnswer = _one_of(ANSWERS.values())
    FileResult = _one_of(FILE_ANSWERS.values()) | FileError


def answer_of(task: str, answer: dict[str, Any], prediction_id: str) -> Answer:
    """A prediction's public() as its task's answer schema."""
    return ANSWERS[task].model_validate({"task": task, **answer, "prediction_id": prediction_id})


def file_answer_of(answer: Answer, filename: str) -> Answer:
    """One file's answer in a batch: the answer with its file's name."""
    return FILE_ANSWERS[answer.task].model_validate({**answer.model_dump(), "filename": filename})


class BatchPredictions(BaseModel):
    results: list[FileResult] = Field(description="one per file, in order: its answer, or why it has none")


PredictResponse = PredictAnswer | BatchPredictions  # what POST .../predict answers: one file, or several


MAX_TEXTS_PER_CALL = 64
MAX_EXPLAINED_TEXTS = 8
MAX_TEXT_CHARS = 100_000


class PredictTexts(BaseModel):
    """Texts for a text classifier [fastai: learn.predict(text)]."""

    model_config = ConfigDict(extra="forbid")

    texts: list[Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]] = Field(
        min_length=1, max_length=MAX_TEXTS_PER_CALL, description=f"1 to {MAX_TEXTS_PER_CALL} texts"
    )
    explain: StrictBool = Field(
        False,
        description=f"also each token's weight in the answer (intrinsic attention: a backward pass per text, so at "
        f"most {MAX_EXPLAINED_TEXTS} texts a call)",
    )

    @model_validator(mode="after")
    def _explain_few(self) -> Self:
        if self.explain and len(self.texts) > MAX_EXPLAINED_TEXTS:
            raise ValueError(f"explain weighs the words of at most {MAX_EXPLAINED_TEXTS} texts a call; send fewer")
        return self


class TextAnswer(BaseModel):
    """One text's answer: the image classifier's fields (multi-label adds labels), and its prediction_id."""

    task: str = Field(description="text_classification or text_multilabel")
    top: tuple[str, float] = Field(description="the most probable class: [label, probability]")
    predictions: list[tuple[str, float]] = Field(description="every class as [label, probability], most probable first")
    labels: list[str] | None = Field(None, description="multi-label: every class above its threshold (the answer)")
    words: list[tuple[str, float]] | None = Field(
        None, description="explain: each token and its weight in the answer, 0 to 1 (the gradient at its embedding)"
    )
    prediction_id: str


class TextAnswers(BaseModel):
    results: list[TextAnswer] = Field(description="one per text, in order")


class GenerateRequest(BaseModel):
    """A prompt for a language model [fastai: learn.predict(TEXT, N_WORDS, temperature=0.75)]."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=2000)
    words: int = Field(40, ge=1, le=500, description="tokens to write after the prompt")
    temperature: float = Field(0.75, ge=0.0, le=5.0, description="0: always the likeliest token")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="the same seed writes the same text")


class Generated(BaseModel):
    text: str = Field(description="the prompt and what the language model wrote after it")
    prediction_id: str


class ArchitecturePublic(BaseModel):
    name: str
    imagenet_weights: bool = Field(
        description="whether pretrained='imagenet' works with it: its ImageNet weights are on this server or in the "
        "fleet's weights store (GET /weights), which workers fetch them from"
    )
    default: bool
    layer_groups: int = Field(description="groups for discriminative learning rates (the head included)")


class ArchitecturesPublic(BaseModel):
    data: list[ArchitecturePublic]
    count: int
    wt103_weights: bool = Field(
        description="whether the fleet's weights store holds fastai's WikiText-103 AWD-LSTM language model "
        "(lstm_fwd.pth and itos_wt103.pkl), which a text model starts from"
    )


class WeightsPublic(BaseModel):
    """A pretrained weights file of the fleet's store: every worker fetches it before a job that needs it."""

    name: str = Field(description="the file's name (torchvision's published one, lstm_fwd.pth, itos_wt103.pkl)")
    kind: WeightsKind = Field(
        description="imagenet: a torchvision ResNet's ImageNet weights; wt103_weights / wt103_vocab: fastai's "
        "WikiText-103 AWD-LSTM and its vocabulary"
    )
    arch: str | None = Field(description="imagenet: the architecture it is for")
    size: int = Field(description="bytes, as uploaded")
    sha256: str = Field(description="of the file as uploaded: a file of the same name must have this one")
    uploaded_at: datetime
    uploaded_by_this_project: bool


class WeightsListPublic(BaseModel):
    data: list[WeightsPublic]
    count: int


class JobKindPublic(BaseModel):
    """A job kind as the registry (core/jobs/kinds/) declares it."""

    name: str
    summary: str
    makes_model: bool
    parent: str | None = Field(description="what its parent job must be, when it needs one")
    takes_parent: bool
    lr: float | str | None = Field(description="the default learning rate; null: the kind takes none")
    lr_note: str = Field(description="how the default is chosen, when it is more than a number")
    lr_forms: list[Literal["number", "range", "find", "auto"]] = Field(description="the forms of lr it takes")
    fields: list[str] = Field(description="the job settings it uses beyond the common ones")

    @classmethod
    def of(cls, kind: JobKind) -> Self:
        return cls(
            name=kind.name,
            summary=kind.summary,
            makes_model=kind.makes_model,
            parent=kind.parent,
            takes_parent=kind.takes_parent,
            lr=kind.lr,
            lr_note=kind.lr_note,
            lr_forms=[f for f in LR_FORM_TEXT if f in kind.lr_forms],  # the registry's order
            fields=list(kind.form_fields),
        )


class JobKindsPublic(BaseModel):
    data: list[JobKindPublic]
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
    admin: StrictBool = Field(False, description="an admin key can make, list and revoke the project's keys")
    expires_in_days: float | None = Field(
        None, ge=1 / 86400, le=3650, description="default: never expires; at least a second (1/86400)"
    )


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
    version: int | None = Field(None, ge=1, le=MAX_INT, description="default: the dataset's latest version, pinned now")


class ProjectSettings(BaseModel):
    """The caller's project's settings (an admin key changes them); a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    keep_inputs: StrictBool | None = Field(
        None, description="store each predicted image (what feedback turns into training items); default on"
    )
    input_retention_days: int | None = Field(
        None,
        ge=1,
        le=3650,
        description="delete predictions (and their kept inputs) older than this many days, except those whose "
        "feedback waits for a dataset version; null: keep them until deleted",
    )
    gold: GoldRef | None = Field(
        None,
        description="a frozen dataset version the promotion gate also scores challenger and champion on (all "
        "its items; keep it out of training); null to stop",
    )
    drift_threshold: float | None = Field(
        None,
        ge=0.01,
        le=10,
        description="the population stability index past which a served model's drift raises an alarm (default "
        "0.25: a significant shift); null: no drift alarms (the scores are still kept)",
    )
    drift_window: int | None = Field(
        None,
        ge=100,
        le=10_000,
        description="how many of a model's latest answers (of the last 24 hours) its drift is measured on "
        "(default 500); null: back to the default",
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
    auto_promote: StrictBool | None = None
    retrain_on_drift: StrictBool | None = Field(
        None,
        description="when a drift alarm opens on the champion, cut a version with the waiting corrections and "
        "retrain on it (null or false: an alarm only warns)",
    )


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


class PredictionsDeleted(BaseModel):
    deleted: int = Field(description="predictions deleted, with their kept inputs, masks and feedback")
    more: bool = Field(description="more predictions match: call again to delete the next batch")


class Target(BaseModel):
    """A target in its task's shape: label, labels, points ([x, y] pixels), values or mask (base64 PNG)."""

    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(None, max_length=200)
    labels: list[str] | None = Field(None, max_length=1000)
    points: list[Pair] | list[float] | None = Field(None, max_length=10_000)
    values: list[float] | None = Field(None, max_length=10_000)
    mask: PngBytes | None = Field(None, description="base64 PNG: single-channel, each value a code's index")
    new_class: StrictBool = Field(
        False,
        description="label/labels: true to add a class the model and its dataset do not have yet (else a label "
        "outside them is refused as a likely typo)",
    )


class FeedbackCreate(Target):
    """One of: the task's target (label, labels, points, values, mask) or {"correct": true}."""

    correct: StrictBool | None = None


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


MAX_EDITS_PER_CALL = 10_000  # per list of one cut: a bigger change is several cuts


class VersionCreate(BaseModel):
    """A new version cut from another: feedback added, items relabelled or removed."""

    model_config = ConfigDict(extra="forbid")

    from_version: int | None = Field(None, ge=1, le=MAX_INT, description="default: the latest")
    add_feedback: Literal["all"] | list[Annotated[str, Field(max_length=36)]] | None = Field(
        None,
        max_length=MAX_EDITS_PER_CALL,
        description='"all" unused feedback on this dataset\'s models, or prediction ids',
    )
    relabel: list[Relabel] = Field(
        default_factory=list, max_length=MAX_EDITS_PER_CALL, description="each item at most once"
    )
    remove: list[Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=list, max_length=MAX_EDITS_PER_CALL, description="each item at most once"
    )
    note: str = Field("", max_length=2000)
    add_served_texts: StrictBool = Field(
        False,
        description="texts: every text this dataset's models answered (kept inputs) not yet in it, unlabelled, for "
        f"the next language model (at most {MAX_EDITS_PER_CALL:,} a cut, newest first)",
    )


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
    events: list[Literal["job.succeeded", "job.failed", "model.promoted", "retrain.rejected", "model.drift"]] = Field(
        min_length=1, max_length=4
    )
    secret: str = Field(min_length=16, max_length=200, description="signs each delivery (HMAC-SHA256)")


class WebhookPublic(BaseModel):
    id: str
    url: str
    events: list[str]
    active: bool = Field(description="false: disabled, it gets no delivery")
    created_at: datetime


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    active: bool = Field(strict=True, description="false disables the webhook (its pending deliveries are dropped)")


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


# ----- hyperparameter searches (api/services/searches.py) ---------------------------------------------------------
Choice = Annotated[
    list[
        StrictBool
        | Annotated[StrictInt, Field(ge=-MAX_INT, le=MAX_INT)]
        | float
        | Annotated[str, Field(max_length=100)]
    ],
    Field(min_length=1, max_length=32),
]
Dimension = (
    Annotated[
        dict[Literal["log_uniform", "uniform"], Annotated[list[float], Field(min_length=2, max_length=2)]],
        Field(min_length=1, max_length=1),
    ]
    | Annotated[dict[Literal["choice"], Choice], Field(min_length=1, max_length=1)]
    | Literal["around_lr_find"]
)


class SearchObjective(BaseModel):
    """What a search optimises: a metric every trial reports after each epoch, and which way is better."""

    model_config = ConfigDict(extra="forbid")
    metric: str = Field(
        max_length=50, description="a metric the jobs report per epoch (error_rate, accuracy, ...) or valid_loss"
    )
    direction: Literal["maximize", "minimize"] | None = Field(None, description="default: the metric's own")


class SearchCreate(BaseModel):
    """A hyperparameter search: `base` is a job body as POST /jobs takes it; each trial is that job with the
    space's fields sampled (Optuna's TPE by default), run on the same queues as any job."""

    model_config = ConfigDict(extra="forbid")
    base: JobCreate
    space: dict[Annotated[str, Field(max_length=60)], Dimension] = Field(
        min_length=1,
        max_length=16,
        description='field path -> {"log_uniform": [lo, hi]} | {"uniform": [lo, hi]} | {"choice": [...]}, or '
        '"around_lr_find" for lr: an lr_find of the base job first, then lr within [valley/10, valley x 10]',
    )
    trials: int = Field(16, ge=1, le=200, description="at most this many trials (a grid: at most its size)")
    parallel: int = Field(
        2, ge=1, le=64, description="trials queued or running at once (at most the active-jobs quota)"
    )
    objective: SearchObjective | None = Field(None, description="default: the task's main metric, its own direction")
    pruner: Literal["asha", "median", "none"] = Field(
        "asha",
        description="asha: successive halving at 1, 3, 9... epochs, the top third goes on; median: below the "
        "median of earlier trials at the same epoch stops",
    )
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="grid: every combination of choices")
    seed: int | None = Field(
        None, ge=0, le=MAX_INT, description="the sampler's seed (the same seed samples the same trials)"
    )
    register_as: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="the best trial's model joins this registry name; the gate judges it",
    )


class TrialPublic(BaseModel):
    number: int
    job_id: str
    state: str
    params: dict[str, Any]
    epochs: int = Field(description="epochs it ran")
    value: float | None = Field(description="its objective: after its last epoch")
    values: list[float | None] = Field(description="its objective after each epoch")
    started_at: datetime | None
    finished_at: datetime | None


class SearchPublic(BaseModel):
    id: str
    state: str
    base: dict[str, Any]
    space: dict[str, Any]
    max_trials: int
    parallel: int
    objective: SearchObjective
    pruner: str
    sampler: str
    seed: int | None
    register_as: str | None
    lr_find_job_id: str | None
    lr_range: list[float] | None
    adopt_job_id: str | None
    created_at: datetime
    finished_at: datetime | None
    error: str | None
    counts: dict[str, int] = Field(description="trials by state")
    epochs_used: int = Field(description="epochs run by all its trials")
    epochs_unpruned: int = Field(description="epochs its trials would have run had none been pruned")
    best: TrialPublic | None
    best_so_far: list[list[float]] = Field(
        description="[seconds since the search began, best objective] at each improvement"
    )
    decision: dict[str, Any] | None = Field(
        None, description="register_as: the gate's decision on the best trial's model"
    )
    trials: list[TrialPublic]


class SearchesPublic(BaseModel):
    data: list[SearchPublic]
    count: int


class SearchImportance(BaseModel):
    """How much each searched field explains of the objective (Optuna's default evaluator, PED-ANOVA), over finished
    trials."""

    importances: dict[str, float]
    evaluator: str
    n_trials: int
    note: str | None = None


class DriftScore(BaseModel):
    """One signal's population stability index against the model's reference, and what moved most."""

    model_config = ConfigDict(populate_by_name=True)

    signal: Literal["uncertainty", "class_mix", "input"]
    score: float = Field(description="the population stability index (0: as at export; past 0.25 a significant shift)")
    moved: str = Field(description="what moved most: 'uncertainty', a class, or an input feature (mean_red, ...)")
    before: float = Field(alias="from", description="its value in the reference (a median, a share or a mean)")
    after: float = Field(alias="to", description="its value in the window")
    text: str = Field(description="the same in words")
    examples: list[str] = Field(description="ids of the window's predictions that show it best")


class DriftAlarm(BaseModel):
    """An open alarm: the signal that passed the bar most, explained."""

    model_config = ConfigDict(populate_by_name=True)

    signal: Literal["uncertainty", "class_mix", "input"]
    text: str
    score: float
    threshold: float = Field(description="the project's drift_threshold")
    bar: float = Field(description="the score it passed: the threshold plus what sampling alone gives at these sizes")
    moved: str
    before: float = Field(alias="from")
    after: float = Field(alias="to")
    since: datetime = Field(description="the check that first found the score past the bar")
    window: dict[str, Any] = Field(description="answers: how many; from, to: the oldest and newest answer's time")
    signals: dict[str, float] = Field(description="every signal past the bar, with its score")
    examples: list[str] = Field(description="ids of predictions that show the shift (GET /predictions/{id}/input)")
    action: str | None = Field(description="what the name's policy did (retrain_on_drift), or null")


class DriftPointPublic(BaseModel):
    at: datetime
    scores: dict[str, float]


class DriftPublic(BaseModel):
    """A served model's drift: the last check of its latest answers against its reference, its open alarm, and
    its scores over the last 24 hours."""

    model_id: str
    name: str | None
    watched: bool = Field(description="whether its drift is watched (an image model exported with a reference)")
    not_watched: str | None = Field(description="why it is not, when it is not")
    reference_items: int | None = Field(description="validation answers the reference was made of")
    threshold: float | None = Field(description="the project's drift_threshold (null: no alarms)")
    alarm_at: float | None = Field(
        description="the score that raises an alarm at the last window's size: the threshold plus what sampling "
        "alone gives (about 9 x (1/reference items + 1/window answers))"
    )
    window_size: int = Field(description="answers in the last window (the project's drift_window at most)")
    newest: str | None = Field(description="the id of the newest prediction the last check read")
    min_window: int = Field(description="answers a window needs before it is scored")
    checked_at: datetime | None
    scores: dict[str, DriftScore]
    alarm: DriftAlarm | None
    alarms: int = Field(description="alarms raised so far")
    history: list[DriftPointPublic] = Field(description="the scores over the last 24 hours, oldest first")

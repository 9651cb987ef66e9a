"""The Task: everything that makes classification, multi-label, points, values or segmentation what it is
[fastai: the blocks — CategoryBlock, MultiCategoryBlock, PointBlock, RegressionBlock, MaskBlock — that carry
their own target decoding, loss and display]. The data loaders, the learner, export, inference,
interpretation and plots are task-free: they ask the task."""

from __future__ import annotations

import base64
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from core.engine.architectures import Architecture
from core.engine.errors import BundleError, DataError
from core.engine.items import LabelledItems
from core.engine.model import HeadConfig, create_cnn_model
from core.engine.transforms import AugmentConfig, BatchAugment, ResizeMethod, resize_image, resize_map

if TYPE_CHECKING:
    from core.engine.data import ImageDataLoaders
    from core.engine.inference import Predictor
    from core.engine.interpret import ValidOutputs
    from core.engine.learner import Learner


@dataclass(frozen=True)
class Grid:
    """How one image is resized for the model: its own size, the target size and method, and the seed of a
    random crop (None: centred). A target drawn on the image (points, a mask) follows the same grid."""

    width: int
    height: int
    size: int
    method: ResizeMethod
    seed: int | None = None

    def rng(self) -> np.random.Generator | None:
        """A fresh generator: every call draws the same crop position."""
        return np.random.default_rng(self.seed) if self.seed is not None else None

    def resize(
        self, img: Image.Image, resample: Image.Resampling = Image.Resampling.BILINEAR, fill: int = 0
    ) -> Image.Image:
        """The image (or a mask, with NEAREST) resized on this grid."""
        return resize_image(img, self.size, self.method, self.rng(), resample, fill=fill)

    def affine(self) -> tuple[float, float, float, float]:
        """(ax, bx, ay, by): source pixels to resized pixels, x' = ax * x + bx."""
        return resize_map(self.width, self.height, self.size, self.method, self.rng())


class Prediction(Protocol):
    """One image's answer. A task's prediction class subclasses this protocol: it writes answer() and gets
    public(). Its files stay bytes until an edge that speaks JSON encodes them (json_ready, as public() does)."""

    def answer(self) -> dict[str, Any]:
        """The answer's fields (its task's `answer_fields`): plain values, and its files (a mask's PNG) as bytes."""
        ...

    def public(self) -> dict[str, Any]:
        """The answer as JSON-ready values, each file as base64 text: what the REST API and the CLI print."""
        return json_ready(self.answer())

    def text(self) -> str:
        """The answer in a few words, for a terminal."""
        ...

    @property
    def uncertainty(self) -> float:
        """How unsure the model is, 0 (sure) and up, comparable within a task: the active-learning order."""
        ...


def json_ready(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer (or a target) with each file in it (bytes) as base64 text, for JSON."""
    return {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in answer.items()}


class Interpretation(Protocol):
    """What a model gets wrong on the validation set."""

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for interpretation.json."""
        ...

    def plots(self) -> list[tuple[str, Callable[[Path], Path]]]:
        """(artifact name, a function that draws it to a path), for each picture of it."""
        ...


@dataclass(frozen=True)
class Correction:
    """A person's target for one image, checked, in the task's shape: the JSON to store, and for a mask the
    PNG to store beside it."""

    target: dict[str, Any]
    mask_png: bytes | None = None


@dataclass(frozen=True)
class Scores:
    """A model's score on labelled items, computed in label space from its answers, so that two models with
    different class lists (a retrain that added a class) are scored on the same items the same way."""

    metric: str
    value: float
    higher_is_better: bool
    per_class: dict[str, float]  # recall per class (classification, multi-label), IoU (segmentation); {} else
    n_items: int
    # Each scored item's own value of the metric (1/0 for a hit, an item's F-beta, error or IoU), in the order
    # the items were scored, and per class the values of the items that class's score is made of (the items
    # whose truth holds the class, in the same order). Both depend only on the truth for which items they
    # hold, so two models scored on the same items pair up item by item: what the gate's paired test reads.
    items: tuple[float, ...] = ()
    class_items: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @classmethod
    def of_items(
        cls, metric: str, higher_is_better: bool, items: list[float], class_items: dict[str, list[float]]
    ) -> Scores:
        """The scores from each item's value and each class's items' values: the metric is their mean, each
        class's score the mean of its own (recall, for hits)."""
        per_class = {c: sum(v) / len(v) for c, v in sorted(class_items.items())}
        value = sum(items) / max(1, len(items))
        paired = {c: tuple(class_items[c]) for c in per_class}
        return cls(metric, value, higher_is_better, per_class, len(items), tuple(items), paired)

    @property
    def per_class_n(self) -> dict[str, int]:
        """How many items each class's score rests on."""
        return {c: len(v) for c, v in self.class_items.items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": self.value,
            "higher_is_better": self.higher_is_better,
            "per_class": self.per_class,
            "per_class_n": self.per_class_n,
            "n_items": self.n_items,
        }


@dataclass(frozen=True)
class Doubt:
    """How far one item's given target is from the answer of a model that never saw it (the cleaner's row):
    `loss` orders the items (higher: more doubtful), `given` and `suggested` are targets in the shape a version's
    relabel takes ({"label"}, {"labels"}, {"points"}, {"values"}, {"mask"}), so `{"item": key, **suggested}` is
    the edit that accepts the suggestion. Classification adds the probabilities of both classes. The targets are
    JSON (a mask as base64 text), as the cleaner's artifact and a version's relabel carry them."""

    loss: float
    given: dict[str, Any]
    suggested: dict[str, Any]
    probability: float | None = None
    given_probability: float | None = None


MAX_LABEL_CHARS = 200


def check_label(value: Any, where: str) -> str:
    """A class name from a request: a non-empty line of text (a new class is allowed)."""
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: a class name is a non-empty string")
    label = value.strip()
    if len(label) > MAX_LABEL_CHARS or any(ord(c) < 32 for c in label) or "/" in label:
        raise DataError(f"{where}: a class name has at most {MAX_LABEL_CHARS} characters, no '/' or control characters")
    return label


def check_numbers(value: Any, n: int, where: str) -> list[float]:
    """`n` finite numbers from a request (a flat list, or [[x, y], ...] pairs flattened)."""
    flat = [v for t in value for v in (t if isinstance(t, list) else [t])] if isinstance(value, list) else None
    if (
        flat is None
        or len(flat) != n
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in flat)
    ):
        raise DataError(f"{where}: expected {n} numbers")
    return [float(v) for v in flat]


def manifest_field(manifest: dict[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    """A bundle manifest's field, checked for presence and type."""
    if key not in manifest:
        raise BundleError(f"{where}: manifest.json has no '{key}'; re-export the model with fitcycle")
    value = manifest[key]
    if not isinstance(value, kind):
        raise BundleError(f"{where}: manifest.json '{key}' should be {kind}, found {type(value).__name__}")
    return value


class Task(ABC):
    """One kind of target. Subclasses set the class variables and implement the abstract methods; the
    defaults fit a head on a pooled body that outputs `outputs_per_class` numbers per class."""

    name: ClassVar[str]  # stored in bundles and job results: do not rename
    items_type: ClassVar[type[LabelledItems]]
    metrics: ClassVar[tuple[str, ...]]  # the default metrics, the main one among them
    main_metric: ClassVar[str]
    activation: ClassVar[str] = "none"  # what turns outputs into probabilities (the manifest says it)
    head_dropout: ClassVar[float] = 0.5  # fastai's ps
    outputs_per_class: ClassVar[int] = 1
    result_keys: ClassVar[tuple[str, ...]] = ()  # what of its interpretation an interpret job's result keeps
    target_from_file: ClassVar[bool] = False  # its target is read from a file (a mask): the decode cache keeps it
    fp32_head: ClassVar[bool] = False  # mixed precision keeps the head in fp32 (outputs that are values)
    explains: ClassVar[bool] = False  # answers can carry a class-activation heatmap (core/engine/heatmap.py)
    # The fields of its predictions' answer(): name -> (type, description). A `bytes` field is a file (a PNG), as
    # bytes in the answer and as base64 text in JSON. The REST API's schema of this task's answer is made of them.
    answer_fields: ClassVar[dict[str, tuple[Any, str]]]

    @classmethod
    def file_fields(cls) -> list[str]:
        """The answer's fields that are files (a mask), named alike in its targets: a logged answer or a stored
        target keeps each in the object store, and holds its key."""
        return [name for name, (kind, _) in cls.answer_fields.items() if kind is bytes]

    # ----- data ----------------------------------------------------------------------------------
    def n_out(self, items: LabelledItems) -> int:
        """Model outputs for these items."""
        return len(items.classes) * self.outputs_per_class

    def limit_augment(self, config: AugmentConfig) -> AugmentConfig:
        """The augmentation this task's targets can follow (the default: all of it)."""
        return config

    @abstractmethod
    def target(self, items: Any, i: int, grid: Grid) -> Any:
        """Item i's target as the model learns it, on the image's grid."""

    def augment(
        self, augment: BatchAugment, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch on its device; targets drawn on the image move with it."""
        return augment(x, gen), y

    # ----- model ---------------------------------------------------------------------------------
    def build_model(
        self, arch: Architecture, body: nn.Sequential, dls: ImageDataLoaders, head: HeadConfig
    ) -> tuple[nn.Module, Any]:
        """The model to train on `body`, and the head configuration to export with it."""
        return create_cnn_model(arch, dls.n_out, body, head), head

    @abstractmethod
    def loss(self) -> nn.Module:
        """The default loss [fastai: the block's loss_func]."""

    def chosen_loss(self, name: str) -> nn.Module | None:
        """The loss a spec names (its `loss`): None for "default" (the learner asks `loss()`); a name this task
        has no loss for is refused."""
        if name == "default":
            return None
        raise DataError(f"loss '{name}' is not a loss of {self.name} models; leave loss at 'default'")

    # ----- export bundles --------------------------------------------------------------------------
    def manifest_fields(self, dls: ImageDataLoaders, thresholds: list[float] | None) -> dict[str, Any]:
        """What a bundle's manifest needs beyond the common fields."""
        return {}

    def check_manifest(self, manifest: dict[str, Any], where: Path) -> None:
        """Refuse a manifest this task cannot serve (a BundleError that says what is wrong)."""
        classes = manifest_field(manifest, "classes", list, where)
        n_out = manifest_field(manifest, "n_out", int, where)
        if len(classes) * self.outputs_per_class != n_out or not all(isinstance(c, str) for c in classes):
            raise BundleError(f"{where}: {len(classes)} class names for {n_out} outputs")

    # ----- inference -------------------------------------------------------------------------------
    def inference_model(self, arch: Architecture, manifest: dict[str, Any]) -> nn.Module:
        """The bundle's model, untrained, ready for its weights."""
        head = manifest["head"]
        config = HeadConfig(
            lin_ftrs=list(head["lin_ftrs"]),
            ps=float(head["ps"]),
            concat_pool=bool(head["concat_pool"]),
            target_scale=bool(head.get("target_scale", False)),
        )
        return create_cnn_model(arch, manifest["n_out"], head=config)

    def predict(self, predictor: Predictor, images: Sequence[Image.Image]) -> list[Prediction]:
        """Answers for several images: one forward pass at the training size, then each output decoded. A
        task whose model sees each image at its own shape (segmentation) overrides this instead of decode."""
        outputs = predictor.forward(images)
        return [self.decode(o, img, predictor) for o, img in zip(outputs, images, strict=True)]

    def decode(self, output: torch.Tensor, image: Image.Image, predictor: Predictor) -> Prediction:
        """One image's model output (from predict's batch) as its answer."""
        raise NotImplementedError(f"the {self.name} task answers in predict, not decode")

    # ----- looking at the data and the model ---------------------------------------------------------
    def keep_valid(self, output: torch.Tensor, target: torch.Tensor) -> Any:
        """What interpretation needs of one validation batch (full-precision model outputs and targets, on
        the device), kept from the last validation pass of a fit or from a fresh one: by default both, on the
        CPU. A task whose outputs are large (a class per pixel) keeps what it reduces them to instead."""
        return output.cpu(), target.cpu()

    def tuned_thresholds(self, summary_or_manifest: dict[str, Any]) -> list[float] | None:
        """Per-class decision thresholds tuned on the validation set, from an interpretation's summary or a
        bundle's manifest (a task that decides by threshold keeps them in its export); None for the others."""
        return None

    def mix_labels(self, answer: dict[str, Any]) -> list[str] | None:
        """The class(es) a logged answer counts toward in a drift window's class mix (core/engine/drift.py);
        None for a task whose answers have no class."""
        return None

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        """What an interpret job's result keeps of its interpretation's summary: the task's `result_keys`."""
        return {k: summary[k] for k in self.result_keys if k in summary}

    @abstractmethod
    def interpret(
        self, learn: Learner, thresholds: list[float] | None = None, outputs: ValidOutputs | None = None
    ) -> Interpretation:
        """What the learner's model gets wrong on its validation set: from `outputs`, the last validation
        pass's (Task.keep_valid of each batch), else from a fresh pass over it."""

    @abstractmethod
    def show_batch(self, images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], path: Path) -> Path:
        """Decoded images (N, 3, H, W in [0, 1]) with their targets drawn or written, to a PNG."""

    # ----- the feedback loop -----------------------------------------------------------------------
    @abstractmethod
    def correction(self, body: dict[str, Any], manifest: dict[str, Any], image_size: tuple[int, int]) -> Correction:
        """A person's target for an image of `image_size`, in this task's shape ({"label"}, {"labels"},
        {"points"}, {"values"} or {"mask"}: a file as bytes, decoded where it came as JSON), checked against the
        model's (or dataset's) manifest: a DataError that names the field otherwise. A class outside the
        manifest's classes is allowed (a new class)."""

    @abstractmethod
    def confirmed(self, answer: dict[str, Any]) -> Correction:
        """{"correct": true}: the model's own answer (its answer(): files as bytes) as the target."""

    @abstractmethod
    def record(self, target: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
        """A stored target as a dataset manifest's item fields (label, targets, or mask: the item's mask key)."""

    @abstractmethod
    def score(self, predictions: Sequence[Prediction], items: Any, indices: Sequence[int]) -> Scores:
        """Answers for items[indices] scored against their targets, in label space."""

    @abstractmethod
    def doubt(self, prediction: Prediction, items: Any, i: int) -> Doubt:
        """How much an answer from a model that never saw item i doubts its given target (the cleaner)."""

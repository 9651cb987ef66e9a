"""Labelled items: the image files of a dataset with their targets, train/valid flags and the problems found
while labelling. One type per kind of target, so every field a task reads is there, typed, and no
optional field waits to be asserted. The labelling rules (labelling.py, masks.py) make them; a dataset
version's manifest stores them (`record`, `manifest_fields`) and gives them back (`stored_items`); the
task modules (tasks/) say what to learn from them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from core.engine.splits import split_by_rand_pct, split_by_rand_pct_per_class

IGNORE_INDEX = -100  # the target value of void pixels: PyTorch's cross-entropy default ignore_index


@dataclass(frozen=True)
class Rejected:
    """A file left out of the dataset, and why."""

    key: str
    reason: str


@dataclass
class LabelledItems:
    """What every dataset has: files (keys relative to root), their split, the class (or target) names,
    and what was left out."""

    root: Path
    keys: list[str]  # posix paths relative to root: the stable identity of an item
    is_valid: list[bool]
    classes: list[str]  # class names; regression: target names; segmentation: the non-void codes
    rejected: list[Rejected] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)

    # How a dataset version's manifest names this kind of target (stored data: do not rename).
    target_kind: ClassVar[str] = ""

    def __len__(self) -> int:
        return len(self.keys)

    def path(self, i: int) -> Path:
        """Absolute path of item i."""
        return self.root / self.keys[i]

    def indices(self, valid: bool) -> list[int]:
        """Indices of the train (valid=False) or validation (valid=True) items."""
        return [i for i, v in enumerate(self.is_valid) if v == valid]

    def counts(self) -> dict[str, dict[str, int]]:
        """Items per split: {"items": {"train": n, "valid": n}} (per class where items have classes)."""
        n_valid = sum(self.is_valid)
        return {"items": {"train": len(self) - n_valid, "valid": n_valid}}

    def summary(self) -> str:
        """One paragraph a person can read: sizes, and what was rejected and why."""
        n_valid = sum(self.is_valid)
        lines = [f"{len(self)} images in {len(self.classes)} classes ({len(self) - n_valid} train, {n_valid} valid)"]
        if self.rejected:
            reasons = Counter(r.reason.split(":")[0] for r in self.rejected)
            first = "; ".join(f"{r.key} ({r.reason})" for r in self.rejected[:3])
            lines.append(f"{len(self.rejected)} files rejected ({dict(reasons)}); first: {first}")
        if self.empty_classes:
            lines.append(f"classes with no usable image, left out: {', '.join(self.empty_classes)}")
        return "\n".join(lines)

    # ----- the stored form (a dataset version's manifest) ------------------------------------------
    def stored_files(self) -> list[str]:
        """The files (keys relative to root) a dataset version stores for these items: each image (and mask)."""
        return list(self.keys)

    def record(self, i: int) -> dict[str, Any]:
        """Item i's target fields in the manifest (its key and split are written beside them)."""
        return {"label": ""}

    def manifest_fields(self) -> dict[str, Any]:
        """Dataset-wide fields the manifest needs to give these items back."""
        return {}

    @staticmethod
    def random_split(keys: Sequence[str], rows: Sequence[dict[str, Any]], valid_pct: float, seed: int) -> list[bool]:
        """The validation flags of a random split: stable per item (a hash of its key)."""
        return split_by_rand_pct(keys, valid_pct, seed)

    @classmethod
    def from_records(
        cls, root: Path, rows: Sequence[dict[str, Any]], flags: list[bool], manifest: dict[str, Any]
    ) -> LabelledItems:
        """Items from a manifest's records (the inverse of record and manifest_fields)."""
        raise NotImplementedError


@dataclass(kw_only=True)
class LabelItems(LabelledItems):
    """Images labelled with classes (one, or several)."""

    labels: list[str]
    target_kind: ClassVar[str] = "label"

    def label_set(self, i: int) -> list[str]:
        """The classes of item i."""
        return [self.labels[i]]

    @cached_property
    def class_index(self) -> dict[str, int]:
        """Class name -> its index in `classes`."""
        return {c: i for i, c in enumerate(self.classes)}

    def counts(self) -> dict[str, dict[str, int]]:
        """Items per class and split: {class: {"train": n, "valid": n}}."""
        out = {c: {"train": 0, "valid": 0} for c in self.classes}
        for i, valid in enumerate(self.is_valid):
            for label in self.label_set(i):
                out[label]["valid" if valid else "train"] += 1
        return out

    def record(self, i: int) -> dict[str, Any]:
        return {"label": self.labels[i]}


@dataclass(kw_only=True)
class ClassItems(LabelItems):
    """One class per image."""

    @staticmethod
    def random_split(keys: Sequence[str], rows: Sequence[dict[str, Any]], valid_pct: float, seed: int) -> list[bool]:
        """As at upload: every class of 5 or more items gets a validation item."""
        return split_by_rand_pct_per_class(keys, [r["label"] for r in rows], valid_pct, seed)

    @classmethod
    def from_records(
        cls, root: Path, rows: Sequence[dict[str, Any]], flags: list[bool], manifest: dict[str, Any]
    ) -> ClassItems:
        labels = [r["label"] for r in rows]
        return cls(root, [r["key"] for r in rows], flags, sorted(set(labels)), labels=labels)


@dataclass(kw_only=True)
class MultiLabelItems(LabelItems):
    """Several classes per image: each label is a `label_delim`-delimited list of classes."""

    label_delim: str

    def label_set(self, i: int) -> list[str]:
        return [c for c in self.labels[i].split(self.label_delim) if c]

    @classmethod
    def from_records(
        cls, root: Path, rows: Sequence[dict[str, Any]], flags: list[bool], manifest: dict[str, Any]
    ) -> MultiLabelItems:
        # The classes are the manifest's: the union of every item's label set.
        return cls(
            root,
            [r["key"] for r in rows],
            flags,
            list(manifest["classes"]),
            labels=[r["label"] for r in rows],
            label_delim=manifest["labels"]["label_delim"],
        )


@dataclass(kw_only=True)
class TargetItems(LabelledItems):
    """Numbers per image (regression)."""

    targets: list[list[float]]
    pairs: ClassVar[bool] = False  # the numbers are (x, y) pairs

    def record(self, i: int) -> dict[str, Any]:
        return {"label": "", "targets": self.targets[i]}

    @classmethod
    def from_records(
        cls, root: Path, rows: Sequence[dict[str, Any]], flags: list[bool], manifest: dict[str, Any]
    ) -> TargetItems:
        keys, targets = [r["key"] for r in rows], [r["targets"] for r in rows]
        return cls(root, keys, flags, list(manifest["classes"]), targets=targets)

    @classmethod
    def target_names(cls, columns: Sequence[str]) -> list[str]:
        """The target names from a table's number columns."""
        return list(columns)

    @classmethod
    def default_names(cls, width: int) -> list[str]:
        """Target names for `width` unnamed numbers."""
        return [f"v{i}" for i in range(width)]


@dataclass(kw_only=True)
class PointItems(TargetItems):
    """Key points per image: x0, y0, x1, y1, ... in the image's own pixels; a class name per point."""

    target_kind: ClassVar[str] = "points"
    pairs: ClassVar[bool] = True

    @classmethod
    def target_names(cls, columns: Sequence[str]) -> list[str]:
        """nose_x, nose_y, ... -> nose, ...: a name per (x, y) column pair."""
        return [h.removesuffix("_x").removesuffix("x") or f"p{i}" for i, h in enumerate(columns[::2])]

    @classmethod
    def default_names(cls, width: int) -> list[str]:
        return [f"p{i}" for i in range(width // 2)]


@dataclass(kw_only=True)
class ValueItems(TargetItems):
    """Any numbers per image."""

    target_kind: ClassVar[str] = "values"


@dataclass(kw_only=True)
class MaskItems(LabelledItems):
    """A mask file per image: each pixel's value the index of its code; `void_code` is ignored by the loss
    and the metrics, the classes are the other codes."""

    masks: list[str]  # posix, relative to root
    codes: list[str]
    void_code: int | None = None
    target_kind: ClassVar[str] = "mask"

    def mask_path(self, i: int) -> Path:
        """Absolute path of item i's mask."""
        return self.root / self.masks[i]

    @cached_property
    def class_lookup(self) -> np.ndarray:
        """Mask value -> class index (int64), with the void code mapped to the ignore index."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
        for value, name in enumerate(self.codes):
            if value != self.void_code:
                lut[value] = self.classes.index(name)
        return lut

    def stored_files(self) -> list[str]:
        return [*self.keys, *self.masks]

    def record(self, i: int) -> dict[str, Any]:
        return {"label": "", "mask": self.masks[i]}

    def manifest_fields(self) -> dict[str, Any]:
        return {"codes": self.codes, "void_code": self.void_code}

    @classmethod
    def from_records(
        cls, root: Path, rows: Sequence[dict[str, Any]], flags: list[bool], manifest: dict[str, Any]
    ) -> MaskItems:
        # The masks sit beside the images, the codes travel in the manifest.
        codes, void = list(manifest["codes"]), manifest.get("void_code")
        return cls(
            root,
            [r["key"] for r in rows],
            flags,
            [c for i, c in enumerate(codes) if i != void],
            masks=[r["mask"] for r in rows],
            codes=codes,
            void_code=void,
        )


@dataclass(kw_only=True)
class TextItems(LabelItems):
    """Texts, each with a class, a `label_delim`-delimited set of classes, or none: a text whose label is empty is
    unlabelled — a language model learns from it, a classifier does not. The texts travel in the manifest (a version
    stores no file per text); `keys` name each text's source (a CSV row, a file)."""

    texts: list[str]
    label_delim: str | None = None
    target_kind: ClassVar[str] = "text"

    def label_set(self, i: int) -> list[str]:
        label = self.labels[i]
        if not label:
            return []
        return [c for c in label.split(self.label_delim) if c] if self.label_delim else [label]

    @property
    def multi_label(self) -> bool:
        """Whether each text has a set of classes (multi-label) rather than one."""
        return bool(self.label_delim)

    def labelled(self, valid: bool | None = None) -> list[int]:
        """Indices of the texts with a label (of one split, or of both)."""
        return [i for i, v in enumerate(self.is_valid) if self.labels[i] and (valid is None or v == valid)]

    @property
    def n_unlabelled(self) -> int:
        """How many texts have no label."""
        return sum(1 for label in self.labels if not label)

    def stored_files(self) -> list[str]:
        return []

    def summary(self) -> str:
        text = super().summary().replace(" images in ", " texts in ", 1).replace("no usable image", "no usable text")
        return text + (
            f"\n{self.n_unlabelled} texts unlabelled (the language model learns from them)" if self.n_unlabelled else ""
        )

    def record(self, i: int) -> dict[str, Any]:
        return {"label": self.labels[i], "text": self.texts[i]}

    def manifest_fields(self) -> dict[str, Any]:
        return {"n_unlabelled": self.n_unlabelled}

    @classmethod
    def from_records(
        cls, root: Path, rows: Sequence[dict[str, Any]], flags: list[bool], manifest: dict[str, Any]
    ) -> TextItems:
        return cls(
            root,
            [r["key"] for r in rows],
            flags,
            list(manifest["classes"]),
            labels=[r["label"] for r in rows],
            texts=[r["text"] for r in rows],
            label_delim=manifest.get("labels", {}).get("label_delim") or None,
        )


TARGET_ITEMS: dict[str, type[TargetItems]] = {t.target_kind: t for t in (PointItems, ValueItems)}


def stored_type(manifest: dict[str, Any]) -> type[LabelledItems]:
    """The items type a dataset version's manifest holds."""
    kind = manifest.get("target_kind", LabelItems.target_kind)
    if kind == LabelItems.target_kind:
        return MultiLabelItems if manifest.get("labels", {}).get("label_delim") else ClassItems
    for t in (PointItems, ValueItems, MaskItems, TextItems):
        if t.target_kind == kind:
            return t
    raise ValueError(f"a dataset manifest with target_kind '{kind}' is not one this fitcycle reads")


def stored_items(root: Path, manifest: dict[str, Any], valid_pct: float, seed: int) -> LabelledItems:
    """Items from a manifest: a fixed split (folders, CSV column) is kept, a random one is drawn with the
    job's valid_pct and seed (stable per item, so new images never move old ones)."""
    kind = stored_type(manifest)
    rows = manifest["items"]
    keys = [r["key"] for r in rows]
    if manifest["split"] != "random":
        flags = [bool(r["valid"]) for r in rows]
    else:
        flags = kind.random_split(keys, rows, valid_pct, seed)
    return kind.from_records(root, rows, flags, manifest)


def split_problem(manifest: dict[str, Any], valid_pct: float, seed: int, training_only: bool = False) -> str | None:
    """Why the split a job would draw from a manifest with `valid_pct` and `seed` cannot train, or None: no
    training item, no validation item, or a class of two or more items none of which trains (`training_only`:
    no training item, all a batch of training items needs). A fixed split is the data's own, checked when the
    version was made: None."""
    if manifest["split"] != "random":
        return None
    items = stored_items(Path("."), manifest, valid_pct, seed)
    n_valid = sum(items.is_valid)
    drawn = f"valid_pct {valid_pct:g} with seed {seed}"
    if n_valid == len(items):
        return f"{drawn} leaves no training item of the {len(items)}; lower valid_pct"
    if training_only:
        return None
    if n_valid == 0:
        return f"{drawn} leaves no validation item of the {len(items)}; raise valid_pct"
    if isinstance(items, LabelItems):
        everywhere = Counter(c for i in range(len(items)) for c in items.label_set(i))
        training = Counter(c for i in items.indices(False) for c in items.label_set(i))
        empty = sorted(c for c, n in everywhere.items() if n >= 2 and not training[c])
        if empty:
            named = ", ".join(f"'{c}'" for c in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            return f"{drawn} leaves no training item of class {named}; lower valid_pct (or choose another seed)"
    return None

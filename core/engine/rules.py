"""Labelling rules: the one description of how a folder of images becomes labelled items, shared by the
CLI and job specs (a local folder) and by dataset uploads (an extracted archive). A rule names its kind
and the fields that kind reads; `apply` runs it and says which split it made."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from core.engine.errors import DataError
from core.engine.items import LabelledItems
from core.engine.labelling import from_csv, from_folder, from_name_re, from_targets_csv
from core.engine.masks import from_mask_csv, from_mask_rule
from core.engine.splits import SEED, VALID_PCT
from core.engine.text.reading import from_text_csv, from_text_folder

RuleKind = Literal["folder", "csv", "name_re", "points", "values", "masks", "text_csv", "text_folder"]
RULE_KINDS: tuple[str, ...] = get_args(RuleKind)
SplitKind = Literal["random", "folder", "column"]

# The fields each kind of rule reads (the others are left out of what a dataset or a job records).
RULE_FIELDS: dict[str, frozenset[str]] = {
    "folder": frozenset(),
    "csv": frozenset({"csv", "fn_col", "label_col", "valid_col", "label_delim", "images_dir"}),
    "name_re": frozenset({"pattern"}),
    "points": frozenset({"csv", "fn_col", "valid_col"}),
    "values": frozenset({"csv", "fn_col", "valid_col"}),
    "masks": frozenset({"csv", "fn_col", "mask_col", "valid_col", "codes", "void", "images_dir", "mask_template"}),
    "text_csv": frozenset({"csv", "text_col", "label_col", "valid_col", "label_delim"}),
    "text_folder": frozenset(),
}
TEXT_RULES = frozenset({"text_csv", "text_folder"})  # the rules that make texts, not images
# What a kind cannot do without, and how to say so.
REQUIRED: dict[str, tuple[str, str]] = {
    "csv": ("csv", "the CSV file naming each image and its label"),
    "points": ("csv", "file name, then the target numbers per image"),
    "values": ("csv", "file name, then the target numbers per image"),
    "name_re": ("pattern", "a regular expression whose group 1 is the label"),
}


@dataclass(frozen=True)
class LabelRule:
    """How a folder of images is labelled."""

    kind: RuleKind = "folder"
    csv: str | None = None  # csv, points, values: the table; masks: image/mask pairs (else the template)
    fn_col: str | None = None  # None: 'name' if the table has it, else its first column
    label_col: str | None = None  # csv; None: 'label' if the table has it, else the next column
    valid_col: str | None = None
    pattern: str | None = None  # name_re
    label_delim: str | None = None  # csv: multi-label, the label column lists classes split by this
    codes: list[str] | None = None  # masks: value names (default: codes.txt in the data)
    void: str | None = None  # masks: the ignored code
    images_dir: str | None = None  # masks without csv: the images' folder (None: images); csv: the file names' folder
    mask_template: str = "masks/{stem}.png"  # masks without csv
    mask_col: str = "mask"  # masks with csv
    text_col: str | None = None  # text_csv: the texts' column (None: 'text')

    @classmethod
    def of(cls, kind: str, fields: dict[str, Any]) -> LabelRule:
        """A rule of `kind` from a bag of fields (a spec, a form): only the kind's own are taken."""
        if kind not in RULE_FIELDS:
            raise DataError(f"labels: '{kind}' is not a labelling rule; choose one of {', '.join(RULE_KINDS)}")
        own = {k: v for k, v in fields.items() if k in RULE_FIELDS[kind] and v is not None}
        return cls(cast(RuleKind, kind), **own)

    def problem(self) -> str | None:
        """What the rule lacks, as a sentence naming the field, or None."""
        if self.kind in REQUIRED:
            name, what = REQUIRED[self.kind]
            if not getattr(self, name):
                return f"labels={self.kind} needs '{name}': {what}"
        return None

    def as_dict(self) -> dict[str, Any]:
        """The kind and its own set fields: what a dataset version and a job record."""
        own = RULE_FIELDS[self.kind]
        return {"kind": self.kind} | {k: v for k, v in asdict(self).items() if k in own and v is not None}

    def apply(self, root: Path, valid_pct: float = VALID_PCT, seed: int = SEED) -> tuple[LabelledItems, SplitKind]:
        """Label the images under root; returns the items and the split they got."""
        problem = self.problem()
        if problem is not None:
            raise DataError(problem)
        items = READERS[self.kind](self, root, valid_pct, seed)
        if self.kind == "folder":
            return items, "folder" if (root / "train").is_dir() and (root / "valid").is_dir() else "random"
        if self.kind == "text_folder":
            return items, "folder" if (root / "train").is_dir() and any(items.is_valid) else "random"
        by_column = self.valid_col is not None and "valid_col" in RULE_FIELDS[self.kind]
        if self.kind == "masks" and not self.csv:  # the naming rule has no table, so no column
            by_column = False
        return items, "column" if by_column else "random"


def _required(r: LabelRule, name: str) -> str:
    value = getattr(r, name)
    if not value:
        raise DataError(r.problem() or f"labels={r.kind} needs '{name}'")
    return str(value)


def _masks(r: LabelRule, root: Path, valid_pct: float, seed: int) -> LabelledItems:
    if r.csv:
        return from_mask_csv(
            root, r.csv, r.codes, r.void, r.fn_col or "name", r.mask_col, r.valid_col, valid_pct=valid_pct, seed=seed
        )
    images = r.images_dir or "images"
    return from_mask_rule(root, r.codes, r.void, images, r.mask_template, valid_pct=valid_pct, seed=seed)


def _csv(r: LabelRule, root: Path, valid_pct: float, seed: int) -> LabelledItems:
    return from_csv(
        root,
        _required(r, "csv"),
        r.fn_col,
        r.label_col,
        valid_col=r.valid_col,
        valid_pct=valid_pct,
        seed=seed,
        label_delim=r.label_delim,
        folder=r.images_dir,
    )


def _targets(r: LabelRule, root: Path, valid_pct: float, seed: int) -> LabelledItems:
    return from_targets_csv(root, _required(r, "csv"), r.kind, r.fn_col or "name", r.valid_col, valid_pct, seed)


def _name_re(r: LabelRule, root: Path, valid_pct: float, seed: int) -> LabelledItems:
    return from_name_re(root, _required(r, "pattern"), valid_pct=valid_pct, seed=seed)


READERS: dict[str, Callable[[LabelRule, Path, float, int], LabelledItems]] = {
    "folder": lambda r, root, valid_pct, seed: from_folder(root, valid_pct=valid_pct, seed=seed),
    "csv": _csv,
    "name_re": _name_re,
    "points": _targets,
    "values": _targets,
    "masks": _masks,
    "text_csv": lambda r, root, valid_pct, seed: from_text_csv(
        root, r.csv, r.text_col, r.label_col, r.valid_col, r.label_delim, valid_pct, seed
    ),
    "text_folder": lambda r, root, valid_pct, seed: from_text_folder(root, valid_pct, seed),
}

"""Ingestion: an uploaded archive becomes an immutable dataset version — extracted safely, labelled by a
rule (folder, csv, name_re, points, values, masks), checked image by image, copied to the object store with a manifest.
On any error the caller gets a DataError and nothing stays behind."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from core.datasets.archives import Limits, extract_archive
from core.engine.errors import DataError
from core.engine.labelling import LabelledItems, Rejected, from_csv, from_folder, from_name_re, from_targets_csv
from core.engine.masks import from_mask_csv, from_mask_rule
from core.storage.base import ObjectStore

SplitKind = Literal["random", "folder", "column"]
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class LabelRule:
    """How an uploaded dataset is labelled."""

    kind: Literal["folder", "csv", "name_re", "points", "values", "masks"] = "folder"
    csv: str | None = None
    fn_col: str = "name"
    label_col: str = "label"
    valid_col: str | None = None
    pattern: str | None = None
    label_delim: str | None = None
    codes: list[str] | None = None  # masks: value names (default: codes.txt in the archive)
    void: str | None = None  # masks: the ignored code
    images_dir: str = "images"  # masks without csv
    mask_template: str = "masks/{stem}.png"  # masks without csv
    mask_col: str = "mask"  # masks with csv

    def as_dict(self) -> dict[str, Any]:
        """The rule's set fields (the mask fields only for a masks rule)."""
        mask_only = {"codes", "void", "images_dir", "mask_template", "mask_col"}
        return {
            k: v for k, v in self.__dict__.items() if v is not None and (self.kind == "masks" or k not in mask_only)
        }


@dataclass
class IngestResult:
    """A labelled, stored dataset version, ready to be recorded in the database."""

    items: LabelledItems
    split: SplitKind
    rejected: list[Rejected] = field(default_factory=list)
    prefix: str = ""
    n_bytes: int = 0  # what the version's files take in the store


def label_folder(root: Path, rule: LabelRule, valid_pct: float, seed: int) -> tuple[LabelledItems, SplitKind]:
    """Apply a labelling rule to an extracted folder."""
    if rule.kind == "masks":
        if rule.csv:
            items = from_mask_csv(
                root, rule.csv, rule.codes, rule.void, rule.fn_col, rule.mask_col, rule.valid_col, None, valid_pct, seed
            )
            return items, "column" if rule.valid_col else "random"
        return from_mask_rule(
            root, rule.codes, rule.void, rule.images_dir, rule.mask_template, None, valid_pct, seed
        ), "random"
    if rule.kind == "folder":
        split: SplitKind = "folder" if (root / "train").is_dir() and (root / "valid").is_dir() else "random"
        return from_folder(root, valid_pct=valid_pct, seed=seed), split
    if rule.kind in ("points", "values"):
        if not rule.csv:
            raise DataError(f"labels={rule.kind} needs the CSV's file name inside the archive (field 'csv')")
        return from_targets_csv(root, rule.csv, rule.kind, rule.fn_col, rule.valid_col, valid_pct, seed), (
            "column" if rule.valid_col else "random"
        )
    if rule.kind == "csv":
        if not rule.csv:
            raise DataError("labels=csv needs the CSV's file name inside the archive (field 'csv')")
        items = from_csv(
            root,
            rule.csv,
            rule.fn_col,
            rule.label_col,
            valid_col=rule.valid_col,
            valid_pct=valid_pct,
            seed=seed,
            label_delim=rule.label_delim,
        )
        return items, "column" if rule.valid_col else "random"
    if not rule.pattern:
        raise DataError("labels=name_re needs 'pattern': a regular expression whose group 1 is the label")
    return from_name_re(root, rule.pattern, valid_pct=valid_pct, seed=seed), "random"


def manifest_for(items: LabelledItems, split: SplitKind, rule: LabelRule) -> dict[str, Any]:
    """The version's manifest: every item's key, label and (for a fixed split) validation flag."""
    return {
        "format": "fitcycle-dataset",
        "format_version": 1,
        "labels": rule.as_dict(),
        "split": split,
        "classes": items.classes,
        "target_kind": items.target_kind,
        **({"codes": items.codes, "void_code": items.void_code} if items.masks is not None else {}),
        "items": [
            {
                "key": k,
                "label": lab,
                "valid": v,
                **({"targets": items.targets[n]} if items.targets else {}),
                **({"mask": items.masks[n]} if items.masks is not None else {}),
            }
            for n, (k, lab, v) in enumerate(zip(items.keys, items.labels, items.is_valid, strict=True))
        ],
    }


def ingest_archive(
    archive: Path | BinaryIO,
    filename: str,
    rule: LabelRule,
    store: ObjectStore,
    prefix: str,
    limits: Limits,
    valid_pct: float = 0.2,
    seed: int = 42,
) -> IngestResult:
    """Extract, label and store one archive under `prefix` (files/ and manifest.json)."""
    work = Path(tempfile.mkdtemp(prefix="fitcycle-ingest-"))
    stored: list[str] = []
    try:
        extracted = extract_archive(archive, work / "data", filename, limits)
        items, split = label_folder(work / "data", rule, valid_pct, seed)
        skipped = [Rejected(k, r) for k, r in (extracted.skipped or [])]
        n_bytes = 0
        for key in [*items.keys, *(items.masks or [])]:
            stored.append(f"{prefix}/files/{key}")
            n_bytes += (work / "data" / key).stat().st_size
            store.put_file(stored[-1], work / "data" / key)
        manifest = json.dumps(manifest_for(items, split, rule)).encode()
        stored.append(f"{prefix}/{MANIFEST}")
        store.put_bytes(stored[-1], manifest, "application/json")
        return IngestResult(items, split, skipped + items.rejected, prefix, n_bytes + len(manifest))
    except BaseException:
        for key in stored:
            store.delete(key)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

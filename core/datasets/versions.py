"""Cutting a dataset version from another: items removed, relabelled, or added from feedback on predictions.
Versions are immutable, so the new one gets its own files (copied inside the store) and manifest. Every item
keeps the split it had (the parent's flags are written down: split "pinned"), and a new item is assigned by
a hash of its own key, so two versions are compared on the same validation items."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.engine.errors import DataError
from core.engine.items import LabelItems, MultiLabelItems, TextItems, stored_items, stored_type
from core.engine.splits import split_by_rand_pct
from core.engine.tasks import Correction, Task, task_of
from core.engine.text.labels import TextLabels, text_labels
from core.storage.base import ObjectStore

PINNED = "pinned"  # the split of a cut version: every item's flag is in the manifest
MAX_EDITS = 100_000


@dataclass(frozen=True)
class NewItem:
    """An image to add: where it is stored now, its key in the new version, and its target."""

    key: str  # e.g. feedback/<prediction id>.png
    source: str  # the object key of the image (a prediction's kept input)
    correction: Correction  # a mask's PNG is written beside the image
    origin: str  # what it came from, for the changes record (a prediction id)


@dataclass
class Edits:
    """What a new version changes in its parent."""

    remove: list[str] = field(default_factory=list)
    relabel: list[tuple[str, Correction]] = field(default_factory=list)
    add: list[NewItem] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class CutVersion:
    manifest: dict[str, Any]
    classes: list[str]
    counts: dict[str, dict[str, int]]
    n_items: int
    n_bytes: int
    changes: dict[str, Any]


def dataset_task(manifest: dict[str, Any]) -> Task | TextLabels:
    """The task a stored version's items are for (texts: the feedback side of a text classifier)."""
    if stored_type(manifest) is TextItems:
        return text_labels(manifest)
    return task_of(stored_items(Path("."), manifest, 0.2, 42))


def cut_version(
    store: ObjectStore,
    parent_prefix: str,
    parent: dict[str, Any],
    prefix: str,
    edits: Edits,
    valid_pct: float,
    seed: int,
) -> CutVersion:
    """Write the new version under `prefix` (files/ and manifest.json); on any error nothing stays behind."""
    if len(edits.remove) + len(edits.relabel) + len(edits.add) > MAX_EDITS:
        raise DataError(f"at most {MAX_EDITS:,} edits per version")
    # The flags a job sees on the parent (its upload's valid_pct and seed for a random split), and its task.
    parent_items = stored_items(Path("."), parent, valid_pct, seed)
    texts = isinstance(parent_items, TextItems)  # a text row carries its text; there are no files to copy
    task: Task | TextLabels = text_labels(parent) if texts else task_of(parent_items)
    flags = parent_items.is_valid
    items: dict[str, dict[str, Any]] = {
        r["key"]: {**r, "valid": v} for r, v in zip(parent["items"], flags, strict=True)
    }
    sources = {k: f"{parent_prefix}/files/{k}" for k in items}  # where each item's image comes from
    masks = {k: f"{parent_prefix}/files/{r['mask']}" for k, r in items.items() if "mask" in r}
    new_masks: dict[str, bytes] = {}
    for key in edits.remove:
        if items.pop(key, None) is None:
            raise DataError(f"remove: no item '{key[:200]}' in version {parent.get('version', '')}".rstrip())
    relabelled: list[dict[str, Any]] = []
    for key, correction in edits.relabel:
        if key not in items:
            raise DataError(f"relabel: no item '{key[:200]}' in the version")
        before = {k: v for k, v in items[key].items() if k not in ("key", "valid")}
        target = dict(correction.target)
        if correction.mask_png is not None:
            target["mask"] = f"{key}.mask.png"
            new_masks[key] = correction.mask_png
        items[key] = {**items[key], **task.record(target, parent)}
        relabelled.append({"item": key, "before": before, "after": task.record(target, parent)})
    added = []
    for new in edits.add:
        target = dict(new.correction.target)
        if new.correction.mask_png is not None:
            target["mask"] = f"{new.key}.mask.png"
            new_masks[new.key] = new.correction.mask_png
        if new.key in items:  # a prediction corrected again after its first correction went into a version
            before = {k: v for k, v in items[new.key].items() if k not in ("key", "valid")}
            items[new.key] = {**items[new.key], **task.record(target, parent)}
            relabelled.append({"item": new.key, "before": before, "after": task.record(target, parent)})
            continue  # the same image, already among the version's files: its new target replaces the old
        valid = split_by_rand_pct([new.key], valid_pct, seed)[0]
        text = {"text": store.get_bytes(new.source).decode("utf-8", errors="replace")} if texts else {}
        items[new.key] = {"key": new.key, **task.record(target, parent), **text, "valid": valid}
        sources[new.key] = new.source
        added.append({"item": new.key, "from": new.origin})
    rows = list(items.values())
    manifest = {**parent, "split": PINNED, "items": rows, "classes": _classes(parent, rows)}
    manifest.pop("version", None)
    if texts:
        manifest["n_unlabelled"] = sum(1 for r in rows if not r["label"])
    labelled = stored_items(Path("."), manifest, valid_pct, seed)
    if not rows or all(r["valid"] for r in rows) or not any(r["valid"] for r in rows):
        raise DataError("the new version would leave no training or no validation item")
    if isinstance(labelled, LabelItems) and len(labelled.classes) < 2:
        raise DataError(f"the new version has {len(labelled.classes)} class; a classifier needs at least 2")
    written: list[str] = []
    try:
        n_bytes = 0
        for r in [] if texts else rows:
            key = r["key"]
            written.append(f"{prefix}/files/{key}")
            n_bytes += store.copy(sources[key], written[-1])
            if "mask" in r:
                written.append(f"{prefix}/files/{r['mask']}")
                if key in new_masks:
                    n_bytes += store.put_bytes(written[-1], new_masks[key], "image/png")
                else:
                    n_bytes += store.copy(masks[key], written[-1])
        data = json.dumps(manifest).encode()
        written.append(f"{prefix}/manifest.json")
        n_bytes += store.put_bytes(written[-1], data, "application/json")
    except BaseException:
        for key in written:
            store.delete(key)
        raise
    old_classes = set(parent["classes"])
    changes = {
        "removed": len(edits.remove),
        "relabelled": len(relabelled),
        "added": len(added),
        "new_classes": [c for c in labelled.classes if c not in old_classes],
        "note": edits.note,
    }
    return CutVersion(manifest, labelled.classes, labelled.counts(), len(rows), n_bytes, changes)


def _classes(parent: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The classes of the new rows: for labelled images, those any item carries; else the parent's."""
    kind = stored_type(parent)
    if kind is TextItems:  # an unlabelled text carries no class
        delim = parent["labels"].get("label_delim")
        return sorted({c for r in rows for c in (r["label"].split(delim) if delim else [r["label"]]) if c})
    if kind is MultiLabelItems:
        delim = parent["labels"]["label_delim"]
        return sorted({c for r in rows for c in r["label"].split(delim) if c})
    if issubclass(kind, LabelItems):
        return sorted({r["label"] for r in rows})
    return list(parent["classes"])


def diff(old: dict[str, Any], new: dict[str, Any], limit: int = 1000) -> dict[str, Any]:
    """What changed from one version's manifest to another's: items added, removed and relabelled (each list
    capped at `limit`), and the counts of each."""
    before = {r["key"]: r for r in old["items"]}
    after = {r["key"]: r for r in new["items"]}

    def target(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if k not in ("key", "valid")}

    added = [k for k in after if k not in before]
    removed = [k for k in before if k not in after]
    changed = [
        {"item": k, "before": target(before[k]), "after": target(after[k])}
        for k in after
        if k in before and target(before[k]) != target(after[k])
    ]
    moved = sum(1 for k in after if k in before and bool(before[k].get("valid")) != bool(after[k].get("valid")))
    labels = Counter(str(r.get("label", "")) for r in new["items"])
    return {
        "added": added[:limit],
        "removed": removed[:limit],
        "relabelled": changed[:limit],
        "counts": {"added": len(added), "removed": len(removed), "relabelled": len(changed), "split_moved": moved},
        "labels": dict(labels) if any(labels) else {},
    }

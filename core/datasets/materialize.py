"""A local copy of a stored dataset version, for a worker to train on (cached per version: versions
are immutable, so a complete copy never goes stale)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from core.engine.labelling import LabelledItems
from core.engine.splits import split_by_rand_pct, split_by_rand_pct_per_class
from core.storage.base import ObjectStore

DONE_MARKER = ".complete"


def materialize(store: ObjectStore, prefix: str, cache_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Download manifest and files of the version under `prefix` once; returns (folder, manifest)."""
    folder = cache_dir / prefix.replace("/", "_")
    if not (folder / DONE_MARKER).is_file():
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        manifest = json.loads(store.get_bytes(f"{prefix}/manifest.json"))
        for item in manifest["items"]:
            for key in (item["key"], *([item["mask"]] if "mask" in item else [])):
                store.get_file(f"{prefix}/files/{key}", tmp / "files" / key)
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        (tmp / DONE_MARKER).write_text("ok")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder, json.loads((folder / "manifest.json").read_text())


def items_from_manifest(folder: Path, manifest: dict[str, Any], valid_pct: float, seed: int) -> LabelledItems:
    """LabelledItems from a manifest: a fixed split (folders, CSV column) is kept, a random one is drawn
    with the job's valid_pct and seed (stable per item, so new images never move old ones)."""
    rows = manifest["items"]
    keys = [r["key"] for r in rows]
    labels = [r["label"] for r in rows]
    kind = manifest.get("target_kind", "label")
    delim = manifest.get("labels", {}).get("label_delim")
    if manifest["split"] != "random":
        flags = [bool(r["valid"]) for r in rows]
    elif kind == "label" and not delim:  # single-label: as at upload, every class of 5+ gets a validation item
        flags = split_by_rand_pct_per_class(keys, labels, valid_pct, seed)
    else:
        flags = split_by_rand_pct(keys, valid_pct, seed)
    if kind == "mask":  # segmentation: the masks sit beside the images, the codes travel in the manifest
        codes, void = list(manifest["codes"]), manifest.get("void_code")
        return LabelledItems(
            folder / "files",
            keys,
            labels,
            flags,
            [c for i, c in enumerate(codes) if i != void],
            target_kind="mask",
            masks=[r["mask"] for r in rows],
            codes=codes,
            void_code=void,
        )
    if kind != "label":  # regression: the targets travel in the manifest
        return LabelledItems(
            folder / "files",
            keys,
            labels,
            flags,
            list(manifest["classes"]),
            targets=[r["targets"] for r in rows],
            target_kind=kind,
        )
    if delim:  # multi-label: the classes are the manifest's (union of every item's label set)
        return LabelledItems(folder / "files", keys, labels, flags, list(manifest["classes"]), label_delim=delim)
    return LabelledItems(folder / "files", keys, labels, flags, sorted(set(labels)))

"""Ingestion: an uploaded archive becomes an immutable dataset version — extracted safely, labelled by a
rule (folder, csv, name_re, points, values, masks), checked image by image, copied to the object store with a manifest.
On any error the caller gets a DataError and nothing stays behind."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from core.datasets.archives import Limits, extract_archive
from core.engine.items import LabelledItems, Rejected
from core.engine.rules import LabelRule, SplitKind
from core.engine.splits import SEED, VALID_PCT
from core.storage.base import ObjectStore

MANIFEST = "manifest.json"


@dataclass
class IngestResult:
    """A labelled, stored dataset version, ready to be recorded in the database."""

    items: LabelledItems
    split: SplitKind
    rejected: list[Rejected] = field(default_factory=list)
    prefix: str = ""
    n_bytes: int = 0  # what the version's files take in the store


def manifest_for(items: LabelledItems, split: SplitKind, rule: LabelRule) -> dict[str, Any]:
    """The version's manifest: every item's key, target fields and validation flag (kept for a fixed split),
    and what the items need to be given back (core.engine.items.stored_items)."""
    return {
        "format": "fitcycle-dataset",
        "format_version": 1,
        "labels": rule.as_dict(),
        "split": split,
        "classes": items.classes,
        "target_kind": items.target_kind,
        **items.manifest_fields(),
        "items": [
            {"key": k, **items.record(n), "valid": v}
            for n, (k, v) in enumerate(zip(items.keys, items.is_valid, strict=True))
        ],
    }


def ingest_archive(
    archive: Path | BinaryIO,
    filename: str,
    rule: LabelRule,
    store: ObjectStore,
    prefix: str,
    limits: Limits,
    valid_pct: float = VALID_PCT,
    seed: int = SEED,
) -> IngestResult:
    """Extract, label and store one archive under `prefix` (files/ and manifest.json)."""
    work = Path(tempfile.mkdtemp(prefix="fitcycle-ingest-"))
    stored: list[str] = []
    try:
        extracted = extract_archive(archive, work / "data", filename, limits)
        items, split = rule.apply(work / "data", valid_pct, seed)
        skipped = [Rejected(k, r) for k, r in (extracted.skipped or [])]
        n_bytes = 0
        for key in items.stored_files():
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

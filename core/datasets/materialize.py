"""A local copy of a stored dataset version, for a worker to train on (cached per version: versions
are immutable, so a complete copy never goes stale). core.engine.items.stored_items labels it from its
manifest."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from core.storage.base import ObjectStore

DONE_MARKER = ".complete"


def materialize(store: ObjectStore, prefix: str, cache_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Download manifest and files of the version under `prefix` once; returns (folder, manifest)."""
    folder = cache_dir / prefix.replace("/", "_")
    if not (folder / DONE_MARKER).is_file():
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        manifest = json.loads(store.get_bytes(f"{prefix}/manifest.json"))
        (tmp / "files").mkdir(parents=True)
        for item in manifest["items"]:
            if "text" in item:  # a text travels in the manifest: no file per item
                continue
            for key in (item["key"], *([item["mask"]] if "mask" in item else [])):
                store.get_file(f"{prefix}/files/{key}", tmp / "files" / key)
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        (tmp / DONE_MARKER).write_text("ok")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder, json.loads((folder / "manifest.json").read_text())


HASH_FILE = ".content-sha256"


def content_hash(folder: Path, manifest: dict[str, Any]) -> str:
    """sha256 of a materialized version's content: each item's record (key, label, split) and its files' bytes, in
    the manifest's order. Computed once per local copy (versions are immutable) and kept beside it."""
    kept = folder / HASH_FILE
    if kept.is_file():
        return kept.read_text().strip()
    h = hashlib.sha256()
    for item in manifest["items"]:
        h.update(json.dumps(item, sort_keys=True).encode() + b"\n")
        if "text" in item:
            continue
        for key in (item["key"], *([item["mask"]] if "mask" in item else [])):
            with (folder / "files" / key).open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    digest = h.hexdigest()
    kept.write_text(digest)
    return digest

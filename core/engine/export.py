"""Export bundles [fastai: export]: a folder with safetensors weights and a manifest.json that says
everything needed to rebuild and feed the model. No pickle anywhere, so loading never runs code."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import save_file

from core.engine.architectures import ARCHITECTURES
from core.engine.errors import BundleError
from core.engine.learner import Learner
from core.engine.model import HeadConfig
from core.engine.tasks import TASKS, get_task
from core.engine.tasks.base import manifest_field

BUNDLE_FORMAT = "fitcycle-bundle"
BUNDLE_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"


def fitcycle_version() -> str:
    """The installed fitcycle version (the engine imports nothing of fitcycle outside itself)."""
    try:
        return importlib.metadata.version("fitcycle")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_manifest(
    learn: Learner,
    head: HeadConfig | None = None,
    extra: dict[str, Any] | None = None,
    thresholds: list[float] | None = None,
) -> dict[str, Any]:
    """The manifest of a trained model: the common fields, then its task's own."""
    if learn.arch is None:
        raise BundleError("only learners built from a known architecture can be exported")
    dls = learn.dls
    size, method = dls.config.size, dls.config.resize_method
    mean, std = list(dls.stats[0]), list(dls.stats[1])
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "task": dls.task.name,
        "arch": learn.arch.name,
        "head": (head or learn.head_config or HeadConfig()).as_dict(),
        "classes": list(dls.classes),
        "n_out": dls.n_out,
        "input_size": size,
        "resize_method": method,
        "normalization": {"mean": mean, "std": std},
        "inference_transforms": [
            {"name": "to_rgb"},
            {"name": "resize", "size": size, "method": method, "crop": "center"},
            {"name": "to_float", "scale": 1 / 255},
            {"name": "normalize", "mean": mean, "std": std},
        ],
        "activation": dls.task.activation,
        **dls.task.manifest_fields(dls, thresholds),
        "weights": WEIGHTS_FILE,
        "versions": {
            "fitcycle": fitcycle_version(),
            "torch": torch.__version__.split("+")[0],
            "torchvision": torchvision.__version__.split("+")[0],
        },
        **(extra or {}),
    }


def export_bundle(
    learn: Learner,
    folder: str | Path,
    head: HeadConfig | None = None,
    extra: dict[str, Any] | None = None,
    thresholds: list[float] | None = None,
) -> Path:
    """Write weights and manifest into `folder`, replacing it atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(learn, head, extra, thresholds)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in learn.model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": BUNDLE_FORMAT})
        manifest["weights_sha256"] = sha256_file(tmp / WEIGHTS_FILE)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and check a bundle's manifest: every field present, of the right type, and consistent."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise BundleError(
            f"{folder} is not a bundle folder (expected a folder with {MANIFEST_FILE} and {WEIGHTS_FILE})"
        )
    if not path.is_file():
        raise BundleError(f"{folder} has no {MANIFEST_FILE}: not a fitcycle export bundle")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: 'format' should be '{BUNDLE_FORMAT}'")
    version = manifest_field(manifest, "format_version", int, path)
    if version > BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle format {version} is newer than this fitcycle reads ({BUNDLE_VERSION})")
    name = manifest_field(manifest, "task", str, path)
    if name not in TASKS:
        raise BundleError(f"{path}: task '{name}' is not one this fitcycle serves ({', '.join(TASKS)})")
    arch = manifest_field(manifest, "arch", str, path)
    if arch not in ARCHITECTURES:
        raise BundleError(f"{path}: unknown architecture '{arch}'")
    get_task(name).check_manifest(manifest, path)
    size = manifest_field(manifest, "input_size", int, path)
    if not 8 <= size <= 4096:
        raise BundleError(f"{path}: input_size {size} is out of range")
    manifest_field(manifest, "resize_method", str, path)
    norm = manifest_field(manifest, "normalization", dict, path)
    if len(norm.get("mean", [])) != 3 or len(norm.get("std", [])) != 3:
        raise BundleError(f"{path}: normalization needs 3 means and 3 stds")
    manifest_field(manifest, "head", dict, path)
    weights = folder / manifest_field(manifest, "weights", str, path)
    if not weights.is_file() or weights.parent.resolve() != folder.resolve():
        raise BundleError(f"{folder}: weights file '{manifest['weights']}' is missing")
    expected = manifest.get("weights_sha256")
    if expected and sha256_file(weights) != expected:
        raise BundleError(f"{weights}: checksum does not match the manifest (the file is corrupt or was replaced)")
    return manifest

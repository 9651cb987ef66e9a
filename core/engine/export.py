"""Export bundles [fastai: export]: a folder with safetensors weights and a manifest.json that says
everything needed to rebuild and feed the model, and the same model as model.onnx for ONNX Runtime when it
exports (the manifest's "onnx" says whether it did, or why not). No pickle anywhere, so loading never runs code."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from core.engine.architectures import ARCHITECTURES, get_architecture
from core.engine.errors import BundleError
from core.engine.heatmap import BODY_LAYER
from core.engine.learner import Learner
from core.engine.model import HeadConfig
from core.engine.onnx_export import ONNX_FILE, write_onnx
from core.engine.tasks import TASKS, get_task
from core.engine.tasks.base import manifest_field
from core.engine.text.manifest import check_text_manifest, is_text_manifest

BUNDLE_FORMAT = "fitcycle-bundle"
BUNDLE_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
# Format 1 bundles may carry model.onnx: the manifest's optional "onnx" record says so. A fitcycle that predates
# it ignores the record and serves the weights with PyTorch, and bundles without it stay valid, so the format
# version did not change.

log = logging.getLogger(__name__)


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
        **({"heatmap_layer": BODY_LAYER} if dls.task.explains else {}),
        "weights": WEIGHTS_FILE,
        "versions": {
            "fitcycle": fitcycle_version(),
            "torch": torch.__version__.split("+")[0],
            "torchvision": importlib.metadata.version("torchvision").split("+")[0],
        },
        **(extra or {}),
    }


def export_bundle(
    learn: Learner,
    folder: str | Path,
    head: HeadConfig | None = None,
    extra: dict[str, Any] | None = None,
    thresholds: list[float] | None = None,
    onnx: bool = True,
) -> Path:
    """Write weights and manifest (and, with `onnx`, model.onnx) into `folder`, replacing it atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(learn, head, extra, thresholds)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in learn.model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": BUNDLE_FORMAT})
        manifest["weights_sha256"] = sha256_file(tmp / WEIGHTS_FILE)
        if onnx:
            manifest["onnx"] = export_onnx(manifest, state, tmp)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def export_onnx(manifest: dict[str, Any], state: dict[str, torch.Tensor], folder: Path) -> dict[str, Any]:
    """Write model.onnx into `folder`: the model the Predictor would build from this manifest and these weights.
    The manifest's "onnx" record: the file, its opset and checksum, or {"file": None, "error": why} when the
    model could not be exported (the bundle is then served by PyTorch)."""
    try:
        model = get_task(manifest["task"]).inference_model(get_architecture(manifest["arch"]), manifest)
        model.load_state_dict(state, strict=True)
        record = write_onnx(model, folder / ONNX_FILE, manifest["input_size"])
    except Exception as exc:  # ONNX is an extra: whatever goes wrong with it, the bundle is still written
        log.warning("%s %s: not exported to ONNX (served by PyTorch): %s", manifest["task"], manifest["arch"], exc)
        return {"file": None, "error": str(exc)}
    return {**record, "sha256": sha256_file(folder / ONNX_FILE), "weights_sha256": manifest["weights_sha256"]}


def add_onnx(folder: str | Path) -> dict[str, Any] | None:
    """Give an image bundle written without model.onnx (a search's trial) its model.onnx and the manifest's record;
    the record, or None for a bundle that has one already or is a text model's."""
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_manifest(folder)
    if is_text_manifest(manifest) or manifest.get("onnx") is not None:
        return None
    manifest["onnx"] = export_onnx(manifest, load_file(str(folder / WEIGHTS_FILE)), folder)
    tmp = folder / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST_FILE)
    return dict(manifest["onnx"])


def onnx_model_file(folder: str | Path, manifest: dict[str, Any]) -> tuple[Path | None, str]:
    """The bundle's model.onnx, or None and why not (no ONNX record, the export failed, the file is gone, or it
    was exported from other weights). A file whose checksum does not match is refused, like corrupt weights."""
    record = manifest.get("onnx")
    if record is None:
        return None, "the bundle predates ONNX export"
    if record.get("file") is None:
        return None, f"the model did not export to ONNX: {record.get('error', 'no reason recorded')}"
    path = Path(folder) / record["file"]
    if not path.is_file():
        return None, f"{path.name} is missing from the bundle"
    if record.get("weights_sha256") != manifest.get("weights_sha256"):
        return None, f"{path.name} was exported from other weights than {manifest['weights']}"
    expected = record.get("sha256")
    if expected and sha256_file(path) != expected:
        raise BundleError(f"{path}: checksum does not match the manifest (the file is corrupt or was replaced)")
    return path, ""


def _check_onnx_record(manifest: dict[str, Any], folder: Path, path: Path) -> None:
    """The optional "onnx" record: a file name inside the bundle and an opset, or no file and the reason."""
    record = manifest.get("onnx")
    if record is None:
        return
    if not isinstance(record, dict):
        raise BundleError(f"{path}: manifest.json 'onnx' should be an object, found {type(record).__name__}")
    file = record.get("file")
    if file is None:
        return
    if not isinstance(file, str) or (folder / file).parent.resolve() != folder.resolve():
        raise BundleError(f"{path}: manifest.json 'onnx.file' should name a file in the bundle, found {file!r}")
    if not isinstance(record.get("opset"), int):
        raise BundleError(f"{path}: manifest.json 'onnx.opset' should be an integer, found {record.get('opset')!r}")


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
    if is_text_manifest(manifest):  # a text model (core/engine/text/bundle.py): its own fields
        return check_text_manifest(manifest, folder)
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
    _check_onnx_record(manifest, folder, path)
    return manifest

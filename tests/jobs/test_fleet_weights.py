"""A worker fetches the pretrained weights a job needs from the fleet's weights store (a local store here) into its
caches — torchvision's files into torch's hub cache, fastai's WikiText-103 model into wt103_dir() — checking each
copy's sha256 before renaming it into place, and fetching nothing it already has."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from core.engine import weights_files
from core.engine.architectures import get_architecture
from core.engine.errors import PretrainedWeightsNotFound, WeightsMismatch
from core.engine.pretrained import load_body, load_wt103
from core.engine.weights_files import known_file, prepare
from core.jobs.fleet_weights import (
    WeightsRecord,
    fetch_imagenet,
    fetch_pretrained,
    fetch_wt103,
    list_records,
    sha256_of,
    store_weights,
)
from core.jobs.spec import TrainSpec
from core.storage.layout import fleet_weights_file
from core.storage.local import LocalStore
from tests.weights_fixtures import vocab, write_itos, write_lstm_fwd


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty torch and fitcycle caches, as on a new worker."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FITCYCLE_WEIGHTS_CACHE", str(tmp_path / "weights"))
    return tmp_path


def upload(store: LocalStore, name: str, path: Path, work: Path) -> WeightsRecord:
    """What POST /weights stores once a file passed its checks."""
    known = known_file(name)
    stored = prepare(known, path, work)
    record = WeightsRecord(
        name=name,
        kind=known.kind,
        arch=known.arch,
        sha256=sha256_of(path),
        size=path.stat().st_size,
        stored_key=fleet_weights_file(known.stored_as),
        stored_sha256=sha256_of(stored),
        stored_size=stored.stat().st_size,
        uploaded_at="2025-01-01T00:00:00+00:00",
        project_id="p",
        key_id="k",
    )
    store_weights(store, record, stored)
    return record


def test_wt103_is_fetched_once_and_reads_back(caches: Path) -> None:
    store = LocalStore(caches / "objects")
    with pytest.raises(PretrainedWeightsNotFound, match=r"lstm_fwd\.pth is missing"):
        fetch_wt103(store)
    state = write_lstm_fwd(caches / "lstm_fwd.pth")
    words = write_itos(caches / "itos_wt103.pkl")
    upload(store, "lstm_fwd.pth", caches / "lstm_fwd.pth", caches)
    upload(store, "itos_wt103.pkl", caches / "itos_wt103.pkl", caches)
    assert [r.name for r in list_records(store)] == ["itos_wt103.pkl", "lstm_fwd.pth"]

    spec = TrainSpec(data=str(caches), pretrained="wt103")
    fetch_pretrained(store, spec)
    folder = caches / "weights" / "wt103"
    loaded, itos = load_wt103()
    assert itos == words and set(loaded) == set(state)
    assert sorted(p.name for p in folder.iterdir()) == ["itos_wt103.json", "lstm_fwd.safetensors"]  # no leftovers

    shutil.rmtree(caches / "objects")  # cached: the store is not asked again
    assert fetch_wt103(LocalStore(caches / "objects")) == folder


def test_a_copy_that_does_not_match_its_record_is_not_used(caches: Path) -> None:
    store = LocalStore(caches / "objects")
    write_itos(caches / "itos_wt103.pkl")
    record = upload(store, "itos_wt103.pkl", caches / "itos_wt103.pkl", caches)
    write_lstm_fwd(caches / "lstm_fwd.pth")
    upload(store, "lstm_fwd.pth", caches / "lstm_fwd.pth", caches)
    store.put_bytes(record.stored_key, json.dumps([*vocab(), "planted"]).encode())  # changed behind the record
    with pytest.raises(WeightsMismatch, match="does not match its record"):
        fetch_wt103(store)
    assert not list((caches / "weights" / "wt103").glob("*itos*"))  # neither the copy nor its partial file


def test_imagenet_weights_land_in_torchs_cache_where_the_engine_finds_them(
    caches: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(caches / "objects")
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    path = caches / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    name = f"resnet18-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pth"
    monkeypatch.setitem(weights_files.IMAGENET_FILES, name, "resnet18")  # as if torchvision had published it
    arch = get_architecture("resnet18")
    assert fetch_imagenet(store, arch) is None  # neither here nor in the store: the engine's error says so
    upload(store, name, path, caches)

    fetched = fetch_imagenet(store, arch)
    assert fetched == caches / "torch" / "hub" / "checkpoints" / name
    assert sha256_of(fetched) == sha256_of(path)
    loaded = load_body(arch, fetched)  # the engine reads the cached file as it reads torchvision's
    assert torch.equal(loaded.body.get_parameter("0.weight"), reference.conv1.weight)

    store.put_bytes(fleet_weights_file(name), b"tampered")  # cached already: not fetched again
    assert fetch_imagenet(store, arch) == fetched


def test_a_job_that_starts_from_a_bundle_fetches_nothing(caches: Path) -> None:
    store = LocalStore(caches / "objects")
    fetch_pretrained(store, TrainSpec(data=str(caches), pretrained="imagenet", init_bundle=str(caches / "bundle")))
    fetch_pretrained(store, TrainSpec(data=str(caches), pretrained="imagenet", arch="resnet34"))  # none in the store
    assert not (caches / "torch").exists()

"""What the fleet's weights store accepts, checked before anything is stored: torchvision's files under their
published names and hashes only, and fitting their model; fastai's WikiText-103 files as tensors (safetensors) and a
vocabulary (JSON) read without unpickling; and how the engine reads the WikiText-103 model back (load_wt103)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from core.engine import weights_files
from core.engine.errors import PretrainedWeightsNotFound, WeightsMismatch, WeightsRefused
from core.engine.pretrained import WT103_VOCAB, WT103_WEIGHTS, load_wt103, wt103_dir
from core.engine.weights_files import check_sha256, known_file, prepare
from tests.weights_fixtures import tiny_awd_lstm, vocab, write_itos, write_lstm_fwd


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def random_resnet18(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A resnet18 of random weights, saved as torchvision's files are, and its sha256."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("r18") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path, sha256(path)


def test_only_published_names_are_accepted() -> None:
    assert known_file("resnet34-b627a593.pth").arch == "resnet34"
    assert known_file("resnet50-11ad3fa6.pth").sha256_prefix == "11ad3fa6"
    assert known_file("lstm_fwd.pth").stored_as == WT103_WEIGHTS
    assert known_file("itos_wt103.pkl").stored_as == WT103_VOCAB
    for name in ("resnet18.pth", "evil.pth", "../lstm_fwd.pth", "resnet18-00000000.pth"):
        with pytest.raises(WeightsRefused, match=r"resnet18-f37072fd\.pth"):  # the message lists the accepted names
            known_file(name)


def test_a_random_resnet_is_not_torchvisions_under_either_name(random_resnet18: tuple[Path, str]) -> None:
    _, digest = random_resnet18
    with pytest.raises(WeightsRefused, match="not a file the weights store accepts"):
        known_file(f"resnet18-{digest[:8]}.pth")  # its own hash in the name: still not a published name
    with pytest.raises(WeightsRefused, match=f"its sha256 begins {digest[:8]}, torchvision's begins f37072fd"):
        check_sha256(known_file("resnet18-f37072fd.pth"), digest)


def test_a_known_file_of_the_right_hash_and_shapes_is_accepted(
    random_resnet18: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path, digest = random_resnet18
    name = f"resnet18-{digest[:8]}.pth"
    monkeypatch.setitem(weights_files.IMAGENET_FILES, name, "resnet18")  # as if torchvision had published it
    known = known_file(name)
    check_sha256(known, digest)
    assert prepare(known, path, tmp_path) == path  # stored as uploaded

    monkeypatch.setitem(weights_files.IMAGENET_FILES, name, "resnet50")  # the same file named for another model
    with pytest.raises(WeightsRefused, match="does not fit torchvision's resnet50"):
        prepare(known_file(name), path, tmp_path)


def test_a_torch_file_with_code_in_it_is_refused_unloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned > /dev/null",))

    path = tmp_path / "x.pth"
    torch.save({"conv1.weight": Payload()}, path)
    digest = sha256(path)
    monkeypatch.setitem(weights_files.IMAGENET_FILES, f"resnet18-{digest[:8]}.pth", "resnet18")
    with pytest.raises(WeightsRefused, match="weights_only=True"):
        prepare(known_file(f"resnet18-{digest[:8]}.pth"), path, tmp_path)
    for bad in (torch.zeros(3), {"a": 1}):  # not a dict; not tensors
        torch.save(bad, path)
        with pytest.raises(WeightsRefused, match="tensors"):
            prepare(known_file("lstm_fwd.pth"), path, tmp_path)


@pytest.mark.parametrize("with_opt", [True, False])
def test_fastais_language_model_is_kept_as_safetensors_under_its_own_names(tmp_path: Path, with_opt: bool) -> None:
    state = write_lstm_fwd(tmp_path / "lstm_fwd.pth", with_opt=with_opt)
    out = tmp_path / "out"
    out.mkdir()
    stored = prepare(known_file("lstm_fwd.pth"), tmp_path / "lstm_fwd.pth", out)
    assert stored == out / WT103_WEIGHTS
    kept = load_file(str(stored))
    assert set(kept) == set(state)
    assert all(torch.equal(kept[k], v) for k, v in state.items())  # the tied copies each under their own name


def test_a_state_dict_that_is_not_an_awd_lstm_is_refused(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(2, 2)}, tmp_path / "lstm_fwd.pth")
    with pytest.raises(WeightsRefused, match=r"none is named 0\.encoder\.weight or 1\.decoder\.weight"):
        prepare(known_file("lstm_fwd.pth"), tmp_path / "lstm_fwd.pth", tmp_path)


def test_the_vocabulary_is_kept_as_json_and_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    words = write_itos(tmp_path / "itos_wt103.pkl", protocol=2)
    out = tmp_path / "out"
    out.mkdir()
    stored = prepare(known_file("itos_wt103.pkl"), tmp_path / "itos_wt103.pkl", out)
    assert json.loads(stored.read_text()) == words
    (tmp_path / "itos_wt103.pkl").write_bytes(pickle.dumps([*words, os.system]))
    with pytest.raises(WeightsRefused, match="opcode STACK_GLOBAL"):
        prepare(known_file("itos_wt103.pkl"), tmp_path / "itos_wt103.pkl", out)


def test_load_wt103_reads_what_a_worker_caches_and_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FITCYCLE_WEIGHTS_CACHE", str(tmp_path / "cache"))
    folder = wt103_dir()
    assert folder == tmp_path / "cache" / "wt103"
    with pytest.raises(PretrainedWeightsNotFound, match=f"{WT103_WEIGHTS}, {WT103_VOCAB} missing"):
        load_wt103()
    folder.mkdir(parents=True)
    write_lstm_fwd(tmp_path / "lstm_fwd.pth")
    prepare(known_file("lstm_fwd.pth"), tmp_path / "lstm_fwd.pth", folder)
    with pytest.raises(PretrainedWeightsNotFound, match=f"{WT103_VOCAB} missing"):
        load_wt103()
    (folder / WT103_VOCAB).write_text(json.dumps(vocab(5)))
    with pytest.raises(WeightsMismatch, match="do not belong together"):
        load_wt103()
    (folder / WT103_VOCAB).write_text(json.dumps(vocab()))
    state, words = load_wt103()
    assert words == vocab() and torch.equal(state["1.decoder.weight"], tiny_awd_lstm()["0.encoder.weight"])


def test_the_tiny_model_has_fastais_names_and_shapes() -> None:
    """fastai's get_language_model(AWD_LSTM, 12, emb 4, hid 6, 3 layers).state_dict(), as bench/fastai_fixtures.py
    recorded its names and shapes (fastai is not a dependency)."""
    recorded = json.loads((Path(__file__).parent / "fastai_reference.json").read_text(encoding="utf-8"))["awd_lstm"]
    assert recorded["sizes"] == {"vocab": 12, "emb_sz": 4, "n_hid": 6, "n_layers": 3}
    ours = tiny_awd_lstm(vocab=12, emb=4, hid=6)
    assert {k: list(v.shape) for k, v in ours.items()} == recorded["state_shapes"]

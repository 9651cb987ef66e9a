"""Class-activation heatmaps [Grad-CAM, Selvaraju et al. 2017; the course's lesson-6 heatmap: `hook_output` on
the body]: which parts of an image made a classifier say a class. The body's output (the last convolutional
block) is weighed by the gradient of the class's score at it, averaged over its positions; the positive part,
scaled to [0, 1], is the heatmap at the body's resolution, then mapped back onto the image as it was sent.

The layer is a path among the model's named modules, written in the bundle's manifest (`heatmap_layer`): "0", the
body of nn.Sequential(body, head), for every CNN here. Only the head runs with gradients (from the hooked layer
on), so an explained call costs one forward pass and the head's backward."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core.engine.errors import BundleError
from core.engine.transforms import ResizeMethod, resize_map

BODY_LAYER = "0"  # nn.Sequential(body, head): the body's output is the last convolutional block's
MAX_SIDE = 2048  # a heatmap's longest side: a bigger image's is scaled down (its arrays are float, per pixel)
COLORMAP = "magma"  # the course's heatmap colours
OVERLAY_ALPHA = 0.6


def heatmap_layer(model: nn.Module, manifest: dict[str, Any]) -> nn.Module:
    """The module a bundle's heatmaps are taken at: its manifest's `heatmap_layer` (bundles exported before it
    was written: the body)."""
    path = manifest.get("heatmap_layer", BODY_LAYER)
    module = dict(model.named_modules()).get(path) if isinstance(path, str) else None
    if module is None:
        raise BundleError(f"manifest.json 'heatmap_layer' {str(path)[:100]!r} is not a layer of its model")
    return module


def grad_cam(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, targets: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs for a normalized batch `x` (N, 3, S, S), and each image's Grad-CAM (N, h, w) in [0, 1]
    for its class in `targets` (None: the highest-scoring class). The model runs without gradients up to `layer`
    and with them after it: the body builds no graph. The model should be in eval mode."""
    kept: list[torch.Tensor] = []

    def keep(_: nn.Module, __: Any, output: torch.Tensor) -> torch.Tensor:
        torch.set_grad_enabled(True)  # from here on (the head): restored when the no_grad block below ends
        leaf = output.detach().requires_grad_(True)
        kept.append(leaf)
        return leaf

    handle = layer.register_forward_hook(keep)
    try:
        with torch.inference_mode(False), torch.no_grad():
            out = model(x)
            if len(kept) != 1:
                raise BundleError(f"the heatmap layer ran {len(kept)} times in one forward pass, not once")
            acts = kept[0]
            chosen = out.argmax(1) if targets is None else torch.as_tensor(list(targets), device=out.device)
            score = out.gather(1, chosen.view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(score, acts)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = (weights * acts.detach()).sum(1).clamp_min(0)
    # Min-max, as pytorch-grad-cam scales it (no floor of weak heat); an even map (one cell: a 32 px ResNet's last
    # block) is 1 where there is any evidence.
    low, high = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    cam = torch.where(high > low, (cam - low) / (high - low).clamp_min(1e-12), (cam > 0).to(cam.dtype))
    return out.detach(), cam


def heatmap_size(width: int, height: int) -> tuple[int, int]:
    """A heatmap's (width, height) for an image of this size: the image's own, scaled down to MAX_SIDE."""
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def on_image(cam: torch.Tensor, width: int, height: int, size: int, method: ResizeMethod) -> np.ndarray:
    """One image's heatmap (h, w in [0, 1], its cells spread evenly over the model's `size` x `size` input, as the
    course draws it) on the image as it was sent (`height` x `width`, uint8, 255 the hottest): each pixel reads the
    heatmap where the resize put it (bilinear, as F.interpolate would); a pixel the resize cropped away is 0. An image
    longer than MAX_SIDE gets a heatmap scaled down to it."""
    ax, bx, ay, by = resize_map(width, height, size, method, None)
    out_w, out_h = heatmap_size(width, height)  # its pixels, each read at its centre on the image
    xs = (torch.arange(out_w, dtype=torch.float64) + 0.5) * (width / out_w) * ax + bx  # where it lands on the input
    ys = (torch.arange(out_h, dtype=torch.float64) + 0.5) * (height / out_h) * ay + by
    grid = torch.stack(torch.meshgrid((xs / size * 2 - 1).float(), (ys / size * 2 - 1).float(), indexing="xy"), -1)
    sampled = F.grid_sample(cam[None, None].float(), grid[None], "bilinear", "border", align_corners=False)[0, 0]
    inside = ((xs >= 0) & (xs < size))[None, :] & ((ys >= 0) & (ys < size))[:, None]  # not cropped away
    return (sampled.clamp(0, 1) * inside * 255).round().to(torch.uint8).numpy()


def png(heat: np.ndarray) -> bytes:
    """A heatmap (H x W uint8) as an 8-bit greyscale PNG: 255 where the class's evidence is strongest."""
    buf = io.BytesIO()
    Image.fromarray(heat, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def colour_png(heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> bytes:
    """A heatmap as an RGBA PNG to lay over its image: the course's colours, the heat's strength as the opacity."""
    rgba = matplotlib.colormaps[COLORMAP](heat, bytes=True)
    rgba[..., 3] = (heat.astype(np.float32) * alpha).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    return buf.getvalue()


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The image with its heatmap over it in the course's colours, the heat's own strength as its opacity."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    if heat.shape != rgb.shape[:2]:  # scaled down (a big image), or another image's: stretched over this one
        heat = np.asarray(Image.fromarray(heat, mode="L").resize(image.size, Image.Resampling.BILINEAR))
    h = heat.astype(np.float32)[..., None] / 255
    colours = matplotlib.colormaps[COLORMAP](heat)[..., :3].astype(np.float32)
    mixed = rgb * (1 - alpha * h) + colours * alpha * h
    return Image.fromarray((mixed * 255).round().clip(0, 255).astype(np.uint8))


def mass_inside(heat: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """The share of a heatmap's total inside `box` (left, top, right, bottom; pixels)."""
    left, top, right, bottom = box
    total = float(heat.astype(np.float64).sum())
    return float(heat[top:bottom, left:right].astype(np.float64).sum()) / total if total > 0 else 0.0

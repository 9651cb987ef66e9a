"""Transforms. Item level (on the loader's workers): resize to `size` by crop, squish or pad, giving uint8.
Batch level (on the training device): fastai's aug_transforms — flips, rotation, zoom, perspective warp
in one grid_sample, then lighting — and normalization. Every random draw comes from a generator seeded
by (seed, epoch, batch), so a run resumed mid-epoch sees exactly the augmentations it would have seen."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ResizeMethod = Literal["crop", "squish", "pad"]
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def resize_image(
    img: Image.Image,
    size: int,
    method: ResizeMethod,
    rng: np.random.Generator | None,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
    fill: int = 0,
) -> Image.Image:
    """Resize to size x size. `crop` cuts a square (random place when rng is given, else centre),
    `squish` stretches, `pad` letterboxes with `fill` (black). Masks pass resample=NEAREST, so no
    value is ever blended into another."""
    w, h = img.size
    if method == "squish":
        return img.resize((size, size), resample)
    if method == "crop":
        side = min(w, h)
        fx, fy = (rng.random(), rng.random()) if rng is not None else (0.5, 0.5)
        left, top = round((w - side) * fx), round((h - side) * fy)
        return img.resize((size, size), resample, box=(left, top, left + side, top + side))
    if method == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new(img.mode, (size, size), fill)
        canvas.paste(img.resize((nw, nh), resample), ((size - nw) // 2, (size - nh) // 2))
        return canvas
    raise ValueError(f"resize method must be crop, squish or pad, got {method!r}")


def resize_map(
    width: int, height: int, size: int, method: ResizeMethod, rng: np.random.Generator | None
) -> tuple[float, float, float, float]:
    """The affine map (ax, bx, ay, by) from source pixels to resized pixels (x' = ax*x + bx) that
    resize_image applies, drawing the same random crop position from `rng`."""
    if method == "squish":
        return size / width, 0.0, size / height, 0.0
    if method == "crop":
        side = min(width, height)
        fx, fy = (rng.random(), rng.random()) if rng is not None else (0.5, 0.5)
        left, top = round((width - side) * fx), round((height - side) * fy)
        s = size / side
        return s, -left * s, s, -top * s
    scale = size / max(width, height)
    nw, nh = max(1, round(width * scale)), max(1, round(height * scale))
    return nw / width, (size - nw) // 2, nh / height, (size - nh) // 2


def image_to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """HWC PIL image to a CHW uint8 tensor."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


@dataclass(frozen=True)
class AugmentConfig:
    """fastai's get_transforms / aug_transforms defaults."""

    do_flip: bool = True
    flip_vert: bool = False
    max_rotate: float = 10.0
    max_zoom: float = 1.1
    max_lighting: float = 0.2
    max_warp: float = 0.2
    p_affine: float = 0.75
    p_lighting: float = 0.75

    def as_dict(self) -> dict[str, float | bool]:
        """Plain values, for manifests and job specs."""
        return asdict(self)


def get_transforms(**overrides: float | bool) -> AugmentConfig:
    """fastai's defaults, with any field overridden [fastai: get_transforms]."""
    return AugmentConfig(**overrides)  # type: ignore[arg-type]


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (hi - lo) + lo


def _bernoulli(gen: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) < p


def _perspective_coeffs(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Solve for the 8 homography coefficients mapping each batch's 4 `src` points onto `dst`."""
    n = src.shape[0]
    rows = []
    for i in range(4):
        x, y = src[:, i, 0], src[:, i, 1]
        u, v = dst[:, i, 0], dst[:, i, 1]
        one, zero = torch.ones_like(x), torch.zeros_like(x)
        rows.append(torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], 1))
        rows.append(torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], 1))
    a = torch.stack(rows, 1)
    b = dst.reshape(n, 8)
    return torch.linalg.solve(a, b)


class BatchAugment:
    """Random flips, rotation, zoom, warp and lighting applied to a float batch in [0, 1] on its device."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Augment a batch of shape (N, 3, H, W) with values in [0, 1]."""
        return self.apply(x, gen)[0]

    def apply(
        self,
        x: torch.Tensor,
        gen: torch.Generator,
        points: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Augment images and move `points` (N, K, 2) in [-1, 1] coordinates with them. Points need an
        invertible geometry, so the points task sets max_warp=0 (Task.limit_augment). `masks`
        (N, H, W) of integer codes are resampled on the images' own grid, nearest, so every pixel keeps
        a code that was there; lighting leaves them alone."""
        c = self.config
        n = x.shape[0]
        # Draw every random number on the CPU generator first, so results do not depend on the device.
        flip = _bernoulli(gen, n, 0.5) if c.do_flip else torch.zeros(n, dtype=torch.bool)
        dihedral_k = torch.randint(0, 4, (n,), generator=gen) if c.flip_vert else torch.zeros(n, dtype=torch.long)
        rot_on = _bernoulli(gen, n, c.p_affine)
        angle = _uniform(gen, n, -c.max_rotate, c.max_rotate) * rot_on * math.pi / 180
        zoom_on = _bernoulli(gen, n, c.p_affine)
        zoom = torch.where(zoom_on, _uniform(gen, n, 1.0, c.max_zoom), torch.ones(n))
        centre = _uniform(gen, 2 * n, 0.0, 1.0).view(n, 2)
        warp_on = _bernoulli(gen, n, c.p_affine)
        warp = _uniform(gen, 2 * n, -c.max_warp, c.max_warp).view(n, 2) * warp_on[:, None]
        light_on = _bernoulli(gen, n, c.p_lighting)
        bright = _uniform(gen, n, 0.5 * (1 - c.max_lighting), 0.5 * (1 + c.max_lighting))
        lo = math.log(1 - c.max_lighting) if c.max_lighting < 1 else -1.0
        contrast = torch.exp(_uniform(gen, n, lo, -lo))

        # Geometry: output coords -> flip and quarter turns (with flip_vert: the 8 dihedral views), rotation
        # and zoom -> perspective warp -> input coords.
        cos, sin = torch.cos(angle), torch.sin(angle)
        mat = torch.zeros(n, 2, 3)
        mat[:, 0, 0], mat[:, 0, 1], mat[:, 1, 0], mat[:, 1, 1] = (
            cos / zoom,
            -sin / zoom,
            sin / zoom,
            cos / zoom,
        )
        # A zoomed-in view may look anywhere inside the image, as fastai's zoom does.
        slack = 1 - 1 / zoom
        mat[:, :, 2] = (centre * 2 - 1) * slack[:, None]
        mat[:, 0, :2] *= torch.where(flip, -1.0, 1.0)[:, None]
        quarter = torch.tensor(
            [
                [[1.0, 0.0], [0.0, 1.0]],
                [[0.0, -1.0], [1.0, 0.0]],
                [[-1.0, 0.0], [0.0, -1.0]],
                [[0.0, 1.0], [-1.0, 0.0]],
            ]
        )
        mat[:, :, :2] = mat[:, :, :2] @ quarter[dihedral_k]

        h, w = x.shape[-2:]
        dev = x.device
        grid = F.affine_grid(mat.to(dev, x.dtype), [n, 3, h, w], align_corners=False)
        if c.max_warp > 0 and bool(warp_on.any()):
            grid = self._warp(grid, warp.to(dev, x.dtype))
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if masks is not None:
            sampled = F.grid_sample(
                masks[:, None].to(grid.dtype), grid, mode="nearest", padding_mode="reflection", align_corners=False
            )
            masks = sampled[:, 0].round().to(masks.dtype)

        # Lighting in logit space, as fastai's Brightness and Contrast do.
        if c.max_lighting > 0 and bool(light_on.any()):
            on = light_on.to(dev)[:, None, None, None]
            logit = torch.logit(out.clamp(1e-4, 1 - 1e-4))
            b = torch.logit(bright).to(dev, x.dtype)[:, None, None, None]
            k = contrast.to(dev, x.dtype)[:, None, None, None]
            out = torch.where(on, torch.sigmoid(logit * k + b), out)
        if points is not None:
            # The grid maps output coords to input coords: p_in = A p_out + t, so p_out = A^-1 (p_in - t).
            a, t = mat[:, :, :2].to(points), mat[:, :, 2].to(points)
            points = torch.linalg.solve(a[:, None], (points - t[:, None])[..., None])[..., 0]
        return out, points, masks

    @staticmethod
    def _warp(grid: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
        """Apply a random perspective warp (fastai's Warp) to sampling coordinates."""
        n = grid.shape[0]
        xt, yt = mag[:, 0], mag[:, 1]
        src = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], device=grid.device)
        src = src.expand(n, 4, 2)
        dst = torch.stack(
            [
                torch.stack([-1 - yt, -1 - xt], 1),
                torch.stack([-1 + yt, 1 + xt], 1),
                torch.stack([1 + yt, -1 + xt], 1),
                torch.stack([1 - yt, 1 - xt], 1),
            ],
            1,
        )
        coeffs = _perspective_coeffs(src.float().cpu(), dst.float().cpu()).to(grid.device, grid.dtype)
        g = grid.reshape(n, -1, 2)
        gx, gy = g[..., 0], g[..., 1]
        c = coeffs[:, :, None]
        denom = c[:, 6] * gx + c[:, 7] * gy + 1
        wx = (c[:, 0] * gx + c[:, 1] * gy + c[:, 2]) / denom
        wy = (c[:, 3] * gx + c[:, 4] * gy + c[:, 5]) / denom
        return torch.stack([wx, wy], -1).reshape(grid.shape)


class Normalize:
    """Channel-wise (x - mean) / std on the batch's device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        if key not in self._cache:
            m = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            s = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            self._cache[key] = (m, s)
        m, s = self._cache[key]
        return (x - m) / s

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalization (for showing images)."""
        m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x * s + m).clamp(0, 1)

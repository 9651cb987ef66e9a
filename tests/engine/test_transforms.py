"""Item resizing and batch augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine.transforms import AugmentConfig, BatchAugment, Normalize, resize_image
from core.engine.transforms import get_transforms as gt


def _photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea())  # 451 x 300 real photo


@pytest.mark.parametrize("method", ["crop", "squish", "pad"])
def test_every_resize_method_gives_a_square(method: str) -> None:
    out = resize_image(_photo(), 64, method, None)  # type: ignore[arg-type]
    assert out.size == (64, 64)


def test_pad_letterboxes_and_crop_is_random_only_with_a_generator() -> None:
    padded = np.asarray(resize_image(_photo(), 64, "pad", None))
    assert padded[:5].max() == 0 and padded[-5:].max() == 0 and padded[32].max() > 0
    centre = resize_image(_photo(), 64, "crop", None)
    assert np.array_equal(np.asarray(centre), np.asarray(resize_image(_photo(), 64, "crop", None)))
    rand = [np.asarray(resize_image(_photo(), 64, "crop", np.random.default_rng(s))) for s in range(3)]
    assert not all(np.array_equal(rand[0], r) for r in rand[1:])


def test_augmentation_is_repeatable_per_generator_and_keeps_range() -> None:
    x = torch.rand(8, 3, 32, 32)
    aug = BatchAugment(gt())
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_a_flip_alone_mirrors_the_image() -> None:
    x = torch.rand(64, 3, 16, 16)
    only_flip = AugmentConfig(max_rotate=0, max_zoom=1.0, max_warp=0, max_lighting=0)
    out = BatchAugment(only_flip)(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, x, strict=True)])
    same = torch.tensor([torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x, strict=True)])
    assert bool((flipped | same).all()) and 10 < int(flipped.sum()) < 54


def test_dihedral_gives_all_eight_views() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(200, 3, 4, 4) / 16
    cfg = AugmentConfig(flip_vert=True, max_rotate=0, max_zoom=1.0, max_warp=0, max_lighting=0)
    out = BatchAugment(cfg)(x.contiguous(), torch.Generator().manual_seed(0))
    views = {tuple(o[0].round(decimals=3).flatten().tolist()) for o in out}
    assert len(views) == 8


def test_normalize_round_trips() -> None:
    norm = Normalize((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(norm.decode(norm(x)), x, atol=1e-6)

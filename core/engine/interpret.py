"""What interpretations of every task share: the validation images of the worst items, loaded again at the
model's size for their picture. Each task's own interpretation lives in its module (tasks/)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from core.engine.images import open_rgb
from core.engine.transforms import image_to_uint8_tensor, resize_image

if TYPE_CHECKING:
    from core.engine.learner import Learner


def validation_images(learn: Learner, keys: Sequence[str]) -> torch.Tensor:
    """The items' images, centre-resized as the validation set sees them, as floats in [0, 1]."""
    size, method = learn.dls.config.size, learn.dls.config.resize_method
    root: Path = learn.dls.items.root
    return (
        torch.stack([image_to_uint8_tensor(resize_image(open_rgb(root / k), size, method, None)) for k in keys]).float()
        / 255
    )

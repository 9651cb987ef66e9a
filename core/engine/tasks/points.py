"""Key points [fastai: PointBlock]: x, y pairs per image, learned in [-1, 1] coordinates of the resized image
and answered in the original image's pixels. Points follow only invertible (affine) augmentation: no warp."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from PIL import Image

from core.engine.items import PointItems
from core.engine.plots import plot_images
from core.engine.tasks.base import Grid, Prediction
from core.engine.tasks.regression import RegressionTask
from core.engine.transforms import AugmentConfig, BatchAugment, resize_map

if TYPE_CHECKING:
    from core.engine.data import ImageDataLoaders
    from core.engine.inference import Predictor


@dataclass(frozen=True)
class PointsPrediction(Prediction):
    """(x, y) per point, in the original image's pixels."""

    points: list[list[float]]
    spread: float = 0.0  # under test-time augmentation, as a share of the image's side

    def answer(self) -> dict[str, Any]:
        return {"points": self.points}

    def text(self) -> str:
        return " ".join(f"({x:.1f}, {y:.1f})" for x, y in self.points)

    @property
    def uncertainty(self) -> float:
        return self.spread


class PointsTask(RegressionTask):
    name: ClassVar[str] = "points"
    items_type = PointItems
    metrics = ("point_error",)
    main_metric = "point_error"
    outputs_per_class = 2  # a class per point, x and y each
    unit = "share of the image side"
    answer_key = "points"
    answer_fields: ClassVar[dict[str, tuple[Any, str]]] = {
        "points": (list[list[float]], "[x, y] per point, in the image's own pixels")
    }

    def limit_augment(self, config: AugmentConfig) -> AugmentConfig:
        return dataclasses.replace(config, max_warp=0.0)

    def target(self, items: PointItems, i: int, grid: Grid) -> torch.Tensor:
        """The points moved with the image's resize (the same crop), in [-1, 1], flat."""
        ax, bx, ay, by = grid.affine()
        xy = torch.tensor(items.targets[i], dtype=torch.float32).view(-1, 2)
        xy = torch.stack([xy[:, 0] * ax + bx, xy[:, 1] * ay + by], dim=1) / grid.size * 2 - 1
        return xy.flatten()

    def augment(
        self, augment: BatchAugment, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, moved, _ = augment.apply(x, gen, y.view(len(y), -1, 2))
        assert moved is not None
        return x, moved.reshape(len(y), -1)

    def training_targets(self, dls: ImageDataLoaders, max_items: int = 512) -> torch.Tensor:
        ds = dls.train.dataset
        step = max(1, len(ds) // max_items)
        return torch.stack([ds[i][1] for i in range(0, len(ds), step)])

    def errors(self, preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
        """Mean point distance as a share of the image side (coordinates span 2)."""
        return ((preds - targs).view(len(preds), -1, 2).norm(dim=2) / 2).mean(dim=1)

    def answer_vector(self, output: torch.Tensor, image: Image.Image, predictor: Predictor) -> torch.Tensor:
        # [-1, 1] -> resized pixels -> the original image's pixels (undo the resize's affine map).
        ax, bx, ay, by = resize_map(image.width, image.height, predictor.size, predictor.method, None)
        xy = (output.view(-1, 2) + 1) / 2 * predictor.size
        return torch.stack([(xy[:, 0] - bx) / ax, (xy[:, 1] - by) / ay], dim=1).flatten()

    def spread_scale(self, image: Image.Image) -> float:
        return float(max(image.size))

    def decoded(self, answer: torch.Tensor, spread: float) -> PointsPrediction:
        return PointsPrediction(answer.view(-1, 2).tolist(), spread)

    def item_error(self, answer: torch.Tensor, truth: torch.Tensor, size: tuple[int, int]) -> float:
        """Mean point distance as a share of the image's longer side."""
        return float((answer.view(-1, 2) - truth.view(-1, 2)).norm(dim=1).mean()) / max(size)

    def shaped(self, targets: Sequence[float]) -> list[Any]:
        return [[float(targets[k]), float(targets[k + 1])] for k in range(0, len(targets), 2)]

    def show_batch(self, images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], path: Path) -> Path:
        return plot_images(images, [""] * len(images), path, points=list(targets))

    def plot_worst(
        self, images: torch.Tensor, titles: list[str], path: Path, targs: list[torch.Tensor], preds: list[torch.Tensor]
    ) -> Path:
        """True points as green dots, predicted as red crosses."""
        return plot_images(images, titles, path, "error (share of side)", points=targs, predicted=preds)

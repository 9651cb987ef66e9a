"""Value regression [fastai: RegressionBlock]: any numbers per image (a share, a height, an age), learned
standardized and answered as given."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from PIL import Image

from core.engine.items import ValueItems
from core.engine.plots import plot_images
from core.engine.tasks.base import Grid, Prediction
from core.engine.tasks.regression import RegressionTask

if TYPE_CHECKING:
    from core.engine.data import ImageDataLoaders
    from core.engine.inference import Predictor


@dataclass(frozen=True)
class ValuesPrediction(Prediction):
    """The predicted numbers, in the order of the target names."""

    values: list[float]
    spread: float = 0.0  # under test-time augmentation, in the values' own units

    def answer(self) -> dict[str, Any]:
        return {"values": self.values}

    def text(self) -> str:
        return " ".join(f"{v:.4g}" for v in self.values)

    @property
    def uncertainty(self) -> float:
        return self.spread


class ValuesTask(RegressionTask):
    name: ClassVar[str] = "values"
    items_type = ValueItems
    metrics = ("mae", "rmse")
    main_metric = "mae"
    unit = "absolute error"
    answer_key = "values"
    answer_fields: ClassVar[dict[str, tuple[Any, str]]] = {
        "values": (list[float], "the predicted numbers, in the order of the target names")
    }

    def target(self, items: ValueItems, i: int, grid: Grid) -> torch.Tensor:
        return torch.tensor(items.targets[i], dtype=torch.float32)

    def training_targets(self, dls: ImageDataLoaders, max_items: int = 512) -> torch.Tensor:
        ds = dls.train.dataset
        items = dls.items
        assert isinstance(items, ValueItems)
        step = max(1, len(ds) // max_items)
        return torch.tensor([items.targets[ds.indices[i]] for i in range(0, len(ds), step)])

    def errors(self, preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
        return (preds - targs).abs().mean(dim=1)

    def answer_vector(self, output: torch.Tensor, image: Image.Image, predictor: Predictor) -> torch.Tensor:
        return output

    def decoded(self, answer: torch.Tensor, spread: float) -> ValuesPrediction:
        return ValuesPrediction(answer.tolist(), spread)

    def item_error(self, answer: torch.Tensor, truth: torch.Tensor, size: tuple[int, int]) -> float:
        """Mean absolute error over the values."""
        return float((answer - truth).abs().mean())

    def show_batch(self, images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], path: Path) -> Path:
        return plot_images(images, [" ".join(f"{v:.3g}" for v in y.tolist()) for y in targets], path)

    def plot_worst(
        self, images: torch.Tensor, titles: list[str], path: Path, targs: list[torch.Tensor], preds: list[torch.Tensor]
    ) -> Path:
        return plot_images(images, titles, path, "absolute error")

"""What the two regression tasks (points, values) share [fastai: RegressionBlock, PointBlock]: the model
learns standardized targets (the head ends in a TargetScale set from the training targets), mean squared
error, no head dropout by default, and an interpretation against the trivial baseline of predicting the
training mean."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from PIL import Image, ImageEnhance
from torch import nn

from core.engine.architectures import Architecture
from core.engine.errors import DataError
from core.engine.interpret import ValidOutputs, preds_and_targs
from core.engine.items import TargetItems
from core.engine.model import HeadConfig, TargetScale, create_cnn_model
from core.engine.tasks.base import Correction, Doubt, Prediction, Scores, Task, check_numbers

if TYPE_CHECKING:
    from core.engine.data import ImageDataLoaders
    from core.engine.inference import Predictor
    from core.engine.learner import Learner


class RegressionTask(Task):
    """Numbers per image."""

    fp32_head = True

    head_dropout: ClassVar[float] = 0.0
    unit: ClassVar[str]  # what an item's error is measured in
    result_keys: ClassVar[tuple[str, ...]] = ("error_mean", "error_median", "baseline_mean_target_error")

    def build_model(
        self, arch: Architecture, body: nn.Sequential, dls: ImageDataLoaders, head: HeadConfig
    ) -> tuple[nn.Module, Any]:
        head = dataclasses.replace(head, target_scale=True)
        model = create_cnn_model(arch, dls.n_out, body, head)
        scale = list(model[1].children())[-1]
        assert isinstance(scale, TargetScale)
        scale.set_stats(self.training_targets(dls))
        return model, head

    @abstractmethod
    def training_targets(self, dls: ImageDataLoaders, max_items: int = 512) -> torch.Tensor:
        """Targets of (up to max_items of) the training set as the model sees them, without augmentation."""

    def loss(self) -> nn.Module:
        return nn.MSELoss()

    def chosen_loss(self, name: str) -> nn.Module | None:
        """With "l1", mean absolute error instead of the squared one (less pulled by a few far-off targets)."""
        return nn.L1Loss() if name == "l1" else super().chosen_loss(name)

    @abstractmethod
    def errors(self, preds: torch.Tensor, targs: torch.Tensor) -> torch.Tensor:
        """Each item's error, in `unit`."""

    @abstractmethod
    def plot_worst(
        self, images: torch.Tensor, titles: list[str], path: Path, targs: list[torch.Tensor], preds: list[torch.Tensor]
    ) -> Path:
        """The worst items, drawn."""

    def interpret(
        self, learn: Learner, thresholds: list[float] | None = None, outputs: ValidOutputs | None = None
    ) -> RegressionInterpretation:
        return RegressionInterpretation(learn, self, outputs)

    def predict(self, predictor: Predictor, images: Sequence[Image.Image]) -> list[Prediction]:
        """Each image's answer, and its spread under test-time augmentation: the same images a little darker,
        brighter and flatter (lighting only, so every variant keeps the geometry the answer is in)."""
        variants = [list(images)] + [[change(img) for img in images] for change in TTA]
        outputs = [predictor.forward(v) for v in variants]
        out = []
        for n, img in enumerate(images):
            answers = torch.stack([self.answer_vector(o[n], img, predictor) for o in outputs])
            spread = float(answers.std(dim=0).mean()) / self.spread_scale(img)
            out.append(self.decoded(answers[0], spread))
        return out

    @abstractmethod
    def answer_vector(self, output: torch.Tensor, image: Image.Image, predictor: Predictor) -> torch.Tensor:
        """One output in the answer's units (points: the image's pixels), flat."""

    def spread_scale(self, image: Image.Image) -> float:
        """What the spread is divided by (points: the image's side)."""
        return 1.0

    @abstractmethod
    def decoded(self, answer: torch.Tensor, spread: float) -> Prediction:
        """The answer vector as this task's prediction."""

    def decode(self, output: torch.Tensor, image: Image.Image, predictor: Predictor) -> Prediction:
        return self.decoded(self.answer_vector(output, image, predictor), 0.0)

    def score(self, predictions: Sequence[Prediction], items: TargetItems, indices: Sequence[int]) -> Scores:
        """The mean of each item's error in `unit`."""
        errors = []
        for p, i in zip(predictions, indices, strict=True):
            truth = torch.tensor(items.targets[i])
            answer = torch.tensor(flatten(p.answer()[self.answer_key]))
            with Image.open(items.path(i)) as img:
                errors.append(self.item_error(answer, truth, img.size))
        return Scores(self.main_metric, sum(errors) / max(1, len(errors)), False, {}, len(errors), tuple(errors))

    answer_key: ClassVar[str]

    def doubt(self, prediction: Prediction, items: TargetItems, i: int) -> Doubt:
        """The item's error (in `unit`) between the answer and its given targets."""
        answer = prediction.answer()[self.answer_key]
        with Image.open(items.path(i)) as img:
            error = self.item_error(torch.tensor(flatten(answer)), torch.tensor(items.targets[i]), img.size)
        return Doubt(error, {self.answer_key: self.shaped(items.targets[i])}, {self.answer_key: answer})

    def shaped(self, targets: Sequence[float]) -> list[Any]:
        """An item's flat targets in the shape its answers take (points: [x, y] pairs)."""
        return list(targets)

    @abstractmethod
    def item_error(self, answer: torch.Tensor, truth: torch.Tensor, size: tuple[int, int]) -> float:
        """One item's error, in the main metric's unit, from its answer and its true targets (both as given)."""

    def correction(self, body: dict[str, Any], manifest: dict[str, Any], image_size: tuple[int, int]) -> Correction:
        n = len(manifest["classes"]) * self.outputs_per_class
        if self.answer_key not in body:
            raise DataError(f"{self.answer_key}: a {self.name} target is {{{self.answer_key!r}: [...]}} ({n} numbers)")
        return Correction({self.answer_key: check_numbers(body[self.answer_key], n, self.answer_key)})

    def confirmed(self, answer: dict[str, Any]) -> Correction:
        return Correction({self.answer_key: flatten(answer[self.answer_key])})

    def record(self, target: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
        return {"label": "", "targets": list(target[self.answer_key])}


TTA: tuple[Callable[[Image.Image], Image.Image], ...] = (
    lambda img: ImageEnhance.Brightness(img).enhance(0.85),
    lambda img: ImageEnhance.Brightness(img).enhance(1.15),
    lambda img: ImageEnhance.Contrast(img).enhance(0.8),
)


class RegressionInterpretation:
    """The error of every validation item, its distribution, the trivial baseline (predicting the training
    mean), and the worst items."""

    def __init__(self, learn: Learner, task: RegressionTask, outputs: ValidOutputs | None = None) -> None:
        self.learn, self.task = learn, task
        self.preds, self.targs = preds_and_targs(learn, outputs)
        # The baseline needs only the training targets (in model coordinates), not a forward pass over them.
        train = learn.dls.train.dataset
        train_targs = torch.stack([train[i][1] for i in range(len(train))])
        self.baseline = train_targs.mean(0, keepdim=True).expand_as(self.targs)
        self.errors = task.errors(self.preds, self.targs)
        self.dataset = learn.dls.valid.dataset

    def as_dict(self, k: int = 9) -> dict[str, Any]:
        """Error summary against the mean-target baseline, and the worst items."""
        base = self.task.errors(self.baseline, self.targs)
        worst = torch.topk(self.errors, min(k, len(self.errors))).indices.tolist()
        return {
            "task": self.task.name,
            "unit": self.task.unit,
            "error_mean": float(self.errors.mean()),
            "error_median": float(self.errors.median()),
            "error_p90": float(self.errors.quantile(0.9)),
            "baseline_mean_target_error": float(base.mean()),
            "top_losses": [{"item": self.dataset.key(i), "error": float(self.errors[i])} for i in worst],
        }

    def plots(self) -> list[tuple[str, Callable[[Path], Path]]]:
        return [("plots/top_losses.png", self.plot_top_losses)]

    def plot_top_losses(self, path: str | Path, k: int = 9) -> Path:
        """The worst items, titled with their error."""
        worst = torch.topk(self.errors, min(k, len(self.errors))).indices.tolist()
        images = torch.stack([self.dataset[i][0] for i in worst]).float() / 255
        titles = [f"{self.errors[i]:.3f}" for i in worst]
        targs, preds = [self.targs[i] for i in worst], [self.preds[i] for i in worst]
        return self.task.plot_worst(images, titles, Path(path), targs, preds)


def flatten(values: list[Any]) -> list[float]:
    """[[x, y], ...] or [a, b, ...] as one flat list."""
    return [float(v) for t in values for v in (t if isinstance(t, list) else [t])]

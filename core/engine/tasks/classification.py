"""Classification: one class per image [fastai: CategoryBlock]. Softmax over the classes, cross-entropy,
error rate; the answer is the ranked classes; interpretation is the confusion matrix, the most confused
pairs and the top losses [fastai: ClassificationInterpretation]."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core.engine.errors import DataError
from core.engine.interpret import (
    TopLossHeatmaps,
    ValidOutputs,
    heatmap_artifact,
    preds_and_targs,
    validation_images,
)
from core.engine.items import ClassItems, LabelItems
from core.engine.plots import plot_confusion_matrix, plot_images
from core.engine.tasks.base import Correction, Doubt, Grid, Prediction, Scores, Task, check_label

if TYPE_CHECKING:
    from core.engine.inference import Predictor
    from core.engine.learner import Learner


@dataclass(frozen=True)
class ClassPrediction(Prediction):
    """The most probable class, its index, and the probability of every class (in class order)."""

    label: str
    index: int
    probs: list[float]
    classes: list[str]

    def ranked(self, classes: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """(label, probability) for every class, most probable first."""
        return sorted(zip(classes or self.classes, self.probs, strict=True), key=lambda t: -t[1])

    def answer(self) -> dict[str, Any]:
        ranked = self.ranked()
        return {"top": ranked[0], "predictions": ranked}

    def text(self) -> str:
        return f"{self.label} ({self.probs[self.index]:.3f})"

    @property
    def uncertainty(self) -> float:
        """1 - the margin between the two most probable classes."""
        top = sorted(self.probs, reverse=True)[:2]
        return 1.0 - (top[0] - (top[1] if len(top) > 1 else 0.0))


@dataclass(frozen=True)
class TopLoss:
    """One validation item the model found hard."""

    item: str
    actual: str
    predicted: str
    loss: float
    probability: float  # of the predicted class


class ClassificationInterpretation:
    """Predictions over the validation set (the last validation pass's when given, else predicted again), and
    the ways to look at their mistakes."""

    def __init__(self, learn: Learner, outputs: ValidOutputs | None = None) -> None:
        self.learn = learn
        self.classes = learn.dls.classes
        logits, self.targs = preds_and_targs(learn, outputs)
        self.probs = logits.softmax(dim=1)
        self.losses = F.cross_entropy(logits, self.targs, reduction="none")
        self.preds = self.probs.argmax(dim=1)
        self.dataset = learn.dls.valid.dataset

    @classmethod
    def from_learner(cls, learn: Learner, outputs: ValidOutputs | None = None) -> ClassificationInterpretation:
        """Interpret a trained learner on its validation set."""
        return cls(learn, outputs)

    def top_losses(self, k: int = 9) -> list[TopLoss]:
        """The k validation items with the highest loss."""
        k = min(k, len(self.losses))
        out = []
        for i in torch.topk(self.losses, k).indices.tolist():
            p = int(self.preds[i])
            out.append(
                TopLoss(
                    self.dataset.key(i),
                    self.classes[int(self.targs[i])],
                    self.classes[p],
                    float(self.losses[i]),
                    float(self.probs[i, p]),
                )
            )
        return out

    def confusion_matrix(self) -> np.ndarray:
        """Counts of (actual, predicted) pairs: rows actual, columns predicted."""
        n = len(self.classes)
        flat = self.targs * n + self.preds
        return torch.bincount(flat, minlength=n * n).reshape(n, n).numpy()

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """(actual, predicted, count) for off-diagonal pairs with at least min_val, most frequent first."""
        cm = self.confusion_matrix()
        pairs = [
            (self.classes[i], self.classes[j], int(cm[i, j]))
            for i in range(len(cm))
            for j in range(len(cm))
            if i != j and cm[i, j] >= min_val
        ]
        return sorted(pairs, key=lambda t: -t[2])

    def per_class(self) -> dict[str, dict[str, float]]:
        """Precision, recall, F1 and support per class."""
        cm = self.confusion_matrix().astype(float)
        out = {}
        for i, c in enumerate(self.classes):
            tp, fp, fn = cm[i, i], cm[:, i].sum() - cm[i, i], cm[i, :].sum() - cm[i, i]
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            out[c] = {"precision": precision, "recall": recall, "f1": f1, "support": int(cm[i, :].sum())}
        return out

    def as_dict(self, k: int = 9, min_val: int = 1) -> dict[str, Any]:
        """Everything above as plain data, for JSON."""
        return {
            "classes": self.classes,
            "top_losses": [
                t.__dict__ | {"heatmap": heatmap_artifact(i), "heatmap_class": t.predicted}
                for i, t in enumerate(self.top_losses(k))
            ],
            "confusion_matrix": self.confusion_matrix().tolist(),
            "most_confused": self.most_confused(min_val),
            "per_class": self.per_class(),
            "error_rate": float((self.preds != self.targs).float().mean()),
        }

    def plots(self, k: int = 9) -> list[tuple[str, Callable[[Path], Path]]]:
        tops = [(t.item, self.classes.index(t.predicted)) for t in self.top_losses(k)]
        return [
            ("plots/confusion_matrix.png", self.plot_confusion_matrix),
            ("plots/top_losses.png", self.plot_top_losses),
            *TopLossHeatmaps(self.learn).plots(tops),
        ]

    def plot_confusion_matrix(self, path: str | Path) -> Path:
        """The confusion matrix as a PNG."""
        return plot_confusion_matrix(self.confusion_matrix(), self.classes, path)

    def plot_top_losses(self, path: str | Path, k: int = 9) -> Path:
        """The top-loss images titled predicted / actual / loss / probability."""
        tops = self.top_losses(k)
        images = validation_images(self.learn, [t.item for t in tops])
        titles = [f"{t.predicted}/{t.actual}\n{t.loss:.2f}/{t.probability:.2f}" for t in tops]
        return plot_images(images, titles, path, "predicted/actual/loss/probability")


class ClassificationTask(Task):
    name: ClassVar[str] = "classification"
    items_type = ClassItems
    metrics = ("error_rate", "accuracy")
    main_metric = "error_rate"
    activation = "softmax"
    explains: ClassVar[bool] = True
    result_keys = ("error_rate", "most_confused", "per_class")
    answer_fields: ClassVar[dict[str, tuple[Any, str]]] = {
        "top": (tuple[str, float], "the most probable class: [label, probability]"),
        "predictions": (list[tuple[str, float]], "every class as [label, probability], most probable first"),
    }

    def target(self, items: ClassItems, i: int, grid: Grid) -> int:
        """The class index."""
        return items.class_index[items.labels[i]]

    def loss(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def decode(self, output: torch.Tensor, image: Image.Image, predictor: Predictor) -> ClassPrediction:
        probs = output.softmax(dim=0)
        i = int(probs.argmax())
        return ClassPrediction(predictor.classes[i], i, probs.tolist(), predictor.classes)

    def mix_labels(self, answer: dict[str, Any]) -> list[str] | None:
        """The most probable class."""
        top = answer.get("top")
        return [str(top[0])] if isinstance(top, list | tuple) and top else None

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The result's headline, the ten pairs most confused among it."""
        kept = super().headline(summary)
        return kept | ({"most_confused": kept["most_confused"][:10]} if "most_confused" in kept else {})

    def interpret(
        self, learn: Learner, thresholds: list[float] | None = None, outputs: ValidOutputs | None = None
    ) -> ClassificationInterpretation:
        return ClassificationInterpretation(learn, outputs)

    def show_batch(self, images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], path: Path) -> Path:
        return plot_images(images, [classes[int(y)] for y in targets], path)

    def correction(self, body: dict[str, Any], manifest: dict[str, Any], image_size: tuple[int, int]) -> Correction:
        if "label" not in body:
            raise DataError('label: a classification target is {"label": CLASS} (a new class is allowed)')
        return Correction({"label": check_label(body["label"], "label")})

    def confirmed(self, answer: dict[str, Any]) -> Correction:
        return Correction({"label": answer["top"][0]})

    def record(self, target: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
        return {"label": target["label"]}

    def doubt(self, prediction: Prediction, items: LabelItems, i: int) -> Doubt:
        """-log of the given class's probability (0 when the model does not know the class)."""
        assert isinstance(prediction, ClassPrediction)
        given = items.labels[i]
        p_given = prediction.probs[prediction.classes.index(given)] if given in prediction.classes else 0.0
        return Doubt(
            -math.log(max(p_given, 1e-12)),
            {"label": given},
            {"label": prediction.label},
            prediction.probs[prediction.index],
            p_given,
        )

    def score(self, predictions: Sequence[Prediction], items: LabelItems, indices: Sequence[int]) -> Scores:
        """Accuracy, and recall per true class."""
        flat: list[float] = []
        hits: dict[str, list[float]] = {}
        for p, i in zip(predictions, indices, strict=True):
            assert isinstance(p, ClassPrediction)
            flat.append(float(p.label == items.labels[i]))
            hits.setdefault(items.labels[i], []).append(flat[-1])
        return Scores.of_items("accuracy", True, flat, hits)

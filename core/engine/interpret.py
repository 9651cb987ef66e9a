"""What the model gets wrong [fastai: ClassificationInterpretation]: top losses, the confusion matrix,
the most confused pairs, per-class precision/recall/F1, and their PNGs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.engine.images import open_rgb
from core.engine.learner import Learner
from core.engine.plots import plot_confusion_matrix, plot_images
from core.engine.transforms import image_to_uint8_tensor, resize_image


@dataclass(frozen=True)
class TopLoss:
    """One validation item the model found hard."""

    item: str
    actual: str
    predicted: str
    loss: float
    probability: float  # of the predicted class


class ClassificationInterpretation:
    """Predictions over the validation set, and the ways to look at their mistakes."""

    def __init__(self, learn: Learner) -> None:
        self.learn = learn
        self.classes = learn.dls.classes
        logits, self.targs = learn.get_preds()
        self.probs = logits.softmax(dim=1)
        self.losses = F.cross_entropy(logits, self.targs, reduction="none")
        self.preds = self.probs.argmax(dim=1)
        self.dataset = learn.dls.valid.dataset

    @classmethod
    def from_learner(cls, learn: Learner) -> ClassificationInterpretation:
        """Interpret a trained learner on its validation set."""
        return cls(learn)

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
            "top_losses": [t.__dict__ for t in self.top_losses(k)],
            "confusion_matrix": self.confusion_matrix().tolist(),
            "most_confused": self.most_confused(min_val),
            "per_class": self.per_class(),
            "error_rate": float((self.preds != self.targs).float().mean()),
        }

    def plot_confusion_matrix(self, path: str | Path) -> Path:
        """The confusion matrix as a PNG."""
        return plot_confusion_matrix(self.confusion_matrix(), self.classes, path)

    def plot_top_losses(self, path: str | Path, k: int = 9) -> Path:
        """The top-loss images titled predicted / actual / loss / probability."""
        tops = self.top_losses(k)
        size = self.learn.dls.config.size
        method = self.learn.dls.config.resize_method
        root = self.dataset.items.root
        images = (
            torch.stack(
                [image_to_uint8_tensor(resize_image(open_rgb(root / t.item), size, method, None)) for t in tops]
            ).float()
            / 255
        )
        titles = [f"{t.predicted}/{t.actual}\n{t.loss:.2f}/{t.probability:.2f}" for t in tops]
        return plot_images(images, titles, path, "predicted/actual/loss/probability")


class MultiLabelInterpretation:
    """Multi-label mistakes: per-label confusion counts, the F-beta-vs-threshold curve of each label,
    the tuned thresholds, and the items with the highest binary cross-entropy."""

    def __init__(self, learn: Learner, thresholds: list[float] | None = None) -> None:
        from core.engine.multilabel import tune_thresholds

        self.learn = learn
        self.classes = learn.dls.classes
        logits, self.targs = learn.get_preds()
        self.probs = logits.sigmoid()
        self.losses = F.binary_cross_entropy_with_logits(logits, self.targs, reduction="none").mean(dim=1)
        self.thresholds = thresholds or tune_thresholds(self.probs, self.targs)
        self.dataset = learn.dls.valid.dataset

    def predicted(self) -> torch.Tensor:
        """Multi-hot predictions with the per-class thresholds."""
        return (self.probs > torch.tensor(self.thresholds)).float()

    def per_label(self) -> dict[str, dict[str, float]]:
        """TP, FP, FN, TN, precision, recall and F1 per label."""
        pred, true = self.predicted(), self.targs
        out = {}
        for c, name in enumerate(self.classes):
            tp = float((pred[:, c] * true[:, c]).sum())
            fp = float((pred[:, c] * (1 - true[:, c])).sum())
            fn = float(((1 - pred[:, c]) * true[:, c]).sum())
            tn = float(len(true)) - tp - fp - fn
            p = tp / (tp + fp) if tp + fp else 0.0
            r = tp / (tp + fn) if tp + fn else 0.0
            out[name] = {
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "tn": tn,
                "precision": p,
                "recall": r,
                "f1": 2 * p * r / (p + r) if p + r else 0.0,
                "threshold": self.thresholds[c],
            }
        return out

    def top_losses(self, k: int = 9) -> list[dict[str, Any]]:
        """The k validation items with the highest loss, with actual and predicted label sets."""
        pred = self.predicted()
        out = []
        for i in torch.topk(self.losses, min(k, len(self.losses))).indices.tolist():
            out.append(
                {
                    "item": self.dataset.key(i),
                    "actual": [c for c, on in zip(self.classes, self.targs[i].tolist(), strict=True) if on],
                    "predicted": [c for c, on in zip(self.classes, pred[i].tolist(), strict=True) if on],
                    "loss": float(self.losses[i]),
                }
            )
        return out

    def as_dict(self, k: int = 9) -> dict[str, object]:
        """Everything above as plain data, for JSON."""
        from core.engine.metrics import fbeta
        from core.engine.multilabel import threshold_curve

        grid, curve = threshold_curve(self.probs, self.targs)
        logits = torch.logit(self.probs.clamp(1e-6, 1 - 1e-6))
        return {
            "classes": self.classes,
            "thresholds": self.thresholds,
            "per_label": self.per_label(),
            "threshold_curve": {"thresholds": grid, "fbeta": dict(zip(self.classes, curve, strict=True))},
            "top_losses": self.top_losses(k),
            "fbeta@0.2": fbeta(logits, self.targs),
            "error_rate": float((self.predicted() != self.targs).float().mean()),
        }

    def plot_threshold_curve(self, path: str | Path) -> Path:
        """F-beta against the threshold for each label, tuned thresholds marked."""
        from core.engine.multilabel import threshold_curve
        from core.engine.plots import plot_threshold_curves

        grid, curve = threshold_curve(self.probs, self.targs)
        return plot_threshold_curves(grid, dict(zip(self.classes, curve, strict=True)), self.thresholds, path)

    def plot_top_losses(self, path: str | Path, k: int = 9) -> Path:
        """The top-loss images titled predicted / actual / loss."""
        tops = self.top_losses(k)
        size, method = self.learn.dls.config.size, self.learn.dls.config.resize_method
        root = self.dataset.items.root
        images = (
            torch.stack(
                [image_to_uint8_tensor(resize_image(open_rgb(root / str(t["item"])), size, method, None)) for t in tops]
            ).float()
            / 255
        )
        titles = [
            f"{' '.join(map(str, t['predicted'])) or '-'}/{' '.join(map(str, t['actual']))}\n{t['loss']:.2f}"
            for t in tops
        ]
        return plot_images(images, titles, path, "predicted/actual/loss")


class RegressionInterpretation:
    """Points or values: the error of every validation item, its distribution, the trivial baseline
    (predicting the training mean), and the worst items drawn with true and predicted points."""

    def __init__(self, learn: Learner) -> None:
        self.learn = learn
        self.task = learn.dls.task
        self.preds, self.targs = learn.get_preds()
        # The baseline needs only the training targets (in model coordinates), not a forward pass over them.
        train = learn.dls.train.dataset
        train_targs = torch.stack([train[i][1] for i in range(len(train))])
        self.baseline = train_targs.mean(0, keepdim=True).expand_as(self.targs)
        self.errors = self._errors(self.preds)
        self.dataset = learn.dls.valid.dataset

    def _errors(self, preds: torch.Tensor) -> torch.Tensor:
        if self.task == "points":  # mean point distance as a share of the image side
            return ((preds - self.targs).view(len(preds), -1, 2).norm(dim=2) / 2).mean(dim=1)
        return (preds - self.targs).abs().mean(dim=1)

    def as_dict(self, k: int = 9) -> dict[str, Any]:
        """Error summary against the mean-target baseline, and the worst items."""
        base = self._errors(self.baseline)
        worst = torch.topk(self.errors, min(k, len(self.errors))).indices.tolist()
        unit = "share of the image side" if self.task == "points" else "absolute error"
        return {
            "task": self.task,
            "unit": unit,
            "error_mean": float(self.errors.mean()),
            "error_median": float(self.errors.median()),
            "error_p90": float(self.errors.quantile(0.9)),
            "baseline_mean_target_error": float(base.mean()),
            "top_losses": [{"item": self.dataset.key(i), "error": float(self.errors[i])} for i in worst],
        }

    def plot_top_losses(self, path: str | Path, k: int = 9) -> Path:
        """The worst items; points: true (green dots) and predicted (red crosses)."""
        worst = torch.topk(self.errors, min(k, len(self.errors))).indices.tolist()
        images = torch.stack([self.dataset[i][0] for i in worst]).float() / 255
        titles = [f"{self.errors[i]:.3f}" for i in worst]
        if self.task == "points":
            return plot_images(
                images,
                titles,
                path,
                "error (share of side)",
                points=[self.targs[i] for i in worst],
                predicted=[self.preds[i] for i in worst],
            )
        return plot_images(images, titles, path, "absolute error")

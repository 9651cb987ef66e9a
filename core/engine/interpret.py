"""What the model gets wrong [fastai: ClassificationInterpretation]: top losses, the confusion matrix,
the most confused pairs, per-class precision/recall/F1, and their PNGs; the same questions for
multi-label, regression and segmentation models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.engine.images import open_rgb
from core.engine.learner import Learner
from core.engine.masks import IGNORE_INDEX, open_mask
from core.engine.metrics import dice_per_class, iou_per_class, pixel_confusion
from core.engine.plots import plot_bars, plot_confusion_matrix, plot_images, plot_mask_rows
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


class SegmentationInterpretation:
    """Segmentation: the pixel confusion matrix, per-class IoU and Dice, the majority-class baseline, and the
    validation images with the highest loss drawn with their true and predicted masks."""

    def __init__(self, learn: Learner, baseline_items: int = 1000) -> None:
        self.learn = learn
        self.classes = learn.dls.classes
        n = len(self.classes)
        loader = learn.dls.valid
        self.dataset = loader.dataset
        learn.model.eval()
        loader.set_epoch(0, 0)
        losses, pixel_acc, ious, preds = [], [], [], []
        self.confusion = torch.zeros(n, n, dtype=torch.long)
        with torch.no_grad():
            for xb, yb in loader:
                logits = learn.model(xb).float()
                yb = yb.long()
                per_pixel = F.cross_entropy(logits, yb, ignore_index=IGNORE_INDEX, reduction="none")
                counted = (yb != IGNORE_INDEX).sum(dim=(1, 2)).clamp_min(1)
                losses.append((per_pixel.sum(dim=(1, 2)) / counted).cpu())
                pred = logits.argmax(dim=1)
                for p, t in zip(pred, yb, strict=True):
                    cm = pixel_confusion(p[None], t[None], n).cpu()
                    self.confusion += cm
                    pixel_acc.append(float(cm.diag().sum() / cm.sum().clamp_min(1)))
                    ious.append(float(iou_per_class(cm).nanmean()))
                preds.append(pred.to(torch.int16).cpu())
        self.losses = torch.cat(losses)
        self.item_accuracy, self.item_iou = pixel_acc, ious
        self.preds = torch.cat(preds)
        self.baseline_class = self._majority_class(baseline_items)

    def _majority_class(self, max_items: int) -> int:
        """The class most frequent in (up to max_items of) the training masks: the trivial baseline."""
        train = self.learn.dls.train.dataset
        step = max(1, len(train) // max_items)
        counts = np.zeros(len(self.classes), dtype=np.int64)
        for i in range(0, len(train), step):  # the mask files alone, at their own size: no image is decoded
            classes = train.mask_lut[np.asarray(open_mask(train.items.mask_path(train.indices[i])))]
            counts += np.bincount(classes[classes != IGNORE_INDEX], minlength=len(self.classes))
        return int(counts.argmax())

    def per_class(self) -> dict[str, dict[str, float]]:
        """IoU, Dice, recall (pixel accuracy within the class) and pixel shares per class."""
        cm = self.confusion.double()
        iou, dice = iou_per_class(self.confusion), dice_per_class(self.confusion)
        total = cm.sum().clamp_min(1)
        out = {}
        for i, c in enumerate(self.classes):
            actual = float(cm[i].sum())
            out[c] = {
                "iou": float(iou[i]),
                "dice": float(dice[i]),
                "recall": float(cm[i, i]) / actual if actual else float("nan"),
                "share_actual": actual / float(total),
                "share_predicted": float(cm[:, i].sum() / total),
            }
        return out

    def baseline(self) -> dict[str, Any]:
        """Pixel accuracy and mean IoU of predicting the majority training class everywhere."""
        cm = self.confusion.double()
        b = self.baseline_class
        constant = torch.zeros_like(cm)
        constant[:, b] = cm.sum(dim=1)  # every actual pixel predicted as the majority class
        return {
            "class": self.classes[b],
            "pixel_accuracy": float(cm[b].sum() / cm.sum().clamp_min(1)),
            "mean_iou": float(iou_per_class(constant.long()).nanmean()),
        }

    def top_losses(self, k: int = 6) -> list[dict[str, Any]]:
        """The k validation images with the highest mean pixel loss."""
        idx = torch.topk(self.losses, min(k, len(self.losses))).indices.tolist()
        return [
            {
                "item": self.dataset.key(i),
                "loss": float(self.losses[i]),
                "pixel_accuracy": self.item_accuracy[i],
                "mean_iou": self.item_iou[i],
            }
            for i in idx
        ]

    def as_dict(self, k: int = 6) -> dict[str, Any]:
        """Everything above as plain data, for JSON (NaN, for a class absent everywhere, becomes null)."""
        cm = self.confusion
        per_class = {c: {m: (None if v != v else v) for m, v in row.items()} for c, row in self.per_class().items()}
        return {
            "task": "segmentation",
            "classes": self.classes,
            "pixel_accuracy": float(cm.diag().sum() / cm.sum().clamp_min(1)),
            "mean_iou": float(iou_per_class(cm).nanmean()),
            "dice": float(dice_per_class(cm).nanmean()),
            "per_class": per_class,
            "baseline_majority_class": self.baseline(),
            "confusion_pixels": cm.tolist(),
            "top_losses": self.top_losses(k),
        }

    def plot_top_losses(self, path: str | Path, k: int = 6) -> Path:
        """The worst images: image, true mask, predicted mask."""
        idx = torch.topk(self.losses, min(k, len(self.losses))).indices.tolist()
        samples = [self.dataset[i] for i in idx]
        images = torch.stack([s[0] for s in samples]).float() / 255
        titles = [f"{self.dataset.key(i)}\nloss {self.losses[i]:.2f}  iou {self.item_iou[i]:.2f}" for i in idx]
        return plot_mask_rows(images, [s[1] for s in samples], [self.preds[i] for i in idx], titles, self.classes, path)

    def plot_per_class_iou(self, path: str | Path) -> Path:
        """Per-class IoU as bars."""
        return plot_bars({c: row["iou"] for c, row in self.per_class().items()}, path, "IoU")

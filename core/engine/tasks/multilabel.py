"""Multi-label classification: any number of classes per image [fastai: MultiCategoryBlock]. A sigmoid
per class with binary cross-entropy; F-beta (beta 2) as the main metric; one decision threshold per class,
tuned on the validation set after training and stored in the export bundle so prediction applies them
(fastai uses one global threshold)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core.engine.errors import BundleError, DataError
from core.engine.interpret import TopLossHeatmaps, ValidOutputs, heatmap_artifact, preds_and_targs, validation_images
from core.engine.items import MultiLabelItems
from core.engine.metrics import fbeta
from core.engine.plots import plot_images, plot_threshold_curves
from core.engine.tasks.base import Correction, Doubt, Grid, Prediction, Scores, Task, check_label, manifest_field
from core.engine.tasks.classification import ClassificationTask, ClassPrediction

if TYPE_CHECKING:
    from core.engine.data import ImageDataLoaders
    from core.engine.inference import Predictor
    from core.engine.learner import Learner

DEFAULT_THRESHOLD = 0.2  # the course's accuracy_thresh default, until tuned

GRID = [round(0.05 * i, 2) for i in range(1, 20)]  # 0.05 ... 0.95


def fbeta_per_class(probs: torch.Tensor, targs: torch.Tensor, thresh: float, beta: float = 2.0) -> torch.Tensor:
    """F-beta of each class (column) at one threshold."""
    pred = (probs > thresh).float()
    tp = (pred * targs).sum(0)
    precision = tp / pred.sum(0).clamp_min(1e-9)
    recall = tp / targs.sum(0).clamp_min(1e-9)
    b2 = beta**2
    return (1 + b2) * precision * recall / (b2 * precision + recall).clamp_min(1e-9)


def threshold_curve(
    probs: torch.Tensor, targs: torch.Tensor, beta: float = 2.0
) -> tuple[list[float], list[list[float]]]:
    """The grid, and each class's F-beta at every threshold of it ([class][threshold])."""
    scores = torch.stack([fbeta_per_class(probs, targs, t, beta) for t in GRID], dim=1)
    return GRID, scores.tolist()


def tune_thresholds(
    probs: torch.Tensor, targs: torch.Tensor, beta: float = 2.0, default: float = DEFAULT_THRESHOLD
) -> list[float]:
    """Per class, the grid threshold with the best validation F-beta (the default when a class has no
    positive in the validation set, where every threshold scores zero)."""
    grid, scores = threshold_curve(probs, targs, beta)
    out = []
    for c, row in enumerate(scores):
        if targs[:, c].sum() == 0:
            out.append(default)
            continue
        best = max(row)
        out.append(grid[row.index(best)])
    return out


@dataclass(frozen=True)
class MultiLabelPrediction(ClassPrediction):
    """Every class above its tuned threshold (`labels`); label/index are the most probable class."""

    labels: list[str]
    thresholds: list[float]

    def answer(self) -> dict[str, Any]:
        return super().answer() | {"labels": self.labels}

    def text(self) -> str:
        return " ".join(self.labels) or "(no label above its threshold)"

    @property
    def uncertainty(self) -> float:
        """How close the class nearest its threshold is to it: 1 on the threshold, 0 at 0 or 1."""
        return max(
            1.0 - abs(p - t) / (t if p < t else 1.0 - t) for p, t in zip(self.probs, self.thresholds, strict=True)
        )


class MultiLabelInterpretation:
    """Multi-label mistakes: per-label confusion counts, the F-beta-vs-threshold curve of each label,
    the tuned thresholds, and the items with the highest binary cross-entropy."""

    def __init__(
        self, learn: Learner, thresholds: list[float] | None = None, outputs: ValidOutputs | None = None
    ) -> None:
        self.learn = learn
        self.classes = learn.dls.classes
        logits, self.targs = preds_and_targs(learn, outputs)  # the thresholds are tuned on these too
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
        out: list[dict[str, Any]] = []
        for i in torch.topk(self.losses, min(k, len(self.losses))).indices.tolist():
            out.append(
                {
                    "item": self.dataset.key(i),
                    "actual": [c for c, on in zip(self.classes, self.targs[i].tolist(), strict=True) if on],
                    "predicted": [c for c, on in zip(self.classes, pred[i].tolist(), strict=True) if on],
                    "loss": float(self.losses[i]),
                    "heatmap": heatmap_artifact(len(out)),
                    "heatmap_class": self.classes[int(self.probs[i].argmax())],  # its most probable class
                }
            )
        return out

    def as_dict(self, k: int = 9) -> dict[str, object]:
        """Everything above as plain data, for JSON."""
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

    def plots(self, k: int = 9) -> list[tuple[str, Callable[[Path], Path]]]:
        tops = [(str(t["item"]), self.classes.index(str(t["heatmap_class"]))) for t in self.top_losses(k)]
        return [
            ("plots/threshold_curve.png", self.plot_threshold_curve),
            ("plots/top_losses.png", self.plot_top_losses),
            *TopLossHeatmaps(self.learn).plots(tops),
        ]

    def plot_threshold_curve(self, path: str | Path) -> Path:
        """F-beta against the threshold for each label, tuned thresholds marked."""
        grid, curve = threshold_curve(self.probs, self.targs)
        return plot_threshold_curves(grid, dict(zip(self.classes, curve, strict=True)), self.thresholds, path)

    def plot_top_losses(self, path: str | Path, k: int = 9) -> Path:
        """The top-loss images titled predicted / actual / loss."""
        tops = self.top_losses(k)
        images = validation_images(self.learn, [str(t["item"]) for t in tops])
        titles = [
            f"{' '.join(map(str, t['predicted'])) or '-'}/{' '.join(map(str, t['actual']))}\n{t['loss']:.2f}"
            for t in tops
        ]
        return plot_images(images, titles, path, "predicted/actual/loss")


class MultiLabelTask(Task):
    name: ClassVar[str] = "multilabel"
    explains: ClassVar[bool] = True
    items_type = MultiLabelItems
    metrics = ("accuracy_thresh", "fbeta")
    main_metric = "fbeta"
    result_keys = ("error_rate", "per_label", "thresholds")
    activation = "sigmoid"
    answer_fields: ClassVar[dict[str, tuple[Any, str]]] = ClassificationTask.answer_fields | {
        "labels": (list[str], "every class above its tuned threshold (the answer)")
    }

    def mix_labels(self, answer: dict[str, Any]) -> list[str] | None:
        """Every label given; an empty set counts as "(none)"."""
        labels = answer.get("labels")
        return ([str(x) for x in labels] or ["(none)"]) if isinstance(labels, list) else None

    def tuned_thresholds(self, summary_or_manifest: dict[str, Any]) -> list[float] | None:
        found = summary_or_manifest.get("thresholds")
        return [float(t) for t in found] if isinstance(found, list) else None

    def target(self, items: MultiLabelItems, i: int, grid: Grid) -> torch.Tensor:
        """A multi-hot float vector."""
        hot = torch.zeros(len(items.classes))
        for c in items.label_set(i):
            hot[items.class_index[c]] = 1.0
        return hot

    def loss(self) -> nn.Module:
        return nn.BCEWithLogitsLoss()

    def manifest_fields(self, dls: ImageDataLoaders, thresholds: list[float] | None) -> dict[str, Any]:
        return {"thresholds": thresholds or [DEFAULT_THRESHOLD] * len(dls.classes)}

    def check_manifest(self, manifest: dict[str, Any], where: Path) -> None:
        super().check_manifest(manifest, where)
        n_out = manifest["n_out"]
        thresholds = manifest_field(manifest, "thresholds", list, where)
        if len(thresholds) != n_out or not all(isinstance(t, int | float) and 0 < t < 1 for t in thresholds):
            raise BundleError(f"{where}: a multilabel bundle needs {n_out} thresholds in (0, 1)")

    def decode(self, output: torch.Tensor, image: Image.Image, predictor: Predictor) -> MultiLabelPrediction:
        p = output.sigmoid()
        i, probs = int(p.argmax()), p.tolist()
        thresholds = predictor.manifest["thresholds"]
        chosen = [c for c, v, t in zip(predictor.classes, probs, thresholds, strict=True) if v > t]
        return MultiLabelPrediction(predictor.classes[i], i, probs, predictor.classes, chosen, list(thresholds))

    def interpret(
        self, learn: Learner, thresholds: list[float] | None = None, outputs: ValidOutputs | None = None
    ) -> MultiLabelInterpretation:
        return MultiLabelInterpretation(learn, thresholds, outputs)

    def correction(self, body: dict[str, Any], manifest: dict[str, Any], image_size: tuple[int, int]) -> Correction:
        labels = body.get("labels")
        if not isinstance(labels, list) or len(labels) > 1000:
            raise DataError('labels: a multi-label target is {"labels": [CLASS, ...]} (new classes are allowed)')
        return Correction({"labels": sorted({check_label(c, "labels") for c in labels})})

    def confirmed(self, answer: dict[str, Any]) -> Correction:
        return Correction({"labels": list(answer["labels"])})

    def record(self, target: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
        delim = manifest["labels"]["label_delim"]
        if any(delim in c for c in target["labels"]):
            raise DataError(f"labels: a class name cannot hold the dataset's label delimiter {delim!r}")
        return {"label": delim.join(target["labels"])}

    def doubt(self, prediction: Prediction, items: MultiLabelItems, i: int) -> Doubt:
        """The mean binary cross-entropy of the given label set under the answer's probabilities (a given class
        the model does not know counts as probability 0)."""
        assert isinstance(prediction, MultiLabelPrediction)
        given = set(items.label_set(i))
        terms = [
            -math.log(max(p if c in given else 1.0 - p, 1e-12))
            for c, p in zip(prediction.classes, prediction.probs, strict=True)
        ]
        terms += [-math.log(1e-12) for c in given if c not in prediction.classes]
        return Doubt(sum(terms) / max(1, len(terms)), {"labels": sorted(given)}, {"labels": list(prediction.labels)})

    def score(self, predictions: Sequence[Prediction], items: MultiLabelItems, indices: Sequence[int]) -> Scores:
        """F-beta (beta 2) of the predicted label sets, averaged over items; recall per true class."""
        b2, each, hits = 4.0, list[float](), dict[str, list[float]]()
        for p, i in zip(predictions, indices, strict=True):
            assert isinstance(p, MultiLabelPrediction)
            true, pred = set(items.label_set(i)), set(p.labels)
            tp = len(true & pred)
            precision, recall = tp / max(1, len(pred)), tp / max(1, len(true))
            each.append((1 + b2) * precision * recall / (b2 * precision + recall) if precision + recall else 0.0)
            for c in true:
                hits.setdefault(c, []).append(float(c in pred))
        return Scores.of_items("fbeta", True, each, hits)

    def show_batch(self, images: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], path: Path) -> Path:
        titles = [
            " ".join(c for c, on in zip(classes, y.tolist(), strict=True) if on > 0.5) or "(none)" for y in targets
        ]
        return plot_images(images, titles, path)

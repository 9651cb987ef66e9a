"""Metrics over a whole validation set: functions of (logits, targets) that return a float."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from core.engine.items import IGNORE_INDEX

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def accuracy(preds: torch.Tensor, targs: torch.Tensor) -> float:
    """Share of items whose top prediction is the target."""
    return (preds.argmax(dim=1) == targs).float().mean().item()


def error_rate(preds: torch.Tensor, targs: torch.Tensor) -> float:
    """1 - accuracy."""
    return 1.0 - accuracy(preds, targs)


def top_k_accuracy(preds: torch.Tensor, targs: torch.Tensor, k: int = 5) -> float:
    """Share of items whose target is among the k highest predictions."""
    k = min(k, preds.shape[1])
    return (preds.topk(k, dim=1).indices == targs[:, None]).any(dim=1).float().mean().item()


def accuracy_thresh(preds: torch.Tensor, targs: torch.Tensor, thresh: float = 0.2) -> float:
    """Multi-label: share of (item, class) pairs where sigmoid(logit) > thresh matches the target
    [fastai: accuracy_thresh, thresh 0.2 as the course sets it]."""
    return ((preds.sigmoid() > thresh) == targs.bool()).float().mean().item()


def fbeta(preds: torch.Tensor, targs: torch.Tensor, beta: float = 2.0, thresh: float = 0.2, eps: float = 1e-9) -> float:
    """Multi-label F-beta averaged over items (beta 2 weighs recall up) [fastai v1: fbeta]."""
    pred = (preds.sigmoid() > thresh).float()
    true = targs.float()
    tp = (pred * true).sum(dim=1)
    precision, recall = tp / (pred.sum(dim=1) + eps), tp / (true.sum(dim=1) + eps)
    b2 = beta**2
    return ((1 + b2) * precision * recall / (b2 * precision + recall + eps)).mean().item()


def point_error(preds: torch.Tensor, targs: torch.Tensor) -> float:
    """Points: mean distance between predicted and true points, as a share of the image side
    (coordinates are in [-1, 1], so half the distance there)."""
    diff = (preds - targs).view(len(preds), -1, 2)
    return (diff.norm(dim=2) / 2).mean().item()


def mae(preds: torch.Tensor, targs: torch.Tensor) -> float:
    """Values: mean absolute error."""
    return (preds - targs).abs().mean().item()


def rmse(preds: torch.Tensor, targs: torch.Tensor) -> float:
    """Values: root mean squared error."""
    return (preds - targs).pow(2).mean().sqrt().item()


def _pixel_classes(preds: torch.Tensor) -> torch.Tensor:
    """Segmentation: per-pixel class indices from logits (N, C, H, W), or the indices themselves (N, H, W)."""
    return preds.argmax(dim=1) if preds.ndim == 4 else preds.long()


def pixel_confusion(preds: torch.Tensor, targs: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Segmentation: pixel counts of (actual, predicted) over the non-void pixels, n x n."""
    pred = _pixel_classes(preds)
    keep = targs != IGNORE_INDEX
    t, p = targs[keep].long(), pred[keep]
    if n is None:
        both = torch.cat([t, p, torch.zeros(1, dtype=torch.long, device=t.device)])
        n = preds.shape[1] if preds.ndim == 4 else int(both.max()) + 1
    return torch.bincount(t * n + p, minlength=n * n).reshape(n, n)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """Intersection over union of each class from a pixel confusion matrix; NaN where a class is absent
    from both the targets and the predictions."""
    cm = cm.double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))


def dice_per_class(cm: torch.Tensor) -> torch.Tensor:
    """Dice (2|P∩T| / (|P| + |T|)) of each class; NaN where a class is absent from both."""
    cm = cm.double()
    total = cm.sum(0) + cm.sum(1)
    return torch.where(total > 0, 2 * cm.diag() / total.clamp_min(1), torch.full_like(total, float("nan")))


def pixel_accuracy(preds: torch.Tensor, targs: torch.Tensor) -> float:
    """Segmentation: share of non-void pixels whose predicted class is right [fastai: acc_camvid]."""
    keep = targs != IGNORE_INDEX
    return (_pixel_classes(preds)[keep] == targs[keep]).float().mean().item()


def dice(preds: torch.Tensor, targs: torch.Tensor) -> float:
    """Segmentation: Dice averaged over the classes present in targets or predictions [fastai: DiceMulti]."""
    return float(dice_per_class(pixel_confusion(preds, targs)).nanmean())


def mean_iou(preds: torch.Tensor, targs: torch.Tensor) -> float:
    """Segmentation: intersection over union averaged over the classes present [fastai: JaccardCoeffMulti]."""
    return float(iou_per_class(pixel_confusion(preds, targs)).nanmean())


METRICS: dict[str, Metric] = {
    "error_rate": error_rate,
    "accuracy": accuracy,
    "top_3_accuracy": partial(top_k_accuracy, k=3),
    "top_5_accuracy": partial(top_k_accuracy, k=5),
    "accuracy_thresh": accuracy_thresh,
    "accuracy_multi": partial(accuracy_thresh, thresh=0.5),  # fastai's accuracy_multi: a text's labels at 0.5
    "fbeta": fbeta,
    "point_error": point_error,
    "mae": mae,
    "rmse": rmse,
    "pixel_accuracy": pixel_accuracy,
    "dice": dice,
    "mean_iou": mean_iou,
}


# The metrics (and losses) that get better as they fall; every other metric gets better as it rises.
LOWER_IS_BETTER = frozenset({"error_rate", "point_error", "mae", "rmse", "valid_loss", "train_loss", "perplexity"})


def get_metric(name: str) -> Metric:
    """Look a metric up by name."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric '{name}'; choose from: {', '.join(METRICS)}") from None


def metric_name(metric: Metric) -> str:
    """The column name of a metric: its registered name, else its function name."""
    for name, known in METRICS.items():
        if known is metric:
            return name
    return getattr(metric, "__name__", type(metric).__name__)

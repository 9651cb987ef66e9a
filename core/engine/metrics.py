"""Metrics over a whole validation set: functions of (logits, targets) that return a float."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

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


METRICS: dict[str, Metric] = {
    "error_rate": error_rate,
    "accuracy": accuracy,
    "top_3_accuracy": partial(top_k_accuracy, k=3),
    "top_5_accuracy": partial(top_k_accuracy, k=5),
    "accuracy_thresh": accuracy_thresh,
    "fbeta": fbeta,
    "point_error": point_error,
    "mae": mae,
    "rmse": rmse,
}
TASK_METRICS = {
    "classification": ("error_rate", "accuracy"),
    "multilabel": ("accuracy_thresh", "fbeta"),
    "points": ("point_error",),
    "values": ("mae", "rmse"),
}
MULTI_LABEL_METRICS = ("accuracy_thresh", "fbeta")


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

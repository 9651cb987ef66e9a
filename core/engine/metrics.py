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


METRICS: dict[str, Metric] = {
    "error_rate": error_rate,
    "accuracy": accuracy,
    "top_3_accuracy": partial(top_k_accuracy, k=3),
    "top_5_accuracy": partial(top_k_accuracy, k=5),
}


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

"""Multi-label thresholds: one per class, tuned on the validation set after training and stored in the
export bundle so prediction applies them (fastai uses one global threshold)."""

from __future__ import annotations

import torch

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


def tune_thresholds(probs: torch.Tensor, targs: torch.Tensor, beta: float = 2.0, default: float = 0.2) -> list[float]:
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

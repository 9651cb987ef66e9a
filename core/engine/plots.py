"""PNG plots: show_batch, loss curves, the lr_find curve, the confusion matrix and the top-losses grid.
Each writes a file; none opens a window (matplotlib's Agg backend). Each draws on its own Figure, never
through pyplot's global state, so that plots can be drawn on a thread of their own while a job goes on."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches
import numpy as np
import torch
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # a Figure outside pyplot: nothing to close
    return path


def _grid(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def class_colours(n: int) -> list[tuple[float, float, float]]:
    """One RGB colour per class (tab20, repeating past 20)."""
    cmap = matplotlib.colormaps["tab20"]
    return [(r, g, b) for r, g, b, _ in (cmap(i % 20) for i in range(n))]


def mask_overlay(image: torch.Tensor, mask: torch.Tensor, n_classes: int, alpha: float = 0.5) -> np.ndarray:
    """An HWC image with each pixel tinted by its class colour (tab20); void pixels (< 0) left as they are."""
    colours = torch.tensor(class_colours(max(1, n_classes)))
    img = image.permute(1, 2, 0).cpu().float()
    m = mask.cpu().long()
    tint = colours[m.clamp(0, len(colours) - 1)].float()
    out = torch.where((m >= 0)[..., None], (1 - alpha) * img + alpha * tint, img)
    return out.clamp(0, 1).numpy()


def plot_images(
    images: torch.Tensor,
    titles: Sequence[str],
    path: str | Path,
    title: str = "",
    points: Sequence[torch.Tensor] | None = None,
    predicted: Sequence[torch.Tensor] | None = None,
    masks: Sequence[torch.Tensor] | None = None,
    classes: Sequence[str] = (),
) -> Path:
    """A grid of CHW float images in [0, 1], each with its title; points (K x 2 in [-1, 1]) drawn as
    green dots, predicted points as red crosses; masks (H x W class indices) as a tint."""
    rows, cols = _grid(len(titles))
    fig = Figure(figsize=(cols * 2.2, rows * 2.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, img, t) in enumerate(zip(axes.flat, images, titles, strict=False)):
        shown = mask_overlay(img, masks[i], len(classes)) if masks is not None else img.permute(1, 2, 0).cpu().numpy()
        ax.imshow(shown)
        ax.set_title(t, fontsize=8)
        h, w = img.shape[-2:]
        for pts, style in [(points, "o"), (predicted, "x")]:
            if pts is not None:
                xy = (pts[i].view(-1, 2).cpu() + 1) / 2
                ax.plot(xy[:, 0] * w, xy[:, 1] * h, style, color="lime" if style == "o" else "red", markersize=6)
    if title:
        fig.suptitle(title)
    if masks is not None:
        _legend(fig, classes)
    return _save(fig, path)


def show_batch(dls: Any, path: str | Path, max_n: int = 16, valid: bool = False) -> Path:
    """The first (augmented, for train) batch with its targets, drawn by the task [fastai: show_batch]."""
    xb, yb = dls.one_batch(valid=valid)
    n = min(max_n, len(yb))
    return Path(dls.task.show_batch(dls.normalize.decode(xb[:n]), yb[:n], dls.classes, Path(path)))


def loss_points(
    batches: Sequence[dict[str, Any]], epochs: Sequence[dict[str, Any]]
) -> tuple[list[int], list[tuple[int, float]], list[tuple[int, str]]]:
    """Where the loss curve's points go on one axis counting the batches of the whole job: each training batch
    in the order it ran, each validation loss where its epoch's batches ended, and where each stage after the
    first starts (stage 2 after stage 1 goes on from where stage 1 ended, not from 0)."""
    ends: dict[tuple[Any, Any], int] = {}  # (stage, epoch) -> batches processed when it ended
    for x, b in enumerate(batches):
        ends[(b.get("tag"), b.get("epoch"))] = x + 1
    valid = [(ends.get((e.get("tag"), e.get("epoch"))), e.get("valid_loss")) for e in epochs]
    tags = [b.get("tag") for b in batches]
    starts = [(x, str(tags[x])) for x in range(1, len(tags)) if tags[x] != tags[x - 1]]
    return list(range(len(batches))), [(x, float(v)) for x, v in valid if x is not None and v is not None], starts


def plot_losses(batches: Sequence[dict[str, Any]], epochs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Training loss per batch (smoothed) and validation loss per epoch, on one axis over the whole job, with a
    line where each later stage starts."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    xs, valid, starts = loss_points(batches, epochs)
    if batches:
        ax.plot(xs, [b["smooth_loss"] for b in batches], label="train (smoothed)")
    for x, tag in starts:
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.annotate(tag, (x, 1), xycoords=("data", "axes fraction"), va="top", fontsize=8, color="grey")
    if valid:
        ax.plot([x for x, _ in valid], [v for _, v in valid], "o-", label="valid")
    ax.set_xlabel("batches processed")
    ax.set_ylabel("loss")
    ax.legend()
    return _save(fig, path)


def plot_lr_find(
    lrs: Sequence[float], losses: Sequence[float], suggestions: dict[str, float], path: str | Path
) -> Path:
    """The lr_find curve on a log axis, with each suggestion marked."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    markers = ["o", "v", "s", "D"]
    for (name, lr), marker in zip(suggestions.items(), markers, strict=False):
        y = float(np.interp(math.log10(lr), np.log10(lrs), losses))
        ax.plot(lr, y, marker, markersize=8, label=f"{name}: {lr:.2e}")
    if suggestions:
        ax.legend()
    return _save(fig, path)


def plot_threshold_curves(
    grid: Sequence[float], curves: dict[str, list[float]], chosen: Sequence[float], path: str | Path
) -> Path:
    """F-beta against the decision threshold, one line per label, each tuned threshold marked."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for (name, ys), t in zip(curves.items(), chosen, strict=True):
        (line,) = ax.plot(grid, ys, label=name)
        ax.plot(t, float(np.interp(t, grid, ys)), "o", color=line.get_color())
    ax.set_xlabel("threshold")
    ax.set_ylabel("F-beta (beta 2)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: str | Path) -> Path:
    """The confusion matrix with counts in each cell (rows: actual, columns: predicted)."""
    n = len(classes)
    fig = Figure(figsize=(max(4, n * 0.6), max(4, n * 0.6)))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90)
    ax.set_yticks(range(n), classes)
    thresh = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                color="white" if cm[i, j] > thresh else "black",
                fontsize=8,
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    return _save(fig, path)


def plot_mask_rows(
    images: torch.Tensor,
    actual: Sequence[torch.Tensor],
    predicted: Sequence[torch.Tensor],
    titles: Sequence[str],
    classes: Sequence[str],
    path: str | Path,
) -> Path:
    """One row per image: the image, its true mask and the predicted mask, tinted by class, with a legend."""
    n = len(titles)
    fig = Figure(figsize=(7.2, 2.4 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for r in range(n):
        panels = [
            (images[r].permute(1, 2, 0).cpu().numpy(), titles[r]),
            (mask_overlay(images[r], actual[r], len(classes)), "actual"),
            (mask_overlay(images[r], predicted[r], len(classes)), "predicted"),
        ]
        for ax, (shown, t) in zip(axes[r], panels, strict=True):
            ax.imshow(shown)
            ax.set_title(t, fontsize=8)
            ax.axis("off")
    _legend(fig, classes)
    fig.subplots_adjust(top=1 - 0.4 / (2.4 * n))
    return _save(fig, path)


def _legend(fig: Figure, classes: Sequence[str]) -> None:
    colours = class_colours(len(classes))
    handles = [matplotlib.patches.Patch(color=colours[i], label=c) for i, c in enumerate(classes)]
    fig.legend(handles=handles, loc="upper center", ncol=min(6, len(classes)), fontsize=7)


def plot_bars(values: dict[str, float], path: str | Path, ylabel: str) -> Path:
    """One bar per name (per-class IoU, for example)."""
    fig = Figure(figsize=(max(4, len(values) * 0.6), 3.5))
    ax = fig.subplots()
    ax.bar(list(values), [0.0 if math.isnan(v) else v for v in values.values()])
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.tick_params(axis="x", rotation=90)
    return _save(fig, path)

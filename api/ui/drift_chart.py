"""A model's drift scores over time as an SVG line chart drawn on the server (no script): one line per signal,
the alarm's bar dashed across. The registry page draws it large, the models page small (a sparkline)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from api.schemas import DriftPointPublic

SIGNAL_COLOURS = {"uncertainty": "#1f77b4", "class_mix": "#2ca02c", "input": "#d62728"}


@dataclass(frozen=True)
class Chart:
    """What the template draws: each signal's polyline points ('x,y ...'), the threshold's y, the axis' top."""

    width: int
    height: int
    lines: dict[str, str]
    dots: dict[str, tuple[str, str]]  # each signal's latest point (x, y): one point draws no line
    colours: dict[str, str]
    threshold_y: float | None
    top: float
    first: datetime | None
    last: datetime | None


def chart(history: list[DriftPointPublic], threshold: float | None, width: int = 480, height: int = 120) -> Chart:
    """The lines of the points in `history` (oldest first), the newest at the right edge. The y axis runs from 0 to
    the highest score, at least 1.5 and at most 4 x the threshold (higher scores are drawn at the top), so the
    threshold's line is always in view and a score far past it does not flatten the rest."""
    line = threshold if threshold is not None else 0.25
    highest = max([0.0] + [v for p in history for v in p.scores.values()])
    top = min(max(1.5 * line, highest), 4 * line)
    t_last = history[-1].at.timestamp() if history else 0.0
    span = (t_last - history[0].at.timestamp()) if len(history) > 1 else 0.0

    def xy(at: datetime, value: float) -> str:
        x = width - 2 - ((t_last - at.timestamp()) / span * (width - 4) if span else 0.0)
        y = height - 2 - min(value, top) / top * (height - 4)
        return f"{x:.1f},{y:.1f}"

    lines = {
        signal: " ".join(xy(p.at, p.scores[signal]) for p in history if signal in p.scores)
        for signal in SIGNAL_COLOURS
        if any(signal in p.scores for p in history)
    }
    dots = {signal: points.rsplit(" ", 1)[-1].split(",", 1) for signal, points in lines.items()}
    threshold_y = height - 2 - threshold / top * (height - 4) if threshold is not None else None
    return Chart(
        width,
        height,
        lines,
        {k: (x, y) for k, (x, y) in dots.items()},
        SIGNAL_COLOURS,
        threshold_y,
        top,
        history[0].at if history else None,
        history[-1].at if history else None,
    )

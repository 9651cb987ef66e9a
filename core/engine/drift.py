"""Drift: is what a served model sees still what it was trained on? [issue 26]

At export, `build_reference` answers the validation images with the exported bundle, as a served model answers,
and keeps three distributions (`drift_reference.json` in the bundle):
- `uncertainty`: the task's uncertainty of each answer (classification: 1 - the margin of the top two; the
  same number the prediction log keeps and the active-learning queue sorts by);
- `class_mix`: the share of answers of each class (classification: the top class; multi-label: each label
  given, "(none)" for an empty set; other tasks have none);
- `input`: a cheap statistic of each image (`input_stats`: its per-channel mean and standard deviation in
  [0, 1], and the log of its pixel count).

A window of served answers is compared with it by the population stability index (PSI) [the credit-scoring
rule of thumb: < 0.1 no shift, 0.1-0.25 some, > 0.25 a significant one]: `sum((a - e) * ln(a / e))` over bins of
the reference's deciles (for the input: each feature apart, the largest counts). `explain` says what moved: from
what to what, and which answers show it best.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageStat

REFERENCE_FILE = "drift_reference.json"
REFERENCE_FORMAT = 1
SIGNALS = ("uncertainty", "class_mix", "input")
INPUT_FEATURES = ("mean_red", "mean_green", "mean_blue", "std_red", "std_green", "std_blue", "log_pixels")
STATS_SIDE = 64  # the statistic is taken over a grid of at most this many pixels a side
MAX_REFERENCE_ITEMS = 500  # validation images answered for the reference (a seeded sample of larger sets)
QUANTILES = tuple(q / 10 for q in range(1, 10))  # deciles: the bins' cut points
FLOOR = 1e-3  # a bin's share is at least this in the PSI (an empty bin would make it infinite)
MIN_REFERENCE = 50  # validation answers a reference needs: fewer, and its deciles are mostly noise (not watched)
NONE_LABEL = "(none)"  # a multi-label answer with no label
MAX_CLASSES = 1000  # classes kept in a class mix (the most frequent); the rest count as "(other)"
OTHER_LABEL = "(other)"


def input_stats(image: Image.Image) -> list[float]:
    """An RGB image's cheap statistic: per-channel mean and standard deviation in [0, 1], of a grid of at most
    STATS_SIDE x STATS_SIDE of its pixels (nearest-neighbour sampling: its cost does not grow with the image, about
    0.1 ms; a 4,096-pixel sample's mean is within about 0.005 of the whole image's), and ln(width x height)."""
    side = (min(image.width, STATS_SIDE), min(image.height, STATS_SIDE))
    stat = ImageStat.Stat(image if side == image.size else image.resize(side, Image.Resampling.NEAREST))
    mean = [round(v / 255.0, 5) for v in stat.mean[:3]]
    std = [round(v / 255.0, 5) for v in stat.stddev[:3]]
    return [*mean, *std, round(math.log(image.width * image.height), 5)]


@dataclass(frozen=True)
class Histogram:
    """A reference distribution of one number: the cut points (its deciles, repeats removed) and the share of
    the reference in each bin, with its mean, standard deviation and median. A value equal to a cut point has a
    bin of its own, so a constant reference (every image 28 x 28) still tells smaller from larger."""

    cuts: list[float]
    shares: list[float]
    mean: float
    sd: float
    median: float

    @staticmethod
    def bins(cuts: Sequence[float], values: Iterable[float]) -> np.ndarray:
        """Each value's bin: below the first cut, at it, between it and the next, ... above the last (2k + 1)."""
        v = np.asarray(list(values), dtype=np.float64)
        c = np.asarray(cuts, dtype=np.float64)
        return np.searchsorted(c, v, side="left") + np.searchsorted(c, v, side="right")

    @classmethod
    def of(cls, values: Sequence[float]) -> Histogram:
        v = np.asarray(values, dtype=np.float64)
        cuts = sorted({float(q) for q in np.quantile(v, QUANTILES)})
        counts = np.bincount(cls.bins(cuts, v), minlength=2 * len(cuts) + 1)
        return cls(
            cuts=cuts,
            shares=(counts / len(v)).round(6).tolist(),
            mean=float(v.mean()),
            sd=float(v.std()),
            median=float(np.median(v)),
        )

    def shares_of(self, values: Sequence[float]) -> list[float]:
        counts = np.bincount(self.bins(self.cuts, values), minlength=len(self.shares))
        return (counts / max(1, len(values))).tolist()

    def psi(self, values: Sequence[float]) -> float:
        return psi(self.shares, self.shares_of(values))

    def as_dict(self) -> dict[str, Any]:
        return {"cuts": self.cuts, "shares": self.shares, "mean": self.mean, "sd": self.sd, "median": self.median}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        """A histogram read back, checked: at most len(QUANTILES) sorted finite cuts, 2k + 1 shares in [0, 1]."""
        cuts = [_finite(c) for c in d["cuts"]]
        shares = [_finite(x) for x in d["shares"]]
        if len(cuts) > len(QUANTILES) or cuts != sorted(cuts) or len(shares) != 2 * len(cuts) + 1:
            raise ValueError("a histogram's cuts are not sorted deciles, or its shares do not match them")
        if any(not 0 <= x <= 1 for x in shares):
            raise ValueError("a histogram's shares are not in [0, 1]")
        return cls(cuts, shares, _finite(d["mean"]), _finite(d["sd"]), _finite(d["median"]))


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """The population stability index of `actual` shares against `expected` ones (the same bins): 0 when they
    are equal, growing as they part; each share is floored at FLOOR."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def noise_allowance(reference_items: int, window: int) -> float:
    """What the PSI over deciles reaches by sampling alone when nothing shifted: about (bins - 1) x (1/n_reference +
    1/n_window), its expected value under no shift (measured: a 100-item reference and 500-answer windows of the
    same images gave up to 0.25; 300 items up to 0.08). An alarm's bar is the project's threshold plus this, so a
    small validation set does not raise alarms on its own."""
    return len(QUANTILES) * (1 / max(1, reference_items) + 1 / max(1, window))


def mix(labels: Iterable[Sequence[str]], known: Sequence[str] | None = None) -> dict[str, float]:
    """The share of each label among all the labels given (each answer gives one or more); labels outside
    `known` count as OTHER_LABEL."""
    counts: Counter[str] = Counter()
    kept = set(known) if known is not None else None
    for given in labels:
        for label in given[:MAX_CLASSES]:
            counts[label if kept is None or label in kept else OTHER_LABEL] += 1
    total = sum(counts.values()) or 1
    return {label: n / total for label, n in counts.items()}


@dataclass(frozen=True)
class Reference:
    """What a model's validation answers looked like at export (see the module's docstring)."""

    items: int
    uncertainty: Histogram
    class_mix: dict[str, float] | None
    inputs: dict[str, Histogram]

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": REFERENCE_FORMAT,
            "items": self.items,
            "uncertainty": self.uncertainty.as_dict(),
            "class_mix": self.class_mix,
            "inputs": {k: h.as_dict() for k, h in self.inputs.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        if d.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"drift reference format {d.get('format')!r}; this version reads {REFERENCE_FORMAT}")
        items = int(d["items"])
        mixed = d.get("class_mix")
        if not 0 < items <= 100 * MAX_REFERENCE_ITEMS or (mixed and len(mixed) > MAX_CLASSES + 1):
            raise ValueError("the drift reference's item count or class mix is out of bounds")
        class_mix = {str(k)[:200]: _finite(v) for k, v in mixed.items()} if mixed else None
        if class_mix is not None and any(not 0 <= v <= 1 for v in class_mix.values()):
            raise ValueError("the drift reference's class shares are not in [0, 1]")
        return cls(
            items=items,
            uncertainty=Histogram.from_dict(d["uncertainty"]),
            class_mix=class_mix,
            inputs={k: Histogram.from_dict(h) for k, h in d["inputs"].items() if k in INPUT_FEATURES},
        )

    @classmethod
    def of(
        cls, uncertainties: Sequence[float], labels: Sequence[Sequence[str]] | None, inputs: Sequence[Sequence[float]]
    ) -> Reference:
        columns = np.asarray(inputs, dtype=np.float64).reshape(-1, len(INPUT_FEATURES))
        shares = mix(labels) if labels is not None else None
        if shares is not None and len(shares) > MAX_CLASSES:
            every = shares
            kept = sorted(every, key=lambda k: -every[k])[:MAX_CLASSES]
            shares = {k: every[k] for k in kept} | {OTHER_LABEL: sum(v for k, v in every.items() if k not in kept)}
        return cls(
            items=len(uncertainties),
            uncertainty=Histogram.of(uncertainties),
            class_mix=shares,
            inputs={f: Histogram.of(columns[:, i].tolist()) for i, f in enumerate(INPUT_FEATURES)},
        )


@dataclass(frozen=True)
class Answer:
    """One served answer as the prediction log keeps it: what the window is made of."""

    id: str
    uncertainty: float
    labels: Sequence[str] | None  # its class(es) for the class mix; None for a task without classes
    inputs: Sequence[float] | None  # input_stats of its image; None when it was logged without


@dataclass(frozen=True)
class Shift:
    """One signal's score and what moved: `moved` names what (a class, an input feature), `before` and `after`
    its reference and window values, `examples` the ids of the answers that show it best."""

    signal: str
    score: float
    moved: str
    before: float
    after: float
    examples: list[str]
    grey: bool = False  # an input shift of images whose channels are alike (its text says brightness)

    def text(self) -> str:
        if self.signal == "uncertainty":
            return f"the median uncertainty went from {self.before:.3f} to {self.after:.3f}"
        if self.signal == "class_mix":
            return f"answers of '{self.moved}' went from {self.before:.1%} to {self.after:.1%} of the labels"
        what = self.moved.replace("_", " ")
        if self.grey:  # every channel alike (greyscale images): a channel's name would mislead
            what = "mean brightness" if self.moved.startswith("mean_") else "brightness spread"
        return f"the images' {what} went from {self.before:.3f} to {self.after:.3f} on average"

    def as_dict(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "score": round(self.score, 4),
            "moved": self.moved,
            "from": round(self.before, 4),
            "to": round(self.after, 4),
            "text": self.text(),
            "examples": self.examples,
        }


EXAMPLES = 4


def compare(reference: Reference, window: Sequence[Answer]) -> dict[str, Shift]:
    """Each signal's score of the window against the reference, with what moved (a signal the model or the
    window has no data for is left out)."""
    shifts: dict[str, Shift] = {}
    window = [a for a in window if math.isfinite(a.uncertainty)]  # a diverged model's NaN says nothing of drift
    if not window:
        return shifts
    u = [a.uncertainty for a in window]
    order = sorted(window, key=lambda a: -a.uncertainty)
    shifts["uncertainty"] = Shift(
        "uncertainty",
        reference.uncertainty.psi(u),
        "uncertainty",
        reference.uncertainty.median,
        float(np.median(u)),
        [a.id for a in order[:EXAMPLES]],
    )
    labelled = [a for a in window if a.labels is not None]
    before = reference.class_mix
    if before is not None and labelled:
        known = list(before)
        now = mix((a.labels or () for a in labelled), known)
        keys = sorted(set(known) | set(now))
        score = psi([before.get(k, 0.0) for k in keys], [now.get(k, 0.0) for k in keys])
        moved = max(keys, key=lambda k: (now.get(k, 0.0) - before.get(k, 0.0), k))
        chosen = [a.id for a in reversed(labelled) if moved in (a.labels or ()) or moved == OTHER_LABEL][:EXAMPLES]
        shifts["class_mix"] = Shift("class_mix", score, moved, before.get(moved, 0.0), now.get(moved, 0.0), chosen)
    measured = [
        a
        for a in window
        if a.inputs is not None and len(a.inputs) == len(INPUT_FEATURES) and all(map(math.isfinite, a.inputs))
    ]
    if measured and reference.inputs:
        columns = np.asarray([a.inputs for a in measured], dtype=np.float64)
        best: Shift | None = None
        for i, feature in enumerate(INPUT_FEATURES):
            hist = reference.inputs.get(feature)
            if hist is None:
                continue
            values = columns[:, i]
            score = hist.psi(values.tolist())
            if best is None or score > best.score:
                far = np.argsort(-np.abs(values - hist.mean))[:EXAMPLES]
                best = Shift("input", score, feature, hist.mean, float(values.mean()), [measured[j].id for j in far])
        if best is not None:
            alike = [reference.inputs[f].mean for f in INPUT_FEATURES[:3] if f in reference.inputs]
            grey = (
                len(alike) == 3 and max(alike) - min(alike) < 1e-3 and bool(np.ptp(columns[:, :3], axis=1).max() < 1e-3)
            )
            shifts["input"] = replace(best, grey=grey)
    return shifts


def build_reference(bundle: str | Path, images: Sequence[str | Path], seed: int = 0, batch: int = 64) -> Reference:
    """The reference of an exported bundle: its answers to `images` (the validation set; a seeded sample of
    MAX_REFERENCE_ITEMS when larger), answered as a served model answers them (the bundle's Predictor)."""
    from core.engine.images import open_rgb
    from core.engine.inference import Predictor

    chosen = list(images)
    if len(chosen) > MAX_REFERENCE_ITEMS:
        picked = np.random.default_rng(seed).choice(len(chosen), MAX_REFERENCE_ITEMS, replace=False)
        chosen = [chosen[i] for i in sorted(picked)]
    predictor = Predictor(bundle)
    uncertainties: list[float] = []
    labels: list[list[str] | None] = []
    inputs: list[list[float]] = []
    for start in range(0, len(chosen), batch):
        decoded = [open_rgb(p) for p in chosen[start : start + batch]]
        inputs += [input_stats(img) for img in decoded]
        for prediction in predictor.predict_batch(decoded):
            uncertainties.append(float(prediction.uncertainty))
            labels.append(predictor.task.mix_labels(prediction.answer()))
    known = None if any(given is None for given in labels) else [given or [] for given in labels]
    return Reference.of(uncertainties, known, inputs)


def write_reference(bundle: str | Path, reference: Reference) -> Path:
    path = Path(bundle) / REFERENCE_FILE
    path.write_text(json.dumps(reference.as_dict()) + "\n")
    return path


def read_reference(data: bytes | str) -> Reference:
    """A bundle's drift reference from its JSON (ValueError when it is not one this version reads)."""
    try:
        parsed = json.loads(data, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"the drift reference is not JSON: {str(exc)[:200]}") from None
    if not isinstance(parsed, dict):
        raise ValueError("the drift reference is not a JSON object")
    try:
        return Reference.from_dict(parsed)
    except (KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise ValueError(f"the drift reference is malformed: {str(exc)[:200]}") from None


def _no_constant(name: str) -> float:
    raise ValueError(f"the drift reference holds {name}, not a number")

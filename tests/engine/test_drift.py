"""The drift scores (core/engine/drift.py) on real images: Fashion-MNIST answers drawn like the reference score
near 0, inverted ones far past the alarm threshold, and each score says what moved."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from core.datasets.samples import load_fashion_mnist
from core.engine.drift import (
    INPUT_FEATURES,
    Answer,
    Histogram,
    Reference,
    compare,
    input_stats,
    noise_allowance,
    psi,
    read_reference,
)

THRESHOLD = 0.25  # the project's default (core/db/domain.DRIFT_THRESHOLD)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    pixels, _, _ = load_fashion_mnist()
    return [Image.fromarray(a).convert("RGB") for a in pixels[:1300]]


def _answers(images: list[Image.Image], rng: np.random.Generator, prefix: str) -> list[Answer]:
    """Answers of a made-up classifier: its uncertainty and class follow the image's brightness, as a real
    model's answers follow its input."""
    out = []
    for i, img in enumerate(images):
        stats = input_stats(img)
        brightness = stats[0]
        label = "dark" if brightness < 0.25 else "light"
        out.append(Answer(f"{prefix}{i}", float(np.clip(brightness + rng.normal(0, 0.05), 0, 1)), [label], stats))
    return out


def _reference(answers: list[Answer]) -> Reference:
    return Reference.of(
        [a.uncertainty for a in answers],
        [list(a.labels or []) for a in answers],
        [list(a.inputs or []) for a in answers],
    )


def test_answers_like_the_reference_score_near_zero_and_inverted_ones_far_past_the_threshold(
    images: list[Image.Image],
) -> None:
    rng = np.random.default_rng(0)
    reference = _reference(_answers(images[:300], rng, "ref"))
    same = compare(reference, _answers(images[300:800], rng, "same"))
    print({k: round(v.score, 3) for k, v in same.items()})
    assert set(same) == {"uncertainty", "class_mix", "input"}
    assert all(shift.score < 0.1 for shift in same.values()), same

    inverted = [ImageOps.invert(img) for img in images[800:1000]]
    mixed = _answers(images[1000:1300], rng, "same") + _answers(inverted, rng, "inv")  # 200 of a window of 500
    shifted = compare(reference, mixed)
    print({k: round(v.score, 3) for k, v in shifted.items()})
    moved = shifted["input"]
    assert moved.score > 2 * THRESHOLD
    assert moved.moved.startswith("mean_") and moved.after > moved.before + 0.1  # 0.29 -> 0.46: brighter on average
    assert all(e.startswith("inv") for e in moved.examples)  # the examples are inverted images
    assert moved.grey and "mean brightness went from" in moved.text()  # grey images: no channel named
    assert shifted["class_mix"].moved == "light" and shifted["class_mix"].after > shifted["class_mix"].before


def test_a_small_reference_raises_its_bar_by_what_sampling_alone_gives(images: list[Image.Image]) -> None:
    """A 100-image reference is noisy: windows of the same images score up to about 0.25 against it (measured), so
    the alarm's bar is the threshold plus noise_allowance (0.11 here), and none of them passes it."""
    rng = np.random.default_rng(1)
    bar = THRESHOLD + noise_allowance(100, 500)
    assert bar == pytest.approx(0.25 + 9 * (1 / 100 + 1 / 500))
    scores = []
    for start in range(0, 1200, 600):
        reference = _reference(_answers(images[start : start + 100], rng, "ref"))
        scores += [s.score for s in compare(reference, _answers(images[start + 100 : start + 600], rng, "w")).values()]
    print(f"bar {bar:.3f}, highest {max(scores):.3f}")
    assert max(scores) < bar


def test_a_reference_survives_its_json_and_a_constant_feature_still_tells_smaller_from_larger() -> None:
    sizes = [math.log(28 * 28)] * 100  # every reference image 28 x 28
    hist = Histogram.of(sizes)
    assert hist.psi(sizes) == pytest.approx(0.0)
    assert hist.psi([math.log(14 * 14)] * 100) > 1 and hist.psi([math.log(56 * 56)] * 100) > 1
    reference = Reference.of([0.1] * 10, None, [[0.5] * len(INPUT_FEATURES)] * 10)
    again = read_reference(json.dumps(reference.as_dict()))
    assert again == reference and again.class_mix is None
    with pytest.raises(ValueError, match="format"):
        read_reference('{"format": 99}')
    with pytest.raises(ValueError, match="not JSON"):
        read_reference("{")


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        (lambda d: d["uncertainty"].update(mean=float("nan")), "NaN"),
        (lambda d: d["uncertainty"].update(cuts=[0.5, 0.1]), "not sorted"),
        (lambda d: d["uncertainty"].update(shares=[1.0]), "do not match"),
        (lambda d: d["uncertainty"].update(shares=[2.0, 0.0, 0.0]), r"not in \[0, 1\]"),
        (lambda d: d.update(items=10**400), "out of bounds|malformed"),
        (lambda d: d.update(class_mix={str(i): 0.0 for i in range(2000)}), "out of bounds"),
        (lambda d: d.pop("inputs"), "malformed"),
    ],
)
def test_a_tampered_reference_is_refused_with_a_reason(tamper: Any, says: str) -> None:
    """The reference is written by a worker from a user's job: read back, every value is checked (a refused one
    leaves the model unwatched, never a failing check every pass)."""
    reference = Reference.of([0.1, 0.2, 0.3], [["a"], ["b"], ["a"]], [[0.5] * len(INPUT_FEATURES)] * 3)
    data = reference.as_dict()
    data["uncertainty"] = {**data["uncertainty"], "cuts": [0.2], "shares": [0.3, 0.4, 0.3]}
    tamper(data)
    with pytest.raises(ValueError, match=says):
        read_reference(json.dumps(data))


def test_psi_and_the_input_statistic() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * math.log(1.8) - 0.4 * math.log(0.2), rel=1e-6)
    red = Image.new("RGB", (640, 480), (255, 0, 0))
    stats = input_stats(red)
    assert stats[:6] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert stats[6] == pytest.approx(math.log(640 * 480), abs=1e-4)

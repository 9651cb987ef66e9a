"""The course's rule for retraining on new labelled data, measured: a noisy set's champion, then a version with the
flipped labels corrected and new items added; over 5 seeds the default retrain (core.jobs.rates.retrain_defaults)
must beat its champion on held-out images with clean labels in at least 4 and never lose more than 0.01. Small and
from scratch here, to stay cheap; bench/retrain_wins.py runs it with the ImageNet-pretrained EfficientNet-Lite0 and
prints the old default beside it."""

from __future__ import annotations

from pathlib import Path

from bench.retrain_wins import HEADER, Scenario, row, run_seed, summary, summary_lines

SMALL = Scenario(
    per_class=30,
    new_per_class=10,
    heldout_per_class=20,
    size=16,
    arch="resnet18",
    pretrained="none",
    champion=(0, 4, 5e-3),
    baseline=False,
)


def test_the_default_retrain_beats_its_champion(tmp_path: Path) -> None:
    outcomes = [run_seed(seed, SMALL, tmp_path) for seed in range(1, 6)]
    print("\n".join([HEADER, *map(row, outcomes), *summary_lines(outcomes)]))
    got = summary(outcomes)["retrain"]
    assert got["wins"] >= 4 and got["worst"] >= -0.01, got

"""Interpretation of a trained classifier on real images."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from core.engine.plots import loss_points, plot_losses, show_batch
from core.engine.tasks.classification import ClassificationInterpretation
from tests.engine.test_learner import make_learner


def test_interpretation_and_its_plots(fashion_folder: Path, tmp_path: Path) -> None:
    learn = make_learner(fashion_folder)
    learn.fit_one_cycle(2, 5e-3)
    interp = ClassificationInterpretation.from_learner(learn)
    n_valid = len(learn.dls.valid.dataset)

    tops = interp.top_losses(5)
    assert [t.loss for t in tops] == sorted((t.loss for t in tops), reverse=True)
    assert tops[0].item.endswith(".png") and tops[0].actual in learn.dls.classes
    assert 0 < tops[0].probability <= 1

    cm = interp.confusion_matrix()
    assert cm.shape == (4, 4) and cm.sum() == n_valid
    errors = n_valid - int(cm.trace())
    assert sum(n for _, _, n in interp.most_confused(1)) == errors
    assert interp.as_dict()["error_rate"] == pytest.approx(errors / n_valid)
    per_class = interp.per_class()
    assert sum(c["support"] for c in per_class.values()) == n_valid
    assert all(0 <= c["f1"] <= 1 for c in per_class.values())

    pngs = [
        interp.plot_confusion_matrix(tmp_path / "cm.png"),
        interp.plot_top_losses(tmp_path / "top.png", k=4),
        plot_losses(learn.recorder.batches, learn.recorder.epochs, tmp_path / "losses.png"),
        show_batch(learn.dls, tmp_path / "batch.png"),
    ]
    for png in pngs:
        with Image.open(png) as img:
            assert img.format == "PNG" and img.width > 100


def test_the_loss_curve_goes_on_across_stages() -> None:
    """Stage 2's batches restart their own count at 0; on the plot they follow stage 1's, and each validation
    point sits where its epoch ended."""
    batches = [{"iter": i, "epoch": i // 2, "tag": "stage1", "smooth_loss": 1.0} for i in range(4)]
    batches += [{"iter": i, "epoch": i // 3, "tag": "stage2", "smooth_loss": 0.5} for i in range(6)]
    epochs = [{"epoch": e, "tag": t, "valid_loss": 0.9} for t, n in (("stage1", 2), ("stage2", 2)) for e in range(n)]
    xs, valid, starts = loss_points(batches, epochs)
    assert xs == list(range(10))
    assert [x for x, _ in valid] == [2, 4, 7, 10]
    assert starts == [(4, "stage2")]

"""`retrain`: fine-tune a model (its name's champion by default) on new data from its full weights, by the
course's rule for new labelled data: unfrozen, its last stage's rates x1.5, its epochs + 2
(core.jobs.rates.retrain_defaults). A changed class list keeps the rows of the classes that stay."""

from __future__ import annotations

from typing import Any

from core.engine.items import TextItems
from core.jobs.context import JobContext
from core.jobs.estimate import fine_tune_phases
from core.jobs.kinds.base import JobKind
from core.jobs.kinds.fine_tune import run as fine_tune
from core.jobs.rates import RETRAIN_FALLBACK
from core.jobs.spec import TrainSpec


def run_text(spec: TrainSpec, ctx: JobContext, items: TextItems) -> dict[str, Any]:
    """On texts: the classifier on a language model's encoder (core/jobs/text_training.py)."""
    from core.jobs.text_training import run_classifier

    return run_classifier(spec, ctx, items, phases="all")


KIND = JobKind(
    name="retrain",
    summary="the champion (or from_model) fine-tuned on new data, by the course's rule for new data",
    run=fine_tune,  # from the champion's full weights, at the rates and epochs core.jobs.rates gives
    text=run_text,
    makes_model=True,
    lr=RETRAIN_FALLBACK["lr"],
    lr_note="its champion's last-stage rates x1.5 (with its epochs + 2, unfrozen); this when the champion "
    "recorded none",
    lr_forms=frozenset({"number", "range", "find"}),
    takes_parent=False,
    starts_from_model=True,
    trains=("freeze_epochs", "epochs"),
    remaps_classes=True,
    defaults_from_champion=True,
    form_fields=("freeze_epochs", "epochs", "lr"),
    estimate=fine_tune_phases,
)

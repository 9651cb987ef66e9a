"""`lr_find`: the learning-rate sweep alone, on the model as the next stage would train it, sized to that
stage (core.engine.lr_finder.sweep_steps); its suggestions are the job's result."""

from __future__ import annotations

from typing import Any

from core.engine.items import TextItems
from core.jobs.context import JobContext
from core.jobs.estimate import sweep_phases
from core.jobs.kinds.base import JobKind
from core.jobs.spec import TrainSpec
from core.jobs.training import Built, find_lr


def run(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """The sweep on the learner as the next stage would train it: frozen on a fresh pretrained body,
    unfrozen when continuing from a parent model (before stage 2)."""
    learn = built.learn
    if spec.init_bundle or not spec.is_pretrained:
        learn.unfreeze()
    else:
        learn.freeze()
    with built.timer.phase("lr_find"):  # for the stage that follows: `epochs` of this data
        result = find_lr(learn, ctx, spec.epochs)
    return {
        "suggestions": result.suggestions,
        "n_steps": len(result.lrs),
        "frozen": learn.frozen_to > 0,
        "timings": built.timer.as_dict(),
    }


def run_text(spec: TrainSpec, ctx: JobContext, items: TextItems) -> dict[str, Any]:
    """On texts: the sweep on the classifier as its next stage would train it."""
    from core.jobs.text_training import run_classifier

    return run_classifier(spec, ctx, items, phases="sweep")


KIND = JobKind(
    name="lr_find",
    summary="the learning-rate sweep alone (with a parent: on its model, unfrozen, before stage 2)",
    run=run,
    text=run_text,
    makes_model=False,
    lr=None,
    page="sweep",
    form_fields=("pretrained", "epochs"),
    estimate=sweep_phases,
)

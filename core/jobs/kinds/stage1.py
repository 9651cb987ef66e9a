"""`stage1`: the course's stage 1 — freeze the pretrained body, fit_one_cycle(epochs, slice(lr)) on the head
(a body from scratch trains whole)."""

from __future__ import annotations

from typing import Any

from core.engine.items import TextItems
from core.engine.learner import LrSpec
from core.jobs.context import JobContext
from core.jobs.estimate import one_fit_phases
from core.jobs.kinds.base import JobKind
from core.jobs.rates import STAGE1_DEFAULT_LR
from core.jobs.spec import TrainSpec
from core.jobs.training import Built, export_results, last_stage, resume_and_base_lr


def run(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """slice(lr) over the groups (the body's at a tenth of the head's); a range [low, high] spreads over them."""
    learn, timer = built.learn, built.timer
    learn.freeze() if spec.is_pretrained else learn.unfreeze()
    resume, base_lr = resume_and_base_lr(spec, ctx, learn, timer, built.plots)
    lr: LrSpec = slice(*spec.lr) if isinstance(spec.lr, tuple) else slice(base_lr) if spec.is_pretrained else base_lr
    with timer.phase("fit:stage1"):
        learn.fit_one_cycle(spec.epochs, lr, tag="stage1", resume=resume)
    rates = learn.lrs_for_groups(lr)
    last = last_stage(rates, spec.epochs, frozen=spec.is_pretrained)
    return export_results(spec, ctx, built, {"base_lr": base_lr, "stage1": rates, "last": last})


def run_text(spec: TrainSpec, ctx: JobContext, items: TextItems) -> dict[str, Any]:
    """On texts: the classifier on a language model's encoder (core/jobs/text_training.py)."""
    from core.jobs.text_training import run_classifier

    return run_classifier(spec, ctx, items, phases="head")


KIND = JobKind(
    name="stage1",
    summary="the course's stage 1: the pretrained body frozen, one-cycle on the head",
    run=run,
    text=run_text,
    text_lr=2e-2,
    makes_model=True,
    lr=STAGE1_DEFAULT_LR,
    lr_forms=frozenset({"number", "range", "find"}),
    trains=("epochs",),
    form_fields=("pretrained", "epochs", "lr"),
    estimate=one_fit_phases("stage1", frozen=lambda spec: spec.is_pretrained),
)

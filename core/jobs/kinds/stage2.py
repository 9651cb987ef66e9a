"""`stage2`: the course's stage 2 — unfreeze the parent's model and train every layer group at discriminative
rates. Its default lr, 'auto', is the course's slice(valley / 10, stage-1 lr / 5) (core.jobs.rates.stage2_rates),
from the parent's lr_find child when it has one, else from a sweep in this job."""

from __future__ import annotations

from typing import Any

from core.engine.items import TextItems
from core.jobs.context import JobContext
from core.jobs.estimate import one_fit_phases
from core.jobs.kinds.base import JobKind
from core.jobs.spec import TrainSpec
from core.jobs.training import Built, export_results, find_lr, last_stage, show_batch_artifact


def run(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """Unfreeze the parent's model and train every group with discriminative rates."""
    from core.jobs.rates import stage2_rates

    learn, timer = built.learn, built.timer
    learn.unfreeze()
    resume = ctx.latest_checkpoint()
    if resume is not None:
        learn.extra = dict(resume.get("extra", {}))
        lo, hi = learn.extra["stage2_lr"]
    else:
        with timer.phase("show_batch"):
            show_batch_artifact(learn, ctx, built.plots)

        def sweep() -> float:  # only when the rates ask for one
            with timer.phase("lr_find"):
                return find_lr(learn, ctx, spec.epochs).suggestions["valley"]

        lo, hi, how = stage2_rates(spec, sweep)
        learn.extra = {"stage2_lr": [lo, hi], "base_lr": hi, "stage2_rates": how}
    with timer.phase("fit:stage2"):
        learn.fit_one_cycle(spec.epochs, slice(lo, hi), tag="stage2", resume=resume)
    rates = learn.lrs_for_groups(slice(lo, hi))
    lrs = {
        "stage2_range": [lo, hi],
        "stage2": rates,
        "stage2_rates": learn.extra.get("stage2_rates", {}),
        "last": last_stage(rates, spec.epochs, frozen=False),
    }
    return export_results(spec, ctx, built, lrs)


def run_text(spec: TrainSpec, ctx: JobContext, items: TextItems) -> dict[str, Any]:
    """On texts: the classifier on a language model's encoder (core/jobs/text_training.py)."""
    from core.jobs.text_training import run_classifier

    return run_classifier(spec, ctx, items, phases="rest")


KIND = JobKind(
    name="stage2",
    summary="the course's stage 2: the parent's model unfrozen, discriminative rates",
    run=run,
    text=run_text,
    makes_model=True,
    lr="auto",
    lr_note="slice(min(valley / 10, stage-1 lr / 50), stage-1 lr / 5): valley from the parent's lr_find job, "
    "else a sweep in this job",
    lr_forms=frozenset({"number", "range", "auto"}),
    parent="a stage-1 (or fine_tune) job",
    starts_from_model=True,
    trains=("epochs",),
    auto_from="lr_find",
    form_fields=("epochs", "lr"),
    estimate=one_fit_phases("stage2", frozen=lambda spec: False),
)

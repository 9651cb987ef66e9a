"""`fine_tune`: the course's whole recipe in one job — stage 1 (the pretrained body frozen, one-cycle on the
head), then stage 2 (unfrozen, discriminative rates) — once per size of a progressive-resizing plan."""

from __future__ import annotations

from typing import Any

from core.engine.items import TextItems
from core.jobs.context import JobContext
from core.jobs.estimate import fine_tune_phases
from core.jobs.kinds.base import JobKind
from core.jobs.spec import TrainSpec
from core.jobs.training import Built, export_results, last_stage, resume_and_base_lr, use_size


def run(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """The fine-tune recipe (Learner.fit_phase), once per size of the plan (one size without a plan). Runs
    as a list of phases so that a checkpoint's tag says where to resume. A range [low, high] trains the frozen
    stage at `high` and the unfrozen one with the range spread over the layer groups."""
    from core.engine.errors import CheckpointError
    from core.engine.learner import Phase, fine_tune_phases
    from core.jobs.spec import PlanStep

    learn, timer = built.learn, built.timer
    if spec.is_pretrained:
        learn.freeze()
    resume, base_lr = resume_and_base_lr(spec, ctx, learn, timer, built.plots)
    phases: list[Phase] = []
    if isinstance(spec.lr, tuple):
        lo, hi = spec.lr
        if spec.freeze_epochs and spec.is_pretrained:
            phases.append(Phase("stage1", "stage1", spec.freeze_epochs, hi))
        if spec.epochs or not spec.is_pretrained:
            epochs = spec.epochs + (0 if spec.is_pretrained else spec.freeze_epochs)
            phases.append(Phase("stage2", "stage2", epochs, hi, span=(lo, hi)))
    for step in [] if phases else spec.plan or [PlanStep(size=spec.size)]:
        phases += fine_tune_phases(
            spec.epochs if step.epochs is None else step.epochs,
            step.lr or base_lr,
            spec.freeze_epochs if step.freeze_epochs is None else step.freeze_epochs,
            pretrained=spec.is_pretrained,
            prefix=f"{step.size}px-" if spec.plan else "",
            size=step.size,
        )
    tags = [p.tag for p in phases]
    start = 0
    if resume is not None:
        if resume["tag"] not in tags:
            raise CheckpointError(f"the checkpoint is from phase '{resume['tag']}', which this job does not have")
        start = tags.index(resume["tag"])
    lrs: dict[str, Any] = {"base_lr": base_lr}
    for i, phase in enumerate(phases):
        lrs[phase.tag] = learn.lrs_for_groups(phase.rates())
        if i < start:
            continue
        with timer.phase("build"):  # progressive resizing: the data again at this size
            use_size(learn, phase.size or spec.size)
        with timer.phase(f"fit:{phase.tag}"):
            learn.fit_phase(phase, resume=resume if i == start else None)
    last = phases[-1]
    lrs["last"] = last_stage(learn.lrs_for_groups(last.rates()), last.epochs, frozen=last.what == "stage1")
    return export_results(spec, ctx, built, lrs)


def run_text(spec: TrainSpec, ctx: JobContext, items: TextItems) -> dict[str, Any]:
    """On texts: the classifier on a language model's encoder (core/jobs/text_training.py)."""
    from core.jobs.text_training import run_classifier

    return run_classifier(spec, ctx, items, phases="all")


KIND = JobKind(
    name="fine_tune",
    summary="stage 1 (frozen body) then stage 2 (unfrozen, discriminative rates) in one job",
    run=run,
    text=run_text,
    text_lr=2e-2,
    makes_model=True,
    lr=2e-3,
    lr_forms=frozenset({"number", "range", "find"}),
    trains=("freeze_epochs", "epochs"),
    plan=True,
    form_fields=("pretrained", "freeze_epochs", "epochs", "lr", "plan"),
    estimate=fine_tune_phases,
)

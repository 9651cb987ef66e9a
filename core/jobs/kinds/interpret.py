"""`interpret`: the parent's model on its validation split, as its task interprets it (confusion, worst
items, per-class scores), and with folds >= 2 the cleaner's suspects (core.jobs.cleaner)."""

from __future__ import annotations

import json
from typing import Any

from core.engine.items import TextItems
from core.jobs.context import JobContext
from core.jobs.kinds.base import JobKind
from core.jobs.spec import TrainSpec
from core.jobs.training import BackgroundPlots, Built, build_learner, write_interpretation


def run(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """Interpretation of the parent's model on the validation split; the result keeps the task's headline."""
    from core.engine.export import read_manifest
    from core.jobs.cleaner import suspects

    manifest = read_manifest(spec.init_bundle) if spec.init_bundle else {}
    timer = built.timer
    with BackgroundPlots(ctx) as plots:
        with timer.phase("interpretation"):
            thresholds = built.learn.dls.task.tuned_thresholds(manifest)  # the model's own, not tuned again
            summary = write_interpretation(built.learn, ctx, thresholds, plots)
        with timer.phase("suspects"):  # the interpretation's plots are drawn meanwhile
            found = suspects(spec, ctx, built.items, spec.folds, build_learner)
            if found:
                ctx.artifact_path("suspects.json").write_text(json.dumps(found))
                ctx.artifact_written("suspects.json")
        with timer.phase("plots"):
            plots.wait()
    result = built.learn.dls.task.headline(summary)
    return result | ({"suspects": len(found), "folds": spec.folds} if found else {}) | {"timings": timer.as_dict()}


def run_text(spec: TrainSpec, ctx: JobContext, items: TextItems) -> dict[str, Any]:
    """On texts: the parent classifier's interpretation of the labelled validation texts (the cleaner's folds do not
    judge texts yet: the result says so when folds were asked for)."""
    from core.jobs.text_training import interpret_bundle

    return interpret_bundle(spec, ctx, items)


KIND = JobKind(
    name="interpret",
    summary="interpretation of the parent's model, and the cleaner's suspects (folds >= 2)",
    run=run,
    text=run_text,
    makes_model=False,
    lr=None,
    parent="a job that produced a model",
    starts_from_model=True,
    inherits_weights_source=True,
    page="interpretation",
    form_fields=("folds", "cleaner_epochs"),
)

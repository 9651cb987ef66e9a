"""Run one job: its kind checks the spec and fills its defaults, the learner is built (on several ranks when
gpus > 1), and the kind's run function trains, sweeps or interprets. The worker's Celery task, `fitcycle
train` / `lr-find`, the benchmarks and the tests all come through `run_spec`."""

from __future__ import annotations

import json
from typing import Any

from core.engine.callbacks import TrainingStopped, resolve_precision
from core.engine.distributed import Rank
from core.engine.interpret import KeepValidOutputs
from core.engine.items import LabelledItems, TextItems
from core.jobs.context import JobContext
from core.jobs.distributed import run_distributed
from core.jobs.kinds import FINE_TUNE, SWEEP, get_kind
from core.jobs.provenance import bundle_weights_digest, deterministic_algorithms, record
from core.jobs.spec import TrainSpec
from core.jobs.training import (
    BackgroundPlots,
    PhaseTimer,
    ReportDrawnPlots,
    build_learner,
    label_items,
    pick_device,
)


def run_spec(
    spec: TrainSpec, ctx: JobContext, items: LabelledItems | None = None, rank: Rank | None = None
) -> dict[str, Any]:
    """Run one job of spec.kind; returns its result (also written as metrics.json or lr_find.json), with the
    seconds each phase took (`timings`), what made its weights (`provenance`: core/jobs/provenance.py) and, when it
    exported a model, their digest (`weights_sha256`). A job with gpus > 1 runs on that many ranks
    (core/jobs/distributed.py), each of which comes back here with its `rank`."""
    kind = get_kind(spec.kind)
    spec = kind.check(spec)
    if spec.gpus > 1 and rank is None:
        return run_distributed(spec, ctx, items, run_spec)
    device = pick_device(spec.device)
    precision = resolve_precision(spec.precision, device, cpu_bf16=not spec.is_text)
    facts = record(spec.summary(), device, precision, spec.deterministic)
    with deterministic_algorithms(spec.deterministic, device):
        result = _run(spec, ctx, items, rank)
    if result:  # a distributed fit's other ranks return nothing
        result["provenance"] = facts
        export = ctx.artifact_path("export")
        manifest = export / "manifest.json"
        if manifest.is_file():
            result["weights_sha256"] = bundle_weights_digest(export, json.loads(manifest.read_text())["weights"])
    return result


def _run(spec: TrainSpec, ctx: JobContext, items: LabelledItems | None, rank: Rank | None) -> dict[str, Any]:
    kind = get_kind(spec.kind)
    if kind.answers is not None:  # a model answers the data: nothing to train (core/jobs/kinds/predict.py)
        return kind.answers(spec, ctx, items if items is not None else label_items(spec))
    if spec.is_text:  # the ULMFiT flow: its own learners (core/jobs/text_training.py), one device
        assert kind.text is not None  # kind.check refused a kind that takes no texts
        texts = items if items is not None else label_items(spec)
        if not isinstance(texts, TextItems):
            raise TypeError(f"labels={spec.labels} should make texts, not {type(texts).__name__}")
        return kind.text(spec, ctx, texts)
    timer = PhaseTimer()
    with timer.phase("build"):
        built = build_learner(spec, ctx, items, rank, remap_classes=kind.remaps_classes)
    built.timer = timer
    built.learn.add_cbs([KeepValidOutputs()])  # the last validation pass, for interpretation and thresholds
    with BackgroundPlots(ctx) as plots:  # show_batch draws while training starts; the end's plots too
        built.plots = plots
        built.learn.add_cbs([ReportDrawnPlots(plots)])
        return kind.run(spec, ctx, built)


def run_train(spec: TrainSpec, ctx: JobContext, items: LabelledItems | None = None) -> dict[str, Any]:
    """The fine-tune recipe (the CLI's `train`)."""
    return run_spec(spec.model_copy(update={"kind": FINE_TUNE.name}), ctx, items)


def run_lr_find(spec: TrainSpec, ctx: JobContext, items: LabelledItems | None = None) -> dict[str, Any]:
    """Only the learning-rate sweep (the CLI's `lr-find`)."""
    return run_spec(spec.model_copy(update={"kind": SWEEP.name, "lr": None}), ctx, items)


__all__ = ["TrainingStopped", "run_lr_find", "run_spec", "run_train"]

"""The fine-tune recipe as a job: label, build the learner, (lr_find,) stage 1 frozen, stage 2 unfrozen
with discriminative rates, interpret and export — reporting and checkpointing through a JobContext,
and resuming from the context's latest checkpoint (mid-epoch included)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from core.engine.architectures import Architecture
from core.engine.callbacks import (
    ChannelsLast,
    CheckpointCallback,
    GradientAccumulation,
    MixedPrecision,
    ProgressCallback,
    ReportCallback,
    StopCallback,
)
from core.engine.data import DataConfig
from core.engine.errors import DataError
from core.engine.export import export_bundle
from core.engine.interpret import ClassificationInterpretation
from core.engine.labelling import LabelledItems, from_csv, from_folder, from_name_re
from core.engine.learner import Callback, Learner
from core.engine.lr_finder import LRFindResult
from core.engine.metrics import get_metric
from core.engine.plots import plot_losses, plot_lr_find, show_batch
from core.engine.transforms import get_transforms
from core.engine.vision import cnn_learner
from core.jobs.context import JobContext
from core.jobs.spec import TrainSpec

LR_MULT = 100  # fastai fine_tune: stage 2 spreads base_lr/2 over 100x from head to first group


def label_items(spec: TrainSpec) -> LabelledItems:
    """Apply the spec's labelling rule to its data folder."""
    if spec.labels == "folder":
        return from_folder(spec.data, valid_pct=spec.valid_pct, seed=spec.seed)
    if spec.labels == "csv":
        assert spec.csv is not None
        return from_csv(
            spec.data,
            spec.csv,
            spec.fn_col,
            spec.label_col,
            valid_col=spec.valid_col,
            valid_pct=spec.valid_pct,
            seed=spec.seed,
        )
    assert spec.pattern is not None
    return from_name_re(spec.data, spec.pattern, valid_pct=spec.valid_pct, seed=spec.seed)


def pick_device(requested: str | None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Built:
    """A learner ready to train, and what it was built from."""

    learn: Learner
    items: LabelledItems
    arch: Architecture
    body_source: str


def build_learner(spec: TrainSpec, ctx: JobContext) -> Built:
    """Data, pretrained body, head, and the callbacks that connect the learner to its context."""
    items = label_items(spec)
    device = pick_device(spec.device)
    config = DataConfig(
        size=spec.size,
        resize_method=spec.resize_method,
        bs=spec.bs,
        augment=get_transforms() if spec.augment else None,
        num_workers=spec.num_workers,
        seed=spec.seed,
    )
    cbs: list[Callback] = [
        ReportCallback(ctx),
        CheckpointCallback(ctx.save_checkpoint, spec.checkpoint_every_n_steps),
        StopCallback(ctx.should_stop),
    ]
    if ctx.show_progress:
        cbs.append(ProgressCallback())
    if spec.grad_accum > 1:
        cbs.append(GradientAccumulation(spec.grad_accum))
    if device.type == "cuda":
        cbs += [MixedPrecision(), ChannelsLast()]
    metrics = [get_metric(m) for m in spec.metrics]
    learn, source = cnn_learner(items, spec.arch, config, spec.pretrained, metrics, cbs, device)
    assert learn.arch is not None
    return Built(learn, items, learn.arch, source)


def _write_lr_find(result: LRFindResult, ctx: JobContext) -> None:
    path = ctx.artifact_path("lr_find.json")
    path.write_text(json.dumps(result.as_dict()))
    ctx.artifact_written("lr_find.json")
    plot_lr_find(result.lrs, result.losses, result.suggestions, ctx.artifact_path("plots/lr_find.png"))
    ctx.artifact_written("plots/lr_find.png")


def find_lr(learn: Learner, ctx: JobContext) -> LRFindResult:
    """lr_find, its artifacts, and a clear error when the sweep was too short to suggest anything."""
    result = learn.lr_find()
    _write_lr_find(result, ctx)
    if not result.suggestions:
        raise DataError(
            f"lr_find ran only {len(result.lrs)} steps (the loss diverged at once or there are "
            "too few batches) and cannot suggest a rate; pass a learning rate instead"
        )
    return result


def run_lr_find(spec: TrainSpec, ctx: JobContext) -> dict[str, Any]:
    """Only the learning-rate sweep, on the learner as stage 1 would train it."""
    built = build_learner(spec, ctx)
    if spec.is_pretrained:
        built.learn.freeze()
    result = find_lr(built.learn, ctx)
    return {"suggestions": result.suggestions, "n_steps": len(result.lrs)}


def run_train(spec: TrainSpec, ctx: JobContext) -> dict[str, Any]:
    """The fine-tune recipe end to end; returns the final metrics (also written as metrics.json)."""
    built = build_learner(spec, ctx)
    learn = built.learn
    resume = ctx.latest_checkpoint()
    done_tag = resume["tag"] if resume else None

    # Choose the base learning rate once; a resumed run reuses the one its checkpoint recorded.
    if resume is not None:
        learn.extra = dict(resume.get("extra", {}))
        base_lr = float(learn.extra["base_lr"])
    else:
        show_batch(learn.dls, ctx.artifact_path("plots/show_batch.png"))
        ctx.artifact_written("plots/show_batch.png")
        if spec.is_pretrained:
            learn.freeze()
        base_lr = find_lr(learn, ctx).suggestions["valley"] if spec.lr == "find" else float(spec.lr)
        learn.extra = {"base_lr": base_lr}
    lrs: dict[str, Any] = {"base_lr": base_lr}

    if spec.is_pretrained:
        # Stage 1: frozen body, one-cycle on the head [fastai fine_tune: pct_start 0.99].
        if spec.freeze_epochs and done_tag in (None, "stage1"):
            learn.freeze()
            learn.fit_one_cycle(
                spec.freeze_epochs,
                slice(base_lr),
                pct_start=0.99,
                tag="stage1",
                resume=resume if done_tag == "stage1" else None,
            )
        lrs["stage1"] = learn.lrs_for_groups(slice(base_lr))
        # Stage 2: unfrozen, discriminative rates from base_lr/2/100 (first group) to base_lr/2 (head).
        if spec.epochs:
            learn.unfreeze()
            stage2 = slice(base_lr / 2 / LR_MULT, base_lr / 2)
            learn.fit_one_cycle(
                spec.epochs,
                stage2,
                pct_start=0.3,
                div=5.0,
                tag="stage2",
                resume=resume if done_tag == "stage2" else None,
            )
            lrs["stage2"] = learn.lrs_for_groups(stage2)
    else:
        # From scratch there is nothing to protect: one rate for every group, as after unfreeze().
        learn.unfreeze()
        learn.fit_one_cycle(
            spec.freeze_epochs + spec.epochs,
            base_lr,
            tag="train",
            resume=resume if done_tag == "train" else None,
        )
        lrs["train"] = learn.lrs_for_groups(base_lr)

    return finish(spec, ctx, built, lrs)


def finish(spec: TrainSpec, ctx: JobContext, built: Built, lrs: dict[str, Any]) -> dict[str, Any]:
    """Interpret, plot, export, and write metrics.json."""
    learn = built.learn
    interp = ClassificationInterpretation.from_learner(learn)
    summary = interp.as_dict()
    ctx.artifact_path("interpretation.json").write_text(json.dumps(summary, indent=1))
    for name, draw in [
        ("plots/confusion_matrix.png", interp.plot_confusion_matrix),
        ("plots/top_losses.png", interp.plot_top_losses),
    ]:
        draw(ctx.artifact_path(name))
        ctx.artifact_written(name)
    plot_losses(learn.recorder.batches, learn.recorder.epochs, ctx.artifact_path("plots/losses.png"))
    ctx.artifact_written("plots/losses.png")
    export_bundle(learn, ctx.artifact_path("export"), extra={"pretrained": built.body_source})
    ctx.artifact_written("export")
    last = learn.recorder.epochs[-1] if learn.recorder.epochs else {}
    metrics = {
        "error_rate": summary["error_rate"],
        **{k: v for k, v in last.items() if k not in ("epoch", "tag", "seconds")},
        "epochs": learn.recorder.epochs,
        "lrs": lrs,
        "pretrained": built.body_source,
        "classes": built.items.classes,
        "counts": built.items.counts(),
        "rejected": [r.__dict__ for r in built.items.rejected],
        "spec": spec.model_dump(),
    }
    ctx.artifact_path("metrics.json").write_text(json.dumps(metrics, indent=1))
    ctx.artifact_written("metrics.json")
    return metrics

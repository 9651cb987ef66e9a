"""Training jobs: build a learner from a spec, then run one kind of job through a JobContext —
`fine_tune` (stage 1 then stage 2), `stage1` (frozen body, one-cycle on the head), `stage2` (unfrozen,
discriminative rates, from a parent's weights), `lr_find`, or `interpret`. Every kind reports and
checkpoints through the context and resumes from its latest checkpoint, mid-epoch included."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

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
from core.engine.data import DataConfig, ImageDataLoaders
from core.engine.errors import CheckpointError, DataError, WeightsMismatch
from core.engine.events import Callback
from core.engine.export import export_bundle, read_manifest
from core.engine.items import LabelledItems
from core.engine.learner import Learner, LrSpec, Phase, fine_tune_phases
from core.engine.lr_finder import LRFindResult
from core.engine.metrics import get_metric
from core.engine.model import HeadConfig
from core.engine.plots import plot_losses, plot_lr_find, show_batch
from core.engine.tasks import task_of
from core.engine.transforms import get_transforms
from core.engine.vision import cnn_learner
from core.jobs.cleaner import suspects
from core.jobs.context import JobContext
from core.jobs.rates import STAGE1_DEFAULT_LR, stage2_rates
from core.jobs.spec import PlanStep, TrainSpec


def label_items(spec: TrainSpec) -> LabelledItems:
    """Apply the spec's labelling rule to its data folder."""
    return spec.rule().apply(Path(spec.data), spec.valid_pct, spec.seed)[0]


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


def build_learner(spec: TrainSpec, ctx: JobContext, items: LabelledItems | None = None) -> Built:
    """Data, pretrained body, head (or a parent's full weights), and the callbacks to the context."""
    items = items if items is not None else label_items(spec)
    task = task_of(items)
    device = pick_device(spec.device)
    augment = get_transforms(**(spec.transforms or {})) if spec.augment else None  # the task limits it
    config = DataConfig(
        size=spec.size,
        resize_method=spec.resize_method,
        bs=spec.bs,
        augment=augment,
        num_workers=spec.num_workers,
        seed=spec.seed if spec.data_seed is None else spec.data_seed,
    )
    cbs: list[Callback] = [
        ReportCallback(ctx, spec.report_every_n_batches),
        CheckpointCallback(ctx.save_checkpoint, spec.checkpoint_every_n_steps),
        StopCallback(ctx.should_stop),
    ]
    if ctx.show_progress:
        cbs.append(ProgressCallback())
    if spec.grad_accum > 1:
        cbs.append(GradientAccumulation(spec.grad_accum))
    if device.type == "cuda":
        cbs += [MixedPrecision(), ChannelsLast()]
    names = spec.metrics
    if not set(names) & set(task.metrics):
        names = list(task.metrics)  # the defaults assume one class per image
    metrics = [get_metric(m) for m in names]
    pretrained = spec.init_bundle or spec.pretrained
    loss = torch.nn.L1Loss() if spec.loss == "l1" else None
    head = HeadConfig(ps=spec.head_dropout if spec.head_dropout is not None else task.head_dropout)
    learn, source = cnn_learner(items, spec.arch, config, pretrained, metrics, cbs, device, loss, head)
    if spec.init_bundle:
        _load_full_weights(learn, spec.init_bundle, remap=spec.kind == "retrain")
    assert learn.arch is not None
    return Built(learn, items, learn.arch, source)


def _load_full_weights(learn: Learner, bundle: str, remap: bool = False) -> None:
    """Continue from a parent job's model: same architecture, body and head. With `remap` (a retrain) the
    class list may have changed: the output layer is rebuilt and the rows of the classes that persist are
    copied from the old one (a new class starts from the fresh head's rows)."""
    manifest = read_manifest(bundle)
    old, new = list(manifest["classes"]), list(learn.dls.classes)
    state = load_file(f"{bundle}/{manifest['weights']}", device=str(learn.dls.device))
    if old == new:
        learn.model.load_state_dict(state)
        return
    if not remap:
        raise WeightsMismatch(
            f"the parent model was trained on classes {old}, this dataset has {new}; "
            "continue on the same dataset, or start a new stage 1 from the parent model with pretrained=<model id>"
        )
    per = learn.dls.task.outputs_per_class
    own = learn.model.state_dict()
    out_keys = output_keys(own, len(new) * per)
    rows = [(old.index(c), j) for j, c in enumerate(new) if c in old]
    merged = {}
    for key, mine in own.items():
        theirs = state.get(key)
        if key in out_keys and theirs is not None and theirs.ndim and theirs.shape[0] == len(old) * per:
            fresh = mine.clone()
            for a, b in rows:
                fresh[b * per : (b + 1) * per] = theirs[a * per : (a + 1) * per]
            merged[key] = fresh
        elif theirs is not None and theirs.shape == mine.shape:
            merged[key] = theirs
        else:
            raise WeightsMismatch(f"the parent model's '{key}' does not fit this model; retrain from the same arch")
    learn.model.load_state_dict(merged)


def output_keys(state: dict[str, torch.Tensor], n_out: int) -> set[str]:
    """The state keys of a model's output layer: the trailing run of tensors with one row per output (the last
    Linear or 1x1 conv, its norm and a TargetScale), scalars such as a norm's step count skipped."""
    keys: set[str] = set()
    for key in reversed(list(state)):
        tensor = state[key]
        if tensor.ndim == 0:
            continue
        if tensor.shape[0] != n_out:
            break
        keys.add(key)
    return keys


def _write_lr_find(result: LRFindResult, ctx: JobContext) -> None:
    ctx.artifact_path("lr_find.json").write_text(json.dumps(result.as_dict()))
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


def _show_batch(learn: Learner, ctx: JobContext) -> None:
    show_batch(learn.dls, ctx.artifact_path("plots/show_batch.png"))
    ctx.artifact_written("plots/show_batch.png")


def run_job(spec: TrainSpec, ctx: JobContext, items: LabelledItems | None = None) -> dict[str, Any]:
    """Run one job of spec.kind; returns its result (also written as metrics.json or lr_find.json)."""
    built = build_learner(spec, ctx, items)
    runners = {
        "fine_tune": _fine_tune,
        "stage1": _stage1,
        "stage2": _stage2,
        "lr_find": _lr_find,
        "interpret": _interpret,
        "retrain": _fine_tune,  # from the champion's full weights, with the retrain's (smaller) epochs and rate
    }
    return runners[spec.kind](spec, ctx, built)


def run_train(spec: TrainSpec, ctx: JobContext, items: LabelledItems | None = None) -> dict[str, Any]:
    """The fine-tune recipe (the CLI's `train`)."""
    return run_job(spec.model_copy(update={"kind": "fine_tune"}), ctx, items)


def run_lr_find(spec: TrainSpec, ctx: JobContext, items: LabelledItems | None = None) -> dict[str, Any]:
    """Only the learning-rate sweep (the CLI's `lr-find`)."""
    return run_job(spec.model_copy(update={"kind": "lr_find"}), ctx, items)


def _resume_and_base_lr(
    spec: TrainSpec, ctx: JobContext, learn: Learner, default: float
) -> tuple[dict[str, Any] | None, float]:
    """The checkpoint to resume from, and the base rate: chosen once (lr_find when asked), then reused."""
    resume = ctx.latest_checkpoint()
    if resume is not None:
        learn.extra = dict(resume.get("extra", {}))
        return resume, float(learn.extra["base_lr"])
    _show_batch(learn, ctx)
    if spec.lr == "find":
        base_lr = find_lr(learn, ctx).suggestions["valley"]
    elif isinstance(spec.lr, float):
        base_lr = spec.lr
    else:
        base_lr = default
    learn.extra = {"base_lr": base_lr}
    return None, base_lr


def _use_size(learn: Learner, size: int) -> None:
    """Rebuild the data at another size (progressive resizing): same items, split, seeds and statistics."""
    dls = learn.dls
    if dls.config.size != size:
        config = dataclasses.replace(dls.config, size=size)
        learn.dls = ImageDataLoaders(dls.items, config, stats=dls.stats, device=dls.device)


def _fine_tune(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """The fine-tune recipe (Learner.fit_phase), once per size of the plan (one size without a plan). Runs
    as a list of phases so that a checkpoint's tag says where to resume."""
    learn = built.learn
    if spec.is_pretrained:
        learn.freeze()
    resume, base_lr = _resume_and_base_lr(spec, ctx, learn, 2e-3)
    phases: list[Phase] = []
    for step in spec.plan or [PlanStep(size=spec.size)]:
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
        _use_size(learn, phase.size or spec.size)
        learn.fit_phase(phase, resume=resume if i == start else None)
    return finish(spec, ctx, built, lrs)


def _stage1(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """The course's stage 1: freeze the pretrained body, fit_one_cycle(epochs, slice(lr)) on the head."""
    learn = built.learn
    learn.freeze() if spec.is_pretrained else learn.unfreeze()
    resume, base_lr = _resume_and_base_lr(spec, ctx, learn, STAGE1_DEFAULT_LR)
    lr: LrSpec = slice(base_lr) if spec.is_pretrained else base_lr
    learn.fit_one_cycle(spec.epochs, lr, tag="stage1", resume=resume)
    return finish(spec, ctx, built, {"base_lr": base_lr, "stage1": learn.lrs_for_groups(lr)})


def _stage2(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """Unfreeze the parent's model and train every group with discriminative rates."""
    learn = built.learn
    learn.unfreeze()
    resume = ctx.latest_checkpoint()
    if resume is not None:
        learn.extra = dict(resume.get("extra", {}))
        lo, hi = learn.extra["stage2_lr"]
    else:
        _show_batch(learn, ctx)
        lo, hi, how = stage2_rates(spec, lambda: find_lr(learn, ctx).suggestions["valley"])
        learn.extra = {"stage2_lr": [lo, hi], "base_lr": hi, "stage2_rates": how}
    learn.fit_one_cycle(spec.epochs, slice(lo, hi), tag="stage2", resume=resume)
    lrs = {
        "stage2_range": [lo, hi],
        "stage2": learn.lrs_for_groups(slice(lo, hi)),
        "stage2_rates": learn.extra.get("stage2_rates", {}),
    }
    return finish(spec, ctx, built, lrs)


def _lr_find(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """The sweep on the learner as the next stage would train it: frozen on a fresh pretrained body,
    unfrozen when continuing from a parent model (before stage 2)."""
    learn = built.learn
    if spec.init_bundle or not spec.is_pretrained:
        learn.unfreeze()
    else:
        learn.freeze()
    result = find_lr(learn, ctx)
    return {"suggestions": result.suggestions, "n_steps": len(result.lrs), "frozen": learn.frozen_to > 0}


def _interpret(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """Interpretation of the parent's model on the validation split."""
    manifest = read_manifest(spec.init_bundle) if spec.init_bundle else {}
    summary = write_interpretation(built.learn, ctx, manifest.get("thresholds"))
    found = suspects(spec, ctx, built.items, spec.folds, build_learner)
    if found:
        ctx.artifact_path("suspects.json").write_text(json.dumps(found))
        ctx.artifact_written("suspects.json")
    keep = (
        "error_rate",
        "most_confused",
        "per_class",
        "per_label",
        "thresholds",
        "error_mean",
        "error_median",
        "baseline_mean_target_error",
        "pixel_accuracy",
        "mean_iou",
        "dice",
        "baseline_majority_class",
    )
    result = {k: (v[:10] if k == "most_confused" else v) for k, v in summary.items() if k in keep}
    return result | ({"suspects": len(found), "folds": spec.folds} if found else {})


def write_interpretation(learn: Learner, ctx: JobContext, thresholds: list[float] | None = None) -> dict[str, Any]:
    """interpretation.json and its plots, as the task interprets its model (multi-label: with the given
    thresholds, else tuned ones)."""
    interp = learn.dls.task.interpret(learn, thresholds)
    summary = interp.as_dict()
    ctx.artifact_path("interpretation.json").write_text(json.dumps(summary, indent=1))
    ctx.artifact_written("interpretation.json")
    for name, draw in interp.plots():
        draw(ctx.artifact_path(name))
        ctx.artifact_written(name)
    return summary


def finish(spec: TrainSpec, ctx: JobContext, built: Built, lrs: dict[str, Any]) -> dict[str, Any]:
    """Interpret, plot, export, and write metrics.json."""
    learn = built.learn
    summary = write_interpretation(learn, ctx)
    thresholds = summary.get("thresholds")  # multi-label: tuned per class on the validation set
    plot_losses(learn.recorder.batches, learn.recorder.epochs, ctx.artifact_path("plots/losses.png"))
    ctx.artifact_written("plots/losses.png")
    export_bundle(learn, ctx.artifact_path("export"), extra={"pretrained": built.body_source}, thresholds=thresholds)
    ctx.artifact_written("export")
    last = learn.recorder.epochs[-1] if learn.recorder.epochs else {}
    task = learn.dls.task
    metrics = {
        "task": task.name,
        "main_metric": task.main_metric,
        **({"error_rate": summary["error_rate"]} if "error_rate" in summary else {}),
        **{k: v for k, v in last.items() if k not in ("epoch", "tag", "seconds")},
        "epochs": learn.recorder.epochs,
        "lrs": lrs,
        "pretrained": built.body_source,
        "classes": built.items.classes,
        "counts": built.items.counts(),
        "rejected": [r.__dict__ for r in built.items.rejected],
        "spec": spec.summary(),
    }
    ctx.artifact_path("metrics.json").write_text(json.dumps(metrics, indent=1))
    ctx.artifact_written("metrics.json")
    return metrics

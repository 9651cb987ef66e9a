"""Training jobs: build a learner from a spec, then run one kind of job through a JobContext —
`fine_tune` (stage 1 then stage 2), `stage1` (frozen body, one-cycle on the head), `stage2` (unfrozen,
discriminative rates, from a parent's weights), `lr_find`, or `interpret`. Every kind reports and
checkpoints through the context and resumes from its latest checkpoint, mid-epoch included.

What a job does besides its epochs is kept cheap and measured: each phase's wall time goes to metrics.json
(`timings`); interpretation and thresholds reuse the last validation pass instead of predicting the
validation set again; the end-of-job plots are drawn on a thread of their own while the model is exported."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors.torch import load_file

from core.engine.architectures import Architecture
from core.engine.callbacks import (
    ChannelsLast,
    CheckpointCallback,
    CompileModel,
    GradientAccumulation,
    MixedPrecision,
    ProgressCallback,
    ReportCallback,
    StopCallback,
    resolve_precision,
)
from core.engine.data import DataConfig, ImageDataLoaders
from core.engine.distributed import DistributedTraining, Rank, agreed_stop
from core.engine.errors import CheckpointError, DataError, WeightsMismatch
from core.engine.events import Callback
from core.engine.export import export_bundle, read_manifest
from core.engine.interpret import KeepValidOutputs, kept_valid_outputs
from core.engine.items import LabelledItems
from core.engine.learner import Learner, LrSpec, Phase, fine_tune_phases
from core.engine.lr_finder import LRFindResult, sweep_steps
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


class PhaseTimer:
    """Wall-clock seconds (time.perf_counter) of each phase of a job on the job's own thread, and its total
    since the timer started. A phase met twice adds up; the phases never overlap, so they sum to at most
    the total (the rest is bookkeeping between them)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the with-block as phase `name`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def as_dict(self) -> dict[str, float]:
        """The phases in the order they ran, then `total`: a flat dict of seconds, for metrics.json."""
        return {**self.seconds, "total": time.perf_counter() - self.started}


class BackgroundPlots:
    """Draws plots one after another on a thread of their own while the job goes on (matplotlib through
    plots.py: a Figure per plot, no pyplot state, so the job's thread may do anything but draw meanwhile).
    `wait` joins them and reports each artifact through the context from the job's thread, so a context
    that uploads need not be thread-safe. Leaving the with-block joins the thread whatever happened."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fitcycle-plots")
        self.pending: list[tuple[str, Future[float]]] = []

    def __enter__(self) -> BackgroundPlots:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def draw(self, name: str, draw: Callable[[Path], Any]) -> None:
        """Draw artifact `name` (e.g. 'plots/losses.png') in the background."""
        path = self.ctx.artifact_path(name)

        def timed() -> float:
            t0 = time.perf_counter()
            draw(path)
            return time.perf_counter() - t0

        self.pending.append((name, self.pool.submit(timed)))

    def wait(self) -> float:
        """Wait for every plot (a failed one raises here), report each as written; the seconds spent drawing."""
        seconds = 0.0
        for name, future in self.pending:
            seconds += future.result()
            self.ctx.artifact_written(name)
        self.pending = []
        return seconds


@dataclass
class Built:
    """A learner ready to train, what it was built from, and the clock of the job it is built for."""

    learn: Learner
    items: LabelledItems
    arch: Architecture
    body_source: str
    timer: PhaseTimer = field(default_factory=PhaseTimer)


def build_learner(
    spec: TrainSpec, ctx: JobContext, items: LabelledItems | None = None, rank: Rank | None = None
) -> Built:
    """Data, pretrained body, head (or a parent's full weights), and the callbacks to the context. With `rank`,
    this process's part of a distributed fit: its device, its shard of the data, DDP."""
    items = items if items is not None else label_items(spec)
    task = task_of(items)
    device = pick_device(spec.device)
    if rank is not None:
        device = rank.device(device.type)
    augment = get_transforms(**(spec.transforms or {})) if spec.augment else None  # the task limits it
    config = DataConfig(
        size=spec.size,
        resize_method=spec.resize_method,
        bs=spec.bs,
        augment=augment,
        num_workers=spec.num_workers,
        seed=spec.seed if spec.data_seed is None else spec.data_seed,
        rank=rank.rank if rank is not None else 0,
        world=rank.world if rank is not None else 1,
    )
    cbs: list[Callback] = [
        ReportCallback(ctx, spec.report_every_n_batches),
        CheckpointCallback(ctx.save_checkpoint, spec.checkpoint_every_n_steps),
        StopCallback(ctx.should_stop if rank is None else agreed_stop(ctx.should_stop, rank)),
    ]
    if ctx.show_progress:
        cbs.append(ProgressCallback())
    if spec.grad_accum > 1:
        cbs.append(GradientAccumulation(spec.grad_accum))
    precision = resolve_precision(spec.precision, device)
    if precision != "fp32":
        cbs.append(MixedPrecision(precision))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every batch has the same size: pick the fastest kernels once
        cbs.append(ChannelsLast())
    if spec.compile:
        cbs.append(CompileModel())
    if rank is not None:
        cbs.append(DistributedTraining(rank))
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


def find_lr(learn: Learner, ctx: JobContext, stage_epochs: int) -> LRFindResult:
    """lr_find sized to the stage it serves (`stage_epochs` of this data: see sweep_steps), its artifacts, and a
    clear error when the sweep was too short to suggest anything."""
    result = learn.lr_find(num_it=sweep_steps(stage_epochs * learn.n_train_batches))
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


def run_job(
    spec: TrainSpec, ctx: JobContext, items: LabelledItems | None = None, rank: Rank | None = None
) -> dict[str, Any]:
    """Run one job of spec.kind; returns its result (also written as metrics.json or lr_find.json), with the
    seconds each phase took (`timings`). A job with gpus > 1 runs on that many ranks (core/jobs/distributed.py),
    each of which comes back here with its `rank`."""
    if spec.gpus > 1 and rank is None:
        from core.jobs.distributed import run_distributed

        return run_distributed(spec, ctx, items, run_job)
    timer = PhaseTimer()
    with timer.phase("build"):
        built = build_learner(spec, ctx, items, rank)
    built.timer = timer
    built.learn.add_cbs([KeepValidOutputs()])  # the last validation pass, for interpretation and thresholds
    runners = {
        "fine_tune": _fine_tune,
        "stage1": _stage1,
        "stage2": _stage2,
        "lr_find": _lr_find,
        "interpret": _interpret,
        "retrain": _fine_tune,  # from the champion's full weights, at the rates and epochs core.jobs.rates gives
    }
    return runners[spec.kind](spec, ctx, built)


def run_train(spec: TrainSpec, ctx: JobContext, items: LabelledItems | None = None) -> dict[str, Any]:
    """The fine-tune recipe (the CLI's `train`)."""
    return run_job(spec.model_copy(update={"kind": "fine_tune"}), ctx, items)


def run_lr_find(spec: TrainSpec, ctx: JobContext, items: LabelledItems | None = None) -> dict[str, Any]:
    """Only the learning-rate sweep (the CLI's `lr-find`)."""
    return run_job(spec.model_copy(update={"kind": "lr_find"}), ctx, items)


def _resume_and_base_lr(
    spec: TrainSpec, ctx: JobContext, learn: Learner, default: float, timer: PhaseTimer
) -> tuple[dict[str, Any] | None, float]:
    """The checkpoint to resume from, and the base rate: chosen once (lr_find when asked), then reused."""
    resume = ctx.latest_checkpoint()
    if resume is not None:
        learn.extra = dict(resume.get("extra", {}))
        return resume, float(learn.extra["base_lr"])
    with timer.phase("show_batch"):
        _show_batch(learn, ctx)
    if spec.lr == "find":
        with timer.phase("lr_find"):  # the rate serves the whole job: its frozen and unfrozen epochs
            base_lr = find_lr(learn, ctx, spec.freeze_epochs + spec.epochs).suggestions["valley"]
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
    learn, timer = built.learn, built.timer
    if spec.is_pretrained:
        learn.freeze()
    resume, base_lr = _resume_and_base_lr(spec, ctx, learn, 2e-3, timer)
    phases: list[Phase] = []
    if isinstance(spec.lr, tuple):  # a retrain at given rates: [a frozen stage at the head's rate,] then unfrozen
        lo, hi = spec.lr
        base_lr = learn.extra["base_lr"] = hi
        if spec.freeze_epochs:
            phases.append(Phase("stage1", "stage1", spec.freeze_epochs, hi))
        if spec.epochs:
            phases.append(Phase("stage2", "stage2", spec.epochs, hi, span=(lo, hi)))
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
            _use_size(learn, phase.size or spec.size)
        with timer.phase(f"fit:{phase.tag}"):
            learn.fit_phase(phase, resume=resume if i == start else None)
    last = phases[-1]
    lrs["last"] = last_stage(learn.lrs_for_groups(last.rates()), last.epochs, frozen=last.what == "stage1")
    return finish(spec, ctx, built, lrs)


def last_stage(rates: list[float], epochs: int, frozen: bool) -> dict[str, Any]:
    """How a model's last stage trained — its first and last layer group's rates, its epochs, whether the body
    was frozen — kept with the model (metrics.lrs.last): a retrain from it starts from these (core.jobs.rates)."""
    return {"low": rates[0], "high": rates[-1], "epochs": epochs, "frozen": frozen}


def _stage1(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """The course's stage 1: freeze the pretrained body, fit_one_cycle(epochs, slice(lr)) on the head."""
    learn, timer = built.learn, built.timer
    learn.freeze() if spec.is_pretrained else learn.unfreeze()
    resume, base_lr = _resume_and_base_lr(spec, ctx, learn, STAGE1_DEFAULT_LR, timer)
    lr: LrSpec = slice(base_lr) if spec.is_pretrained else base_lr
    with timer.phase("fit:stage1"):
        learn.fit_one_cycle(spec.epochs, lr, tag="stage1", resume=resume)
    rates = learn.lrs_for_groups(lr)
    last = last_stage(rates, spec.epochs, frozen=spec.is_pretrained)
    return finish(spec, ctx, built, {"base_lr": base_lr, "stage1": rates, "last": last})


def _stage2(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """Unfreeze the parent's model and train every group with discriminative rates."""
    learn, timer = built.learn, built.timer
    learn.unfreeze()
    resume = ctx.latest_checkpoint()
    if resume is not None:
        learn.extra = dict(resume.get("extra", {}))
        lo, hi = learn.extra["stage2_lr"]
    else:
        with timer.phase("show_batch"):
            _show_batch(learn, ctx)

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
    return finish(spec, ctx, built, lrs)


def _lr_find(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
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


def _interpret(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """Interpretation of the parent's model on the validation split."""
    manifest = read_manifest(spec.init_bundle) if spec.init_bundle else {}
    timer = built.timer
    with BackgroundPlots(ctx) as plots:
        with timer.phase("interpretation"):
            summary = write_interpretation(built.learn, ctx, manifest.get("thresholds"), plots)
        with timer.phase("suspects"):  # the interpretation's plots are drawn meanwhile
            found = suspects(spec, ctx, built.items, spec.folds, build_learner)
            if found:
                ctx.artifact_path("suspects.json").write_text(json.dumps(found))
                ctx.artifact_written("suspects.json")
        with timer.phase("plots"):
            plots.wait()
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
    return result | ({"suspects": len(found), "folds": spec.folds} if found else {}) | {"timings": timer.as_dict()}


def write_interpretation(
    learn: Learner, ctx: JobContext, thresholds: list[float] | None = None, plots: BackgroundPlots | None = None
) -> dict[str, Any]:
    """interpretation.json and its plots, as the task interprets its model (multi-label: with the given
    thresholds, else tuned ones), from the last validation pass when the learner kept a fresh one, else from
    a new pass. With `plots`, the pictures are drawn in the background (reported when it is waited for)."""
    interp = learn.dls.task.interpret(learn, thresholds, kept_valid_outputs(learn))
    summary = interp.as_dict()
    ctx.artifact_path("interpretation.json").write_text(json.dumps(summary, indent=1))
    ctx.artifact_written("interpretation.json")
    for name, draw in interp.plots():
        if plots is not None:
            plots.draw(name, draw)
        else:
            draw(ctx.artifact_path(name))
            ctx.artifact_written(name)
    return summary


def finish(spec: TrainSpec, ctx: JobContext, built: Built, lrs: dict[str, Any]) -> dict[str, Any]:
    """Interpret, plot, export, and write metrics.json (with each phase's seconds)."""
    if getattr(ctx, "follower", False):
        return {}  # a distributed fit's other ranks: rank 0 alone interprets and exports
    learn, timer = built.learn, built.timer
    with BackgroundPlots(ctx) as plots:
        # The loss curve needs only the recorder's rows: it is drawn while the interpretation is computed.
        batches, epochs = list(learn.recorder.batches), list(learn.recorder.epochs)
        plots.draw("plots/losses.png", partial(plot_losses, batches, epochs))
        with timer.phase("interpretation"):
            summary = write_interpretation(learn, ctx, plots=plots)
        thresholds = summary.get("thresholds")  # multi-label: tuned per class on the validation set
        with timer.phase("export"):
            extra = {"pretrained": built.body_source}
            export_bundle(learn, ctx.artifact_path("export"), extra=extra, thresholds=thresholds)
            ctx.artifact_written("export")
        with timer.phase("plots"):  # what drawing costs beyond what the phases above hid
            drawn = plots.wait()
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
        "timings": timer.as_dict(),
        "timings_background": {"plots": drawn},  # drawing time on the plot thread, overlapping the phases
    }
    ctx.artifact_path("metrics.json").write_text(json.dumps(metrics, indent=1))
    ctx.artifact_written("metrics.json")
    return metrics

"""What every kind of job is built from: a learner from a spec (`build_learner`), its lr sweep, its resume point
and base rate, and its end (`export_results`: interpret, plot, export, metrics.json). The kinds themselves, each a run
function over these, are in core/jobs/kinds/; core/jobs/runner.py runs one. Every kind reports and
checkpoints through the context and resumes from its latest checkpoint, mid-epoch included.

What a job does besides its epochs is kept cheap and measured: each phase's wall time goes to metrics.json
(`timings`); interpretation and thresholds reuse the last validation pass instead of predicting the
validation set again; the end-of-job plots are drawn on a thread of their own while the model is exported."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
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
from core.engine.drift import build_reference, write_reference
from core.engine.errors import DataError, WeightsMismatch
from core.engine.events import Callback
from core.engine.export import export_bundle, read_manifest
from core.engine.interpret import kept_valid_outputs
from core.engine.items import LabelledItems
from core.engine.learner import Learner
from core.engine.lr_finder import LRFindResult, sweep_steps
from core.engine.memory import MemoryGuard
from core.engine.metrics import get_metric
from core.engine.model import HeadConfig
from core.engine.plots import plot_losses, plot_lr_find, show_batch
from core.engine.tasks import task_of
from core.engine.transforms import get_transforms
from core.engine.vision import cnn_learner
from core.jobs.context import JobContext
from core.jobs.spec import TrainSpec

SHOW_BATCH_ITEMS = 16  # show_batch's max_n

log = logging.getLogger("fitcycle.training")


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
        self.drawn = 0.0  # seconds of the plots reported before `wait`

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
        seconds = self.drawn
        for name, future in self.pending:
            seconds += future.result()
            self.ctx.artifact_written(name)
        self.pending, self.drawn = [], 0.0
        return seconds

    def report_done(self) -> None:
        """Report the plots drawn so far (from the job's thread), leaving the others drawing."""
        waiting = []
        for name, future in self.pending:
            if future.done():
                self.drawn += future.result()
                self.ctx.artifact_written(name)
            else:
                waiting.append((name, future))
        self.pending = waiting


class ReportDrawnPlots(Callback):
    """After each epoch, report the plots the background thread has drawn (show_batch appears with the first
    epoch's row, not at the job's end)."""

    run_in_lr_find = False

    def __init__(self, plots: BackgroundPlots) -> None:
        self.plots = plots

    def after_epoch(self) -> None:
        self.plots.report_done()


@dataclass
class Built:
    """A learner ready to train, what it was built from, and the clock of the job it is built for."""

    learn: Learner
    items: LabelledItems
    arch: Architecture
    body_source: str
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    plots: BackgroundPlots | None = None  # the job's plot thread (run_spec's), joined when the job ends


def build_learner(
    spec: TrainSpec,
    ctx: JobContext,
    items: LabelledItems | None = None,
    rank: Rank | None = None,
    remap_classes: bool = False,
) -> Built:
    """Data, pretrained body, head (or a parent's full weights), and the callbacks to the context. With `rank`,
    this process's part of a distributed fit: its device, its shard of the data, DDP. With `remap_classes` (a
    retrain), the weights it continues from may have another class list (see _load_full_weights)."""
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
        CheckpointCallback(ctx.save_checkpoint, spec.checkpoint_every_n_steps, spec.checkpoint_every_seconds),
        StopCallback(ctx.should_stop if rank is None else agreed_stop(ctx.should_stop, rank)),
    ]
    if ctx.show_progress:
        cbs.append(ProgressCallback())
    if spec.grad_accum > 1:
        cbs.append(GradientAccumulation(spec.grad_accum))
    precision = resolve_precision(spec.precision, device)
    if precision != "fp32":
        cbs.append(MixedPrecision(precision, fp32_validation=device.type == "cpu"))
    if device.type == "cuda":
        if not spec.deterministic:  # every batch has the same size: pick the fastest kernels once
            torch.backends.cudnn.benchmark = True
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
    loss = task.chosen_loss(spec.loss)
    head = HeadConfig(ps=spec.head_dropout if spec.head_dropout is not None else task.head_dropout)
    learn, source = cnn_learner(items, spec.architecture, config, pretrained, metrics, cbs, device, loss, head)
    if spec.init_bundle:
        _load_full_weights(learn, spec.init_bundle, remap=remap_classes)
    if rank is None:  # one device: out of memory splits the batch (the ranks of a fit would have to agree)
        learn.memory_guard = MemoryGuard.of(spec.memory_ceiling_mb)
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


def show_batch_artifact(learn: Learner, ctx: JobContext, plots: BackgroundPlots | None = None) -> None:
    """plots/show_batch.png: the batch taken now, drawn on the plot thread when there is one (while training
    starts) [fastai: show_batch]."""
    name = "plots/show_batch.png"
    if plots is None:
        show_batch(learn.dls, ctx.artifact_path(name))
        ctx.artifact_written(name)
        return
    dls = learn.dls
    xb, yb = dls.one_batch()
    n = min(SHOW_BATCH_ITEMS, len(yb))
    images, targets = dls.normalize.decode(xb[:n]).cpu(), yb[:n].cpu()
    plots.draw(name, partial(dls.task.show_batch, images, targets, dls.classes))


def resume_and_base_lr(
    spec: TrainSpec, ctx: JobContext, learn: Learner, timer: PhaseTimer, plots: BackgroundPlots | None = None
) -> tuple[dict[str, Any] | None, float]:
    """The checkpoint to resume from, and the base rate: chosen once (lr_find when asked; the high end of a
    range), then reused."""
    resume = ctx.latest_checkpoint()
    if resume is not None:
        learn.extra = dict(resume.get("extra", {}))
        return resume, float(learn.extra["base_lr"])
    with timer.phase("show_batch"):
        show_batch_artifact(learn, ctx, plots)
    if spec.lr == "find":
        with timer.phase("lr_find"):  # the rate serves the whole job: its frozen and unfrozen epochs
            base_lr = find_lr(learn, ctx, spec.freeze_epochs + spec.epochs).suggestions["valley"]
    elif isinstance(spec.lr, float):
        base_lr = spec.lr
    elif isinstance(spec.lr, tuple):
        base_lr = spec.lr[1]
    else:
        raise ValueError(f"lr {spec.lr!r} is not a rate here: the job's kind resolves it first (core.jobs.kinds)")
    learn.extra = {"base_lr": base_lr}
    return None, base_lr


def use_size(learn: Learner, size: int) -> None:
    """Rebuild the data at another size (progressive resizing): same items, split, seeds and statistics."""
    dls = learn.dls
    if dls.config.size != size:
        config = dataclasses.replace(dls.config, size=size)
        learn.dls = ImageDataLoaders(dls.items, config, stats=dls.stats, device=dls.device)


def last_stage(rates: list[float], epochs: int, frozen: bool) -> dict[str, Any]:
    """How a model's last stage trained — its first and last layer group's rates, its epochs, whether the body
    was frozen — kept with the model (metrics.lrs.last): a retrain from it starts from these (core.jobs.rates)."""
    return {"low": rates[0], "high": rates[-1], "epochs": epochs, "frozen": frozen}


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


def drift_reference(learn: Learner, bundle: Path, seed: int | None) -> None:
    """The bundle's drift reference (core/engine/drift.py): its answers to the validation images, as served. A
    model without validation items has none (its drift is not watched); a failure here is logged, not the job's."""
    valid = learn.dls.valid.dataset
    images = [valid.items.path(i) for i in valid.indices]
    if not images:
        return
    try:
        write_reference(bundle, build_reference(bundle, images, seed or 0))
    except Exception:
        log.exception("no drift reference for %s", bundle)


def export_results(spec: TrainSpec, ctx: JobContext, built: Built, lrs: dict[str, Any]) -> dict[str, Any]:
    """Interpret, plot, export, and write metrics.json (with each phase's seconds)."""
    if getattr(ctx, "follower", False):
        return {}  # a distributed fit's other ranks: rank 0 alone interprets and exports
    learn, timer = built.learn, built.timer
    plot_thread = contextlib.nullcontext(built.plots) if built.plots is not None else BackgroundPlots(ctx)
    with plot_thread as plots:
        # The loss curve needs only the recorder's rows: it is drawn while the interpretation is computed.
        batches, epochs = list(learn.recorder.batches), list(learn.recorder.epochs)
        plots.draw("plots/losses.png", partial(plot_losses, batches, epochs))
        with timer.phase("interpretation"):
            summary = write_interpretation(learn, ctx, plots=plots)
        thresholds = learn.dls.task.tuned_thresholds(summary)  # multi-label: tuned per class on the validation set
        with timer.phase("export"):
            extra = {"pretrained": built.body_source}
            export_bundle(learn, ctx.artifact_path("export"), extra=extra, thresholds=thresholds, onnx=spec.onnx)
        with timer.phase("drift_reference"):
            drift_reference(learn, ctx.artifact_path("export"), spec.seed)
        with timer.phase("export"):
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
        "oom_backoff": learn.oom_backoff,  # each time out of memory halved the micro-batch (core/engine/memory.py)
        "timings": timer.as_dict(),
        "timings_background": {"plots": drawn},  # drawing time on the plot thread, overlapping the phases
    }
    ctx.artifact_path("metrics.json").write_text(json.dumps(metrics, indent=1))
    ctx.artifact_written("metrics.json")
    return metrics

"""An estimate before a job runs (issue 27, part 1): a short probe of the job's real model at its real size on a worker
of its queue (`probe`: timed batches frozen and unfrozen, a validation batch, decoding, an export, answers), and the
dataset's counts, make the seconds of each phase it will run, its total, its peak memory and the bytes it will store
(`Estimate`). Each kind says which phases it runs (`JobKind.estimate`, from the helpers here), so a phase's name is
the one its timings will carry (core/jobs/training.PhaseTimer): the job page sets estimate against actual.

What the probe cannot see is said, not guessed: a fit's epochs after the first read the decode cache (no decoding);
the first epoch decodes every image once; a background thread's plots overlap the phases and are not counted."""

from __future__ import annotations

import math
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.engine.callbacks import resolve_precision
from core.engine.drift import MAX_REFERENCE_ITEMS
from core.engine.events import Callback, CancelFitException
from core.engine.export import export_bundle
from core.engine.inference import Predictor
from core.engine.items import LabelledItems
from core.engine.learner import Learner
from core.engine.lr_finder import sweep_steps
from core.jobs.context import LocalJobContext
from core.jobs.spec import TrainSpec
from core.jobs.training import build_learner, pick_device

PROBE_STEPS = 4  # timed training steps of each kind (frozen, unfrozen), after one untimed
PROBE_ITEMS = 32  # items decoded, and answered, to time one
PLOT_BYTES = 400_000  # what a job's plots and JSON artifacts take, about (measured: 150-350 kB at 4-10 classes)


@dataclass
class Probe:
    """What a few batches of the job's model, at its size, on this worker, took."""

    build: float  # building the learner: data, statistics, model
    decode_item: float  # decoding and resizing one image (the first epoch does each once)
    frozen_step: float  # one training step with the body frozen (stage 1)
    unfrozen_step: float  # one with every layer group training
    valid_batch: float  # one validation batch (twice the training batch)
    export: float  # the export bundle, model.onnx and its check included
    predict_item: float  # one image answered by the exported bundle (drift reference, predict jobs)
    bundle_bytes: int
    checkpoint_bytes: int
    peak_memory_bytes: int  # the device's peak (CUDA) or the worker process's peak resident memory (CPU)
    device: str
    precision: str
    threads: int


@dataclass
class Counts:
    """What the estimate needs of the data."""

    n_train: int
    n_valid: int
    train_batches: int
    valid_batches: int

    @property
    def n_items(self) -> int:
        return self.n_train + self.n_valid


@dataclass
class Estimate:
    """A job's expected seconds per phase (its timings' names) and in all, its peak memory and stored bytes."""

    phases: dict[str, float]
    peak_memory_bytes: int
    stored_bytes: int
    probe: Probe
    counts: Counts
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.phases.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "total_seconds": round(self.total, 3),
            "peak_memory_bytes": self.peak_memory_bytes,
            "stored_bytes": self.stored_bytes,
            "probe": asdict(self.probe),
            "counts": asdict(self.counts),
            "notes": self.notes,
        }


class _StopAfter(Callback):
    """Times each training batch of a fit and stops it after `n` of them."""

    order = 100

    def __init__(self, n: int) -> None:
        self.n = n
        self.seconds: list[float] = []

    def before_batch(self) -> None:
        self.t0 = time.perf_counter()

    def after_batch(self) -> None:
        if self.learn.training:
            self.seconds.append(time.perf_counter() - self.t0)
            if len(self.seconds) >= self.n:
                raise CancelFitException()


def _steps(learn: Learner, n: int) -> float:
    """The median seconds of a training step (of batches already decoded once), after an untimed one."""
    warm = _StopAfter(n + 1)
    learn.fit(1, 1e-4, cbs=[warm])  # decodes (and caches) the first batches
    timed = _StopAfter(n + 1)
    learn.fit_index -= 1  # the same stream again: the same, now decoded, batches
    learn.fit(1, 1e-4, cbs=[timed])
    return sorted(timed.seconds[1:])[len(timed.seconds[1:]) // 2]


def _valid_batch(learn: Learner, precision: str) -> float:
    """One validation batch's forward, as the fit runs it: autocast on a GPU, fp32 on a CPU (MixedPrecision's
    fp32_validation)."""
    loader = learn.dls.valid
    loader.set_epoch(0, 0)
    learn.model.eval()
    xb, _ = next(iter(loader))  # decoded here: the timed pass below is the model's
    device = learn.dls.device
    autocast = device.type == "cuda" and precision != "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
        learn.model(xb)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        learn.model(xb)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _decode_item(learn: Learner) -> float:
    ds = learn.dls.train.dataset
    n = min(PROBE_ITEMS, len(ds))
    t0 = time.perf_counter()
    for i in range(n):
        ds._decode(i)
    return (time.perf_counter() - t0) / max(1, n)


def _answer_seconds(predictor: Predictor, items: LabelledItems) -> float:
    """Seconds a bundle takes to answer one image (its decoding included): the first PROBE_ITEMS, after a warm-up."""
    images = [items.path(i) for i in range(min(PROBE_ITEMS, len(items)))]
    predictor.predict_batch(images[:4])
    t0 = time.perf_counter()
    predictor.predict_batch(images)
    return (time.perf_counter() - t0) / max(1, len(images))


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def counts_of(learn: Learner) -> Counts:
    dls = learn.dls
    return Counts(len(dls.train.dataset), len(dls.valid.dataset), len(dls.train), len(dls.valid))


def probe(spec: TrainSpec, items: LabelledItems) -> tuple[Probe, Counts]:
    """Time the job's model at its size on this machine: a few batches frozen and unfrozen, a validation batch,
    decoding, an export and the exported bundle's answers."""
    device = pick_device(spec.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="fitcycle-probe-") as tmp:
        ctx = LocalJobContext(Path(tmp) / "job", show_progress=False)
        quiet = spec.model_copy(update={"checkpoint_every_seconds": 86400.0, "checkpoint_every_n_steps": None})
        t0 = time.perf_counter()
        built = build_learner(quiet, ctx, items)
        build = time.perf_counter() - t0
        learn = built.learn
        decode = _decode_item(learn)
        learn.freeze()
        frozen = _steps(learn, PROBE_STEPS)
        learn.unfreeze()
        unfrozen = _steps(learn, PROBE_STEPS)
        precision = resolve_precision(spec.precision, device)
        valid = _valid_batch(learn, precision)
        state = learn.checkpoint_state(end_of_epoch=True)
        checkpoint = Path(tmp) / "ckpt.pt"
        torch.save(state, checkpoint)
        t0 = time.perf_counter()
        bundle = export_bundle(learn, Path(tmp) / "export", onnx=spec.onnx)
        export = time.perf_counter() - t0
        predict = _answer_seconds(Predictor(bundle), items)
        bundle_bytes = sum(f.stat().st_size for f in Path(bundle).rglob("*") if f.is_file())
        found = Probe(
            build=build,
            decode_item=decode,
            frozen_step=frozen,
            unfrozen_step=unfrozen,
            valid_batch=valid,
            export=export,
            predict_item=predict,
            bundle_bytes=bundle_bytes,
            checkpoint_bytes=checkpoint.stat().st_size,
            peak_memory_bytes=_peak_memory(device),
            device=str(device),
            precision=precision,
            threads=torch.get_num_threads(),
        )
        return found, counts_of(learn)


def probe_answers(spec: TrainSpec, items: LabelledItems) -> tuple[Probe, Counts]:
    """A job that answers with a model (predict): the model's bundle answering a few of the items."""
    if not spec.init_bundle:
        raise ValueError("a job that answers with a model needs its bundle (init_bundle)")
    device = pick_device(spec.device)
    t0 = time.perf_counter()
    predictor = Predictor(spec.init_bundle)
    build = time.perf_counter() - t0
    predict = _answer_seconds(predictor, items)
    bundle_bytes = sum(f.stat().st_size for f in Path(spec.init_bundle).rglob("*") if f.is_file())
    n_valid = sum(items.is_valid)
    found = Probe(
        build=build,
        decode_item=0.0,
        frozen_step=0.0,
        unfrozen_step=0.0,
        valid_batch=0.0,
        export=0.0,
        predict_item=predict,
        bundle_bytes=bundle_bytes,
        checkpoint_bytes=0,
        peak_memory_bytes=_peak_memory(device),
        device=str(device),
        precision=predictor.backend,
        threads=torch.get_num_threads(),
    )
    return found, Counts(len(items) - n_valid, n_valid, 0, 0)


# ----- the phases a kind runs: its JobKind.estimate builds them from these ------------------------------------------
PhaseEstimator = Callable[[TrainSpec, Counts, Probe], dict[str, float]]


def fit_seconds(epochs: int, frozen: bool, counts: Counts, p: Probe) -> float:
    """A fit of `epochs`: its training steps and its validation passes."""
    step = p.frozen_step if frozen else p.unfrozen_step
    return epochs * (counts.train_batches * step + counts.valid_batches * p.valid_batch)


def first_decode(counts: Counts, p: Probe) -> float:
    """The first epoch's decoding of every image (later epochs read the decode cache)."""
    return counts.n_items * p.decode_item


def ending(counts: Counts, p: Probe, exports: bool = True) -> dict[str, float]:
    """What a model-making job does after its fits: interpretation (the kept validation outputs, its worst items
    decoded again), export, and the drift reference (at most MAX_REFERENCE_ITEMS validation images answered)."""
    out = {"interpretation": p.valid_batch + 16 * p.decode_item}
    if exports:
        out["export"] = p.export
        out["drift_reference"] = min(MAX_REFERENCE_ITEMS, counts.n_valid) * p.predict_item
    return out


def sweep_seconds(epochs: int, counts: Counts, p: Probe, frozen: bool) -> float:
    """An lr_find sweep sized to the stage it serves (core.engine.lr_finder.sweep_steps)."""
    steps = sweep_steps(epochs * counts.train_batches)
    return steps * (p.frozen_step if frozen else p.unfrozen_step)


def fine_tune_phases(spec: TrainSpec, counts: Counts, p: Probe) -> dict[str, float]:
    """stage 1 frozen then stage 2 unfrozen (from scratch: one unfrozen fit of both), per size of a plan."""
    phases: dict[str, float] = {"build": p.build}
    if spec.lr == "find":
        phases["lr_find"] = sweep_seconds(spec.freeze_epochs + spec.epochs, counts, p, frozen=spec.is_pretrained)
    decode = first_decode(counts, p)
    sizes = spec.plan or []
    steps = [(s.size, s.freeze_epochs, s.epochs) for s in sizes] or [(spec.size, None, None)]
    for size, freeze, epochs in steps:
        scale = (size / spec.size) ** 2  # compute grows with the pixels
        frozen_epochs = spec.freeze_epochs if freeze is None else freeze
        unfrozen_epochs = spec.epochs if epochs is None else epochs
        prefix = f"{size}px-" if sizes else ""
        if not spec.is_pretrained:
            phases[f"fit:{prefix}train"] = scale * fit_seconds(frozen_epochs + unfrozen_epochs, False, counts, p)
        else:
            if frozen_epochs:
                phases[f"fit:{prefix}stage1"] = scale * fit_seconds(frozen_epochs, True, counts, p)
            if unfrozen_epochs:
                phases[f"fit:{prefix}stage2"] = scale * fit_seconds(unfrozen_epochs, False, counts, p)
    first_fit = next(k for k in phases if k.startswith("fit:"))
    phases[first_fit] += decode
    return {**phases, **ending(counts, p)}


def one_fit_phases(tag: str, frozen: Callable[[TrainSpec], bool]) -> PhaseEstimator:
    """A kind of one fit of `epochs` (stage 1, stage 2): frozen as `frozen(spec)` says."""

    def phases(spec: TrainSpec, counts: Counts, p: Probe) -> dict[str, float]:
        out: dict[str, float] = {"build": p.build}
        if spec.lr == "find":
            out["lr_find"] = sweep_seconds(spec.epochs, counts, p, frozen(spec))
        out[f"fit:{tag}"] = fit_seconds(spec.epochs, frozen(spec), counts, p) + first_decode(counts, p)
        return {**out, **ending(counts, p)}

    return phases


def sweep_phases(spec: TrainSpec, counts: Counts, p: Probe) -> dict[str, float]:
    """An lr_find job: the sweep (sized for the epochs a stage would run)."""
    steps = sweep_steps((spec.freeze_epochs + spec.epochs) * counts.train_batches)
    return {"build": p.build, "lr_find": steps * p.unfrozen_step + first_decode(counts, p)}


def answer_phases(spec: TrainSpec, counts: Counts, p: Probe) -> dict[str, float]:
    """A predict job: every item answered by the bundle."""
    return {"build": p.build, "answer": counts.n_items * p.predict_item}  # the probe's answers decoded theirs too


def estimate(spec: TrainSpec, phases: PhaseEstimator, p: Probe, counts: Counts, makes_model: bool) -> Estimate:
    """The job's phases from its kind's estimator, its peak memory and what it stores."""
    seconds = phases(spec, counts, p)
    stored = (p.bundle_bytes + PLOT_BYTES) if makes_model else PLOT_BYTES
    notes = [
        f"probed on {p.device} ({p.threads} threads, {p.precision}): {PROBE_STEPS} steps frozen and unfrozen, "
        f"{p.frozen_step * 1000:.0f} and {p.unfrozen_step * 1000:.0f} ms a step"
        if p.frozen_step
        else f"probed on {p.device} ({p.threads} threads): {p.predict_item * 1000:.1f} ms an image answered"
    ]
    if spec.gpus > 1:
        notes.append(f"probed on one device: the job trains on {spec.gpus}; its fits take about 1/{spec.gpus} of this")
    if p.device == "cpu":
        notes.append("peak memory: the worker process's peak resident memory so far (earlier jobs' included)")
    if makes_model:
        notes.append(
            f"stored: the export bundle ({p.bundle_bytes / 1e6:.1f} MB) and plots; a checkpoint "
            f"({p.checkpoint_bytes / 1e6:.1f} MB) while it runs, dropped when it succeeds"
        )
    if not math.isfinite(sum(seconds.values())):
        raise ValueError(f"the probe measured no finite time: {seconds}")
    return Estimate(seconds, p.peak_memory_bytes, stored, p, counts, notes)

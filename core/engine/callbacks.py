"""The callbacks the training loop is made of: recording, one-cycle schedules, progress, checkpoints,
reporting to the outside world, stopping on request, mixed precision, channels_last and gradient
accumulation."""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import torch
from tqdm.auto import tqdm

from core.engine.distributed import unwrap
from core.engine.errors import DataError
from core.engine.events import Callback, CancelStepException
from core.engine.metrics import metric_name
from core.engine.schedules import one_cycle_lr, one_cycle_mom


class Recorder(Callback):
    """Per-batch loss (raw and smoothed), lr and momentum; per-epoch train loss, valid loss, metrics, time."""

    order = 50
    beta = 0.98

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []
        self._avg, self._count = 0.0, 0
        self._train_sum, self._train_n, self._epoch_seconds = 0.0, 0, 0.0

    # Smoothed loss restarts with each fit, as fastai's does.
    def before_fit(self) -> None:
        self._avg, self._count = 0.0, 0

    def before_epoch(self) -> None:
        self._t0 = time.perf_counter()
        if not (self.learn._resume and self.learn.epoch == self.learn.start_epoch and self.learn.start_batch):
            self._train_sum, self._train_n, self._epoch_seconds = 0.0, 0, 0.0

    def before_validate(self) -> None:
        self._valid_preds: list[torch.Tensor] = []
        self._valid_targs: list[torch.Tensor] = []
        self._valid_sum, self._valid_n = 0.0, 0

    @property
    def smooth_loss(self) -> float:
        """Debiased exponential moving average of the training loss."""
        return self._avg / (1 - self.beta**self._count) if self._count else math.nan

    def after_batch(self) -> None:
        learn = self.learn
        n = len(learn.yb)
        if not learn.training:
            self._valid_sum += learn.loss.item() * n
            self._valid_n += n
            if not learn.metrics:  # a language model's metrics are its own callback's (its logits are huge)
                return
            pred, targ = learn.pred.detach(), learn.yb.detach()
            if pred.ndim == 4:  # segmentation: keep each pixel's class, not C logits (the metrics need no more)
                pred, targ = pred.argmax(dim=1).to(torch.int16), targ.to(torch.int16)
            self._valid_preds.append(pred.float().cpu() if pred.is_floating_point() else pred.cpu())
            self._valid_targs.append(targ.cpu())
            return
        loss = learn.loss.item()
        self._count += 1
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        self._train_sum += loss * n
        self._train_n += n
        assert learn.opt is not None
        pg = learn.opt.param_groups[-1]
        self.batches.append(
            {
                "iter": learn.train_iter,
                "epoch": learn.epoch,
                "batch": learn.iter,
                "tag": learn.tag,
                "n_epoch": learn.n_epoch,
                "n_batches": learn.n_train_batches,
                "loss": loss,
                "smooth_loss": self.smooth_loss,
                "lr": pg["lr"],
                "mom": pg["betas"][0],
            }
        )

    def after_epoch(self) -> None:
        learn = self.learn
        row: dict[str, Any] = {
            "epoch": learn.epoch,
            "tag": learn.tag,
            "train_loss": self._train_sum / max(1, self._train_n),
        }
        if getattr(self, "_valid_n", 0):
            row["valid_loss"] = self._valid_sum / self._valid_n
            if learn.metrics:
                preds, targs = torch.cat(self._valid_preds), torch.cat(self._valid_targs)
                for m in learn.metrics:
                    row[metric_name(m)] = m(preds, targs)
            self._valid_n = 0
        self._epoch_seconds += time.perf_counter() - self._t0
        row["seconds"] = round(self._epoch_seconds, 3)
        self.epochs.append(row)

    def state(self) -> dict[str, Any]:
        """Plain state for checkpoints, so a resumed run's curves continue where they stopped."""
        now = time.perf_counter()
        seconds = self._epoch_seconds + now - getattr(self, "_t0", now)
        return {
            "batches": list(self.batches),
            "epochs": list(self.epochs),
            "avg": self._avg,
            "count": self._count,
            "train_sum": self._train_sum,
            "train_n": self._train_n,
            "epoch_seconds": seconds,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore from state()."""
        self.batches, self.epochs = list(state["batches"]), list(state["epochs"])
        self._avg, self._count = float(state["avg"]), int(state["count"])
        self._train_sum, self._train_n = float(state["train_sum"]), int(state["train_n"])
        self._epoch_seconds = float(state["epoch_seconds"])


class OneCycleScheduler(Callback):
    """Sets every layer group's lr and the momentum from one-cycle schedules of the fit's position."""

    order = 10

    def __init__(
        self,
        lr_maxes: list[float],
        div: float,
        div_final: float,
        pct_start: float,
        moms: tuple[float, float, float],
    ) -> None:
        self.lr_scheds = [one_cycle_lr(lr, pct_start, div, div_final) for lr in lr_maxes]
        self.mom_sched = one_cycle_mom(pct_start, moms)

    def before_batch(self) -> None:
        if self.learn.training:
            pos = self.learn.pct_train
            self.learn.set_hypers([s(pos) for s in self.lr_scheds], self.mom_sched(pos))


class ProgressCallback(Callback):
    """A progress bar over the loader with the smoothed loss; a table row per epoch."""

    order = 60

    def __init__(self, file: Any = None) -> None:
        self.file = file or sys.stderr
        self._header: list[str] = []

    def before_train(self) -> None:
        learn = self.learn
        desc = f"{learn.tag + ' ' if learn.tag else ''}epoch {learn.epoch + 1}/{learn.n_epoch}"
        self.bar = tqdm(
            learn.batches,
            total=learn.dl.n_batches_left(),
            desc=desc,
            leave=False,
            file=self.file,
            dynamic_ncols=True,
        )
        learn.batches = self.bar

    def after_batch(self) -> None:
        if self.learn.training and self.learn.iter % 5 == 0:
            self.bar.set_postfix(loss=f"{self.learn.recorder.smooth_loss:.4f}", refresh=False)

    def after_train(self) -> None:
        self.bar.close()

    def before_validate(self) -> None:
        self.learn.batches = tqdm(
            self.learn.batches,
            total=len(self.learn.dl),
            desc="valid",
            leave=False,
            file=self.file,
            dynamic_ncols=True,
        )

    def after_epoch(self) -> None:
        row = self.learn.recorder.epochs[-1] if self.learn.recorder.epochs else None
        if row is None or self.learn.lr_finding:
            return
        cols = [k for k in row if k not in ("tag",)]
        if cols != self._header:
            tqdm.write("  ".join(f"{c:>12}" for c in ["stage", *cols]), file=self.file)
            self._header = cols
        vals = [f"{v:>12.4f}" if isinstance(v, float) else f"{v:>12}" for v in (row[c] for c in cols)]
        tqdm.write("  ".join([f"{row['tag'] or '-':>12}", *vals]), file=self.file)


class CheckpointCallback(Callback):
    """Hands a checkpoint dict to `save` by a time policy [Determined: min_checkpoint_period]: after the first
    epoch that ends `every_seconds` or more after the last checkpoint (or the callback's start), and mid-epoch
    after the first batch past that; 0 (the default): after every epoch. `every_n_steps`: also every that many
    training batches. A stop (a cancel, a worker's SIGTERM) always writes one, so a job shorter than the
    interval writes none unless it is stopped, and still resumes from where it stopped."""

    order = 70
    run_in_lr_find = False

    def __init__(
        self, save: Callable[[dict[str, Any]], None], every_n_steps: int | None = None, every_seconds: float = 0.0
    ) -> None:
        self.save, self.every_n_steps, self.every_seconds = save, every_n_steps, every_seconds
        self.last = time.monotonic()

    def _due(self) -> bool:
        return time.monotonic() - self.last >= self.every_seconds

    def _save(self, state: dict[str, Any]) -> None:
        self.save(state)
        self.last = time.monotonic()

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.training or learn.iter + 1 >= len(learn.dl):
            return  # the epoch's last batch: after_epoch decides
        steps = self.every_n_steps or 0
        by_steps = steps > 0 and (learn.train_iter + 1) % steps == 0
        by_time = self.every_seconds > 0 and self._due()
        if by_steps or by_time:
            self._save(learn.checkpoint_state(end_of_epoch=False))

    def after_epoch(self) -> None:
        if self._due():
            self._save(self.learn.checkpoint_state(end_of_epoch=True))

    def before_stop(self) -> None:
        """Stopped before a training batch (cancelled, or the worker shutting down): keep every step done."""
        self._save(self.learn.checkpoint_state(end_of_epoch=False, before_batch=True))


class MetricsSink(Protocol):
    """Where reported metrics go (a job's database rows, a file, a test's list)."""

    def on_batch(self, row: dict[str, Any]) -> None:
        """A sampled training batch: iter, epoch, loss, smooth_loss, lr, mom."""

    def on_epoch(self, row: dict[str, Any]) -> None:
        """An epoch: train_loss, valid_loss, each metric, seconds."""


class ReportCallback(Callback):
    """Sends every epoch row, and batch rows to a MetricsSink: every `batch_every`-th, more often when an
    epoch is short (at least ten a epoch, every batch for epochs under ten), and always an epoch's last."""

    order = 65
    run_in_lr_find = False

    def __init__(self, sink: MetricsSink, batch_every: int = 10) -> None:
        self.sink, self.batch_every = sink, max(1, batch_every)

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.training:
            return
        n_batches = len(learn.dl)
        every = max(1, min(self.batch_every, n_batches // 10))
        if learn.train_iter % every == 0 or learn.iter + 1 >= n_batches:
            self.sink.on_batch(learn.recorder.batches[-1])

    def after_epoch(self) -> None:
        if self.learn.recorder.epochs:
            self.sink.on_epoch(self.learn.recorder.epochs[-1])

    def after_oom_backoff(self) -> None:
        """Out of memory halved the micro-batch (core/engine/memory.py): the sink hears it when it listens."""
        notice = getattr(self.sink, "on_notice", None)
        if notice is not None:
            notice({"kind": "oom_backoff", **self.learn.oom_backoff[-1]})


class TrainingStopped(Exception):
    """Raised out of fit when a stop was requested (a cancelled job); the last checkpoint stays."""


class StopCallback(Callback):
    """Asks `should_stop()` before each training batch and stops the fit when it says yes."""

    order = 0
    run_in_lr_find = True

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def before_batch(self) -> None:
        if self.learn.training and self.should_stop():
            self.learn("before_stop")  # at a batch boundary: a checkpoint here loses no step
            raise TrainingStopped("stop requested")


class GradientAccumulation(Callback):
    """Steps the optimizer every `n_acc` batches, with the loss scaled so gradients average."""

    order = 5

    def __init__(self, n_acc: int = 2) -> None:
        self.n_acc = n_acc

    def before_fit(self) -> None:
        self.count = 0

    def after_loss(self) -> None:
        if self.learn.training:
            self.learn.loss_grad = self.learn.loss_grad / self.n_acc

    def before_step(self) -> None:
        self.count += 1
        if self.count % self.n_acc:
            raise CancelStepException()


Precision = Literal["bf16", "fp16", "fp32"]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX): there oneDNN's bf16 convolutions and
    matmuls take about two thirds of fp32's time; elsewhere bf16 is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str | None, device: torch.device, cpu_bf16: bool = True) -> Precision:
    """The precision a fit runs in: as requested, else bf16 on a GPU that has it, fp16 on one that does not, bf16
    on a CPU that computes in it natively (with `cpu_bf16`: the convolutional models), and fp32 on other CPUs."""
    if requested is None:
        if device.type != "cuda":
            return "bf16" if device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16() else "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be bf16, fp16 or fp32; got '{requested}'")
    if requested == "fp16" and device.type != "cuda":
        raise DataError("fp16 autocast is for GPUs (it does not train reliably on CPU): use bf16 or fp32 on CPU")
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DataError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16: use precision fp16")
    return cast(Precision, requested)


class MixedPrecision(Callback):
    """Autocast forward and loss to bf16 or fp16 on the learner's device (CUDA or CPU). bf16 keeps fp32's range,
    so it needs no loss scaling; fp16 steps through a GradScaler. Weights, gradients and the optimizer stay fp32.
    A task whose outputs are coordinates or values (`Task.fp32_head`) keeps its head in fp32: a bf16 output has
    3 significant digits, coarser than the residuals a regression learns from once it is close. With
    `fp32_validation` (on a CPU) the validation passes run in fp32: their metrics are exact, and the last one serves
    interpretation as it is (core.engine.interpret.KeepValidOutputs), where a second pass would cost more than
    bf16 saved."""

    order = 9

    def __init__(self, precision: Precision = "fp16", fp32_validation: bool = False) -> None:
        assert precision in ("bf16", "fp16")
        self.precision, self.fp32_validation = precision, fp32_validation
        self.autocast: torch.autocast | None = None
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        self.scaler: torch.amp.GradScaler | None = None
        self.hooks: list[torch.utils.hooks.RemovableHandle] = []

    def before_fit(self) -> None:
        self.device_type = self.learn.dls.device.type
        self.scaler = torch.amp.GradScaler(self.device_type) if self.precision == "fp16" else None
        model = unwrap(self.learn.model)
        if getattr(self.learn.dls.task, "fp32_head", False) and isinstance(model, torch.nn.Sequential):
            self.hooks = full_precision(model[-1], self.device_type)

    def after_fit(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []

    def before_batch(self) -> None:
        if self.fp32_validation and not self.learn.training:
            return
        self.autocast = torch.autocast(self.device_type, dtype=self.dtype)
        self.autocast.__enter__()

    def before_micro_batch(self) -> None:
        """A batch split in micro-batches (core.engine.memory): each one's forward autocasts again."""
        self._leave()
        self.before_batch()

    def _leave(self) -> None:
        if self.autocast is not None:
            self.autocast.__exit__(None, None, None)
            self.autocast = None

    def after_loss(self) -> None:
        self._leave()
        self.learn.loss_grad = self.learn.loss_grad.float()

    def after_cancel_batch(self) -> None:
        self._leave()

    def before_backward(self) -> None:
        if self.scaler is not None:
            self.learn.loss_grad = self.scaler.scale(self.learn.loss_grad)

    def before_step(self) -> None:
        if self.scaler is None:
            return
        opt = self.learn.opt
        assert opt is not None
        self.scaler.step(opt)
        self.scaler.update()
        opt.zero_grad(set_to_none=True)
        raise CancelStepException()


def full_precision(module: torch.nn.Module, device_type: str) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that run `module` in fp32 inside an autocast region (its input cast to float); remove them to undo."""
    regions: list[torch.autocast] = []

    def enter(_: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        region = torch.autocast(device_type, enabled=False)
        region.__enter__()
        regions.append(region)
        return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    def leave(_: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        regions.pop().__exit__(None, None, None)

    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]


class CompileModel(Callback):
    """torch.compile the model in place (nn.Module.compile, so its state_dict keys stay the same). A trial forward
    on the first batch shows whether this machine can compile it; when it cannot (no compiler, an unsupported
    op), the fit goes on eager and `status` says why. Later compile errors fall back to eager too."""

    order = 2

    def __init__(self) -> None:
        self.status = "not tried"
        self.checked = False

    def before_fit(self) -> None:
        if self.status == "not tried":
            import torch._dynamo

            torch._dynamo.config.suppress_errors = True  # a graph that fails later runs eager, with a warning
            self.learn.model.compile()
            self.status = "compiling"

    def before_batch(self) -> None:
        if self.checked or not self.learn.training:
            return
        self.checked = True
        model = self.learn.model
        try:
            model.eval()  # a trial that leaves the norm layers' running statistics alone
            with torch.no_grad():
                model(self.learn.xb)
            self.status = "compiled"
        except Exception as exc:
            model._compiled_call_impl = None  # back to eager
            self.status = f"not compiled ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); trained eager"
            print(f"fitcycle: torch.compile failed, training eager instead: {self.status}", file=sys.stderr)
        finally:
            model.train()
        self.learn.extra["compile"] = self.status


class ChannelsLast(Callback):
    """channels_last memory format for the model and every batch (CUDA only)."""

    order = 1

    def before_fit(self) -> None:
        self.learn.model.to(memory_format=torch.channels_last)

    def before_batch(self) -> None:
        self.learn.xb = self.learn.xb.contiguous(memory_format=torch.channels_last)

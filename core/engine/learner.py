"""The Learner: a small training loop of short methods wrapped in events [fastai v2's Learner].
Progress, metrics, schedules, checkpoints, mixed precision and lr_find are callbacks; cancelling
is an exception, not a flag."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

from core.engine.architectures import Architecture
from core.engine.callbacks import OneCycleScheduler, Recorder
from core.engine.data import ImageDataLoaders
from core.engine.distributed import unwrap
from core.engine.errors import CheckpointError
from core.engine.events import (
    Callback,
    CancelBackwardException,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
    CancelTrainException,
    CancelValidException,
    LrSpec,
)
from core.engine.lr_finder import LRFindResult, run_lr_find
from core.engine.memory import (
    MAX_HALVINGS,
    MemoryGuard,
    OutOfMemoryFailure,
    empty_cache,
    failure_text,
    is_out_of_memory,
)
from core.engine.metrics import Metric
from core.engine.model import layer_groups

LR_MULT = 100  # fastai fine_tune: stage 2 spreads base_lr/2 over 100x from the first group to the head
CHECKPOINT_FORMAT = "fitcycle-checkpoint"
CHECKPOINT_VERSION = 1
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class Phase:
    """One fit of the fine-tune recipe: stage 1 (frozen body), stage 2 (unfrozen, discriminative rates) or
    training from scratch, for some epochs at a base rate (and, in a progressive-resizing plan, a size)."""

    tag: str  # names the phase in metrics and checkpoints: where a resumed job picks up
    what: Literal["stage1", "stage2", "scratch"]
    epochs: int
    lr: float
    size: int | None = None
    span: tuple[float, float] | None = None  # stage 2 at these (first group, last group) rates instead

    def rates(self) -> LrSpec:
        """Stage 1: slice(lr) (body lr/10, head lr); stage 2: slice(lr/2/LR_MULT, lr/2), or slice(*span) when
        given; scratch: lr everywhere."""
        if self.what == "stage1":
            return slice(self.lr)
        if self.what == "stage2":
            return slice(*self.span) if self.span else slice(self.lr / 2 / LR_MULT, self.lr / 2)
        return self.lr


def fine_tune_phases(
    epochs: int, lr: float, freeze_epochs: int = 1, pretrained: bool = True, prefix: str = "", size: int | None = None
) -> list[Phase]:
    """The recipe as phases: a pretrained body trains frozen for freeze_epochs, then unfrozen for epochs;
    a body from scratch trains unfrozen for both. Phases of zero epochs are left out."""
    if not pretrained:
        return [Phase(f"{prefix}train", "scratch", freeze_epochs + epochs, lr, size)]
    phases = []
    if freeze_epochs:
        phases.append(Phase(f"{prefix}stage1", "stage1", freeze_epochs, lr, size))
    if epochs:
        phases.append(Phase(f"{prefix}stage2", "stage2", epochs, lr, size))
    return phases


class Learner:
    """Trains `model` on `dls` with AdamW (decoupled weight decay, none on norms and biases)."""

    def __init__(
        self,
        dls: ImageDataLoaders,
        model: nn.Module,
        loss_func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        metrics: Sequence[Metric] = (),
        arch: Architecture | None = None,
        wd: float = 0.01,
        moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
        cbs: Iterable[Callback] = (),
    ) -> None:
        self.dls, self.arch, self.wd, self.moms = dls, arch, wd, moms
        self.model = model.to(dls.device)
        self.loss_func = loss_func or dls.task.loss()  # the data knows its loss [fastai: dls.loss_func]
        self.metrics = list(metrics)
        self.groups: list[list[nn.Module]] = layer_groups(model, arch) if arch else [[model]]
        self.opt: torch.optim.Optimizer | None = None
        self.frozen_to = 0
        self.cbs: list[Callback] = []
        self.recorder = Recorder()
        self.add_cbs([self.recorder, *cbs])
        self.training = False
        self.epoch = self.iter = self.train_iter = 0
        self.fit_index = 0  # counts fits: each one draws its own data order and augmentations
        self.n_epoch = 1
        self.tag = ""
        self.lr_finding = False
        self.extra: dict[str, Any] = {}  # plain values a recipe keeps with each checkpoint (e.g. the lr it chose)
        self.head_config: Any = None  # the HeadConfig the model was built with (exported with it)
        self._resume: dict[str, Any] | None = None
        self.memory_guard: MemoryGuard | None = None  # set: out of memory halves the micro-batch (memory.py)
        self.micro_splits = 1  # a training batch runs as this many micro-batches, their gradients accumulated
        self.oom_backoff: list[dict[str, Any]] = []  # each halving: when, from what to what, why
        self._in_backward = False

    # ----- callbacks -----------------------------------------------------------------------------
    def add_cbs(self, cbs: Iterable[Callback]) -> None:
        """Attach callbacks, keeping them sorted by order."""
        for cb in cbs:
            cb.learn = self
            self.cbs.append(cb)
        self.cbs.sort(key=lambda c: c.order)

    def remove_cbs(self, cbs: Iterable[Callback]) -> None:
        """Detach callbacks."""
        for cb in cbs:
            if cb in self.cbs:
                self.cbs.remove(cb)

    @contextlib.contextmanager
    def added_cbs(self, cbs: Iterable[Callback]) -> Iterator[None]:
        """Attach callbacks for the duration of a with-block."""
        cbs = list(cbs)
        self.add_cbs(cbs)
        try:
            yield
        finally:
            self.remove_cbs(cbs)

    def __call__(self, event: str) -> None:
        for cb in list(self.cbs):
            if self.lr_finding and not cb.run_in_lr_find:
                continue
            cb(event)

    def _with_events(self, f: Callable[[], None], name: str, cancel: type[Exception]) -> None:
        try:
            self(f"before_{name}")
            f()
        except cancel:
            self(f"after_cancel_{name}")
        self(f"after_{name}")

    # ----- optimizer and hyper-parameters ---------------------------------------------------------
    def create_opt(self) -> None:
        """AdamW with two parameter groups per layer group: with and without weight decay."""
        seen: set[int] = set()
        param_groups = []
        for gi, group in enumerate(self.groups):
            decay: list[nn.Parameter] = []
            no_decay: list[nn.Parameter] = []
            for module in group:
                for m in module.modules():
                    for name, p in m.named_parameters(recurse=False):
                        if id(p) in seen:
                            continue
                        seen.add(id(p))
                        (no_decay if isinstance(m, NORM_TYPES) or name == "bias" else decay).append(p)
            param_groups.append({"params": decay, "weight_decay": self.wd, "layer_group": gi})
            param_groups.append({"params": no_decay, "weight_decay": 0.0, "layer_group": gi})
        params = [p for pg in param_groups for p in cast(list[nn.Parameter], pg["params"])]
        self.opt = torch.optim.AdamW(
            param_groups, lr=1e-3, betas=(self.moms[0], 0.99), eps=1e-5, fused=fused_adam_applies(params)
        )

    def lrs_for_groups(self, lr: LrSpec) -> list[float]:
        """One rate per layer group: a number for all, slice(hi) = hi/10 for the body and hi for the
        head, slice(lo, hi) spread geometrically from the first group to the last."""
        n = len(self.groups)
        if isinstance(lr, slice):
            hi = float(lr.stop)
            if lr.start is None:
                return [hi / 10] * (n - 1) + [hi]
            lo = float(lr.start)
            if n == 1:
                return [hi]
            return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
        if isinstance(lr, Sequence):
            if len(lr) != n:
                raise ValueError(f"got {len(lr)} learning rates for {n} layer groups")
            return [float(x) for x in lr]
        return [float(lr)] * n

    def set_hypers(self, lrs: Sequence[float], mom: float) -> None:
        """Set each parameter group's learning rate (from its layer group) and momentum (Adam's beta1)."""
        assert self.opt is not None
        for pg in self.opt.param_groups:
            pg["lr"] = lrs[pg["layer_group"]]
            pg["betas"] = (mom, pg["betas"][1])

    # ----- freezing --------------------------------------------------------------------------------
    def freeze_to(self, n: int) -> None:
        """Train only layer groups n and later; norm layers stay trainable everywhere (fastai's train_bn)."""
        n = n % len(self.groups) if n < 0 else n
        self.frozen_to = n
        for gi, group in enumerate(self.groups):
            for module in group:
                for m in module.modules():
                    for p in m.parameters(recurse=False):
                        p.requires_grad_(gi >= n or isinstance(m, NORM_TYPES))

    def freeze(self) -> None:
        """Train only the head (and norm layers)."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        """Train every layer group."""
        self.freeze_to(0)

    # ----- the loop --------------------------------------------------------------------------------
    def fit(
        self,
        n_epoch: int,
        lr: LrSpec = 1e-3,
        cbs: Iterable[Callback] = (),
        resume: dict[str, Any] | None = None,
        tag: str = "",
    ) -> None:
        """Train for n_epoch epochs; with `resume`, continue a run from its checkpoint state."""
        if self.opt is None:
            self.create_opt()
        self.n_epoch, self.tag, self._resume = n_epoch, tag, resume
        self.fit_index += 1
        self.lrs = self.lrs_for_groups(lr)
        self.set_hypers(self.lrs, self.moms[0])
        self.start_epoch = self.start_batch = self.train_iter = 0
        with self.added_cbs(cbs):
            self._with_events(self._do_fit, "fit", CancelFitException)

    @property
    def n_train_batches(self) -> int:
        """Training batches per epoch."""
        return len(self.dls.train)

    @property
    def pct_train(self) -> float:
        """Position in the whole fit, in [0, 1]: what schedules are functions of."""
        return self.train_iter / max(1, self.n_epoch * self.n_train_batches)

    def _do_fit(self) -> None:
        if self._resume is not None:
            self._apply_resume(self._resume)
        for epoch in range(self.start_epoch, self.n_epoch):
            self.epoch = epoch
            self._with_events(self._do_epoch, "epoch", CancelEpochException)

    def _do_epoch(self) -> None:
        self._do_epoch_train()
        self._do_epoch_validate()

    def _do_epoch_train(self) -> None:
        self.training = True
        self.model.train()
        self.dl = self.dls.train
        self.dl.set_epoch(self.epoch, self.start_batch if self.epoch == self.start_epoch else 0, self.fit_index)
        self.batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = self.dl
        self._with_events(self._all_batches, "train", CancelTrainException)

    def _do_epoch_validate(self) -> None:
        self.training = False
        self.model.eval()
        self.dl = self.dls.valid
        self.dl.set_epoch(self.epoch, 0)
        self.batches = self.dl
        with torch.no_grad():
            self._with_events(self._all_batches, "validate", CancelValidException)

    def _all_batches(self) -> None:
        self.n_iter = len(self.dl)
        self.iter = self.dl.start_batch
        for xb, yb in self.batches:
            self.xb, self.yb = xb, yb
            self._with_events(self._do_one_batch, "batch", CancelBatchException)
            self.iter += 1
            if self.training:
                self.train_iter += 1

    def _do_one_batch(self) -> None:
        if self.memory_guard is None:
            self._forward_backward(self.xb, self.yb, 1.0)
        else:
            self._guarded_batch()
        if not self.training or len(self.yb) == 0:
            return
        self._with_events(self._step, "step", CancelStepException)

    def _forward_backward(self, xb: torch.Tensor, yb: torch.Tensor, share: float) -> None:
        """Forward, loss and (training) backward of a batch or of a micro-batch that is `share` of it."""
        guard = self.memory_guard
        with guard.forward(len(yb), self.dls.device, self.training) if guard else contextlib.nullcontext():
            self.pred = self.model(xb)
            self("after_pred")
            self.loss_grad = self.loss_func(self.pred, yb)
        if share != 1.0:
            self.loss_grad = self.loss_grad * share
        self.loss = self.loss_grad.detach()
        self("after_loss")
        if not self.training or len(yb) == 0:
            return
        self._in_backward = True
        self._with_events(self._backward, "backward", CancelBackwardException)
        self._in_backward = False

    def _guarded_batch(self) -> None:
        """A batch in `micro_splits` micro-batches whose gradients accumulate (the step is the batch's); out of
        memory, the split doubles (core/engine/memory.py) and the batch runs again, up to MAX_HALVINGS. A validation
        batch (twice the training batch) is split as many times."""
        xb, yb = self.xb, self.yb
        tried: list[int] = []
        while True:
            size = -(-len(yb) // self.micro_splits)
            tried.append(size)
            try:
                self._split_batch(xb, yb, size)
                return
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self._back_off(exc, tried, xb, yb)

    def _split_batch(self, xb: torch.Tensor, yb: torch.Tensor, size: int) -> None:
        if size >= len(yb):
            self._forward_backward(xb, yb, 1.0)
            return
        preds, losses = [], []
        for n, start in enumerate(range(0, len(yb), size)):
            if n:
                self("before_micro_batch")  # e.g. autocast again: after_loss left it
            x, y = xb[start : start + size], yb[start : start + size]
            self.yb = y  # what the callbacks of this micro-batch read (a validation pass keeps its outputs)
            self._forward_backward(x, y, len(y) / len(yb))
            preds.append(self.pred.detach())
            losses.append(self.loss)
        self.pred, self.loss, self.yb = torch.cat(preds), torch.stack(losses).sum(), yb

    def _back_off(self, exc: BaseException, tried: list[int], xb: torch.Tensor, yb: torch.Tensor) -> None:
        """After an out-of-memory step: leave what the failed try entered, and halve the micro-batch or fail."""
        self("after_cancel_batch")
        self.pred = self.loss_grad = torch.empty(0)  # the failed try's graph goes
        dropped = self._in_backward
        self._in_backward = False
        if dropped:  # a backward that failed part-way added some of its gradients: none of this step's window stays
            assert self.opt is not None
            self.opt.zero_grad(set_to_none=True)
        empty_cache(self.dls.device)
        if self.micro_splits >= 2**MAX_HALVINGS or tried[-1] <= 1:
            raise OutOfMemoryFailure(failure_text(len(yb), tried, self.train_iter, exc)) from exc
        self.micro_splits *= 2
        self.xb, self.yb = xb, yb
        notice = {
            "step": self.train_iter,
            "epoch": self.epoch,
            "batch": self.iter,
            "tag": self.tag,
            "batch_size": len(yb),
            "micro_batch": -(-len(yb) // self.micro_splits),
            "accumulation": self.micro_splits,
            "gradients_dropped": dropped,
            "error": str(exc).splitlines()[0][:300],
        }
        self.oom_backoff.append(notice)
        self("after_oom_backoff")
        self("before_micro_batch")

    def _backward(self) -> None:
        self.loss_grad.backward()

    def _step(self) -> None:
        assert self.opt is not None
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    # ----- checkpoints -----------------------------------------------------------------------------
    def checkpoint_state(self, end_of_epoch: bool, before_batch: bool = False) -> dict[str, Any]:
        """Everything needed to continue this fit exactly: an explicit dict of plain state. Taken after a batch
        (or an epoch), or `before_batch`: before the current batch ran (a stop)."""
        assert self.opt is not None
        epoch, batch = (self.epoch + 1, 0) if end_of_epoch else (self.epoch, self.iter + (0 if before_batch else 1))
        np_state = cast(tuple[Any, ...], np.random.get_state())
        # A snapshot, not references: state_dict() tensors keep changing as training goes on.
        return _cpu_copy(
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "tag": self.tag,
                "model": unwrap(self.model).state_dict(),
                "opt": self.opt.state_dict(),
                "frozen_to": self.frozen_to,
                "fit_index": self.fit_index,
                # after_batch runs before train_iter counts the batch just done
                "position": {
                    "epoch": epoch,
                    "batch": batch,
                    "train_iter": self.train_iter + (0 if end_of_epoch or before_batch else 1),
                    "n_epoch": self.n_epoch,
                    "n_batches": self.n_train_batches,
                },
                "lrs": list(self.lrs),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                    "python": random.getstate(),
                },
                "data": {"seed": self.dls.config.seed, "epoch": epoch, "batch": batch},
                "recorder": self.recorder.state(),
                "extra": dict(self.extra),
                "micro_splits": self.micro_splits,
                "oom_backoff": list(self.oom_backoff),
            }
        )

    def load_weights(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's model and freezing (not its position)."""
        unwrap(self.model).load_state_dict(state["model"])
        self.freeze_to(int(state.get("frozen_to", 0)))

    def _apply_resume(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError("not a fitcycle checkpoint")
        pos = state["position"]
        if pos["n_epoch"] != self.n_epoch or pos["n_batches"] != self.n_train_batches:
            raise CheckpointError(
                f"the checkpoint is from a fit of {pos['n_epoch']} epochs x {pos['n_batches']} batches; "
                f"this fit is {self.n_epoch} x {self.n_train_batches}: resume with the same data, bs and epochs"
            )
        self.load_weights(state)
        assert self.opt is not None
        self.opt.load_state_dict(state["opt"])
        self.start_epoch, self.start_batch, self.train_iter = pos["epoch"], pos["batch"], pos["train_iter"]
        self.fit_index = int(state["fit_index"])
        self.recorder.load_state(state["recorder"])
        self.micro_splits = int(state.get("micro_splits", 1))  # a resumed job keeps the split it backed off to
        self.oom_backoff = list(state.get("oom_backoff", []))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np_state = rng["numpy"]
        np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
        random.setstate(_as_tuples(rng["python"]))

    # ----- recipes ---------------------------------------------------------------------------------
    def fit_one_cycle(
        self,
        n_epoch: int,
        lr_max: LrSpec = 1e-3,
        div: float = 25.0,
        div_final: float = 1e5,
        pct_start: float = 0.25,
        moms: tuple[float, float, float] | None = None,
        cbs: Iterable[Callback] = (),
        resume: dict[str, Any] | None = None,
        tag: str = "",
    ) -> None:
        """One-cycle training [fastai v2: fit_one_cycle]: cosine warm-up from lr_max/div to lr_max over
        pct_start, cosine down to lr_max/div_final; momentum 0.95 -> 0.85 -> 0.95."""
        sched = OneCycleScheduler(self.lrs_for_groups(lr_max), div, div_final, pct_start, moms or self.moms)
        self.fit(n_epoch, lr_max, cbs=[sched, *cbs], resume=resume, tag=tag)

    def fit_phase(self, phase: Phase, cbs: Iterable[Callback] = (), resume: dict[str, Any] | None = None) -> None:
        """One phase of the fine-tune recipe [fastai v2: fine_tune]: stage 1 freezes the body and runs
        one-cycle on the head (pct_start 0.99); stage 2 unfreezes and spreads the rates over the groups
        (pct_start 0.3, div 5); from scratch there is nothing to protect: one rate for every group."""
        rates = phase.rates()
        if phase.what == "stage1":
            self.freeze()
            self.fit_one_cycle(phase.epochs, rates, pct_start=0.99, cbs=cbs, resume=resume, tag=phase.tag)
        elif phase.what == "stage2":
            self.unfreeze()
            self.fit_one_cycle(phase.epochs, rates, pct_start=0.3, div=5.0, cbs=cbs, resume=resume, tag=phase.tag)
        else:
            self.unfreeze()
            self.fit_one_cycle(phase.epochs, rates, cbs=cbs, resume=resume, tag=phase.tag)

    def lr_find(
        self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, stop_div: bool = True
    ) -> LRFindResult:
        """Sweep the learning rate exponentially and suggest one; the model and optimizer are restored
        exactly afterwards [fastai: lr_find]."""
        return run_lr_find(self, start_lr, end_lr, num_it, stop_div)

    # ----- inference -------------------------------------------------------------------------------
    def get_preds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (or regression outputs) and targets over the validation items, in order."""
        loader = self.dls.valid
        self.model.eval()
        preds, targs = [], []
        loader.set_epoch(0, 0)
        with torch.no_grad():
            for xb, yb in loader:
                preds.append(self.model(xb).float().cpu())
                targs.append(yb.cpu())
        return torch.cat(preds), torch.cat(targs)


def fused_adam_applies(params: Sequence[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW can step these parameters: one kernel per step for all of them, where the
    default on the CPU loops over the tensors in Python (a third of the step's time at resnet18)."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _cpu_copy(x: Any) -> Any:
    """A deep copy of nested dicts/lists/tuples with every tensor copied to the CPU."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", copy=True)
    if isinstance(x, dict):
        return {k: _cpu_copy(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_cpu_copy(v) for v in x)
    return x


def _as_tuples(x: Any) -> Any:
    """Lists back to tuples (random.setstate wants the tuple shape getstate gave)."""
    return tuple(_as_tuples(v) for v in x) if isinstance(x, list | tuple) else x

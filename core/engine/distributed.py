"""One fit on several devices: DistributedDataParallel, one process per device [torch DDP; fastai's
DistributedTrainer]. Each process (rank) trains on its own shard of every epoch's order (data.EpochSampler),
gradients are averaged across ranks at each step, and only rank 0 validates, reports, checkpoints and exports.

The rule for batch size and learning rate: `bs` is the global batch, split evenly between the ranks, so a run on
N devices takes the same steps at the same rates as one device with the same `bs` (no learning-rate scaling).
BatchNorm statistics are each rank's own (as DDP does; SyncBatchNorm is not used). At the end of each fit the
ranks check that they hold the same parameters, as averaged gradients and one optimizer step keep them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.engine.errors import FitcycleError
from core.engine.events import Callback, CancelValidException


@dataclass(frozen=True)
class Rank:
    """This process's place in a distributed fit."""

    rank: int
    world: int
    port: int  # the rendezvous on 127.0.0.1 (torchrun's c10d store, without torchrun)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device_type: str) -> torch.device:
        return torch.device(f"cuda:{self.rank}") if device_type == "cuda" else torch.device("cpu")


_threads_before: list[int] = []  # the process's own thread count while it is a CPU rank (leave gives it back)


def join(rank: Rank, device_type: str, timeout_s: float = 600.0) -> None:
    """Join the process group: NCCL between GPUs, gloo on CPU. CPU ranks share the cores between them (until
    `leave`: the worker's process, rank 0, goes back to its own thread count)."""
    if device_type == "cuda":
        torch.cuda.set_device(rank.rank)
    else:
        _threads_before.append(torch.get_num_threads())
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // rank.world))
    dist.init_process_group(
        "nccl" if device_type == "cuda" else "gloo",
        init_method=f"tcp://127.0.0.1:{rank.port}",
        rank=rank.rank,
        world_size=rank.world,
        timeout=timedelta(seconds=timeout_s),
    )


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    if _threads_before:
        torch.set_num_threads(_threads_before.pop())


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, whether or not a DistributedDataParallel wraps it (checkpoints keep plain keys)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def agreed_stop(should_stop: Callable[[], bool], rank: Rank) -> Callable[[], bool]:
    """`should_stop` asked on rank 0 and its answer broadcast, so that every rank stops at the same batch (a rank
    that stopped alone would leave the others waiting in the next gradient exchange). Asked by StopCallback
    before every training batch, on every rank."""

    def decide() -> bool:
        flag = torch.tensor([1 if rank.main and should_stop() else 0])
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    return decide


def parameters_agree(model: nn.Module) -> bool:
    """Whether every rank holds the same parameters as this one (a collective: every rank must call it). Each
    parameter's float64 sum stands for it; the ranks' smallest and largest sums must be the same numbers. DDP
    keeps the ranks bit for bit equal: the same averaged gradients and the same optimizer step on each."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    low, high = sums.clone(), sums.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


class DistributedTraining(Callback):
    """Wraps the model in DistributedDataParallel for each fit (the parameters that train change between fits:
    a frozen body's are left out), and unwraps it for validation, which rank 0 alone does, on the plain model.
    After the fit, the ranks must agree on every parameter."""

    order = 3  # after channels_last and compile have changed the model itself
    run_in_lr_find = False

    def __init__(self, rank: Rank) -> None:
        self.rank = rank
        self.plain: nn.Module | None = None
        self.ddp: DistributedDataParallel | None = None

    def before_fit(self) -> None:
        self.plain = unwrap(self.learn.model)
        device = next(self.plain.parameters()).device
        self.ddp = DistributedDataParallel(self.plain, device_ids=[device.index] if device.type == "cuda" else None)
        self.learn.model = self.ddp

    def before_validate(self) -> None:
        assert self.plain is not None
        self.learn.model = self.plain
        if not self.rank.main:
            raise CancelValidException()

    def after_validate(self) -> None:
        assert self.ddp is not None
        self.learn.model = self.ddp

    def after_fit(self) -> None:
        assert self.plain is not None
        self.learn.model = self.plain
        if not parameters_agree(self.plain):  # every rank gets here: a stop is agreed, a lost rank is an error
            raise FitcycleError(
                "the ranks of the distributed fit ended with different parameters, which DDP should keep equal; "
                "nothing was exported: run the job with gpus: 1, and report this"
            )

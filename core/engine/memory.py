"""Out of memory is a smaller batch, not a failed job: what counts as running out (`MemoryGuard`), and how a training
step retries with its batch split in micro-batches whose gradients accumulate (core.engine.learner.Learner).

A training step runs out of memory when CUDA says so (torch.OutOfMemoryError), or, on a CPU, when the step would pass
a ceiling: the process's resident memory before the step plus what its forward keeps for the backward (the saved
activations, which grow with the batch). The learner then halves its micro-batch (the batch is split in 2, then 4)
and accumulates their gradients, so the effective batch, the optimizer's steps and the schedule stay the same; it
records what it did and goes on from that step. After two halvings that still fail, the job fails with what it tried.

`inject_above` is a test hook: a training micro-batch of more items raises OutOfMemoryError, with no memory spent."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from core.engine.errors import DataError

MAX_HALVINGS = 2  # micro-batches of bs/2, then bs/4; a third failure fails the job
INJECT_ENV = "FITCYCLE_INJECT_OOM_ABOVE"  # the test hook, for a worker process started with it


class MemoryCeilingExceeded(torch.OutOfMemoryError):
    """A CPU step that would pass the configured memory ceiling."""


class OutOfMemoryFailure(DataError):
    """Out of memory even at the smallest micro-batch the backoff tries."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception out of a step is running out of memory (CUDA's, a CPU ceiling's, or injected)."""
    return isinstance(exc, torch.OutOfMemoryError)


def resident_bytes() -> int:
    """The process's resident memory (Linux's /proc/self/statm; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class MemoryGuard:
    """What a training step may spend: `ceiling_bytes` on a CPU (None: no ceiling), and the test hook."""

    ceiling_bytes: int | None = None
    inject_above: int | None = None
    saved: int = field(default=0, init=False)

    @classmethod
    def of(cls, ceiling_mb: int | None) -> MemoryGuard:
        """A guard with a ceiling in MiB, and the test hook when the process was started with it."""
        raw = os.environ.get(INJECT_ENV, "")
        inject = int(raw) if raw.isdigit() else None
        return cls(ceiling_mb * 2**20 if ceiling_mb else None, inject)

    @contextmanager
    def forward(self, n_items: int, device: torch.device, training: bool = True) -> Iterator[None]:
        """Around a training micro-batch's forward: raise OutOfMemoryError when it is over the hook's size, or, on a
        CPU with a ceiling, when resident memory plus the activations it saved for the backward pass it. A
        validation batch keeps no activations: only the device's own out-of-memory error stops it."""
        if not training:
            yield
            return
        if self.inject_above is not None and n_items > self.inject_above:
            raise torch.OutOfMemoryError(
                f"injected: a micro-batch of {n_items} items is over {self.inject_above} ({INJECT_ENV})"
            )
        if self.ceiling_bytes is None or device.type != "cpu":
            yield
            return
        base, self.saved = resident_bytes(), 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            if not (t.is_leaf and t.requires_grad):  # a parameter is no activation: it is there at any batch size
                self.saved += t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
        if base + self.saved > self.ceiling_bytes:
            raise MemoryCeilingExceeded(
                f"the step needs about {(base + self.saved) / 2**20:.0f} MiB (resident {base / 2**20:.0f} MiB + "
                f"{self.saved / 2**20:.0f} MiB of activations), over the ceiling of "
                f"{self.ceiling_bytes / 2**20:.0f} MiB"
            )


def failure_text(bs: int, tried: list[int], step: int, last: BaseException) -> str:
    """Why a job failed after the backoff: every micro-batch it tried, and what to change."""
    sizes = ", ".join(str(n) for n in tried)
    return (
        f"out of memory at training step {step} with micro-batches of {sizes} items (batch size {bs}, split up to "
        f"{2**MAX_HALVINGS} ways): {str(last).splitlines()[0][:300]}. Lower bs or size, or train on a device with more "
        "memory"
    )


def empty_cache(device: torch.device) -> None:
    """Give the failed step's blocks back to the device (CUDA's caching allocator keeps them otherwise)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()

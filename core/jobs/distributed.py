"""A job on several devices of one worker (`gpus: N`): this process is rank 0, with the job's real context;
ranks 1..N-1 are spawned processes (never forked: CUDA must not be initialised before a fork) whose context
reports nothing. They meet on a free port of 127.0.0.1 (torchrun-style rendezvous) and train with
DistributedDataParallel (core/engine/distributed.py). Every rank resumes from the same checkpoint: the one
rank 0 finds, handed to the others as a file. When a rank dies mid-fit, the others are stopped and the fit
starts again from the job's latest checkpoint, at most MAX_RESTARTS times."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.engine.callbacks import TrainingStopped
from core.engine.checkpoint import load_checkpoint, save_checkpoint
from core.engine.distributed import Rank, join, leave
from core.engine.errors import DataError, FitcycleError
from core.engine.items import LabelledItems
from core.jobs.context import JobContext
from core.jobs.spec import TrainSpec

MAX_RESTARTS = 3
log = logging.getLogger("fitcycle.distributed")
Runner = Callable[[TrainSpec, JobContext, LabelledItems | None, Rank], dict[str, Any]]


class FollowerContext:
    """A rank other than 0: its artifacts go to a scratch folder, it reports and checkpoints nothing, and it
    stops when rank 0 says so (agreed_stop broadcasts that)."""

    show_progress = False
    follower = True  # training.export_results: interpretation and export are rank 0's alone

    def __init__(self, scratch: Path, resume: dict[str, Any] | None) -> None:
        self.scratch, self.resume = scratch, resume

    def on_batch(self, row: dict[str, Any]) -> None:
        return None

    def on_epoch(self, row: dict[str, Any]) -> None:
        return None

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        return None

    def latest_checkpoint(self) -> dict[str, Any] | None:
        return self.resume

    def artifact_path(self, name: str) -> Path:
        path = self.scratch / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def artifact_written(self, name: str) -> None:
        return None

    def should_stop(self) -> bool:
        return False


class SameResume:
    """Rank 0's context, answering latest_checkpoint with the checkpoint every rank was started from."""

    def __init__(self, ctx: JobContext, resume: dict[str, Any] | None) -> None:
        self._ctx, self._resume = ctx, resume

    def latest_checkpoint(self) -> dict[str, Any] | None:
        return self._resume

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def device_type_of(spec: TrainSpec) -> str:
    if spec.device:
        return torch.device(spec.device).type
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_distributed(spec: TrainSpec, ctx: JobContext, items: LabelledItems | None, run: Runner) -> dict[str, Any]:
    """Run `run` on spec.gpus ranks; rank 0's result, with how many ranks ran and how often the fit restarted."""
    world, device_type = spec.gpus, device_type_of(spec)
    if device_type == "cuda" and torch.cuda.device_count() < world:
        raise DataError(f"the job asks for {world} gpus; this worker has {torch.cuda.device_count()}")
    restarts = 0
    while True:
        resume = ctx.latest_checkpoint()
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="fitcycle-ddp-") as tmp:
            resume_file = save_checkpoint(resume, Path(tmp) / "resume.pt") if resume is not None else None
            spawn = torch.multiprocessing.get_context("spawn")
            followers = [
                spawn.Process(
                    target=follow,
                    args=(spec, items, Rank(r, world, port), resume_file, Path(tmp) / f"rank{r}", run),
                    name=f"fitcycle-rank{r}",
                    daemon=True,
                )
                for r in range(1, world)
            ]
            for p in followers:
                p.start()
            try:
                join(Rank(0, world, port), device_type)
                result = run(spec, SameResume(ctx, resume), items, Rank(0, world, port))
                for p in followers:
                    p.join(timeout=120)
                result["distributed"] = {"ranks": world, "restarts": restarts, "backend": _backend(device_type)}
                return result
            except (TrainingStopped, FitcycleError):
                raise  # a stop every rank agreed on, or the job's own error: not a lost rank
            except Exception as exc:
                lost = [p.name for p in followers if p.exitcode not in (None, 0)]
                if not lost:
                    raise
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise FitcycleError(f"ranks of the distributed fit kept dying ({restarts} times): {lost}") from exc
                log.warning(
                    "rank(s) %s died mid-fit (%s); restarting all %d ranks from the latest checkpoint (%d of %d)",
                    ", ".join(lost),
                    type(exc).__name__,
                    world,
                    restarts,
                    MAX_RESTARTS,
                )
            finally:
                leave()
                for p in followers:
                    if p.is_alive():
                        p.kill()
                    p.join(timeout=30)


def follow(
    spec: TrainSpec, items: LabelledItems | None, rank: Rank, resume_file: Path | None, scratch: Path, run: Runner
) -> None:
    """A spawned rank: train alongside rank 0 until the job's fits are done (or rank 0 is gone)."""
    if sys.platform.startswith("linux"):  # die with rank 0, however it dies
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    resume = load_checkpoint(resume_file) if resume_file is not None else None
    join(rank, device_type_of(spec))
    try:
        run(spec, FollowerContext(scratch, resume), items, rank)
    finally:
        leave()


def _backend(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"

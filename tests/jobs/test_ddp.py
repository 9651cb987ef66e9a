"""One job on two processes (DistributedDataParallel over gloo, on CPU): the same steps at the same rates as one
process with the same global batch, both learning, the ranks' parameters equal at the end of each fit (the job
fails if they are not); rank 0 alone reports, checkpoints and exports; and when a rank is killed mid-fit, every
rank restarts from the latest checkpoint and the job still ends with each epoch and each step recorded once.

Not compared: the two runs' validation accuracy. With 40 validation items and BatchNorm's running statistics
after 21 steps (each rank's own batch of 8 against one batch of 16), it ranged 0.58-0.85 for the same seed
across machines and runs, one process or two."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from core.engine.distributed import Rank, join, leave, parameters_agree
from core.jobs.context import LocalJobContext
from core.jobs.distributed import free_port
from core.jobs.runner import run_spec
from core.jobs.spec import TrainSpec

pytestmark = pytest.mark.slow


def spec(data: Path, gpus: int, **extra: Any) -> TrainSpec:
    fields: dict[str, Any] = dict(
        kind="fine_tune",
        data=str(data),
        arch="resnet18",
        pretrained="none",
        size=32,
        bs=16,
        freeze_epochs=0,
        epochs=3,
        lr=3e-3,
        valid_pct=0.25,
        seed=3,
        augment=False,
        gpus=gpus,
        report_every_n_batches=1,
        checkpoint_every_n_steps=2,
        device="cpu",
    )
    return TrainSpec(**(fields | extra))


class KillARank(LocalJobContext):
    """Kills one of the other ranks when rank 0 reports training step `at` (the first time only)."""

    def __init__(self, out: Path, at: int) -> None:
        super().__init__(out, show_progress=False)
        self.at, self.killed = at, 0

    def on_batch(self, row: dict[str, Any]) -> None:
        super().on_batch(row)
        if row["iter"] == self.at and not self.killed:
            ranks = torch.multiprocessing.active_children()
            assert ranks, "no other rank is running"
            self.killed = ranks[0].pid or 0
            os.kill(self.killed, signal.SIGKILL)


def test_two_ranks_match_one_process_with_the_same_global_batch(fashion_folder: Path, tmp_path: Path) -> None:
    one = LocalJobContext(tmp_path / "one", show_progress=False)
    two = LocalJobContext(tmp_path / "two", show_progress=False)
    run_spec(spec(fashion_folder, 1), one)
    threads = torch.get_num_threads()
    double = run_spec(spec(fashion_folder, 2), two)
    assert double["distributed"] == {"ranks": 2, "restarts": 0, "backend": "gloo"}
    assert torch.get_num_threads() == threads  # rank 0 (the worker's process) gets its threads back
    # Same steps: 120 training items at a global batch of 16 is 7 steps an epoch either way, at the same rates.
    assert [b["iter"] for b in two.batches] == [b["iter"] for b in one.batches] == list(range(21))
    assert [(b["lr"], b["mom"]) for b in two.batches] == [(b["lr"], b["mom"]) for b in one.batches]
    assert len(two.epochs) == len(one.epochs) == 3  # rank 0 alone reported
    for run in (one, two):
        print(", ".join(f"{k} {[round(e[k], 3) for e in run.epochs]}" for k in ("train_loss", "accuracy")))
        assert run.epochs[-1]["train_loss"] < 0.9 * run.epochs[0]["train_loss"]  # both learn
    assert (tmp_path / "two" / "export" / "manifest.json").is_file()  # rank 0 exported


def test_a_killed_rank_restarts_the_fit_from_the_latest_checkpoint(fashion_folder: Path, tmp_path: Path) -> None:
    ctx = KillARank(tmp_path / "killed", at=9)
    result = run_spec(spec(fashion_folder, 2), ctx)
    assert ctx.killed and result["distributed"]["restarts"] == 1
    iters = sorted({b["iter"] for b in ctx.batches})
    assert iters == list(range(21))  # every step reported; those after the checkpoint twice, the same rows
    assert [e["epoch"] for e in ctx.epochs] == [0, 1, 2]
    assert (tmp_path / "killed" / "export" / "manifest.json").is_file()


def _check_agreement(rank: int, port: int, answers: Any) -> None:
    join(Rank(rank, 2, port), "cpu", timeout_s=60)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        same = parameters_agree(model)
        with torch.no_grad():
            model.bias[1] += 1e-6 * rank  # rank 1's bias now differs from rank 0's by 1e-6
        answers.put((rank, same, parameters_agree(model)))
    finally:
        leave()


def test_ranks_that_differ_in_one_parameter_disagree() -> None:
    spawn = torch.multiprocessing.get_context("spawn")
    answers, port = spawn.Queue(), free_port()
    ranks = [spawn.Process(target=_check_agreement, args=(r, port, answers)) for r in range(2)]
    for p in ranks:
        p.start()
    got = sorted(answers.get(timeout=120) for _ in ranks)
    for p in ranks:
        p.join(timeout=30)
    assert got == [(0, True, False), (1, True, False)]

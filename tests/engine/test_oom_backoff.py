"""Out of memory is a smaller batch, not a failed job (issue 27, part 3): an out-of-memory error injected above a
micro-batch size (the test hook, core/engine/memory.py) halves the micro-batch and accumulates gradients; the job
ends with the same epochs and a loss curve within noise of an unhindered run, and says what it did. Two halvings
that still fail fail the job with what it tried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from core.engine.memory import INJECT_ENV, MemoryCeilingExceeded, MemoryGuard, OutOfMemoryFailure
from core.jobs.context import LocalJobContext
from core.jobs.runner import run_spec
from core.jobs.spec import TrainSpec


def _spec(data: Path, **changes: Any) -> TrainSpec:
    fields: dict[str, Any] = {
        "kind": "fine_tune",
        "data": str(data),
        "arch": "resnet18",
        "pretrained": "none",
        "size": 32,
        "bs": 16,
        "freeze_epochs": 0,
        "epochs": 3,
        "lr": 1e-3,
        "onnx": False,
        "precision": "fp32",
    }
    return TrainSpec(**{**fields, **changes})


def _train(data: Path, out: Path, **changes: Any) -> tuple[dict[str, Any], LocalJobContext]:
    ctx = LocalJobContext(out, show_progress=False)
    return run_spec(_spec(data, **changes), ctx), ctx


def test_injected_oom_halves_the_micro_batch_and_keeps_the_schedule(
    fashion_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, plain_ctx = _train(fashion_folder, tmp_path / "plain")
    monkeypatch.setenv(INJECT_ENV, "8")  # a micro-batch of more than 8 items "runs out of memory"
    hindered, ctx = _train(fashion_folder, tmp_path / "hindered")
    monkeypatch.delenv(INJECT_ENV)
    # What noise alone moves the loss curve by: the same job with other draws (order, augmentations, initial weights).
    others = [_train(fashion_folder, tmp_path / f"draws{seed}", data_seed=seed)[1] for seed in (7, 8)]

    assert plain["oom_backoff"] == []
    (notice,) = hindered["oom_backoff"]
    assert (notice["step"], notice["batch_size"], notice["micro_batch"], notice["accumulation"]) == (0, 16, 8, 2)
    assert "injected" in notice["error"] and notice["gradients_dropped"] is False
    assert [n["micro_batch"] for n in ctx.notices] == [8]  # the host heard it when it happened

    # The same epochs and steps, and a loss curve no further from the unhindered one than other draws are.
    assert [e["epoch"] for e in hindered["epochs"]] == [e["epoch"] for e in plain["epochs"]] == [0, 1, 2]
    assert [b["iter"] for b in ctx.batches] == [b["iter"] for b in plain_ctx.batches]

    def distance(one: LocalJobContext, other: LocalJobContext) -> float:
        pairs = list(zip(one.batches, other.batches, strict=True))
        return sum(abs(a["loss"] - b["loss"]) for a, b in pairs) / len(pairs)

    # Halved micro-batches see other BatchNorm statistics: the curve moves as other draws move it, no more.
    runs = [plain_ctx, *others]
    noise = [distance(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :]]
    assert distance(ctx, plain_ctx) <= 1.5 * sum(noise) / len(noise), (distance(ctx, plain_ctx), noise)


def test_two_halvings_that_still_fail_fail_the_job_with_what_they_tried(
    fashion_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INJECT_ENV, "3")
    with pytest.raises(OutOfMemoryFailure) as failed:
        _train(fashion_folder, tmp_path / "out", epochs=1)
    text = str(failed.value)
    assert "micro-batches of 16, 8, 4 items" in text and "Lower bs or size" in text


def test_cpu_ceiling_counts_resident_memory_and_activations() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 8, 3))
    x = torch.randn(32, 3, 64, 64)
    roomy = MemoryGuard(ceiling_bytes=2**40)
    with roomy.forward(len(x), torch.device("cpu")):
        model(x).sum()
    # The first conv's output, 32 x 64 x 64 x 64 floats (32 MiB), is kept for the backward (ReLU's and conv's).
    assert roomy.saved >= 32 * 64 * 64 * 64 * 4
    tight = MemoryGuard(ceiling_bytes=64 * 2**20)  # below any Python process with torch loaded
    with (
        pytest.raises(MemoryCeilingExceeded, match="over the ceiling of 64 MiB"),
        tight.forward(len(x), torch.device("cpu")),
    ):
        model(x).sum()


def _without_batch_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its norm and dropout layers taken out: then a batch and its micro-batches give one gradient."""
    for name, child in model.named_children():
        if isinstance(child, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d | torch.nn.Dropout):
            setattr(model, name, torch.nn.Identity())
        else:
            _without_batch_statistics(child)
    return model


def test_micro_batches_step_as_the_whole_batch_does(fashion_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where nothing depends on the batch's make-up, the halved micro-batches give the whole batch's gradient (their
    share-weighted sum) and its loss, and the optimizer steps once per batch on the same schedule."""
    from core.engine.architectures import get_architecture
    from core.engine.data import DataConfig, ImageDataLoaders
    from core.engine.events import Callback
    from core.engine.labelling import from_folder
    from core.engine.learner import Learner
    from core.engine.model import create_cnn_model

    class FirstGradients(Callback):
        def __init__(self) -> None:
            self.grads: dict[str, torch.Tensor] = {}
            self.steps = 0

        def before_step(self) -> None:
            self.steps += 1
            if not self.grads:
                model = self.learn.model
                self.grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    def trained(inject: str | None) -> tuple[Learner, FirstGradients]:
        if inject is None:
            monkeypatch.delenv(INJECT_ENV, raising=False)
        else:
            monkeypatch.setenv(INJECT_ENV, inject)
        items = from_folder(fashion_folder, valid_pct=0.25, seed=3)
        dls = ImageDataLoaders(items, DataConfig(size=32, bs=16, seed=5))
        arch = get_architecture("resnet18")
        torch.manual_seed(0)
        model = _without_batch_statistics(create_cnn_model(arch, dls.c))
        seen = FirstGradients()
        learn = Learner(dls, model, arch=arch, cbs=[seen])
        learn.memory_guard = MemoryGuard.of(None)
        learn.fit_one_cycle(1, 1e-3)
        return learn, seen

    whole, whole_seen = trained(None)
    halved, halved_seen = trained("8")
    assert whole.oom_backoff == [] and len(halved.oom_backoff) == 1 and halved.micro_splits == 2
    assert whole_seen.steps == halved_seen.steps == whole.n_train_batches
    assert [r["lr"] for r in halved.recorder.batches] == [r["lr"] for r in whole.recorder.batches]
    assert set(halved_seen.grads) == set(whole_seen.grads)
    for key, grad in whole_seen.grads.items():
        torch.testing.assert_close(halved_seen.grads[key], grad, rtol=1e-3, atol=1e-7, msg=key)
    assert halved.recorder.batches[0]["loss"] == pytest.approx(whole.recorder.batches[0]["loss"], rel=1e-5)

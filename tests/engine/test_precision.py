"""Mixed precision and torch.compile, on CPU (the CUDA paths run the same callbacks): bf16 autocast with no
loss scaling, fp16 with a gradient scaler, fp32 untouched; weights stay fp32 and training still learns.
torch.compile either compiles or falls back to eager saying why; training goes on either way."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.engine.callbacks import (
    CompileModel,
    MixedPrecision,
    cpu_has_native_bf16,
    full_precision,
    resolve_precision,
)
from core.engine.errors import DataError
from core.engine.events import Callback
from core.engine.tasks.classification import ClassificationTask
from core.engine.tasks.points import PointsTask
from core.engine.tasks.values import ValuesTask
from tests.engine.test_learner import make_learner


class PredDtypes(Callback):
    order = 50

    def __init__(self) -> None:
        self.seen: set[torch.dtype] = set()

    def after_pred(self) -> None:
        self.seen.add(self.learn.pred.dtype)


def test_default_precision_on_cpu_follows_its_bf16_and_requests_are_checked() -> None:
    cpu = torch.device("cpu")
    flags = Path("/proc/cpuinfo").read_text().split()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert cpu_has_native_bf16() == native
    assert resolve_precision(None, cpu) == ("bf16" if native else "fp32")  # image models: bf16 where it is native
    assert resolve_precision(None, cpu, cpu_bf16=False) == "fp32"  # text models: fp32 unless asked
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="bf16, fp16 or fp32"):
        resolve_precision("fp8", cpu)
    with pytest.raises(DataError, match="fp16 autocast is for GPUs"):
        resolve_precision("fp16", cpu)  # it does not learn reliably there: refused, not silently poor


def test_bf16_autocast_on_cpu_trains_in_half_and_keeps_fp32_weights(fashion_folder: Path) -> None:
    dtypes = PredDtypes()
    mp = MixedPrecision("bf16")
    learn = make_learner(fashion_folder, cbs=[mp, dtypes])
    learn.fit_one_cycle(4, 5e-3)  # the recipe test_learner's fp32 run learns with
    assert dtypes.seen == {torch.bfloat16}
    assert mp.scaler is None  # bf16 keeps fp32's range: no loss scaling
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())
    losses = [e["train_loss"] for e in learn.recorder.epochs]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    # Four classes (chance: error 0.75). bf16 sums round differently with the thread count, so the bar leaves room;
    # a broken autocast (NaNs, no learning) stays near chance.
    assert learn.recorder.epochs[-1]["error_rate"] < 0.6


def test_compile_compiles_or_falls_back_to_eager(fashion_folder: Path) -> None:
    compiled = CompileModel()
    learn = make_learner(fashion_folder, cbs=[compiled], bs=64)
    learn.fit_one_cycle(1, 3e-3)
    assert compiled.status == "compiled" or compiled.status.startswith("not compiled ("), compiled.status
    assert learn.extra["compile"] == compiled.status
    assert "_orig_mod" not in "".join(learn.model.state_dict())  # checkpoints and exports keep their keys
    assert len(learn.recorder.epochs) == 1


def test_a_regression_head_runs_in_fp32_inside_bf16_autocast() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    seen: list[torch.dtype] = []
    model[0].register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    hooks = full_precision(model[-1], "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(4, 8))
        assert torch.is_autocast_enabled("cpu")  # the head's region ended with it
    assert seen == [torch.bfloat16] and out.dtype == torch.float32  # the body in bf16, the head in fp32
    for hook in hooks:
        hook.remove()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(4, 8)).dtype == torch.bfloat16
    assert PointsTask.fp32_head and ValuesTask.fp32_head and not ClassificationTask.fp32_head

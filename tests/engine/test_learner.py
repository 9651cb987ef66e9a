"""The Learner on real images: freezing, discriminative rates, schedules, lr_find's exact restore,
gradient accumulation, stopping, and a mid-epoch resume that ends with the same weights."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from core.engine.architectures import get_architecture
from core.engine.callbacks import CheckpointCallback, GradientAccumulation, StopCallback, TrainingStopped
from core.engine.checkpoint import load_checkpoint, save_checkpoint
from core.engine.data import DataConfig, ImageDataLoaders
from core.engine.errors import CheckpointError
from core.engine.events import Callback
from core.engine.labelling import from_folder
from core.engine.learner import NORM_TYPES, Learner
from core.engine.metrics import accuracy, error_rate
from core.engine.model import create_cnn_model
from core.engine.transforms import get_transforms


def make_learner(root: Path, init_seed: int = 0, cbs: list[Callback] | None = None, bs: int = 16) -> Learner:
    items = from_folder(root, valid_pct=0.25, seed=3)
    dls = ImageDataLoaders(items, DataConfig(size=32, bs=bs, augment=get_transforms(), seed=5))
    arch = get_architecture("resnet18")
    torch.manual_seed(init_seed)
    model = create_cnn_model(arch, dls.c)
    return Learner(dls, model, metrics=[error_rate, accuracy], arch=arch, cbs=cbs or [])


def test_freeze_trains_only_the_head_and_norm_layers(fashion_folder: Path) -> None:
    learn = make_learner(fashion_folder)
    assert len(learn.groups) == 3
    learn.freeze()
    for gi, group in enumerate(learn.groups):
        for module in group:
            for m in module.modules():
                for p in m.parameters(recurse=False):
                    assert p.requires_grad == (gi == 2 or isinstance(m, NORM_TYPES))
    conv, bn = learn.model.get_parameter("0.0.weight"), learn.model.get_parameter("0.1.weight")
    conv_before, bn_before = conv.detach().clone(), bn.detach().clone()
    learn.fit_one_cycle(1, 1e-2)
    assert torch.equal(conv_before, conv)
    assert not torch.equal(bn_before, bn)
    learn.freeze_to(1)
    assert not conv.requires_grad and learn.model.get_parameter("0.6.0.conv1.weight").requires_grad
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())


def test_discriminative_learning_rates(fashion_folder: Path) -> None:
    learn = make_learner(fashion_folder)
    assert learn.lrs_for_groups(1e-3) == [1e-3] * 3
    assert learn.lrs_for_groups(slice(1e-2)) == pytest.approx([1e-3, 1e-3, 1e-2])
    assert learn.lrs_for_groups(slice(1e-5, 1e-3)) == pytest.approx([1e-5, 1e-4, 1e-3])
    with pytest.raises(ValueError, match="2 learning rates for 3"):
        learn.lrs_for_groups([1e-3, 1e-2])


def test_no_weight_decay_on_norms_and_biases(fashion_folder: Path) -> None:
    learn = make_learner(fashion_folder)
    learn.create_opt()
    assert learn.opt is not None
    norm_or_bias = {
        id(p)
        for m in learn.model.modules()
        for n, p in m.named_parameters(recurse=False)
        if isinstance(m, NORM_TYPES) or n == "bias"
    }
    for pg in learn.opt.param_groups:
        for p in pg["params"]:
            assert (pg["weight_decay"] == 0.0) == (id(p) in norm_or_bias)
    assert sum(len(pg["params"]) for pg in learn.opt.param_groups) == len(list(learn.model.parameters()))
    assert isinstance(learn.opt, torch.optim.AdamW)


def test_one_cycle_drives_lr_and_momentum_per_group(fashion_folder: Path) -> None:
    learn = make_learner(fashion_folder)
    learn.fit_one_cycle(2, slice(1e-4, 1e-2))
    rows = learn.recorder.batches
    lrs, moms = [r["lr"] for r in rows], [r["mom"] for r in rows]
    assert lrs[0] == pytest.approx(1e-2 / 25)
    assert max(lrs) == pytest.approx(1e-2, rel=0.05)
    assert (
        lrs[-1] < lrs[0]
        and lrs[-1] == min(lrs)
        and moms[0] == pytest.approx(0.95)
        and min(moms) == pytest.approx(0.85, abs=0.01)
    )
    assert learn.opt is not None
    first_group = [pg["lr"] for pg in learn.opt.param_groups if pg["layer_group"] == 0]
    head_group = [pg["lr"] for pg in learn.opt.param_groups if pg["layer_group"] == 2]
    assert first_group[0] == pytest.approx(head_group[0] / 100)
    assert [e["epoch"] for e in learn.recorder.epochs] == [0, 1]
    assert {"train_loss", "valid_loss", "error_rate", "accuracy", "seconds"} <= set(learn.recorder.epochs[0])


def test_lr_find_sweeps_suggests_and_restores_exactly(fashion_folder: Path) -> None:
    learn = make_learner(fashion_folder)
    learn.fit_one_cycle(1, 1e-3)  # so there is optimizer state to restore too
    assert learn.opt is not None
    model_before = copy.deepcopy(learn.model.state_dict())
    opt_before = copy.deepcopy(learn.opt.state_dict())
    rng_before = torch.get_rng_state()
    n_batches = len(learn.recorder.batches)

    result = learn.lr_find()

    assert result.lrs[0] == pytest.approx(1e-7)
    assert all(b > a for a, b in zip(result.lrs, result.lrs[1:], strict=False))
    assert len(result.lrs) <= 100
    assert set(result.suggestions) == {"valley", "steep", "minimum", "slide"}
    assert all(1e-7 <= v <= 10 for v in result.suggestions.values())
    # A sweep that ends before 10 did so because the loss passed 4x its minimum.
    if result.lrs[-1] < 5:
        assert result.losses[-1] > 4 * min(result.losses[10:])
    for k, v in model_before.items():
        assert torch.equal(v, learn.model.state_dict()[k]), k
    after = learn.opt.state_dict()
    for pid, st in opt_before["state"].items():
        for k, v in st.items():
            assert torch.equal(v, after["state"][pid][k])
    assert torch.equal(rng_before, torch.get_rng_state())
    assert len(learn.recorder.batches) == n_batches


def test_resume_mid_epoch_ends_with_the_same_weights(fashion_folder: Path, tmp_path: Path) -> None:
    # The uninterrupted run.
    reference = make_learner(fashion_folder)
    reference.fit_one_cycle(2, 3e-3)

    # The same run, checkpointing every 3 steps, stopped in the middle of epoch 1 (7 batches per epoch).
    saved: list[dict] = []
    crashed = make_learner(fashion_folder)
    crashed.add_cbs([CheckpointCallback(saved.append, every_n_steps=3), StopCallback(lambda: crashed.train_iter == 10)])
    with pytest.raises(TrainingStopped):
        crashed.fit_one_cycle(2, 3e-3)
    # Every 3 steps (the last at 9 steps: epoch 1, batch 2 next), and at the stop itself: 10 steps, batch 3 next.
    assert [(c["position"]["epoch"], c["position"]["batch"]) for c in saved][-2:] == [(1, 2), (1, 3)]
    last = saved[-1]
    assert last["position"]["train_iter"] == 10
    path = save_checkpoint(last, tmp_path / "ckpt" / "last.pt")
    state = load_checkpoint(path)  # weights_only=True round trip

    # A new process would build a new learner (a different init, even) and resume.
    resumed = make_learner(fashion_folder, init_seed=123)
    resumed.fit_one_cycle(2, 3e-3, resume=state)

    ref_state = reference.model.state_dict()
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, ref_state[k]), f"{k} differs after resume"
    assert len(resumed.recorder.batches) == len(reference.recorder.batches)
    assert [e["epoch"] for e in resumed.recorder.epochs] == [0, 1]
    assert resumed.recorder.epochs[-1]["valid_loss"] == pytest.approx(reference.recorder.epochs[-1]["valid_loss"])

    other = make_learner(fashion_folder, bs=8)
    with pytest.raises(CheckpointError, match="resume with the same data"):
        other.fit_one_cycle(2, 3e-3, resume=state)


def test_checkpoints_follow_time_and_a_stop_always_writes_one(fashion_folder: Path) -> None:
    per_epoch: list[dict] = []
    learn = make_learner(fashion_folder, cbs=[CheckpointCallback(per_epoch.append)])  # 0 s: every epoch
    learn.fit_one_cycle(2, 1e-3)
    assert [(c["position"]["epoch"], c["position"]["batch"]) for c in per_epoch] == [(1, 0), (2, 0)]

    # A job shorter than the interval writes none...
    none: list[dict] = []
    learn = make_learner(fashion_folder, cbs=[CheckpointCallback(none.append, every_seconds=3600)])
    learn.fit_one_cycle(2, 1e-3)
    assert none == []
    # ...until it is stopped: then one, at the batch it stopped before.
    stopped: list[dict] = []
    learn = make_learner(fashion_folder)
    learn.add_cbs([CheckpointCallback(stopped.append, every_seconds=3600), StopCallback(lambda: learn.train_iter == 9)])
    with pytest.raises(TrainingStopped):
        learn.fit_one_cycle(2, 1e-3)
    assert [(c["position"]["epoch"], c["position"]["batch"], c["position"]["train_iter"]) for c in stopped] == [
        (1, 2, 9)
    ]

    # Past the interval, the next batch writes one mid-epoch (and the epoch's end, when due, another).
    often: list[dict] = []
    learn = make_learner(fashion_folder, cbs=[CheckpointCallback(often.append, every_seconds=1e-9)])
    learn.fit_one_cycle(1, 1e-3)
    n = len(learn.dls.train)
    assert [c["position"]["batch"] for c in often] == [*range(1, n), 0]


class StepCounter(Callback):
    order = 100

    def __init__(self) -> None:
        self.steps = 0

    def after_step(self) -> None:
        self.steps += 1

    def after_cancel_step(self) -> None:
        self.steps -= 1  # after_step runs for a skipped step too, as in fastai


def test_gradient_accumulation_steps_every_n_batches(fashion_folder: Path) -> None:
    counter = StepCounter()
    learn = make_learner(fashion_folder, cbs=[GradientAccumulation(3), counter])
    learn.fit_one_cycle(1, 1e-3)
    assert counter.steps == len(learn.dls.train) // 3
    assert not math.isnan(learn.recorder.epochs[0]["valid_loss"])


def test_train_loss_falls_on_real_images(fashion_folder: Path) -> None:
    learn = make_learner(fashion_folder)
    learn.fit_one_cycle(4, 5e-3)
    epochs = learn.recorder.epochs
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["error_rate"] < 0.5  # 4 classes: chance is 0.75
    assert isinstance(learn.model, nn.Sequential)

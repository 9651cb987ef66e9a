"""The cleaner [fastai: ImageClassifierCleaner], as data: the items whose given label the model doubts most.
Every item, training and validation alike, is judged by a model that never saw it: the items are split into
k folds by a hash of their key, and a cheap model (the job's body and recipe, fewer epochs) is trained on
the other folds and predicts the held-out one (out-of-fold predictions)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.engine.items import ClassItems, LabelledItems
from core.engine.learner import Phase
from core.jobs.context import JobContext, LocalJobContext
from core.jobs.rates import STAGE1_DEFAULT_LR
from core.jobs.spec import TrainSpec


class FoldContext(LocalJobContext):
    """A fold's training: quiet, kept in a scratch folder, stopped when the job is cancelled."""

    def __init__(self, out: Path, job: JobContext) -> None:
        super().__init__(out, show_progress=False)
        self.job = job

    def should_stop(self) -> bool:
        return self.job.should_stop()


def fold_of(key: str, seed: int, folds: int) -> int:
    """An item's fold: stable per key, independent of the other items."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:fold:{key}".encode(), digest_size=8).digest(), "big") % folds


Build = Callable[[TrainSpec, JobContext, LabelledItems], Any]  # core.jobs.training.build_learner


def out_of_fold_probs(spec: TrainSpec, ctx: JobContext, items: ClassItems, folds: int, build: Build) -> torch.Tensor:
    """Each item's class probabilities from the model of the folds that left it out (N x classes)."""
    groups = [fold_of(k, spec.seed, folds) for k in items.keys]
    probs = torch.full((len(items), len(items.classes)), float("nan"))
    cheap = spec.model_copy(
        update={"kind": "fine_tune", "init_bundle": None, "epochs": max(1, spec.cleaner_epochs), "plan": None}
    )
    for f in range(folds):
        held = [i for i, g in enumerate(groups) if g == f]
        if not held or len(held) == len(items):
            continue
        fold_items = dataclasses.replace(items, is_valid=[g == f for g in groups])
        with tempfile.TemporaryDirectory(prefix="fitcycle-fold-") as scratch:
            built = build(cheap, FoldContext(Path(scratch), ctx), fold_items)
            learn = built.learn
            # Cheap, and slow to learn the noise it is looking for: a pretrained body stays frozen and only
            # the head trains (a probe of its features); a body from scratch trains whole.
            phase = Phase(f"fold{f}", "stage1" if cheap.is_pretrained else "scratch", cheap.epochs, STAGE1_DEFAULT_LR)
            learn.fit_phase(phase)
            logits, _ = learn.get_preds()
        # get_preds answers the valid items in order; map the learner's classes onto the items' classes.
        index = [items.class_index[c] for c in learn.dls.classes]
        fold_probs = torch.zeros(len(held), len(items.classes))
        fold_probs[:, index] = logits.softmax(dim=1)
        probs[held] = fold_probs
    return probs


def suspects(spec: TrainSpec, ctx: JobContext, items: LabelledItems, folds: int, build: Build) -> list[dict[str, Any]]:
    """Items ordered by how much the out-of-fold model doubts their label: key, split, given label, suggested
    label, the suggestion's probability, the given label's probability and its loss (-log of it)."""
    if not isinstance(items, ClassItems) or folds < 2:
        return []
    probs = out_of_fold_probs(spec, ctx, items, folds, build)
    rows = []
    for i, p in enumerate(probs):
        if torch.isnan(p).any():
            continue
        given = items.class_index[items.labels[i]]
        top = int(p.argmax())
        rows.append(
            {
                "item": items.keys[i],
                "valid": items.is_valid[i],
                "label": items.labels[i],
                "suggested": items.classes[top],
                "probability": float(p[top]),
                "given_probability": float(p[given]),
                "loss": -math.log(max(float(p[given]), 1e-12)),
            }
        )
    return sorted(rows, key=lambda r: -r["loss"])

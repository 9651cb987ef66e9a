"""The cleaner [fastai: ImageClassifierCleaner], as data, for every task: the items whose given target (label,
label set, points, values, mask) the model doubts most.
Every item, training and validation alike, is judged by a model that never saw it: the items are split into
k folds by a hash of their key, and a cheap model (the job's body and recipe, fewer epochs) is trained on
the other folds and predicts the held-out one (out-of-fold predictions)."""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.engine.export import export_bundle
from core.engine.inference import Predictor
from core.engine.items import LabelledItems
from core.engine.learner import Phase
from core.engine.tasks import Prediction, task_of
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


def out_of_fold_answers(
    spec: TrainSpec, ctx: JobContext, items: LabelledItems, folds: int, build: Build, batch: int = 64
) -> dict[int, Prediction]:
    """Each item's answer from the model of the folds that left it out: the fold's model is exported and
    answers its held-out images the way a served model would (so every task's answers are in label space)."""
    groups = [fold_of(k, spec.seed, folds) for k in items.keys]
    answers: dict[int, Prediction] = {}
    cheap = spec.model_copy(update={"init_bundle": None, "epochs": max(1, spec.cleaner_epochs), "plan": None})
    for f in range(folds):
        held = [i for i, g in enumerate(groups) if g == f]
        if not held or len(held) == len(items):
            continue
        fold_items = dataclasses.replace(items, is_valid=[g == f for g in groups])
        with tempfile.TemporaryDirectory(prefix="fitcycle-fold-") as scratch:
            built = build(cheap, FoldContext(Path(scratch), ctx), fold_items)
            # Cheap, and slow to learn the noise it is looking for: a pretrained body stays frozen and only
            # the head trains (a probe of its features); a body from scratch trains whole.
            phase = Phase(f"fold{f}", "stage1" if cheap.is_pretrained else "scratch", cheap.epochs, STAGE1_DEFAULT_LR)
            built.learn.fit_phase(phase)
            # A throwaway fold model: answered by PyTorch, not worth an ONNX export and its check.
            predictor = Predictor(export_bundle(built.learn, Path(scratch) / "bundle", onnx=False), backend="torch")
            for start in range(0, len(held), batch):
                chunk = held[start : start + batch]
                answers.update(zip(chunk, predictor.predict_batch([items.path(i) for i in chunk]), strict=True))
    return answers


def suspects(spec: TrainSpec, ctx: JobContext, items: LabelledItems, folds: int, build: Build) -> list[dict[str, Any]]:
    """Items ordered by how much the out-of-fold model doubts their given target (the task's Doubt): key,
    split, given and suggested targets (a version's relabel shape), the loss, and for classification the
    probabilities of the suggested and the given class."""
    if folds < 2:
        return []
    task = task_of(items)
    rows = []
    for i, answer in out_of_fold_answers(spec, ctx, items, folds, build).items():
        doubt = task.doubt(answer, items, i)
        rows.append(
            {
                "item": items.keys[i],
                "valid": items.is_valid[i],
                "given": doubt.given,
                "suggested": doubt.suggested,
                "probability": doubt.probability,
                "given_probability": doubt.given_probability,
                "loss": doubt.loss,
            }
        )
    return sorted(rows, key=lambda r: -r["loss"])

"""The names of the job kinds: the one list the types use (`TrainSpec.kind`, `JobCreate.kind`). It sits apart
from core/jobs/kinds/, whose modules build on the spec that needs these names. Each name has its module in
core/jobs/kinds/, registered in `KINDS`; tests/jobs/test_kinds.py keeps the two in step. Nothing outside these two
places writes a kind's name: code asks the registry (`core.jobs.kinds.get_kind`)."""

from __future__ import annotations

from typing import Literal, get_args

KindName = Literal[
    "fine_tune",
    "stage1",
    "stage2",
    "lr_find",
    "interpret",
    "retrain",
    "language_model",
    "adopt",
    "batch_predict",
    "estimate",
]
KIND_NAMES: tuple[str, ...] = get_args(KindName)
DEFAULT_KIND: KindName = "fine_tune"  # what `fitcycle train` runs, and a spec that names no kind

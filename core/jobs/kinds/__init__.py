"""The job kinds, registered in one place like the engine's tasks (core/engine/tasks/): each kind is a module
of this package — its run function and its `JobKind` declaration (parent, inheritance, defaults, the lr forms
it honours, how 'auto' resolves, what the UI form shows). The REST service, the worker, the runner, the UI and
the CLI ask `get_kind(name)`; nothing outside this package writes a kind's name.

Adding a kind: a module here with `run` and `KIND`, its name in core/jobs/kind_names.py, and one line in KINDS below."""

from __future__ import annotations

from core.jobs.kind_names import DEFAULT_KIND, KIND_NAMES, KindName
from core.jobs.kinds import (
    adopt,
    fine_tune,
    interpret,
    language_model,
    lr_find,
    predict,
    probe,
    retrain,
    stage1,
    stage2,
)
from core.jobs.kinds.base import SAME_DATA, JobKind, KindProblem, lr_form

KINDS: dict[str, JobKind] = {
    k.name: k
    for k in (
        fine_tune.KIND,
        stage1.KIND,
        stage2.KIND,
        lr_find.KIND,
        interpret.KIND,
        retrain.KIND,
        language_model.KIND,
        adopt.KIND,
        predict.KIND,
        probe.KIND,
    )
}
# The kinds the CLI and the services name by role rather than by a string.
FINE_TUNE, SWEEP, RETRAIN, ADOPT = fine_tune.KIND, lr_find.KIND, retrain.KIND, adopt.KIND
LANGUAGE_MODEL = language_model.KIND
PREDICT, ESTIMATE = predict.KIND, probe.KIND
MODEL_KINDS: tuple[str, ...] = tuple(name for name, k in KINDS.items() if k.makes_model)


def get_kind(name: str) -> JobKind:
    """The kind called `name`; ValueError listing the kinds when there is none."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown job kind '{name}'; choose one of: {', '.join(KINDS)}") from None


__all__ = [
    "ADOPT",
    "DEFAULT_KIND",
    "ESTIMATE",
    "FINE_TUNE",
    "KINDS",
    "KIND_NAMES",
    "LANGUAGE_MODEL",
    "MODEL_KINDS",
    "PREDICT",
    "RETRAIN",
    "SAME_DATA",
    "SWEEP",
    "JobKind",
    "KindName",
    "KindProblem",
    "get_kind",
    "lr_form",
]

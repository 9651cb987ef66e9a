"""A hyperparameter search's space over a job body's fields, checked and turned into Optuna's distributions; the
objective a search optimises; Optuna's samplers and pruners by name. No database and no HTTP: the API's search
service (api/services/searches.py) and the worker's trial reports (worker/trials.py) both build on it.

A space maps a field path of the job body to one distribution:
  {"log_uniform": [lo, hi]}   a number, log-spaced (a whole-number field samples whole numbers)
  {"uniform": [lo, hi]}       a number, evenly spaced
  {"choice": [a, b, ...]}     one of these values (strings, numbers, booleans)
  "around_lr_find"            lr only: [valley / 10, valley x 10] around an lr_find of the base job, run first
Paths are the job's settings (`lr`, `size`, `arch`, `bs`, `drop_mult`, ...) and one level into `transforms`
(`transforms.max_rotate`) and `arch_config` (`arch_config.n_hid`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from core.engine.metrics import LOWER_IS_BETTER, METRICS
from core.engine.text.awd_lstm import CONFIG_KEYS
from core.engine.transforms import AugmentConfig
from core.jobs.kinds.base import JobKind
from core.jobs.spec import JobSettings

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler

AROUND_LR_FIND = "around_lr_find"
Pruner = Literal["asha", "median", "none"]
Sampler = Literal["tpe", "random", "grid"]
Direction = Literal["maximize", "minimize"]
# Not searched: the split and what it is scored on (trials must be compared on the same items), the epochs
# (the budget the pruner divides), and what only moves where or how fast a job runs.
NOT_SEARCHED = {
    "valid_pct": "every trial must be scored on the same validation items",
    "seed": "every trial must be scored on the same validation items",
    "metrics": "the objective is chosen with `objective`",
    "epochs": "it is the search's budget, which the pruner divides: set it in the base job",
    "freeze_epochs": "it is the search's budget, which the pruner divides: set it in the base job",
    "plan": "a progressive-resizing plan is not a single value",
    "folds": "an interpret job's setting",
    "cleaner_epochs": "an interpret job's setting",
    "gpus": "it changes where a trial runs, not what it learns",
    "compile": "it changes how fast a trial runs, not what it learns",
    "precision": "it changes how fast a trial runs, not what it learns",
}
NESTED = {"transforms": tuple(AugmentConfig.__dataclass_fields__), "arch_config": CONFIG_KEYS}
OTHER_OBJECTIVES = ("valid_loss", "perplexity")  # reported by every job, and by a language model
MAX_CHOICES = 32


class SpaceError(ValueError):
    """A space that cannot be searched; `path` names the field it is about."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


def set_path(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `body` with `path` (one or two names) set to `value`."""
    out = dict(body)
    head, _, tail = path.partition(".")
    if tail:
        nested = dict(out.get(head) or {})
        nested[tail] = value
        out[head] = nested
    else:
        out[head] = value
    return out


def _is_int_field(path: str) -> bool:
    head, _, tail = path.partition(".")
    if tail:
        return head == "arch_config"
    return JobSettings.model_fields[head].annotation is int


def _check_path(path: str) -> None:
    head, dot, tail = path.partition(".")
    if head in NESTED:
        if not dot:
            raise SpaceError(path, f"search one of its settings ({', '.join(f'{head}.{k}' for k in NESTED[head])})")
        if tail not in NESTED[head]:
            raise SpaceError(path, f"not a setting of {head}; it has {', '.join(NESTED[head])}")
        return
    if dot or head not in JobSettings.model_fields:
        searchable = sorted(f for f in JobSettings.model_fields if f not in NOT_SEARCHED and f not in NESTED)
        raise SpaceError(path, f"not a field of a job; the fields a search can vary: {', '.join(searchable)}")
    if head in NOT_SEARCHED:
        raise SpaceError(path, f"not searched: {NOT_SEARCHED[head]}")


def _bounds(path: str, value: Any, key: str) -> tuple[float, float]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise SpaceError(path, f"{key} takes [low, high], two finite numbers")
    lo, hi = float(value[0]), float(value[1])
    if lo > hi:
        raise SpaceError(path, f"{key}'s low {lo:g} is above its high {hi:g}")
    if key == "log_uniform" and lo <= 0:
        raise SpaceError(path, "log_uniform needs a low above 0")
    return lo, hi


def parse_dimension(path: str, spec: Any) -> BaseDistribution | str:
    """One path's distribution, or AROUND_LR_FIND; a SpaceError says what is wrong and how to write it."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    _check_path(path)
    if spec == AROUND_LR_FIND:
        if path != "lr":
            raise SpaceError(path, f"'{AROUND_LR_FIND}' is for lr only")
        return AROUND_LR_FIND
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SpaceError(
            path, 'write one of {"log_uniform": [lo, hi]}, {"uniform": [lo, hi]}, {"choice": [...]}' + _lr_hint(path)
        )
    ((key, value),) = spec.items()
    if key == "choice":
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_CHOICES:
            raise SpaceError(path, f"choice takes a list of 1 to {MAX_CHOICES} values")
        if not all(v is None or isinstance(v, str | int | float | bool) for v in value) or len(
            set(map(repr, value))
        ) < len(value):
            raise SpaceError(path, "choice takes distinct strings, numbers or booleans")
        if any(isinstance(v, float) and not math.isfinite(v) for v in value):
            raise SpaceError(path, "choice takes finite numbers")
        return CategoricalDistribution(value)
    if key not in ("uniform", "log_uniform"):
        raise SpaceError(path, f"unknown distribution '{key}'; use log_uniform, uniform or choice" + _lr_hint(path))
    lo, hi = _bounds(path, value, key)
    log = key == "log_uniform"
    if _is_int_field(path):
        if lo != int(lo) or hi != int(hi):
            raise SpaceError(path, f"a whole-number field: {key} takes whole-number bounds")
        return IntDistribution(int(lo), int(hi), log=log)
    return FloatDistribution(lo, hi, log=log)


def _lr_hint(path: str) -> str:
    return f", or '{AROUND_LR_FIND}'" if path == "lr" else ""


def extremes(dist: BaseDistribution) -> list[Any]:
    """The values that show whether a distribution is legal for its field: both ends, or every choice."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    assert isinstance(dist, FloatDistribution | IntDistribution)
    return [dist.low, dist.high]


def check_values(base: dict[str, Any], space: dict[str, BaseDistribution | str]) -> None:
    """Every end of every range (each choice) checked as a job's settings, the rest of the body as it is: the
    first illegal one is a SpaceError naming its path."""
    settings = {k: v for k, v in base.items() if k in JobSettings.model_fields}
    for path, dist in space.items():
        if isinstance(dist, str):
            continue
        for value in extremes(dist):
            try:
                JobSettings.model_validate(set_path(settings, path, value))
            except ValidationError as exc:
                message = "; ".join(e["msg"] for e in exc.errors())
                raise SpaceError(path, f"{value!r} is not a legal value: {message}") from None


def parse_space(raw: dict[str, Any], base: dict[str, Any]) -> dict[str, BaseDistribution | str]:
    """The whole space, checked: each path and its distribution, and every range's ends against the field."""
    if not raw:
        raise SpaceError("space", "name at least one field to search")
    space = {path: parse_dimension(path, spec) for path, spec in raw.items()}
    fixed = [p for p in space if _is_set(base, p)]
    if fixed:
        raise SpaceError(fixed[0], "set in the base job too; leave it out of one of them")
    check_values(base, space)
    return space


def get_path(body: dict[str, Any], path: str) -> Any:
    """The value at `path` (one or two names) in a job body or spec, or None."""
    head, _, tail = path.partition(".")
    return (body.get(head) or {}).get(tail) if tail else body.get(head)


def _is_set(body: dict[str, Any], path: str) -> bool:
    head, _, tail = path.partition(".")
    return head in body if not tail else tail in (body.get(head) or {})


def around(valley: float) -> tuple[float, float]:
    """The lr range an lr_find's valley suggests: a decade each side, inside the legal (0, 10)."""
    return max(valley / 10, 1e-7), min(valley * 10, 9.99)


def distributions(
    space: dict[str, BaseDistribution | str], lr_range: tuple[float, float] | None
) -> dict[str, BaseDistribution]:
    """Optuna's distributions, with `around_lr_find` as the range its lr_find gave."""
    from optuna.distributions import FloatDistribution

    out: dict[str, BaseDistribution] = {}
    for path, dist in space.items():
        if isinstance(dist, str):
            assert lr_range is not None, "around_lr_find needs its lr_find first"
            out[path] = FloatDistribution(lr_range[0], lr_range[1], log=True)
        else:
            out[path] = dist
    return out


def trial_body(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The job body of one trial: the base with each sampled value at its path."""
    body = dict(base)
    for path, value in params.items():
        body = set_path(body, path, value)
    return body


def objective_metrics() -> list[str]:
    """What a search may optimise: every metric a job can report per epoch, and its validation loss."""
    return [*METRICS, *OTHER_OBJECTIVES]


def default_metric(kind: JobKind, manifest: dict[str, Any]) -> str:
    """What a search of `kind`'s jobs on a dataset version (its manifest) optimises unless told: the kind's own
    objective (a language model: perplexity), else the task's main metric; a text classifier's accuracy."""
    from core.engine.items import TextItems, stored_type
    from core.engine.tasks import TASKS

    if kind.objective is not None:
        return kind.objective
    items_type = stored_type(manifest)
    if issubclass(items_type, TextItems):
        return "accuracy_multi" if (manifest.get("labels") or {}).get("label_delim") else "accuracy"
    return next(task.main_metric for task in TASKS.values() if task.items_type is items_type)


def reported_metrics(kind: JobKind, manifest: dict[str, Any], metrics: list[str] | None) -> list[str]:
    """What a job of `kind` on this dataset version reports after each epoch (with `metrics` as its body sets them):
    an image job its metrics when they suit its task (else the task's own), a text classifier accuracy and error rate
    (multi-label: accuracy_multi and fbeta), a language model accuracy and perplexity; every job its valid_loss."""
    from core.engine.items import TextItems, stored_type
    from core.engine.tasks import TASKS

    items_type = stored_type(manifest)
    if kind.objective is not None:
        names = ["accuracy", kind.objective]
    elif issubclass(items_type, TextItems):
        multi = (manifest.get("labels") or {}).get("label_delim")
        names = ["accuracy_multi", "fbeta"] if multi else ["accuracy", "error_rate"]
    else:
        task = next(task for task in TASKS.values() if task.items_type is items_type)
        names = list(
            metrics
            if metrics is not None
            else JobSettings.model_fields["metrics"].get_default(call_default_factory=True)
        )
        if not set(names) & set(task.metrics):
            names = list(task.metrics)
    return [*names, "valid_loss"]


def direction_of(metric: str) -> Direction:
    """Which way a metric gets better."""
    return "minimize" if metric in LOWER_IS_BETTER else "maximize"


def grid_size(space: dict[str, BaseDistribution | str]) -> int:
    """How many points a grid search has: the product of its choices (every dimension must be a choice)."""
    from optuna.distributions import CategoricalDistribution

    n = 1
    for path, dist in space.items():
        if not isinstance(dist, CategoricalDistribution):
            raise SpaceError(path, "a grid search takes only choice dimensions: list the values to try")
        n *= len(dist.choices)
    return n


def make_sampler(name: Sampler, space: dict[str, BaseDistribution | str], seed: int | None) -> BaseSampler:
    """Optuna's TPE (the default), random search, or a grid over the space's choices."""
    import optuna

    if name == "grid":
        grid = {path: list(dist.choices) for path, dist in space.items() if not isinstance(dist, str)}  # type: ignore[attr-defined]
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # A few random trials first (TPE's own default is 10, as many as a small search has in all).
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)


def make_pruner(name: Pruner) -> BasePruner:
    """ASHA (Optuna's asynchronous successive halving: rungs at 1, 3, 9... epochs, the top third goes on),
    the median rule, or none; a step is an epoch of the trial."""
    import optuna

    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3, min_early_stopping_rate=0)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.NopPruner()

"""What a job kind declares (`JobKind`), and the checks every kind's spec goes through (`JobKind.problems`):
the one description of a kind that the REST service, the worker, the engine's runner, the UI and the CLI read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from core.engine.items import LabelledItems, TextItems
from core.jobs.context import JobContext
from core.jobs.estimate import PhaseEstimator
from core.jobs.spec import JobSettings, TrainSpec
from core.jobs.training import Built

Runner = Callable[[TrainSpec, JobContext, Built], dict[str, Any]]
Answerer = Callable[[TrainSpec, JobContext, LabelledItems], dict[str, Any]]
TextRunner = Callable[[TrainSpec, JobContext, TextItems], dict[str, Any]]

LrForm = Literal["number", "range", "find", "auto"]

# What a job continuing from a parent takes from it unless the request sets it: the same pictures and the
# same validation set (seed and valid_pct decide the split). The architecture is always the parent's.
SAME_DATA = ("size", "resize_method", "transforms", "augment", "seed", "valid_pct")

LR_FORM_TEXT = {"number": "one number", "range": "[low, high]", "find": "'find'", "auto": "'auto'"}


def no_learner(spec: TrainSpec, ctx: JobContext, built: Built) -> dict[str, Any]:
    """The `run` of a kind that trains nothing (it declares `answers`): the runner never builds it a learner."""
    raise TypeError(f"a {spec.kind} job runs through its kind's `answers`, not a learner")


def lr_form(lr: float | tuple[float, float] | str | None) -> LrForm | None:
    """Which form a spec's lr takes (None: unset)."""
    if lr is None:
        return None
    if isinstance(lr, tuple):
        return "range"
    if isinstance(lr, float | int):
        return "number"
    return "auto" if lr == "auto" else "find"


@dataclass(frozen=True, kw_only=True)
class JobKind:
    """One kind of job: registered in KINDS (core/jobs/kinds/__init__.py), named in core/jobs/kind_names.py."""

    name: str
    summary: str  # one line: the CLI's help, the UI's form
    run: Runner  # the job, once the runner has built its learner (core.jobs.runner.run_spec)
    makes_model: bool  # registers a model (and so joins the registry and meets the gate)
    lr: float | Literal["auto"] | None  # the default learning rate (None: the kind takes none)
    lr_note: str = ""  # how the default is chosen when it is more than a number (docs, UI)
    lr_forms: frozenset[LrForm] = frozenset()  # the forms of lr it honours; any other is a 422
    parent: str | None = None  # what its parent job must be, when it needs one ("a job that made a model")
    takes_parent: bool = True  # False: parent_job_id is refused (a retrain starts from a model, not a job)
    starts_from_model: bool = False  # its spec must carry the full weights to continue from (init_bundle)
    inherits: tuple[str, ...] = SAME_DATA  # fields a parent gives unless the request sets them
    inherits_weights_source: bool = False  # also the parent's `pretrained` (the cleaner's folds start there)
    trains: tuple[str, ...] = ()  # its epoch fields: at least one epoch among them, else there is nothing to do
    plan: bool = False  # accepts a progressive-resizing plan
    auto_from: str | None = None  # lr 'auto': the kind of the parent's child whose suggestion it reads
    remaps_classes: bool = False  # continues from a model whose class list may differ (rows of kept classes copied)
    defaults_from_champion: bool = False  # its recipe defaults come from the champion it starts from
    form_fields: tuple[str, ...] = ()  # the job form's fields it uses beyond the common ones (the UI)
    page: Literal["curves", "sweep", "interpretation", "predictions", "estimate"] = "curves"  # its job page (UI)
    answers: Answerer | None = None  # set: it trains nothing; a model answers the data (no learner is built)
    answers_with_model: bool = False  # from_model (default: the name's champion) is the model it answers with
    estimate: PhaseEstimator | None = None  # its phases' seconds from a probe (core/jobs/estimate.py); None: none yet
    internal: bool = False  # queued by the service itself (a dry run's probe), never by name
    images: bool = True  # it learns from images (a dataset of texts needs `text`)
    text: TextRunner | None = None  # the job on a dataset of texts (core/jobs/text_training.py); None: refused
    text_lr: float | None = None  # its default lr on texts, when another than `lr`
    valid_pct: float | None = None  # its default validation share, when another than every job's
    objective: str | None = None  # what a search of its jobs optimises by default, when not the task's main metric
    adopts_parent_result: bool = False  # its result (and its model's metrics) are its parent's: it trains nothing
    name_suffix: str = ""  # its models join the registry as the dataset's name + this (a language model: "-lm")

    def data_problem(self, is_text: bool, gpus: int = 1, compile: bool = False) -> str | None:
        """Why this kind cannot run on this dataset's data (texts or images) with these settings, or None."""
        if is_text and (gpus > 1 or compile):
            return "a job on texts trains on one device, uncompiled: leave gpus at 1 and compile off"
        if is_text and self.text is None:
            return f"a {self.name} job does not take a dataset of texts yet"
        if not is_text and not self.images:
            return f"a {self.name} job learns from texts: choose a dataset uploaded with labels=text_csv or text_folder"
        return None

    def default_lr(self, is_text: bool) -> float | Literal["auto"] | None:
        """Its default learning rate on this kind of data."""
        return self.text_lr if is_text and self.text_lr is not None else self.lr

    def problems(self, spec: JobSettings, from_model: bool) -> list[tuple[str, str]]:
        """What this kind cannot honour in `spec` (a job's settings; `from_model`: whether it has weights to
        continue from), as (field, message) pairs; empty when it can run it."""
        found: list[tuple[str, str]] = []
        form = lr_form(spec.lr)
        if form is not None and form not in self.lr_forms:
            takes = " or ".join(t for f, t in LR_FORM_TEXT.items() if f in self.lr_forms) or "no lr (leave it out)"
            found.append(("lr", f"a {self.name} job takes {takes}; got {LR_FORM_TEXT[form]}"))
        if self.trains and sum(getattr(spec, f) for f in self.trains) == 0:
            found.append((self.trains[-1], f"nothing to train: {' and '.join(self.trains)} are all 0"))
        if form == "range" and spec.plan:
            found.append(("lr", "a progressive-resizing plan takes one base rate per size, not a range"))
        if self.starts_from_model and not from_model:
            found.append(("parent_job_id", f"a {self.name} job continues from a model's weights: name its parent"))
        if spec.plan is not None and not self.plan:
            found.append(("plan", f"a progressive-resizing plan belongs to a fine_tune job, not a {self.name} job"))
        elif spec.plan is not None and not spec.plan:
            found.append(("plan", "a progressive-resizing plan needs at least one size"))
        if spec.gpus > 1 and not self.makes_model:
            found.append(("gpus", f"a {self.name} job runs on one device: gpus is for the kinds that train a model"))
        if spec.gpus > 1 and spec.lr == "find":
            found.append(("lr", "lr 'find' sweeps on one device: run an lr_find job first, or give a rate"))
        return found

    def check(self, spec: TrainSpec) -> TrainSpec:
        """`spec` with this kind's default lr filled in; ValueError naming each problem when it cannot run."""
        found = self.problems(spec, from_model=bool(spec.init_bundle))
        data = self.data_problem(spec.is_text, spec.gpus, spec.compile)
        if data is not None:
            found.append(("kind", data))
        if found:
            raise KindProblem(found)
        lr = self.default_lr(spec.is_text)
        if spec.lr is None and lr is not None:
            return spec.model_copy(update={"lr": lr})
        return spec


class KindProblem(ValueError):
    """A spec its kind cannot honour: each (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))

"""Hyperparameter searches built on the platform's own parts: a search is a row, its study is Optuna's in this same
database (core/db/studies.py), and each trial is an ordinary job of the base kind (jobs.search_id), queued through
jobs.create with its quota, leases and fences. The workers report every epoch's objective to the study and the
pruner stops weak trials there (worker/trials.py); `advance` does the rest: an lr_find first for
`"lr": "around_lr_find"`, then asks the sampler for trials while fewer than `parallel` are active, tells the study how
each one ended, and at the end names the best trial (and adopts its model into `register_as`, where the gate
judges it). The API process that holds the `searches` fleet lease advances every running search each second
(api/loops.py); advancing is idempotent and reads everything from the database, so a restarted API or a dead
worker (its trial re-queued by the reaper, resumed from its checkpoint) leaves nothing counted twice."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from api.errors import Problem, not_found
from api.schemas import (
    JobCreate,
    SearchCreate,
    SearchesPublic,
    SearchImportance,
    SearchObjective,
    SearchPublic,
    TrialPublic,
)
from api.services import jobs
from api.services.datasets import find_version
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope
from core.db.studies import study_storage
from core.jobs.kinds import ADOPT, SWEEP, get_kind
from core.jobs.search_space import (
    AROUND_LR_FIND,
    SpaceError,
    around,
    default_metric,
    direction_of,
    distributions,
    extremes,
    get_path,
    grid_size,
    make_sampler,
    objective_metrics,
    parse_space,
    reported_metrics,
    set_path,
    trial_body,
)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("fitcycle.searches")
MAX_GRID = 10_000  # points of a grid search (Optuna's GridSampler lists and shuffles them all)
MAX_TRIAL_EPOCHS = 20_000  # trials x epochs of one search
MAX_NEW_PER_PASS = 8  # trials one pass queues for one search (the rest next pass: no search holds the loop)
RETRY_LATER = (429, 503, 507)  # a Problem the next pass may not meet (a full quota, an outage, a full disk)
_importances: dict[tuple[str, int, tuple[str, ...]], dict[str, float]] = {}  # this process's results
_importances_lock = threading.Lock()
EVALUATOR = "ped-anova"  # Optuna's default importance evaluator (fANOVA's successor as default; milliseconds)


def _invalid(path: str, message: str) -> Problem:
    return Problem(
        422, "Invalid search", f"{path}: {message}", field=path, errors=[{"field": path, "message": message}]
    )


# ----- making one ---------------------------------------------------------------------------------------------------
def create(state: AppState, project: domain.Project, body: SearchCreate, by_admin: bool = True) -> SearchPublic:
    """Check the search (every path, every range's ends, the base job as POST /jobs would), write its row and its
    study; its first trials are queued within a second by the search loop."""
    kind = get_kind(body.base.kind)
    if not (kind.makes_model and kind.trains):
        raise _invalid("base.kind", f"a {kind.name} job trains no model to compare; search a kind that trains one")
    if body.parallel > state.settings.max_active_jobs:
        raise _invalid(
            "parallel",
            f"at most {state.settings.max_active_jobs}, the project's active-jobs quota (FITCYCLE_MAX_ACTIVE_JOBS)",
        )
    base = body.base.model_dump(mode="json", exclude_unset=True)
    try:
        space = parse_space(body.space, base)
        n_grid = grid_size(space) if body.sampler == "grid" else None
    except SpaceError as exc:
        raise _invalid(f"space.{exc.path}" if exc.path != "space" else "space", exc.message) from None
    if body.sampler == "grid" and any(isinstance(d, str) for d in space.values()):
        raise _invalid("space.lr", f"'{AROUND_LR_FIND}' samples a range; a grid takes choices")
    if n_grid is not None and n_grid > MAX_GRID:
        raise _invalid(
            "space", f"a grid of {n_grid:,} points; at most {MAX_GRID:,} (its trials are at most 200 anyway)"
        )
    with session_scope(state.sessions) as s:
        _, version, _ = find_version(s, project, body.base.dataset_id, body.base.dataset_version)
    # Every trial (and the adopted best) on the version the search started on, whatever is cut meanwhile: trials are
    # compared on the same items, and a member's new version cannot become the data the gate judges on.
    base["dataset_version"] = version.version
    # The base job checked as POST /jobs checks a job (the split too, once: the space never changes it), then with
    # each end of each range (each choice): the job-level rules (a kind's lr forms, an architecture's weights) name
    # the searched path when they refuse.
    try:
        resolved = jobs.check(state, project, JobCreate.model_validate(base))
    except Problem as exc:
        raise Problem(exc.status, "Invalid search", f"base: {exc.detail}", field="base") from None
    for path, dist in space.items():
        for value in [] if isinstance(dist, str) else extremes(dist):
            candidate = set_path(base, path, value)
            try:
                jobs.check(state, project, JobCreate.model_validate(candidate), split=False)
            except ValidationError as exc:
                raise _invalid(f"space.{path}", f"{value!r}: {exc.errors()[0]['msg']}") from None
            except Problem as exc:
                where = f"space.{path}"
                raise Problem(exc.status, "Invalid search", f"{where}: {exc.detail}", field=where) from None
    epochs = sum(int(resolved.get(f, 0)) for f in kind.trains)
    if epochs * body.trials > MAX_TRIAL_EPOCHS:
        raise _invalid("trials", f"{body.trials} trials of {epochs} epochs; a search runs at most {MAX_TRIAL_EPOCHS:,}")
    if AROUND_LR_FIND in space.values():
        try:
            jobs.check(state, project, JobCreate.model_validate(_sweep_body(base)), split=False)
        except Problem as exc:
            raise Problem(
                exc.status, "Invalid search", f"space.lr: its lr_find: {exc.detail}", field="space.lr"
            ) from None
    manifest = json.loads(state.store.get_bytes(f"{version.prefix}/manifest.json"))
    objective = body.objective or SearchObjective(metric=default_metric(kind, manifest))
    reported = reported_metrics(kind, manifest, base.get("metrics"))
    if objective.metric not in reported:
        raise _invalid(
            "objective.metric",
            f"the base job reports {', '.join(reported)} each epoch, not {objective.metric}"
            + (": add it to base.metrics or optimise one of those" if objective.metric in objective_metrics() else ""),
        )
    direction = objective.direction or direction_of(objective.metric)
    with session_scope(state.sessions) as s:
        repos.lock_project(s, project.id)  # the count and the insert, one project's at a time
        running = repos.count_running_searches(s, project.id)
        if running >= state.settings.max_active_searches:
            raise Problem(
                429,
                "Too many running searches",
                f"this project has {running} running searches, its limit (FITCYCLE_MAX_ACTIVE_SEARCHES); "
                "wait for one to finish or cancel one",
            )
        search = repos.create_search(
            s,
            project_id=project.id,
            base=base,
            space=body.model_dump(mode="json")["space"],
            trials=min(body.trials, n_grid) if n_grid else body.trials,
            parallel=body.parallel,
            metric=objective.metric,
            direction=direction,
            pruner=body.pruner,
            sampler=body.sampler,
            seed=body.seed,
            register_as=body.register_as,
            by_admin=by_admin,
        )
    import optuna

    optuna.create_study(
        study_name=search.study_name, storage=study_storage(state.settings.sqlalchemy_url), direction=direction
    )
    return get(state, project, search.id)


# ----- reading ------------------------------------------------------------------------------------------------------
def _find(state: AppState, project: domain.Project, search_id: str) -> domain.Search:
    with session_scope(state.sessions) as s:
        search = repos.get_search(s, search_id, project.id)
    if search is None:
        raise not_found("search", search_id)
    return search


def _final(job: domain.Job, metric: str) -> float | None:
    """A trial's objective as its job's result holds it (its last epoch's; a pruned trial's where it stopped)."""
    value = job.result.get(metric)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _last(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return present[-1] if present else None


def _better(search: domain.Search, a: float, b: float) -> bool:
    return a > b if search.direction == "maximize" else a < b


def public(state: AppState, search: domain.Search, full: bool = True) -> SearchPublic:
    """The search with its trials (fields, state, epochs, objective per epoch), its best and its best over time;
    not `full` (a list of searches): each trial's epoch count and final objective only, no curves."""
    with session_scope(state.sessions) as s:
        trials = repos.trials_of(s, search.id)
        if full:
            epochs = repos.epoch_values(s, [t.id for t in trials], search.metric)
        else:
            n_epochs = repos.epochs_of_jobs(s, [t.id for t in trials])
            epochs = {t.id: [(0.0, _final(t, search.metric))] * n_epochs.get(t.id, 0) for t in trials}
        adopt = repos.get_job(s, search.adopt_job_id) if search.adopt_job_id else None
    rows: list[TrialPublic] = []
    for t in trials:
        values = [v for _, v in epochs.get(t.id, [])]
        rows.append(
            TrialPublic(
                number=t.trial_number or 0,
                job_id=t.id,
                state=t.state,
                params={p: get_path(t.spec, p) for p in search.space},
                epochs=len(values),
                value=_last(values),
                values=values if full else [],
                started_at=t.started_at,
                finished_at=t.finished_at,
            )
        )
    finished = [r for r in rows if r.state == "succeeded" and r.value is not None]
    best = None
    for r in finished:
        if best is None or _better(search, r.value, best.value):  # type: ignore[arg-type]
            best = r
    # Best so far: every epoch of every trial, in time order (a pruned trial's epochs count too).
    points = [] if not full else sorted((when, v) for t in trials for when, v in epochs.get(t.id, []) if v is not None)
    start = search.created_at.timestamp()
    best_so_far: list[list[float]] = []
    for when, v in points:
        if not best_so_far or _better(search, v, best_so_far[-1][1]):
            best_so_far.append([round(when - start, 2), v])
    per_trial = _epochs_per_trial(search, trials)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    return SearchPublic(
        id=search.id,
        state=search.state,
        base=search.base,
        space=search.space,
        max_trials=search.trials,
        parallel=search.parallel,
        objective=SearchObjective.model_validate({"metric": search.metric, "direction": search.direction}),
        pruner=search.pruner,
        sampler=search.sampler,
        seed=search.seed,
        register_as=search.register_as,
        lr_find_job_id=search.lr_find_job_id,
        lr_range=search.lr_range,
        adopt_job_id=search.adopt_job_id,
        created_at=search.created_at,
        finished_at=search.finished_at,
        error=search.error,
        counts=counts,
        epochs_used=sum(r.epochs for r in rows),
        epochs_unpruned=per_trial * len(rows),
        best=best,
        best_so_far=best_so_far,
        decision=(adopt.result.get("decision") if adopt is not None else None) or search.result.get("decision"),
        trials=rows,
    )


def _epochs_per_trial(search: domain.Search, trials: list[domain.Job]) -> int:
    """Epochs one trial runs unpruned: its job's epoch fields as resolved (the base's, else its kind's defaults)."""
    kind = get_kind(search.base["kind"])
    spec = trials[0].spec if trials else search.base
    return sum(int(spec.get(f, JobCreate.model_fields[f].default)) for f in kind.trains)


def get(state: AppState, project: domain.Project, search_id: str) -> SearchPublic:
    return public(state, _find(state, project, search_id))


def list_all(state: AppState, project: domain.Project, offset: int, limit: int) -> SearchesPublic:
    with session_scope(state.sessions) as s:
        found, count = repos.list_searches(s, project.id, limit, offset)
    return SearchesPublic(data=[public(state, x, full=False) for x in found], count=count)


def importance(state: AppState, project: domain.Project, search_id: str) -> SearchImportance:
    """Each field's importance over the finished trials (Optuna's default evaluator, PED-ANOVA)."""
    import optuna

    search = _find(state, project, search_id)
    study = optuna.load_study(study_name=search.study_name, storage=study_storage(state.settings.sqlalchemy_url))
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varied = [p for p in search.space if len({repr(t.params.get(p)) for t in done}) > 1]
    if len(done) < 2 or not varied:
        note = "needs two finished trials that differ in a field" if len(done) < 2 else "no field varied"
        return SearchImportance(importances={}, evaluator=EVALUATOR, n_trials=len(done), note=note)
    key = (search.id, len(done), tuple(varied))
    with _importances_lock:
        known = _importances.get(key)
    if known is None:  # once per search and count of finished trials
        found = optuna.importance.get_param_importances(
            study, params=varied, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        )
        known = {k: round(float(v), 4) for k, v in found.items()}
        with _importances_lock:
            _importances[key] = known
            while len(_importances) > 256:
                _importances.pop(next(iter(_importances)))
    return SearchImportance(importances=known, evaluator=EVALUATOR, n_trials=len(done))


# ----- cancelling ---------------------------------------------------------------------------------------------------
def cancel(state: AppState, project: domain.Project, search_id: str) -> SearchPublic:
    """Stop the search: its queued trials are cancelled at once, its running ones at their next batch."""
    search = _find(state, project, search_id)
    if search.is_terminal or not _end(state, search.id, "cancelled", error="cancelled"):
        now = _find(state, project, search_id)
        raise Problem(409, "Already finished", f"search {search_id} is {now.state}; nothing to cancel")
    _cancel_jobs(state, search.id)
    return get(state, project, search_id)


def _cancel_jobs(state: AppState, search_id: str) -> None:
    with session_scope(state.sessions) as s:
        search = repos.get_search(s, search_id)
        ids = [t.id for t in repos.trials_of(s, search_id) if not t.is_terminal]
        ids += [j for j in (search.lr_find_job_id, search.adopt_job_id) if j] if search else []
        for job_id in ids:
            job = repos.get_job(s, job_id)
            if job is not None and not job.is_terminal:
                repos.request_cancel(s, job_id)


# ----- advancing ----------------------------------------------------------------------------------------------------
def advance(state: AppState, search_id: str) -> None:
    """One step of a running search, from what the database holds: lr_find first (around_lr_find), the study told
    how finished trials ended, new trials while fewer than `parallel` are active, the end once all are done."""
    with session_scope(state.sessions) as s:
        search = repos.get_search(s, search_id)
        project = repos.get_project(s, search.project_id) if search else None
    if search is None or project is None or search.is_terminal:
        return
    if AROUND_LR_FIND in search.space.values() and search.lr_range is None:
        if not _lr_found(state, project, search):
            return
        with session_scope(state.sessions) as s:
            search = repos.get_search(s, search_id)
    assert search is not None
    import optuna

    storage = study_storage(state.settings.sqlalchemy_url)
    space = parse_space(search.space, search.base)
    # Telling needs no sampler of ours (a grid's would call study.stop(), which only an optimize loop may); asking
    # makes its own (_queue_trial).
    study = optuna.create_study(
        study_name=search.study_name,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),
        direction="maximize" if search.direction == "maximize" else "minimize",
        load_if_exists=True,
    )
    with session_scope(state.sessions) as s:
        trials = repos.trials_of(s, search.id)
    _tell_ended(state, search, study, trials)
    active = [t for t in trials if not t.is_terminal]
    if len(trials) < search.trials:
        with session_scope(state.sessions) as s:
            headroom = state.settings.max_active_jobs - repos.active_jobs(s, project.id)
        wanted = min(search.parallel - len(active), search.trials - len(trials), headroom, MAX_NEW_PER_PASS)
        lr_range = (float(search.lr_range[0]), float(search.lr_range[1])) if search.lr_range else None
        for i in range(max(0, wanted)):
            if not _queue_trial(state, project, search, space, distributions(space, lr_range), len(trials) + i):
                return
        return
    if active:
        return
    _finish(state, project, search, trials)


def _tell_ended(state: AppState, search: domain.Search, study: optuna.Study, trials: list[domain.Job]) -> None:
    """Tell the study how each ended trial ended (once: a trial it knows as finished is left alone); an Optuna
    trial with no job (the API died between asking and queueing) is failed."""
    import optuna

    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    running = optuna.trial.TrialState.RUNNING
    by_number = {t.trial_number: t for t in trials}
    untold = [t.id for t in trials if t.is_terminal and states.get(t.trial_number or 0) == running]
    with session_scope(state.sessions) as s:
        values = repos.epoch_values(s, untold, search.metric)  # only the trials the study has not heard of
    for number, trial_state in states.items():
        if trial_state != running:
            continue
        job = by_number.get(number)
        if job is None:
            study.tell(number, state=optuna.trial.TrialState.FAIL)
            continue
        if not job.is_terminal:
            continue
        value = _last([v for _, v in values.get(job.id, [])])
        if job.state == "succeeded" and value is not None:
            study.tell(number, value)
        elif job.state == "pruned":
            study.tell(number, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(number, state=optuna.trial.TrialState.FAIL)


def _queue_trial(
    state: AppState,
    project: domain.Project,
    search: domain.Search,
    space: dict[str, Any],
    dists: dict[str, Any],
    n: int,
) -> bool:
    """Ask the sampler for trial `n` (the search's n-th job) and queue its job; False when it could not be queued:
    a quota or an outage is tried again next pass, any other refusal fails the search with the reason."""
    import optuna

    storage = study_storage(state.settings.sqlalchemy_url)
    study = optuna.load_study(study_name=search.study_name, storage=storage)
    # A sampler per trial, seeded with the search's seed and the trial's place: the loop makes a new one each pass
    # (the same seed would draw the same first values again), and the same seed still samples the same trials. A
    # grid keeps the search's seed: it shuffles its points by it once, and trial n takes the n-th.
    seed = search.seed if search.seed is None or search.sampler == "grid" else (search.seed * 1_000_003 + n) % 2**32
    study.sampler = make_sampler(search.sampler, space, seed)  # type: ignore[arg-type]
    trial = study.ask(dists)
    body = trial_body(search.base, trial.params)
    try:
        jobs.create(state, project, JobCreate.model_validate(body), search.by_admin, trial=(search.id, trial.number))
    except (Problem, ValidationError) as exc:
        study.sampler = optuna.samplers.RandomSampler()  # (a grid's own would stop the study when it is spent)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        detail = exc.detail if isinstance(exc, Problem) else str(exc.errors()[0]["msg"])
        if isinstance(exc, Problem) and exc.status in RETRY_LATER:
            return False  # the project's quota filled meanwhile, or an outage: next pass
        log.warning("search %s: trial %d could not be queued: %s", search.id, trial.number, detail)
        _end(state, search.id, "failed", error=f"trial {trial.number} could not be queued: {detail}")
        return False
    with session_scope(state.sessions) as s:
        current = repos.get_search(s, search.id)
    if current is not None and current.is_terminal:  # cancelled while it was being queued
        _cancel_jobs(state, search.id)
        return False
    log.info("search %s: trial %d queued with %s", search.id, trial.number, trial.params)
    return True


def _sweep_body(base: dict[str, Any]) -> dict[str, Any]:
    """around_lr_find's lr_find job: the base job's data and model, swept instead of trained."""
    return {**{k: v for k, v in base.items() if k not in ("kind", "lr", "name", "freeze_epochs")}, "kind": SWEEP.name}


def _queue_for(
    state: AppState, project: domain.Project, search: domain.Search, body: dict[str, Any], what: str
) -> str | None:
    """Queue the search's own job (its lr_find, its adopt job); None when it cannot be now. A quota or an outage is
    tried again next pass; any other refusal fails the search with the reason."""
    try:
        job = jobs.create(state, project, JobCreate.model_validate(body), search.by_admin)
    except Problem as exc:
        if exc.status not in RETRY_LATER:
            _end(state, search.id, "failed", error=f"its {what} could not be queued: {exc.detail}")
        return None
    return job.id


def _end(state: AppState, search_id: str, to: str, **values: Any) -> bool:
    """running -> `to`, once: False when the search had already ended (a cancel, another pass)."""
    with session_scope(state.sessions) as s:
        return repos.end_search(s, search_id, to, **values)


def _attach(state: AppState, search_id: str, **job_ids: str) -> None:
    """Record the search's own job (lr_find, adopt); when the search ended meanwhile (a cancel), cancel the job."""
    with session_scope(state.sessions) as s:
        if repos.set_running_search(s, search_id, **job_ids):
            return
        for job_id in job_ids.values():
            repos.request_cancel(s, job_id)


def _lr_found(state: AppState, project: domain.Project, search: domain.Search) -> bool:
    """around_lr_find: queue an lr_find of the base job, wait for it, and store [valley/10, valley x 10]; True
    once the range is known."""
    if search.lr_find_job_id is None:
        sweep = _queue_for(state, project, search, _sweep_body(search.base), "lr_find job")
        if sweep is not None:
            _attach(state, search.id, lr_find_job_id=sweep)
        return False
    with session_scope(state.sessions) as s:
        job = repos.get_job(s, search.lr_find_job_id)
    if job is None or (job.is_terminal and job.state != "succeeded"):
        why = job.error or job.state if job else "it was deleted"
        _end(state, search.id, "failed", error=f"its lr_find job did not succeed: {why}")
        return False
    if not job.is_terminal:
        return False
    valley = (job.result.get("suggestions") or {}).get("valley")
    if not isinstance(valley, int | float) or not 0 < valley < 10:
        _end(state, search.id, "failed", error="its lr_find job suggested no valley")
        return False
    low, high = around(float(valley))
    with session_scope(state.sessions) as s:
        repos.set_running_search(s, search.id, lr_range=[low, high])
    log.info("search %s: lr_find's valley %.2e: lr within [%.2e, %.2e]", search.id, valley, low, high)
    return True


def _finish(state: AppState, project: domain.Project, search: domain.Search, trials: list[domain.Job]) -> None:
    """Every trial has ended: the best succeeded one is the search's result; with register_as its model is adopted
    into that name (an adopt job on the best trial's data, which the gate judges) before the search succeeds."""
    with session_scope(state.sessions) as s:
        values = repos.epoch_values(s, [t.id for t in trials if t.state == "succeeded"], search.metric)
    scored = [(t, _last([v for _, v in values.get(t.id, [])])) for t in trials if t.state == "succeeded"]
    scored = [(t, v) for t, v in scored if v is not None]
    if not scored:
        _end(state, search.id, "failed", error="no trial succeeded; see the trials' jobs")
        return
    best, value = scored[0]
    for t, v in scored[1:]:
        if _better(search, v, value):  # type: ignore[arg-type]
            best, value = t, v
    result = {
        "best_job_id": best.id,
        "best_trial": best.trial_number,
        "best_value": value,
        "best_model_id": best.model_id,
    }
    if search.register_as:
        if search.adopt_job_id is None:
            body = {
                "kind": ADOPT.name,
                "dataset_id": search.base["dataset_id"],
                "dataset_version": search.base["dataset_version"],  # the best trial's own (the search pins it)
                "parent_job_id": best.id,
                "name": search.register_as,
            }
            adopt = _queue_for(state, project, search, body, "adopt job (register_as)")
            if adopt is not None:
                _attach(state, search.id, adopt_job_id=adopt)
            return
        with session_scope(state.sessions) as s:
            adopted = repos.get_job(s, search.adopt_job_id)
        if adopted is not None and not adopted.is_terminal:
            return
        if adopted is None or adopted.state != "succeeded":
            why = (adopted.error or adopted.state) if adopted else "it was deleted"
            _end(state, search.id, "failed", result=result, error=f"adopting the best trial's model failed: {why}")
            return
        result |= {"decision": adopted.result.get("decision"), "model_id": adopted.model_id}
    if not _end(state, search.id, "succeeded", result=result):
        return
    log.info("search %s: done; best trial %d (%s %.4f)", search.id, best.trial_number or 0, search.metric, value)


def advance_all(state: AppState, hold: Callable[[], bool] = lambda: True) -> None:
    """One pass over every running search (the search loop's); `hold` renews the lease before each."""
    with session_scope(state.sessions) as s:
        ids = repos.running_searches(s)
    for search_id in ids:
        if not hold():
            return
        try:
            advance(state, search_id)
        except Exception:
            log.exception("search %s: this pass failed; the next one tries again", search_id)


# ----- live -----------------------------------------------------------------------------------------------------
def _snapshot(state: AppState, credential: tuple[str, str], search_id: str) -> SearchPublic | None:
    with session_scope(state.sessions) as s:
        caller = repos.caller_for(s, credential)  # revoked, expired or signed out while the stream was open: end
        search = repos.get_search(s, search_id, caller.project.id) if caller else None
    return public(state, search) if search is not None else None


async def events(
    state: AppState, credential: tuple[str, str], search_id: str, disconnected: Callable[[], Awaitable[bool]]
) -> AsyncIterator[str]:
    """Server-sent events: `search` (the whole SearchPublic) whenever it changes, then `end`."""
    last = None
    while not await disconnected():
        current = await run_in_threadpool(_snapshot, state, credential, search_id)
        if current is None:
            return
        text = current.model_dump_json()
        if text != last:
            last = text
            yield f"event: search\ndata: {text}\n\n"
        if current.state != "running":
            yield f"event: end\ndata: {json.dumps({'state': current.state})}\n\n"
            return
        await asyncio.sleep(1.0)

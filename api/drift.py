"""Drift alarms [issue 26]: every served model's latest answers compared with its reference (core/engine/drift.py),
in the fleet loop (api/loops.py: one API process at a time).

Each pass, for every model that answered in the last WINDOW_HOURS (the MAX_MODELS most recent): when new answers
came since its last check, its window — its project's `drift_window` latest answers (default 500) of the last 24
hours — is scored against the reference in its bundle (`drift_reference.json`, written at export), one population
stability index per signal (uncertainty, class_mix, input). A window of fewer than MIN_WINDOW answers is not
scored. The scores go to `drift_states` (what /metrics publishes as `fitcycle_drift_score{model,signal}`) and, at
most every POINT_SECONDS, to `drift_points` (the charts).

When a score passes its bar — the project's `drift_threshold` (default 0.25; null: no alarms) plus what sampling
alone gives at the reference's and the window's sizes (core.engine.drift.noise_allowance: 0.05 for 300 validation
answers and a window of 500; a reference of fewer than MIN_REFERENCE answers is not watched) — and the model has no
open alarm, one is opened — by a conditional update, so its `model.drift` webhook is queued once however many passes
see it — explained: which signal moved, from what to what, since when, and the answers that show it. If the model
is its name's champion and the name's policy says `retrain_on_drift`, a retrain from the name's corrections is
queued (api/services/retraining.py), and the alarm says so (or why not). The alarm closes once every score is
below CLOSE_RATIO x the bar (a window that shifted back), so a model near the line does not flap."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from api.services.retraining import retrain_from_feedback
from api.state import AppState
from core.db import domain, repos
from core.db.models import utcnow
from core.db.session import session_scope
from core.engine.drift import (
    MIN_REFERENCE,
    REFERENCE_FILE,
    Answer,
    Reference,
    Shift,
    compare,
    noise_allowance,
    read_reference,
)
from core.engine.tasks import get_task
from core.jobs.gate import Policy
from core.storage.base import ObjectNotFound

log = logging.getLogger("fitcycle.drift")

WINDOW_HOURS = 24
MIN_WINDOW = 100  # answers a window needs to be scored: fewer, and the PSI of 10 bins is mostly noise
POINT_SECONDS = 60.0  # one chart point per model at most this often
POINT_DAYS = 30  # chart points older than this are deleted
MAX_MODELS = 200  # models checked per pass: those with new answers, the longest unchecked first
MAX_MODELS_PER_PROJECT = 20  # of them, per project: one project's many models never starve another's
MAX_REFERENCE_BYTES = 1024**2  # a drift reference is a few KB; a larger file is not read
CLEANUP_SECONDS = 3600.0  # how often old chart points are deleted
CLOSE_RATIO = 0.8
MAX_REFERENCES = 256  # references kept in memory


class References:
    """Models' drift references, read from their bundles in the store once (None: the bundle has none, e.g. one
    exported before drift alarms, or a text model's); the most recently used MAX_REFERENCES are kept."""

    def __init__(self) -> None:
        self._kept: OrderedDict[str, Reference | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, state: AppState, model: domain.Model) -> Reference | None:
        with self._lock:
            if model.id in self._kept:
                self._kept.move_to_end(model.id)
                return self._kept[model.id]
        key = f"{model.bundle_prefix.rstrip('/')}/{REFERENCE_FILE}"
        reference: Reference | None = None
        try:
            if state.store.size(key) > MAX_REFERENCE_BYTES:
                raise ValueError(f"it is over {MAX_REFERENCE_BYTES:,} bytes")
            reference = read_reference(state.store.get_bytes(key))
        except ObjectNotFound:
            pass
        except Exception as exc:  # a worker wrote it from a user's job: whatever is wrong with it, it is not watched
            log.warning("model %s: its drift reference is unreadable (%s); its drift is not watched", model.id, exc)
        with self._lock:
            self._kept[model.id] = reference
            while len(self._kept) > MAX_REFERENCES:
                self._kept.popitem(last=False)
        return reference


REFERENCES = References()


_last_cleanup = 0.0


def drift_pass(state: AppState, hold: Callable[[], bool] = lambda: True, now: datetime | None = None) -> list[str]:
    """Check every model with new answers (MAX_MODELS a pass, MAX_MODELS_PER_PROJECT of a project, the longest
    unchecked first); close the alarms of models that stopped answering. The ids of the models whose alarm this pass
    opened."""
    global _last_cleanup
    now = now or utcnow()
    since = now - timedelta(hours=WINDOW_HOURS)
    with session_scope(state.sessions) as s:
        due = repos.due_models(s, since, MAX_MODELS_PER_PROJECT, MAX_MODELS)
        stale = repos.stale_alarms(s, since)
        for model_id in stale:  # no answer for a day: nothing to judge its alarm by any more
            repos.close_alarm(s, model_id)
    opened = []
    for project_id, model_id in due:
        if not hold():
            log.warning("drift pass: the fleet lease moved to another process; it carries on from here")
            break
        try:
            if check_model(state, project_id, model_id, now):
                opened.append(model_id)
        except Exception:  # one model's failure is not every model's
            log.exception("drift check of model %s failed", model_id)
    if time.monotonic() - _last_cleanup >= CLEANUP_SECONDS:
        with session_scope(state.sessions) as s:
            repos.delete_drift_points_before(s, now - timedelta(days=POINT_DAYS))
        _last_cleanup = time.monotonic()
    return opened


def check_model(state: AppState, project_id: str, model_id: str, now: datetime) -> bool:
    """Score the model's window if new answers came since its last check; open or close its alarm. True when
    this call opened the alarm."""
    with session_scope(state.sessions) as s:
        project = repos.get_project(s, project_id)
        model = repos.get_model(s, model_id, project_id)
        last = repos.get_drift_state(s, project_id, model_id)
        if project is None or model is None:
            return False
        window = repos.answer_window(s, project_id, model_id, now - timedelta(hours=WINDOW_HOURS), project.drift_window)
    newest = window[-1][0] if window else None
    threshold = project.drift_threshold
    if last is not None and last.newest == newest and last.threshold == threshold:
        return False  # nothing new to judge
    reference = REFERENCES.get(state, model)
    shifts: dict[str, Shift] = {}
    bar = None
    if reference is not None and reference.items >= MIN_REFERENCE and len(window) >= MIN_WINDOW:
        bar = threshold + noise_allowance(reference.items, len(window)) if threshold is not None else None
        task = get_task(model.task) if model.task else None
        answers = [
            Answer(pid, u, task.mix_labels(answer) if task else None, inputs) for pid, u, answer, inputs, _ in window
        ]
        shifts = compare(reference, answers)
    scores = {signal: shift.as_dict() for signal, shift in shifts.items()}
    with session_scope(state.sessions) as s:
        repos.save_drift_check(
            s,
            project_id=project_id,
            model_id=model_id,
            name=model.name,
            checked_at=now,
            window_size=len(window),
            newest=newest,
            newest_at=window[-1][4] if window else None,
            scores=scores,
            threshold=threshold,
            reference_items=reference.items if reference is not None else None,
        )
        point = repos.last_drift_point(s, model_id)
        if scores and (point is None or (now - point).total_seconds() >= POINT_SECONDS):
            repos.add_drift_point(s, project_id, model_id, now, {k: round(v.score, 4) for k, v in shifts.items()})
    over = [sh for sh in shifts.values() if bar is not None and sh.score > bar]
    if over and bar is not None and threshold is not None and (last is None or last.alarm is None):
        over.sort(key=lambda shift: -shift.score)
        return raise_alarm(state, project, model, over, threshold, bar, window, now)
    settled = bar is None or all(sh.score < bar * CLOSE_RATIO for sh in shifts.values())
    if last is not None and last.alarm is not None and shifts and settled:
        with session_scope(state.sessions) as s:
            repos.close_alarm(s, model_id)
        log.info("model %s: drift alarm closed (every score below %.2f x the bar)", model_id, CLOSE_RATIO)
    return False


def raise_alarm(
    state: AppState,
    project: domain.Project,
    model: domain.Model,
    over: list[Shift],
    threshold: float,
    bar: float,
    window: list[tuple[str, float, dict[str, Any], list[Any] | None, datetime]],
    now: datetime,
) -> bool:
    """Open the model's alarm, explained, and queue its `model.drift` webhook in the same transaction (once: the
    update opens only an alarm that is not open); then the name's retrain, when its policy asks for one."""
    top = over[0]
    alarm = {
        "signal": top.signal,
        "text": top.text(),
        "score": round(top.score, 4),
        "threshold": threshold,
        "bar": round(bar, 4),
        "moved": top.moved,
        "from": round(top.before, 4),
        "to": round(top.after, 4),
        "since": now.isoformat(),
        "window": {"answers": len(window), "from": window[0][4].isoformat(), "to": window[-1][4].isoformat()},
        "signals": {sh.signal: round(sh.score, 4) for sh in over},
        "examples": top.examples,
        "action": None,
    }
    payload = {"model_id": model.id, "name": model.name} | {k: v for k, v in alarm.items() if k != "action"}
    with session_scope(state.sessions) as s:
        if not repos.open_alarm(s, model.id, alarm, now):
            return False
        repos.emit(s, project.id, "model.drift", payload)
        entry = repos.model_name(s, project.id, model.name) if model.name else None
    log.warning("model %s (%s): drift alarm: %s (PSI %.3f > %.3f)", model.id, model.name, top.text(), top.score, bar)
    if entry is not None and entry.champion_id == model.id and Policy.of(entry.policy).retrain_on_drift:
        retrain = retrain_from_feedback(state, project.id, entry.name, f"drift of '{entry.name}': {top.text()}")
        with session_scope(state.sessions) as s:
            current = repos.get_drift_state(s, project.id, model.id)
            if current is not None and current.alarm is not None:
                repos.set_alarm(s, model.id, current.alarm | {"action": retrain.text()})
        log.info("model %s: drift policy: %s", model.id, retrain.text())
    return True

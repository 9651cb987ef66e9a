"""What a served model's drift looks like now (api/drift.py keeps it): the REST answer, the pages and the CLI."""

from __future__ import annotations

from datetime import timedelta

from api.drift import MIN_WINDOW, REFERENCES, WINDOW_HOURS
from api.errors import Problem
from api.schemas import DriftAlarm, DriftPointPublic, DriftPublic, DriftScore
from api.services import models as model_service
from api.services import registry as registry_service
from api.state import AppState
from core.db import domain, repos
from core.db.models import utcnow
from core.db.session import session_scope
from core.engine.drift import MIN_REFERENCE, noise_allowance

MAX_POINTS = 288  # chart points answered: one per 5 minutes over 24 hours when thinned


def report(state: AppState, project: domain.Project, model_id: str) -> DriftPublic:
    """The model's drift (404 for a model that is not the project's)."""
    model = model_service.find(state, project, model_id)
    with session_scope(state.sessions) as s:
        last = repos.get_drift_state(s, project.id, model.id)
    if last is not None:  # a checked model's reference size is in its state
        return _public(state, project, model.id, model.name, last, last.reference_items)
    reference = REFERENCES.get(state, model)  # a model never checked: its bundle's reference says
    return _public(state, project, model.id, model.name, last, reference.items if reference is not None else None)


def _public(
    state: AppState,
    project: domain.Project,
    model_id: str,
    name: str | None,
    last: domain.DriftState | None,
    items: int | None,
) -> DriftPublic:
    with session_scope(state.sessions) as s:
        since = utcnow() - timedelta(hours=WINDOW_HOURS)
        points = repos.drift_points(s, project.id, model_id, since, MAX_POINTS * 6)  # one a minute at most: 24 h
    watched = items is not None and items >= MIN_REFERENCE
    if items is None:
        why = "it has no drift reference: exported before drift alarms, a text model, or one without validation items"
    else:
        why = f"its validation set gave {items} answers; a reference needs {MIN_REFERENCE}"
    window_size = last.window_size if last else 0
    alarm_at = (
        project.drift_threshold + noise_allowance(items, max(window_size, MIN_WINDOW))
        if watched and items is not None and project.drift_threshold is not None
        else None
    )
    step = max(1, -(-len(points) // MAX_POINTS))
    thinned = points[::step] + ([points[-1]] if points and (len(points) - 1) % step else [])
    return DriftPublic(
        model_id=model_id,
        name=name,
        watched=watched,
        not_watched=None if watched else why,
        reference_items=items,
        threshold=project.drift_threshold,
        alarm_at=alarm_at,
        window_size=window_size,
        newest=last.newest if last else None,
        min_window=MIN_WINDOW,
        checked_at=last.checked_at if last else None,
        scores={k: DriftScore.model_validate(v) for k, v in (last.scores if last else {}).items()},
        alarm=DriftAlarm.model_validate(last.alarm) if last and last.alarm else None,
        alarms=last.alarms if last else 0,
        history=[DriftPointPublic(at=p.at, scores=p.scores) for p in thinned],
    )


def checked(state: AppState, project: domain.Project, models: list[tuple[str, str | None]]) -> dict[str, DriftPublic]:
    """The drift of each of these models (id, name) that was ever checked (a model that never served has none), read
    without their references (each state keeps its reference's size)."""
    with session_scope(state.sessions) as s:
        states = {d.model_id: d for d in repos.drift_states(s, project.id)}
    return {
        i: _public(state, project, i, name, states[i], states[i].reference_items) for i, name in models if i in states
    }


def champion_report(state: AppState, project: domain.Project, name: str) -> DriftPublic:
    """The drift of a registry name's champion (404 when the name has none)."""
    entry = registry_service.find(state, project, name)
    if entry.champion_id is None:
        raise Problem(404, "No champion", f"'{name[:200]}' has no champion yet: nothing of it is served")
    return report(state, project, entry.champion_id)

"""Deleting from the prediction log: one prediction, every prediction before a date, and the project's retention
(input_retention_days) applied by the fleet loop. A deleted prediction takes its kept input, the masks its answer
carries and its feedback (with their masks) along; the rows go first (in one transaction), then the objects, so a
failure never leaves a row pointing at a deleted object."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from api.errors import not_found
from api.schemas import PredictionsDeleted
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope

log = logging.getLogger("fitcycle.predictions")
MAX_DELETE_PER_CALL = 1000  # a bulk delete removes at most this many per call; `more` says to call again


def _delete_objects(state: AppState, project: domain.Project, keys: list[str]) -> None:
    for key in keys:
        state.store.delete(key)
    state.stored.forget(project.id)


def delete_one(state: AppState, project: domain.Project, prediction_id: str) -> None:
    with session_scope(state.sessions) as s:
        if repos.get_prediction(s, project.id, prediction_id) is None:
            raise not_found("prediction", prediction_id)
        keys, _ = repos.delete_predictions(s, project.id, [prediction_id])
    _delete_objects(state, project, keys)


def delete_before(
    state: AppState, project: domain.Project, before: datetime, keep_waiting: bool = False
) -> PredictionsDeleted:
    """Up to MAX_DELETE_PER_CALL predictions made before `before`, oldest first (with keep_waiting, not those
    whose feedback a dataset version has yet to take)."""
    with session_scope(state.sessions) as s:
        ids = repos.predictions_before(s, project.id, before, MAX_DELETE_PER_CALL + 1, keep_waiting)
        more, ids = len(ids) > MAX_DELETE_PER_CALL, ids[:MAX_DELETE_PER_CALL]
        keys, deleted = repos.delete_predictions(s, project.id, ids, keep_waiting)
    _delete_objects(state, project, keys)
    return PredictionsDeleted(deleted=deleted, more=more)


def apply_retention(state: AppState) -> int:
    """For every project with input_retention_days: delete its predictions older than that, except those whose
    feedback still waits for a dataset version (a correction is never lost to retention). At most one batch per
    project per pass; returns how many were deleted."""
    with session_scope(state.sessions) as s:
        projects = [p for p in repos.list_projects(s) if p.input_retention_days]
    deleted = 0
    for project in projects:
        days = project.input_retention_days or 0
        try:
            done = delete_before(state, project, datetime.now(UTC) - timedelta(days=days), keep_waiting=True)
        except Exception:  # one project's store trouble must not stop the others' retention
            log.exception("retention of project %s failed; it is tried again next pass", project.id)
            continue
        if done.deleted:
            log.info(
                "retention of project %s: %d predictions older than %d days deleted", project.id, done.deleted, days
            )
        deleted += done.deleted
    return deleted

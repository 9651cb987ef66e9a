"""Drift: the models that served lately, each one's window of answers, its last check (scores and alarm) and its
scores over time (api/drift.py checks; the pages and /metrics read)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from core.db import domain as d
from core.db.models import DriftPointRow, DriftStateRow, ModelRow, PredictionRow
from core.db.repos._rows import to, utc


def due_models(s: Session, since: datetime, per_project: int, limit: int) -> list[tuple[str, str]]:
    """(project_id, model_id) of the live models with answers since `since` newer than the newest their last drift
    check read (or never checked: a row written a moment after a check, of an answer older than it, still counts),
    the longest unchecked first, at most `per_project` of a project and `limit` in all: a project with
    many busy models waits its turn, never another project's."""
    newest = func.max(PredictionRow.created_at).label("newest")
    served = (
        select(PredictionRow.project_id, PredictionRow.model_id, newest)
        .where(PredictionRow.created_at >= since)
        .group_by(PredictionRow.project_id, PredictionRow.model_id)
        .subquery()
    )
    query = (
        select(served.c.project_id, served.c.model_id)
        .join(ModelRow, ModelRow.id == served.c.model_id)
        .outerjoin(DriftStateRow, DriftStateRow.model_id == served.c.model_id)
        .where(or_(DriftStateRow.newest_at.is_(None), served.c.newest > DriftStateRow.newest_at))
        .order_by(DriftStateRow.checked_at.is_not(None), DriftStateRow.checked_at, served.c.model_id)
        .limit(limit * 4)
    )
    taken: Counter[str] = Counter()
    due: list[tuple[str, str]] = []
    for project_id, model_id in s.execute(query):
        if taken[project_id] < per_project and len(due) < limit:
            taken[project_id] += 1
            due.append((project_id, model_id))
    return due


def answer_window(
    s: Session, project_id: str, model_id: str, since: datetime, limit: int
) -> list[tuple[str, float, dict[str, Any], list[Any] | None, datetime]]:
    """The model's latest `limit` answers since `since`, oldest first: (id, uncertainty, answer, inputs, at). Of
    each answer only what a class mix reads is selected (`top`, `labels`: core.engine.tasks' mix_labels), not every
    class's probability."""
    query = (
        select(
            PredictionRow.id,
            PredictionRow.uncertainty,
            PredictionRow.answer["top"],
            PredictionRow.answer["labels"],
            PredictionRow.inputs,
            PredictionRow.created_at,
        )
        .where(
            PredictionRow.project_id == project_id,
            PredictionRow.model_id == model_id,
            PredictionRow.created_at >= since,
        )
        .order_by(PredictionRow.created_at.desc(), PredictionRow.id.desc())
        .limit(limit)
    )
    rows = reversed(list(s.execute(query)))
    return [
        (i, float(u), {k: v for k, v in (("top", top), ("labels", labels)) if v is not None}, x, utc(at))
        for i, u, top, labels, x, at in rows
    ]


def stale_alarms(s: Session, before: datetime) -> list[str]:
    """Models with an alarm open whose last check (their last answers) is older than `before`."""
    query = select(DriftStateRow.model_id).where(DriftStateRow.alarm.is_not(None), DriftStateRow.checked_at < before)
    return list(s.scalars(query))


def get_drift_state(s: Session, project_id: str, model_id: str) -> d.DriftState | None:
    row = s.get(DriftStateRow, model_id)
    return to(d.DriftState, row) if row is not None and row.project_id == project_id else None


def drift_states(
    s: Session, project_id: str | None = None, limit: int = 1000, since: datetime | None = None
) -> list[d.DriftState]:
    """The models' last checks (of one project, or every project's; since `since`), most recently checked first."""
    query = select(DriftStateRow).order_by(DriftStateRow.checked_at.desc()).limit(limit)
    if since is not None:
        query = query.where(DriftStateRow.checked_at >= since)
    if project_id is not None:
        query = query.where(DriftStateRow.project_id == project_id)
    return [to(d.DriftState, r) for r in s.scalars(query)]


def save_drift_check(
    s: Session,
    *,
    project_id: str,
    model_id: str,
    name: str | None,
    checked_at: datetime,
    window_size: int,
    newest: str | None,
    newest_at: datetime | None,
    scores: dict[str, Any],
    threshold: float | None,
    reference_items: int | None,
) -> None:
    """Record a check's scores (the alarm is changed only by open_alarm and close_alarm)."""
    row = s.get(DriftStateRow, model_id, with_for_update=True)
    if row is None:
        if s.get(ModelRow, model_id) is None:  # deleted meanwhile
            return
        row = DriftStateRow(model_id=model_id, project_id=project_id, alarms=0)
        s.add(row)
    row.name, row.checked_at, row.window_size = name, checked_at, window_size
    row.newest, row.newest_at = newest, newest_at
    row.scores, row.threshold, row.reference_items = scores, threshold, reference_items
    s.flush()


def open_alarm(s: Session, model_id: str, alarm: dict[str, Any], since: datetime) -> bool:
    """Open the model's alarm unless one is open: True for the one call that opened it (its webhook is sent once)."""
    opened = s.execute(
        update(DriftStateRow)
        .where(DriftStateRow.model_id == model_id, DriftStateRow.alarm.is_(None))
        .values(alarm=alarm, alarm_since=since, alarms=DriftStateRow.alarms + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(opened, "rowcount", 0))


def set_alarm(s: Session, model_id: str, alarm: dict[str, Any]) -> None:
    """Rewrite an open alarm's explanation (what its policy did about it)."""
    s.execute(
        update(DriftStateRow)
        .where(DriftStateRow.model_id == model_id, DriftStateRow.alarm.is_not(None))
        .values(alarm=alarm)
        .execution_options(synchronize_session=False)
    )


def close_alarm(s: Session, model_id: str) -> None:
    s.execute(
        update(DriftStateRow)
        .where(DriftStateRow.model_id == model_id)
        .values(alarm=None, alarm_since=None)
        .execution_options(synchronize_session=False)
    )


def add_drift_point(s: Session, project_id: str, model_id: str, at: datetime, scores: dict[str, float]) -> None:
    if s.get(ModelRow, model_id) is not None:  # not a model deleted meanwhile
        s.add(DriftPointRow(project_id=project_id, model_id=model_id, at=at, scores=scores))


def last_drift_point(s: Session, model_id: str) -> datetime | None:
    at = s.scalar(select(func.max(DriftPointRow.at)).where(DriftPointRow.model_id == model_id))
    return utc(at) if at is not None else None


def drift_points(s: Session, project_id: str, model_id: str, since: datetime, limit: int) -> list[d.DriftPoint]:
    """The model's scores since `since`, oldest first (the latest `limit`)."""
    query = (
        select(DriftPointRow.at, DriftPointRow.scores)
        .where(DriftPointRow.project_id == project_id, DriftPointRow.model_id == model_id, DriftPointRow.at >= since)
        .order_by(DriftPointRow.at.desc())
        .limit(limit)
    )
    return [d.DriftPoint(utc(at), dict(scores or {})) for at, scores in reversed(list(s.execute(query)))]


def delete_drift_points_before(s: Session, before: datetime) -> int:
    done = s.execute(delete(DriftPointRow).where(DriftPointRow.at < before))
    return int(getattr(done, "rowcount", 0) or 0)

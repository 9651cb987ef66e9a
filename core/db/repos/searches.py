"""Hyperparameter searches: their rows, their trials (jobs with search_id), and the lock that makes one API process
at a time advance a search (api/services/searches.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.db import domain as d
from core.db.models import EpochMetricRow, JobRow, SearchRow, utcnow
from core.db.repos._rows import new_id, to


def create_search(s: Session, **fields: Any) -> d.Search:
    """A new running search."""
    row = SearchRow(id=new_id(), state="running", result={}, **fields)
    s.add(row)
    s.flush()
    return to(d.Search, row)


def get_search(s: Session, search_id: str, project_id: str | None = None) -> d.Search | None:
    row = s.get(SearchRow, search_id)
    if row is None or (project_id is not None and row.project_id != project_id):
        return None
    return to(d.Search, row)


def lock_search(s: Session, search_id: str) -> d.Search | None:
    """The search, its row locked until the session ends (PostgreSQL; SQLite has one writer at a time anyway)."""
    row = s.scalar(select(SearchRow).where(SearchRow.id == search_id).with_for_update())
    return to(d.Search, row) if row is not None else None


def list_searches(s: Session, project_id: str, limit: int = 100, offset: int = 0) -> tuple[list[d.Search], int]:
    where = SearchRow.project_id == project_id
    rows = s.scalars(select(SearchRow).where(where).order_by(SearchRow.created_at.desc()).limit(limit).offset(offset))
    count = s.scalar(select(func.count()).select_from(SearchRow).where(where)) or 0
    return [to(d.Search, r) for r in rows], count


def count_running_searches(s: Session, project_id: str) -> int:
    where = (SearchRow.project_id == project_id) & (SearchRow.state == "running")
    return s.scalar(select(func.count()).select_from(SearchRow).where(where)) or 0


def running_searches(s: Session) -> list[str]:
    """The ids of every search still running, oldest first."""
    return list(s.scalars(select(SearchRow.id).where(SearchRow.state == "running").order_by(SearchRow.created_at)))


def end_search(s: Session, search_id: str, state: str, **values: Any) -> bool:
    """running -> `state` (succeeded | failed | cancelled) with `values`, once: False when it had already ended."""
    res = s.execute(
        update(SearchRow)
        .where(SearchRow.id == search_id, SearchRow.state == "running")
        .values(state=state, finished_at=utcnow(), **values)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def set_running_search(s: Session, search_id: str, **values: Any) -> bool:
    """Record `values` (its lr_find or adopt job, its lr range) on a search still running; False when it ended."""
    res = s.execute(update(SearchRow).where(SearchRow.id == search_id, SearchRow.state == "running").values(**values))
    return res.rowcount == 1  # type: ignore[attr-defined]


def trials_of(s: Session, search_id: str) -> list[d.Job]:
    """A search's trial jobs, by trial number."""
    rows = s.scalars(select(JobRow).where(JobRow.search_id == search_id).order_by(JobRow.trial_number))
    return [to(d.Job, r) for r in rows]


def epochs_of_jobs(s: Session, job_ids: list[str]) -> dict[str, int]:
    """How many epochs each job has recorded."""
    if not job_ids:
        return {}
    rows = s.execute(
        select(EpochMetricRow.job_id, func.count())
        .where(EpochMetricRow.job_id.in_(job_ids))
        .group_by(EpochMetricRow.job_id)
    )
    return {job_id: int(n) for job_id, n in rows}


def epoch_values(s: Session, job_ids: list[str], metric: str) -> dict[str, list[tuple[float, float | None]]]:
    """Each job's epochs as (when recorded, in seconds since the epoch, the metric's value)."""
    if not job_ids:
        return {}
    out: dict[str, list[tuple[float, float | None]]] = {j: [] for j in job_ids}
    rows = s.execute(
        select(EpochMetricRow.job_id, EpochMetricRow.created_at, EpochMetricRow.metrics, EpochMetricRow.valid_loss)
        .where(EpochMetricRow.job_id.in_(job_ids))
        .order_by(EpochMetricRow.id)
    )
    for job_id, created, metrics, valid_loss in rows:
        value = valid_loss if metric == "valid_loss" else (metrics or {}).get(metric)
        out[job_id].append((created.timestamp(), float(value) if isinstance(value, int | float) else None))
    return out

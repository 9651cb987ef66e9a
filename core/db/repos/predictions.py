"""Predictions and feedback: every answered image is kept (the active-learning queue), and a person's feedback
corrects or confirms one until a new dataset version takes it in."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import domain as d
from core.db.models import FeedbackRow, PredictionRow
from core.db.repos._rows import new_id, to

Q = TypeVar("Q", bound=Select[*tuple[Any, ...]])  # a query of feedback joined to its prediction


# ----- predictions -------------------------------------------------------------------------------------
def record_predictions(s: Session, predictions: list[d.PredictionRecord]) -> None:
    """Answered images and texts, in order (one INSERT for them all: the prediction log's writer sends a batch at
    a time, and skips the ORM's flush)."""
    if predictions:
        s.execute(insert(PredictionRow), [asdict(p) for p in predictions])


def prediction_exists(s: Session, project_id: str, prediction_id: str) -> bool:
    """Whether the project's prediction's row is written."""
    query = select(PredictionRow.id).where(PredictionRow.id == prediction_id, PredictionRow.project_id == project_id)
    return s.scalar(query) is not None


def get_prediction(s: Session, project_id: str, prediction_id: str) -> d.PredictionRecord | None:
    row = s.get(PredictionRow, prediction_id)
    return to(d.PredictionRecord, row) if row and row.project_id == project_id else None


def _predictions_where(project_id: str, name: str | None, model_id: str | None, unlabelled: bool) -> list[Any]:
    where: list[Any] = [PredictionRow.project_id == project_id]
    if name is not None:
        where.append(PredictionRow.name == name)
    if model_id is not None:
        where.append(PredictionRow.model_id == model_id)
    if unlabelled:
        where.append(~select(FeedbackRow.id).where(FeedbackRow.prediction_id == PredictionRow.id).exists())
    return where


def list_predictions(
    s: Session,
    project_id: str,
    name: str | None,
    model_id: str | None,
    order: str,
    limit: int,
    unlabelled: bool,
    offset: int = 0,
) -> list[d.PredictionRecord]:
    q = select(PredictionRow).where(*_predictions_where(project_id, name, model_id, unlabelled))
    if order == "uncertainty":
        q = q.order_by(PredictionRow.uncertainty.desc(), PredictionRow.created_at.desc(), PredictionRow.id)
    else:
        q = q.order_by(PredictionRow.created_at.desc(), PredictionRow.id)
    return [to(d.PredictionRecord, r) for r in s.scalars(q.offset(offset).limit(limit))]


def count_predictions(s: Session, project_id: str, name: str | None, model_id: str | None, unlabelled: bool) -> int:
    q = select(func.count(PredictionRow.id)).where(*_predictions_where(project_id, name, model_id, unlabelled))
    return int(s.scalar(q) or 0)


def _stored_keys(s: Session, project_id: str, ids: list[str]) -> dict[str, list[str]]:
    """Each prediction's objects (kept input, answer masks) and its feedback's (masks), by prediction id."""
    mine = f"projects/{project_id}/"
    keys: dict[str, list[str]] = {}
    for row in s.scalars(
        select(PredictionRow).where(PredictionRow.project_id == project_id, PredictionRow.id.in_(ids))
    ):
        keys[row.id] = ([row.input_key] if row.input_key else []) + [
            v for v in row.answer.values() if isinstance(v, str) and v.startswith(mine)
        ]
    for f in s.scalars(select(FeedbackRow).where(FeedbackRow.prediction_id.in_(list(keys)))):
        keys[f.prediction_id] += [v for v in f.target.values() if isinstance(v, str) and v.startswith(mine)]
    return keys


def _waiting_feedback() -> Any:
    """Feedback on the prediction that no dataset version has taken yet."""
    return select(FeedbackRow.id).where(FeedbackRow.prediction_id == PredictionRow.id, FeedbackRow.used_in.is_(None))


def delete_predictions(
    s: Session, project_id: str, ids: list[str], keep_waiting: bool = False
) -> tuple[list[str], int]:
    """Delete these predictions of the project and their feedback (with keep_waiting, not one whose feedback waits
    for a dataset version, checked in the DELETE itself: a correction sent meanwhile keeps its prediction);
    returns the object keys the deleted ones kept (the caller deletes them once this commits) and how many."""
    keys = _stored_keys(s, project_id, ids)
    where = [PredictionRow.project_id == project_id, PredictionRow.id.in_(ids)]
    if keep_waiting:
        where.append(~_waiting_feedback().exists())
    deleted = list(s.scalars(delete(PredictionRow).where(*where).returning(PredictionRow.id)))
    s.execute(delete(FeedbackRow).where(FeedbackRow.project_id == project_id, FeedbackRow.prediction_id.in_(deleted)))
    return [key for prediction_id in deleted for key in keys.get(prediction_id, [])], len(deleted)


def predictions_before(s: Session, project_id: str, before: datetime, limit: int, keep_waiting: bool) -> list[str]:
    """Ids of up to `limit` of the project's predictions made before `before`, oldest first; with keep_waiting,
    not those whose feedback waits for a dataset version (retention never drops a correction unused)."""
    q = select(PredictionRow.id).where(PredictionRow.project_id == project_id, PredictionRow.created_at < before)
    if keep_waiting:
        q = q.where(~_waiting_feedback().exists())
    return list(s.scalars(q.order_by(PredictionRow.created_at).limit(limit)))


# ----- feedback ----------------------------------------------------------------------------------------
def add_feedback(
    s: Session,
    *,
    project_id: str,
    prediction_id: str,
    target: dict[str, Any],
    key_id: str,
    idempotency_key: str | None = None,
    id: str | None = None,
    stored_bytes: int = 0,
) -> tuple[d.Feedback, bool]:
    """Store feedback; with an idempotency key already used in the project, the stored one (and False)."""

    def stored() -> FeedbackRow | None:
        if idempotency_key is None:
            return None
        return s.scalar(
            select(FeedbackRow).where(
                FeedbackRow.project_id == project_id, FeedbackRow.idempotency_key == idempotency_key
            )
        )

    if (found := stored()) is not None:
        return to(d.Feedback, found), False
    row = FeedbackRow(
        id=id or new_id(),
        project_id=project_id,
        prediction_id=prediction_id,
        target=target,
        key_id=key_id,
        idempotency_key=idempotency_key,
        stored_bytes=stored_bytes,
    )
    try:
        with s.begin_nested():  # a savepoint: the same key sent twice at once stores one
            s.add(row)
            s.flush()
    except IntegrityError:
        if (found := stored()) is None:
            raise
        return to(d.Feedback, found), False
    return to(d.Feedback, row), True


def _feedback_where(q: Q, project_id: str, name: str | None, unused: bool, prediction_ids: list[str] | None) -> Q:
    """The filters of a feedback listing (q already joins each feedback row to its prediction)."""
    q = q.where(FeedbackRow.project_id == project_id)
    if name is not None:
        q = q.where(PredictionRow.name == name)
    if unused:
        q = q.where(FeedbackRow.used_in.is_(None))
    if prediction_ids is not None:
        q = q.where(FeedbackRow.prediction_id.in_(prediction_ids))
    return q


def list_feedback(
    s: Session,
    project_id: str,
    name: str | None = None,
    unused: bool = False,
    prediction_ids: list[str] | None = None,
    *,
    limit: int | None = None,
    offset: int = 0,
) -> list[tuple[d.Feedback, d.PredictionRecord]]:
    """Feedback with its prediction, oldest first (ties by id, so pages never overlap); a page of it with
    `limit`/`offset`, all of it without (a version cut takes every unused one)."""
    q = select(FeedbackRow, PredictionRow).join(PredictionRow, FeedbackRow.prediction_id == PredictionRow.id)
    q = _feedback_where(q, project_id, name, unused, prediction_ids).order_by(FeedbackRow.created_at, FeedbackRow.id)
    if limit is not None:
        q = q.limit(limit)
    if offset:
        q = q.offset(offset)
    return [(to(d.Feedback, f), to(d.PredictionRecord, p)) for f, p in s.execute(q)]


def count_feedback(s: Session, project_id: str, name: str | None = None, unused: bool = False) -> int:
    """How many feedback rows list_feedback would list, counted in SQL."""
    q = select(func.count(FeedbackRow.id)).join(PredictionRow, FeedbackRow.prediction_id == PredictionRow.id)
    return int(s.scalar(_feedback_where(q, project_id, name, unused, None)) or 0)


def get_feedback(s: Session, project_id: str, feedback_id: str) -> d.Feedback | None:
    row = s.get(FeedbackRow, feedback_id)
    return to(d.Feedback, row) if row is not None and row.project_id == project_id else None


def delete_unused_feedback(s: Session, project_id: str, feedback_id: str) -> bool:
    """Delete feedback not yet taken into a dataset version (a cut that takes it at once wins: False)."""
    done = s.execute(
        delete(FeedbackRow).where(
            FeedbackRow.id == feedback_id, FeedbackRow.project_id == project_id, FeedbackRow.used_in.is_(None)
        )
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def mark_feedback_used(s: Session, feedback_ids: list[str], version_id: str) -> None:
    if feedback_ids:
        s.execute(update(FeedbackRow).where(FeedbackRow.id.in_(feedback_ids)).values(used_in=version_id))


def count_unused_feedback(s: Session, project_id: str, name: str) -> int:
    return count_feedback(s, project_id, name=name, unused=True)

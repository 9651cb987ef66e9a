"""Predictions and feedback: every answered image is kept (the active-learning queue), and a person's feedback
corrects or confirms one until a new dataset version takes it in."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import domain as d
from core.db.models import FeedbackRow, PredictionRow
from core.db.repos._rows import new_id, to


# ----- predictions -------------------------------------------------------------------------------------
def record_prediction(
    s: Session,
    *,
    id: str,
    project_id: str,
    model_id: str,
    name: str | None,
    source: str,
    answer: dict[str, Any],
    filename: str = "",
    input_key: str | None = None,
    uncertainty: float = 0.0,
) -> None:
    """One answered image (a plain INSERT: the predict path writes one per request, and skips the ORM's flush)."""
    s.execute(
        insert(PredictionRow).values(
            id=id,
            project_id=project_id,
            model_id=model_id,
            name=name,
            source=source,
            filename=filename,
            input_key=input_key,
            answer=answer,
            uncertainty=uncertainty,
        )
    )


def get_prediction(s: Session, project_id: str, prediction_id: str) -> d.PredictionRecord | None:
    row = s.get(PredictionRow, prediction_id)
    return to(d.PredictionRecord, row) if row and row.project_id == project_id else None


def list_predictions(
    s: Session, project_id: str, name: str | None, model_id: str | None, order: str, limit: int, unlabelled: bool
) -> list[d.PredictionRecord]:
    q = select(PredictionRow).where(PredictionRow.project_id == project_id)
    if name is not None:
        q = q.where(PredictionRow.name == name)
    if model_id is not None:
        q = q.where(PredictionRow.model_id == model_id)
    if unlabelled:
        q = q.where(~select(FeedbackRow.id).where(FeedbackRow.prediction_id == PredictionRow.id).exists())
    if order == "uncertainty":
        q = q.order_by(PredictionRow.uncertainty.desc(), PredictionRow.created_at.desc())
    else:
        q = q.order_by(PredictionRow.created_at.desc())
    return [to(d.PredictionRecord, r) for r in s.scalars(q.limit(limit))]


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


def list_feedback(
    s: Session, project_id: str, name: str | None = None, unused: bool = False, prediction_ids: list[str] | None = None
) -> list[tuple[d.Feedback, d.PredictionRecord]]:
    """Feedback with its prediction, oldest first."""
    q = (
        select(FeedbackRow, PredictionRow)
        .join(PredictionRow, FeedbackRow.prediction_id == PredictionRow.id)
        .where(FeedbackRow.project_id == project_id)
    )
    if name is not None:
        q = q.where(PredictionRow.name == name)
    if unused:
        q = q.where(FeedbackRow.used_in.is_(None))
    if prediction_ids is not None:
        q = q.where(FeedbackRow.prediction_id.in_(prediction_ids))
    rows = s.execute(q.order_by(FeedbackRow.created_at))
    return [(to(d.Feedback, f), to(d.PredictionRecord, p)) for f, p in rows]


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
    q = (
        select(func.count(FeedbackRow.id))
        .join(PredictionRow, FeedbackRow.prediction_id == PredictionRow.id)
        .where(FeedbackRow.project_id == project_id, PredictionRow.name == name, FeedbackRow.used_in.is_(None))
    )
    return int(s.scalar(q) or 0)

"""Trained models and the registry: a model gets a version under a name; each name has a champion that serves
it, maybe a challenger waiting for its decision, a retrain policy, and the record of every decision."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.db import domain as d
from core.db.models import DecisionRow, DriftPointRow, DriftStateRow, JobRow, ModelNameRow, ModelRow
from core.db.repos._rows import insert_for, new_id, to


# ----- models ------------------------------------------------------------------------------------------
def create_model(
    s: Session,
    *,
    project_id: str,
    job_id: str,
    arch: str,
    classes: list[str],
    metrics: dict[str, Any],
    bundle_prefix: str,
    dataset_version_id: str | None = None,
) -> d.Model:
    """The model a job made (one per job: asked again, the one already stored)."""
    existing = s.scalar(select(ModelRow).where(ModelRow.job_id == job_id))
    if existing is not None:
        return to(d.Model, existing)
    row = ModelRow(
        id=new_id(),
        project_id=project_id,
        job_id=job_id,
        arch=arch,
        classes=classes,
        metrics=metrics,
        bundle_prefix=bundle_prefix,
        dataset_version_id=dataset_version_id,
    )
    s.add(row)
    s.flush()
    return to(d.Model, row)


def get_model(s: Session, model_id: str, project_id: str | None = None) -> d.Model | None:
    row = s.get(ModelRow, model_id)
    if row is None or (project_id is not None and row.project_id != project_id):
        return None
    return to(d.Model, row)


def list_models(s: Session, project_id: str, offset: int = 0, limit: int | None = None) -> list[d.Model]:
    """The project's models, oldest first (a page of them with offset and limit)."""
    q = select(ModelRow).where(ModelRow.project_id == project_id).order_by(ModelRow.created_at, ModelRow.id)
    rows = s.scalars(q.offset(offset).limit(limit))
    return [to(d.Model, r) for r in rows]


def count_models(s: Session, project_id: str) -> int:
    return int(s.scalar(select(func.count(ModelRow.id)).where(ModelRow.project_id == project_id)) or 0)


def delete_model(s: Session, model_id: str) -> None:
    """The model row; its job keeps its record (model_id cleared)."""
    row = s.get(ModelRow, model_id)
    if row is None:
        return
    s.execute(update(JobRow).where(JobRow.model_id == model_id).values(model_id=None))
    s.execute(update(ModelNameRow).where(ModelNameRow.challenger_id == model_id).values(challenger_id=None))
    s.execute(delete(DriftPointRow).where(DriftPointRow.model_id == model_id))
    s.execute(delete(DriftStateRow).where(DriftStateRow.model_id == model_id))
    s.execute(delete(ModelRow).where(ModelRow.id == model_id))


# ----- names: versions, champion and challenger ----------------------------------------------------------
def model_name(s: Session, project_id: str, name: str, lock: bool = False) -> d.ModelName | None:
    q = select(ModelNameRow).where(ModelNameRow.project_id == project_id, ModelNameRow.name == name)
    row = s.scalar(q.with_for_update() if lock else q)
    return to(d.ModelName, row) if row else None


def list_model_names(s: Session, project_id: str) -> list[d.ModelName]:
    rows = s.scalars(select(ModelNameRow).where(ModelNameRow.project_id == project_id).order_by(ModelNameRow.name))
    return [to(d.ModelName, r) for r in rows]


def register_model(s: Session, model_id: str, name: str, as_challenger: bool) -> d.Model:
    """Give a model the next version of `name` (made on first use). The first model of a name becomes its
    champion; a later one becomes the challenger when `as_challenger` (a retrain), else just a version."""
    row = s.get(ModelRow, model_id)
    assert row is not None, model_id
    # Made if missing without a race: two jobs finishing at once under a new name both insert; one wins, the
    # other's insert does nothing, and both then wait on the one row's lock.
    s.execute(
        insert_for(s)(ModelNameRow)
        .values(id=new_id(), project_id=row.project_id, name=name, policy={})
        .on_conflict_do_nothing(index_elements=["project_id", "name"])
    )
    entry = s.scalar(
        select(ModelNameRow)
        .where(ModelNameRow.project_id == row.project_id, ModelNameRow.name == name)
        .with_for_update()
    )
    assert entry is not None
    if row.name != name or row.version is None:
        top = s.scalar(
            select(func.max(ModelRow.version)).where(ModelRow.project_id == row.project_id, ModelRow.name == name)
        )
        row.name, row.version = name, int(top or 0) + 1
    if entry.champion_id is None:
        entry.champion_id = row.id
    elif as_challenger and entry.champion_id != row.id:
        entry.challenger_id = row.id
    s.flush()
    return to(d.Model, row)


def versions_per_name(s: Session, project_id: str) -> dict[str, int]:
    """How many models each registry name of a project has (one query)."""
    rows = s.execute(
        select(ModelRow.name, func.count())
        .where(ModelRow.project_id == project_id, ModelRow.name.is_not(None))
        .group_by(ModelRow.name)
    )
    return {str(name): int(n) for name, n in rows}


def models_of_name(s: Session, project_id: str, name: str) -> list[d.Model]:
    rows = s.scalars(
        select(ModelRow).where(ModelRow.project_id == project_id, ModelRow.name == name).order_by(ModelRow.version)
    )
    return [to(d.Model, r) for r in rows]


def delete_model_name(s: Session, entry_id: str) -> None:
    s.execute(delete(ModelNameRow).where(ModelNameRow.id == entry_id))


# ----- policies ----------------------------------------------------------------------------------------
def set_policy(s: Session, project_id: str, name: str, policy: dict[str, Any]) -> d.ModelName | None:
    entry = s.scalar(select(ModelNameRow).where(ModelNameRow.project_id == project_id, ModelNameRow.name == name))
    if entry is None:
        return None
    entry.policy = policy
    s.flush()
    return to(d.ModelName, entry)


def policy_names(s: Session) -> list[d.ModelName]:
    """Every registry name, of every project, whose policy was set (an unset policy retrains nothing)."""
    rows = s.scalars(select(ModelNameRow).order_by(ModelNameRow.created_at))
    return [to(d.ModelName, r) for r in rows if (r.policy or {}).get("min_feedback")]


# ----- decisions ---------------------------------------------------------------------------------------
class Verdict(TypedDict):
    """What `set_champion` records besides the two models: the decision's own fields."""

    action: str
    scores: dict[str, Any]
    reason: str
    actor: str
    job_id: NotRequired[str]


def set_champion(s: Session, project_id: str, name: str, model_id: str, decision: Verdict) -> d.Decision:
    """Make model_id the champion of name (the old one is recorded in the decision) and record it."""
    entry = s.scalar(
        select(ModelNameRow).where(ModelNameRow.project_id == project_id, ModelNameRow.name == name).with_for_update()
    )
    assert entry is not None, name
    previous = entry.champion_id
    entry.champion_id = model_id
    if entry.challenger_id == model_id:
        entry.challenger_id = None
    return record_decision(s, project_id, name, model_id=model_id, champion_id=previous, **decision)


def first_champion_decision(s: Session, project_id: str, name: str, model_id: str, job_id: str) -> d.Decision:
    """Record that a name's first model became its champion (there was nothing to weigh it against)."""
    return record_decision(
        s,
        project_id,
        name,
        action="promoted",
        model_id=model_id,
        champion_id=None,
        scores={},
        reason="the first model of the name: it has no champion to be judged against",
        actor="gate",
        job_id=job_id,
    )


def record_decision(
    s: Session,
    project_id: str,
    name: str,
    *,
    action: str,
    model_id: str,
    champion_id: str | None = None,
    scores: dict[str, Any] | None = None,
    reason: str = "",
    actor: str = "",
    job_id: str | None = None,
) -> d.Decision:
    """One change (or refusal to change) of a name's champion: `model_id` weighed against `champion_id`."""
    row = DecisionRow(
        id=new_id(),
        project_id=project_id,
        name=name,
        action=action,
        model_id=model_id,
        champion_id=champion_id,
        scores={} if scores is None else scores,
        reason=reason,
        actor=actor,
        job_id=job_id,
    )
    s.add(row)
    s.flush()
    return to(d.Decision, row)


def decisions(s: Session, project_id: str, name: str, offset: int = 0, limit: int | None = None) -> list[d.Decision]:
    """A name's decisions, oldest first (a page of them with offset and limit)."""
    where = (DecisionRow.project_id == project_id, DecisionRow.name == name)
    rows = s.scalars(
        select(DecisionRow).where(*where).order_by(DecisionRow.created_at, DecisionRow.id).offset(offset).limit(limit)
    )
    return [to(d.Decision, r) for r in rows]


def count_decisions(s: Session, project_id: str, name: str) -> int:
    where = (DecisionRow.project_id == project_id, DecisionRow.name == name)
    return int(s.scalar(select(func.count(DecisionRow.id)).where(*where)) or 0)

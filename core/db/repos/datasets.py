"""Datasets and their versions: a version is an immutable cut of the files (under its store prefix) with the
labelling rule, split and counts it was made with; a version cut from another says which, why and what changed."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.db import domain as d
from core.db.models import DatasetRow, DatasetVersionRow
from core.db.repos._rows import to


def create_dataset(s: Session, dataset_id: str, project_id: str, name: str) -> d.Dataset:
    row = DatasetRow(id=dataset_id, project_id=project_id, name=name)
    s.add(row)
    s.flush()
    return to(d.Dataset, row)


def get_dataset(s: Session, project_id: str, dataset_id: str) -> d.Dataset | None:
    row = s.get(DatasetRow, dataset_id)
    return to(d.Dataset, row) if row and row.project_id == project_id else None


def list_datasets(s: Session, project_id: str) -> list[d.Dataset]:
    rows = s.scalars(select(DatasetRow).where(DatasetRow.project_id == project_id).order_by(DatasetRow.created_at))
    return [to(d.Dataset, r) for r in rows]


def lock_dataset(s: Session, dataset_id: str) -> None:
    """Hold the dataset's row until the transaction ends: one version cut at a time (PostgreSQL)."""
    s.execute(select(DatasetRow.id).where(DatasetRow.id == dataset_id).with_for_update())


def next_version_number(s: Session, dataset_id: str) -> int:
    current = s.scalar(select(func.max(DatasetVersionRow.version)).where(DatasetVersionRow.dataset_id == dataset_id))
    return (current or 0) + 1


def add_dataset_version(
    s: Session,
    *,
    id: str,
    dataset_id: str,
    version: int,
    labels: dict[str, Any],
    split: str,
    classes: list[str],
    counts: dict[str, dict[str, int]],
    n_items: int,
    rejected: list[dict[str, str]],
    prefix: str,
    n_bytes: int = 0,
    parent_version: int | None = None,
    note: str = "",
    changes: dict[str, Any] | None = None,
) -> d.DatasetVersion:
    """Store a version (the caller has written its files under `prefix` and picked `version`, the next number)."""
    row = DatasetVersionRow(
        id=id,
        dataset_id=dataset_id,
        version=version,
        labels=labels,
        split=split,
        classes=classes,
        counts=counts,
        n_items=n_items,
        rejected=rejected,
        prefix=prefix,
        n_bytes=n_bytes,
        parent_version=parent_version,
        note=note,
        changes={} if changes is None else changes,
    )
    s.add(row)
    s.flush()
    return to(d.DatasetVersion, row)


def get_version(s: Session, version_id: str) -> d.DatasetVersion | None:
    row = s.get(DatasetVersionRow, version_id)
    return to(d.DatasetVersion, row) if row else None


def dataset_versions(s: Session, dataset_id: str) -> list[d.DatasetVersion]:
    rows = s.scalars(
        select(DatasetVersionRow).where(DatasetVersionRow.dataset_id == dataset_id).order_by(DatasetVersionRow.version)
    )
    return [to(d.DatasetVersion, r) for r in rows]


def project_versions(s: Session, project_id: str) -> dict[str, list[d.DatasetVersion]]:
    """Every version of every dataset of a project, by dataset id, oldest first (one query)."""
    rows = s.scalars(
        select(DatasetVersionRow)
        .join(DatasetRow, DatasetRow.id == DatasetVersionRow.dataset_id)
        .where(DatasetRow.project_id == project_id)
        .order_by(DatasetVersionRow.dataset_id, DatasetVersionRow.version)
    )
    out: dict[str, list[d.DatasetVersion]] = {}
    for r in rows:
        out.setdefault(r.dataset_id, []).append(to(d.DatasetVersion, r))
    return out


def delete_dataset_version(s: Session, version_id: str) -> None:
    s.execute(delete(DatasetVersionRow).where(DatasetVersionRow.id == version_id))


def delete_dataset(s: Session, dataset_id: str) -> None:
    s.execute(delete(DatasetVersionRow).where(DatasetVersionRow.dataset_id == dataset_id))
    s.execute(delete(DatasetRow).where(DatasetRow.id == dataset_id))

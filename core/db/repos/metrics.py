"""What a running job records: its epoch and batch metrics and its artifacts (files in the object store), and
the bytes those take. Every write is idempotent: a resumed job re-reporting an epoch or re-writing a file
replaces the row."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.db import domain as d
from core.db.models import (
    ArtifactRow,
    BatchMetricRow,
    DatasetRow,
    DatasetVersionRow,
    EpochMetricRow,
    FeedbackRow,
    JobRow,
    PredictionRow,
    utcnow,
)
from core.db.repos._rows import new_id, to, upsert


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


# ----- metrics -----------------------------------------------------------------------------------------
def record_epoch(s: Session, job_id: str, row: dict[str, Any]) -> None:
    base = {"epoch", "tag", "train_loss", "valid_loss", "seconds"}
    upsert(
        s,
        EpochMetricRow,
        {
            "job_id": job_id,
            "tag": row.get("tag") or "",
            "epoch": int(row["epoch"]),
            "train_loss": _finite(row.get("train_loss")),
            "valid_loss": _finite(row.get("valid_loss")),
            "metrics": {k: _finite(v) for k, v in row.items() if k not in base},
            "seconds": float(row.get("seconds", 0.0)),
            "created_at": utcnow(),
        },
        ["job_id", "tag", "epoch"],
    )


def record_batch(s: Session, job_id: str, row: dict[str, Any]) -> None:
    upsert(
        s,
        BatchMetricRow,
        {
            "job_id": job_id,
            "tag": row.get("tag") or "",
            "iter": int(row["iter"]),
            "epoch": int(row["epoch"]),
            "batch": int(row["batch"]),
            "loss": _finite(row["loss"]) or 0.0,
            "smooth_loss": _finite(row["smooth_loss"]) or 0.0,
            "lr": float(row["lr"]),
            "mom": float(row["mom"]),
        },
        ["job_id", "tag", "iter"],
    )


def epoch_metrics(s: Session, job_id: str) -> list[d.EpochMetric]:
    rows = s.scalars(select(EpochMetricRow).where(EpochMetricRow.job_id == job_id).order_by(EpochMetricRow.id))
    return [to(d.EpochMetric, r) for r in rows]


def batch_metrics(s: Session, job_id: str, after_id: int = 0) -> list[tuple[int, d.BatchMetric]]:
    rows = s.scalars(
        select(BatchMetricRow)
        .where(BatchMetricRow.job_id == job_id, BatchMetricRow.id > after_id)
        .order_by(BatchMetricRow.id)
    )
    return [(r.id, to(d.BatchMetric, r)) for r in rows]


# ----- artifacts ---------------------------------------------------------------------------------------
def record_artifact(
    s: Session, job_id: str, name: str, key: str, size: int, content_type: str, sha256: str | None = None
) -> None:
    upsert(
        s,
        ArtifactRow,
        {
            "id": new_id(),
            "job_id": job_id,
            "name": name,
            "key": key,
            "size": size,
            "content_type": content_type,
            "sha256": sha256,
            "created_at": utcnow(),
        },
        ["job_id", "name"],
    )


def artifacts(s: Session, job_id: str) -> list[d.Artifact]:
    rows = s.scalars(select(ArtifactRow).where(ArtifactRow.job_id == job_id).order_by(ArtifactRow.name))
    return [to(d.Artifact, r) for r in rows]


def get_artifact(s: Session, job_id: str, name: str) -> d.Artifact | None:
    row = s.scalar(select(ArtifactRow).where(ArtifactRow.job_id == job_id, ArtifactRow.name == name))
    return to(d.Artifact, row) if row else None


def delete_artifacts(s: Session, job_id: str, prefix: str) -> int:
    """Forget a job's artifacts whose names start with prefix; returns the bytes they took."""
    where = (ArtifactRow.job_id == job_id, ArtifactRow.name.startswith(prefix, autoescape=True))
    freed = s.scalar(select(func.coalesce(func.sum(ArtifactRow.size), 0)).where(*where)) or 0
    s.execute(delete(ArtifactRow).where(*where))
    return int(freed)


# ----- bytes in the store ------------------------------------------------------------------------------
def stored_bytes_of_job(s: Session, job_id: str) -> int:
    return int(s.scalar(select(func.coalesce(func.sum(ArtifactRow.size), 0)).where(ArtifactRow.job_id == job_id)) or 0)


def stored_bytes(s: Session, project_id: str) -> int:
    """What a project takes in the object store: dataset versions, job artifacts, kept predict inputs (and the
    masks its answers carry), and feedback masks."""
    datasets = s.scalar(
        select(func.coalesce(func.sum(DatasetVersionRow.n_bytes), 0))
        .join(DatasetRow, DatasetVersionRow.dataset_id == DatasetRow.id)
        .where(DatasetRow.project_id == project_id)
    )
    artifacts = s.scalar(
        select(func.coalesce(func.sum(ArtifactRow.size), 0))
        .join(JobRow, ArtifactRow.job_id == JobRow.id)
        .where(JobRow.project_id == project_id)
    )
    kept = s.scalar(
        select(func.coalesce(func.sum(PredictionRow.stored_bytes), 0)).where(PredictionRow.project_id == project_id)
    )
    masks = s.scalar(
        select(func.coalesce(func.sum(FeedbackRow.stored_bytes), 0)).where(FeedbackRow.project_id == project_id)
    )
    return int(datasets or 0) + int(artifacts or 0) + int(kept or 0) + int(masks or 0)

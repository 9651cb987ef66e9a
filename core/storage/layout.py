"""Where things live in the object store, in one place (the API deletes what the worker wrote)."""

from __future__ import annotations


def job_prefix(project_id: str, job_id: str) -> str:
    """A job's objects: artifacts/ (checkpoints, export bundle, plots, metrics)."""
    return f"projects/{project_id}/jobs/{job_id}"


def dataset_version_prefix(project_id: str, dataset_id: str, version: int) -> str:
    """A dataset version's objects: files/ and manifest.json."""
    return f"projects/{project_id}/datasets/{dataset_id}/v{version}"


def prediction_prefix(project_id: str, prediction_id: str) -> str:
    """A logged prediction's objects: its input image (<prefix>.<ext>) and, for segmentation, its mask."""
    return f"projects/{project_id}/predictions/{prediction_id}"


def feedback_prefix(project_id: str, feedback_id: str) -> str:
    """A feedback's objects: a corrected mask (<prefix>.mask.png)."""
    return f"projects/{project_id}/feedback/{feedback_id}"

"""Where things live in the object store, in one place (the API deletes what the worker wrote)."""

from __future__ import annotations


def job_prefix(project_id: str, job_id: str) -> str:
    """A job's objects: attempts/<n>/ for each run of it (see attempt_prefix)."""
    return f"projects/{project_id}/jobs/{job_id}"


def attempt_prefix(project_id: str, job_id: str, attempt: int) -> str:
    """What one attempt (one claim) of a job writes: checkpoints, the export bundle, plots, metrics. Each attempt
    writes under its own prefix, so a worker that lost its lease cannot overwrite its successor's objects; the
    artifact rows (written behind the fencing check) say which object is the job's current one."""
    return f"{job_prefix(project_id, job_id)}/attempts/{attempt}"


def dataset_version_prefix(project_id: str, dataset_id: str, version: int) -> str:
    """A dataset version's objects: files/ and manifest.json."""
    return f"projects/{project_id}/datasets/{dataset_id}/v{version}"


def prediction_prefix(project_id: str, prediction_id: str) -> str:
    """A logged prediction's objects: its input image (<prefix>.<ext>) and, for segmentation, its mask."""
    return f"projects/{project_id}/predictions/{prediction_id}"


def feedback_prefix(project_id: str, feedback_id: str) -> str:
    """A feedback's objects: a corrected mask (<prefix>.mask.png)."""
    return f"projects/{project_id}/feedback/{feedback_id}"


# The fleet's weights store: files every worker may fetch, belonging to no project (core/jobs/fleet_weights.py).
FLEET_WEIGHTS = "fleet/weights"


def fleet_weights_file(stored_as: str) -> str:
    """A stored weights file, under the name workers cache it by (torchvision's, or lstm_fwd.safetensors, ...)."""
    return f"{FLEET_WEIGHTS}/files/{stored_as}"


def fleet_weights_record(name: str) -> str:
    """The JSON record of an uploaded weights file, by the name it was uploaded under."""
    return f"{FLEET_WEIGHTS}/records/{name}.json"

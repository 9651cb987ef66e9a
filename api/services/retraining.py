"""A retrain from feedback, as a name's policy asks for it: once enough corrections wait (the fleet loop's policy
pass, api/loops.py) or when the champion's inputs drift (api/drift.py). A version with every unused correction
is cut from the champion's dataset, and a retrain of the name queued on it; the retrain's evaluate step scores it
and the gate decides (worker/evaluate.py)."""

from __future__ import annotations

from dataclasses import dataclass

from api.errors import Problem
from api.schemas import JobCreate, VersionCreate
from api.services import jobs, versions
from api.state import AppState
from core.db import repos
from core.db.session import session_scope
from core.jobs.kinds import RETRAIN


@dataclass(frozen=True)
class Retrain:
    """What a policy's retrain did: the job it queued (None: none, and why)."""

    job_id: str | None
    version: int | None
    corrections: int
    why_not: str = ""

    def text(self) -> str:
        if self.job_id is None:
            return self.why_not
        return f"retrain job {self.job_id} queued on version {self.version} with {self.corrections} corrections"


def retrain_from_feedback(
    state: AppState, project_id: str, name: str, reason: str, min_corrections: int = 1
) -> Retrain:
    """Cut a version with the name's unused corrections and queue its retrain, unless fewer than
    `min_corrections` wait, a retrain of it is under way, or it has no champion trained on a dataset version."""
    with session_scope(state.sessions) as s:
        entry = repos.model_name(s, project_id, name)
        waiting = repos.count_unused_feedback(s, project_id, name)
        busy = repos.active_jobs_of_name(s, project_id, name, RETRAIN.name)
        champion = repos.get_model(s, entry.champion_id or "", project_id) if entry else None
        version = repos.get_version(s, champion.dataset_version_id or "") if champion else None
        project = repos.get_project(s, project_id)
    if version is None or project is None:
        return Retrain(None, None, waiting, f"'{name}' has no champion trained on a dataset version to retrain")
    if busy:
        return Retrain(None, None, waiting, f"a retrain of '{name}' is under way already")
    if waiting < min_corrections:
        return Retrain(
            None, None, waiting, f"{waiting} corrections wait for '{name}': too few to retrain from (correct some)"
        )
    try:
        cut = versions.cut(
            state, project, version.dataset_id, VersionCreate(add_feedback="all", note=f"policy: {reason}")
        )
        job = jobs.create(state, project, JobCreate(kind=RETRAIN.name, dataset_id=version.dataset_id, name=name))
    except Problem as exc:
        return Retrain(None, None, waiting, f"no retrain of '{name}': {exc.detail}")
    return Retrain(job.id, cut.version, waiting)

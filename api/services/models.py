"""Models: deleting one (its bundle goes from storage and from the predictor cache)."""

from __future__ import annotations

from api.errors import Problem, not_found
from api.schemas import Deleted
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope


def delete(state: AppState, project: domain.Project, model_id: str) -> Deleted:
    """409 while a queued or running job starts from the model or continues from the job that made it."""
    with session_scope(state.sessions) as s:
        model = repos.get_model(s, model_id, project.id)
        if model is None:
            raise not_found("model", model_id)
        users = repos.jobs_using_model(s, project.id, model_id)
        users += [c for c in repos.children_of(s, model.job_id) if not c.is_terminal]
        if users:
            listed = ", ".join(f"{j.id} ({j.kind}, {j.state})" for j in users[:5])
            raise Problem(
                409, "Model in use", f"model {model_id} is in use by {listed}; cancel those jobs or wait for them"
            )
        freed = repos.delete_artifacts(s, model.job_id, "export/")
        repos.delete_model(s, model_id)
    objects = state.store.delete_prefix(model.bundle_prefix + "/")
    state.predictors.forget(model_id)
    return Deleted(deleted=f"model {model_id} ({model.arch})", objects=objects, bytes=freed)

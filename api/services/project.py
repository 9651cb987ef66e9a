"""The caller's project and its settings."""

from __future__ import annotations

from api.schemas import ProjectPublic, ProjectSettings
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope


def public(project: domain.Project) -> ProjectPublic:
    return ProjectPublic(id=project.id, name=project.name, settings={"keep_inputs": project.keep_inputs})


def update(state: AppState, project: domain.Project, body: ProjectSettings) -> ProjectPublic:
    with session_scope(state.sessions) as s:
        updated = repos.update_project_settings(s, project.id, body.model_dump(exclude_none=True))
    return public(updated)

"""The caller's project and its settings."""

from __future__ import annotations

from typing import Any

from api.errors import Problem
from api.schemas import ProjectPublic, ProjectSettings
from api.services.datasets import find_version
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope


def public(project: domain.Project) -> ProjectPublic:
    gold = project.gold
    shown = {k: gold[k] for k in ("dataset_id", "dataset", "version")} if gold else None
    settings = {
        "keep_inputs": project.keep_inputs,
        "input_retention_days": project.input_retention_days,
        "gold": shown,
        "drift_threshold": project.drift_threshold,
        "drift_window": project.drift_window,
    }
    return ProjectPublic(id=project.id, name=project.name, settings=settings)


def update(state: AppState, project: domain.Project, body: ProjectSettings) -> ProjectPublic:
    """Change the settings the body names; a gold set is pinned to one version of one of the project's datasets."""
    changes: dict[str, Any] = {}
    sent = body.model_dump(exclude_unset=True)
    with session_scope(state.sessions) as s:
        repos.lock_project(s, project.id)  # a delete of the chosen version waits, or finishes first
        if sent.get("keep_inputs") is not None:
            changes["keep_inputs"] = sent["keep_inputs"]
        if "input_retention_days" in sent:  # null: keep predictions until deleted
            changes["input_retention_days"] = sent["input_retention_days"]
        for field in ("drift_threshold", "drift_window"):  # null: no alarms; the default window
            if field in sent:
                changes[field] = sent[field]
        if "gold" in sent:
            if body.gold is None:
                changes["gold"] = None
            else:
                dataset, version, _ = find_version(s, project, body.gold.dataset_id, body.gold.version)
                if version.n_items == 0:
                    raise Problem(422, "Empty gold set", f"dataset '{dataset.name}' version {version.version} is empty")
                changes["gold"] = {
                    "dataset_id": dataset.id,
                    "dataset": dataset.name,
                    "version": version.version,
                    "version_id": version.id,
                }
        updated = repos.update_project_settings(s, project.id, changes)
    state.invalidations.publish(("project", project.id))  # every API process's callers see the new settings
    return public(updated)

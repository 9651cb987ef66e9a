"""The model registry: names, their champion (the model that answers for the name) and challenger, the
decisions that changed them, promotion by hand (also how to roll back), and the retraining policy."""

from __future__ import annotations

from collections.abc import Callable

from api.errors import Problem, not_found
from api.schemas import (
    DecisionPublic,
    DecisionsPublic,
    ModelPublic,
    PolicyUpdate,
    Promote,
    RegistryDetail,
    RegistryEntry,
    RegistryPublic,
)
from api.services import page
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope
from core.jobs.gate import Policy


def _entry(entry: domain.ModelName, versions: int) -> RegistryEntry:
    return RegistryEntry(
        name=entry.name,
        champion_id=entry.champion_id,
        challenger_id=entry.challenger_id,
        policy=Policy.of(entry.policy).as_dict(),
        retrains_on_feedback="min_feedback" in entry.policy,
        versions=versions,
    )


def list_all(state: AppState, project: domain.Project, offset: int = 0, limit: int | None = None) -> RegistryPublic:
    """A page of the project's names; count: all of them."""
    with session_scope(state.sessions) as s:
        counts = repos.versions_per_name(s, project.id)
        names = repos.list_model_names(s, project.id)
    data = [_entry(e, counts.get(e.name, 0)) for e in page(names, offset, limit)]
    return RegistryPublic(data=data, count=len(names))


def find(state: AppState, project: domain.Project, name: str) -> domain.ModelName:
    with session_scope(state.sessions) as s:
        entry = repos.model_name(s, project.id, name)
    if entry is None:
        raise not_found("model name", name)
    return entry


def get(state: AppState, project: domain.Project, name: str, bundle_url: Callable[[str], str]) -> RegistryDetail:
    with session_scope(state.sessions) as s:
        entry = repos.model_name(s, project.id, name)
        if entry is None:
            raise not_found("model name", name)
        models = repos.models_of_name(s, project.id, name)
        decisions = repos.decisions(s, project.id, name)
    return RegistryDetail(
        **_entry(entry, len(models)).model_dump(),
        models=[ModelPublic.of(m, bundle_url=bundle_url(m.id)) for m in models],
        decisions=[DecisionPublic.of(d) for d in decisions],
    )


def decisions(
    state: AppState, project: domain.Project, name: str, offset: int = 0, limit: int | None = None
) -> DecisionsPublic:
    """A page of the name's decisions, oldest first; count: all of them."""
    find(state, project, name)
    with session_scope(state.sessions) as s:
        data = [DecisionPublic.of(d) for d in repos.decisions(s, project.id, name, offset, limit)]
        count = repos.count_decisions(s, project.id, name)
    return DecisionsPublic(data=data, count=count)


def champion(state: AppState, project: domain.Project, name: str) -> domain.Model:
    """The model answering for `name` (409 while it has none)."""
    entry = find(state, project, name)
    with session_scope(state.sessions) as s:
        model = repos.get_model(s, entry.champion_id or "", project.id)
    if model is None:
        raise Problem(409, "No champion", f"'{name}' has no champion; promote one of its models")
    return model


def promote(state: AppState, caller: domain.Caller, name: str, body: Promote) -> DecisionPublic:
    """Make one of the name's models its champion, by hand (recorded with who and why)."""
    project = caller.project
    find(state, project, name)
    with session_scope(state.sessions) as s:
        model = repos.get_model(s, body.model_id, project.id)
        if model is None or model.name != name:
            raise Problem(
                422, "Invalid request", f"model_id: {body.model_id} is not a model of '{name}'", field="model_id"
            )
        decision = repos.set_champion(
            s,
            project.id,
            name,
            model.id,
            {
                "action": "manual",
                "scores": {},
                "reason": body.reason or "promoted by hand",
                "actor": f"key {caller.key.prefix} ({caller.key.name})"
                if caller.key.name
                else f"key {caller.key.prefix}",
            },
        )
        repos.emit(s, project.id, "model.promoted", decision.event())
    return DecisionPublic.of(decision)


def set_policy(state: AppState, project: domain.Project, name: str, body: PolicyUpdate) -> RegistryEntry:
    entry = find(state, project, name)
    # Only what was set is stored: a policy without min_feedback never retrains on its own. A field sent as null
    # goes back to its default (min_feedback: null switches retraining on feedback off); one not sent is kept.
    stored = dict(entry.policy)
    for field, value in body.model_dump(include=body.model_fields_set).items():
        if value is None:
            stored.pop(field, None)
        else:
            stored[field] = value
    with session_scope(state.sessions) as s:
        updated = repos.set_policy(s, project.id, name, stored)
        assert updated is not None
        versions = len(repos.models_of_name(s, project.id, name))
    return _entry(updated, versions)

"""Dependencies as Annotated aliases, defined once, so routes read like prose."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.errors import Problem
from api.state import AppState
from core.config import Settings
from core.db import domain, repos
from core.db.session import session_scope
from core.storage.base import ObjectStore


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.fitcycle
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_store(state: StateDep) -> ObjectStore:
    return state.store


def get_session(state: StateDep) -> Iterator[Session]:
    with session_scope(state.sessions) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
SessionDep = Annotated[Session, Depends(get_session)]


def get_project(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> domain.Project:
    """The project whose API key came in `Authorization: Bearer KEY`."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Problem(
            401,
            "Unauthorized",
            "send your project API key as 'Authorization: Bearer KEY' "
            "(create one with 'fitcycle keys create --project NAME')",
        )
    project = repos.project_for_key(session, authorization.split(" ", 1)[1].strip())
    if project is None:
        raise Problem(401, "Unauthorized", "the API key is not valid (revoked, or never issued)")
    return project


ProjectDep = Annotated[domain.Project, Depends(get_project)]

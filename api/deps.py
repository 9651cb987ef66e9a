"""Dependencies as Annotated aliases, defined once, so routes read like prose."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from api.errors import Problem
from api.guard import CALLER
from api.schemas import QueryBool
from api.state import AppState
from core.db import domain
from core.engine.tasks.base import MAX_LABEL_CHARS


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.fitcycle
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_caller(request: Request) -> domain.Caller:
    """The project and key the guard authenticated (before the body was read)."""
    caller = request.scope.get("state", {}).get(CALLER)
    if not isinstance(caller, domain.Caller):
        raise Problem(401, "Unauthorized", "send your project API key as 'Authorization: Bearer KEY'")
    return caller


CallerDep = Annotated[domain.Caller, Depends(get_caller)]


def get_project(caller: CallerDep) -> domain.Project:
    """The project whose API key came in `Authorization: Bearer KEY`."""
    return caller.project


ProjectDep = Annotated[domain.Project, Depends(get_project)]


def get_admin(caller: CallerDep) -> domain.Caller:
    """A caller whose key is one of its project's admin keys."""
    if not caller.key.admin:
        raise Problem(
            403,
            "Forbidden",
            "this needs one of the project's admin keys (keys, promotion by hand, retraining policies and "
            "webhooks are admin-only); 'fitcycle keys create' makes one, as does another admin key over REST (admin: "
            "true)",
        )
    return caller


AdminDep = Annotated[domain.Caller, Depends(get_admin)]

# Every list is paged: `limit` rows from `offset`; the answer's `count` is how many there are in all.
OffsetQuery = Annotated[int, Query(ge=0, le=2**31 - 1, description="rows to skip")]
LimitQuery = Annotated[int, Query(ge=1, le=500, description="rows to return (at most 500)")]
ExplainQuery = Annotated[
    QueryBool,
    Query(description="add a heatmap (Grad-CAM) to each answer: classification and multi-label models only"),
]
HeatmapClassQuery = Annotated[
    str | None,
    Query(
        max_length=MAX_LABEL_CHARS,
        description="the class the heatmap is for (implies explain; default: the most probable class)",
    ),
]

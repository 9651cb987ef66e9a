"""Hyperparameter searches: create, list, read (trials, best, best so far), live events, importance, cancel."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import CallerDep, ProjectDep, StateDep
from api.guard import CREDENTIAL
from api.openapi import SSE_EVENT
from api.schemas import MAX_INT, SearchCreate, SearchesPublic, SearchImportance, SearchPublic
from api.services import searches as service

router = APIRouter(prefix="/searches", tags=["searches"])


@router.post("", status_code=201)
async def create_search(state: StateDep, caller: CallerDep, body: SearchCreate) -> SearchPublic:
    """Start a search: its trials are jobs of the base kind with the space's fields sampled, queued `parallel` at a
    time within the project's active-jobs quota; the pruner stops weak ones at an epoch's end (state `pruned`)."""
    return await run_in_threadpool(service.create, state, caller.project, body, caller.key.admin)


@router.get("")
async def list_searches(
    state: StateDep,
    project: ProjectDep,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> SearchesPublic:
    """The project's searches, newest first."""
    return await run_in_threadpool(service.list_all, state, project, offset, limit)


@router.get("/{search_id}")
async def get_search(state: StateDep, project: ProjectDep, search_id: str) -> SearchPublic:
    """Its trials (fields, state, epochs run, objective after each epoch), the best so far and over time."""
    return await run_in_threadpool(service.get, state, project, search_id)


@router.get("/{search_id}/importance")
async def get_importance(state: StateDep, project: ProjectDep, search_id: str) -> SearchImportance:
    """How much each searched field explains of the objective over the finished trials (Optuna's PED-ANOVA)."""
    return await run_in_threadpool(service.importance, state, project, search_id)


@router.post("/{search_id}/cancel", status_code=202)
async def cancel_search(state: StateDep, project: ProjectDep, search_id: str) -> SearchPublic:
    """Stop the search and its trials (queued ones at once, running ones at their next batch)."""
    return await run_in_threadpool(service.cancel, state, project, search_id)


@router.get(
    "/{search_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}},
)
async def search_events(request: Request, state: StateDep, project: ProjectDep, search_id: str) -> StreamingResponse:
    """Server-sent events: `search` (the whole search, as GET answers it) whenever it changes, and `end`."""
    await run_in_threadpool(service.get, state, project, search_id)
    release = state.hold_event_stream(project.id)  # 429 here when the project has too many open
    credential = request.scope["state"][CREDENTIAL]

    async def stream() -> AsyncIterator[str]:
        try:
            async for event in service.events(state, credential, search_id, request.is_disconnected):
                yield event
        finally:
            release()

    body = stream()
    weakref.finalize(body, release)
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )

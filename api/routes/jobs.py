"""Jobs: queue, list, read, metrics, live events, cancel, artifacts."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import ProjectDep, SessionDep, StateDep
from api.errors import not_found
from api.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    BatchRow,
    Deleted,
    EpochRow,
    JobCreate,
    JobPublic,
    JobsPublic,
    MetricsPublic,
)
from api.services import jobs as service
from core.db import domain, repos
from core.db.session import session_scope

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=202)
async def create_job(state: StateDep, project: ProjectDep, body: JobCreate) -> JobPublic:
    """Queue a job; 202 with its id. The worker fleet picks it up."""
    return await run_in_threadpool(service.create, state, project, body)


@router.get("")
def list_jobs(
    session: SessionDep,
    project: ProjectDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> JobsPublic:
    """The project's jobs, newest first."""
    jobs, count = repos.list_jobs(session, project.id, limit, offset)
    return JobsPublic(data=[service.to_public(j) for j in jobs], count=count)


def _job(session: Any, project: domain.Project, job_id: str) -> domain.Job:
    job = repos.get_job(session, job_id, project.id)
    if job is None:
        raise not_found("job", job_id)
    return job


@router.get("/{job_id}")
def get_job(session: SessionDep, project: ProjectDep, job_id: str) -> JobPublic:
    """State, progress (epoch, batch, ETA), error text, and model_id once it made one."""
    return service.to_public(_job(session, project, job_id))


@router.delete("/{job_id}")
async def delete_job(state: StateDep, project: ProjectDep, job_id: str) -> Deleted:
    """Delete a finished job, its metrics and its stored artifacts; 409 while it runs, has a model, or has
    children."""
    return await run_in_threadpool(service.delete, state, project, job_id)


@router.get("/{job_id}/metrics")
def get_metrics(session: SessionDep, project: ProjectDep, job_id: str) -> MetricsPublic:
    """Per-epoch rows (train_loss, valid_loss, each metric) and sampled per-batch rows."""
    _job(session, project, job_id)
    epochs = [EpochRow(**e.__dict__) for e in repos.epoch_metrics(session, job_id)]
    batches = [BatchRow(**b.__dict__) for _, b in repos.batch_metrics(session, job_id)]
    return MetricsPublic(epochs=epochs, batches=batches)


@router.post("/{job_id}/cancel", status_code=202)
async def cancel_job(state: StateDep, project: ProjectDep, job_id: str) -> JobPublic:
    """Stop at the next batch; the last checkpoint is kept."""
    return await run_in_threadpool(service.cancel, state, project, job_id)


@router.get(
    "/{job_id}/events", response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}}
)
async def job_events(request: Request, state: StateDep, project: ProjectDep, job_id: str) -> StreamingResponse:
    """Server-sent events while the job runs: `state` on every change, `epoch` and `batch` rows as they
    arrive, and `end` when it is over."""
    with session_scope(state.sessions) as s:
        _job(s, project, job_id)

    def snapshot(after_batch: int) -> tuple[domain.Job | None, list[Any], list[tuple[int, Any]]]:
        with session_scope(state.sessions) as s:
            if repos.caller_for_key(s, key) is None:  # revoked or expired while the stream was open
                return None, [], []
            return repos.get_job(s, job_id), repos.epoch_metrics(s, job_id), repos.batch_metrics(s, job_id, after_batch)

    release = state.hold_event_stream(project.id)  # 429 here when the project has too many open
    key = (request.headers.get("authorization") or "").split(" ", 1)[-1].strip()

    async def stream() -> AsyncIterator[str]:
        try:
            async for event in events():
                yield event
        finally:
            release()

    async def events() -> AsyncIterator[str]:
        last_batch, sent_epochs, last_state = 0, 0, None
        while not await request.is_disconnected():
            job, epochs, batches = await run_in_threadpool(snapshot, last_batch)
            if job is None:
                return
            for row_id, b in batches:
                last_batch = row_id
                yield f"event: batch\ndata: {json.dumps(b.__dict__)}\n\n"
            for e in epochs[sent_epochs:]:
                yield f"event: epoch\ndata: {json.dumps(e.__dict__)}\n\n"
            sent_epochs = len(epochs)
            public = service.to_public(job)
            current = (public.state, public.epoch, public.batch)
            if current != last_state:
                last_state = current
                yield f"event: state\ndata: {public.model_dump_json()}\n\n"
            if job.is_terminal:
                yield f"event: end\ndata: {json.dumps({'state': job.state})}\n\n"
                return
            await asyncio.sleep(0.5)

    body = stream()
    weakref.finalize(body, release)  # a stream that never started (the client left at once) gives its slot back
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@router.get("/{job_id}/artifacts")
def list_artifacts(request: Request, session: SessionDep, project: ProjectDep, job_id: str) -> ArtifactsPublic:
    """Checkpoints, the export bundle's files, plots, the lr_find curve and the interpretation."""
    _job(session, project, job_id)
    data = [
        ArtifactPublic(
            name=a.name,
            size=a.size,
            content_type=a.content_type,
            url=str(request.url_for("download_artifact", job_id=job_id, name=a.name)),
        )
        for a in repos.artifacts(session, job_id)
    ]
    return ArtifactsPublic(data=data, count=len(data))


@router.get("/{job_id}/artifacts/{name:path}", name="download_artifact", response_class=StreamingResponse)
def download_artifact(
    state: StateDep, session: SessionDep, project: ProjectDep, job_id: str, name: str
) -> StreamingResponse:
    """Download one artifact (streamed)."""
    _job(session, project, job_id)
    artifact = repos.get_artifact(session, job_id, name)
    if artifact is None:
        raise not_found("artifact", name)
    filename = name.rsplit("/", 1)[-1]
    return StreamingResponse(
        state.store.open(artifact.key),
        media_type=artifact.content_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Content-Length": str(artifact.size)},
    )

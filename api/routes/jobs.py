"""Jobs: queue, list, read, metrics, live events, cancel, artifacts."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import CallerDep, ProjectDep, StateDep
from api.guard import CREDENTIAL
from api.openapi import SSE_EVENT, binary
from api.schemas import (
    MAX_INT,
    ArtifactsPublic,
    Deleted,
    JobCreate,
    JobPublic,
    JobRerun,
    JobsPublic,
    MetricsPublic,
    SuspectsPublic,
)
from api.services import jobs as service

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=202)
async def create_job(state: StateDep, caller: CallerDep, body: JobCreate) -> JobPublic:
    """Queue a job; 202 with its id. The worker fleet picks it up. A member key's model is judged by the gate but
    promoted only by an admin (an approved decision waits for POST /registry/{name}/promote)."""
    return await run_in_threadpool(service.create, state, caller.project, body, caller.key.admin)


@router.get("")
async def list_jobs(
    state: StateDep,
    project: ProjectDep,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> JobsPublic:
    """The project's jobs, newest first."""
    return await run_in_threadpool(service.list_all, state, project, offset, limit)


@router.get("/{job_id}")
async def get_job(state: StateDep, project: ProjectDep, job_id: str) -> JobPublic:
    """State, progress (epoch, batch, ETA), error text, and model_id once it made one."""
    return await run_in_threadpool(service.get, state, project, job_id)


@router.delete("/{job_id}")
async def delete_job(state: StateDep, project: ProjectDep, job_id: str) -> Deleted:
    """Delete a finished job, its metrics and its stored artifacts; 409 while it runs, has a model, or has
    children."""
    return await run_in_threadpool(service.delete, state, project, job_id)


@router.get("/{job_id}/metrics")
async def get_metrics(state: StateDep, project: ProjectDep, job_id: str) -> MetricsPublic:
    """Per-epoch rows (train_loss, valid_loss, each metric) and sampled per-batch rows."""
    return await run_in_threadpool(service.metrics, state, project, job_id)


@router.post("/{job_id}/cancel", status_code=202)
async def cancel_job(state: StateDep, project: ProjectDep, job_id: str) -> JobPublic:
    """Stop at the next batch; the last checkpoint is kept."""
    return await run_in_threadpool(service.cancel, state, project, job_id)


@router.post("/{job_id}/rerun", status_code=202)
async def rerun_job(state: StateDep, caller: CallerDep, job_id: str, body: JobRerun | None = None) -> JobPublic:
    """Queue a finished job again on the same dataset version (its resolved spec, data seed and parent), with the
    changes the body asks for; 202 with the new job. Its GET says whether the weights came out bit-identical, and if
    not, which recorded fact (core/jobs/provenance.py) differs."""
    return await run_in_threadpool(service.rerun, state, caller.project, job_id, body or JobRerun(), caller.key.admin)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}}},
)
async def job_events(request: Request, state: StateDep, project: ProjectDep, job_id: str) -> StreamingResponse:
    """Server-sent events while the job runs: `state` on every change, `epoch` and `batch` rows as they
    arrive, and `end` when it is over."""
    await run_in_threadpool(service.find, state, project, job_id)
    release = state.hold_event_stream(project.id)  # 429 here when the project has too many open
    credential = request.scope["state"][CREDENTIAL]

    async def stream() -> AsyncIterator[str]:
        try:
            async for event in service.events(state, credential, job_id, request.is_disconnected):
                yield event
        finally:
            release()

    body = stream()
    weakref.finalize(body, release)  # a stream that never started (the client left at once) gives its slot back
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@router.get("/{job_id}/artifacts")
async def list_artifacts(request: Request, state: StateDep, project: ProjectDep, job_id: str) -> ArtifactsPublic:
    """Checkpoints, the export bundle's files, plots, the lr_find curve and the interpretation."""

    def url(name: str) -> str:
        return str(request.url_for("download_artifact", job_id=job_id, name=name))

    return await run_in_threadpool(service.artifacts, state, project, job_id, url)


@router.get(
    "/{job_id}/predictions",
    response_class=StreamingResponse,
    responses=binary("application/x-ndjson", "text/csv"),
)
async def job_predictions(
    state: StateDep,
    project: ProjectDep,
    job_id: str,
    format: Annotated[Literal["jsonl", "csv"], Query(description="JSON Lines (the whole answer) or CSV")] = "jsonl",
) -> StreamingResponse:
    """A predict job's answers, one row per item in the dataset version's order: JSON Lines (key, answer,
    uncertainty, and the label where the version has one) or CSV (key, answer in a few words, uncertainty)."""
    chunks = await run_in_threadpool(service.prediction_parts, state, project, job_id, format)
    media = "application/x-ndjson" if format == "jsonl" else "text/csv; charset=utf-8"
    return StreamingResponse(
        chunks,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="predictions-{job_id[:8]}.{format}"'},
    )


@router.get("/{job_id}/suspects")
async def get_suspects(
    request: Request,
    state: StateDep,
    project: ProjectDep,
    job_id: str,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> SuspectsPublic:
    """An interpret job's cleaner: items whose label the out-of-fold model doubts most, with a suggested label."""

    def image_url(dataset_id: str, key: str, version: int) -> str:
        url = request.url_for("item_image", dataset_id=dataset_id, key=key)
        return str(url.include_query_params(version=version))

    return await run_in_threadpool(service.suspects, state, project, job_id, limit, image_url)


@router.get(
    "/{job_id}/artifacts/{name:path}",
    name="download_artifact",
    response_class=StreamingResponse,
    responses=binary("application/octet-stream", "application/json", "image/png", "text/plain", "text/csv"),
)
async def download_artifact(state: StateDep, project: ProjectDep, job_id: str, name: str) -> StreamingResponse:
    """Download one artifact (streamed)."""
    artifact, chunks = await run_in_threadpool(service.open_artifact, state, project, job_id, name)
    filename = name.rsplit("/", 1)[-1]
    return StreamingResponse(
        chunks,
        media_type=artifact.content_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Content-Length": str(artifact.size)},
    )

"""Models: list, read, download the bundle, and predict on CPU (files or a URL)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.deps import ProjectDep, StateDep
from api.errors import Problem
from api.schemas import BatchPredictions, Deleted, FilePredictions, ModelPublic, ModelsPublic, Predictions, PredictUrl
from api.services import models as service
from api.services.urlfetch import fetch_image
from api.state import AppState
from core.db import domain
from core.engine.inference import Predictor

router = APIRouter(prefix="/models", tags=["models"])


def _bundle_url(request: Request) -> Callable[[str], str]:
    return lambda model_id: str(request.url_for("download_bundle", model_id=model_id))


def _model(state: AppState, project: domain.Project, model_id: str) -> domain.Model:
    return service.find(state, project, model_id)


@router.get("")
async def list_models(request: Request, state: StateDep, project: ProjectDep) -> ModelsPublic:
    """The project's models, oldest first."""
    return await run_in_threadpool(service.list_all, state, project, _bundle_url(request))


@router.get("/{model_id}")
async def get_model(request: Request, state: StateDep, project: ProjectDep, model_id: str) -> ModelPublic:
    """Metrics, classes and the job that made it."""
    return await run_in_threadpool(service.get, state, project, model_id, _bundle_url(request))


@router.delete("/{model_id}")
async def delete_model(state: StateDep, project: ProjectDep, model_id: str) -> Deleted:
    """Delete a model and its bundle (the job that made it stays); 409 while queued or running jobs use it."""
    return await run_in_threadpool(service.delete, state, project, model_id)


@router.get(
    "/{model_id}/bundle",
    name="download_bundle",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
async def download_bundle(state: StateDep, project: ProjectDep, model_id: str) -> FileResponse:
    """The export bundle (weights.safetensors + manifest.json) as a zip, streamed from a temporary file."""
    name = await run_in_threadpool(service.bundle_zip, state, project, model_id)
    return FileResponse(
        name,
        media_type="application/zip",
        filename=f"model-{model_id}.zip",
        background=BackgroundTask(os.unlink, name),
    )


def _answer(predictor: Predictor, image: bytes, name: str) -> Predictions:
    """One image through the model, decoded on its own (so one request holds one decoded image at a time)."""
    try:
        p = predictor.predict(image)
    except (OSError, ValueError) as exc:
        raise Problem(
            422, "Unreadable image", f"'{name[:200]}' is not an image we can decode ({str(exc)[:200]})", file=name[:200]
        ) from None
    return Predictions(**p.public())


@router.post("/{model_id}/predict", response_model=Predictions | BatchPredictions, response_model_exclude_none=True)
async def predict(
    state: StateDep,
    project: ProjectDep,
    model_id: str,
    file: Annotated[list[UploadFile], File(description="one image, or several")],
) -> Predictions | BatchPredictions:
    """Classify uploaded images. One file: {"top": [label, p], "predictions": [[label, p], ...]}, most probable
    first (a file that is not an image: 422); several: {"results": [{"filename", "top", "predictions"} or
    {"filename", "error"}, ...]}, one per file in order. Multi-label models add "labels": the classes above
    their tuned thresholds; other tasks answer points, values or a mask."""
    model = _model(state, project, model_id)
    settings = state.settings
    if len(file) > settings.max_predict_files:
        raise Problem(413, "Too many files", f"at most {settings.max_predict_files} images per request")
    names = [f.filename or f"file{i}" for i, f in enumerate(file)]
    for f, name in zip(file, names, strict=True):
        if (f.size or 0) > settings.max_predict_file_bytes:
            raise Problem(
                413,
                "Image too large",
                f"'{name[:200]}' is {f.size:,} bytes; the limit is {settings.max_predict_file_bytes:,} per image",
            )
    predictor = await run_in_threadpool(state.predictors.get, model)
    if len(file) == 1:
        return await run_in_threadpool(_answer, predictor, await file[0].read(), names[0])
    results = []
    for f, name in zip(file, names, strict=True):  # one bad file gets its own error; the others their answers
        try:
            answer = await run_in_threadpool(_answer, predictor, await f.read(), name)
            results.append(FilePredictions(filename=name, **answer.model_dump()))
        except Problem as exc:
            results.append(FilePredictions(filename=name, error=exc.detail))
    return BatchPredictions(results=results)


@router.post("/{model_id}/predict-url", response_model_exclude_none=True)
async def predict_url(state: StateDep, project: ProjectDep, model_id: str, body: PredictUrl) -> Predictions:
    """Fetch a public image URL and classify it (the course's classify-url)."""
    model = _model(state, project, model_id)
    data = await fetch_image(body.url, state.settings)
    predictor = await run_in_threadpool(state.predictors.get, model)
    return await run_in_threadpool(_answer, predictor, data, body.url)

"""Models: list, read, download the bundle, and predict on CPU (files or a URL)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.deps import ExplainQuery, HeatmapClassQuery, LimitQuery, OffsetQuery, ProjectDep, StateDep
from api.openapi import binary
from api.schemas import (
    Answer,
    BatchPredictions,
    Deleted,
    DriftPublic,
    Explain,
    Generated,
    GenerateRequest,
    ModelPublic,
    ModelsPublic,
    PredictAnswer,
    PredictResponse,
    PredictTexts,
    PredictUrl,
    TextAnswers,
)
from api.services import drift_report, text_predict
from api.services import models as service
from api.services import predict as predict_service
from api.services.urlfetch import fetch_image

router = APIRouter(prefix="/models", tags=["models"])


def _bundle_url(request: Request) -> Callable[[str], str]:
    return lambda model_id: str(request.url_for("download_bundle", model_id=model_id))


@router.get("")
async def list_models(
    request: Request, state: StateDep, project: ProjectDep, offset: OffsetQuery = 0, limit: LimitQuery = 100
) -> ModelsPublic:
    """The project's models, oldest first, a page at a time (`count`: all of them)."""
    return await run_in_threadpool(service.list_all, state, project, _bundle_url(request), offset, limit)


@router.get("/{model_id}")
async def get_model(request: Request, state: StateDep, project: ProjectDep, model_id: str) -> ModelPublic:
    """Metrics, classes and the job that made it."""
    return await run_in_threadpool(service.get, state, project, model_id, _bundle_url(request))


@router.get("/{model_id}/drift")
async def model_drift(state: StateDep, project: ProjectDep, model_id: str) -> DriftPublic:
    """Whether what the model is asked today is still what it was trained on: its latest answers (the project's
    drift_window, of the last 24 hours) against its validation set at export, a population stability index per
    signal (uncertainty, class_mix, input), the open alarm explained, and the scores over the last 24 hours."""
    return await run_in_threadpool(drift_report.report, state, project, model_id)


@router.delete("/{model_id}")
async def delete_model(state: StateDep, project: ProjectDep, model_id: str) -> Deleted:
    """Delete a model and its bundle (the job that made it stays); 409 while queued or running jobs use it."""
    return await run_in_threadpool(service.delete, state, project, model_id)


@router.get(
    "/{model_id}/bundle",
    name="download_bundle",
    response_class=FileResponse,
    responses=binary("application/zip"),
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


@router.post("/{model_id}/predict", response_model=PredictResponse, response_model_exclude_none=True)
async def predict(
    state: StateDep,
    project: ProjectDep,
    model_id: str,
    file: Annotated[list[UploadFile], File(description="one image, or several")],
    explain: ExplainQuery = False,
    heatmap_class: HeatmapClassQuery = None,
) -> Answer | BatchPredictions:
    """Answer uploaded images. One file: the model's task's answer, e.g. for classification {"task":
    "classification", "top": [label, p], "predictions": [[label, p], ...], "prediction_id"}, most probable first
    (a file that is not an image: 422); several: {"results": [{"filename", ...its answer} or {"filename",
    "error"}, ...]}, one per file in order. Multi-label models add "labels": the classes above their tuned
    thresholds; other tasks answer points, values or a mask: the schema has one answer per task, by "task".
    explain=true (classification and multi-label) adds "heatmap", where in the image the evidence for
    "heatmap_class" is (Grad-CAM; an image-sized greyscale PNG), computed by PyTorch apart from the micro-batches."""
    model = await service.served(state, project, model_id)
    wanted = Explain(explain=explain, heatmap_class=heatmap_class)
    return await predict_service.answer_files(state, project, model, file, "file", wanted)


@router.post("/{model_id}/predict-text", response_model_exclude_none=True)
async def predict_text(state: StateDep, project: ProjectDep, model_id: str, body: PredictTexts) -> TextAnswers:
    """Classify texts with a text classifier: {"texts": ["...", ...]} (1 to 64), each answered like an image
    ({"top": [label, p], "predictions": [[label, p], ...]}, multi-label adds "labels"), with its prediction_id;
    "explain": true adds each token's weight in the answer. An image model or a language model: 422."""
    model = await service.served(state, project, model_id)
    return await text_predict.classify(state, project, model, body)


@router.post("/{model_id}/generate")
async def generate(state: StateDep, project: ProjectDep, model_id: str, body: GenerateRequest) -> Generated:
    """A language model writes `words` tokens after `prompt`, each drawn at `temperature` (seeded when `seed` is
    given) [fastai: learn.predict(TEXT, N_WORDS, temperature=0.75)]. Any other model: 422."""
    model = await service.served(state, project, model_id)
    return await text_predict.generate(state, project, model, body)


@router.post("/{model_id}/predict-url", response_model=PredictAnswer, response_model_exclude_none=True)
async def predict_url(state: StateDep, project: ProjectDep, model_id: str, body: PredictUrl) -> Answer:
    """Fetch a public image URL and classify it (the course's classify-url); "explain": true adds a heatmap as
    POST /models/{id}/predict does."""
    model = await service.served(state, project, model_id)
    if body.wanted:  # a model without heatmaps or an unknown class is refused before anything is fetched
        predictor = await run_in_threadpool(state.predictors.get, model)
        predict_service.check_explainable(predictor, body.heatmap_class)
    data = await fetch_image(body.url, state.settings)
    shown = urlsplit(body.url)._replace(netloc=urlsplit(body.url).hostname or "", query="", fragment="").geturl()
    return await predict_service.answer(state, project, model, data, shown, "url", body)

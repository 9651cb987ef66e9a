"""Models: list, read, download the bundle, and predict on CPU (files or a URL)."""

from __future__ import annotations

import base64
import os
import tempfile
import zipfile
from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.deps import ProjectDep, SessionDep, StateDep
from api.errors import Problem, not_found
from api.schemas import BatchPredictions, FilePredictions, ModelPublic, ModelsPublic, Predictions, PredictUrl
from api.services.urlfetch import fetch_image
from core.db import domain, repos
from core.db.session import session_scope
from core.engine.inference import Predictor

router = APIRouter(prefix="/models", tags=["models"])


def _public(request: Request, m: domain.Model) -> ModelPublic:
    return ModelPublic(
        id=m.id,
        job_id=m.job_id,
        arch=m.arch,
        classes=m.classes,
        metrics=m.metrics,
        created_at=m.created_at,
        bundle_url=str(request.url_for("download_bundle", model_id=m.id)),
    )


def _model(state: StateDep, project: domain.Project, model_id: str) -> domain.Model:
    with session_scope(state.sessions) as s:
        model = repos.get_model(s, model_id, project.id)
    if model is None:
        raise not_found("model", model_id)
    return model


@router.get("")
def list_models(request: Request, session: SessionDep, project: ProjectDep) -> ModelsPublic:
    """The project's models, oldest first."""
    data = [_public(request, m) for m in repos.list_models(session, project.id)]
    return ModelsPublic(data=data, count=len(data))


@router.get("/{model_id}")
def get_model(request: Request, state: StateDep, project: ProjectDep, model_id: str) -> ModelPublic:
    """Metrics, classes and the job that made it."""
    return _public(request, _model(state, project, model_id))


@router.get(
    "/{model_id}/bundle",
    name="download_bundle",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
def download_bundle(state: StateDep, project: ProjectDep, model_id: str) -> FileResponse:
    """The export bundle (weights.safetensors + manifest.json) as a zip, streamed from a temporary file."""
    model = _model(state, project, model_id)
    fd, name = tempfile.mkstemp(prefix="fitcycle-bundle-", suffix=".zip")
    with os.fdopen(fd, "wb") as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for key in state.store.list(model.bundle_prefix + "/"):
            with zf.open(key[len(model.bundle_prefix) + 1 :], "w") as member:
                for block in state.store.open(key):
                    member.write(block)
    return FileResponse(
        name,
        media_type="application/zip",
        filename=f"model-{model_id}.zip",
        background=BackgroundTask(os.unlink, name),
    )


def _ranked(predictor: Predictor, images: list[bytes]) -> list[Predictions]:
    try:
        preds = predictor.predict_batch(images)
    except (OSError, ValueError) as exc:
        raise Problem(422, "Unreadable image", f"the upload is not an image we can decode: {exc}") from exc
    if predictor.task == "points":
        return [Predictions(points=p.points) for p in preds]
    if predictor.task == "values":
        return [Predictions(values=p.values) for p in preds]
    if predictor.task == "segmentation":
        return [Predictions(mask=base64.b64encode(p.mask_png()).decode(), shares=p.shares) for p in preds]
    return [
        Predictions(predictions=p.ranked(predictor.classes), labels=p.labels if predictor.multi_label else None)
        for p in preds
    ]


@router.post("/{model_id}/predict", response_model=Predictions | BatchPredictions, response_model_exclude_none=True)
async def predict(
    state: StateDep,
    project: ProjectDep,
    model_id: str,
    file: Annotated[list[UploadFile], File(description="one image, or several")],
) -> Predictions | BatchPredictions:
    """Classify uploaded images. One file: {"predictions": [[label, p], ...]}, most probable first;
    several: {"results": [{"filename", "predictions"}, ...]}. Multi-label models add "labels": the classes
    above their tuned thresholds."""
    model = _model(state, project, model_id)
    if len(file) > state.settings.max_predict_files:
        raise Problem(413, "Too many files", f"at most {state.settings.max_predict_files} images per request")
    images = [await f.read() for f in file]
    predictor = await run_in_threadpool(state.predictors.get, model)
    ranked = await run_in_threadpool(_ranked, predictor, images)
    if len(file) == 1:
        return ranked[0]
    return BatchPredictions(
        results=[
            FilePredictions(filename=f.filename or f"file{i}", **r.model_dump())
            for i, (f, r) in enumerate(zip(file, ranked, strict=True))
        ]
    )


@router.post("/{model_id}/predict-url", response_model_exclude_none=True)
async def predict_url(state: StateDep, project: ProjectDep, model_id: str, body: PredictUrl) -> Predictions:
    """Fetch a public image URL and classify it (the course's classify-url)."""
    model = _model(state, project, model_id)
    data = await run_in_threadpool(fetch_image, body.url, state.settings)
    predictor = await run_in_threadpool(state.predictors.get, model)
    ranked = await run_in_threadpool(_ranked, predictor, [data])
    return ranked[0]

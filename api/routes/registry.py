"""The model registry: names, champion and challenger, decisions, promotion by hand, policy, and predict by
name (the champion answers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from api.deps import AdminDep, ExplainQuery, HeatmapClassQuery, LimitQuery, OffsetQuery, ProjectDep, StateDep
from api.schemas import (
    Answer,
    BatchPredictions,
    DecisionPublic,
    DecisionsPublic,
    DriftPublic,
    Explain,
    PolicyUpdate,
    PredictResponse,
    Promote,
    RegistryDetail,
    RegistryEntry,
    RegistryPublic,
)
from api.services import drift_report
from api.services import predict as predict_service
from api.services import registry as service

router = APIRouter(prefix="/registry", tags=["registry"])


def _bundle_url(request: Request) -> Callable[[str], str]:
    return lambda model_id: str(request.url_for("download_bundle", model_id=model_id))


@router.get("")
async def list_names(
    state: StateDep, project: ProjectDep, offset: OffsetQuery = 0, limit: LimitQuery = 100
) -> RegistryPublic:
    """The project's model names with their champion, challenger and policy, a page at a time."""
    return await run_in_threadpool(service.list_all, state, project, offset, limit)


@router.get("/{name}")
async def get_name(request: Request, state: StateDep, project: ProjectDep, name: str) -> RegistryDetail:
    """A name's versions with their metrics, its champion and challenger, and its decisions."""
    return await run_in_threadpool(service.get, state, project, name, _bundle_url(request))


@router.get("/{name}/decisions")
async def get_decisions(
    state: StateDep, project: ProjectDep, name: str, offset: OffsetQuery = 0, limit: LimitQuery = 100
) -> DecisionsPublic:
    """Each promotion or refusal, oldest first, a page at a time: both scores and the reason."""
    return await run_in_threadpool(service.decisions, state, project, name, offset, limit)


@router.get("/{name}/drift")
async def get_drift(state: StateDep, project: ProjectDep, name: str) -> DriftPublic:
    """The drift of the name's champion (GET /models/{id}/drift); 404 when the name has no champion."""
    return await run_in_threadpool(drift_report.champion_report, state, project, name)


@router.post("/{name}/promote")
async def promote(state: StateDep, admin: AdminDep, name: str, body: Promote) -> DecisionPublic:
    """Make one of the name's models its champion (also how to roll back); recorded with who and why. Needs an
    admin key: promotion by hand passes over the gate."""
    return await run_in_threadpool(service.promote, state, admin, name, body)


@router.put("/{name}/policy")
async def set_policy(state: StateDep, admin: AdminDep, name: str, body: PolicyUpdate) -> RegistryEntry:
    """min_feedback, min_improvement, max_class_drop and auto_promote for the name's retrains (the gate every
    retrain passes), and retrain_on_drift (a drift alarm on the champion retrains). A field left out keeps its
    value; null sets it back to its default (min_feedback: null switches retraining on feedback off). Needs an
    admin key."""
    return await run_in_threadpool(service.set_policy, state, admin.project, name, body)


@router.post("/{name}/predict", response_model=PredictResponse, response_model_exclude_none=True)
async def predict(
    state: StateDep,
    project: ProjectDep,
    name: str,
    file: Annotated[list[UploadFile], File(description="one image, or several")],
    explain: ExplainQuery = False,
    heatmap_class: HeatmapClassQuery = None,
) -> Answer | BatchPredictions:
    """The name's champion answers, as POST /models/{id}/predict does (explain=true included); each answer is
    logged."""
    model = await run_in_threadpool(service.champion, state, project, name)
    wanted = Explain(explain=explain, heatmap_class=heatmap_class)
    return await predict_service.answer_files(state, project, model, file, "name", wanted)

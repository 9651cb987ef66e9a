"""The caller's project and its settings."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.deps import AdminDep, ProjectDep, StateDep
from api.schemas import ProjectPublic, ProjectSettings
from api.services import project as service

router = APIRouter(prefix="/project", tags=["project"])


@router.get("")
async def get_project(project: ProjectDep) -> ProjectPublic:
    """The project this key belongs to, with its settings."""
    return service.public(project)


@router.patch("")
async def update_project(state: StateDep, caller: AdminDep, body: ProjectSettings) -> ProjectPublic:
    """Change the project's settings (an admin key): keep_inputs, input_retention_days, gold."""
    return await run_in_threadpool(service.update, state, caller.project, body)

"""Job kinds: what each kind does, whether it needs a parent, its default lr and the lr forms it takes — read
from the registry (core/jobs/kinds/), the one place they are declared."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ProjectDep
from api.schemas import JobKindPublic, JobKindsPublic
from core.jobs.kinds import KINDS

router = APIRouter(prefix="/job-kinds", tags=["jobs"])


@router.get("")
def list_job_kinds(_: ProjectDep) -> JobKindsPublic:
    """Every kind a job can be (`POST /jobs` `kind`), as the registry declares it."""
    data = [JobKindPublic.of(k) for k in KINDS.values()]
    return JobKindsPublic(data=data, count=len(data))

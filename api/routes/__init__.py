"""One router per resource, collected here and mounted under /api/v1."""

from fastapi import APIRouter

from api.routes import (
    architectures,
    datasets,
    health,
    job_kinds,
    jobs,
    keys,
    models,
    predictions,
    project,
    registry,
    searches,
    webhooks,
    weights,
)

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(datasets.router)
api_router.include_router(jobs.router)
api_router.include_router(searches.router)
api_router.include_router(models.router)
api_router.include_router(keys.router)
api_router.include_router(architectures.router)
api_router.include_router(job_kinds.router)
api_router.include_router(registry.router)
api_router.include_router(predictions.router)
api_router.include_router(project.router)
api_router.include_router(webhooks.router)
api_router.include_router(weights.router)

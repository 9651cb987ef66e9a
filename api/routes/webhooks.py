"""Webhooks: register a URL for events, list them, delete one, and see its deliveries."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.deps import ProjectDep, StateDep
from api.schemas import DeliveriesPublic, WebhookCreate, WebhookPublic, WebhooksPublic
from api.services import webhooks as service

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.post("", status_code=201)
async def create_webhook(state: StateDep, project: ProjectDep, body: WebhookCreate) -> WebhookPublic:
    """Deliveries are JSON {id, event, created_at, data}, signed: X-Fitcycle-Signature: sha256=HMAC(secret, body)."""
    return await run_in_threadpool(service.create, state, project, body)


@router.get("")
async def list_webhooks(state: StateDep, project: ProjectDep) -> WebhooksPublic:
    """The project's webhooks (their secrets are never shown again)."""
    return await run_in_threadpool(service.list_all, state, project)


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(state: StateDep, project: ProjectDep, webhook_id: str) -> None:
    await run_in_threadpool(service.delete, state, project, webhook_id)


@router.get("/{webhook_id}/deliveries")
async def list_deliveries(state: StateDep, project: ProjectDep, webhook_id: str) -> DeliveriesPublic:
    """Each event sent (or still to send) to it: state, attempts, the last error."""
    return await run_in_threadpool(service.deliveries, state, project, webhook_id)

"""Webhooks: register a URL for events, list them, disable or delete one, and see its deliveries — all with an
admin key: a webhook is where a project's events go, and its URL can hold a receiver's token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from api.deps import AdminDep, OffsetQuery, StateDep
from api.schemas import DeliveriesPublic, WebhookCreate, WebhookPublic, WebhooksPublic, WebhookUpdate
from api.services import webhooks as service

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.post("", status_code=201)
async def create_webhook(state: StateDep, admin: AdminDep, body: WebhookCreate) -> WebhookPublic:
    """Deliveries are JSON {id, event, created_at, data}, signed with a timestamp: X-Fitcycle-Timestamp: T,
    X-Fitcycle-Signature: sha256=HMAC-SHA256(secret, "T." + body); refuse a T more than 5 minutes from your clock.
    The URL must be a public http(s) address (422 otherwise). Needs an admin key."""
    await service.check_url(body.url, state.settings)
    return await run_in_threadpool(service.create, state, admin.project, body)


@router.get("")
async def list_webhooks(state: StateDep, admin: AdminDep) -> WebhooksPublic:
    """The project's webhooks (their secrets are never shown again; a URL can hold a token, so an admin key)."""
    return await run_in_threadpool(service.list_all, state, admin.project)


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(state: StateDep, admin: AdminDep, webhook_id: str) -> None:
    """Delete a webhook: its deliveries not yet sent are dropped. Needs an admin key."""
    await run_in_threadpool(service.delete, state, admin.project, webhook_id)


@router.patch("/{webhook_id}")
async def update_webhook(state: StateDep, admin: AdminDep, webhook_id: str, body: WebhookUpdate) -> WebhookPublic:
    """Disable ({"active": false}: it gets nothing more, its pending deliveries are dropped) or enable it again.
    Needs an admin key."""
    return await run_in_threadpool(service.set_active, state, admin.project, webhook_id, body)


@router.get("/{webhook_id}/deliveries")
async def list_deliveries(
    state: StateDep,
    admin: AdminDep,
    webhook_id: str,
    offset: OffsetQuery = 0,
    limit: Annotated[int, Query(ge=1, le=service.MAX_DELIVERIES_PAGE)] = 100,
) -> DeliveriesPublic:
    """A page of the events sent (or still to send) to it, newest first: state, attempts, the last error."""
    return await run_in_threadpool(service.deliveries, state, admin.project, webhook_id, offset, limit)

"""Webhooks: a project's URLs for events (job.succeeded, job.failed, model.promoted, retrain.rejected). Each
event becomes one delivery per webhook; the fleet's loop (api/loops.py) sends it as JSON signed with the
webhook's secret (header X-Fitcycle-Signature: sha256=HMAC-SHA256(secret, body)), through the SSRF guard,
and retries with backoff until it is answered 2xx or its tries run out."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx

from api.errors import Problem, not_found
from api.schemas import DeliveriesPublic, DeliveryPublic, WebhookCreate, WebhookPublic, WebhooksPublic
from api.services.urlfetch import post_json
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope

MAX_ATTEMPTS = 6  # the first try and 5 retries, 2 s to 32 s apart
MAX_WEBHOOKS = 20  # per project: each event is one delivery per webhook, sent by one shared loop


def _public(h: domain.Webhook) -> WebhookPublic:
    return WebhookPublic(id=h.id, url=h.url, events=h.events, created_at=h.created_at)  # never the secret


def create(state: AppState, project: domain.Project, body: WebhookCreate) -> WebhookPublic:
    parts = urlsplit(body.url)
    try:
        httpx.URL(body.url)
    except (httpx.InvalidURL, ValueError):
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or any(ord(ch) <= 32 for ch in body.url):
        raise Problem(422, "Invalid webhook", "url: an http:// or https:// URL without spaces or control characters")
    with session_scope(state.sessions) as s:
        if len(repos.list_webhooks(s, project.id)) >= MAX_WEBHOOKS:
            raise Problem(422, "Too many webhooks", f"a project has at most {MAX_WEBHOOKS}; delete one first")
        hook = repos.create_webhook(
            s, project_id=project.id, url=body.url, events=sorted(set(body.events)), secret=body.secret
        )
    return _public(hook)


def list_all(state: AppState, project: domain.Project) -> WebhooksPublic:
    with session_scope(state.sessions) as s:
        data = [_public(h) for h in repos.list_webhooks(s, project.id)]
    return WebhooksPublic(data=data, count=len(data))


def delete(state: AppState, project: domain.Project, webhook_id: str) -> None:
    with session_scope(state.sessions) as s:
        if not repos.delete_webhook(s, project.id, webhook_id):
            raise not_found("webhook", webhook_id)


def deliveries(state: AppState, project: domain.Project, webhook_id: str) -> DeliveriesPublic:
    with session_scope(state.sessions) as s:
        if not any(h.id == webhook_id for h in repos.list_webhooks(s, project.id)):
            raise not_found("webhook", webhook_id)
        data = [DeliveryPublic.of(d) for d in repos.list_deliveries(s, project.id, webhook_id)]
    return DeliveriesPublic(data=data, count=len(data))


def signature(secret: str, body: bytes) -> str:
    """The X-Fitcycle-Signature header's value for a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def deliver_due(state: AppState) -> int:
    """Send every delivery whose time has come; returns how many were delivered."""
    from fastapi.concurrency import run_in_threadpool

    def due() -> list[tuple[domain.Delivery, domain.Webhook]]:
        with session_scope(state.sessions) as s:
            return repos.due_deliveries(s)

    def record(delivery: domain.Delivery, error: str | None) -> None:
        tries = delivery.attempts + 1
        retry = None if error is None or tries >= MAX_ATTEMPTS else datetime.now(UTC) + timedelta(seconds=2**tries)
        with session_scope(state.sessions) as s:
            repos.delivery_attempted(s, delivery.id, error, retry)

    delivered = 0
    for delivery, hook in await run_in_threadpool(due):
        body = json.dumps(
            {
                "id": delivery.id,
                "event": delivery.event,
                "created_at": delivery.created_at.isoformat(),
                "data": delivery.payload,
            }
        ).encode()
        headers = {
            "X-Fitcycle-Event": delivery.event,
            "X-Fitcycle-Delivery": delivery.id,
            "X-Fitcycle-Signature": signature(hook.secret, body),
        }
        try:
            status = await post_json(hook.url, body, headers, state.settings)
            error = None if 200 <= status < 300 else f"answered HTTP {status}"
        except Problem as exc:
            error = exc.detail
        except Exception as exc:  # one bad delivery must not stop the others (nor the loop)
            error = f"could not deliver ({type(exc).__name__})"
        await run_in_threadpool(record, delivery, error)
        delivered += error is None
    return delivered

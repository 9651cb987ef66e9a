"""Webhooks: a project's URLs for events (job.succeeded, job.failed, model.promoted, retrain.rejected). Each
event becomes one delivery per webhook; the delivery worker (api/deliveries.py) sends it as JSON, signed with
the webhook's secret and a timestamp, through the SSRF guard, and retries with backoff until it is answered 2xx
or its tries run out.

What a receiver checks (docs/webhooks.md): X-Fitcycle-Timestamp is the Unix time the attempt was signed;
X-Fitcycle-Signature is `sha256=` + HMAC-SHA256(secret, f"{timestamp}.".encode() + body). Refuse a signature
that does not match, or a timestamp more than REPLAY_WINDOW_SECONDS from your clock: a captured delivery
cannot be replayed later. X-Fitcycle-Delivery (the delivery's id, the same on every retry) tells retries of one
event apart from new events."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx

from api.errors import Problem, not_found
from api.schemas import (
    DeliveriesPublic,
    DeliveryPublic,
    WebhookCreate,
    WebhookPublic,
    WebhooksPublic,
    WebhookUpdate,
)
from api.services.urlfetch import post_json, vetted_address
from api.state import AppState
from core.config import Settings
from core.db import domain, repos
from core.db.session import session_scope

MAX_ATTEMPTS = 6  # the first try and 5 retries, 2 s to 32 s apart
MAX_WEBHOOKS = 20  # per project: each event is one delivery per webhook


REPLAY_WINDOW_SECONDS = 300  # what receivers are told to accept between the timestamp and their clock
MAX_DELIVERIES_PAGE = 500


def _public(h: domain.Webhook) -> WebhookPublic:
    return WebhookPublic(id=h.id, url=h.url, events=h.events, active=h.active, created_at=h.created_at)  # no secret


async def check_url(url: str, settings: Settings) -> None:
    """422 unless url is an http(s) URL the SSRF guard would send to (a public address): a webhook on a
    loopback or private address is refused when it is made, not on every delivery."""
    parts = urlsplit(url)
    try:
        httpx.URL(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except (httpx.InvalidURL, ValueError):
        parts, port = urlsplit(""), 0
    if parts.scheme not in ("http", "https") or not parts.hostname or any(ord(ch) <= 32 for ch in url):
        raise Problem(422, "Invalid webhook", "url: an http:// or https:// URL without spaces or control characters")
    try:
        await vetted_address(parts.hostname, port, settings.url_fetch_allow_hosts)
    except Problem as exc:
        raise Problem(422, "Invalid webhook", f"url: {exc.detail}") from None


def create(state: AppState, project: domain.Project, body: WebhookCreate) -> WebhookPublic:
    """Store a webhook whose URL check_url passed."""
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
    """Delete a webhook and its deliveries not yet sent: it gets nothing more (one already on its way ends)."""
    with session_scope(state.sessions) as s:
        if not repos.delete_webhook(s, project.id, webhook_id):
            raise not_found("webhook", webhook_id)


def set_active(state: AppState, project: domain.Project, webhook_id: str, body: WebhookUpdate) -> WebhookPublic:
    """Enable or disable a webhook: a disabled one gets nothing more (its pending deliveries are dropped)."""
    with session_scope(state.sessions) as s:
        hook = repos.set_webhook_active(s, project.id, webhook_id, body.active)
    if hook is None:
        raise not_found("webhook", webhook_id)
    return _public(hook)


def deliveries(
    state: AppState, project: domain.Project, webhook_id: str, offset: int = 0, limit: int = 100
) -> DeliveriesPublic:
    """A page of the webhook's deliveries, newest first; count is how many it has in all."""
    with session_scope(state.sessions) as s:
        if not any(h.id == webhook_id for h in repos.list_webhooks(s, project.id)):
            raise not_found("webhook", webhook_id)
        rows = repos.list_deliveries(s, project.id, webhook_id, limit, offset)
        data = [DeliveryPublic.of(d) for d in rows]
        count = repos.count_deliveries(s, project.id, webhook_id)
    return DeliveriesPublic(data=data, count=count)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Fitcycle-Signature header's value for a body sent at `timestamp` (Unix seconds)."""
    signed = f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def request_of(
    delivery: domain.Delivery, hook: domain.Webhook, now: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one attempt at a delivery, signed now."""
    body = json.dumps(
        {
            "id": delivery.id,
            "event": delivery.event,
            "created_at": delivery.created_at.isoformat(),
            "data": delivery.payload,
        }
    ).encode()
    timestamp = int(time.time() if now is None else now)
    headers = {
        "X-Fitcycle-Event": delivery.event,
        "X-Fitcycle-Delivery": delivery.id,
        "X-Fitcycle-Timestamp": str(timestamp),
        "X-Fitcycle-Signature": signature(hook.secret, timestamp, body),
    }
    return body, headers


def record_attempt(state: AppState, delivery: domain.Delivery, error: str | None) -> None:
    """Delivered, due again after a backoff (2 s, 4 s, ... 32 s), or failed after MAX_ATTEMPTS tries."""
    tries = delivery.attempts + 1
    retry = None if error is None or tries >= MAX_ATTEMPTS else datetime.now(UTC) + timedelta(seconds=2**tries)
    with session_scope(state.sessions) as s:
        repos.delivery_attempted(s, delivery.id, error, retry)


async def send(state: AppState, delivery: domain.Delivery, hook: domain.Webhook) -> str | None:
    """One attempt; the error it ended with, or None when the receiver answered 2xx."""
    body, headers = request_of(delivery, hook)
    try:
        status = await post_json(hook.url, body, headers, state.settings, state.settings.webhook_timeout_seconds)
    except Problem as exc:
        return exc.detail
    except Exception as exc:  # one bad delivery must not stop the others (nor the worker)
        return f"could not deliver ({type(exc).__name__})"
    return None if 200 <= status < 300 else f"answered HTTP {status}"

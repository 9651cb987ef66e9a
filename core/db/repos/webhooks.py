"""Webhooks and their deliveries: an event emitted in a transaction becomes one pending delivery per webhook
that asked for it (so it is sent only if the change commits), retried with backoff until delivered or failed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.db import domain as d
from core.db.models import DeliveryRow, WebhookRow, utcnow
from core.db.repos._rows import new_id, to


def create_webhook(s: Session, *, project_id: str, url: str, events: list[str], secret: str) -> d.Webhook:
    row = WebhookRow(id=new_id(), project_id=project_id, url=url, events=events, secret=secret)
    s.add(row)
    s.flush()
    return to(d.Webhook, row)


def list_webhooks(s: Session, project_id: str) -> list[d.Webhook]:
    rows = s.scalars(select(WebhookRow).where(WebhookRow.project_id == project_id).order_by(WebhookRow.created_at))
    return [to(d.Webhook, r) for r in rows]


def delete_webhook(s: Session, project_id: str, webhook_id: str) -> bool:
    done = s.execute(delete(WebhookRow).where(WebhookRow.id == webhook_id, WebhookRow.project_id == project_id))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def emit(s: Session, project_id: str, event: str, payload: dict[str, Any]) -> int:
    """Queue `event` for every webhook of the project that asked for it; returns how many deliveries."""
    hooks = [h for h in list_webhooks(s, project_id) if event in h.events]
    for hook in hooks:
        s.add(DeliveryRow(id=new_id(), project_id=project_id, webhook_id=hook.id, event=event, payload=payload))
    s.flush()
    return len(hooks)


def due_deliveries(s: Session, limit: int = 50) -> list[tuple[d.Delivery, d.Webhook]]:
    q = (
        select(DeliveryRow, WebhookRow)
        .join(WebhookRow, DeliveryRow.webhook_id == WebhookRow.id)
        .where(DeliveryRow.state == "pending", DeliveryRow.next_attempt_at <= utcnow())
        .order_by(DeliveryRow.next_attempt_at)
        .limit(limit)
    )
    return [(to(d.Delivery, r), to(d.Webhook, w)) for r, w in s.execute(q)]


def delivery_attempted(s: Session, delivery_id: str, error: str | None, retry_at: datetime | None) -> None:
    """Record an attempt: delivered (no error), pending again until retry_at, or failed (no retry_at)."""
    row = s.get(DeliveryRow, delivery_id)
    if row is None:
        return
    row.attempts += 1
    row.last_error = error
    if error is None:
        row.state, row.delivered_at = "delivered", utcnow()
    elif retry_at is not None:
        row.next_attempt_at = retry_at
    else:
        row.state = "failed"
    s.flush()


def list_deliveries(s: Session, project_id: str, webhook_id: str) -> list[d.Delivery]:
    rows = s.scalars(
        select(DeliveryRow)
        .where(DeliveryRow.project_id == project_id, DeliveryRow.webhook_id == webhook_id)
        .order_by(DeliveryRow.created_at)
    )
    return [to(d.Delivery, r) for r in rows]

"""Webhooks and their deliveries: an event emitted in a transaction becomes one pending delivery per webhook
that asked for it (so it is sent only if the change commits), retried with backoff until delivered or failed."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
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
    """Delete a webhook and every delivery of it not yet sent (a delivery claimed before is its last)."""
    done = s.execute(delete(WebhookRow).where(WebhookRow.id == webhook_id, WebhookRow.project_id == project_id))
    if done.rowcount:  # type: ignore[attr-defined]
        s.execute(delete(DeliveryRow).where(DeliveryRow.webhook_id == webhook_id))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def set_webhook_active(s: Session, project_id: str, webhook_id: str, active: bool) -> d.Webhook | None:
    """Enable or disable a webhook; a disabled one's pending deliveries are dropped (it gets nothing more)."""
    row = s.get(WebhookRow, webhook_id)
    if row is None or row.project_id != project_id:
        return None
    row.active = active
    if not active:
        s.execute(delete(DeliveryRow).where(DeliveryRow.webhook_id == webhook_id, DeliveryRow.state == "pending"))
    s.flush()
    return to(d.Webhook, row)


def emit(s: Session, project_id: str, event: str, payload: dict[str, Any]) -> int:
    """Queue `event` for every webhook of the project that asked for it; returns how many deliveries."""
    hooks = [h for h in list_webhooks(s, project_id) if event in h.events and h.active]
    for hook in hooks:
        s.add(DeliveryRow(id=new_id(), project_id=project_id, webhook_id=hook.id, event=event, payload=payload))
    s.flush()
    return len(hooks)


def projects_with_due_deliveries(s: Session, limit: int = 1000) -> list[str]:
    """The projects that have a delivery due now, the longest-waiting first."""
    q = (
        select(DeliveryRow.project_id, func.min(DeliveryRow.next_attempt_at).label("since"))
        .join(WebhookRow, DeliveryRow.webhook_id == WebhookRow.id)
        .where(DeliveryRow.state == "pending", DeliveryRow.next_attempt_at <= utcnow(), WebhookRow.active.is_(True))
        .group_by(DeliveryRow.project_id)
        .order_by("since")
        .limit(limit)
    )
    return [str(p) for p, _ in s.execute(q)]


def claim_due_deliveries(
    s: Session, project_id: str, limit: int, hold_seconds: float
) -> list[tuple[d.Delivery, d.Webhook]]:
    """Up to `limit` of a project's due deliveries, each claimed by a conditional update that moves its next
    attempt `hold_seconds` ahead: another process (another API replica) that read the same row claims nothing,
    and a process that dies with a claim leaves the delivery due again once the hold ends."""
    if limit <= 0:
        return []
    now = utcnow()
    q = (
        select(DeliveryRow, WebhookRow)
        .join(WebhookRow, DeliveryRow.webhook_id == WebhookRow.id)
        .where(
            DeliveryRow.project_id == project_id,
            DeliveryRow.state == "pending",
            DeliveryRow.next_attempt_at <= now,
            WebhookRow.active.is_(True),
        )
        .order_by(DeliveryRow.next_attempt_at)
        .limit(limit)
    )
    claimed = []
    for row, hook in s.execute(q).all():
        taken = s.execute(
            update(DeliveryRow)
            .where(DeliveryRow.id == row.id, DeliveryRow.state == "pending", DeliveryRow.next_attempt_at <= now)
            .values(next_attempt_at=now + timedelta(seconds=hold_seconds))
        )
        if taken.rowcount:  # type: ignore[attr-defined]
            claimed.append((to(d.Delivery, row), to(d.Webhook, hook)))
    return claimed


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


def list_deliveries(s: Session, project_id: str, webhook_id: str, limit: int, offset: int = 0) -> list[d.Delivery]:
    """A page of a webhook's deliveries, the newest first."""
    rows = s.scalars(
        select(DeliveryRow)
        .where(DeliveryRow.project_id == project_id, DeliveryRow.webhook_id == webhook_id)
        .order_by(DeliveryRow.created_at.desc(), DeliveryRow.id)
        .limit(limit)
        .offset(offset)
    )
    return [to(d.Delivery, r) for r in rows]


def count_deliveries(s: Session, project_id: str, webhook_id: str) -> int:
    q = select(func.count(DeliveryRow.id)).where(
        DeliveryRow.project_id == project_id, DeliveryRow.webhook_id == webhook_id
    )
    return int(s.scalar(q) or 0)

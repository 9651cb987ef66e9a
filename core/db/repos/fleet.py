"""Fleet-wide leases: a named piece of work that one process of the whole fleet does at a time (the retrain
policy loop), held by whoever took it until its lease expires."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db.models import FleetLeaseRow, utcnow
from core.db.repos._rows import utc


def hold_fleet_lease(s: Session, name: str, owner: str, seconds: float) -> bool:
    """Take or renew the fleet-wide lease `name` for `owner`; False while another process holds it."""
    now = utcnow()
    row = s.scalar(select(FleetLeaseRow).where(FleetLeaseRow.name == name).with_for_update())
    if row is None:
        s.add(FleetLeaseRow(name=name, owner=owner, expires_at=now + timedelta(seconds=seconds)))
        try:
            s.flush()
        except IntegrityError:  # another process made it first
            s.rollback()
            return False
        return True
    if row.owner != owner and utc(row.expires_at) > now:
        return False
    row.owner, row.expires_at = owner, now + timedelta(seconds=seconds)
    s.flush()
    return True


def release_fleet_lease(s: Session, name: str, owner: str) -> None:
    """Give the lease `name` up at once (only when `owner` still holds it), for the next process to take."""
    s.execute(delete(FleetLeaseRow).where(FleetLeaseRow.name == name, FleetLeaseRow.owner == owner))

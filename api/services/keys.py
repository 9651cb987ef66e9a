"""Keys over REST: make, list and revoke a project's keys, one transaction each."""

from __future__ import annotations

from datetime import timedelta

from api.errors import not_found
from api.schemas import KeyCreate, KeyCreated, KeyPublic, KeysPublic
from api.services import page
from api.state import AppState
from core.db import domain, repos
from core.db.models import utcnow
from core.db.session import session_scope


def create(state: AppState, admin: domain.Caller, body: KeyCreate) -> KeyCreated:
    expires = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    with session_scope(state.sessions) as s:
        key, record = repos.create_api_key(
            s, admin.project.id, name=body.name.strip(), admin=body.admin, expires_at=expires
        )
    return KeyCreated.of(record, key=key)


def list_all(state: AppState, admin: domain.Caller, offset: int = 0, limit: int | None = None) -> KeysPublic:
    """A page of the project's keys; count: all of them."""
    with session_scope(state.sessions) as s:
        keys = [k for _, k in repos.list_api_keys(s, admin.project.id)]
    return KeysPublic(data=[KeyPublic.of(k) for k in page(keys, offset, limit)], count=len(keys))


def revoke(state: AppState, admin: domain.Caller, key_id: str) -> KeysPublic:
    with session_scope(state.sessions) as s:
        key = next((k for _, k in repos.list_api_keys(s, admin.project.id) if k.id == key_id), None)
        if key is None:
            raise not_found("key", key_id[:40])
        repos.revoke_api_key(s, key.id)
    state.invalidations.publish(("key", key.id))  # every API process forgets the key's caller at once
    return list_all(state, admin)

"""Who is calling: projects, their API keys and web UI sessions, and the caller a credential stands for. Keys
and session tokens are stored as hashes only."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.orm import Session

from core.db import domain as d
from core.db.models import ApiKeyRow, ProjectRow, UiSessionRow, utcnow
from core.db.repos._rows import new_id, to, utc

KEY_PREFIX = "fc_"
SESSION_PREFIX = "fs_"


def hash_key(key: str) -> str:
    """SHA-256 of an API key (keys are 256-bit random, so a fast hash is enough)."""
    return hashlib.sha256(key.encode()).hexdigest()


# ----- projects ----------------------------------------------------------------------------------------
def get_or_create_project(s: Session, name: str) -> d.Project:
    row = s.scalar(select(ProjectRow).where(ProjectRow.name == name))
    if row is None:
        row = ProjectRow(id=new_id(), name=name)
        s.add(row)
        s.flush()
    return to(d.Project, row)


def get_project(s: Session, project_id: str) -> d.Project | None:
    row = s.get(ProjectRow, project_id)
    return to(d.Project, row) if row else None


def lock_project(s: Session, project_id: str) -> d.Project:
    """The project, its row locked until the transaction ends (PostgreSQL; SQLite writes one at a time): what
    two transactions that read and change its settings (the gold set) take first."""
    row = s.get(ProjectRow, project_id, with_for_update=True)
    assert row is not None, project_id
    return to(d.Project, row)


def update_project_settings(s: Session, project_id: str, changes: dict[str, Any]) -> d.Project:
    row = s.get(ProjectRow, project_id)
    assert row is not None, project_id
    row.settings = {**(row.settings or {}), **changes}
    s.flush()
    return to(d.Project, row)


def list_projects(s: Session) -> list[d.Project]:
    return [to(d.Project, r) for r in s.scalars(select(ProjectRow).order_by(ProjectRow.name))]


# ----- API keys ----------------------------------------------------------------------------------------
def create_api_key(
    s: Session, project_id: str, *, name: str = "", admin: bool = False, expires_at: datetime | None = None
) -> tuple[str, d.ApiKey]:
    """Make a new key for a project; only its hash is stored. Returns the key (shown once) and its record."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKeyRow(
        id=new_id(),
        project_id=project_id,
        prefix=key[:10],
        key_hash=hash_key(key),
        name=name,
        admin=admin,
        created_at=utcnow(),
        expires_at=expires_at,
    )
    s.add(row)
    s.flush()
    return key, to(d.ApiKey, row)


def list_api_keys(s: Session, project_id: str | None = None) -> list[tuple[str, d.ApiKey]]:
    """(project name, key record) of every key, oldest first; of one project when given."""
    q = select(ProjectRow.name, ApiKeyRow).join(ProjectRow, ApiKeyRow.project_id == ProjectRow.id)
    if project_id is not None:
        q = q.where(ApiKeyRow.project_id == project_id)
    return [(name, to(d.ApiKey, row)) for name, row in s.execute(q.order_by(ApiKeyRow.created_at))]


def find_api_keys(s: Session, ref: str) -> list[d.ApiKey]:
    """Keys matching a reference: the whole key, its id, or a prefix of the key (at least 6 characters)."""
    ref = ref.strip()
    rows = list(s.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(ref))))
    rows = rows or list(s.scalars(select(ApiKeyRow).where(ApiKeyRow.id == ref)))
    if not rows and len(ref) >= 6:
        rows = list(s.scalars(select(ApiKeyRow).where(ApiKeyRow.prefix.startswith(ref[:10], autoescape=True))))
    return [to(d.ApiKey, r) for r in rows]


def revoke_api_key(s: Session, key_id: str) -> d.ApiKey | None:
    """Mark a key revoked (once; revoking again keeps the first time)."""
    row = s.get(ApiKeyRow, key_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        s.flush()
    return to(d.ApiKey, row)


# ----- web UI sessions ---------------------------------------------------------------------------------
MAX_UI_SESSIONS_PER_KEY = 50  # a key's newest sessions; signing in past it ends its oldest


def create_ui_session(s: Session, key_id: str, days: int, replaces: str | None = None) -> str:
    """A new web UI session for a key: returns its token (only the hash is stored). The session it replaces (the
    token the same browser held before) ends; expired sessions of every key are deleted, and the key keeps its
    newest MAX_UI_SESSIONS_PER_KEY, so the table holds what is live and stays bounded."""
    if replaces:
        end_ui_session(s, replaces)
    purge_expired_ui_sessions(s)
    token = SESSION_PREFIX + secrets.token_urlsafe(32)
    s.add(UiSessionRow(token_hash=hash_key(token), key_id=key_id, expires_at=utcnow() + timedelta(days=days)))
    s.flush()
    newest = (
        select(UiSessionRow.token_hash)
        .where(UiSessionRow.key_id == key_id)
        .order_by(UiSessionRow.created_at.desc(), UiSessionRow.token_hash)
        .limit(MAX_UI_SESSIONS_PER_KEY)
    )
    s.execute(
        delete(UiSessionRow).where(
            UiSessionRow.key_id == key_id, UiSessionRow.token_hash.not_in(select(newest.subquery().c.token_hash))
        )
    )
    return token


def end_ui_session(s: Session, token: str) -> None:
    s.execute(delete(UiSessionRow).where(UiSessionRow.token_hash == hash_key(token)))


def end_ui_sessions_of_key(s: Session, key_id: str) -> int:
    """Sign a key out everywhere: every web UI session made with it ends. Returns how many there were."""
    done = s.execute(delete(UiSessionRow).where(UiSessionRow.key_id == key_id))
    return int(done.rowcount)  # type: ignore[attr-defined]


def purge_expired_ui_sessions(s: Session) -> int:
    """Delete the sessions whose expiry has passed (they are refused already); returns how many."""
    done = s.execute(delete(UiSessionRow).where(UiSessionRow.expires_at <= utcnow()))
    return int(done.rowcount)  # type: ignore[attr-defined]


def list_ui_sessions(s: Session, key_id: str, current: str | None = None) -> list[d.UiSession]:
    """A key's live web UI sessions, newest first; `current` (the asking browser's token) marks its own."""
    mine = hash_key(current) if current else None
    rows = s.scalars(
        select(UiSessionRow)
        .where(UiSessionRow.key_id == key_id, UiSessionRow.expires_at > utcnow())
        .order_by(UiSessionRow.created_at.desc(), UiSessionRow.token_hash)
    )
    return [
        d.UiSession(created_at=utc(r.created_at), expires_at=utc(r.expires_at), current=r.token_hash == mine)
        for r in rows
    ]


# ----- the caller --------------------------------------------------------------------------------------
def caller_for(s: Session, credential: tuple[str, str]) -> d.Caller | None:
    """The caller behind ("bearer", key) or ("session", token)."""
    kind, secret = credential
    return caller_for_session(s, secret) if kind == "session" else caller_for_key(s, secret)


def caller_for_key(s: Session, key: str) -> d.Caller | None:
    """The project and key record of a key that is neither revoked nor expired (looked up every time: a
    revoked key is refused at once)."""
    return _active_caller(s, ApiKeyRow.key_hash == hash_key(key))


def caller_for_session(s: Session, token: str) -> d.Caller | None:
    """The caller behind a web UI session that has not expired, made with a key that still works."""
    row = s.get(UiSessionRow, hash_key(token))
    if row is None or utc(row.expires_at) <= utcnow():
        return None
    return _active_caller(s, ApiKeyRow.id == row.key_id)


def _active_caller(s: Session, which: ColumnElement[bool]) -> d.Caller | None:
    """The project and record of the key `which` selects, when it is neither revoked nor expired."""
    found = s.execute(
        select(ProjectRow, ApiKeyRow)
        .join(ApiKeyRow, ApiKeyRow.project_id == ProjectRow.id)
        .where(which, ApiKeyRow.revoked_at.is_(None))
    ).first()
    if found is None:
        return None
    record = to(d.ApiKey, found[1])
    return d.Caller(to(d.Project, found[0]), record) if record.state == "active" else None

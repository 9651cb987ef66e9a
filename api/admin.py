"""Administration the CLI performs on the service's database: migrate, check, issue, list and revoke keys."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from api.lookup_cache import Invalidations
from core.config import Settings
from core.db import domain, repos
from core.db.models import utcnow
from core.db.session import head_revision, make_engine, make_sessionmaker, require_head, session_scope, upgrade


class KeyNotFound(LookupError):
    """No key, or more than one, matches what was given."""


def prepare_database(settings: Settings) -> None:
    """The embedded SQLite database is migrated on the spot; a configured one must already be at head."""
    if settings.database_url is None:
        upgrade(settings.sqlalchemy_url)
    else:
        require_head(make_engine(settings.sqlalchemy_url))


def migrate(settings: Settings) -> str:
    """Upgrade the database to the newest revision; returns it."""
    upgrade(settings.sqlalchemy_url)
    return head_revision()


def _sessions(settings: Settings) -> sessionmaker[Session]:
    prepare_database(settings)
    return make_sessionmaker(make_engine(settings.sqlalchemy_url))


def create_key(
    settings: Settings, project_name: str, *, name: str = "", admin: bool = True, expires_in_days: float | None = None
) -> tuple[str, str, str]:
    """Create the project if needed and a new key for it: (project name, project id, key). Keys made here
    are admin keys by default: they can make, list and revoke the project's other keys over REST."""
    expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    with session_scope(_sessions(settings)) as s:
        project = repos.get_or_create_project(s, project_name)
        key, _ = repos.create_api_key(s, project.id, name=name, admin=admin, expires_at=expires)
    return project.name, project.id, key


def list_keys(settings: Settings, project_name: str | None = None) -> list[tuple[str, domain.ApiKey]]:
    """(project name, key record) of every key, or of one project's."""
    with session_scope(_sessions(settings)) as s:
        if project_name is None:
            return repos.list_api_keys(s)
        project = next((p for p in repos.list_projects(s) if p.name == project_name), None)
        if project is None:
            raise KeyNotFound(f"no project named '{project_name}'")
        return repos.list_api_keys(s, project.id)


def revoke_key(settings: Settings, ref: str) -> domain.ApiKey:
    """Revoke the one key that `ref` names (the key itself, its id, or its prefix)."""
    with session_scope(_sessions(settings)) as s:
        found = repos.find_api_keys(s, ref)
        if len(found) != 1:
            why = "no key matches" if not found else f"{len(found)} keys match"
            raise KeyNotFound(
                f"{why} '{ref[:12]}'; give the whole key, its id or a longer prefix ('fitcycle keys list')"
            )
        revoked = repos.revoke_api_key(s, found[0].id)
    assert revoked is not None
    # The fleet's API processes forget the key's caller at once; embedded, `serve` keeps it at most
    # FITCYCLE_LOOKUP_CACHE_SECONDS (this process cannot reach its memory).
    Invalidations(settings.celery_broker_url, []).publish(("key", revoked.id))
    return revoked

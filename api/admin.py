"""Administration the CLI performs on the service's database: migrate, check, issue keys."""

from __future__ import annotations

from core.config import Settings
from core.db import repos
from core.db.session import head_revision, make_engine, make_sessionmaker, require_head, session_scope, upgrade


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


def create_key(settings: Settings, project_name: str) -> tuple[str, str, str]:
    """Create the project if needed and a new key for it: (project name, project id, key)."""
    prepare_database(settings)
    with session_scope(make_sessionmaker(make_engine(settings.sqlalchemy_url))) as s:
        project = repos.get_or_create_project(s, project_name)
        key = repos.create_api_key(s, project.id)
    return project.name, project.id, key

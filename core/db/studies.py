"""Optuna's storage on the platform's own database: every search's study lives in the tables migration 0007
made, so the API processes (which ask for trials and tell their ends) and the workers (which report each
epoch's objective and ask whether to prune) share one study the way Optuna runs distributed. No second
database, and no table made at run time: the tables come from the migration, and Optuna's own version check,
whose Alembic would read this database's alembic_version, is skipped."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.storages import RDBStorage


@functools.cache
def study_storage(url: str) -> RDBStorage:
    """One RDBStorage per database URL and process (it holds an engine and its pool)."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)  # a line per trial would drown the service's own log
    kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True, "pool_size": 2}
    )
    return optuna.storages.RDBStorage(
        url, engine_kwargs=kwargs, skip_compatibility_check=True, skip_table_creation=True
    )

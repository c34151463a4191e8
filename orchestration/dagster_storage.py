"""Dagster's PostgreSQL storage, keeping its connections.

dagster-postgres opens a new connection for every storage call outside the webserver (its
engines use ``NullPool``, so that many short-lived instances hold nothing open). A run worker
makes several calls per event: the daily run opened 942 connections for its 144 events, about
3 s of the run (``python -m benchmarks.daily --profile``). :class:`PooledPostgresStorage` is
dagster-postgres's storage with the pooled engines its webserver mode uses (one connection per
storage kept, more opened only while threads need them, each checked before use), without
a statement timeout.

Configured in dagster.yaml as ``storage: custom:`` (:func:`postgres_storage`); Dagster then
uses this storage's run, event-log and schedule storages directly.
"""

from __future__ import annotations

from typing import Any

from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)

# Connections opened beyond the kept one while several threads use a storage at once (the
# daemon's, the webserver's); returned to the server when they are done.
MAX_OVERFLOW = 10
# Reconnect a kept connection after this long (a server or proxy may drop idle ones).
POOL_RECYCLE_SECONDS = 3600


class PooledPostgresStorage(DagsterPostgresStorage):
    """``DagsterPostgresStorage`` whose run, event-log and schedule storages keep a pooled
    connection (the module doc says why)."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: Any = None, token_provider: Any = None) -> None:
        super().__init__(postgres_url, should_autocreate_tables, inst_data=inst_data,
                         token_provider=token_provider)
        for storage in (self.run_storage, self.event_log_storage, self.schedule_storage):
            _keep_connections(storage)

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> PooledPostgresStorage:
        return cls(postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   inst_data=inst_data,
                   token_provider=get_token_provider_from_config(config_value))


def _keep_connections(storage: Any) -> None:
    """Swap the storage's engine for a pooled one, as its webserver mode does, with pre-ping:
    a kept connection the server dropped (a restart, an idle timeout) is replaced when next
    used instead of failing that call. No statement timeout (runs' own queries, e.g. a
    backfill's, may take long; the webserver sets its own on top)."""
    kept = storage._engine
    options: dict[str, Any] = {
        "isolation_level": "AUTOCOMMIT", "pool_size": 1, "max_overflow": MAX_OVERFLOW,
        "pool_recycle": POOL_RECYCLE_SECONDS, "pool_pre_ping": True}
    if kept.url.query.get("options"):
        options["connect_args"] = {"options": kept.url.query["options"]}
    storage._engine = create_pg_engine(storage.postgres_url, storage._token_provider, **options)
    kept.dispose()


def postgres_storage(postgres_url: str | dict[str, str]) -> dict[str, Any]:
    """The ``storage`` section of a dagster.yaml on PostgreSQL: a ``postgresql+psycopg2://``
    URL, or ``{"env": NAME}``."""
    return {"custom": {"module": __name__, "class": PooledPostgresStorage.__name__,
                       "config": {"postgres_url": postgres_url}}}


def instance_yaml(postgres_url: str) -> str:
    """A dagster.yaml on PostgreSQL with telemetry off (tests, benchmarks, scratch homes)."""
    import yaml

    return yaml.safe_dump({"storage": postgres_storage(postgres_url),
                           "telemetry": {"enabled": False}}, sort_keys=False)

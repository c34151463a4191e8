"""Dagster's PostgreSQL storage, keeping its connections.

dagster-postgres opens a new connection for every storage call outside the webserver (its
engines use ``NullPool``, so that many short-lived instances hold nothing open). A run worker
makes several calls per event: the daily run opened 942 connections for its 144 events, about
3 s of the run (``python -m benchmarks.daily --profile``). :class:`PooledPostgresStorage` is
dagster-postgres's storage with the pooled engines its webserver mode uses (one connection per
storage kept, more opened only while threads need them, each checked before use), without
a statement timeout.

Its event log also records each asset check once per run (:class:`RunLevelCheckEventLog`):
Dagster 1.13 plans an unpartitioned check of a partitioned asset once per partition of the run
(the run's partition subset, whatever the check's own partitions), while the check's evaluation
in a ranged run is one record without a partition, which updates none of those rows. A
full-history backfill wrote 28 checks x 5,594 partitions = 157k "planned" rows (about 240 MB,
most of the backfill's bookkeeping time) that stayed "planned" for ever. With one planned row
per check and run, the evaluation resolves it; the partitions a check covered and failed are in
the evaluation's metadata (assets/market.py).

Configured in dagster.yaml as ``storage: custom:`` (:func:`postgres_storage`); Dagster then
uses this storage's run, event-log and schedule storages directly.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster_postgres import DagsterPostgresStorage, PostgresEventLogStorage
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)

from orchestration.dagster_private import AssetCheckEvaluationPlanned

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
        self._event_log_storage.dispose()
        self._event_log_storage = RunLevelCheckEventLog(
            postgres_url, should_autocreate_tables, token_provider=token_provider)
        for storage in (self.run_storage, self.event_log_storage, self.schedule_storage):
            _keep_connections(storage)

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> PooledPostgresStorage:
        return cls(postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   inst_data=inst_data,
                   token_provider=get_token_provider_from_config(config_value))


class RunLevelCheckEventLog(PostgresEventLogStorage):
    """dagster-postgres's event log storing one planned record per asset check and run
    (the module doc says why). The planned event itself is logged unchanged."""

    def store_asset_check_event(self, event: Any, event_id: int | None) -> None:
        dagster_event = event.dagster_event
        if (dagster_event is not None
                and dagster_event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED
                and dagster_event.event_specific_data.partitions_subset is not None):
            planned = dagster_event.event_specific_data
            # The same planned check, for the run as a whole.
            planned = AssetCheckEvaluationPlanned(asset_key=planned.asset_key,
                                                  check_name=planned.check_name)
            event = event._replace(dagster_event=dagster_event._replace(
                event_specific_data=planned))
        super().store_asset_check_event(event, event_id)


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

"""The instance's PostgreSQL storage keeps its connections (orchestration/dagster_storage.py):
a run of an asset with a blocking check opens a handful of connections, not several per event
as dagster-postgres's own storage does; runs, events and checks are stored as before."""

import time
from pathlib import Path

import dagster as dg
import psycopg
from conftest import PG_SERVER, scratch_database

from orchestration.dagster_storage import PooledPostgresStorage, instance_yaml

PARTITIONS = dg.DailyPartitionsDefinition("2024-01-01", end_date="2024-01-11")


@dg.asset(partitions_def=PARTITIONS,
          check_specs=[dg.AssetCheckSpec("positive", asset="probe", blocking=True)])
def probe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={"partition": context.partition_key},
        check_results=[dg.AssetCheckResult(check_name="positive", passed=True)])


def _sessions(database: str) -> int:
    """Connections ever opened to ``database`` (the server's statistics, flushed first)."""
    with psycopg.connect(f"postgresql://{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s",
                           (database,)).fetchone()
    assert row is not None
    return int(row[0])


def _three_runs(home: Path, config: str, database: str
               ) -> tuple[int, list[tuple[str, str | None]]]:
    """Connections opened by three runs of ``probe``, and what the instance stored of them
    (each check record's status and partition)."""
    home.mkdir()
    (home / "dagster.yaml").write_text(config, encoding="utf-8")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        before = _sessions(database)
        for day in ("2024-01-02", "2024-01-03", "2024-01-04"):
            assert dg.materialize([probe], instance=instance, partition_key=day).success
        latest = instance.get_latest_materialization_event(dg.AssetKey("probe"))
        assert latest is not None and latest.asset_materialization is not None
        assert latest.asset_materialization.partition == "2024-01-04"
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("probe"), "positive"), limit=50)
        stored = sorted(((c.status.value, c.partition) for c in checks), key=str)
    time.sleep(1.0)  # the server publishes session counts with its statistics, about once a second
    return _sessions(database) - before, stored


def test_a_run_keeps_its_connections(tmp_path: Path) -> None:
    with scratch_database("etf_pool") as pooled, scratch_database("etf_nullpool") as plain:
        kept, stored = _three_runs(
            tmp_path / "pooled", instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{pooled}"),
            pooled)
        opened, as_before = _three_runs(
            tmp_path / "plain", "storage:\n  postgres:\n    postgres_url: "
            f"postgresql+psycopg2://{PG_SERVER}/{plain}\ntelemetry:\n  enabled: false\n", plain)
    assert stored == as_before
    assert [status for status, _ in stored].count("SUCCEEDED") == 3
    # dagster-postgres's own storage opens one connection per call: dozens per run.
    assert opened > 60, opened
    assert kept <= 15, kept


def test_the_instance_uses_the_pooled_storage(tmp_path: Path) -> None:
    with scratch_database("etf_pool") as database:
        (tmp_path / "dagster.yaml").write_text(
            instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{database}"), encoding="utf-8")
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            assert isinstance(instance.get_ref().storage, PooledPostgresStorage)

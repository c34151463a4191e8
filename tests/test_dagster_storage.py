"""The instance's PostgreSQL storage keeps its connections (orchestration/dagster_storage.py):
a run of an asset with a blocking check opens a handful of connections, not several per event
as dagster-postgres's own storage does; runs, events and checks are stored as before."""

from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from conftest import PG_SERVER, scratch_database

from orchestration.dagster_storage import PooledPostgresStorage, instance_yaml

PARTITIONS = dg.DailyPartitionsDefinition("2024-01-01", end_date="2024-01-11")


@dg.asset(partitions_def=PARTITIONS,
          check_specs=[dg.AssetCheckSpec("positive", asset="probe", blocking=True)])
def probe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={"partition": context.partition_key},
        check_results=[dg.AssetCheckResult(check_name="positive", passed=True)])


class Connections:
    """Counts the database connections this process opens (SQLAlchemy's pool "connect" event,
    every engine's), while in its ``with`` block."""

    def __init__(self) -> None:
        self.opened = 0

    def _count(self, *_: object) -> None:
        self.opened += 1

    def __enter__(self) -> "Connections":
        sa.event.listen(sa.engine.Engine, "connect", self._count)
        return self

    def __exit__(self, *_: object) -> None:
        sa.event.remove(sa.engine.Engine, "connect", self._count)


def _three_runs(home: Path, config: str) -> tuple[int, list[tuple[str, str | None]]]:
    """Connections opened by three runs of ``probe``, and what the instance stored of them
    (each check record's status and partition)."""
    home.mkdir()
    (home / "dagster.yaml").write_text(config, encoding="utf-8")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        with Connections() as connections:
            for day in ("2024-01-02", "2024-01-03", "2024-01-04"):
                assert dg.materialize([probe], instance=instance, partition_key=day).success
        latest = instance.get_latest_materialization_event(dg.AssetKey("probe"))
        assert latest is not None and latest.asset_materialization is not None
        assert latest.asset_materialization.partition == "2024-01-04"
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("probe"), "positive"), limit=50)
        stored = sorted(((c.status.value, c.partition) for c in checks), key=str)
    return connections.opened, stored


def test_a_run_keeps_its_connections(tmp_path: Path) -> None:
    with scratch_database("etf_pool") as pooled, scratch_database("etf_nullpool") as plain:
        kept, stored = _three_runs(
            tmp_path / "pooled", instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{pooled}"))
        opened, as_before = _three_runs(
            tmp_path / "plain", "storage:\n  postgres:\n    postgres_url: "
            f"postgresql+psycopg2://{PG_SERVER}/{plain}\ntelemetry:\n  enabled: false\n")
    # Each run's check is one record, resolved by its evaluation; dagster-postgres's own storage
    # also keeps a "planned" record per partition that nothing resolves.
    assert stored == [("SUCCEEDED", None)] * 3
    assert sorted(as_before, key=str) == sorted(
        [("SUCCEEDED", None)] * 3 + [("PLANNED", d)
                                     for d in ("2024-01-02", "2024-01-03", "2024-01-04")],
        key=str)
    # dagster-postgres's own storage opens one connection per call: dozens per run.
    assert opened > 60, opened
    assert kept <= 15, kept


def test_the_instance_uses_the_pooled_storage(tmp_path: Path) -> None:
    with scratch_database("etf_pool") as database:
        (tmp_path / "dagster.yaml").write_text(
            instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{database}"), encoding="utf-8")
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            assert isinstance(instance.get_ref().storage, PooledPostgresStorage)


def test_a_kept_connection_the_server_drops_is_replaced(tmp_path: Path) -> None:
    """A PostgreSQL restart or an idle timeout ends the kept connections: the next storage
    call reconnects instead of failing (pre-ping)."""
    with scratch_database("etf_pool") as database:
        (tmp_path / "dagster.yaml").write_text(
            instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{database}"), encoding="utf-8")
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            assert dg.materialize([probe], instance=instance, partition_key="2024-01-02").success
            with sa.create_engine(f"postgresql+psycopg://{PG_SERVER}/postgres",
                                  isolation_level="AUTOCOMMIT").connect() as admin:
                ended = admin.execute(sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": database}).scalar()
            assert ended and ended >= 1
            assert dg.materialize([probe], instance=instance, partition_key="2024-01-03").success
            assert instance.get_runs_count() == 2


@dg.asset(partitions_def=PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run(),
          check_specs=[dg.AssetCheckSpec("positive", asset="ranged_probe", blocking=True)])
def ranged_probe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={"partitions": len(context.partition_keys)},
        check_results=[dg.AssetCheckResult(check_name="positive", passed=True)])


def test_a_ranged_run_records_its_check_once(tmp_path: Path) -> None:
    """A run over ten partitions plans and resolves one record of its (unpartitioned) check,
    not one planned record per partition that nothing resolves."""
    with scratch_database("etf_pool") as database:
        (tmp_path / "dagster.yaml").write_text(
            instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{database}"), encoding="utf-8")
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            ranged = dg.define_asset_job("ranged", [ranged_probe])
            job = dg.Definitions(assets=[ranged_probe], jobs=[ranged]).resolve_job_def("ranged")
            result = job.execute_in_process(instance=instance, tags={
                "dagster/asset_partition_range_start": "2024-01-01",
                "dagster/asset_partition_range_end": "2024-01-10"}, raise_on_error=False)
            checks = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(dg.AssetKey("ranged_probe"), "positive"), limit=50)
            assert result.success
            assert len(instance.get_materialized_partitions(dg.AssetKey("ranged_probe"))) == 10
    assert [(c.run_id, c.status.value, c.partition) for c in checks] == [
        (result.run_id, "SUCCEEDED", None)]

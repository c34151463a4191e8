"""The ledger migrates only into a database of its own: a database that already holds another
application's tables (a Dagster instance's storage, above all) is refused before Alembic runs,
while an empty database and an already-migrated ledger pass."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg
import pytest
from conftest import PG_SERVER, scratch_database

from orchestration.dagster_storage import instance_yaml
from trading.ledger import LedgerError, _migration_tables, metadata, migrate


def sa_url(database: str) -> str:
    return f"postgresql+psycopg://{PG_SERVER}/{database}"


def tables(database: str) -> set[str]:
    with psycopg.connect(f"postgresql://{PG_SERVER}/{database}") as conn:
        return {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def execute(database: str, *statements: str) -> None:
    with psycopg.connect(f"postgresql://{PG_SERVER}/{database}", autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]  (fixed test SQL)


def test_allowed_tables_are_exactly_what_the_migrations_create() -> None:
    ours = _migration_tables()
    assert set(metadata.tables) <= ours                      # the ledger's own tables
    assert {"paper_accounts", "paper_positions", "paper_orders", "paper_fills",
            "etf_ledger_alembic_version"} <= ours
    with scratch_database("etf_ledger") as name:
        migrate(sa_url(name))
        assert tables(name) == ours
        migrate(sa_url(name))                                # an up-to-date ledger passes
        assert tables(name) == ours


def test_a_dagster_database_is_refused(tmp_path: Path) -> None:
    with scratch_database("etf_dagster") as name:
        (tmp_path / "dagster.yaml").write_text(
            instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{name}"), encoding="utf-8")
        with dg.DagsterInstance.from_config(str(tmp_path)):
            pass                                             # creates Dagster's tables
        dagster_tables = tables(name)
        assert {"runs", "event_logs"} <= dagster_tables
        with pytest.raises(LedgerError) as info:
            migrate(sa_url(name), retry_seconds=5)
        message = str(info.value)
        assert f"ledger database {name!r}" in message
        assert f"holds {len(dagster_tables)} table(s)" in message
        assert "runs, event_logs" in message or "event_logs, runs" in message
        assert "needs a database of its own" in message
        assert "ETF_POSTGRES_URL" in message
        # Nothing of the ledger was created in Dagster's database.
        assert tables(name) == dagster_tables


@pytest.mark.parametrize(
    ("statements", "named"),
    [
        (["CREATE TABLE notes (id int)"], "notes"),
        (["CREATE VIEW report AS SELECT 1 AS x"], "report"),
        (["CREATE SCHEMA other", "CREATE TABLE other.runs (id int)"], "other.runs"),
        (["CREATE SCHEMA empty_schema"], "schema empty_schema"),
    ],
)
def test_a_migrated_ledger_with_a_foreign_object_is_refused(statements: list[str],
                                                            named: str) -> None:
    with scratch_database("etf_ledger") as name:
        migrate(sa_url(name))
        execute(name, *statements)
        with pytest.raises(LedgerError) as info:
            migrate(sa_url(name), retry_seconds=5)
        assert f"holds 1 table(s) or schema(s) that are not the ledger's: {named}." in str(
            info.value)


def test_a_foreign_table_is_refused_before_any_ledger_table_is_created() -> None:
    with scratch_database("etf_ledger") as name:
        execute(name, "CREATE TABLE alembic_version (version_num text)")
        with pytest.raises(LedgerError, match="alembic_version"):
            migrate(sa_url(name), retry_seconds=5)
        assert tables(name) == {"alembic_version"}


def test_objects_of_an_extension_do_not_count() -> None:
    """pg_buffercache puts a view into public; it belongs to the extension, not to another
    application, so the ledger still migrates (and migrates again)."""
    with scratch_database("etf_ledger") as name:
        execute(name, "CREATE EXTENSION pg_buffercache")
        migrate(sa_url(name))
        migrate(sa_url(name))
        assert tables(name) == _migration_tables()

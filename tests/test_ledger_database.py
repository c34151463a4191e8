"""The ledger migrates only into a database of its own: a database that already holds another
application's tables (a Dagster instance's storage, above all) is refused before Alembic runs,
while an empty database and an already-migrated ledger pass."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg
import pytest
from conftest import PG_SERVER, scratch_database

import trading.ledger as ledger_module
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


def test_the_kept_table_list_is_used_only_for_the_migrations_it_was_read_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table list kept beside the migrations' bytecode (a fresh process would spend half a
    second deriving it) is read back only for the same migration texts; a changed migration, a
    corrupt file or a list of another key is derived again, from the migrations."""
    derived = ledger_module._tables_created_by_migrations()
    assert derived == _migration_tables()
    migrations = tmp_path / "migrations"
    (migrations / "versions").mkdir(parents=True)
    for source in [ledger_module.MIGRATIONS_DIR / "env.py",
                   *sorted((ledger_module.MIGRATIONS_DIR / "versions").glob("*.py"))]:
        target = migrations / source.relative_to(ledger_module.MIGRATIONS_DIR)
        target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    (migrations / "script.py.mako").write_text(
        (ledger_module.MIGRATIONS_DIR / "script.py.mako").read_text(encoding="utf-8"))
    monkeypatch.setattr(ledger_module, "MIGRATIONS_DIR", migrations)
    kept = migrations / "__pycache__" / "ledger-tables.json"

    def fresh() -> frozenset[str]:
        ledger_module._migration_tables_of.cache_clear()
        return _migration_tables()

    assert fresh() == derived and kept.exists()               # derived once, then kept
    kept.write_text(kept.read_text().replace('"orders"', '"orders_planted"'))
    assert "orders_planted" in fresh()                        # the kept list is what is read
    (migrations / "versions" / "0001_ledger.py").write_text(
        (migrations / "versions" / "0001_ledger.py").read_text() + "\n# changed\n")
    assert fresh() == derived                                 # another text: derived again
    kept.write_text("{not json")
    assert fresh() == derived                                 # a corrupt file counts as absent


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

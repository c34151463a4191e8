"""A throwaway PostgreSQL-backed Dagster home for one benchmark measurement.

A fresh database on the local server and a temporary folder holding ``dagster/dagster.yaml``
that points at it (psycopg2 URL: dagster-postgres needs it); both are removed afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestration.dagster_storage import instance_yaml

PG_SERVER = os.environ.get("ETF_TEST_PG_SERVER", "postgres@127.0.0.1:5432")
_ADMIN = f"postgresql://{PG_SERVER}/postgres"


@dataclass(frozen=True)
class ScratchHome:
    root: Path  # the temporary folder (use it as ETF_HOME)
    dagster_home: Path  # holds dagster.yaml
    database: str

    def database_mb(self) -> float:
        import psycopg

        with psycopg.connect(_ADMIN) as conn:
            row = conn.execute("select pg_database_size(%s)", (self.database,)).fetchone()
        return float(row[0]) / 2**20 if row else 0.0


@contextmanager
def scratch_database(prefix: str = "etf_bench") -> Iterator[str]:
    """A fresh database on the local server (its name), dropped afterwards."""
    import psycopg

    database = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        yield database
    finally:
        with psycopg.connect(_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@contextmanager
def scratch_postgres_home() -> Iterator[ScratchHome]:
    with scratch_database() as database, tempfile.TemporaryDirectory() as tmp:
        dagster_home = Path(tmp) / "dagster"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text(
            instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{database}"), encoding="utf-8")
        yield ScratchHome(root=Path(tmp), dagster_home=dagster_home, database=database)

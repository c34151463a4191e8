"""Shared fixtures: the real market data, a fresh PostgreSQL database per test session with a
Dagster instance on dagster-postgres, and settings for each data source."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from orchestration.instance import configure_event_batching
from orchestration.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ETF_SHARED_DATA", ROOT.parent / "shared" / "data"))
PG_SERVER = os.environ.get("ETF_TEST_PG_SERVER", "postgres@127.0.0.1:5432")

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
configure_event_batching()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "cn_etf_morphkyan_raw").is_dir():
        pytest.fail(
            f"real market data not found at {SHARED_DATA}: the tests read ../shared/data beside "
            "the repository (set ETF_SHARED_DATA to its location)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server, dropped at the end of the session."""
    name = f"etf_test_{uuid.uuid4().hex[:10]}"
    admin = f"postgresql://{PG_SERVER}/postgres"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_SERVER} is not reachable ({exc}); run `make services`")
    yield name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_instance(tmp_path_factory: pytest.TempPathFactory, pg_database: str
                ) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance whose run, event-log and schedule storage is dagster-postgres."""
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text(
        "storage:\n"
        "  postgres:\n"
        f"    postgres_url: postgresql+psycopg2://{PG_SERVER}/{pg_database}\n"
        "telemetry:\n"
        "  enabled: false\n",
        encoding="utf-8",
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings isolated in tmp_path (storage, MLflow, Dagster home)."""

    def _make(**overrides: Any) -> Settings:
        overrides.setdefault("home", tmp_path / "etf_home")
        return load_settings(**overrides)

    return _make

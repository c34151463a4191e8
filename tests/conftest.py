"""Shared fixtures: the real market data, a fresh PostgreSQL database per test session with a
Dagster instance on dagster-postgres, and settings for each data source."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import psycopg
import pytest
import yaml

from orchestration.dagster_storage import instance_yaml
from orchestration.instance import configure_event_batching
from orchestration.settings import DATASET_CONFIG_DIR, Settings, load_settings
from resources.parquet_io import PartitionedParquetIOManager
from rotation.costs import CostModel
from rotation.risk import RiskLimits
from trading.account import Account

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ETF_SHARED_DATA", ROOT.parent / "shared" / "data"))
PG_SERVER = os.environ.get("ETF_TEST_PG_SERVER", "postgres@127.0.0.1:5432")
# Signs the test Redis cache entries (settings refuse a redis_url without one); fixed so every
# test process and the subprocesses they start verify each other's entries.
TEST_CACHE_SECRET = os.environ.get("ETF_TEST_CACHE_SECRET") or hashlib.sha256(
    b"etf-rotation tests: not a production secret").hexdigest()

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
    name = new_database("etf_test")
    yield name
    drop_database(name)


@pytest.fixture(scope="session")
def pg_instance(tmp_path_factory: pytest.TempPathFactory, pg_database: str
                ) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance whose run, event-log and schedule storage is dagster-postgres."""
    with postgres_instance(tmp_path_factory.mktemp("dagster_home"), pg_database) as instance:
        yield instance


@contextmanager
def postgres_instance(home: Path, database: str) -> Iterator[dg.DagsterInstance]:
    """A dagster-postgres instance on ``database``, its dagster.yaml in ``home``."""
    (home / "dagster.yaml").write_text(
        instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{database}"), encoding="utf-8")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings isolated in tmp_path (storage, MLflow, Dagster home)."""

    def _make(**overrides: Any) -> Settings:
        overrides.setdefault("home", tmp_path / "etf_home")
        return load_settings(**overrides)

    return _make


# -- the execution stage on real data --------------------------------------------------------

EXECUTION_START = "2021-01-04"
# The stored history ends on a Friday; the paper venue fills at the next session's open.
EXECUTION_SIGNAL_DAY = "2023-12-29"
EXECUTION_FILL_DAY = "2024-01-02"


def paper_account(account_id: str = "paper-test", **fields: Any) -> Account:
    """An account with the default cost model (2 bp, 5 minimum, lots of 100) and limits."""
    return Account(**{"account_id": account_id, "initial_cash": 1_000_000.0,
                      "costs": CostModel(), "limits": RiskLimits(),
                      "quote_lookback_sessions": 5, **fields})


def copy_dataset(shared: Path, dataset: str, root: Path, symbols: tuple[str, ...]) -> Path:
    """A few funds of a Parquet dataset of ../shared/data (its files and symbols table) under
    ``root`` with the shipped dataset config as ``root/dataset.yaml``: a source to corrupt."""
    src = shared / dataset
    (root / "parquet").mkdir(parents=True)
    for symbol in symbols:
        shutil.copy(src / "parquet" / f"{symbol}.parquet", root / "parquet")
    table = pd.read_csv(src / "symbols.csv", dtype=str)
    table.loc[table["code"].isin(symbols)].to_csv(root / "symbols.csv", index=False)
    spec = yaml.safe_load((DATASET_CONFIG_DIR / f"{dataset}.yaml").read_text(encoding="utf-8"))
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), "utf-8")
    return root


def session_digests(storage: Path, assets: tuple[str, ...]) -> dict[str, str]:
    """``<asset>/<session>`` → a digest of the session's stored rows and dtypes (sessions stored
    empty included), read through the IO manager: a year file holds many sessions."""
    io = PartitionedParquetIOManager(base_path=str(storage))
    out = {}
    for asset in assets:
        key = dg.AssetKey(asset)
        sessions = io.stored_partitions(key)
        frame = io.load_partitions(key, sessions)
        days = frame["date"].dt.strftime("%Y-%m-%d") if len(frame) else pd.Series([], dtype=str)
        rows = dict(tuple(frame.groupby(days, sort=False))) if len(frame) else {}
        for session in sessions:
            part = rows.get(session, frame.iloc[0:0])
            digest = hashlib.sha256(repr(list(part.dtypes.items())).encode())
            digest.update(pd.util.hash_pandas_object(part, index=False).to_numpy().tobytes())
            out[f"{asset}/{session}"] = digest.hexdigest()
    return out


def new_database(prefix: str) -> str:
    """A fresh, empty database on the local server (its name)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(f"postgresql://{PG_SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_SERVER} is not reachable ({exc}); run `make services`")
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(f"postgresql://{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """:func:`new_database`, dropped when the block ends."""
    name = new_database(prefix)
    try:
        yield name
    finally:
        drop_database(name)


@pytest.fixture
def ledger_url() -> Iterator[str]:
    """A fresh, empty ledger database (postgresql+psycopg URL)."""
    name = new_database("etf_ledger")
    yield f"postgresql+psycopg://{PG_SERVER}/{name}"
    drop_database(name)


class ExecutionMarket:
    """cn_etf_morphkyan_raw stored from 2021-01-04 to the signal day, researched through
    target_portfolio on a dagster-postgres instance; ``settings`` adds a ledger and a clock."""

    def __init__(self, home: Path, dataset: Path, instance: dg.DagsterInstance,
                 shared: Path) -> None:
        self.home, self.dataset, self.instance, self.shared = home, dataset, instance, shared
        self.signal_day, self.fill_day = EXECUTION_SIGNAL_DAY, EXECUTION_FILL_DAY

    def settings(self, ledger_url: str | None, as_of: str | None = None,
                 **execution: Any) -> Settings:
        return load_settings(
            home=self.home, partitions_start=EXECUTION_START, postgres_url=ledger_url,
            redis_url=os.environ.get("ETF_TEST_REDIS_URL", "redis://127.0.0.1:6379/3"),
            cache_secret=TEST_CACHE_SECRET,
            market_data={"source": "files", "dataset": str(self.dataset),
                         "files_root": str(self.shared / "cn_etf_morphkyan_raw")},
            execution={"as_of": as_of or self.signal_day, **execution})


@pytest.fixture(scope="session")
def execution_market(tmp_path_factory: pytest.TempPathFactory, shared_data: Path
                     ) -> Iterator[ExecutionMarket]:
    import yaml

    from orchestration.definitions import build_definitions
    from orchestration.runs import rebuild_research, run_range

    home = tmp_path_factory.mktemp("execution_home")
    config = yaml.safe_load((ROOT / "config/datasets/cn_etf_morphkyan_raw.yaml").read_text())
    config["history_end"] = EXECUTION_SIGNAL_DAY
    dataset = home / "cn_etf_morphkyan_raw_to_signal_day.yaml"
    dataset.write_text(yaml.safe_dump(config), encoding="utf-8")
    name = new_database("etf_exec_dagster")
    (home / "dagster").mkdir()
    (home / "dagster" / "dagster.yaml").write_text(
        instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{name}"), encoding="utf-8")
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        market = ExecutionMarket(home, dataset, instance, shared_data)
        settings = market.settings(None)
        defs = build_definitions(settings)
        assert run_range(defs, instance, EXECUTION_START, EXECUTION_SIGNAL_DAY,
                         log_level="WARNING").success
        assert all(r.success for r in rebuild_research(defs, instance))
        yield market
    drop_database(name)


# One `make demo` per session, shared by the modules that read what it stored.
from demo_home import demo  # noqa: E402, F401

# -- parallel runs (`make test` runs pytest-xdist) --------------------------------------------

# Modules sharing a session fixture run on one worker, so the fixture is built once.
SHARED_FIXTURE_GROUPS = {
    "demo": ("test_demo", "test_api_research", "test_proxy", "test_researcher_view"),
    "execution": ("test_compliance_report", "test_drills", "test_execution_faults",
                  "test_execution_pipeline", "test_execution_safety", "test_intraday_monitor",
                  "test_operations_e2e"),
}
# The longest groups start first, so the last one to finish is a short one (longest first).
LONGEST_FIRST = ("demo", "execution", "test_backfill_pipeline", "test_three_strategies",
                 "test_daily_schedule", "test_vnpy_daily", "test_vnpy_venue",
                 "test_console_research", "test_hot_reload", "test_strategies_side_by_side",
                 "test_classic_pipeline", "test_walk_forward_pipeline", "test_api_strategies",
                 "test_walk_forward_chain", "test_code_locations", "test_fan_out")


def xdist_group_of(module: str) -> str:
    """The group of a test module: its shared-fixture group, else the module itself (its
    module-scoped fixtures are then built once)."""
    return next((group for group, modules in SHARED_FIXTURE_GROUPS.items() if module in modules),
                module)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        group = xdist_group_of(item.path.stem)
        return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)   # stable: each module keeps its own order


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Whole groups to a worker, in collection order (the longest first). Not --dist
    loadgroup: pytest 9 ignores the group suffix xdist 3.8 writes into the node ids."""
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group_of(Path(nodeid.split("::", 1)[0]).stem)

    config.option.loadscopereorder = False   # keep LONGEST_FIRST, not "most tests first"
    return ByGroup(config, log)

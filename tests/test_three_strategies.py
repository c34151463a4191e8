"""Issue 15 end to end on the real data (cn_etf_akshare_qfq_2020), through Dagster on
PostgreSQL: the rotation strategy and two classic ones run side by side (the shared stages once),
their comparison, and one account netting the rotation with a classic strategy by risk parity:
the daily path approves one netted target, execution_job sends one set of orders, and every fill
is attributed to the strategies, whose units, cash and P&L sum to the account's.

The history starts on 2023-01-03 (the rotation warms up 250 sessions) and the stored data ends
on the signal day, 2026-04-30 (the files go on: the paper venue fills on 2026-05-06, the
session after the May holidays)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from conftest import PG_SERVER, ROOT, scratch_database

from orchestration.definitions import build_definitions
from orchestration.runs import full_history, rebuild_research, run_range
from orchestration.settings import Settings, load_settings
from resources.deployment import deployed
from resources.parquet_io import PartitionedParquetIOManager
from trading.account import Allocation
from trading.ledger import Ledger
from trading.models import SignalStatus

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
DATASET = "cn_etf_akshare_qfq_2020"
START = "2023-01-03"
SIGNAL_DAY = "2026-04-30"
FILL_DAY = "2026-05-06"
ROTATION, MA_CROSS, MACD = "etf_rotation_akshare", "ma_cross_akshare", "macd_akshare"
ACCOUNT = "paper-main"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _settings(home: Path, dataset: Path, files: Path, ledger: str, as_of: str) -> Settings:
    return load_settings(
        home=home, partitions_start=START, strategy=ROTATION, strategies=[MA_CROSS, MACD],
        postgres_url=ledger,
        market_data={"source": "files", "dataset": str(dataset), "files_root": str(files)},
        execution={"as_of": as_of, "allocation": Allocation(
            strategies=(ROTATION, MA_CROSS), method="risk_parity")})


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory, shared_data: Path,
         pg_instance: dg.DagsterInstance) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("three_strategies")
    config = yaml.safe_load((ROOT / f"config/datasets/{DATASET}.yaml").read_text())
    config["history_end"] = SIGNAL_DAY
    dataset = home / f"{DATASET}_to_signal_day.yaml"
    dataset.write_text(yaml.safe_dump(config), encoding="utf-8")
    with scratch_database("etf_three_ledger") as name:
        ledger_url = f"postgresql+psycopg://{PG_SERVER}/{name}"
        settings = _settings(home, dataset, shared_data / DATASET, ledger_url, SIGNAL_DAY)
        defs = build_definitions(settings)
        start, end = full_history(defs)
        assert run_range(defs, pg_instance, start, end, log_level="WARNING").success
        rebuilds = {name: rebuild_research(defs, pg_instance, prefix=prefix)
                    for name, prefix in ((ROTATION, ""), (MA_CROSS, f"{MA_CROSS}_"),
                                         (MACD, f"{MACD}_"))}
        compared = defs.resolve_job_def("strategy_comparison_job").execute_in_process(
            instance=pg_instance, run_config=QUIET, raise_on_error=False)
        daily = defs.resolve_job_def("daily_job").execute_in_process(
            instance=pg_instance, partition_key=SIGNAL_DAY, run_config=QUIET,
            raise_on_error=False)
        ledger = Ledger(ledger_url)
        try:
            yield {"settings": settings, "defs": defs, "rebuilds": rebuilds,
                   "compared": compared, "daily": daily, "ledger": ledger, "home": home,
                   "dataset": dataset, "files": shared_data / DATASET,
                   "ledger_url": ledger_url}
        finally:
            ledger.dispose()


def _io(defs: dg.Definitions) -> PartitionedParquetIOManager:
    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    assert isinstance(io, PartitionedParquetIOManager)
    return io


def test_three_strategies_run_side_by_side_on_one_factor_panel(desk) -> None:
    rebuilds = desk["rebuilds"]
    assert all(r.success for runs in rebuilds.values() for r in runs)
    made = {name: [e.asset_key.to_user_string() for r in runs
                   for e in r.get_asset_materialization_events() if e.asset_key]
            for name, runs in rebuilds.items()}
    everything = [k for keys in made.values() for k in keys]
    assert everything.count("factors") == 1 and "factors" in made[ROTATION]
    for classic in (MA_CROSS, MACD):   # no screening of their own, no shared stage again
        assert {k.split("/", 1)[1] for k in made[classic]} == {
            "wfo_windows", "wfo_results", "oos_backtest", "oos_positions", "target_portfolio"}
        assert all(k.startswith(f"{classic}/") for k in made[classic])


def test_the_comparison_holds_every_strategy(desk) -> None:
    assert desk["compared"].success
    frame = pd.read_parquet(_io(desk["defs"]).path_for(dg.AssetKey("strategy_comparison")))
    assert set(frame["strategy"]) == {ROTATION, MA_CROSS, MACD}
    first = frame.sort_values("date").groupby("strategy")["equity"].first()
    assert (first == 1.0).all()


def test_the_account_approves_one_netted_target_with_each_strategys_units(desk) -> None:
    daily, ledger = desk["daily"], desk["ledger"]
    assert daily.success
    [signal] = ledger.signals(ACCOUNT)
    assert signal.status is SignalStatus.APPROVED, signal.reasons
    assert signal.strategy == f"{ROTATION}+{MA_CROSS}"
    parts = ledger.signal_parts(signal.signal_id)
    assert parts is not None and parts.wishes
    assert {s for by in parts.wishes.values() for s in by} <= {ROTATION, MA_CROSS}


def test_execution_sends_one_set_of_orders_and_attributes_every_fill(
        desk, pg_instance: dg.DagsterInstance) -> None:
    defs, ledger = desk["defs"], desk["ledger"]
    [signal] = ledger.signals(ACCOUNT)
    executed = defs.resolve_job_def("execution_job").execute_in_process(
        instance=pg_instance, raise_on_error=False, run_config={
            **QUIET, "ops": {"execute_signal_op": {"config": {"signal_id": signal.signal_id}}}})
    assert executed.success
    orders = ledger.orders(signal_id=signal.signal_id)
    assert orders and len({(o.symbol, o.side) for o in orders if o.parent_order_id is None}) \
        == len([o for o in orders if o.parent_order_id is None])   # one order per fund
    # The next session: the paper venue fills at the open; the book is reported.
    settings = _settings(desk["home"], desk["dataset"], desk["files"], desk["ledger_url"],
                         FILL_DAY)
    report = build_definitions(settings).resolve_implicit_global_asset_job_def(
    ).execute_in_process(instance=pg_instance, run_config=QUIET, raise_on_error=False,
                         asset_selection=[dg.AssetKey("positions_report")])
    assert report.success
    fills = ledger.fills(ACCOUNT)
    assert fills
    for fill in fills:
        shares = ledger.fill_attribution(fill.fill_id).values()
        assert sum(abs(s.units) for s in shares) == fill.quantity
        assert float(sum(s.commission for s in shares)) == pytest.approx(fill.commission)
    positions = ledger.positions(ACCOUNT)
    prices = {s: p.cost / p.quantity for s, p in positions.items()}  # any price: sums hold
    books = ledger.strategy_books(ACCOUNT, prices)
    assert set(books) <= {ROTATION, MA_CROSS}
    for symbol, position in positions.items():
        assert sum(b.positions.get(symbol, 0) for b in books.values()) == position.quantity
    cash_moved = ledger.cash(ACCOUNT) - ledger.initial_cash(ACCOUNT)
    assert sum(b.cash for b in books.values()) == pytest.approx(cash_moved, abs=1e-6)
    equity = ledger.cash(ACCOUNT) + sum(p.quantity * prices[s] for s, p in positions.items())
    assert sum(b.pnl for b in books.values()) == pytest.approx(
        equity - ledger.initial_cash(ACCOUNT), abs=1e-6)

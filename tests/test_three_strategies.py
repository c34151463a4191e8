"""Issue 15 end to end on the real data (cn_etf_akshare_qfq_2020), through Dagster on
PostgreSQL: the rotation strategy and two classic ones run side by side (the shared stages once),
their comparison, and two accounts: one netting the rotation with a classic strategy by risk
parity, a second trading the other classic strategy. The daily path approves one target per
account, each account's sensor launches its execution job, which sends one set of orders, and
every fill is attributed to the strategies, whose units, cash and P&L sum to the account's.

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
ACCOUNT, SECOND = "paper-main", "paper-two"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _settings(home: Path, dataset: Path, files: Path, ledger: str, as_of: str) -> Settings:
    return load_settings(
        home=home, partitions_start=START, strategy=ROTATION, strategies=[MA_CROSS, MACD],
        postgres_url=ledger,
        market_data={"source": "files", "dataset": str(dataset), "files_root": str(files)},
        execution={"as_of": as_of, "allocation": Allocation(
            strategies=(ROTATION, MA_CROSS), method="risk_parity"),
            "accounts": [{"account_id": SECOND, "initial_cash": 500_000.0,
                          "allocation": {"strategies": [MACD]}}]})


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
    [second] = ledger.signals(SECOND)       # the second account's gate, in the same daily run
    assert second.status is SignalStatus.APPROVED, second.reasons
    assert second.strategy == MACD and ledger.signal_parts(second.signal_id) is None


def _sensor_runs(defs: dg.Definitions, instance: dg.DagsterInstance, sensor_name: str
                 ) -> list[dg.ExecuteInProcessResult]:
    """One tick of an account's approved_signal_sensor; the runs it asks for, executed."""
    sensor = defs.resolve_sensor_def(sensor_name)
    with dg.build_sensor_context(instance=instance, definitions=defs,
                                 resources={"ledger": defs.resources["ledger"]}) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return [defs.resolve_job_def(sensor.job_name).execute_in_process(
        instance=instance, run_config={**QUIET, **request.run_config}, tags=request.tags,
        raise_on_error=False) for request in result.run_requests or []]


def test_each_accounts_sensor_sends_one_set_of_orders_and_every_fill_is_attributed(
        desk, pg_instance: dg.DagsterInstance) -> None:
    defs, ledger = desk["defs"], desk["ledger"]
    for account, sensor in ((ACCOUNT, "approved_signal_sensor"),
                            (SECOND, "paper_two_approved_signal_sensor")):
        [signal] = ledger.signals(account)
        [run] = _sensor_runs(defs, pg_instance, sensor)
        assert run.success and run.dagster_run.tags["etf/signal_id"] == signal.signal_id
        parents = [o for o in ledger.orders(signal_id=signal.signal_id)
                   if o.parent_order_id is None]
        assert parents and {o.account_id for o in parents} == {account}
        assert len({(o.symbol, o.side) for o in parents}) == len(parents)   # one per fund
    # The next session: the paper venue fills at the open; both books are reported.
    settings = _settings(desk["home"], desk["dataset"], desk["files"], desk["ledger_url"],
                         FILL_DAY)
    report = build_definitions(settings).resolve_implicit_global_asset_job_def(
    ).execute_in_process(instance=pg_instance, run_config=QUIET, raise_on_error=False,
                         asset_selection=[dg.AssetKey("positions_report"),
                                          dg.AssetKey(["paper_two", "positions_report"])])
    assert report.success
    _books_sum_to_the_account(ledger, ACCOUNT, {ROTATION, MA_CROSS})
    # One strategy: its signal names it and each fill belongs to it through its signal; the
    # strategy's book is the account's own (nothing to split).
    [second] = ledger.signals(SECOND)
    fills = ledger.fills(SECOND)
    assert second.strategy == MACD and fills
    assert {f.fill_id for f in ledger.fills(SECOND, signal_id=second.signal_id)} == {
        f.fill_id for f in fills}
    assert ledger.cash(SECOND) < ledger.initial_cash(SECOND) == 500_000.0


def _books_sum_to_the_account(ledger: Ledger, account: str, strategies: set[str]) -> None:
    fills = ledger.fills(account)
    assert fills
    for fill in fills:
        shares = ledger.fill_attribution(fill.fill_id).values()
        assert sum(abs(s.units) for s in shares) == fill.quantity
        assert float(sum(s.commission for s in shares)) == pytest.approx(fill.commission)
    positions = ledger.positions(account)
    prices = {s: p.cost / p.quantity for s, p in positions.items()}  # any price: sums hold
    books = ledger.strategy_books(account, prices)
    assert set(books) <= strategies
    for symbol, position in positions.items():
        assert sum(b.positions.get(symbol, 0) for b in books.values()) == position.quantity
    cash_moved = ledger.cash(account) - ledger.initial_cash(account)
    assert sum(b.cash for b in books.values()) == pytest.approx(cash_moved, abs=1e-6)
    equity = ledger.cash(account) + sum(p.quantity * prices[s] for s, p in positions.items())
    assert sum(b.pnl for b in books.values()) == pytest.approx(
        equity - ledger.initial_cash(account), abs=1e-6)

"""US funds by configuration alone (issue 13): the two US datasets in ../shared/data run from raw
bars to the target portfolio with a dataset YAML, a strategy YAML and settings only — tickers,
USD, single-share lots, zero commission with the SEC fee on sales, XNYS sessions, SPY as the
benchmark. The chain runs through Dagster on PostgreSQL over the real files; its wall time and
peak memory are printed (``pytest -s``)."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from conftest import postgres_instance, scratch_database

from orchestration.definitions import build_definitions, strategy_for
from orchestration.runs import full_history, rebuild_research, run_range
from orchestration.settings import Settings
from resources.deployment import deployed
from resources.market_data import MarketDataResource
from resources.parquet_io import PartitionedParquetIOManager

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

# dataset → (strategy, first session of the partitions, a ticker of each class in the data)
US = {
    "us_etf_phainia_yf_adjusted": ("us_rotation_sectors", "2021-01-04",
                                   {"SPY": "equity", "TLT": "bond", "GLD": "commodity",
                                    "VNQ": "real_estate"}),
    "us_etf_taa_dashboard_yf": ("us_rotation_taa", "2020-07-01",
                                {"SPY": "equity", "IEF": "bond", "BIL": "cash",
                                 "DBC": "commodity"}),
}


@pytest.fixture(scope="module")
def us_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dg.DagsterInstance]:
    """A dagster-postgres instance of its own: these assets share their keys with the other
    datasets' chains, whose tests count the partitions they stored."""
    with scratch_database("etf_us") as database, postgres_instance(
            tmp_path_factory.mktemp("us_dagster_home"), database) as instance:
        yield instance


def _settings(home: Path, shared_data: Path, dataset: str) -> Settings:
    return Settings(home=home, partitions_start=US[dataset][1],
                    market_data={"source": "files", "dataset": dataset,
                                 "files_root": str(shared_data / dataset)})


@pytest.mark.parametrize("dataset", sorted(US))
def test_us_dataset_reads_as_its_market(dataset: str, shared_data: Path,
                                        tmp_path: Path) -> None:
    settings = _settings(tmp_path, shared_data, dataset)
    assert settings.schedule_timezone == "America/New_York"
    defs = build_definitions(settings)
    market_data = deployed(defs, "market_data", MarketDataResource)
    market = market_data.market()
    assert (market.name, market.currency, market.lot_size, market.calendar) == (
        "us_funds", "USD", 1, "XNYS")
    instruments = {i.symbol: i for i in market_data.instruments()}
    assert {"VIX", "VXO", "VUSTX"}.isdisjoint(instruments)  # indices and a mutual fund
    for symbol, klass in US[dataset][2].items():
        assert instruments[symbol].instrument_class == klass
        assert instruments[symbol].price_limit is None
        assert instruments[symbol].same_session_sell
    bars = market_data.load("2024-03-01", "2024-03-29")
    assert bars.issues.empty
    assert set(bars.bars["symbol"]) == set(instruments)
    assert bars.bars["date"].dt.dayofweek.max() <= 4
    strategy = strategy_for(settings)
    assert strategy.name == US[dataset][0] and strategy.universe.benchmark == "SPY"
    backtest = strategy.backtest_config()
    assert (backtest.commission_bps, backtest.min_commission, backtest.lot_size) == (0, 0, 1)
    assert backtest.sell_fee_bps == pytest.approx(0.278)  # SEC Section 31: 27.80 USD/million


def test_us_total_return_factor_from_adjusted_close(shared_data: Path, tmp_path: Path) -> None:
    """taa: traded (split-adjusted) OHLC with Yahoo's Adj Close beside it → a factor."""
    dataset = "us_etf_taa_dashboard_yf"
    market_data = deployed(build_definitions(_settings(tmp_path, shared_data, dataset)),
                           "market_data", MarketDataResource)
    bars = market_data.load("2025-09-22", "2025-09-26").bars
    spy = bars.loc[bars["symbol"] == "SPY"].set_index("date")
    raw = pd.read_csv(shared_data / dataset / "data/SPY.csv.gz", skiprows=4, header=None,
                      names=["date", "adj", "close", "high", "low", "open", "volume"],
                      parse_dates=["date"]).set_index("date").loc[spy.index]
    assert (spy["close"] == raw["close"]).all()
    assert (spy["close"] * spy["adj_factor"]).to_numpy() == pytest.approx(raw["adj"].to_numpy(),
                                                                         rel=1e-12)


@pytest.mark.parametrize("dataset", sorted(US))
def test_us_chain_runs_to_the_target_portfolio(dataset: str, shared_data: Path,
                                               tmp_path: Path,
                                               us_instance: dg.DagsterInstance) -> None:
    settings = _settings(tmp_path, shared_data, dataset)
    defs = build_definitions(settings)
    started = time.perf_counter()
    start, end = full_history(defs)
    market = run_range(defs, us_instance, start, end, log_level="WARNING")
    assert market.success
    results = rebuild_research(defs, us_instance)
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{dataset}: {start}..{end} raw bars → target portfolio in {wall:.1f} s, "
          f"peak RSS {peak_mb:,.0f} MB")
    assert [r.success for r in results] == [True, True, True], \
        [r.dagster_run.job_name for r in results if not r.success]
    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    target = pd.read_parquet(io.path_for(dg.AssetKey("target_portfolio")))
    tickers = set(deployed(defs, "market_data", MarketDataResource).load(end, end)
                  .bars["symbol"])
    held = target.loc[target["weight"] > 0]
    assert set(held["symbol"]) <= tickers and not held.empty
    assert held["weight"].sum() <= 1 + 1e-9
    report = us_instance.get_latest_materialization_event(dg.AssetKey("oos_backtest"))
    assert report is not None
    meta = report.asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["currency"].value == "USD"
    assert meta["benchmark"].value == "SPY"

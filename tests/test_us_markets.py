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

from orchestration.definitions import account_of, build_definitions, strategy_for
from orchestration.runs import full_history, rebuild_research, run_range
from orchestration.settings import Settings
from resources.deployment import deployed
from resources.market_data import MarketDataResource
from resources.parquet_io import PartitionedParquetIOManager
from rotation.config_paths import DATASET_CONFIG_DIR
from rotation.costs import CostModel
from rotation.market import load_market
from rotation.sources.files import DatasetConfigError, FileMarketSource, load_dataset_spec
from rotation.strategy import StrategyConfigError, load_strategy, strategy_from_dict

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
    # The after-close run: 17:00 New York (an hour after the 16:00 close), from the profile.
    assert (settings.schedule_timezone, settings.schedule_cron) == (
        "America/New_York", "0 17 * * 1-5")
    defs = build_definitions(settings)
    schedule = defs.get_schedule_def("daily_after_close")
    assert (schedule.cron_schedule, schedule.execution_timezone) == (
        "0 17 * * 1-5", "America/New_York")
    market_data = deployed(defs, "market_data", MarketDataResource)
    market = market_data.market()
    assert (market.name, market.currency, market.lot_size, market.calendar) == (
        "us_funds", "USD", 1, "XNYS")
    assert market_data.calendar.name == "XNYS"
    instruments = {i.symbol: i for i in market_data.instruments()}
    assert {"VIX", "VXO", "VUSTX"}.isdisjoint(instruments)  # indices and a mutual fund
    # Tickers as the files name them, each with its issuer's name from the dataset YAML.
    assert all(market.symbol_scheme.parse(s) == s and s.isupper() for s in instruments)
    assert instruments["SPY"].name == "SPDR S&P 500 ETF Trust"
    assert all(i.name for i in instruments.values())
    # The fee schedule: no commission, the SEC fee (27.80 USD per million) on sales only.
    charged = CostModel.of_market(market.fees, lot_size=market.lot_size, slippage_bps=0.0)
    assert charged.fee(1_000_000.0, "buy") == 0.0
    assert charged.fee(1_000_000.0, "sell") == pytest.approx(27.8)
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
    backtest = strategy.backtest_config().costs
    assert (backtest.commission_bps, backtest.min_commission, backtest.lot_size) == (0, 0, 1)
    assert backtest.sell_fee_bps == pytest.approx(0.278)  # SEC Section 31: 27.80 USD/million
    # The paper venue charges what the backtest charges: the account's cost model is the
    # backtest's.
    venue = account_of(settings, strategy).costs
    assert venue == backtest
    assert (venue.lot_size, venue.fee(1_000_000.0, "buy")) == (1, 0.0)
    assert venue.fee(1_000_000.0, "sell") == pytest.approx(27.8)
    assert strategy.tracking_params()["costs"]["currency"] == "USD"


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
    rss_before = _rss_mb("VmRSS")
    reset = _reset_peak_rss()
    cpu = _cpu_seconds()
    started = time.perf_counter()
    start, end = full_history(defs)
    market = run_range(defs, us_instance, start, end, log_level="WARNING")
    assert market.success
    results = rebuild_research(defs, us_instance)
    wall = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu
    # This chain's own high-water mark where the kernel lets us reset it (Linux), else the
    # process's since it started.
    peak = _rss_mb("VmHWM") if reset else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{dataset}: {start}..{end} raw bars → target portfolio in {wall:.1f} s wall "
          f"({cpu:.1f} s CPU), peak RSS {peak:,.0f} MB "
          f"({'this chain' if reset else 'process lifetime'}: {peak - rss_before:+,.0f} MB over "
          f"the {rss_before:,.0f} MB held before it)")
    assert [r.success for r in results] == [True, True, True], \
        [r.dagster_run.job_name for r in results if not r.success]
    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    target = pd.read_parquet(io.path_for(dg.AssetKey("target_portfolio")))
    tickers = set(deployed(defs, "market_data", MarketDataResource).load(end, end)
                  .bars["symbol"])
    held = target.loc[target["weight"] > 0]
    assert set(held["symbol"]) <= tickers and not held.empty
    scheme = load_market("us_funds").symbol_scheme
    assert all(scheme.parse(s) == s for s in target["symbol"]), list(target["symbol"])
    assert held["weight"].sum() <= 1 + 1e-9
    report = us_instance.get_latest_materialization_event(dg.AssetKey("oos_backtest"))
    assert report is not None
    meta = report.asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["currency"].value == "USD"
    assert meta["benchmark"].value == "SPY"


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux: ``5`` into /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def _rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MB; NaN where /proc has none."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return float("nan")
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- configuration alone: what a user gets wrong is named ----------------------------------------

def test_a_file_name_that_is_no_ticker_is_a_named_issue(shared_data: Path, tmp_path: Path
                                                        ) -> None:
    """A price file whose name is no ticker is reported with the file, not read as NaN bars."""
    spec = load_dataset_spec(DATASET_CONFIG_DIR / "us_etf_taa_dashboard_yf.yaml")
    (tmp_path / "data").mkdir()
    src = shared_data / "us_etf_taa_dashboard_yf" / "data" / "SPY.csv.gz"
    (tmp_path / "data" / "SPY.csv.gz").write_bytes(src.read_bytes())
    (tmp_path / "data" / "S&P 500 copy.csv.gz").write_bytes(src.read_bytes())
    source = FileMarketSource(tmp_path, spec)
    assert [i.symbol for i in source.instruments()] == ["SPY"]
    loaded = source.load("2025-09-22", "2025-09-26")
    assert set(loaded.bars["symbol"]) == {"SPY"} and len(loaded.bars) == 5
    assert loaded.issues[["source", "rule"]].values.tolist() == [
        ["us_etf_taa_dashboard_yf/data/S&P 500 copy.csv.gz", "source_symbols"]]
    assert "names no symbol of this market (us_ticker)" in loaded.issues["message"].iloc[0]


def test_a_symbol_in_the_dataset_yaml_must_be_a_ticker(tmp_path: Path) -> None:
    """Symbols in a dataset YAML are read in its market's scheme (``spy`` is SPY) and one that
    is no ticker is an error naming the entry."""
    text = (DATASET_CONFIG_DIR / "us_etf_phainia_yf_adjusted.yaml").read_text(encoding="utf-8")
    lower = tmp_path / "lower.yaml"
    lower.write_text(text.replace('exclude: ["VIX", "VXO", "VUSTX"]',
                                  'exclude: ["vix", "VXO", "VUSTX"]'), encoding="utf-8")
    assert load_dataset_spec(lower).universe.exclude == ["VIX", "VXO", "VUSTX"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace('exclude: ["VIX", "VXO", "VUSTX"]',
                                'exclude: ["^VIX", "VXO", "VUSTX"]'), encoding="utf-8")
    with pytest.raises(DatasetConfigError,
                       match=r"not a symbol of market us_funds .*universe\.exclude\[0\] '\^VIX'"):
        load_dataset_spec(bad)


def test_us_strategy_rules_come_from_the_market() -> None:
    """Lots and duties are the market's; a broker's commission is the only override; a symbol
    of another market or a contradicting ``universe.market`` is named."""
    base = load_strategy("us_rotation_taa").to_dict()

    def with_(section: str, **values: object) -> dict[str, object]:
        return {**base, section: {**base[section], **values}}

    broker = strategy_from_dict(with_("costs", commission_bps=1.0, min_commission=1.0))
    bt = broker.backtest_config().costs
    assert (bt.commission_bps, bt.min_commission, bt.lot_size) == (1.0, 1.0, 1)
    assert bt.sell_fee_bps == pytest.approx(0.278)
    for section, values, where in (
            ("costs", {"lot_size": 100}, r"costs\.lot_size: 100 differs from market us_funds"),
            ("universe", {"benchmark": "510300"}, r"universe\.benchmark: '510300' is not a "),
            ("universe", {"market": "cn_funds"}, r"universe\.market: 'cn_funds' differs")):
        with pytest.raises(StrategyConfigError, match=where):
            strategy_from_dict(with_(section, **values))
    # The benchmark defaults to the market's; explicit lists name their market.
    no_benchmark = {**base, "universe": {k: v for k, v in base["universe"].items()
                                         if k not in {"benchmark", "market"}}}
    assert strategy_from_dict(no_benchmark).universe.benchmark == "SPY"
    listed = {**base, "universe": {"symbols": ["SPY", "QQQ", "IWM", "EFA", "EEM", "TLT"],
                                   "market": "us_funds", "defensive": "TLT"}}
    assert strategy_from_dict(listed).universe.benchmark == "SPY"
    del listed["universe"]["market"]
    with pytest.raises(StrategyConfigError, match=r"'SPY' is not a fund code"):
        strategy_from_dict(listed)

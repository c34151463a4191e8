"""The built-in generated sample market (``rotation.sources.sample``).

Statistics are recomputed here with plain pandas / numpy / scipy on the generated bars.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rotation.bars import BAR_COLUMNS
from rotation.sources import sample
from rotation.sources.sample import (
    SAMPLE_LATE_LISTING,
    SAMPLE_SPLIT,
    SAMPLE_SUSPENSION,
    SOURCE,
    SampleMarketSpec,
    generate_sample_market,
    load_sample_bars,
    sample_instruments,
)

SPEC = SampleMarketSpec()
# XSHG trading days per year (SSE statistics): 2019 244, 2020 243, 2021 243, 2022 242,
# 2023 242, 2024 242, 2025 243.
XSHG_SESSIONS_2019_2025 = 244 + 243 + 243 + 242 + 242 + 242 + 243


def _data_root() -> Path:
    env = os.environ.get("ETF_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return generate_sample_market(SPEC)


@pytest.fixture(scope="module")
def limits() -> dict[str, float]:
    return {i.symbol: i.price_limit for i in sample_instruments(SPEC)}


@pytest.fixture(scope="module")
def adjusted_returns(bars: pd.DataFrame) -> pd.DataFrame:
    """Close-to-close adjusted returns over each fund's own consecutive bars (long frame)."""
    b = bars.sort_values(["symbol", "date"]).copy()
    b["adj_close"] = b["close"] * b["adj_factor"]
    b["ret"] = b.groupby("symbol")["adj_close"].pct_change()
    return b


@pytest.fixture(scope="module")
def wide_returns(bars: pd.DataFrame) -> pd.DataFrame:
    adj = (bars["close"] * bars["adj_factor"]).rename("adj")
    panel = pd.concat([bars[["date", "symbol"]], adj], axis=1).pivot(
        index="date", columns="symbol", values="adj")
    return np.log(panel).diff()


def _equity(instruments=None) -> list[str]:
    return [i.symbol for i in (instruments or sample_instruments(SPEC))
            if i.asset_class.startswith("equity")]


# -- determinism ------------------------------------------------------------------------------
def test_generation_is_bit_identical(bars: pd.DataFrame) -> None:
    sample._generate.cache_clear()  # regenerate from scratch, not from the memo
    again = generate_sample_market(SampleMarketSpec())
    pd.testing.assert_frame_equal(bars, again, check_exact=True)
    assert bars.equals(again)


def test_seed_changes_the_market(bars: pd.DataFrame) -> None:
    other = generate_sample_market(SampleMarketSpec(seed=SPEC.seed + 1))
    assert len(other) == len(bars)  # same universe and sessions
    assert not np.allclose(other["close"].to_numpy(), bars["close"].to_numpy())


def test_a_fund_does_not_depend_on_later_funds(bars: pd.DataFrame) -> None:
    small = generate_sample_market(SampleMarketSpec(n_funds=8))
    assert small["symbol"].nunique() == 8
    first8 = set(small["symbol"])
    pd.testing.assert_frame_equal(
        small.reset_index(drop=True),
        bars.loc[bars["symbol"].isin(first8)].reset_index(drop=True),
        check_exact=True,
    )


def test_callers_get_a_copy(bars: pd.DataFrame) -> None:
    mine = generate_sample_market(SPEC)
    mine.loc[:, "close"] = -1.0
    assert (generate_sample_market(SPEC)["close"] > 0).all()


def test_invalid_fund_count() -> None:
    with pytest.raises(ValueError, match="n_funds"):
        generate_sample_market(SampleMarketSpec(n_funds=0))


# -- universe and sessions ---------------------------------------------------------------------
def test_universe_of_twenty_generated_funds(bars: pd.DataFrame) -> None:
    instruments = sample_instruments(SPEC)
    symbols = [i.symbol for i in instruments]
    assert len(instruments) == 20
    assert symbols == sorted(symbols)
    assert set(bars["symbol"]) == set(symbols)
    for inst in instruments:
        assert inst.name.startswith("SAMPLE ")
        assert "generated" in inst.name and "not a real fund" in inst.name
        assert inst.exchange == ("SZ" if inst.symbol.startswith("15") else "SH")
    assert (bars["source"] == SOURCE).all()
    assert SOURCE == "sample:generated"
    assert {i.symbol: i.price_limit for i in instruments}["588110"] == 0.20
    classes = {i.asset_class for i in instruments}
    assert {"bond_gov_10y", "commodity(gold)", "equity_broad", "equity_sector"} <= classes


def test_codes_are_not_real_dataset_codes() -> None:
    root = _data_root()
    files = [root / "cn_etf_morphkyan_raw" / "symbols.csv",
             root / "cn_etf_akshare_qfq_2020" / "symbols.csv"]
    if not all(f.is_file() for f in files):
        pytest.skip(f"real datasets not found under {root}")
    real = set().union(*(set(pd.read_csv(f, dtype=str)["code"]) for f in files))
    assert len(real) > 60
    assert not {i.symbol for i in sample_instruments(SPEC)} & real


def test_sessions_cover_six_plus_years_of_xshg(bars: pd.DataFrame) -> None:
    dates = pd.DatetimeIndex(sorted(bars["date"].unique()))
    assert dates[0] == pd.Timestamp("2019-01-02")
    assert dates[-1] == pd.Timestamp("2025-12-31")
    assert len(dates) == XSHG_SESSIONS_2019_2025 == 1699
    assert (dates[-1] - dates[0]).days / 365.25 > 6.9
    assert (dates.dayofweek < 5).all()
    for holiday in ("2024-10-01", "2024-10-07", "2024-02-12", "2025-01-28", "2020-01-24"):
        assert pd.Timestamp(holiday) not in dates
    per_fund = bars.groupby("symbol").size()
    events = {SAMPLE_SUSPENSION[0], SAMPLE_LATE_LISTING[0]}
    assert (per_fund.drop(list(events)) == 1699).all()
    assert per_fund[SAMPLE_SUSPENSION[0]] == 1699 - len(SAMPLE_SUSPENSION[1])
    assert list(bars.columns) == list(BAR_COLUMNS)
    assert not bars.duplicated(["date", "symbol"]).any()


def test_load_sample_bars_filters_dates(bars: pd.DataFrame) -> None:
    result = load_sample_bars(SPEC, "2024-09-30", "2024-10-08")
    assert sorted(result.bars["date"].unique()) == [pd.Timestamp("2024-09-30"),
                                                    pd.Timestamp("2024-10-08")]
    assert len(result.bars) == 40
    assert result.issues.empty
    assert result.sources == [f"sample:generated(seed={SPEC.seed})"]
    expected = bars.loc[bars["date"].between("2024-09-30", "2024-10-08")].reset_index(drop=True)
    pd.testing.assert_frame_equal(result.bars, expected)
    assert len(load_sample_bars(SPEC).bars) == len(bars)
    assert load_sample_bars(SPEC, start="2025-12-31").bars["date"].nunique() == 1


# -- documented events ------------------------------------------------------------------------
def test_suspension_rows_are_absent(bars: pd.DataFrame) -> None:
    symbol, days = SAMPLE_SUSPENSION
    fund = set(bars.loc[bars["symbol"] == symbol, "date"])
    for day in pd.to_datetime(days):
        assert day not in fund
        # Other funds trade on those sessions.
        assert (bars["date"] == day).sum() == 19
    assert pd.Timestamp("2021-08-09") in fund and pd.Timestamp("2021-08-13") in fund


def test_split_halves_raw_and_doubles_factor(adjusted_returns: pd.DataFrame,
                                             limits: dict[str, float]) -> None:
    symbol, ex_date, ratio = SAMPLE_SPLIT
    assert ratio == 2.0
    f = adjusted_returns.loc[adjusted_returns["symbol"] == symbol].set_index("date")
    ex = pd.Timestamp(ex_date)
    prev = f.index[f.index.get_loc(ex) - 1]
    assert prev == pd.Timestamp("2022-07-15")
    assert (f.loc[:prev, "adj_factor"] == 1.0).all()
    assert (f.loc[ex:, "adj_factor"] == 2.0).all()
    raw_ratio = f.loc[ex, "close"] / f.loc[prev, "close"]
    assert 0.5 * (1 - limits[symbol]) <= raw_ratio <= 0.5 * (1 + limits[symbol])
    adj_ret = f.loc[ex, "adj_close"] / f.loc[prev, "adj_close"] - 1.0
    assert abs(adj_ret) < limits[symbol]
    # Raw prices before and after sit on different levels, adjusted ones on the same level.
    raw_before = f.loc[:prev, "close"].tail(20).mean()
    raw_after = f.loc[ex:, "close"].head(20).mean()
    assert raw_after / raw_before == pytest.approx(0.5, rel=0.15)
    adj_before = f.loc[:prev, "adj_close"].tail(20).mean()
    adj_after = f.loc[ex:, "adj_close"].head(20).mean()
    assert adj_after / adj_before == pytest.approx(1.0, rel=0.15)
    # No other fund has a factor other than 1.
    others = adjusted_returns.loc[adjusted_returns["symbol"] != symbol]
    assert (others["adj_factor"] == 1.0).all()


def test_late_listing(bars: pd.DataFrame) -> None:
    symbol, first = SAMPLE_LATE_LISTING
    fund = bars.loc[bars["symbol"] == symbol].sort_values("date")
    assert fund["date"].iloc[0] == pd.Timestamp(first)
    assert fund["date"].iloc[-1] == pd.Timestamp("2025-12-31")
    # Listed at 1.000: the first close is within one day's limit of it.
    assert 0.9 <= fund["close"].iloc[0] <= 1.1
    assert len(fund) == ((bars["date"] >= pd.Timestamp(first)).groupby(bars["date"]).any()).sum()


# -- bar sanity -------------------------------------------------------------------------------
def test_ohlc_ordering_and_positive_prices(bars: pd.DataFrame) -> None:
    o, h, low, c = (bars[k] for k in ("open", "high", "low", "close"))
    assert (low > 0).all()
    assert (low <= np.minimum(o, c)).all()
    assert (h >= np.maximum(o, c)).all()
    assert (h > low).all()  # a non-zero range on every bar
    # Exchange tick of 0.001 CNY.
    for col in ("open", "high", "low", "close"):
        ticks = bars[col].to_numpy() * 1000.0
        np.testing.assert_allclose(ticks, np.round(ticks), atol=1e-6)


def test_adjusted_returns_within_price_limits(adjusted_returns: pd.DataFrame,
                                              limits: dict[str, float]) -> None:
    r = adjusted_returns.dropna(subset=["ret"])
    bound = r["symbol"].map(limits)
    assert (r["ret"].abs() < bound).all()
    assert r["ret"].abs().max() > 0.09  # limits are approached, not just respected
    # The STAR-style fund uses its wider 20 % band on some day.
    assert r.loc[r["symbol"] == "588110", "ret"].abs().max() > 0.10


def test_amount_over_volume_inside_the_day_range(bars: pd.DataFrame) -> None:
    vwap = bars["amount"] / bars["volume"]
    assert (bars["volume"] >= 100).all()
    assert (bars["volume"] % 100 == 0).all()  # whole lots
    assert ((vwap >= bars["low"]) & (vwap <= bars["high"])).all()
    assert bars["amount"].notna().all() and (bars["amount"] > 0).all()


def test_fat_tails_in_equity_funds(wide_returns: pd.DataFrame) -> None:
    equity = _equity()
    assert len(equity) == 18  # all but the bond and the gold fund
    for symbol in equity:
        r = wide_returns[symbol].dropna().to_numpy()
        assert stats.kurtosis(r, fisher=False) > 3.0, symbol


def test_equity_funds_are_positively_correlated(wide_returns: pd.DataFrame) -> None:
    equity = _equity()
    corr = wide_returns[equity].corr().to_numpy()
    off = corr[~np.eye(len(equity), dtype=bool)]
    assert off.min() > 0.2
    assert off.mean() > 0.4
    # Bond and gold funds are only loosely tied to the broad equity fund.
    for diversifier in ("511110", "518110"):
        assert abs(wide_returns[diversifier].corr(wide_returns["510010"])) < 0.3


def test_volatility_levels_are_plausible(wide_returns: pd.DataFrame) -> None:
    ann = wide_returns.std() * np.sqrt(244)
    assert ann["511110"] < 0.05  # 10Y treasury bond fund
    assert (ann[_equity()] > 0.12).all() and (ann[_equity()] < 0.6).all()

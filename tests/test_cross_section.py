"""Per-date cross-section processing (``rotation.cross_section``) and ``rotation.adjust``.

Every expectation is recomputed independently, one date (row) at a time, with plain pandas /
numpy / scipy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rotation.adjust import ADJUSTED_COLUMNS, adjust_bars
from rotation.calendar import get_calendar
from rotation.cross_section import (
    BASE_FIELDS,
    CrossSectionConfig,
    build_cross_sections,
    coverage,
    market_beta,
    neutralize,
    process,
    row_quantile,
    standardize,
    wide,
    winsorize,
)

SYMBOLS = [f"F{i:02d}" for i in range(12)]


@pytest.fixture
def panel() -> pd.DataFrame:
    """Fat-tailed values with outliers and holes; one date with only two values, one empty."""
    rng = np.random.default_rng(7)
    values = rng.standard_t(3, size=(8, len(SYMBOLS)))
    values[0, 3] = 25.0
    values[1, 5] = -40.0
    values[2, [1, 4, 9]] = np.nan
    values[6, 2:] = np.nan  # two funds only
    values[7, :] = np.nan  # nobody
    dates = pd.bdate_range("2024-01-02", periods=8)
    return pd.DataFrame(values, index=dates, columns=SYMBOLS)


# -- winsorize --------------------------------------------------------------------------------
def test_winsorize_quantile(panel: pd.DataFrame) -> None:
    cfg = CrossSectionConfig(winsorize="quantile", lower_quantile=0.1, upper_quantile=0.9)
    out = winsorize(panel, cfg)
    assert out.index.equals(panel.index) and out.columns.equals(panel.columns)
    for date, row in panel.iterrows():
        valid = row.dropna()
        if valid.empty:
            assert out.loc[date].isna().all()
            continue
        lo, hi = valid.quantile(0.1), valid.quantile(0.9)
        expected = row.clip(lo, hi)
        np.testing.assert_allclose(out.loc[date].to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert out.iloc[0, 3] < 25.0 and out.iloc[1, 5] > -40.0  # the outliers were pulled in
    assert out.isna().equals(panel.isna())  # holes stay holes, nothing filled


@pytest.mark.parametrize("q", [0.0, 0.025, 0.1, 1 / 3, 0.5, 0.9, 0.975, 1.0])
def test_row_quantile_equals_numpy_nanquantile(q: float) -> None:
    rng = np.random.default_rng(11)
    values = rng.standard_t(3, size=(300, 37))
    values[rng.random(values.shape) < 0.3] = np.nan
    values[5, :] = np.nan           # nobody
    values[6, 1:] = np.nan          # one fund
    values[7, 2:] = np.nan          # two funds
    values[8, :] = 1.5              # ties only
    values[9, 3] = np.inf           # an infinite value sorts like numpy's
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):  # numpy: all-NaN slice
        expected = np.nanquantile(values, q, axis=1, keepdims=True)
    got = row_quantile(values, q)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)  # bit for bit, NaN where numpy has NaN

    no_funds = np.empty((4, 0))
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanquantile(no_funds, q, axis=1, keepdims=True)
    np.testing.assert_array_equal(row_quantile(no_funds, q), expected)


def test_winsorize_mad(panel: pd.DataFrame) -> None:
    cfg = CrossSectionConfig(winsorize="mad", mad_k=2.0)
    out = winsorize(panel, cfg)
    clipped_any = False
    for date, row in panel.iterrows():
        valid = row.dropna().to_numpy()
        if valid.size == 0:
            assert out.loc[date].isna().all()
            continue
        med = np.median(valid)
        mad = stats.median_abs_deviation(valid, scale="normal")  # 1.4826 × raw MAD
        expected = row.clip(med - 2.0 * mad, med + 2.0 * mad)
        np.testing.assert_allclose(out.loc[date].to_numpy(), expected.to_numpy(), rtol=1e-5)
        clipped_any |= bool((expected != row).any())
    assert clipped_any
    assert out.isna().equals(panel.isna())


def test_winsorize_none_is_identity(panel: pd.DataFrame) -> None:
    out = winsorize(panel, CrossSectionConfig(winsorize="none"))
    pd.testing.assert_frame_equal(out, panel)
    assert out is not panel


# -- standardise ------------------------------------------------------------------------------
def test_zscore_mean_zero_std_one(panel: pd.DataFrame) -> None:
    cfg = CrossSectionConfig(standardize="zscore", min_funds=3)
    out = standardize(panel, cfg)
    counts = panel.notna().sum(axis=1)
    for date, row in out.iterrows():
        if counts[date] < 3:
            assert row.isna().all(), date
            continue
        valid = row.dropna()
        assert len(valid) == counts[date]
        assert valid.mean() == pytest.approx(0.0, abs=1e-12)
        assert valid.std(ddof=1) == pytest.approx(1.0, rel=1e-12)
        src = panel.loc[date].dropna()
        expected = (src - src.mean()) / src.std(ddof=1)
        np.testing.assert_allclose(valid.to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert out.iloc[6].isna().all() and out.iloc[7].isna().all()
    assert out.iloc[2, [1, 4, 9]].isna().all()


def test_zscore_of_a_constant_row_is_missing() -> None:
    flat = pd.DataFrame([[2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0]], columns=list("abcd"))
    out = standardize(flat, CrossSectionConfig(min_funds=3))
    assert out.iloc[0].isna().all()
    np.testing.assert_allclose(out.iloc[1].to_numpy(),
                               (np.arange(1, 5) - 2.5) / np.std(np.arange(1, 5), ddof=1))


def test_rank_maps_to_minus_one_one_with_ties() -> None:
    frame = pd.DataFrame(
        [[1.0, 2.0, 2.0, 3.0, np.nan],
         [np.nan, 5.0, 1.0, 3.0, np.nan],
         [4.0, 4.0, 4.0, 4.0, 4.0],
         [0.3, np.nan, np.nan, np.nan, 0.1]],
        columns=list("abcde"),
    )
    out = standardize(frame, CrossSectionConfig(standardize="rank", min_funds=3))
    np.testing.assert_array_equal(out.iloc[0].to_numpy(), [-1.0, 0.0, 0.0, 1.0, np.nan])
    np.testing.assert_array_equal(out.iloc[1].to_numpy(), [np.nan, 1.0, -1.0, 0.0, np.nan])
    np.testing.assert_array_equal(out.iloc[2].to_numpy(), [0.0] * 5)  # all tied: the middle
    assert out.iloc[3].isna().all()  # two funds < min_funds


def test_rank_against_scipy(panel: pd.DataFrame) -> None:
    out = standardize(panel, CrossSectionConfig(standardize="rank", min_funds=3))
    for date, row in panel.iterrows():
        valid = row.dropna()
        if len(valid) < 3:
            assert out.loc[date].isna().all()
            continue
        ranks = stats.rankdata(valid.to_numpy(), method="average")
        expected = 2.0 * (ranks - 1.0) / (len(valid) - 1.0) - 1.0
        got = out.loc[date, valid.index]
        np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-12)
        assert got.min() == -1.0 and got.max() == 1.0
        assert out.loc[date].isna().equals(row.isna())


def test_process_masks_ineligible_and_never_zero_fills(panel: pd.DataFrame) -> None:
    cfg = CrossSectionConfig(winsorize="none", standardize="zscore", min_funds=3)
    eligible = pd.DataFrame(True, index=panel.index, columns=panel.columns)
    eligible.iloc[:, 0] = False  # one fund never eligible
    eligible = eligible.iloc[:-1]  # a date missing from the mask counts as ineligible
    out = process(panel, eligible, cfg)
    assert out.iloc[:, 0].isna().all()
    assert out.iloc[-1].isna().all()
    masked = panel.iloc[:, 1:]
    for date in panel.index[:6]:
        row = masked.loc[date].dropna()
        expected = (row - row.mean()) / row.std(ddof=1)
        np.testing.assert_allclose(out.loc[date, row.index].to_numpy(), expected.to_numpy())
    # Missing inputs stay missing: no value is invented where the input had none.
    assert (out.notna() <= panel.notna()).all().all()
    assert not (out == 0.0).any().any()


# -- coverage ---------------------------------------------------------------------------------
def _coverage_by_hand(close: pd.DataFrame, min_history: int, max_stale: int) -> pd.DataFrame:
    out = pd.DataFrame(False, index=close.index, columns=close.columns)
    for col in close.columns:
        bars_seen, last = 0, None
        for t, value in enumerate(close[col].to_numpy()):
            if not np.isnan(value):
                bars_seen, last = bars_seen + 1, t
            out.iloc[t, out.columns.get_loc(col)] = (
                last is not None and bars_seen >= min_history and t - last <= max_stale
            )
    return out


def test_coverage_counts_only_sessions_with_bars() -> None:
    n = 20
    dates = pd.bdate_range("2024-01-02", periods=n)
    close = pd.DataFrame(1.0, index=dates, columns=["full", "late", "gappy", "gone"])
    close.iloc[:6, 1] = np.nan  # listed on session 6
    close.iloc[[2, 3, 4, 5], 2] = np.nan  # four missing sessions early on
    close.iloc[9:, 3] = np.nan  # stops trading after session 8
    cfg = CrossSectionConfig(min_history=5, max_stale_days=3)
    got = coverage(close, cfg)
    pd.testing.assert_frame_equal(got, _coverage_by_hand(close, 5, 3))
    # Hand-checked landmarks.
    assert got["full"].idxmax() == dates[4]  # 5th bar
    assert got["late"].idxmax() == dates[10]  # 5th bar of a fund listed on session 6
    # 'gappy' has bars on sessions 0, 1, 6, 7, 8: its 5th bar is session 8, not session 4.
    assert not got["gappy"].iloc[:8].any() and got["gappy"].iloc[8]
    # 'gone' stays eligible for max_stale_days sessions after its last bar, then drops out.
    assert got["gone"].iloc[8:12].all() and not got["gone"].iloc[12:].any()


def test_coverage_zero_staleness() -> None:
    dates = pd.bdate_range("2024-01-02", periods=6)
    close = pd.DataFrame({"a": [1.0, 1.0, np.nan, 1.0, 1.0, 1.0]}, index=dates)
    got = coverage(close, CrossSectionConfig(min_history=1, max_stale_days=0))
    assert got["a"].tolist() == [True, True, False, True, True, True]


# -- neutralisation and beta ------------------------------------------------------------------
def test_neutralize_removes_beta_exposure() -> None:
    rng = np.random.default_rng(11)
    dates = pd.bdate_range("2024-01-02", periods=5)
    beta = pd.DataFrame(rng.uniform(0.5, 1.5, (5, 15)), index=dates, columns=SYMBOLS + list("xyz"))
    values = 3.0 * beta + rng.normal(0, 0.2, beta.shape)
    values.iloc[0, 0] = np.nan
    beta.iloc[1, 1] = np.nan
    resid = neutralize(values, beta)
    for date in dates:
        ok = values.loc[date].notna() & beta.loc[date].notna()
        x, y = beta.loc[date, ok].to_numpy(), values.loc[date, ok].to_numpy()
        r = resid.loc[date, ok].to_numpy()
        assert np.corrcoef(values.loc[date, ok], x)[0, 1] > 0.9  # strongly exposed before
        assert abs(np.corrcoef(r, x)[0, 1]) < 1e-10  # uncorrelated after
        assert abs(r.mean()) < 1e-12
        slope, intercept = np.polyfit(x, y, 1)
        np.testing.assert_allclose(r, y - (intercept + slope * x), atol=1e-12)
        assert resid.loc[date, ~ok].isna().all()
    assert np.isnan(resid.iloc[0, 0]) and np.isnan(resid.iloc[1, 1])


def test_market_beta_recovers_known_loadings() -> None:
    rng = np.random.default_rng(3)
    dates = pd.bdate_range("2024-01-02", periods=80)
    loadings = np.array([0.5, 0.8, 1.0, 1.2, 1.5])  # mean 1: the equal-weight market is m
    market = rng.normal(0, 0.01, len(dates))
    returns = pd.DataFrame(np.outer(market, loadings), index=dates, columns=list("abcde"))
    beta = market_beta(returns, window=20)
    assert beta.iloc[:9].isna().all().all()  # fewer than window // 2 observations
    np.testing.assert_allclose(beta.iloc[9:].to_numpy(), np.tile(loadings, (71, 1)), rtol=1e-9)


def test_process_with_beta_neutralisation() -> None:
    rng = np.random.default_rng(5)
    dates = pd.bdate_range("2024-01-02", periods=4)
    beta = pd.DataFrame(rng.uniform(0.5, 1.5, (4, 10)), index=dates, columns=SYMBOLS[:10])
    values = 2.0 * beta + rng.normal(0, 0.1, beta.shape)
    eligible = pd.DataFrame(True, index=dates, columns=beta.columns)
    cfg = CrossSectionConfig(winsorize="none", neutralize_beta=True, min_funds=3)
    out = process(values, eligible, cfg, beta)
    for date in dates:
        row = out.loc[date]
        assert row.mean() == pytest.approx(0.0, abs=1e-12)
        assert row.std(ddof=1) == pytest.approx(1.0)
        assert abs(np.corrcoef(row, beta.loc[date])[0, 1]) < 1e-9
    plain = process(values, eligible, CrossSectionConfig(winsorize="none", min_funds=3), beta)
    assert (plain.apply(lambda r: np.corrcoef(r, beta.loc[r.name])[0, 1], axis=1) > 0.8).all()


# -- adjust_bars ------------------------------------------------------------------------------
def _raw_bars() -> pd.DataFrame:
    dates = pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"])
    return pd.DataFrame({
        "date": list(dates) * 2,
        "symbol": ["AAA"] * 4 + ["BBB"] * 4,
        "open": [10.0, 10.2, 5.0, 5.1, 1.0, 1.01, 1.02, 1.03],
        "high": [10.5, 10.4, 5.2, 5.3, 1.1, 1.02, 1.05, 1.04],
        "low": [9.9, 10.0, 4.9, 5.0, 0.95, 1.0, 1.0, 1.01],
        "close": [10.1, 10.3, 5.1, 5.2, 1.0, 1.01, 1.03, 1.02],
        "volume": [1000.0, 1200.0, 2600.0, 2400.0, 5e5, 4e5, 3e5, 2e5],
        "amount": [10100.0, 12360.0, 13260.0, np.nan, np.nan, np.nan, 309000.0, 204000.0],
        "adj_factor": [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0],
        "source": ["t"] * 8,
    })


def test_adjust_bars() -> None:
    raw = _raw_bars()
    out = adjust_bars(raw)
    assert list(out.columns) == list(ADJUSTED_COLUMNS)
    assert len(out) == len(raw)
    for col in ("open", "high", "low", "close"):
        np.testing.assert_allclose(out[col], raw[col] * raw["adj_factor"])
    np.testing.assert_array_equal(out["raw_close"], raw["close"])
    np.testing.assert_array_equal(out["raw_open"], raw["open"])
    np.testing.assert_array_equal(out["adj_factor"], raw["adj_factor"])
    np.testing.assert_allclose(out["volume"], raw["volume"] / raw["adj_factor"])
    # Traded value is invariant: adjusted volume × adjusted close = raw volume × raw close.
    np.testing.assert_allclose(out["volume"] * out["close"], raw["volume"] * raw["close"])
    # The split day of AAA: raw close halves, adjusted close is continuous.
    assert out.loc[2, "close"] == pytest.approx(10.2)
    assert out.loc[2, "raw_close"] == 5.1
    # turnover = amount where known, else raw volume × raw close; amount itself stays NaN.
    expected_turnover = [10100.0, 12360.0, 13260.0, 2400 * 5.2, 5e5 * 1.0, 4e5 * 1.01,
                         309000.0, 204000.0]
    np.testing.assert_allclose(out["turnover"], expected_turnover)
    assert out["amount"].isna().tolist() == raw["amount"].isna().tolist()
    assert (out["date"] == raw["date"]).all() and (out["symbol"] == raw["symbol"]).all()


# -- build_cross_sections on a small synthetic market -----------------------------------------
N_SESSIONS = 90
LATE_FROM = 20
SUSPENDED = (50, 51, 52)
MIN_HISTORY = 15


@pytest.fixture(scope="module")
def market() -> pd.DataFrame:
    """Six funds on real XSHG sessions: one listed late, one suspended three sessions, one split
    (factor 2 from session 60), one without amounts. Returns adjusted bars."""
    sessions = get_calendar("XSHG", "2005-01-01").sessions("2024-01-02", "2024-12-31")
    sessions = sessions[:N_SESSIONS]
    rng = np.random.default_rng(2024)
    frames = []
    for k, symbol in enumerate(["A", "B", "C", "LATE", "SPLIT", "SUSP"]):
        rets = rng.normal(0.0005 * k, 0.01 + 0.003 * k, N_SESSIONS)
        adj_close = 1.5 * np.exp(np.cumsum(rets))
        factor = np.ones(N_SESSIONS)
        if symbol == "SPLIT":
            factor[60:] = 2.0
        close = adj_close / factor
        frame = pd.DataFrame({
            "date": sessions, "symbol": symbol,
            "open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
            "volume": rng.integers(1_000, 5_000, N_SESSIONS) * 100.0,
            "adj_factor": factor, "source": "test",
        })
        frame["amount"] = np.nan if symbol == "C" else frame["volume"] * close * 1.001
        keep = np.ones(N_SESSIONS, dtype=bool)
        if symbol == "LATE":
            keep[:LATE_FROM] = False
        if symbol == "SUSP":
            keep[list(SUSPENDED)] = False
        frames.append(frame.loc[keep])
    raw = pd.concat(frames, ignore_index=True).sort_values(["date", "symbol"])
    return adjust_bars(raw.reset_index(drop=True))


@pytest.fixture(scope="module")
def sections(market: pd.DataFrame) -> pd.DataFrame:
    cfg = CrossSectionConfig(min_history=MIN_HISTORY, max_stale_days=5, min_funds=3)
    return build_cross_sections(market, cfg)


def _expected_std(values: pd.Series, cfg: CrossSectionConfig) -> pd.Series:
    """Quantile winsorisation then z-score of one date's values (pandas only)."""
    valid = values.dropna()
    out = pd.Series(np.nan, index=values.index)
    if len(valid) < cfg.min_funds:
        return out
    clipped = valid.clip(valid.quantile(cfg.lower_quantile), valid.quantile(cfg.upper_quantile))
    out[valid.index] = (clipped - clipped.mean()) / clipped.std(ddof=1)
    return out


def test_build_shape_and_eligibility(market: pd.DataFrame, sections: pd.DataFrame) -> None:
    sessions = pd.DatetimeIndex(sorted(market["date"].unique()))
    assert len(sessions) == N_SESSIONS
    expected_cols = ["date", "symbol", *BASE_FIELDS, *(f"{f}_std" for f in BASE_FIELDS), "close"]
    assert sorted(sections.columns) == sorted(expected_cols)
    assert not sections.duplicated(["date", "symbol"]).any()
    first = sections.groupby("symbol")["date"].min()
    for symbol in ("A", "B", "C", "SPLIT", "SUSP"):
        assert first[symbol] == sessions[MIN_HISTORY - 1], symbol
    assert first["LATE"] == sessions[LATE_FROM + MIN_HISTORY - 1]
    assert sections["date"].min() == sessions[MIN_HISTORY - 1]
    counts = sections.groupby("date").size()
    assert (counts.loc[: sessions[LATE_FROM + MIN_HISTORY - 2]] == 5).all()
    assert (counts.loc[sessions[LATE_FROM + MIN_HISTORY - 1]:] == 6).all()


def test_build_raw_fields(market: pd.DataFrame, sections: pd.DataFrame) -> None:
    s = sections.set_index(["date", "symbol"])
    for symbol in ("A", "C", "LATE", "SPLIT"):
        own = market.loc[market["symbol"] == symbol].set_index("date")
        close = own["close"]
        ret = close.pct_change()
        got = s.xs(symbol, level="symbol")
        np.testing.assert_allclose(got["ret_1d"], ret.reindex(got.index), rtol=1e-12)
        np.testing.assert_allclose(got["ret_5d"], (close / close.shift(5) - 1).reindex(got.index),
                                   rtol=1e-12)
        np.testing.assert_allclose(got["close"], close.reindex(got.index), rtol=1e-12)
        vol = ret.rolling(20, min_periods=15).std() * np.sqrt(252.0)
        np.testing.assert_allclose(got["vol_20d"], vol.reindex(got.index), rtol=1e-12)
        np.testing.assert_allclose(got["log_turnover"],
                                   np.log(own["turnover"]).reindex(got.index), rtol=1e-12)
    # The split does not show up as a return: the fields use adjusted prices.
    split = s.xs("SPLIT", level="symbol")
    assert split["ret_1d"].abs().max() < 0.2
    # Fund C has no amounts: turnover falls back to volume × raw close.
    c = market.loc[market["symbol"] == "C"]
    assert c["amount"].isna().all()
    np.testing.assert_allclose(c["turnover"], c["volume"] * c["raw_close"])


def test_build_suspension_stays_missing(market: pd.DataFrame, sections: pd.DataFrame) -> None:
    sessions = pd.DatetimeIndex(sorted(market["date"].unique()))
    s = sections.set_index(["date", "symbol"])
    susp = market.loc[market["symbol"] == "SUSP"].set_index("date")
    last_close = susp.loc[sessions[SUSPENDED[0] - 1], "close"]
    for k in SUSPENDED:
        row = s.loc[(sessions[k], "SUSP")]  # still eligible: stale for at most 3 sessions
        for field in BASE_FIELDS:
            if field != "vol_20d":
                assert np.isnan(row[field]), (k, field)
                assert np.isnan(row[f"{field}_std"]), (k, field)
        assert row["close"] == last_close  # carried for at most max_stale_days
    resume = s.loc[(sessions[SUSPENDED[-1] + 1], "SUSP")]
    close = susp["close"]
    assert resume["ret_1d"] != 0.0
    assert np.isnan(resume["ret_1d"]) or resume["ret_1d"] == pytest.approx(
        close.loc[sessions[SUSPENDED[-1] + 1]] / last_close - 1.0)
    assert resume["close"] == close.loc[sessions[SUSPENDED[-1] + 1]]


def test_build_standardised_fields(sections: pd.DataFrame) -> None:
    cfg = CrossSectionConfig(min_history=MIN_HISTORY, max_stale_days=5, min_funds=3)
    checked = 0
    for field in BASE_FIELDS:
        for _, day in sections.groupby("date"):
            expected = _expected_std(day[field], cfg)
            np.testing.assert_allclose(day[f"{field}_std"].to_numpy(), expected.to_numpy(),
                                       rtol=1e-9, atol=1e-12, err_msg=field)
            assert day.loc[day[field].isna(), f"{field}_std"].isna().all()
            checked += int(expected.notna().sum())
    assert checked > 1500


def test_build_start_filter(market: pd.DataFrame, sections: pd.DataFrame) -> None:
    cfg = CrossSectionConfig(min_history=MIN_HISTORY, max_stale_days=5, min_funds=3)
    start = sorted(market["date"].unique())[60]
    late = build_cross_sections(market, cfg, start=start)
    assert late["date"].min() == start
    expected = sections.loc[sections["date"] >= start].reset_index(drop=True)
    pd.testing.assert_frame_equal(late, expected)


def test_wide_panel(market: pd.DataFrame) -> None:
    close = wide(market, "close")
    assert close.shape == (N_SESSIONS, 6)
    assert close.index.is_monotonic_increasing
    assert close["LATE"].iloc[:LATE_FROM].isna().all()
    assert close["SUSP"].iloc[list(SUSPENDED)].isna().all()
    assert close.notna().sum().sum() == len(market)


# -- the point-in-time universe (SPEC §2, issue 13) ---------------------------------------------
@pytest.fixture(scope="module")
def real_panels(shared_data) -> tuple[pd.DataFrame, pd.DataFrame]:
    from pathlib import Path

    from rotation.factors.compute import Panels
    from rotation.sources.files import FileMarketSource, load_dataset_spec

    root = Path(__file__).resolve().parents[1]
    source = FileMarketSource(shared_data / "cn_etf_morphkyan_raw", load_dataset_spec(
        root / "config/datasets/cn_etf_morphkyan_raw.yaml"))
    panels = Panels.from_bars(adjust_bars(source.load("2012-01-01", "2016-12-31").bars))
    return panels.close, panels.turnover


def test_universe_is_point_in_time(real_panels) -> None:
    """Membership on D depends on nothing after D: later turnover, later prices and funds that
    list after D change nothing up to D; a fund enters only after min_history sessions."""
    close, turnover = real_panels
    cfg = CrossSectionConfig(min_history=60, liquidity_top=8, liquidity_window=20)
    base = coverage(close, cfg, turnover)
    day = close.index[close.index.get_indexer([pd.Timestamp("2014-06-30")], method="bfill")[0]]
    rng = np.random.default_rng(11)
    later = close.index > day
    turnover2 = turnover.copy()
    turnover2.loc[later] = turnover2.loc[later] * rng.uniform(0.01, 100.0,
                                                              turnover2.loc[later].shape)
    close2 = close.copy()
    close2.loc[later] = close2.loc[later] * rng.uniform(0.5, 1.5, close2.loc[later].shape)
    # A fund that lists after D, more liquid than any other from its first day.
    close2["599999"] = np.where(later, 1.0, np.nan)
    turnover2["599999"] = np.where(later, 1e13, np.nan)
    changed = coverage(close2, cfg, turnover2)
    pd.testing.assert_frame_equal(changed.loc[:day, base.columns], base.loc[:day])
    assert not changed.loc[:day, "599999"].any()
    # Eight funds at most, each with 60 sessions of history by then.
    assert (base.sum(axis=1) <= 8).all() and base.loc[day].sum() == 8
    history = close.notna().cumsum()
    assert (history.to_numpy()[base.to_numpy()] >= 60).all()
    # The ranking is by trailing turnover up to D: today's most traded funds do not decide.
    trailing = turnover.rolling(20, min_periods=1).mean().loc[day]
    eligible = coverage(close, CrossSectionConfig(min_history=60), None).loc[day]
    expected = trailing[eligible].sort_values(ascending=False).index[:8]
    assert set(base.columns[base.loc[day]]) == set(expected)

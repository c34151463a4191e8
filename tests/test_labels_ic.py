"""Forward-return labels (``rotation.labels``) and rank-IC evaluation (``rotation.ic``).

Expectations are hand-computed on tiny panels or recomputed independently on the real
``cn_etf_akshare_qfq_2020`` data: ``scipy.stats.spearmanr`` per date, statsmodels' HAC OLS
(and a hand-written matrix HAC), ``scipy.stats.false_discovery_control`` and alphalens.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rotation.adjust import adjust_bars
from rotation.cross_section import wide
from rotation.ic import (
    bartlett_lag,
    benjamini_hochberg,
    factor_turnover,
    ic_by_year,
    ic_decay,
    ic_summary,
    ic_summary_table,
    mean_pairwise_correlation,
    newey_west_se,
    rank_autocorrelation,
    rank_ic,
    rank_ic_batch_kernel,
    rank_ic_kernel,
    rank_ic_many,
    select_factors,
    stack_factors,
)
from rotation.labels import (
    DEFAULT_HORIZONS,
    ExecutionModel,
    forward_return,
    forward_returns,
    label_end_dates,
)
from rotation.sources.files import FileMarketSource, load_dataset_spec

ROOT = Path(__file__).resolve().parents[1]
DATASET = "cn_etf_akshare_qfq_2020"


@pytest.fixture(scope="module")
def prices(shared_data: Path) -> dict[str, pd.DataFrame]:
    """Adjusted wide opens and closes of the real 60-fund dataset (1534 sessions)."""
    spec = load_dataset_spec(ROOT / "config" / "datasets" / f"{DATASET}.yaml")
    bars = adjust_bars(FileMarketSource(shared_data / DATASET, spec).load().bars)
    return {"open": wide(bars, "open"), "close": wide(bars, "close")}


@pytest.fixture(scope="module")
def factors(prices: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Momentum-like factors computed with plain pandas from past closes only."""
    close = prices["close"]
    ret = close / close.shift(1) - 1.0
    mom20 = close / close.shift(20) - 1.0
    holes = mom20.copy()
    rng = np.random.default_rng(11)
    holes[rng.random(holes.shape) < 0.1] = np.nan  # factor NaNs where the label exists
    return {
        # Rounded to a 0.5 % grid: many ties within a date.
        "mom20_tied": (mom20 * 200.0).round() / 200.0,
        "mom5": close / close.shift(5) - 1.0,
        "mom60": close / close.shift(60) - 1.0,
        "vol20": ret.rolling(20, min_periods=15).std(),
        "mom20_holes": holes,
        "neg_mom20": -mom20,
    }


def _spearman_by_date(factor: pd.DataFrame, label: pd.DataFrame, min_obs: int = 5
                      ) -> pd.Series:
    """Reference: scipy's Spearman over the funds where both values are finite, per date."""
    label = label.reindex(index=factor.index, columns=factor.columns)
    out = {}
    for date in factor.index:
        x = factor.loc[date].to_numpy(dtype=float)
        y = label.loc[date].to_numpy(dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < min_obs:
            out[date] = np.nan
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input → NaN with a warning
            out[date] = stats.spearmanr(x[ok], y[ok])[0]
    return pd.Series(out, dtype=float)


# -- labels -----------------------------------------------------------------------------------
@pytest.fixture
def tiny() -> pd.DataFrame:
    dates = pd.bdate_range("2024-01-01", periods=6)
    return pd.DataFrame({"A": [10.0, 11.0, 12.0, 9.0, 10.0, 15.0],
                         "B": [20.0, 20.0, 25.0, 20.0, 30.0, 24.0]}, index=dates)


def test_t1_open_labels_hand_computed(tiny: pd.DataFrame) -> None:
    h1 = forward_return(tiny, 1)  # open(D+2)/open(D+1) - 1
    exp_a = [12 / 11 - 1, 9 / 12 - 1, 10 / 9 - 1, 15 / 10 - 1, np.nan, np.nan]
    exp_b = [25 / 20 - 1, 20 / 25 - 1, 30 / 20 - 1, 24 / 30 - 1, np.nan, np.nan]
    np.testing.assert_allclose(h1["A"].to_numpy(), exp_a, rtol=0, atol=1e-15)
    np.testing.assert_allclose(h1["B"].to_numpy(), exp_b, rtol=0, atol=1e-15)
    h2 = forward_return(tiny, 2, ExecutionModel.T1_OPEN)  # open(D+3)/open(D+1) - 1
    np.testing.assert_allclose(h2["A"].to_numpy(),
                               [9 / 11 - 1, 10 / 12 - 1, 15 / 9 - 1, np.nan, np.nan, np.nan],
                               rtol=0, atol=1e-15)
    assert h2.index.equals(tiny.index) and h2.columns.equals(tiny.columns)


def test_close_labels_hand_computed(tiny: pd.DataFrame) -> None:
    h2 = forward_return(tiny, 2, "CLOSE")  # close(D+2)/close(D) - 1
    np.testing.assert_allclose(h2["A"].to_numpy(),
                               [12 / 10 - 1, 9 / 11 - 1, 10 / 12 - 1, 15 / 9 - 1, np.nan, np.nan],
                               rtol=0, atol=1e-15)
    np.testing.assert_allclose(h2["B"].to_numpy(),
                               [25 / 20 - 1, 20 / 20 - 1, 30 / 25 - 1, 24 / 20 - 1, np.nan, np.nan],
                               rtol=0, atol=1e-15)


def test_labels_nan_propagation(tiny: pd.DataFrame) -> None:
    holed = tiny.copy()
    holed.iloc[3, 0] = np.nan  # A has no bar on row 3
    for h in (1, 2):
        lab = forward_return(holed, h)
        # Row D reads rows D+1 and D+1+h: NaN exactly where one of them is row 3.
        expect_nan = {d for d in range(6) if 3 in (d + 1, d + 1 + h) or d + 1 + h > 5}
        assert set(np.flatnonzero(lab["A"].isna())) == expect_nan
        assert lab["B"].equals(forward_return(tiny, h)["B"])  # the other fund is untouched
        close_lab = forward_return(holed, h, "CLOSE")
        expect_nan = {d for d in range(6) if 3 in (d, d + h) or d + h > 5}
        assert set(np.flatnonzero(close_lab["A"].isna())) == expect_nan
    assert forward_return(tiny, 5).isna().all().all()  # nothing realised inside the panel
    with pytest.raises(ValueError):
        forward_return(tiny, 0)


def test_labels_real_data_tail_and_formula(prices: dict[str, pd.DataFrame]) -> None:
    opens, closes = prices["open"], prices["close"]
    labels = forward_returns(opens)
    assert tuple(labels) == DEFAULT_HORIZONS == (1, 5, 10, 20)
    for h, lab in labels.items():
        assert lab.iloc[-(h + 1):].isna().all().all()  # last H+1 rows: not realised yet
        assert lab.iloc[-(h + 2)].notna().any()
        expected = opens.shift(-1 - h) / opens.shift(-1) - 1.0  # independent pandas formula
        pd.testing.assert_frame_equal(lab, expected, check_exact=False, rtol=0, atol=1e-15)
        # NaN iff one of the two opens is missing (or beyond the panel).
        assert lab.isna().equals(opens.shift(-1 - h).isna() | opens.shift(-1).isna())
    for h, lab in forward_returns(closes, (1, 5), model="CLOSE").items():
        assert lab.iloc[-h:].isna().all().all() and lab.iloc[-(h + 1)].notna().any()
        expected = closes.shift(-h) / closes - 1.0
        pd.testing.assert_frame_equal(lab, expected, check_exact=False, rtol=0, atol=1e-15)


def test_label_end_dates(tiny: pd.DataFrame) -> None:
    ends = label_end_dates(tiny.index, 2)
    assert ends.iloc[0] == tiny.index[3] and ends.iloc[2] == tiny.index[5]
    assert ends.iloc[3:].isna().all()
    assert label_end_dates(tiny.index, 2, "CLOSE").iloc[0] == tiny.index[2]


# -- rank IC ----------------------------------------------------------------------------------
def test_rank_ic_matches_scipy_on_real_data(prices: dict[str, pd.DataFrame],
                                            factors: dict[str, pd.DataFrame]) -> None:
    label = forward_return(prices["open"], 5)
    for name in ("mom20_tied", "mom20_holes", "vol20"):
        factor = factors[name]
        ours = rank_ic(factor, label)
        ref = _spearman_by_date(factor, label)
        assert ours.index.equals(factor.index)
        assert ours.isna().equals(ref.reindex(ours.index).isna())
        np.testing.assert_allclose(ours.dropna().to_numpy(), ref.dropna().to_numpy(),
                                   rtol=0, atol=1e-9)
        assert ours.notna().sum() > 1300
    # The comparison covered dates with missing pairs and with ties on both sides.
    tied = factors["mom20_tied"]
    pairs = tied.notna() & label.notna()
    counted = rank_ic(tied, label).notna()
    assert ((pairs.sum(axis=1) < tied.shape[1]) & counted).sum() > 100
    ties = tied[pairs].apply(lambda row: row.dropna().duplicated().any(), axis=1)
    assert (ties & counted).sum() > 500
    label_ties = label[pairs].apply(lambda row: row.dropna().duplicated().any(), axis=1)
    assert (label_ties & counted).sum() > 0


def test_rank_ic_min_obs_and_constant_rows() -> None:
    dates = pd.bdate_range("2024-01-01", periods=4)
    cols = [f"F{i}" for i in range(6)]
    f = pd.DataFrame(np.arange(24, dtype=float).reshape(4, 6), index=dates, columns=cols)
    y = pd.DataFrame(np.arange(24, dtype=float).reshape(4, 6)[:, ::-1] * 1.0, index=dates,
                     columns=cols)
    f.iloc[0, :2] = np.nan  # 4 pairs → NaN with min_obs 5
    f.iloc[1, :1] = np.nan  # 5 pairs → computed
    f.iloc[2, :] = 3.0  # constant factor → NaN (like scipy)
    ic = rank_ic(f, y)
    assert np.isnan(ic.iloc[0]) and np.isnan(ic.iloc[2])
    assert ic.iloc[1] == pytest.approx(-1.0, abs=1e-15) and ic.iloc[3] == pytest.approx(-1.0)
    assert rank_ic(f, y, min_obs=4).iloc[0] == pytest.approx(-1.0)


def test_rank_ic_sort_path_for_wide_universes() -> None:
    """More than 128 funds: ranks come from a sort instead of pairwise counts."""
    rng = np.random.default_rng(3)
    shape = (40, 300)
    f = pd.DataFrame(np.round(rng.standard_normal(shape), 1))
    y = pd.DataFrame(rng.standard_normal(shape) + 0.3 * f.to_numpy())
    f[rng.random(shape) < 0.2] = np.nan
    ours = rank_ic(f, y)
    ref = _spearman_by_date(f, y)
    np.testing.assert_allclose(ours.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-9)
    many = rank_ic_many({"f": f}, y)
    np.testing.assert_allclose(many["f"].to_numpy(), ours.to_numpy(), rtol=0, atol=1e-12)


def test_ranks_exact_where_float32_would_merge_values() -> None:
    """Ranks are counted on float32 keys; distinct float64 values that share a float32 (tiny
    differences, beyond float32 range, subnormal) must still rank apart, ties stay ties."""
    from rotation.ic import _centred_ranks, _rank_scratch

    rng = np.random.default_rng(2)
    special = [1.0, 1.0 + 1e-12, 1.0 + 2e-12, 1.0, 1e39, 2e39, -1e39, -3e39, 1e-50, 2e-50,
               0.0, -0.0, 5.0, 5.0, 5.0, -7.25]
    cases = [np.array(special), np.round(rng.standard_normal(60), 1), rng.standard_normal(57),
             np.concatenate([special, rng.standard_normal(40)]), np.array([3.0] * 9),
             rng.standard_normal(200), np.round(rng.standard_normal(150), 1)]
    for values in cases:
        n = values.size
        out = np.empty(n, dtype=np.int64)
        _centred_ranks(values, n, out, *_rank_scratch(n))
        expected = 2 * stats.rankdata(values, method="average") - (n + 1)
        np.testing.assert_array_equal(out, expected.astype(np.int64))
    # Same through the IC: spearmanr on the float64 values.
    x = np.array(special)
    y = np.arange(x.size, dtype=float)[::-1]
    f = pd.DataFrame([x, x * -1.0])
    lab = pd.DataFrame([y, y])
    ic = rank_ic(f, lab)
    assert ic.iloc[0] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert ic.iloc[1] == pytest.approx(stats.spearmanr(-x, y)[0], abs=1e-12)


def test_batched_kernel_equals_single(prices: dict[str, pd.DataFrame],
                                      factors: dict[str, pd.DataFrame]) -> None:
    label = forward_return(prices["open"], 5)
    many = rank_ic_many(factors, label)
    assert list(many.columns) == list(factors)
    # Each factor is read from pandas' own array, Fortran-ordered here; C-ordered frames agree.
    c_ordered = {name: pd.DataFrame(np.ascontiguousarray(f.to_numpy()), index=f.index,
                                    columns=f.columns) for name, f in factors.items()}
    assert all(f.to_numpy().flags.c_contiguous for f in c_ordered.values())
    assert not next(iter(factors.values())).to_numpy().flags.c_contiguous
    pd.testing.assert_frame_equal(rank_ic_many(c_ordered, label), many)
    # Factors on different dates: the union of their dates, NaN where a factor is absent.
    parts = {"early": factors["mom5"].iloc[:800], "late": factors["mom5"].iloc[600:]}
    union = rank_ic_many(parts, label)
    assert union.index.equals(label.index)
    assert union["early"].iloc[800:].isna().all() and union["late"].iloc[:600].isna().all()
    np.testing.assert_array_equal(union["late"].iloc[600:], many["mom5"].iloc[600:])
    # rank_ic ranks both sides afresh on every date; rank_ic_many reuses the label's ranks
    # (its subset ranks from the sorted order) and skips the factor's when it has no ties: the
    # integer sums are the same, so the ICs are bitwise equal (ties, holes, listing gaps).
    for name, factor in factors.items():
        np.testing.assert_array_equal(many[name].to_numpy(), rank_ic(factor, label).to_numpy())
    # Kernel level, with a label that has holes and dates below min_obs.
    idx, cols = label.index, label.columns
    stacked = stack_factors(factors, idx, cols)
    lab = label.to_numpy(copy=True)
    lab[::7, : lab.shape[1] - 3] = np.nan
    batch = rank_ic_batch_kernel(stacked, lab, 5)
    for k in range(stacked.shape[0]):
        single = rank_ic_kernel(stacked[k], lab, 5)
        np.testing.assert_array_equal(batch[:, k], single)
        np.testing.assert_array_equal(rank_ic_kernel(stacked[k], lab, 5, 1), single)
    np.testing.assert_array_equal(rank_ic_batch_kernel(stacked, lab, 5, 1), batch)


def test_look_ahead_perturbation(prices: dict[str, pd.DataFrame],
                                 factors: dict[str, pd.DataFrame]) -> None:
    """IC(D) reads factor(D) and label(D) only; label(D) reads opens up to D+1+H only."""
    h, d = 5, 1000
    opens = prices["open"]
    factor = factors["mom20_tied"]
    base_label = forward_return(opens, h)
    base_ic = rank_ic(factor, base_label)
    rng = np.random.default_rng(5)
    # Alter every open after D+1+H and every factor value after D.
    opens_p = opens.copy()
    opens_p.iloc[d + 2 + h:] *= rng.uniform(0.5, 1.5, size=opens_p.iloc[d + 2 + h:].shape)
    factor_p = factor.copy()
    factor_p.iloc[d + 1:] = rng.standard_normal(factor_p.iloc[d + 1:].shape)
    label_p = forward_return(opens_p, h)
    pd.testing.assert_frame_equal(label_p.iloc[: d + 1], base_label.iloc[: d + 1],
                                  check_exact=True)
    ic_p = rank_ic(factor_p, label_p)
    pd.testing.assert_series_equal(ic_p.iloc[: d + 1], base_ic.iloc[: d + 1], check_exact=True)
    assert not np.allclose(ic_p.iloc[d + 1:].dropna(), base_ic.iloc[d + 1:].dropna())
    # Row D alone decides IC(D): scramble every other row of factor and label.
    factor_q = factor_p.copy()
    label_q = label_p.copy()
    others = np.r_[0:d, d + 1:len(factor)]
    factor_q.iloc[others] = rng.standard_normal((len(others), factor.shape[1]))
    label_q.iloc[others] = rng.standard_normal((len(others), factor.shape[1]))
    assert rank_ic(factor_q, label_q).iloc[d] == base_ic.iloc[d]
    assert rank_ic_many({"f": factor_q}, label_q)["f"].iloc[d] == base_ic.iloc[d]
    # And the test is sensitive: moving open(D+1+H) does change IC(D).
    opens_r = opens.copy()
    opens_r.iloc[d + 1 + h] *= rng.uniform(0.5, 1.5, size=opens.shape[1])
    assert rank_ic(factor, forward_return(opens_r, h)).iloc[d] != base_ic.iloc[d]


# -- statistics -------------------------------------------------------------------------------
def _hac_reference(x: np.ndarray, lag: int) -> float:
    """Matrix form of the Bartlett HAC variance of the mean: w(|t-s|) e_t e_s / n²."""
    n = x.size
    e = x - x.mean()
    dist = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    weights = np.clip(1.0 - dist / (lag + 1.0), 0.0, None)
    return math.sqrt(float(e @ weights @ e) / n**2)


def test_newey_west_t_matches_independent_computations(prices: dict[str, pd.DataFrame],
                                                       factors: dict[str, pd.DataFrame]
                                                       ) -> None:
    for h in (1, 5, 20):
        ic = rank_ic(factors["mom20_tied"], forward_return(prices["open"], h))
        x = ic.dropna().to_numpy()
        summary = ic_summary(ic, h)
        lag = max(h - 1, math.floor(4 * (x.size / 100) ** (2 / 9)))
        assert summary["nw_lag"] == lag == max(h - 1, bartlett_lag(x.size))
        se = _hac_reference(x, lag)
        assert newey_west_se(x, lag) == pytest.approx(se, rel=1e-12)
        assert summary["t_nw"] == pytest.approx(x.mean() / se, rel=0, abs=1e-9)
        sm = pytest.importorskip("statsmodels.api")
        fit = sm.OLS(x, np.ones(x.size)).fit(cov_type="HAC", cov_kwds={"maxlags": lag})
        assert summary["t_nw"] == pytest.approx(float(fit.tvalues[0]), rel=0, abs=1e-9)
        assert summary["p_value"] == pytest.approx(float(fit.pvalues[0]), rel=0, abs=1e-9)


def test_ic_summary_fields(prices: dict[str, pd.DataFrame],
                           factors: dict[str, pd.DataFrame]) -> None:
    ic = rank_ic(factors["mom5"], forward_return(prices["open"], 5))
    x = ic.dropna()
    s = ic_summary(ic, 5)
    assert s["count"] == len(x) and s["mean_ic"] == pytest.approx(x.mean(), abs=1e-15)
    assert s["std_ic"] == pytest.approx(x.std(ddof=1), abs=1e-15)
    assert s["icir"] == pytest.approx(x.mean() / x.std(ddof=1), abs=1e-12)
    assert s["icir_annual"] == pytest.approx(s["icir"] * math.sqrt(252 / 5), abs=1e-12)
    assert s["positive_rate"] == pytest.approx((x > 0).mean())
    assert s["negative_rate"] == pytest.approx((x < 0).mean())
    assert s["hit_rate"] == s["positive_rate"]
    assert ic_summary(ic, 5, direction=-1)["hit_rate"] == s["negative_rate"]
    assert ic_summary(ic, 20)["nw_lag"] == 19  # overlap dominates the automatic lag
    empty = ic_summary(pd.Series([np.nan, np.nan]), 5)
    assert empty["count"] == 0 and np.isnan(empty["t_nw"]) and np.isnan(empty["mean_ic"])


def test_ic_decay_and_by_year(prices: dict[str, pd.DataFrame],
                              factors: dict[str, pd.DataFrame]) -> None:
    labels = forward_returns(prices["open"])
    decay = ic_decay(factors["mom20_tied"], labels)
    assert list(decay.index) == [1, 5, 10, 20]
    for h in (1, 20):
        direct = ic_summary(rank_ic(factors["mom20_tied"], labels[h]), h)
        assert decay.loc[h, "mean_ic"] == direct["mean_ic"]
        assert decay.loc[h, "t_nw"] == direct["t_nw"]
    ic = rank_ic(factors["mom20_tied"], labels[5])
    yearly = ic_by_year(ic, horizon=5)
    clean = ic.dropna()
    assert list(yearly.index) == sorted(set(clean.index.year))
    assert yearly["count"].sum() == len(clean)
    grouped = clean.groupby(clean.index.year)
    np.testing.assert_allclose(yearly["mean_ic"], grouped.mean(), rtol=0, atol=1e-15)
    np.testing.assert_allclose(yearly["std_ic"], grouped.std(), rtol=0, atol=1e-15)
    np.testing.assert_allclose(yearly["positive_rate"], grouped.apply(lambda s: (s > 0).mean()))
    assert yearly["t_nw"].notna().all()


def test_turnover_and_pairwise_correlation(factors: dict[str, pd.DataFrame]) -> None:
    slow, fast = factors["mom60"], factors["mom5"]
    auto = rank_autocorrelation(slow)
    ref = _spearman_by_date(slow, slow.shift(1))
    np.testing.assert_allclose(auto.to_numpy(), ref.reindex(auto.index).to_numpy(), rtol=0,
                               atol=1e-9)
    assert factor_turnover(slow) == pytest.approx(float(ref.mean()), abs=1e-12)
    assert factor_turnover(slow) > factor_turnover(fast) > 0  # 60-day momentum moves slower
    assert factor_turnover(slow, lag=5) < factor_turnover(slow, lag=1)
    subset = {k: factors[k] for k in ("mom5", "mom20_holes", "neg_mom20", "vol20")}
    corr = mean_pairwise_correlation(subset)
    assert list(corr.index) == list(subset) and np.allclose(np.diag(corr), 1.0)
    np.testing.assert_array_equal(corr.to_numpy(), corr.to_numpy().T)
    for a, b in (("mom5", "vol20"), ("mom20_holes", "neg_mom20")):
        expected = _spearman_by_date(subset[a], subset[b]).mean()
        assert corr.loc[a, b] == pytest.approx(expected, abs=1e-9)
    assert corr.loc["mom20_holes", "neg_mom20"] == pytest.approx(-1.0, abs=1e-12)


# -- alphalens --------------------------------------------------------------------------------
def test_alphalens_agreement(prices: dict[str, pd.DataFrame],
                             factors: dict[str, pd.DataFrame]) -> None:
    """alphalens' forward returns and IC on the same inputs, to 1e-9.

    alphalens computes ``price(D+H)/price(D) - 1`` from the prices it is given (after a
    forward fill); given ``open(D+1)`` as the price at D it yields our T1_OPEN labels. Rows
    where our label is NaN (a missing open) are removed from the factor so that its forward
    fill never invents a return.
    """
    al = pytest.importorskip("alphalens")
    window = slice("2022-01-01", "2024-06-30")
    opens = prices["open"]
    horizons = (1, 5, 10)
    labels = forward_returns(opens, horizons)
    usable = pd.concat([labels[h].notna().stack() for h in horizons], axis=1).all(axis=1)
    factor = factors["mom20_tied"].loc[window]
    factor = factor.where(usable.unstack().reindex_like(factor).fillna(False).astype(bool))
    series = factor.stack().dropna()
    series.index.names = ["date", "asset"]
    t1_prices = opens.shift(-1)  # price "at D" = open(D+1), when the order fills
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = al.utils.get_clean_factor_and_forward_returns(
            series, t1_prices, quantiles=None, bins=1, periods=horizons, filter_zscore=None,
            max_loss=1.0)
        al_ic = al.performance.factor_information_coefficient(data)
    assert len(data) == len(series)  # nothing dropped: every row has all three returns
    for h in horizons:
        col = f"{h}D"
        ours = labels[h].stack().reindex(data.index)
        np.testing.assert_allclose(data[col].to_numpy(), ours.to_numpy(), rtol=0, atol=1e-12)
        ic = rank_ic(factor, labels[h])
        both = ic.dropna().index
        assert len(both) > 550
        np.testing.assert_allclose(al_ic[col].reindex(both).to_numpy(), ic[both].to_numpy(),
                                   rtol=0, atol=1e-9)
        # Dates we leave NaN are the ones alphalens computes from fewer than 5 funds.
        counts = data.groupby(level="date").size()
        only_al = al_ic[col].dropna().index.difference(both)
        assert (counts.reindex(only_al) < 5).all()


# -- selection --------------------------------------------------------------------------------
def test_benjamini_hochberg_hand_worked() -> None:
    # m = 4, alpha = 0.05 → thresholds k·alpha/m = .0125, .025, .0375, .05.
    # Sorted p: .004 ✓, .03 ✗ (> .025), .035 ✓ (<= .0375), .5 ✗ → the largest passing k is 3:
    # step-up rejects the three smallest, including .03 that failed its own threshold.
    p = [0.035, 0.5, 0.004, 0.03]
    np.testing.assert_array_equal(benjamini_hochberg(p, 0.05), [True, False, True, True])
    # A fifth (NaN) test raises m to 5: thresholds .01 .02 .03 .04 .05 → only .004 survives.
    np.testing.assert_array_equal(benjamini_hochberg([*p, np.nan], 0.05),
                                  [False, False, True, False, False])
    assert not benjamini_hochberg([0.2, 0.3]).any() and benjamini_hochberg([]).size == 0
    assert benjamini_hochberg([0.01, 0.02, 0.03], alpha=0.03).all()


def test_benjamini_hochberg_matches_scipy() -> None:
    if not hasattr(stats, "false_discovery_control"):
        pytest.skip("scipy.stats.false_discovery_control needs scipy >= 1.11")
    rng = np.random.default_rng(17)
    for trial in range(50):
        m = int(rng.integers(1, 300))
        p = np.concatenate([rng.uniform(0, 1, m), rng.uniform(0, 0.01, trial)])
        for alpha in (0.01, 0.05, 0.1):
            expected = stats.false_discovery_control(p, method="bh") <= alpha
            np.testing.assert_array_equal(benjamini_hochberg(p, alpha), expected)


def _summary_row(mean: float, icir: float, pos: float, neg: float, p: float,
                 direction: int = 1) -> dict[str, float]:
    return {"mean_ic": mean, "icir": icir, "positive_rate": pos, "negative_rate": neg,
            "p_value": p, "direction": float(direction)}


def test_select_factors_reasons_and_redundancy() -> None:
    summaries = pd.DataFrame.from_dict({
        "strong": _summary_row(0.050, 0.40, 0.60, 0.40, 1e-6),
        "twin": _summary_row(0.045, 0.30, 0.58, 0.42, 1e-5),  # corr .85 with strong, weaker
        "neg": _summary_row(-0.040, -0.35, 0.38, 0.62, 1e-4, direction=-1),
        "anti": _summary_row(-0.042, -0.50, 0.37, 0.63, 1e-6, direction=-1),  # beats neg
        "weak": _summary_row(0.010, 0.10, 0.60, 0.40, 1e-6),
        "wrong_sign": _summary_row(-0.030, -0.30, 0.40, 0.60, 1e-6, direction=1),
        "flaky": _summary_row(0.030, 0.30, 0.45, 0.55, 1e-6),
        "insignificant": _summary_row(0.030, 0.30, 0.55, 0.45, 0.2),
    }, orient="index")
    names = list(summaries.index)
    corr = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    corr.loc["strong", "twin"] = corr.loc["twin", "strong"] = 0.85
    corr.loc["neg", "anti"] = corr.loc["anti", "neg"] = -0.80
    corr.loc["strong", "anti"] = corr.loc["anti", "strong"] = 0.69  # below 0.7: both kept
    selected, table = select_factors(summaries, min_abs_ic=0.02, min_positive_rate=0.5,
                                     alpha=0.05, correlations=corr, max_corr=0.7)
    assert selected == ["anti", "strong"]  # strongest |ICIR| first
    assert table["selected"].sum() == 2 and set(table.index) == set(names)
    reason = table["reason"]
    assert reason["strong"].startswith("selected") and reason["anti"].startswith("selected")
    assert reason["twin"].startswith("redundant") and "strong" in reason["twin"]
    assert table.loc["twin", "redundant_with"] == "strong"
    assert reason["neg"].startswith("redundant") and table.loc["neg", "redundant_with"] == "anti"
    assert reason["weak"].startswith("|mean IC|")
    assert "opposes declared direction" in reason["wrong_sign"]
    assert reason["flaky"].startswith("hit rate")
    assert reason["insignificant"].startswith("not significant")
    # Direction-aware rate: the -1 factors pass on their negative rate.
    assert table.loc["neg", "hit_rate"] == 0.62 and table.loc["neg", "pass_rate"]
    # BH runs over all eight tested factors, not only the ones passing the IC filters.
    np.testing.assert_array_equal(table["pass_fdr"].to_numpy(),
                                  benjamini_hochberg(summaries["p_value"].to_numpy(), 0.05))
    # Without correlations nothing is redundant; overriding a direction flips the verdict.
    selected, _ = select_factors(summaries)
    assert selected == ["anti", "strong", "neg", "twin"]
    selected, table = select_factors(summaries, directions={"wrong_sign": -1})
    assert "wrong_sign" in selected and table.loc["wrong_sign", "hit_rate"] == 0.60


def test_select_factors_real_data(prices: dict[str, pd.DataFrame],
                                  factors: dict[str, pd.DataFrame]) -> None:
    label = forward_return(prices["open"], 5)
    directions = {"neg_mom20": -1, "vol20": -1}
    ics = rank_ic_many(factors, label)
    summaries = ic_summary_table(ics, 5, directions)
    assert summaries.loc["neg_mom20", "mean_ic"] == pytest.approx(
        -summaries.loc["mom20_tied", "mean_ic"], abs=0.01)
    corr = mean_pairwise_correlation(factors)
    selected, table = select_factors(summaries, min_abs_ic=0.01, min_positive_rate=0.5,
                                     correlations=corr)
    assert (table["reason"] != "").all()
    for name in selected:
        row = table.loc[name]
        assert row["pass_ic"] and row["pass_sign"] and row["pass_rate"] and row["pass_fdr"]
    for i, a in enumerate(selected):
        for b in selected[i + 1:]:
            assert abs(corr.loc[a, b]) < 0.7
    # A redundant factor always names a selected twin with a stronger |ICIR|.
    for name, twin in table["redundant_with"].items():
        if twin:
            assert twin in selected
            assert abs(table.loc[twin, "icir"]) >= abs(table.loc[name, "icir"])

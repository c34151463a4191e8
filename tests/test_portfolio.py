"""Portfolio construction (``rotation.portfolio``, SPEC §8).

Small hand-computable panels for each stage (score, hysteresis, weights and the cap, regime gate,
absolute momentum, explanations) and a synthetic market for the whole chain, including the
look-ahead perturbation test of SPEC §1.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from rotation.cross_section import CrossSectionConfig, coverage, standardize
from rotation.factors.kernels import momentum_nb, volatility_nb
from rotation.factors.registry import DEFAULT_FACTORS
from rotation.portfolio import (
    PortfolioConfig,
    PortfolioResult,
    apply_absolute_momentum,
    build_portfolio,
    composite_score,
    directions_of,
    explain,
    exposure_for_percentile,
    rebalance_schedule,
    regime_exposure,
    regime_percentile,
    select_with_hysteresis,
    target_weights,
    weights_for,
)

NAN = np.nan
SYM = list("ABCDE")


def panel(rows: list[list[float]], columns: list[str] = SYM, start: str = "2024-01-01"
          ) -> pd.DataFrame:
    index = pd.bdate_range(start, periods=len(rows))
    return pd.DataFrame(np.array(rows, dtype=np.float64), index=index, columns=columns)


def everyone(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(True, index=frame.index, columns=frame.columns)


def held(selection: pd.DataFrame) -> list[str]:
    """Held symbols per row as strings, e.g. ``["AB", "AB", "AC"]``."""
    return ["".join(c for c in selection.columns if row[c]) for _, row in selection.iterrows()]


def cfg_(**kw: object) -> PortfolioConfig:
    """A config with the gate and the momentum filter off unless asked for."""
    kw.setdefault("regime_levels", ())
    kw.setdefault("abs_mom_window", None)
    return PortfolioConfig(**kw)


# -- composite score ---------------------------------------------------------------------------
def test_composite_score_signs_directions_and_averages_available_factors() -> None:
    f1 = panel([[1.0, 2.0, NAN], [NAN, NAN, 0.5]], columns=list("ABC"))
    f2 = panel([[3.0, NAN, NAN], [NAN, NAN, 1.0]], columns=list("ABC"))
    out = composite_score({"f1": f1, "f2": f2}, {"f1": 1, "f2": -1, "unused": 1})
    expected = panel([[(1.0 - 3.0) / 2, 2.0, NAN], [NAN, NAN, (0.5 - 1.0) / 2]],
                     columns=list("ABC"))
    pd.testing.assert_frame_equal(out, expected)
    # Both factors flipped: the score flips; NaN stays NaN (never 0).
    flipped = composite_score({"f1": f1, "f2": f2}, {"f1": -1, "f2": 1})
    pd.testing.assert_frame_equal(flipped, -expected)


def test_composite_score_aligns_on_union_of_dates_and_symbols() -> None:
    f1 = panel([[1.0, 2.0]], columns=["A", "B"])
    f2 = panel([[4.0, 6.0], [8.0, 10.0]], columns=["B", "C"])
    out = composite_score({"f1": f1, "f2": f2}, {"f1": 1, "f2": 1})
    assert list(out.columns) == ["A", "B", "C"] and len(out) == 2
    assert out.iloc[0].tolist() == [1.0, 3.0, 6.0]
    assert out.iloc[1, 0] != out.iloc[1, 0] and out.iloc[1, 1:].tolist() == [8.0, 10.0]


def test_composite_score_rejects_missing_or_bad_directions() -> None:
    f = panel([[1.0]], columns=["A"])
    with pytest.raises(ValueError, match="no direction for factor 'f'"):
        composite_score({"f": f}, {})
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        composite_score({"f": f}, {"f": 0})
    with pytest.raises(ValueError, match="no factors"):
        composite_score({}, {})


def test_directions_of_factor_specs() -> None:
    dirs = directions_of(DEFAULT_FACTORS)
    assert dirs["momentum_20"] == 1 and dirs["volatility_20"] == -1
    f = panel([[2.0, 1.0]], columns=["A", "B"])
    out = composite_score({"momentum_20": f, "volatility_20": f}, dirs)
    assert out.iloc[0].tolist() == [0.0, 0.0]


# -- hysteresis ---------------------------------------------------------------------------------
def test_hysteresis_keeps_within_buffer_and_drops_beyond() -> None:
    cfg = cfg_(top_n=2, buffer=1, min_hold_days=0, rebalance_every=1)
    score = panel([[5, 4, 3, 2, 1],    # A, B in
                   [5, 3, 4, 2, 1],    # B rank 3 <= top_n + buffer: kept; C waits
                   [5, 2, 4, 3, 1],    # B rank 4: out; C (rank 2) in
                   [5, 4, 3, 2, 1]])   # B back to rank 2 but C (rank 3) is kept
    sel = select_with_hysteresis(score, everyone(score), cfg)
    assert sel.dtypes.eq(bool).all()
    assert held(sel) == ["AB", "AB", "AC", "AC"]
    # Without a buffer the same panel trades on day 1.
    plain = select_with_hysteresis(score, everyone(score), cfg_(top_n=2, buffer=0,
                                                                min_hold_days=0,
                                                                rebalance_every=1))
    assert held(plain) == ["AB", "AC", "AC", "AB"]


def test_hysteresis_respects_min_hold_days() -> None:
    cfg = cfg_(top_n=2, buffer=0, min_hold_days=3, rebalance_every=1)
    score = panel([[5, 4, 3, 2, 1]] + [[5, 1, 4, 3, 2]] * 4)  # B falls to rank 5 on day 1
    sel = select_with_hysteresis(score, everyone(score), cfg)
    # B held 1 and 2 sessions < 3: kept; dropped on day 3 (held 3); C takes the slot.
    assert held(sel) == ["AB", "AB", "AB", "AC", "AC"]
    result = build_portfolio(score, everyone(score), cfg)
    days = result.held_days["B"]
    assert math.isnan(days.iloc[0]) and days.tolist()[1:4] == [1.0, 2.0, 3.0]


def test_hysteresis_trades_only_on_rebalance_sessions() -> None:
    cfg = cfg_(top_n=1, buffer=0, min_hold_days=0, rebalance_every=3)
    score = panel([[3, 1, 0, 0, 0]] + [[1, 3, 0, 0, 0]] * 6)  # B is best from day 1 on
    sel = select_with_hysteresis(score, everyone(score), cfg)
    assert held(sel) == ["A", "A", "A", "B", "B", "B", "B"]
    # An explicit schedule (e.g. anchored at an out-of-sample start) moves the trade.
    sched = rebalance_schedule(score.index, cfg, start=score.index[2])
    assert sched.tolist() == [False, False, True, False, False, True, False]
    assert held(select_with_hysteresis(score, everyone(score), cfg, rebalance=sched)) == [
        "", "", "B", "B", "B", "B", "B"]


def test_ineligible_holding_leaves_at_once_and_returns_only_on_a_rebalance() -> None:
    cfg = cfg_(top_n=1, buffer=0, min_hold_days=10, rebalance_every=3)
    score = panel([[3, 1, 0, 0, 0]] * 5)
    eligible = everyone(score)
    eligible.iloc[1, 0] = False  # A suspended / stale on day 1 only
    sel = select_with_hysteresis(score, eligible, cfg)
    # min_hold_days does not protect an ineligible fund; nobody enters before day 3.
    assert held(sel) == ["A", "", "", "A", "A"]


def test_ties_are_broken_by_symbol_not_by_column_order() -> None:
    cfg = cfg_(top_n=2, buffer=0, min_hold_days=0, rebalance_every=1)
    score = panel([[1.0, 1.0, 1.0, 2.0]], columns=["C", "A", "B", "D"])
    result = build_portfolio(score, everyone(score), cfg)
    assert result.rank.iloc[0].to_dict() == {"C": 4.0, "A": 2.0, "B": 3.0, "D": 1.0}
    assert held(result.selection) == ["AD"]  # in column order C, A, B, D


def test_only_eligible_funds_with_a_score_are_selected() -> None:
    cfg = cfg_(top_n=3, buffer=0, min_hold_days=0, rebalance_every=1)
    score = panel([[9, NAN, 2, 1, 0]])
    eligible = everyone(score)
    eligible["A"] = False
    sel = select_with_hysteresis(score, eligible, cfg)
    assert held(sel) == ["CDE"]
    result = build_portfolio(score, eligible, cfg)
    assert np.isnan(result.rank.iloc[0][["A", "B"]]).all()
    assert result.rank.iloc[0][["C", "D", "E"]].tolist() == [1.0, 2.0, 3.0]


def test_selection_changes_only_on_rebalance_or_loss_of_eligibility() -> None:
    rng = np.random.default_rng(3)
    cfg = cfg_(top_n=3, buffer=2, min_hold_days=5, rebalance_every=4)
    score = pd.DataFrame(rng.normal(size=(120, 10)), index=pd.bdate_range("2024-01-01",
                                                                          periods=120))
    score.columns = [f"F{i}" for i in range(10)]
    eligible = pd.DataFrame(rng.random((120, 10)) > 0.05, index=score.index,
                            columns=score.columns)
    sel = select_with_hysteresis(score, eligible, cfg).to_numpy()
    sched = rebalance_schedule(score.index, cfg).to_numpy()
    elig = eligible.to_numpy()
    assert (sel <= elig).all() and (sel.sum(axis=1) <= 3).all()
    for t in range(1, len(sel)):
        if not sched[t]:
            assert (sel[t] == (sel[t - 1] & elig[t])).all()
    assert sel[sched].sum(axis=1).min() == 3  # enough candidates: always full on rebalances


# -- weights ------------------------------------------------------------------------------------
def test_equal_weights() -> None:
    sel = panel([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]).astype(bool)
    w = weights_for(sel, None, None, cfg_(weighting="equal", max_weight=0.4))
    np.testing.assert_allclose(w.iloc[0], [1 / 3, 1 / 3, 1 / 3, 0, 0], rtol=1e-15)
    assert (w.iloc[1] == 0).all()  # nothing selected: all cash


def test_inverse_vol_weights_with_single_and_iterative_cap() -> None:
    sel = panel([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]).astype(bool)
    vol = panel([[0.1, 0.2, 0.2, 9, 9],
                 [0.1, 0.2, 0.4, 0.4, 9],          # 1/vol ∝ 10, 5, 2.5, 2.5
                 [0.1, 1 / 7, 0.5, 1.0, 9]])       # 1/vol ∝ 10, 7, 2, 1
    uncapped = weights_for(sel, None, vol, cfg_(weighting="inverse_vol", max_weight=1.0))
    np.testing.assert_allclose(uncapped.iloc[0], [0.5, 0.25, 0.25, 0, 0], rtol=1e-12)
    w = weights_for(sel, None, vol, cfg_(weighting="inverse_vol", max_weight=0.4))
    # Row 0: A 0.5 → 0.4; the 0.1 excess splits 1:1 between B and C.
    np.testing.assert_allclose(w.iloc[0], [0.4, 0.3, 0.3, 0, 0], rtol=1e-12)
    # Row 1: A 0.5 → 0.4; the 0.1 goes to B, C, D pro rata 5 : 2.5 : 2.5.
    np.testing.assert_allclose(w.iloc[1], [0.4, 0.3, 0.15, 0.15, 0], rtol=1e-12)
    # Row 2: A capped; B then gets 0.35 + 0.07 = 0.42 > cap → capped too; C : D = 2 : 1 of 0.2.
    np.testing.assert_allclose(w.iloc[2], [0.4, 0.4, 0.2 * 2 / 3, 0.2 / 3, 0], rtol=1e-12)
    assert (w.to_numpy() <= 0.4).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)


def test_cap_leaves_cash_when_too_few_funds() -> None:
    sel = panel([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]).astype(bool)
    w = weights_for(sel, None, None, cfg_(max_weight=0.4))
    assert w.iloc[0].tolist() == [0.4, 0.4, 0, 0, 0] and w.iloc[1].tolist() == [0.4, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="needs vol"):
        weights_for(sel, None, None, cfg_(weighting="inverse_vol"))


def test_inverse_vol_falls_back_to_equal_when_a_volatility_is_missing() -> None:
    sel = panel([[1, 1, 1, 0, 0]]).astype(bool)
    vol = panel([[0.1, NAN, 0.3, 1, 1]])
    w = weights_for(sel, None, vol, cfg_(weighting="inverse_vol", max_weight=1.0))
    np.testing.assert_allclose(w.iloc[0], [1 / 3, 1 / 3, 1 / 3, 0, 0], rtol=1e-15)


def test_score_weights_use_positive_part_and_fall_back_to_equal() -> None:
    sel = panel([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]).astype(bool)
    score = panel([[2.0, 1.0, -0.5, 5.0, 5.0], [-1.0, -2.0, 0, 0, 0]])
    w = weights_for(sel, score, None, cfg_(weighting="score", max_weight=1.0))
    np.testing.assert_allclose(w.iloc[0], [2 / 3, 1 / 3, 0, 0, 0], rtol=1e-15)
    np.testing.assert_allclose(w.iloc[1], [0.5, 0.5, 0, 0, 0], rtol=1e-15)
    capped = weights_for(sel, score, None, cfg_(weighting="score", max_weight=0.6))
    np.testing.assert_allclose(capped.iloc[0], [0.6, 0.4, 0, 0, 0], rtol=1e-12)


def test_cap_properties_on_random_rows() -> None:
    rng = np.random.default_rng(11)
    n, m = 300, 8
    sel = pd.DataFrame(rng.random((n, m)) < 0.5)
    vol = pd.DataFrame(rng.lognormal(-1.5, 0.8, size=(n, m)))
    for cap in (0.15, 0.25, 0.4, 1.0):
        w = weights_for(sel, None, vol, cfg_(weighting="inverse_vol", max_weight=cap)).to_numpy()
        k = sel.to_numpy().sum(axis=1)
        assert (w >= 0).all() and (w <= cap).all()
        assert (w[~sel.to_numpy()] == 0).all()
        np.testing.assert_allclose(w.sum(axis=1), np.minimum(1.0, k * cap), rtol=1e-12,
                                   atol=1e-15)
        base = 1.0 / vol.to_numpy()
        for t in range(n):
            free = np.flatnonzero(sel.to_numpy()[t] & (w[t] < cap * (1 - 1e-9)))
            for a, b in itertools.combinations(free, 2):  # uncapped: pro rata to 1/vol
                assert w[t, a] / w[t, b] == pytest.approx(base[t, a] / base[t, b], rel=1e-9)
            capped = np.flatnonzero(sel.to_numpy()[t] & (w[t] >= cap * (1 - 1e-9)))
            if len(free) and len(capped):  # nobody uncapped outranks a capped fund
                assert base[t, capped].min() >= base[t, free].max()


# -- regime gate --------------------------------------------------------------------------------
def test_exposure_levels() -> None:
    cfg = PortfolioConfig()  # ((0.8, 0.5), (0.95, 0.0))
    pct = pd.Series([NAN, 0.5, 0.79, 0.8, 0.9, 0.95, 1.0])
    assert exposure_for_percentile(pct, cfg).tolist() == [1, 1, 1, 0.5, 0.5, 0.0, 0.0]
    assert exposure_for_percentile(pct, cfg_(regime_levels=())).tolist() == [1.0] * 7


def test_regime_percentile_hand_computed() -> None:
    cfg = PortfolioConfig(regime_window=2, regime_lookback=4, regime_min_periods=2,
                          regime_levels=((0.2, 0.5), (0.9, 0.0)))
    r = pd.Series([NAN, 0.0, 0.01, 0.0, 0.01, 0.05, 0.0, 0.0],
                  index=pd.bdate_range("2024-01-01", periods=8))
    # vol of two returns: |r1 - r0| / sqrt(2): -, -, a, a, a, 4a, 5a, 0 with a = 0.01/sqrt(2)
    pct = regime_percentile(r, cfg)
    expected = [NAN, NAN, NAN, 1.0, 1.0, 1.0, 1.0, 0.25]  # day 2: one value < min_periods
    np.testing.assert_array_equal(pct.to_numpy(), np.array(expected))
    assert regime_exposure(r, cfg).tolist() == [1, 1, 1, 0, 0, 0, 0, 0.5]


def _reference_percentile(r: pd.Series, cfg: PortfolioConfig) -> np.ndarray:
    vol = r.rolling(cfg.regime_window).std().to_numpy()
    out = np.full(len(r), np.nan)
    for t in range(len(r)):
        past = vol[max(0, t - cfg.regime_lookback + 1): t + 1]
        past = past[~np.isnan(past)]
        if not np.isnan(vol[t]) and len(past) >= cfg.regime_min_periods:
            out[t] = np.mean(past <= vol[t])
    return out


def test_regime_percentile_matches_reference_and_is_causal() -> None:
    rng = np.random.default_rng(5)
    n = 400
    scale = np.where(np.arange(n) % 150 < 30, 0.03, 0.01)  # recurring turbulent spells
    r = pd.Series(rng.normal(0, 1, n) * scale, index=pd.bdate_range("2023-01-02", periods=n))
    r.iloc[0] = NAN
    cfg = PortfolioConfig(regime_window=10, regime_lookback=60, regime_min_periods=20)
    pct = regime_percentile(r, cfg)
    ref = _reference_percentile(r, cfg)
    ok = ~np.isnan(ref)
    assert (np.isnan(pct.to_numpy()) == ~ok).all()
    # The reference's rolling std differs in the last bits; ties could flip, so compare loosely.
    assert np.mean(np.abs(pct.to_numpy()[ok] - ref[ok]) < 1e-12) > 0.99
    exposure = regime_exposure(r, cfg)
    assert set(exposure.unique()) == {1.0, 0.5, 0.0}
    for cut in (100, 217, 330):
        bumped = r.copy()
        bumped.iloc[cut + 1:] = rng.normal(0, 0.05, n - cut - 1)
        np.testing.assert_array_equal(regime_percentile(bumped, cfg).to_numpy()[: cut + 1],
                                      pct.to_numpy()[: cut + 1])
        pd.testing.assert_series_equal(regime_exposure(bumped, cfg).iloc[: cut + 1],
                                       exposure.iloc[: cut + 1], check_exact=True)
        assert not regime_percentile(bumped, cfg).iloc[cut + 1:].equals(pct.iloc[cut + 1:])


# -- absolute momentum --------------------------------------------------------------------------
@pytest.fixture
def weights3() -> pd.DataFrame:
    return panel([[0.4, 0.3, 0.3], [0.4, 0.3, 0.3]], columns=list("ABC"))


@pytest.fixture
def mom3() -> pd.DataFrame:
    return panel([[-0.05, 0.02, NAN], [-0.05, -0.01, 0.1]], columns=list("ABC"))


def test_negative_momentum_goes_to_defensive_fund(weights3: pd.DataFrame,
                                                   mom3: pd.DataFrame) -> None:
    cfg = PortfolioConfig(defensive_symbol="BOND", defensive_max_weight=1.0)
    out = apply_absolute_momentum(weights3, mom3, cfg)
    assert list(out.columns) == ["A", "B", "C", "BOND"]
    np.testing.assert_allclose(out.iloc[0], [0.0, 0.3, 0.3, 0.4])  # NaN momentum: stays
    np.testing.assert_allclose(out.iloc[1], [0.0, 0.0, 0.3, 0.7])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_negative_momentum_goes_to_cash_without_defensive(weights3: pd.DataFrame,
                                                          mom3: pd.DataFrame) -> None:
    out = apply_absolute_momentum(weights3, mom3, PortfolioConfig())
    assert list(out.columns) == ["A", "B", "C"]
    np.testing.assert_allclose(out.to_numpy(), [[0.0, 0.3, 0.3], [0.0, 0.0, 0.3]])


def test_defensive_weight_is_capped_and_needs_eligibility(weights3: pd.DataFrame,
                                                          mom3: pd.DataFrame) -> None:
    cfg = PortfolioConfig(defensive_symbol="BOND", max_weight=0.4)  # cap defaults to 0.4
    eligible = pd.Series([True, False], index=weights3.index)
    out = apply_absolute_momentum(weights3, mom3, cfg, defensive_eligible=eligible)
    np.testing.assert_allclose(out.iloc[0], [0.0, 0.3, 0.3, 0.4])
    np.testing.assert_allclose(out.iloc[1], [0.0, 0.0, 0.3, 0.0])  # bond not tradable: cash
    capped = apply_absolute_momentum(weights3, mom3, cfg)
    np.testing.assert_allclose(capped.iloc[1], [0.0, 0.0, 0.3, 0.4])  # 0.7 moved, 0.3 cash


def test_defensive_fund_is_exempt_and_threshold_and_disable(weights3: pd.DataFrame) -> None:
    w = weights3.rename(columns={"C": "BOND"})
    mom = panel([[0.01, 0.02, -0.2], [0.01, 0.02, -0.2]], columns=["A", "B", "BOND"])
    cfg = PortfolioConfig(defensive_symbol="BOND", defensive_max_weight=1.0,
                          abs_mom_threshold=0.015)
    out = apply_absolute_momentum(w, mom, cfg)
    np.testing.assert_allclose(out.iloc[0], [0.0, 0.3, 0.7])  # A below 1.5 %; BOND exempt
    off = apply_absolute_momentum(w, mom, PortfolioConfig(abs_mom_window=None))
    pd.testing.assert_frame_equal(off, w)


# -- the whole chain ----------------------------------------------------------------------------
FUNDS = [f"51{i:04d}.SH" for i in range(8)]
BOND = "511010.SH"


def synthetic_close(seed: int = 1, n: int = 420) -> pd.DataFrame:
    """Random-walk closes with a turbulent spell, a late listing and a suspension."""
    rng = np.random.default_rng(seed)
    scale = np.where((np.arange(n) > 250) & (np.arange(n) < 300), 0.035, 0.012)
    drift = rng.normal(0, 0.0008, len(FUNDS))
    rets = rng.normal(0, 1, (n, len(FUNDS))) * scale[:, None] + drift
    close = pd.DataFrame(100 * np.exp(np.cumsum(rets, axis=0)),
                         index=pd.bdate_range("2022-01-03", periods=n), columns=FUNDS)
    close.iloc[:150, 5] = NAN          # listed late
    close.iloc[200:215, 2] = NAN       # suspended for 15 sessions
    close[BOND] = 100 * np.exp(np.cumsum(rng.normal(0.0002, 0.001, n)))
    return close


def chain_inputs(close: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    xs = CrossSectionConfig(min_history=60, min_funds=3)
    eligible = coverage(close, xs)
    universe = close[FUNDS].to_numpy()
    mom = pd.DataFrame(momentum_nb(universe, 20), index=close.index, columns=FUNDS)
    vol = pd.DataFrame(volatility_nb(universe, 20, 252.0), index=close.index, columns=FUNDS)
    elig = eligible[FUNDS]
    std = {"momentum_20": standardize(mom.where(elig), xs),
           "volatility_20": standardize(vol.where(elig), xs)}
    return composite_score(std, directions_of(DEFAULT_FACTORS)), eligible


CHAIN_CFG = PortfolioConfig(top_n=3, buffer=2, min_hold_days=5, rebalance_every=5,
                            weighting="inverse_vol", max_weight=0.4, regime_window=20,
                            regime_lookback=120, regime_min_periods=30, abs_mom_window=60,
                            defensive_symbol=BOND)


@pytest.fixture(scope="module")
def chain() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, PortfolioResult]:
    close = synthetic_close()
    score, eligible = chain_inputs(close)
    return close, score, eligible, build_portfolio(score, eligible, CHAIN_CFG, close=close)


def test_chain_weights_obey_the_limits(chain: tuple) -> None:
    close, score, eligible, result = chain
    w = result.weights
    assert list(w.columns) == [*FUNDS, BOND]
    values = w.to_numpy()
    assert (values >= 0).all() and (values <= CHAIN_CFG.max_weight).all()
    assert (values.sum(axis=1) <= 1 + 1e-12).all()
    # Only held funds and the (eligible) defensive fund carry weight; never an ineligible one.
    assert (w[FUNDS].to_numpy()[~result.selection.to_numpy()] == 0).all()
    assert (values[~eligible[w.columns].to_numpy()] == 0).all()
    # The stages all acted somewhere (the test has teeth).
    assert (result.exposure < 1).any() and (w[BOND] > 0).any()
    assert (result.selection.sum(axis=1) == 3).sum() > 200
    pd.testing.assert_frame_equal(w, target_weights(score, eligible, CHAIN_CFG, close=close))


def test_chain_trades_only_on_rebalance_or_loss_of_eligibility(chain: tuple) -> None:
    result = chain[3]
    w = result.weights.to_numpy()
    sched = result.rebalance.to_numpy()
    elig = np.column_stack([result.eligible.to_numpy(), result.defensive_eligible.to_numpy()])
    for t in range(1, len(w)):
        if not sched[t]:
            lost = ~elig[t]
            assert (w[t][~lost] == w[t - 1][~lost]).all()
            assert (w[t][lost] == 0).all()


def test_chain_has_no_look_ahead() -> None:
    """Change every input after D (prices, hence scores, eligibility, volatility, momentum and
    the market): the targets up to D are bit-identical."""
    close = synthetic_close()
    score, eligible = chain_inputs(close)
    base = build_portfolio(score, eligible, CHAIN_CFG, close=close)
    rng = np.random.default_rng(99)
    for cut in (120, 263, 331):
        alt = close.copy()
        shock = np.exp(np.cumsum(rng.normal(0, 0.03, (len(close) - cut - 1, close.shape[1])),
                                 axis=0))
        alt.iloc[cut + 1:] = alt.iloc[cut + 1:].to_numpy() * shock
        alt.iloc[cut + 5: cut + 40, 1] = NAN  # a suspension after D too
        alt_score, alt_eligible = chain_inputs(alt)
        alt_score.iloc[cut + 1:] += rng.normal(0, 1, alt_score.iloc[cut + 1:].shape)
        res = build_portfolio(alt_score, alt_eligible, CHAIN_CFG, close=alt)
        head = slice(None, close.index[cut])
        pd.testing.assert_frame_equal(res.weights.loc[head], base.weights.loc[head],
                                      check_exact=True)
        pd.testing.assert_frame_equal(res.selection.loc[head], base.selection.loc[head])
        assert not res.weights.iloc[cut + 1:].equals(base.weights.iloc[cut + 1:])


def test_chain_needs_close_or_inputs_and_a_checkable_defensive_fund() -> None:
    score = panel([[1.0, 2.0, 3.0, 4.0, 5.0]])
    with pytest.raises(ValueError, match="needs close"):
        build_portfolio(score, everyone(score), PortfolioConfig())
    with pytest.raises(ValueError, match="defensive_symbol 'BOND'"):
        build_portfolio(score, everyone(score), cfg_(defensive_symbol="BOND"))


# -- explain ------------------------------------------------------------------------------------
def test_explain_selection_reasons() -> None:
    cols = list("ABCDEF")
    score = panel([[6, 5, 4, 3, 2, 9],
                   [6, 2, 5, 4, 3, 9],
                   [6, 4, 5, 3, 2, 9],
                   [6, 2, 5, 4, 3, 9],
                   [6, 2, 5, 4, 3, 9]], columns=cols)
    eligible = everyone(score)
    eligible["F"] = False
    eligible.iloc[4, 0] = False
    cfg = cfg_(top_n=2, buffer=1, min_hold_days=2, rebalance_every=1, max_weight=0.5)
    result = build_portfolio(score, eligible, cfg)
    assert held(result.selection) == ["AB", "AB", "AB", "AC", "CD"]

    def why(t: int) -> dict[str, str]:
        return explain(score.index[t], result)["reason"].to_dict()

    assert why(0) == {"A": "in: rank 1 ≤ top_n", "B": "in: rank 2 ≤ top_n",
                      "C": "out: rank 3 > top_n", "D": "out: rank 4 > top_n",
                      "E": "out: rank 5 > top_n", "F": "out: not eligible (history/stale)"}
    day1 = why(1)
    assert day1["A"] == "kept: rank 1 ≤ top_n"
    assert day1["B"] == "kept: held 1 < min_hold_days"
    assert day1["C"].startswith("out: rank 2 ≤ top_n but no free slot")
    assert why(2)["B"] == "kept: rank 3 within buffer"
    assert why(3)["B"] == "out: rank 5 > top_n+buffer" and why(3)["C"] == "in: rank 2 ≤ top_n"
    assert why(4)["A"] == "out: not eligible (history/stale)"
    assert why(4)["D"] == "in: rank 2 ≤ top_n"
    table = explain(score.index[3], result)
    assert list(table.columns) == ["score", "rank", "eligible", "held_before", "held_days",
                                   "selected", "base_weight", "weight", "reason"]
    assert list(table.index) == ["A", "C", "D", "E", "B", "F"]  # by rank, unranked last
    row = table.loc["B"]
    assert row["held_before"] and not row["selected"] and row["held_days"] == 3
    assert row["rank"] == 5 and row["weight"] == 0
    assert table.loc["C", "weight"] == 0.5 and not table.loc["C", "held_before"]
    with pytest.raises(KeyError):
        explain("2030-01-01", result)


def _overlay_result(bond_eligible: bool) -> PortfolioResult:
    score = panel([[3, 2, 1]] * 4, columns=list("ABC"))
    eligible = everyone(score)
    eligible["BOND"] = True
    eligible.loc[eligible.index[2], "BOND"] = bond_eligible
    abs_mom = panel([[0.01, 0.1, 0.1], [0.01, 0.1, 0.1], [-0.032, 0.1, 0.1],
                     [0.05, 0.1, 0.1]], columns=list("ABC"))
    market = pd.Series([NAN, 0.0, 0.01, 0.05], index=score.index)
    cfg = PortfolioConfig(top_n=2, buffer=0, min_hold_days=0, rebalance_every=2,
                          max_weight=0.5, regime_window=2, regime_lookback=3,
                          regime_min_periods=1, regime_levels=((0.5, 0.5),),
                          abs_mom_window=60, defensive_symbol="BOND",
                          defensive_max_weight=1.0)
    return build_portfolio(score, eligible, cfg, abs_mom=abs_mom, market_returns=market)


def test_explain_regime_and_abs_momentum_reasons() -> None:
    result = _overlay_result(bond_eligible=True)
    w = result.weights
    np.testing.assert_allclose(w.to_numpy(), [[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0],
                                              [0, 0.25, 0, 0.25], [0, 0.25, 0, 0.25]])
    assert result.exposure.tolist() == [1.0, 1.0, 0.5, 0.5]
    day2 = explain(w.index[2], result)
    assert day2.loc["A", "reason"] == ("kept: rank 1 ≤ top_n; scaled by regime 0.5 (volatility "
                                       "percentile 1.00); moved to defensive: abs momentum "
                                       "−3.2 %")
    assert day2.loc["B", "reason"] == ("kept: rank 2 ≤ top_n; scaled by regime 0.5 (volatility "
                                       "percentile 1.00)")
    assert day2.loc["A", "base_weight"] == 0.5 and day2.loc["A", "weight"] == 0
    assert day2.loc["BOND", "weight"] == 0.25
    assert day2.loc["BOND", "reason"].startswith("defensive: receives")
    # Day 3 is not a rebalance session: the day-2 decision (and its momentum) carries.
    day3 = explain(w.index[3], result)
    assert day3.loc["A", "reason"].startswith("kept: carried (not a rebalance session)")
    assert "moved to defensive: abs momentum −3.2 %" in day3.loc["A", "reason"]
    assert day3.loc["C", "reason"] == "out: not a rebalance session"


def test_explain_moved_to_cash_when_defensive_fund_is_not_eligible() -> None:
    result = _overlay_result(bond_eligible=False)
    np.testing.assert_allclose(result.weights.iloc[2].to_numpy(), [0, 0.25, 0, 0])
    day2 = explain(result.weights.index[2], result)
    assert "moved to cash: abs momentum −3.2 %" in day2.loc["A", "reason"]
    assert day2.loc["BOND", "reason"].startswith("defensive: not eligible")
    # Bond eligible again on day 3, a non-rebalance day: the cash stays cash until a rebalance.
    assert result.weights.iloc[3].tolist() == [0, 0.25, 0, 0]
    assert "moved to cash: abs momentum −3.2 %" in explain(result.weights.index[3],
                                                         result).loc["A", "reason"]


# -- config -------------------------------------------------------------------------------------
def test_config_defaults() -> None:
    cfg = PortfolioConfig()
    assert (cfg.top_n, cfg.buffer, cfg.min_hold_days, cfg.rebalance_every) == (3, 2, 5, 5)
    assert cfg.weighting == "equal" and cfg.max_weight == 0.4 and cfg.defensive_cap == 0.4
    assert cfg.regime_levels == ((0.8, 0.5), (0.95, 0.0)) and cfg.abs_mom_window == 60
    assert PortfolioConfig(regime_levels=[[0.7, 0.6]]).regime_levels == ((0.7, 0.6),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.top_n = 4  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"top_n": 0}, "top_n"),
    ({"buffer": -1}, "buffer"),
    ({"min_hold_days": -2}, "min_hold_days"),
    ({"rebalance_every": 0}, "rebalance_every"),
    ({"weighting": "vol"}, "weighting"),
    ({"max_weight": 0.0}, "max_weight"),
    ({"max_weight": 1.5}, "max_weight"),
    ({"regime_window": 1}, "regime_window"),
    ({"regime_levels": ((1.2, 0.5),)}, "regime_levels"),
    ({"regime_levels": ((0.9, 0.5), (0.8, 0.0))}, "regime_levels"),
    ({"regime_levels": ((0.8, 0.0), (0.9, 0.5))}, "regime_levels"),
    ({"regime_min_periods": 300}, "regime_min_periods"),
    ({"abs_mom_window": 0}, "abs_mom_window"),
    ({"abs_mom_threshold": float("nan")}, "abs_mom_threshold"),
    ({"abs_mom_threshold": -1.5}, "abs_mom_threshold"),
    ({"defensive_symbol": ""}, "defensive_symbol"),
    ({"defensive_max_weight": 2.0}, "defensive_max_weight"),
    ({"topn": 3}, "topn"),
])
def test_config_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        PortfolioConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "loc", "why"), [
    ({"regime_levels": ((0.8, 0.6), (0.95, 1.3))}, ("regime_levels", 1, 1), "less than or equal"),
    ({"regime_levels": ((-0.1, 0.6),)}, ("regime_levels", 0, 0), "greater than or equal"),
    ({"regime_levels": ((0.8, float("nan")),)}, ("regime_levels", 0, 1), "less than or equal"),
    ({"regime_levels": ((0.9, 0.5), (0.8, 0.0))}, ("regime_levels",), "strictly increasing"),
    ({"regime_levels": ((0.8, 0.0), (0.9, 0.5))}, ("regime_levels",), "must not increase"),
    ({"regime_min_periods": 300}, ("regime_min_periods",), "<= the regime lookback (252)"),
    ({"regime_lookback": 30, "regime_min_periods": 31}, ("regime_min_periods",), "(30)"),
])
def test_config_errors_are_located_at_the_field(kwargs: dict[str, object],
                                                loc: tuple[object, ...], why: str) -> None:
    # The location names the field (the strategy file maps it onto its nested keys), so the
    # messages need not repeat it.
    with pytest.raises(ValidationError) as info:
        PortfolioConfig(**kwargs)
    (error,) = info.value.errors()
    assert error["loc"] == loc and why in error["msg"]


def test_min_periods_check_waits_for_a_valid_lookback() -> None:
    with pytest.raises(ValidationError) as info:
        PortfolioConfig(regime_lookback=1, regime_min_periods=300)
    assert [e["loc"] for e in info.value.errors()] == [("regime_lookback",)]

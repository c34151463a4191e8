"""Classic single-strategy signal generators: hand-computed long/flat paths, sizing, no
look-ahead, and a run through the backtest on the generated sample market."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from rotation.adjust import adjust_bars
from rotation.backtest import run_backtest
from rotation.classic import (
    CLASSIC_CONFIGS,
    CLASSIC_STRATEGIES,
    BollingerConfig,
    GridConfig,
    MACDConfig,
    MACrossConfig,
    RSIConfig,
    classic_exposure,
    classic_weights,
)
from rotation.factors import Panels
from rotation.sources.sample import SampleMarketSpec, generate_sample_market, sample_instruments


def _close(*cols: list[float], names: str = "ABCDEFG") -> pd.DataFrame:
    n = len(cols[0])
    return pd.DataFrame({names[i]: c for i, c in enumerate(cols)},
                        index=pd.bdate_range("2024-01-02", periods=n), dtype=float)


def _long(name: str, close: pd.DataFrame, cfg: object) -> list[int]:
    return classic_exposure(name, close, cfg)["A"].astype(int).tolist()


# -- hand-computed paths -----------------------------------------------------------------------


def test_ma_cross_hand_path() -> None:
    # MA2 vs MA3 from bar 2: 11.5>11, 11.5>11.33, 10.5<11, 9.5<10, 9.5<9.67, 11>10.33
    close = _close([10, 11, 12, 11, 10, 9, 10, 12])
    assert _long("ma_cross", close, MACrossConfig(fast=2, slow=3)) == [0, 0, 1, 1, 0, 0, 0, 1]
    w = classic_weights("ma_cross", close, {"fast": 2, "slow": 3, "rebalance": "daily"})
    assert w["A"].tolist() == [0, 0, 1, 1, 0, 0, 0, 1]


def test_macd_matches_pandas_reference() -> None:
    c = pd.Series([10, 10.5, 11, 11.8, 12, 11.5, 10.8, 10, 9.6, 9.9, 10.6, 11.4, 12.1, 12.0,
                   11.2, 10.5, 10.1, 10.4, 11.0, 11.9])
    fast, slow, signal = 2, 4, 3
    m = c.ewm(span=fast, adjust=False).mean() - c.ewm(span=slow, adjust=False).mean()
    hist = m - m.ewm(span=signal, adjust=False).mean()
    expected = [0] * (slow + signal - 2) + (hist.iloc[slow + signal - 2:] > 0).astype(int).tolist()
    got = _long("macd", _close(c.tolist()), MACDConfig(fast=fast, slow=slow, signal=signal))
    assert got == expected
    assert 0 < sum(got) < len(got) - (slow + signal - 2)  # both states occur


def test_bollinger_hand_path() -> None:
    # window 3, k 1 (population std):
    # bar 2 [10,11,10]: lower 9.86, c=10 → flat;  bar 3 [11,10,7]: lower 7.63, c=7 → enter;
    # bar 4 [10,7,8]: mid 8.33, c=8 < mid → hold; bar 5 [7,8,9]: mid 8, c=9 → exit;
    # bars 6, 7 above the lower band → flat; bar 8 [10,11,6]: lower 6.84, c=6 → enter;
    # bar 9 [11,6,12]: mid 9.67, c=12 → exit.
    close = _close([10, 11, 10, 7, 8, 9, 10, 11, 6, 12])
    assert _long("bollinger", close, BollingerConfig(window=3, k_std=1.0)) == [
        0, 0, 0, 1, 1, 0, 0, 0, 1, 0]


def test_rsi_hand_path() -> None:
    # Wilder RSI(2): seed at bar 2 g=l=0.5 → 50; bar 3 g=.25 l=.75 → 25 < 30 enter;
    # bar 4 → 12.5; bar 5 → 56.25 (hold, not > 70); bar 6 → 78.1 > 70 exit; bar 7 → 89.
    close = _close([10, 11, 10, 9, 8, 9, 10, 11])
    assert _long("rsi", close, RSIConfig(window=2, low=30, high=70)) == [0, 0, 0, 1, 1, 1, 0, 0]


def test_grid_hand_path() -> None:
    # ref 100, step 10 %: lines 110, 121, 133.1 / 90.91, 82.64; 4 levels, 2 held at ref.
    # 95 no line; 90 crosses 90.91 → 3; 85 no; 80 crosses 82.64 → 4 (full); 70, 60 stay full;
    # 95 back above 90.91 → 3; 105 above 100 → 2; 125 above 121 → 0; 150 → 0.
    close = _close([100, 95, 90, 85, 80, 70, 60, 95, 105, 125, 150])
    cfg = GridConfig(step=0.1, n_levels=4, rebalance="daily")
    expected = [0.5, 0.5, 0.75, 0.75, 1, 1, 1, 0.75, 0.5, 0, 0]
    assert classic_exposure("grid", close, cfg)["A"].tolist() == expected
    assert classic_weights("grid", close, cfg)["A"].tolist() == expected
    half = classic_weights("grid", close, GridConfig(step=0.1, n_levels=4, max_weight=0.5))
    assert half["A"].dropna().max() == 0.5


# -- sizing, emission, configs -----------------------------------------------------------------


def test_equal_weight_of_long_funds_and_cap() -> None:
    a = [10, 11, 12, 11, 10, 9, 10, 12]  # long at 2, 3, 7
    b = [10, 11, 12, 13, 14, 15, 16, 17]  # long from 2 on
    c = [17, 16, 15, 14, 13, 12, 11, 10]  # never long
    close = _close(a, b, c)
    w = classic_weights("ma_cross", close, MACrossConfig(fast=2, slow=3, rebalance="daily"))
    third = 1 / 3
    assert np.allclose(w["A"], [0, 0, third, third, 0, 0, 0, third])
    assert np.allclose(w["B"], [0, 0] + [third] * 6)
    assert (w["C"] == 0).all()
    capped = classic_weights("ma_cross", close,
                             MACrossConfig(fast=2, slow=3, max_weight=0.8, rebalance="daily"))
    assert np.allclose(capped["A"], [0, 0, 0.5, 0.5, 0, 0, 0, 0.5])
    assert np.allclose(capped["B"], [0, 0, 0.5, 0.5, 0.8, 0.8, 0.8, 0.5])
    assert (capped.sum(axis=1) <= 1 + 1e-12).all()


def test_on_change_emits_only_changes() -> None:
    close = _close([10, 11, 12, 11, 10, 9, 10, 12])
    w = classic_weights("ma_cross", close, MACrossConfig(fast=2, slow=3))
    decided = w["A"].notna().tolist()
    assert decided == [True, False, True, False, True, False, False, True]
    assert w["A"].dropna().tolist() == [0, 1, 0, 1]


def test_configs_validate() -> None:
    with pytest.raises(ValidationError):
        MACrossConfig(fast=20, slow=5)
    with pytest.raises(ValidationError):
        RSIConfig(low=80, high=20)
    with pytest.raises(ValidationError):
        GridConfig(n_levels=2, initial_levels=3)
    with pytest.raises((ValidationError, TypeError)):
        classic_weights("macd", _close([1.0, 2.0]), {"fast": 3, "unknown": 1})
    with pytest.raises(KeyError):
        classic_weights("turtle", _close([1.0, 2.0]))
    assert set(CLASSIC_STRATEGIES) == set(CLASSIC_CONFIGS) == {
        "ma_cross", "macd", "bollinger", "rsi", "grid"}


# -- look-ahead and bounds on random paths -----------------------------------------------------

SMALL = {
    "ma_cross": MACrossConfig(fast=3, slow=10),
    "macd": MACDConfig(fast=4, slow=10, signal=4),
    "bollinger": BollingerConfig(window=10, k_std=1.5),
    "rsi": RSIConfig(window=6, low=35, high=65),
    "grid": GridConfig(step=0.03, n_levels=4),
}


def _random_close(seed: int = 7, n: int = 260, m: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 10 * np.exp(np.cumsum(rng.normal(0, 0.02, (n, m)), axis=0))
    close[:30, 3] = np.nan  # a late listing
    close[100:103, 1] = np.nan  # a suspension
    return pd.DataFrame(close, index=pd.bdate_range("2023-01-02", periods=n),
                        columns=[f"5100{i:02d}" for i in range(m)])


@pytest.mark.parametrize("name", sorted(CLASSIC_STRATEGIES))
@pytest.mark.parametrize("rebalance", ["on_change", "daily"])
def test_no_look_ahead_and_bounds(name: str, rebalance: str) -> None:
    close = _random_close()
    cfg = type(SMALL[name])(**{**asdict(SMALL[name]), "rebalance": rebalance})
    base = classic_weights(name, close, cfg)
    vals = base.to_numpy()
    assert ((vals[~np.isnan(vals)] >= 0) & (vals[~np.isnan(vals)] <= 0.25 + 1e-12)).all()
    assert (base.fillna(0).sum(axis=1) <= 1 + 1e-12).all()
    assert base.notna().any(axis=1).sum() > 2  # the strategy does trade on this path
    rng = np.random.default_rng(1)
    for cut in (40, 101, 180):
        bumped = close.copy()
        bumped.iloc[cut + 1:] *= rng.uniform(0.7, 1.3, bumped.iloc[cut + 1:].shape)
        after = classic_weights(name, bumped, cfg)
        pd.testing.assert_frame_equal(after.iloc[: cut + 1], base.iloc[: cut + 1])


# -- through the backtest ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample() -> tuple[SampleMarketSpec, pd.DataFrame, Panels]:
    spec = SampleMarketSpec(n_funds=4, start="2022-01-04", end="2023-12-29")
    raw = generate_sample_market(spec)
    return spec, raw, Panels.from_bars(adjust_bars(raw))


@pytest.mark.parametrize("name", sorted(CLASSIC_STRATEGIES))
def test_runs_through_backtest(name: str, sample) -> None:
    spec, raw, panels = sample
    weights = classic_weights(name, panels)
    assert weights.index.equals(panels.index) and weights.columns.equals(panels.columns)
    assert (weights.fillna(0).sum(axis=1) <= 1 + 1e-12).all()
    res = run_backtest(weights, raw, sample_instruments(spec))
    assert len(res.orders) > 0 and res.metrics["orders_filled"] > 0
    assert not res.equity.isna().any() and len(res.equity) == len(panels.index)
    assert res.equity.iloc[0] == pytest.approx(res.config.initial_cash)
    assert np.isfinite(res.metrics["total_return"])

"""Backtest engine (SPEC §7): a hand-computed ledger, trading rules, vectorbt agreement on the
hand case and on real data, no look-ahead, metrics against hand computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rotation.backtest import BacktestConfig, run_backtest
from rotation.backtest.metrics import benchmark_comparison, performance_metrics
from rotation.backtest.vbt import compare, replay
from rotation.costs import CostModel
from rotation.sources.files import FileMarketSource, load_dataset_spec

ROOT = Path(__file__).resolve().parents[1]
DATES = pd.bdate_range("2024-01-02", periods=6)
NAN = np.nan


def _bars(prices: dict[str, list[tuple[float, float] | None]],
          factors: dict[str, list[float]] | None = None) -> pd.DataFrame:
    """Raw long bars from ``{symbol: [(open, close) or None (no bar), ...]}`` over DATES."""
    rows = []
    for sym, seq in prices.items():
        for k, oc in enumerate(seq):
            if oc is None:
                continue
            f = factors[sym][k] if factors and sym in factors else 1.0
            rows.append({"date": DATES[k], "symbol": sym, "open": oc[0], "high": max(oc),
                         "low": min(oc), "close": oc[1], "adj_factor": f})
    return pd.DataFrame(rows)


def _targets(rows: list[list[float]], symbols: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, index=DATES[: len(rows)], columns=symbols)


LIMITS = {"A": 0.10, "B": 0.10}
CFG = BacktestConfig(initial_cash=100_000.0)

# Hand case: two funds, three rebalances (decided after close d0, d1, d3).
HAND_PRICES = {
    "A": [(10.0, 10.0), (10.0, 10.2), (10.0, 10.5), (10.6, 10.4), (10.0, 10.0), None],
    # d1 opens at 19.80 = 18.00 × 1.10: limit-up, the buy is blocked.
    "B": [(18.0, 18.0), (19.8, 19.8), (20.0, 21.0), (21.5, 22.0), (22.0, 22.5), (23.0, 23.0)],
}
HAND_TARGETS = [
    [0.5, 0.5],    # d0 → executed at open d1
    [0.48, 0.5],   # d1 → d2: small sell of A (minimum commission), B bought in lots
    [NAN, NAN],    # d2: no decision
    [0.0, 1.0],    # d3 → d4: close A, all-in B
    [NAN, NAN],
    [NAN, NAN],
]


@pytest.fixture(scope="module")
def hand():
    return run_backtest(_targets(HAND_TARGETS, ["A", "B"]), _bars(HAND_PRICES), LIMITS, CFG)


def test_hand_case_ledger(hand) -> None:
    # d1: equity at open 100 000. A: 50 000 / 10 = 5 000 units, fee max(0.0002 × 50 000, 5) = 10.
    #     B: 50 000 / 19.8 = 2 525.25 → 2 500 units requested, blocked at limit-up.
    # d2: equity at open 49 990 + 5 000 × 10 = 99 990. A: 0.48 × 99 990 = 47 995.2 vs 50 000
    #     held → sell 200.48 → 200 units (lots), notional 2 000, fee max(0.4, 5) = 5 (minimum).
    #     Units bought on d1 are sellable on d2 (T+1). B: 49 995 / 20 = 2 499.75 → 2 400 units,
    #     fee 9.6.
    # d4: equity at open 3 975.4 + 4 800 × 10 + 2 400 × 22 = 104 775.4. A → 0: sell all 4 800,
    #     fee 9.6. B: 104 775.4 / 22 − 2 400 = 2 362.5 → 2 300 units, fee 10.12.
    expected = pd.DataFrame(
        [
            (DATES[1], "A", "buy", 5000.0, 5000.0, 10.0, 50000.0, 10.0, ""),
            (DATES[1], "B", "buy", 2500.0, 0.0, 19.8, 0.0, 0.0, "limit_up"),
            (DATES[2], "A", "sell", 200.0, 200.0, 10.0, 2000.0, 5.0, ""),
            (DATES[2], "B", "buy", 2400.0, 2400.0, 20.0, 48000.0, 9.6, ""),
            (DATES[4], "A", "sell", 4800.0, 4800.0, 10.0, 48000.0, 9.6, ""),
            (DATES[4], "B", "buy", 2300.0, 2300.0, 22.0, 50600.0, 10.12, ""),
        ],
        columns=["date", "symbol", "side", "requested_units", "units", "price", "notional",
                 "commission", "reason"],
    )
    got = hand.orders[expected.columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12, atol=1e-9)
    assert hand.orders["blocked"].tolist() == [False, True, False, False, False, False]


def test_hand_case_cash_equity_positions(hand) -> None:
    cash = [100_000.0, 49_990.0, 3_975.4, 3_975.4, 1_355.68, 1_355.68]
    equity = [
        100_000.0,
        49_990.0 + 5_000 * 10.2,                      # 100 990
        3_975.4 + 4_800 * 10.5 + 2_400 * 21.0,        # 104 775.4
        3_975.4 + 4_800 * 10.4 + 2_400 * 22.0,        # 106 695.4
        1_355.68 + 4_700 * 22.5,                      # 107 105.68
        1_355.68 + 4_700 * 23.0,                      # 109 455.68 (A has no bar: no position)
    ]
    np.testing.assert_allclose(hand.cash.to_numpy(), cash, rtol=1e-12)
    np.testing.assert_allclose(hand.equity.to_numpy(), equity, rtol=1e-12)
    assert hand.positions["A"].tolist() == [0, 5000, 4800, 4800, 0, 0]
    assert hand.positions["B"].tolist() == [0, 0, 2400, 2400, 4700, 4700]
    assert hand.metrics["total_commission"] == pytest.approx(10 + 5 + 9.6 + 9.6 + 10.12)


def test_hand_case_matches_vectorbt(hand) -> None:
    assert compare(hand, replay(hand)) < 1e-9


def test_t1_rule_one_net_order_per_fund_and_session(hand) -> None:
    # Rule: target − holding is netted into ONE order per fund and session, so a buy and a sell
    # of a fund for the same session never both exist; units bought in a session are not
    # sellable in it, units bought on an earlier session are (A bought d1, partly sold d2).
    assert not hand.orders.duplicated(["date", "symbol"]).any()
    a = hand.orders[(hand.orders.symbol == "A") & ~hand.orders.blocked]
    assert a[["side", "date"]].values.tolist() == [
        ["buy", DATES[1]], ["sell", DATES[2]], ["sell", DATES[4]]]
    # Same-session netting: raising A from 0.48 to 0.5 while moving B changes only A's net size.
    tw = _targets([[0.5, 0.0], [0.3, 0.2], [NAN, NAN]], ["A", "B"])
    prices = {"A": [(10.0, 10.0)] * 3, "B": [(10.0, 10.0)] * 3}
    res = run_backtest(tw, _bars({k: v for k, v in prices.items()}), LIMITS, CFG)
    d2 = res.orders[res.orders.date == DATES[2]]
    assert d2[["symbol", "side", "units"]].values.tolist() == [["A", "sell", 2000.0],
                                                                ["B", "buy", 1900.0]]


def test_limit_down_blocks_sell() -> None:
    tw = _targets([[1.0], [0.0], [NAN]], ["A"])
    # d2 opens at 9.00 = 10.00 × 0.90: limit-down, the sell is blocked and the position kept.
    res = run_backtest(tw, _bars({"A": [(10.0, 10.0), (10.0, 10.0), (9.0, 9.5)]}), LIMITS, CFG)
    sell = res.orders[res.orders.side == "sell"].iloc[0]
    assert sell["reason"] == "limit_down" and sell["units"] == 0 and sell["blocked"]
    assert res.positions["A"].iloc[-1] == res.positions["A"].iloc[1] > 0
    # Without a price limit (cross-border fund) the same sell fills.
    free = run_backtest(tw, _bars({"A": [(10.0, 10.0), (10.0, 10.0), (9.0, 9.5)]}),
                        {"A": None}, CFG)
    assert free.positions["A"].iloc[-1] == 0


def test_no_bar_no_trade() -> None:
    tw = _targets([[0.5, 0.5], [NAN, NAN], [NAN, NAN]], ["A", "B"])
    bars = _bars({"A": [(10.0, 10.0), None, (11.0, 11.0)], "B": [(10.0, 10.0)] * 3})
    res = run_backtest(tw, bars, LIMITS, CFG)
    a = res.orders[res.orders.symbol == "A"].iloc[0]
    assert a["reason"] == "no_bar" and a["blocked"] and a["date"] == DATES[1]
    assert res.positions["A"].tolist() == [0, 0, 0]
    assert res.positions["B"].tolist() == [0, 5000, 5000]


def test_partial_fill_when_cash_short() -> None:
    # 10 000 cash, target 100 % at 10.00: 1 000 units cost 10 000 + 5 > cash → 900 units.
    tw = _targets([[1.0], [NAN]], ["A"])
    res = run_backtest(tw, _bars({"A": [(10.0, 10.0), (10.0, 10.0)]}), LIMITS,
                       BacktestConfig(initial_cash=10_000.0))
    o = res.orders.iloc[0]
    assert (o["requested_units"], o["units"], o["reason"]) == (1000.0, 900.0, "cash_short")
    assert res.cash.iloc[-1] == pytest.approx(10_000 - 9_000 - 5)


def test_slippage_and_split_in_adjusted_space() -> None:
    # B splits 2:1 before d2 (raw price halves, factor doubles): equity is unaffected, raw
    # units double, the sell at d3 is in raw lots at the raw price minus 10 bp slippage.
    tw = _targets([[0.5, 0.5], [NAN, NAN], [0.5, 0.0], [NAN, NAN]], ["A", "B"])
    prices = {"A": [(10.0, 10.0)] * 4, "B": [(10.0, 10.0), (10.0, 10.0), (5.0, 5.0), (5.0, 5.0)]}
    factors = {"B": [1.0, 1.0, 2.0, 2.0]}
    cfg = BacktestConfig(initial_cash=100_000.0, costs=CostModel(slippage_bps=10))
    res = run_backtest(tw, _bars(prices, factors), LIMITS, cfg)
    assert res.positions["B"].tolist() == [0, 4900, 9800, 0]
    sell = res.orders[(res.orders.symbol == "B")].iloc[-1]
    assert sell["units"] == 9800 and sell["price"] == pytest.approx(5.0 * 0.999)
    buy = res.orders.iloc[0]
    assert buy["price"] == pytest.approx(10.0 * 1.001)
    assert res.equity.iloc[1] == pytest.approx(res.equity.iloc[2], rel=1e-12)
    assert compare(res, replay(res)) < 1e-9


# -- real data ---------------------------------------------------------------------------------

REAL_SYMBOLS = ["510300", "510500", "159915", "512880", "512100", "510880", "513100", "518880",
                "512690", "512010"]


@pytest.fixture(scope="module")
def real(shared_data: Path):
    root = shared_data / "cn_etf_akshare_qfq_2020"
    src = FileMarketSource(root, load_dataset_spec(ROOT / "config/datasets/"
                                                   "cn_etf_akshare_qfq_2020.yaml"))
    bars = src.load(end="2023-12-31").bars
    bars = bars[bars["symbol"].isin(REAL_SYMBOLS)]
    close = bars.pivot(index="date", columns="symbol", values="close")[REAL_SYMBOLS]
    mom = close / close.shift(60) - 1
    month_end = pd.Series(close.index, index=close.index).groupby(
        close.index.to_period("M")).transform("max") == close.index
    top = mom.rank(axis=1, ascending=False, method="first") <= 3
    weights = (top.astype(float) / 3).where(mom.notna(), 0.0).where(month_end)
    weights.iloc[:60] = np.nan
    cfg = BacktestConfig(costs=CostModel(slippage_bps=5))
    return bars, weights, src.instruments(), cfg, run_backtest(weights, bars, src.instruments(),
                                                               cfg)


def test_real_case_matches_vectorbt(real) -> None:
    *_, res = real
    assert (~res.orders.blocked).sum() > 100
    assert not res.orders.duplicated(["date", "symbol"]).any()
    diff = compare(res, replay(res))
    print(f"engine vs vectorbt max relative difference: {diff:.3e}")
    assert diff < 1e-9
    assert (res.cash >= -1e-9).all()
    # Holdings follow the targets: after each execution session, invested weights ≈ targets.
    held = res.positions.iloc[-1] > 0
    assert held.sum() <= 3
    # Benchmarks: equal-weight universe and 510300 (adjusted closes, same dates).
    bars, weights, instruments, cfg, _ = real
    with_bm = run_backtest(weights, bars, instruments, cfg, benchmark="510300")
    close = with_bm.panels.close["510300"]
    assert with_bm.metrics["bm_benchmark_total_return"] == pytest.approx(
        close.iloc[-1] / close.iloc[0] - 1)
    assert with_bm.metrics["bm_excess_return"] == pytest.approx(
        with_bm.equity.iloc[-1] / with_bm.equity.iloc[0] - close.iloc[-1] / close.iloc[0])
    ew = with_bm.panels.close.pct_change(fill_method=None).mean(axis=1).fillna(0.0)
    assert with_bm.metrics["ew_benchmark_total_return"] == pytest.approx((1 + ew).prod() - 1)
    assert math.isfinite(with_bm.metrics["ew_information_ratio"])


def test_real_case_no_look_ahead(real) -> None:
    bars, weights, instruments, cfg, res = real
    cut = weights.index[400]
    rng = np.random.default_rng(0)
    later = bars["date"] > cut
    perturbed = bars.copy()
    scale = rng.uniform(0.8, 1.2, later.sum())
    for col in ("open", "high", "low", "close"):
        perturbed.loc[later, col] = perturbed.loc[later, col] * scale
    w2 = weights.copy()
    w2.loc[w2.index > cut] = w2.loc[w2.index > cut].iloc[:, ::-1].to_numpy()
    res2 = run_backtest(w2, perturbed, instruments, cfg)
    np.testing.assert_array_equal(res2.equity.loc[:cut].to_numpy(), res.equity.loc[:cut].to_numpy())
    assert not np.allclose(res2.equity.loc[cut:].to_numpy(), res.equity.loc[cut:].to_numpy())


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_by_hand() -> None:
    eq = pd.Series([100.0, 110.0, 99.0, 108.9, 121.0], index=pd.bdate_range("2024-01-01",
                                                                              periods=5))
    r = np.array([0.10, -0.10, 0.10, 121.0 / 108.9 - 1])
    m = performance_metrics(eq, cash=pd.Series([100.0, 55.0, 0.0, 0.0, 121.0], index=eq.index),
                            positions=pd.DataFrame({"X": [0, 1, 1, 0, 1], "Y": [0, 0, 1, 1, 0]},
                                                   index=eq.index),
                            traded_notional=220.0)
    std = np.std(r, ddof=1)
    assert m["total_return"] == pytest.approx(0.21)
    assert m["cagr"] == pytest.approx(1.21 ** (252 / 4) - 1)
    assert m["annual_volatility"] == pytest.approx(std * math.sqrt(252))
    assert m["sharpe"] == pytest.approx(r.mean() / std * math.sqrt(252))
    assert m["sortino"] == pytest.approx(r.mean() / math.sqrt(0.01 / 4) * math.sqrt(252))
    assert m["max_drawdown"] == pytest.approx(-0.1)
    assert m["calmar"] == pytest.approx(m["cagr"] / 0.1)
    assert m["max_drawdown_duration"] == 2
    assert m["win_rate"] == pytest.approx(0.75)
    assert m["profit_loss_ratio"] == pytest.approx(np.mean(r[r > 0]) / 0.1)
    assert m["turnover"] == pytest.approx(220 / 2 / eq.mean() * 252 / 5)
    assert m["avg_holding_days"] == pytest.approx((2 + 1 + 2) / 3)
    assert m["exposure"] == pytest.approx(np.mean([0, 55 / 110, 1, 1, 0]))


def test_benchmark_comparison_by_hand() -> None:
    idx = pd.bdate_range("2024-01-01", periods=4)
    eq = pd.Series([1.0, 1.02, 1.0404, 1.0], index=idx)
    bm = pd.Series([1.0, 1.01, 1.01, 1.0302], index=idx)
    out = benchmark_comparison(eq, bm)
    active = np.array([0.02 - 0.01, 0.02 - 0.0, 1.0 / 1.0404 - 1 - 0.02])
    te = np.std(active, ddof=1) * math.sqrt(252)
    assert out["excess_return"] == pytest.approx(0.0 - 0.0302)
    assert out["tracking_error"] == pytest.approx(te)
    assert out["information_ratio"] == pytest.approx(active.mean() * 252 / te)


def test_benchmark_without_common_sessions_is_unknown_not_an_error() -> None:
    """A benchmark fund listed after the period (510300 before 2012 on the real A-share
    history): the comparison is NaN, the backtest goes on."""
    eq = pd.Series([1.0, 1.02, 1.03], index=pd.bdate_range("2006-01-02", periods=3))
    bm = pd.Series([np.nan, np.nan, np.nan], index=eq.index)
    out = benchmark_comparison(eq, bm)
    assert set(out) == {"benchmark_total_return", "excess_return", "excess_cagr",
                        "tracking_error", "information_ratio"}
    assert all(math.isnan(v) for v in out.values())


def test_config_rejects_unknown_fields() -> None:
    with pytest.raises(Exception, match="bogus"):
        BacktestConfig(bogus=1)  # type: ignore[call-arg]

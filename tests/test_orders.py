"""Order planning (SPEC §7, §9): hand-computed quantities, sells before buys, whole-position
exits, the cash bound, agreement with the backtest engine's sizing, and real closes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rotation.backtest.engine import REC_COL, REC_SIDE, REC_UNITS, simulate_nb
from rotation.costs import CostModel
from rotation.orders import PlannedOrder, order_notional, plan_orders, weights_of
from rotation.sources.files import FileMarketSource, load_dataset_spec

ROOT = Path(__file__).resolve().parents[1]


def _rows(orders: list[PlannedOrder]) -> list[tuple[str, str, int]]:
    return [(o.symbol, o.side, o.quantity) for o in orders]


# -- hand-computed cases -----------------------------------------------------------------------

def test_from_cash_exact_quantities() -> None:
    # Equity 100,000: 510300 50,000 / 3.912 = 12,781.2 → 12,700; 518880 30,000 / 5 = 6,000.
    orders = plan_orders({"518880": 0.3, "510300": 0.5}, {}, 100_000.0,
                         {"510300": 3.912, "518880": 5.0})
    assert _rows(orders) == [("510300", "buy", 12_700), ("518880", "buy", 6_000)]
    first = orders[0]
    assert first.reference_price == 3.912
    assert first.current_units == 0
    assert first.target_units_value == pytest.approx(50_000.0)
    assert first.reason == "rebalance to 50.0% (from 0.0%)"
    assert order_notional(first) == pytest.approx(12_700 * 3.912)
    assert first.notional == order_notional(first)
    assert not first.closes_position


def test_rebalance_sells_first_and_whole_exit_with_odd_lot() -> None:
    # Equity = 5,000 + 1,000×10 + 550×4 + 2,000×2 = 21,200.
    positions = {"A": 1_000, "B": 550, "C": 2_000}
    close = {"A": 10.0, "B": 4.0, "C": 2.0, "D": 5.3}
    targets = {"D": 0.2, "C": 0.4, "A": 0.25}
    orders = plan_orders(targets, positions, 5_000.0, close)
    # A: target 5,300 vs 10,000 → −470 units → sell 400 (whole lots).
    # B: not in the target → sell all 550 (odd lot included).
    # C: target 8,480 vs 4,000 → +2,240 units → buy 2,200.
    # D: target 4,240 / 5.3 = 800 units → buy 800.
    assert _rows(orders) == [("A", "sell", 400), ("B", "sell", 550),
                             ("C", "buy", 2_200), ("D", "buy", 800)]
    by = {o.symbol: o for o in orders}
    assert by["A"].reason == "rebalance to 25.0% (from 47.2%)"
    assert by["B"].reason == "exit: not in target"
    assert by["B"].closes_position and by["B"].target_units_value == 0.0
    assert not by["A"].closes_position
    assert by["C"].target_units_value == pytest.approx(0.4 * 21_200)
    assert by["C"].current_units == 2_000


def test_zero_target_weight_is_an_exit() -> None:
    orders = plan_orders({"A": 0.0, "B": 0.5}, {"A": 1_234, "B": 1_000}, 0.0,
                         {"A": 1.0, "B": 1.0})
    # Equity 2,234; B target 1,117 → +117 units → buy 100.
    assert _rows(orders) == [("A", "sell", 1_234), ("B", "buy", 100)]
    assert orders[0].reason == "exit: target weight 0"


def test_cash_neutral_rebalance() -> None:
    orders = plan_orders({"A": 0.25, "B": 0.75}, {"A": 1_000, "B": 1_000}, 0.0,
                         {"A": 10.0, "B": 10.0})
    assert _rows(orders) == [("A", "sell", 500), ("B", "buy", 500)]
    sells = sum(order_notional(o) for o in orders if o.side == "sell")
    buys = sum(order_notional(o) for o in orders if o.side == "buy")
    assert sells == buys == 5_000.0


def test_below_one_lot_and_at_target_give_no_order() -> None:
    # At target: nothing. 99 units away: rounds to zero lots and is dropped.
    assert plan_orders({"A": 0.5}, {"A": 500}, 500.0, {"A": 1.0}) == []
    assert plan_orders({"A": 0.5}, {"A": 500}, 698.0, {"A": 1.0}) == []  # +99 units
    assert plan_orders({"A": 0.5}, {"A": 500}, 700.0, {"A": 1.0}) == [
        PlannedOrder("A", "buy", 100, 1.0, 500, 600.0, "rebalance to 50.0% (from 41.7%)")]
    # An unheld fund with weight 0 needs no price and makes no order.
    assert plan_orders({"A": 0.0}, {}, 1_000.0, {}) == []
    # Zero-unit position rows are ignored.
    assert plan_orders({}, {"A": 0}, 1_000.0, {}) == []


def test_cash_bound_cuts_buys_in_symbol_order() -> None:
    # Weights sum to 1: the A sell rounds down (keeps 700 units, 1,700 over target), so the
    # buys need 11,900 while cash + sells = 5,000 + 4,000 + 2,200 = 11,200.
    positions = {"A": 1_000, "B": 550, "C": 2_000}
    close = {"A": 10.0, "B": 4.0, "C": 2.0, "D": 5.3}
    orders = plan_orders({"A": 0.25, "C": 0.5, "D": 0.25}, positions, 5_000.0, close)
    # C buys 3,300 (6,600 CNY, 4,600 left); D wants 1,000 (5,300) → cut to 800 (4,240).
    assert _rows(orders) == [("A", "sell", 400), ("B", "sell", 550),
                             ("C", "buy", 3_300), ("D", "buy", 800)]
    assert orders[-1].reason.endswith("cut from 1000 to 800 units by the cash left")
    buys = sum(order_notional(o) for o in orders if o.side == "buy")
    sells = sum(order_notional(o) for o in orders if o.side == "sell")
    assert buys <= 5_000.0 + sells


def test_cash_bound_with_commission_matches_engine_rule() -> None:
    # All-in at 1.00 with 10,000 cash: 10,000 units would cost 10,000 + 5 (minimum fee).
    costs = CostModel(commission_bps=2.0, min_commission=5.0)
    orders = plan_orders({"A": 1.0}, {}, 10_000.0, {"A": 1.0}, costs=costs)
    assert _rows(orders) == [("A", "buy", 9_900)]
    # Not affordable at all: the buy is dropped.
    assert plan_orders({"A": 1.0}, {}, 104.0, {"A": 1.0}, costs=costs) == []


def test_weights_of() -> None:
    w = weights_of({"B": 550, "A": 1_000, "Z": 0}, 5_000.0, {"A": 10.0, "B": 4.0})
    assert list(w) == ["A", "B"]
    assert w["A"] == pytest.approx(10_000 / 17_200)
    assert w["B"] == pytest.approx(2_200 / 17_200)
    assert weights_of({}, 0.0, {}) == {}
    with pytest.raises(ValueError, match="A: no last close"):
        weights_of({"A": 100}, 0.0, {})


@pytest.mark.parametrize(
    ("targets", "positions", "cash", "close", "match"),
    [
        ({"A": float("nan")}, {}, 1e5, {"A": 1.0}, "target A: weight is NaN"),
        ({"A": float("inf")}, {}, 1e5, {"A": 1.0}, "target A: weight is infinite"),
        ({"A": -0.1}, {}, 1e5, {"A": 1.0}, "target A: negative weight -0.1"),
        ({"A": 0.5}, {}, 1e5, {}, "fund A: no last close"),
        ({"A": 0.5}, {}, 1e5, {"A": 0.0}, "fund A: last close 0.0 is not a positive"),
        ({"A": 0.5}, {}, 1e5, {"A": float("nan")}, "fund A: last close nan"),
        ({}, {"B": 100}, 1e5, {}, "fund B: no last close"),
        ({}, {"B": -100}, 1e5, {"B": 1.0}, "position B: negative units -100"),
        ({}, {"B": 100.5}, 1e5, {"B": 1.0}, "position B: units 100.5 is not a whole number"),
        ({}, {}, -1.0, {}, "cash -1.00 is negative"),
        ({}, {}, float("nan"), {}, "cash nan is not finite"),
    ],
)
def test_errors_name_the_fund_and_problem(targets, positions, cash, close, match) -> None:
    with pytest.raises(ValueError, match=match):
        plan_orders(targets, positions, cash, close)


def test_bad_lot_size() -> None:
    with pytest.raises(ValueError, match="lot_size"):
        CostModel(lot_size=0)


def test_numpy_scalars_are_accepted() -> None:
    orders = plan_orders({"A": np.float64(0.5)}, {"A": np.int64(1_000)}, np.float64(0.0),
                         {"A": np.float64(1.0)})
    assert _rows(orders) == [("A", "sell", 500)]
    assert isinstance(orders[0].quantity, int)


# -- property-style checks ---------------------------------------------------------------------

def _random_case(rng: np.random.Generator, n: int = 12
                 ) -> tuple[dict[str, float], dict[str, int], float, dict[str, float]]:
    symbols = [f"{510000 + 10 * k}" for k in range(n)]
    price = {s: float(np.round(rng.uniform(0.3, 12.0), 3)) for s in symbols}
    held = rng.random(n) < 0.5
    positions = {s: int(rng.integers(1, 300)) * 100 + int(rng.integers(0, 2)) * int(
        rng.integers(1, 100)) for s, h in zip(symbols, held, strict=True) if h}
    chosen = rng.random(n) < 0.5
    chosen[int(rng.integers(0, n))] = True
    gross = 1.0 if rng.random() < 0.5 else rng.uniform(0.2, 1.0)  # fully invested half the time
    raw = rng.dirichlet(np.ones(n)) * chosen
    raw = raw / raw.sum() * gross
    targets = {s: float(w) for s, w, c in zip(symbols, raw, chosen, strict=True) if c}
    cash = float(np.round(rng.uniform(0.0, 2e6), 2))
    return targets, positions, cash, price


def test_random_weights_properties() -> None:
    rng = np.random.default_rng(20240607)
    n_cut = 0
    for _ in range(300):
        targets, positions, cash, price = _random_case(rng)
        orders = plan_orders(targets, positions, cash, price)
        n_cut += any("cut from" in o.reason for o in orders)
        equity = cash + sum(u * price[s] for s, u in positions.items())
        sides = [o.side for o in orders]
        assert sides == sorted(sides, key=lambda s: s == "buy")  # sells first
        for side in ("sell", "buy"):
            syms = [o.symbol for o in orders if o.side == side]
            assert syms == sorted(syms) and len(set(syms)) == len(syms)
        sells = sum(order_notional(o) for o in orders if o.side == "sell")
        buys = sum(order_notional(o) for o in orders if o.side == "buy")
        assert buys <= equity + 1e-6
        assert buys <= cash + sells + 1e-6  # the cash bound
        after = dict(positions)
        for o in orders:
            assert o.quantity > 0
            assert o.reference_price == price[o.symbol]
            assert o.current_units == positions.get(o.symbol, 0)
            if o.side == "sell":
                assert o.quantity <= positions[o.symbol]
                if targets.get(o.symbol, 0.0) == 0.0:
                    assert o.quantity == positions[o.symbol]  # whole exit
                else:
                    assert o.quantity % 100 == 0
                after[o.symbol] -= o.quantity
            else:
                assert o.quantity % 100 == 0
                after[o.symbol] = after.get(o.symbol, 0) + o.quantity
        # Funds not in the target are gone; others sit within one lot of their target unless
        # the cash bound cut a buy (then they are below it).
        cut = {o.symbol for o in orders if "cut from" in o.reason}
        for s in set(after) | set(targets):
            units = after.get(s, 0)
            w = targets.get(s, 0.0)
            if w == 0.0:
                assert units == 0
                continue
            gap = w * equity - units * price[s]
            lot_value = 100 * price[s]
            assert gap > -lot_value - 1e-6
            if s not in cut:
                assert gap < lot_value + 1e-6
    assert n_cut > 0  # the cash bound was exercised


def test_agrees_with_backtest_engine_sizing() -> None:
    """The planner at price p and the engine executing at open p size identical orders."""
    rng = np.random.default_rng(7)
    rate, min_fee = 2e-4, 5.0
    for _ in range(40):
        n = 8
        symbols = sorted(f"{510000 + k}" for k in range(n))
        p = np.round(rng.uniform(0.3, 8.0, size=(3, n)), 3)  # open of sessions 1 and 2
        w1 = rng.dirichlet(np.ones(n)) * (rng.random(n) < 0.6)
        w2 = rng.dirichlet(np.ones(n)) * (rng.random(n) < 0.6)
        target = np.full((3, n), np.nan)
        target[0], target[1] = w1, w2
        ones = np.ones((3, n))
        no = np.zeros((3, n), dtype=np.bool_)
        costs = np.array([rate, min_fee, 0.0, 0.0, 100.0])
        t1, reuse = np.zeros(n, dtype=np.bool_), np.ones(n, dtype=np.bool_)
        _, cash_e, units_e, rec = simulate_nb(target, p, p, ones, ~no, no, no, 1e6, costs, t1,
                                              reuse, np.full((3, n), np.nan), no, no)
        positions: dict[str, int] = {}
        cash = 1e6
        for t, w in ((1, w1), (2, w2)):
            last = dict(zip(symbols, p[t].tolist(), strict=True))
            targets = {s: float(x) for s, x in zip(symbols, w, strict=True) if x > 0}
            orders = plan_orders(targets, positions, cash, last,
                                 costs=CostModel(commission_bps=rate * 1e4,
                                                 min_commission=min_fee))
            day = rec[rec[:, 0] == t]
            engine = sorted((symbols[int(r[REC_COL])], "buy" if r[REC_SIDE] > 0 else "sell",
                             round(r[REC_UNITS])) for r in day if r[REC_UNITS] > 0)
            assert sorted(_rows(orders)) == engine
            for o in orders:
                notional = o.quantity * o.reference_price
                fee = max(rate * notional, min_fee)
                if o.side == "sell":
                    positions[o.symbol] -= o.quantity
                    cash += notional - fee
                else:
                    positions[o.symbol] = positions.get(o.symbol, 0) + o.quantity
                    cash -= notional + fee
            assert cash == pytest.approx(cash_e[t], abs=1e-6)
            held = {s: round(u) for s, u in zip(symbols, units_e[t], strict=True) if u > 0}
            assert {s: u for s, u in positions.items() if u} == held


# -- real data ---------------------------------------------------------------------------------

EQUAL_WEIGHT = ["510300", "510500", "159915", "518880", "513100", "512880", "159949", "512100",
                "510050", "512660"]


@pytest.fixture(scope="module")
def real_closes(shared_data: Path) -> pd.DataFrame:
    root = shared_data / "cn_etf_akshare_qfq_2020"
    src = FileMarketSource(root, load_dataset_spec(ROOT / "config/datasets/"
                                                   "cn_etf_akshare_qfq_2020.yaml"))
    # The qfq prices equal raw prices at the end of the sample (PROVENANCE.md).
    bars = src.load(start="2026-03-01", end="2026-05-07").bars
    return bars.pivot(index="date", columns="symbol", values="close")


def test_real_equal_weight_plan_from_cash(real_closes: pd.DataFrame) -> None:
    day = pd.Timestamp("2026-05-07")
    close = real_closes.loc[day, EQUAL_WEIGHT].astype(float).to_dict()
    cash = 1_000_000.0
    targets = {s: 1 / len(EQUAL_WEIGHT) for s in EQUAL_WEIGHT}
    orders = plan_orders(targets, {}, cash, close)
    assert [o.symbol for o in orders] == sorted(EQUAL_WEIGHT)
    spent = 0.0
    for o in orders:
        assert o.side == "buy" and o.quantity > 0 and o.quantity % 100 == 0
        expected = math.floor(100_000.0 / close[o.symbol] / 100 + 1e-9) * 100
        assert o.quantity == expected
        assert 0 <= 100_000.0 - order_notional(o) < 100 * close[o.symbol]
        spent += order_notional(o)
    assert spent <= cash
    print(f"2026-05-07 equal weight: spent {spent:,.2f} of {cash:,.2f}; "
          f"{len(orders)} buys, lot leftover {cash - spent:,.2f}")


def test_real_rotation_sells_first_and_stays_in_cash(real_closes: pd.DataFrame) -> None:
    first = real_closes.loc[pd.Timestamp("2026-04-01"), EQUAL_WEIGHT].astype(float).to_dict()
    start = plan_orders({s: 0.1 for s in EQUAL_WEIGHT}, {}, 1_000_000.0, first)
    positions = {o.symbol: o.quantity for o in start}
    cash = 1_000_000.0 - sum(order_notional(o) for o in start)
    positions["510050"] += 37  # an odd lot (e.g. a split remainder)
    cash -= 37 * first["510050"]
    new = ["510300", "518880", "513100", "512880", "588000"]
    day = pd.Timestamp("2026-05-07")
    close = real_closes.loc[day].dropna().astype(float).to_dict()
    equity = cash + sum(u * close[s] for s, u in positions.items())
    orders = plan_orders({s: 0.2 for s in new}, positions, cash, close)
    sides = [o.side for o in orders]
    assert sides == sorted(sides, key=lambda s: s == "buy")
    exits = {o.symbol: o.quantity for o in orders if o.side == "sell" and o.symbol not in new}
    assert exits == {s: u for s, u in positions.items() if s not in new}
    assert exits["510050"] % 100 == 37
    after = dict(positions)
    for o in orders:
        after[o.symbol] = after.get(o.symbol, 0) + (o.quantity if o.side == "buy"
                                                      else -o.quantity)
        if not (o.side == "sell" and o.symbol not in new):
            assert o.quantity % 100 == 0
    cash_after = cash + sum(order_notional(o) * (1 if o.side == "sell" else -1) for o in orders)
    assert cash_after >= 0.0
    w_after = weights_of(after, cash_after, close)
    assert set(w_after) == set(new)
    for s in new:
        assert abs(w_after[s] - 0.2) * equity < 100 * close[s]

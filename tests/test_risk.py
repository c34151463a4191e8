"""Layered pre-trade risk (SPEC §9): every signal and order rule with its subject and message,
no false positives on a clean signal, deterministic complete reports, limit days on real data."""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pydantic
import pytest

from rotation.orders import plan_orders
from rotation.risk import (
    OrderCheck,
    RiskLimits,
    RiskViolation,
    check_orders,
    check_signal,
    drawdown_of,
    gross_exposure,
    limit_state,
    order_check_of,
    turnover,
)
from rotation.sources.files import FileMarketSource, load_dataset_spec

ROOT = Path(__file__).resolve().parents[1]
D = date(2026, 5, 7)
UNIVERSE = ["510300", "510500", "518880", "513100", "159915"]
LIMITS = RiskLimits(max_weight=0.40)  # the cases below are written against a 40 % cap
CLEAN = {"510300": 0.3, "518880": 0.3, "513100": 0.4}


def _signal(weights: dict[str, float], **kw) -> list[RiskViolation]:
    args: dict = {
        "as_of": D, "latest_session": D, "sessions_between": 0, "universe": UNIVERSE,
        "halted": [], "previous_weights": {"510300": 0.4, "518880": 0.3, "513100": 0.3},
        "failed_checks": [], "data_as_of": D, "drawdown": 0.05, "limits": LIMITS,
    }
    args.update(kw)
    return check_signal(weights, **args)


def _only(violations: list[RiskViolation]) -> RiskViolation:
    assert len(violations) == 1, violations
    return violations[0]


# -- limits ------------------------------------------------------------------------------------

def test_limits_defaults_and_validation() -> None:
    lim = RiskLimits()
    assert (lim.max_weight, lim.max_gross_exposure, lim.max_turnover, lim.drawdown_stop) == (
        0.50, 1.0, 1.0, 0.25)
    assert (lim.max_signal_age_sessions, lim.lot_size, lim.price_band) == (0, 100, 0.10)
    assert (lim.max_order_notional, lim.max_daily_notional) == (500_000.0, 2_000_000.0)
    assert RiskLimits.model_validate({"max_weight": 0.5}).max_weight == 0.5
    for bad in ({"max_weight": 0.0}, {"max_weight": 1.5}, {"lot_size": 0},
                {"price_band": -0.1}, {"max_turnover": -1}, {"max_order_notional": 0},
                {"max_weigth": 0.3}):
        with pytest.raises(pydantic.ValidationError):
            RiskLimits.model_validate(bad)


# -- signal ------------------------------------------------------------------------------------

def test_clean_signal_has_no_violation() -> None:
    assert _signal(CLEAN) == []
    # Boundaries are inclusive within the float tolerance.
    edge = {"510300": 0.4 + 1e-9, "518880": 0.4, "513100": 0.2 + 1e-9}
    assert _signal(edge, previous_weights=None) == []
    # An exit of a fund that left the universe, or is halted, is allowed (weight 0).
    assert _signal({**CLEAN, "999999": 0.0, "510500": 0.0}, halted=["510500"]) == []
    # No previous target / no account yet: those checks are skipped.
    assert _signal(CLEAN, previous_weights=None, drawdown=None) == []


def test_nan_and_inf_weight() -> None:
    v = _only(_signal({**CLEAN, "510500": float("nan")}))
    assert (v.layer, v.rule, v.subject) == ("signal", "nan_weight", "510500")
    assert "nan" in v.message and "finite" in v.message
    v = _only(_signal({"510300": float("inf")}))
    assert (v.rule, v.subject) == ("nan_weight", "510300") and "inf" in v.message


def test_negative_weight() -> None:
    v = _only(_signal({"510300": 0.3, "518880": 0.3, "510500": -0.05}, previous_weights=None))
    assert (v.layer, v.rule, v.subject) == ("signal", "negative_weight", "510500")
    assert "-0.05" in v.message and "minimum 0" in v.message


def test_weights_sum_above_gross_exposure() -> None:
    v = _only(_signal({"510300": 0.4, "518880": 0.4, "513100": 0.3}, previous_weights=None))
    assert (v.layer, v.rule, v.subject) == ("account", "weights_sum", "portfolio")
    assert "110.00%" in v.message and "100.00%" in v.message
    lim = RiskLimits(max_gross_exposure=0.8)
    v = _only(_signal(CLEAN, limits=lim, previous_weights=None))
    assert "100.00%" in v.message and "80.00%" in v.message


def test_max_weight() -> None:
    v = _only(_signal({"510300": 0.45, "518880": 0.3}, previous_weights=None))
    assert (v.layer, v.rule, v.subject) == ("instrument", "max_weight", "510300")
    assert "45.00%" in v.message and "40.00%" in v.message


def test_unknown_fund() -> None:
    v = _only(_signal({**CLEAN, "513100": 0.2, "588000": 0.2}, previous_weights=None))
    assert (v.layer, v.rule, v.subject) == ("signal", "unknown_fund", "588000")
    assert "20.00%" in v.message and "5 funds of the universe" in v.message


def test_stale_signal() -> None:
    v = _only(_signal(CLEAN, sessions_between=1, latest_session=date(2026, 5, 8)))
    assert (v.layer, v.rule, v.subject) == ("signal", "stale_signal", "2026-05-07")
    assert "1 session(s) older" in v.message and "at most 0" in v.message
    lenient = RiskLimits(max_signal_age_sessions=1)
    assert _signal(CLEAN, sessions_between=1, latest_session=date(2026, 5, 8),
                   limits=lenient) == []
    v = _only(_signal(CLEAN, latest_session=date(2026, 5, 6)))
    assert v.rule == "stale_signal" and "after the latest session 2026-05-06" in v.message
    with pytest.raises(ValueError, match="sessions_between -1"):
        _signal(CLEAN, sessions_between=-1)


def test_stale_data() -> None:
    v = _only(_signal(CLEAN, data_as_of=date(2026, 5, 6)))
    assert (v.layer, v.rule, v.subject) == ("data", "stale_data", "market_data")
    assert "2026-05-06" in v.message and "2026-05-07" in v.message
    v = _only(_signal(CLEAN, data_as_of=None))
    assert v.rule == "stale_data" and "no stored market data" in v.message


def test_failed_checks_one_violation_each() -> None:
    out = _signal(CLEAN, failed_checks=["prices_positive", "dates_are_sessions",
                                        "prices_positive"])
    assert [(v.layer, v.rule, v.subject) for v in out] == [
        ("data", "failed_check", "dates_are_sessions"),
        ("data", "failed_check", "prices_positive")]
    assert "'prices_positive' failed for 2026-05-07" in out[1].message


def test_halted_fund_with_weight() -> None:
    v = _only(_signal(CLEAN, halted=["518880"]))
    assert (v.layer, v.rule, v.subject) == ("instrument", "halted", "518880")
    assert "30.00%" in v.message and "max weight of a halted fund is 0" in v.message


def test_turnover() -> None:
    prev = {"510300": 0.4, "518880": 0.4}
    new = {"513100": 0.4, "159915": 0.4}
    assert turnover(new, prev) == pytest.approx(0.8)
    assert _signal(new, previous_weights=prev) == []  # default cap 100 %: full rotation
    v = _only(_signal(new, previous_weights=prev, limits=RiskLimits(max_turnover=0.5)))
    assert (v.layer, v.rule, v.subject) == ("strategy", "turnover", "portfolio")
    assert "80.00%" in v.message and "50.00%" in v.message
    # From cash: a fully invested target is 50 % one-way turnover.
    assert turnover(CLEAN, {}) == pytest.approx(0.5)
    assert _signal(CLEAN, previous_weights=None, limits=RiskLimits(max_turnover=0.1)) == []


def test_drawdown_stop() -> None:
    v = _only(_signal(CLEAN, drawdown=0.25))
    assert (v.layer, v.rule, v.subject) == ("strategy", "drawdown_stop", "account")
    assert "25.00%" in v.message and "drawdown stop 25.00%" in v.message
    assert _signal(CLEAN, drawdown=0.2499) == []
    with pytest.raises(ValueError, match="drawdown nan"):
        _signal(CLEAN, drawdown=float("nan"))


def test_all_violations_in_deterministic_order() -> None:
    weights = {"588000": 0.2, "510300": 0.5, "518880": float("nan"), "510500": -0.1,
               "513100": 0.45, "159915": 0.3}
    kw = {"halted": ["159915"], "failed_checks": ["unique_date_symbol"],
          "data_as_of": date(2026, 5, 6), "sessions_between": 2,
          "latest_session": date(2026, 5, 11), "drawdown": 0.3}
    out = _signal(weights, **kw)
    got = [(v.layer, v.rule, v.subject) for v in out]
    assert got == [
        ("data", "failed_check", "unique_date_symbol"),
        ("data", "stale_data", "market_data"),
        ("signal", "stale_signal", "2026-05-07"),
        ("signal", "nan_weight", "518880"),
        ("signal", "negative_weight", "510500"),
        ("signal", "unknown_fund", "588000"),
        ("account", "weights_sum", "portfolio"),
        ("strategy", "drawdown_stop", "account"),
        ("instrument", "max_weight", "510300"),
        ("instrument", "max_weight", "513100"),
        ("instrument", "halted", "159915"),
    ]
    # Turnover is skipped while a weight is not finite; the input order does not matter.
    items = list(weights.items())
    random.Random(3).shuffle(items)
    assert _signal(dict(items), **kw) == out
    assert out[0].as_dict() == {"layer": "data", "rule": "failed_check",
                                "subject": "unique_date_symbol",
                                "message": out[0].message}


def test_random_clean_signals_pass_and_scaled_ones_fail() -> None:
    rng = np.random.default_rng(11)
    universe = [f"{510000 + k}" for k in range(20)]
    for _ in range(200):
        k = int(rng.integers(3, 10))
        chosen = rng.choice(universe, size=k, replace=False)
        w = rng.dirichlet(np.ones(k))
        w = np.minimum(w, 0.4)  # capped, so Σw ≤ 1 and every w ≤ 40 %
        weights = {str(s): float(x) for s, x in zip(chosen, w, strict=True)}
        kw = {"universe": universe, "previous_weights": None}
        assert _signal(weights, **kw) == []
        # Above 100 % gross: always caught.
        scaled = {s: x * 1.2 / sum(weights.values()) for s, x in weights.items()}
        rules = {v.rule for v in _signal(scaled, **kw)}
        assert "weights_sum" in rules
        assert ("max_weight" in rules) == (max(scaled.values()) > 0.4 + 1e-6)
        assert gross_exposure(scaled) == pytest.approx(1.2)


# -- orders ------------------------------------------------------------------------------------

LAST = {"510300": 4.0, "518880": 10.0, "513100": 1.5, "159915": 3.0}


def _orders(orders: list[OrderCheck], **kw):
    args: dict = {"last_close": LAST, "limit_up_close": [], "limit_down_close": [],
                  "halted": [], "committed_notional": 0.0, "equity": 1_000_000.0,
                  "positions_value_after": 900_000.0, "limits": LIMITS}
    args.update(kw)
    return check_orders(orders, **args)


def _o(order_id: str, symbol: str, side: str, qty: int, price: float | None = None,
       closes: bool = False) -> OrderCheck:
    return OrderCheck(order_id, symbol, side, qty, LAST[symbol] if price is None else price,
                      closes)  # type: ignore[arg-type]


def _rej(rejected) -> list[tuple[str, str, str]]:
    return [(o.order_id, v.layer, v.rule) for o, v in rejected]


def test_clean_orders_accepted_sells_first() -> None:
    orders = [_o("b1", "510300", "buy", 1_000), _o("s1", "518880", "sell", 500),
              _o("s2", "513100", "sell", 1_234, closes=True), _o("b2", "159915", "buy", 100)]
    accepted, rejected = _orders(orders)
    assert rejected == []
    assert [o.order_id for o in accepted] == ["s1", "s2", "b1", "b2"]
    assert accepted[0].notional == 5_000.0


def test_lot_size() -> None:
    orders = [_o("b", "510300", "buy", 150), _o("s", "518880", "sell", 150),
              _o("x", "513100", "sell", 150, closes=True), _o("z", "159915", "buy", 0),
              _o("c", "159915", "buy", 150, closes=True)]
    accepted, rejected = _orders(orders)
    assert [o.order_id for o in accepted] == ["x"]
    assert _rej(rejected) == [("s", "order", "lot_size"), ("b", "order", "lot_size"),
                              ("z", "order", "lot_size"), ("c", "order", "lot_size")]
    msg = {o.order_id: v.message for o, v in rejected}
    assert msg["b"] == "buy 510300: quantity 150 is not a multiple of the lot size 100"
    assert msg["z"] == "buy 159915: quantity 0 is not positive"
    assert all(v.subject == o.order_id for o, v in rejected)


def test_max_order_notional() -> None:
    accepted, rejected = _orders([_o("big", "518880", "buy", 50_100),
                                  _o("ok", "518880", "buy", 50_000)])
    assert [o.order_id for o in accepted] == ["ok"]
    ((_, v),) = rejected
    assert (v.layer, v.rule, v.subject) == ("order", "max_order_notional", "big")
    assert "501,000.00 CNY" in v.message and "500,000.00 CNY" in v.message


def test_halted_and_limit_days() -> None:
    orders = [_o("b_up", "510300", "buy", 100), _o("s_up", "510300", "sell", 100),
              _o("b_dn", "518880", "buy", 100), _o("s_dn", "518880", "sell", 100),
              _o("h", "513100", "sell", 100)]
    accepted, rejected = _orders(orders, limit_up_close=["510300"],
                                 limit_down_close=["518880"], halted=["513100"])
    assert [o.order_id for o in accepted] == ["s_up", "b_dn"]
    assert _rej(rejected) == [("s_dn", "instrument", "limit_day"),
                              ("h", "instrument", "halted"),
                              ("b_up", "instrument", "limit_day")]
    msg = {o.order_id: v.message for o, v in rejected}
    assert "limit-up" in msg["b_up"] and "cannot be bought" in msg["b_up"]
    assert "limit-down" in msg["s_dn"] and "cannot be sold" in msg["s_dn"]
    assert "halted" in msg["h"]


def test_price_band() -> None:
    orders = [_o("hi", "510300", "buy", 100, price=4.5), _o("edge", "510300", "buy", 100,
                                                            price=4.4),
              _o("lo", "518880", "sell", 100, price=8.9), _o("none", "510500", "buy", 100,
                                                             price=5.0)]
    accepted, rejected = _orders(orders)
    assert [o.order_id for o in accepted] == ["edge"]
    assert _rej(rejected) == [("lo", "instrument", "price_band"),
                              ("hi", "instrument", "price_band"),
                              ("none", "instrument", "price_band")]
    msg = {o.order_id: v.message for o, v in rejected}
    assert "4.500 is +12.50% from the last close 4.000" in msg["hi"]
    assert "±10.00%" in msg["hi"]
    assert "-11.00%" in msg["lo"]
    assert "no positive last close" in msg["none"]


def test_daily_notional_counts_both_sides() -> None:
    lim = RiskLimits(max_daily_notional=100_000.0)
    orders = [_o("s1", "518880", "sell", 3_000), _o("s2", "518880", "sell", 4_000),
              _o("b1", "510300", "buy", 5_000), _o("b2", "513100", "buy", 100)]
    # 20,000 committed + 30,000 + 40,000 = 90,000; b1 (20,000) crosses; b2 (150) then too.
    accepted, rejected = _orders(orders, committed_notional=20_000.0, limits=lim)
    assert [o.order_id for o in accepted] == ["s1", "s2"]
    assert _rej(rejected) == [("b1", "account", "daily_notional"),
                              ("b2", "account", "daily_notional")]
    m1, m2 = (v.message for _, v in rejected)
    assert "90,000.00 + 20,000.00 = 110,000.00 CNY" in m1 and "100,000.00 CNY" in m1
    assert "reached by an earlier order" in m2
    # A sell that crosses is rejected; a later sell that fits goes; every later buy does not.
    orders = [_o("s1", "518880", "sell", 2_000), _o("s2", "513100", "sell", 1_000),
              _o("b1", "159915", "buy", 100)]
    accepted, rejected = _orders(orders, committed_notional=90_000.0, limits=lim)
    assert [o.order_id for o in accepted] == ["s2"]
    assert _rej(rejected) == [("s1", "account", "daily_notional"),
                              ("b1", "account", "daily_notional")]


def test_gross_exposure_rejects_every_buy() -> None:
    orders = [_o("b1", "510300", "buy", 100), _o("s1", "518880", "sell", 100),
              _o("b2", "513100", "buy", 100)]
    accepted, rejected = _orders(orders, positions_value_after=1_050_000.0)
    assert [o.order_id for o in accepted] == ["s1"]
    assert _rej(rejected) == [("b1", "account", "gross_exposure"),
                              ("b2", "account", "gross_exposure")]
    assert "105.00% of equity" in rejected[0][1].message
    assert "100.00%" in rejected[0][1].message
    # Rejected orders do not use the daily budget; an order can carry several violations.
    accepted, rejected = _orders([_o("b", "510300", "buy", 150, price=5.0)],
                                 positions_value_after=1_050_000.0)
    assert accepted == []
    assert _rej(rejected) == [("b", "account", "gross_exposure"),
                              ("b", "instrument", "price_band"), ("b", "order", "lot_size")]


def test_check_orders_input_errors() -> None:
    with pytest.raises(ValueError, match="duplicate order ids: a"):
        _orders([_o("a", "510300", "buy", 100), _o("a", "510300", "sell", 100)])
    with pytest.raises(ValueError, match="unknown side 'short'"):
        _orders([_o("a", "510300", "short", 100)])
    with pytest.raises(ValueError, match=r"committed_notional -1\.0 is negative"):
        _orders([], committed_notional=-1.0)


def test_order_check_of_planned_orders() -> None:
    planned = plan_orders({"510300": 0.3}, {"518880": 1_234, "510300": 10_000}, 10_000.0,
                          LAST)
    checks = [order_check_of(o, f"sig1-{o.symbol}") for o in planned]
    assert [(c.order_id, c.side, c.quantity, c.closes_position) for c in checks] == [
        ("sig1-510300", "sell", 5_300, False), ("sig1-518880", "sell", 1_234, True)]
    accepted, rejected = _orders(checks)
    assert rejected == [] and accepted == checks


# -- helpers -----------------------------------------------------------------------------------

def test_limit_state_hand_cases() -> None:
    assert limit_state(1.100, 1.000, 0.10) == "up"
    assert limit_state(1.099, 1.000, 0.10) == "up"  # one tick of slack
    assert limit_state(1.098, 1.000, 0.10) is None
    assert limit_state(0.900, 1.000, 0.10) == "down"
    assert limit_state(0.902, 1.000, 0.10) is None
    assert limit_state(3.600, 3.000, 0.20) == "up"
    assert limit_state(3.300, 3.000, 0.20) is None  # +10 % is no limit for a 20 % fund
    assert limit_state(1.5, None, 0.10) is None
    assert limit_state(1.5, 1.0, None) is None  # cross-border: no limit
    assert limit_state(float("nan"), 1.0, 0.10) is None
    # A tick spanning the whole band: the direction of the move decides.
    assert limit_state(0.005, 0.005, 0.10) == "up"
    assert limit_state(0.004, 0.005, 0.10) == "down"
    with pytest.raises(ValueError, match="price_limit 0"):
        limit_state(1.0, 1.0, 0.0)


def test_drawdown_of() -> None:
    assert drawdown_of([]) == 0.0
    assert drawdown_of([100.0, 120.0, 90.0, 100.0]) == pytest.approx(1 - 100 / 120)
    assert drawdown_of([100.0, 110.0, 120.0]) == 0.0
    assert drawdown_of(np.array([1.0, 0.5])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"equity\[1\] = nan"):
        drawdown_of([1.0, float("nan")])
    dd = drawdown_of([100.0, 130.0, 97.0])
    assert _only(_signal(CLEAN, drawdown=dd)).rule == "drawdown_stop"


# -- real data ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real(shared_data: Path) -> tuple[pd.DataFrame, dict[str, float | None]]:
    root = shared_data / "cn_etf_akshare_qfq_2020"
    src = FileMarketSource(root, load_dataset_spec(ROOT / "config/datasets/"
                                                   "cn_etf_akshare_qfq_2020.yaml"))
    # Forward-adjusted prices match raw prices at the end of the sample (PROVENANCE.md); the
    # limit-day rule is meant for raw closes, so stay in the last 20 months.
    bars = src.load(start="2024-09-01", end="2026-05-07").bars
    close = bars.pivot(index="date", columns="symbol", values="close")
    return close, {i.symbol: i.price_limit for i in src.instruments()}


def _states(close: pd.DataFrame, limits: dict[str, float | None]) -> pd.DataFrame:
    prev = close.shift(1)
    out = pd.DataFrame(None, index=close.index, columns=close.columns, dtype=object)
    for s in close.columns:
        for d in close.index[1:]:
            p = prev.at[d, s]
            out.at[d, s] = limit_state(close.at[d, s], None if pd.isna(p) else float(p),
                                       limits[s])
    return out


def test_real_limit_days(real) -> None:
    close, limits = real
    state = _states(close, limits)
    up = state == "up"
    down = state == "down"
    print(f"limit-up closes: {int(up.to_numpy().sum())}, limit-down closes: "
          f"{int(down.to_numpy().sum())} over {len(close)} sessions")
    # Post-stimulus rally: 20 % ChiNext / STAR funds at +20 %, broad 10 % funds at +10 %.
    for s in ("159915", "159949", "159967", "588000", "512880", "512660"):
        assert state.at[pd.Timestamp("2024-10-08"), s] == "up", s
    assert state.at[pd.Timestamp("2024-09-30"), "159915"] == "up"  # 1.860 → 2.232 (+20 %)
    assert up.loc["2024-09-30"].sum() >= 20
    # 2025-04-07 tariff sell-off: many funds closed limit-down.
    assert down.loc["2025-04-07"].sum() >= 15
    for s in ("512880", "515030", "515790"):
        assert state.at[pd.Timestamp("2025-04-07"), s] == "down", s
    # 2026-02-02: the gold fund closed limit-down (11.009 → 9.908 = 11.009 × 0.9).
    assert state.at[pd.Timestamp("2026-02-02"), "518880"] == "down"
    # Cross-border funds have no limit and are never flagged.
    for s in (s for s, lim in limits.items() if lim is None):
        assert not (up[s] | down[s]).any(), s
    # Every flag is a move of (almost) the full limit, in its direction; 20 % funds are never
    # flagged on a 10 % day.
    ret = close / close.shift(1) - 1
    tick_ret = 0.001 / close.shift(1)
    for s in close.columns:
        lim = limits[s]
        if lim is None:
            continue
        assert (ret[s][up[s]] >= lim - tick_ret[s][up[s]] - 1e-12).all(), s
        assert (ret[s][down[s]] <= -lim + tick_ret[s][down[s]] + 1e-12).all(), s
        if lim == 0.20:
            assert (ret[s][up[s] | down[s]].abs() > 0.19).all(), s


def test_real_limit_days_feed_order_checks(real) -> None:
    close, limits = real
    day = pd.Timestamp("2025-04-07")
    prev = close.shift(1).loc[day]
    today = close.loc[day]
    state = {s: limit_state(float(today[s]), float(prev[s]), limits[s])
             for s in close.columns if pd.notna(today[s]) and pd.notna(prev[s])}
    limit_up = [s for s, v in state.items() if v == "up"]
    limit_down = [s for s, v in state.items() if v == "down"]
    assert "512880" in limit_down
    last = today.dropna().astype(float).to_dict()
    # Hold 512880 and 510300, rotate into 518880: the 512880 exit is blocked by the limit.
    positions = {"512880": 20_000, "510300": 10_000}
    cash = 50_000.0
    planned = plan_orders({"510300": 0.3, "518880": 0.3}, positions, cash, last)
    checks = [order_check_of(o, f"2025-04-07-{o.symbol}") for o in planned]
    value_after = sum(u * last[s] for s, u in positions.items())
    for o in planned:
        value_after += o.quantity * o.reference_price * (1 if o.side == "buy" else -1)
    equity = cash + sum(u * last[s] for s, u in positions.items())
    accepted, rejected = check_orders(
        checks, last_close=last, limit_up_close=limit_up, limit_down_close=limit_down,
        halted=[], committed_notional=0.0, equity=equity, positions_value_after=value_after,
        limits=LIMITS)
    assert [(o.symbol, v.rule) for o, v in rejected] == [("512880", "limit_day")]
    assert {o.symbol for o in accepted} == {"518880"} | (
        {"510300"} if any(o.symbol == "510300" for o in planned) else set())
    assert all(o.quantity % 100 == 0 for o in accepted)

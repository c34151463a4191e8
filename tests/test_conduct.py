"""Trading-conduct rules (issue 19 item 5) and dynamic limits: the pure rules, the ledger's
counts they rest on, and the executor blocking on a real ledger and paper broker."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from pydantic import ValidationError

from rotation.costs import CostModel
from rotation.risk import OrderCheck, RiskLimits, VolatilityRegime, regime_limits
from trading.conduct import ConductRules, OrderPace, order_violations, pace_violation
from trading.executor import MarketView, execute_signal
from trading.ledger import Ledger, OrderRecord, SignalRecord
from trading.models import (
    OrderStatus,
    Quote,
    Side,
    SignalStatus,
    order_id_of,
    signal_id_of,
    weights_hash,
)
from trading.paper import FrameQuotes, PaperBroker

BUY = OrderCheck("o-buy", "510300", "buy", 1_000, 4.0, closes_position=False)
SELL = OrderCheck("o-sell", "510500", "sell", 500, 6.0, closes_position=True)


# ------------------------------------------------------------------------------ pure rules


def test_the_order_rate_counts_the_order_about_to_go() -> None:
    rules = ConductRules(max_orders_per_minute=3, max_orders_per_session=10)
    assert pace_violation(OrderPace(2, 2, 0), rules, BUY) is None
    minute = pace_violation(OrderPace(3, 3, 0), rules, BUY)
    assert minute is not None and (minute.layer, minute.rule) == ("conduct", "order_rate")
    assert "3 orders sent in the last minute" in minute.message and "limit of 3" in minute.message
    session = pace_violation(OrderPace(0, 10, 0), rules, BUY)
    assert session is not None and "10 orders sent for this session" in session.message


def test_the_cancel_ratio_applies_after_enough_orders() -> None:
    rules = ConductRules(max_cancel_ratio=0.5, cancel_ratio_min_orders=4)
    assert pace_violation(OrderPace(0, 3, 3), rules, BUY) is None        # too few to judge
    assert pace_violation(OrderPace(0, 4, 2), rules, BUY) is None        # 50 %: at the limit
    breach = pace_violation(OrderPace(0, 4, 3), rules, BUY)
    assert breach is not None and breach.rule == "cancel_ratio"
    assert "3 of 4" in breach.message and "75.0%" in breach.message


def test_restricted_self_trade_and_holding_rules() -> None:
    rules = ConductRules(restricted={"510500": "issuer under review"},
                         shares_outstanding={"510300": 100_000}, max_holding_of_outstanding=0.05)
    found = order_violations([BUY, SELL], rules, held_by_us={"510300": 4_500},
                             opposite_elsewhere={("510300", "sell"): {"acct-b"}})
    assert sorted(v.rule for v in found["o-buy"]) == ["holding_limit", "self_trade"]
    assert [v.rule for v in found["o-sell"]] == ["restricted"]
    holding = next(v for v in found["o-buy"] if v.rule == "holding_limit")
    assert "5,500 of its 100,000 units outstanding (5.50%)" in holding.message
    assert "acct-b" in next(v for v in found["o-buy"] if v.rule == "self_trade").message
    # Nothing known, nothing blocked; a fund without units outstanding is not limited.
    assert order_violations([BUY, SELL], ConductRules(), held_by_us={"510300": 10**9},
                            opposite_elsewhere={}) == {}
    off = ConductRules(self_trade_prevention=False)
    assert order_violations([BUY], off, held_by_us={},
                            opposite_elsewhere={("510300", "sell"): {"acct-b"}}) == {}


def test_conduct_thresholds_stay_below_the_exchanges() -> None:
    with pytest.raises(ValidationError, match="max_orders_per_session"):
        ConductRules(max_orders_per_session=20_001)
    with pytest.raises(ValidationError, match="max_cancel_ratio"):
        ConductRules(max_cancel_ratio=0)


def test_a_volatility_regime_tightens_the_named_limits() -> None:
    limits = RiskLimits(max_var_99=0.04, regime=VolatilityRegime(
        threshold=0.25, tighten={"max_var_99": 0.5, "max_weight": 0.8, "max_es_99": 0.5}))
    same, why = regime_limits(limits, 0.20)
    assert same is limits and why is None
    tight, why = regime_limits(limits, 0.40)
    assert (tight.max_var_99, tight.max_weight, tight.max_es_99) == (0.02, 0.4, None)
    assert why is not None and why.startswith("volatility_regime: ")
    assert "40.00% a year, above 25.00%" in why
    assert "max_var_99 0.04 -> 0.02" in why and "max_weight 0.5 -> 0.4" in why
    unmeasured, why = regime_limits(limits, float("inf"))
    assert unmeasured.max_var_99 == 0.02 and why is not None and "could not be measured" in why
    with pytest.raises(ValidationError, match="lot_size"):
        VolatilityRegime(tighten={"lot_size": 0.5})
    with pytest.raises(ValidationError, match="loosens"):
        VolatilityRegime(tighten={"max_weight": 1.5})


def test_the_regime_reads_the_market_up_to_d_only(shared_data) -> None:
    """Equal-weighted volatility of real funds, 2020-03-23 (the pandemic sell-off) against a
    calm window; bars after D change nothing."""
    from rotation.portfolio_risk import limits_in_force, market_volatility

    frames = []
    for symbol in ("510300", "510500", "159915", "518880"):
        raw = pd.read_parquet(shared_data / "cn_etf_akshare_qfq_2020" / "parquet"
                              / f"{symbol}.parquet")
        frames.append(raw.set_index("date")["close"].rename(symbol))
    close = pd.concat(frames, axis=1).sort_index()
    returns = close.pct_change(fill_method=None)
    day = dt.date(2020, 3, 23)
    window = returns.loc[:pd.Timestamp(day)].mean(axis=1).dropna().iloc[-20:]
    expected = float(window.std(ddof=1)) * 252 ** 0.5
    assert market_volatility(returns, day, 20) == pytest.approx(expected, rel=1e-12)
    later = returns.copy()
    later.loc[later.index > pd.Timestamp(day)] *= 10
    assert market_volatility(later, day, 20) == market_volatility(returns, day, 20)
    limits = RiskLimits(max_var_99=0.05, regime=VolatilityRegime(threshold=0.20))
    tight, why = limits_in_force(returns, day, limits)
    assert expected > 0.20 and tight.max_var_99 == pytest.approx(0.035) and why
    calm = market_volatility(returns, dt.date(2021, 11, 30), 20)
    assert calm < expected


# ------------------------------------------------------------------------------ the ledger

DAY, SESSION = dt.date(2024, 1, 2), dt.date(2024, 1, 3)
LIQUID = {"510300": 5e9, "510500": 2e9}


def _quote(symbol: str, price: float) -> Quote:
    return Quote(symbol=symbol, session=DAY, open=price, high=price, low=price, close=price,
                 volume=1e6, previous_close=price, price_limit=0.10)


def _approved(ledger: Ledger, account: str, weights: dict[str, float]) -> str:
    sid = signal_id_of("conduct", account, DAY, weights)
    ledger.record_signal(SignalRecord(
        signal_id=sid, account_id=account, strategy="conduct", as_of=DAY, weights=weights,
        weights_hash=weights_hash(weights), status=SignalStatus.APPROVED, reasons=[],
        data_version=None, dagster_run_id=None), actor="test")
    return sid


def _view() -> MarketView:
    return MarketView(signal_day=DAY, order_session=SESSION, closed_through=DAY,
                      quotes={"510300": _quote("510300", 4.0), "510500": _quote("510500", 6.0)},
                      average_amount=LIQUID)


@pytest.fixture
def book(ledger_url: str):
    ledger = Ledger(ledger_url)
    ledger.migrate()
    for account in ("acct-a", "acct-b"):
        ledger.open_account(account, 1_000_000.0, actor="test")
    yield ledger
    ledger.dispose()


LIMITS = RiskLimits(max_weight=1.0, max_order_notional=2_000_000.0,
                    max_daily_notional=5_000_000.0)


def test_the_ledger_counts_what_reached_the_venue(book: Ledger) -> None:
    sid = _approved(book, "acct-a", {"510300": 1.0})
    orders = [OrderRecord(order_id=order_id_of(sid, s, Side.BUY), signal_id=sid,
                          account_id="acct-a", symbol=s, side=Side.BUY, quantity=100,
                          reference_price=4.0, session=SESSION) for s in ("510300", "510500",
                                                                           "159915")]
    book.record_orders(orders, actor="test")
    assert book.order_pace("acct-a", SESSION) == OrderPace(0, 0, 0)
    book.update_order(orders[0].order_id, status=OrderStatus.SUBMITTED, actor="t",
                      venue_order_id="v1")
    book.update_order(orders[1].order_id, status=OrderStatus.SUBMITTED, actor="t",
                      venue_order_id="v2")
    book.update_order(orders[1].order_id, status=OrderStatus.CANCELLED, actor="t",
                      venue_order_id="v2")
    # Cancelled before it was sent: not an order the market saw.
    book.update_order(orders[2].order_id, status=OrderStatus.CANCELLED, actor="t")
    assert book.order_pace("acct-a", SESSION) == OrderPace(2, 2, 1)
    assert book.order_pace("acct-a", DAY) == OrderPace(2, 0, 0)
    assert book.order_pace("acct-b", SESSION) == OrderPace(0, 0, 0)
    assert book.open_sides_elsewhere("acct-b", SESSION) == {("510300", "buy"): {"acct-a"}}
    assert book.open_sides_elsewhere("acct-a", SESSION) == {}


def test_a_cross_account_self_trade_is_blocked_and_audited(book: Ledger, ledger_url) -> None:
    """acct-a sells 510300 for the session (its order is open at the venue); acct-b's buy of
    510300 for the same session is rejected, its 510500 buy goes."""
    costs = CostModel()
    broker = PaperBroker(ledger_url, FrameQuotes(pd.DataFrame(
        columns=["date", "symbol", "open", "high", "low", "close", "volume"])), costs)
    seller = _approved(book, "acct-a", {"510300": 1.0})
    sold = OrderRecord(order_id=order_id_of(seller, "510300", Side.SELL), signal_id=seller,
                       account_id="acct-a", symbol="510300", side=Side.SELL, quantity=1_000,
                       reference_price=4.0, session=SESSION)
    book.record_orders([sold], actor="test")
    book.update_order(sold.order_id, status=OrderStatus.SUBMITTED, actor="t", venue_order_id="v")

    buyer = _approved(book, "acct-b", {"510300": 0.5, "510500": 0.5})
    report = execute_signal(ledger=book, venue=broker, signal_id=buyer, account_id="acct-b",
                            market=_view(), limits=LIMITS, costs=costs, actor="test")
    by_symbol = {o.symbol: o for o in book.orders(signal_id=buyer)}
    assert by_symbol["510300"].status is OrderStatus.REJECTED
    assert "conduct/self_trade" in str(by_symbol["510300"].reason)
    assert "acct-a" in str(by_symbol["510300"].reason)
    assert by_symbol["510500"].status is OrderStatus.SUBMITTED
    assert broker.order(by_symbol["510300"].order_id) is None          # never sent
    assert [r["rule"] for r in report.rejected] == ["self_trade"]
    breaches = book.audit_log(action="conduct_breach")
    assert [(b["entity_id"], b["details"]["rule"]) for b in breaches] == [("acct-b",
                                                                            "self_trade")]


def _seed_sends(book: Ledger, account: str, count: int) -> None:
    """``count`` (up to 4) orders of an earlier signal of the account sent within the last
    minute (sells of funds the account does not hold: they change no plan)."""
    earlier = signal_id_of("seed", account, DAY - dt.timedelta(days=1), {"159915": 1.0})
    book.record_signal(SignalRecord(
        signal_id=earlier, account_id=account, strategy="seed", as_of=DAY - dt.timedelta(days=1),
        weights={"159915": 1.0}, weights_hash=weights_hash({"159915": 1.0}),
        status=SignalStatus.APPROVED, reasons=[], data_version=None, dagster_run_id=None),
        actor="test")
    seeds = [OrderRecord(order_id=order_id_of(earlier, symbol, Side.SELL), signal_id=earlier,
                         account_id=account, symbol=symbol, side=Side.SELL, quantity=100,
                         reference_price=1.0, session=SESSION)
             for symbol in ("159915", "159901", "159919", "159949")[:count]]
    book.record_orders(seeds, actor="test")
    for i, seed in enumerate(seeds):
        book.update_order(seed.order_id, status=OrderStatus.SUBMITTED, actor="t",
                          venue_order_id=f"seed-{i}")


def test_an_order_stream_beyond_the_rate_is_stopped(book: Ledger, ledger_url) -> None:
    """Four orders a minute, three already sent: the plan's first order goes, the next and
    every later one are rejected, the execution halts and the breach is audited; the venue saw
    one of them."""
    costs = CostModel()
    broker = PaperBroker(ledger_url, FrameQuotes(pd.DataFrame(
        columns=["date", "symbol", "open", "high", "low", "close", "volume"])), costs)
    _seed_sends(book, "acct-a", 3)
    sid = _approved(book, "acct-a", {"510300": 0.5, "510500": 0.5})
    report = execute_signal(ledger=book, venue=broker, signal_id=sid, account_id="acct-a",
                            market=_view(), limits=LIMITS, costs=costs, actor="test",
                            twap_slices=2, conduct=ConductRules(max_orders_per_minute=4))
    assert report.status == "halted" and report.submitted == 1
    leaves = [o for o in book.orders(signal_id=sid) if o.parent_order_id is not None]
    assert len(leaves) == 4
    sent = [o for o in leaves if o.status is OrderStatus.SUBMITTED]
    stopped = [o for o in leaves if o.status is OrderStatus.REJECTED]
    assert len(sent) == 1 and len(stopped) == 3
    assert all("conduct/order_rate" in str(o.reason) for o in stopped)
    assert "4 orders sent in the last minute" in str(stopped[0].reason)   # 3 seeded + 1
    assert [broker.order(o.order_id) is not None for o in leaves].count(True) == 1
    execution = book.execution(sid)
    assert execution is not None and execution.status == "halted"
    breach = book.audit_log(action="conduct_breach")
    assert len(breach) == 1 and breach[0]["details"]["rule"] == "order_rate"
    assert "limit of 4 a minute" in str(breach[0]["reason"])


def test_a_plan_the_rate_could_not_pass_whole_is_refused_before_sending(book: Ledger,
                                                                       ledger_url) -> None:
    """Six TWAP children against two a minute: nothing is sent (a stream stopped half-way
    would leave the sells done and the buys not); one breach, written with the orders."""
    costs = CostModel()
    broker = PaperBroker(ledger_url, FrameQuotes(pd.DataFrame(
        columns=["date", "symbol", "open", "high", "low", "close", "volume"])), costs)
    sid = _approved(book, "acct-a", {"510300": 0.5, "510500": 0.5})
    report = execute_signal(ledger=book, venue=broker, signal_id=sid, account_id="acct-a",
                            market=_view(), limits=LIMITS, costs=costs, actor="test",
                            twap_slices=3, conduct=ConductRules(max_orders_per_minute=2))
    assert report.submitted == 0
    orders = book.orders(signal_id=sid)
    assert orders and all(o.status is OrderStatus.REJECTED for o in orders)
    assert all("the plan has 6 orders to send" in str(o.reason) for o in orders)
    assert all(broker.order(o.order_id) is None for o in orders)
    breach = book.audit_log(action="conduct_breach")
    assert [(b["details"]["rule"], b["details"]["subject"]) for b in breach] == [
        ("order_rate", "plan")]
    # Executed again (a retry): nothing new is planned, sent or audited.
    execute_signal(ledger=book, venue=broker, signal_id=sid, account_id="acct-a",
                   market=_view(), limits=LIMITS, costs=costs, actor="test",
                   twap_slices=3, conduct=ConductRules(max_orders_per_minute=2))
    assert len(book.audit_log(action="conduct_breach")) == 1

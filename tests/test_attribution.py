"""Per-strategy attribution (issue 15 item 3): the pure rules of trading.attribution, and the
ledger booking them on a real PostgreSQL server - the strategies of an account always add up to
the account, to the cent, through partial fills, crossings and re-delivered fills."""

from __future__ import annotations

import datetime as dt
import random
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
import sqlalchemy as sa
import test_ledger as base
from conftest import scratch_database

from trading.attribution import (
    AttributionError,
    Holding,
    SignalParts,
    crossing_pairs,
    netted_strategy,
    share_fill,
    strategies_of,
    wishes_from_weights,
)
from trading.ledger import Ledger, LedgerError, OrderRecord, SignalRecord, migrate
from trading.models import Side, SignalStatus, signal_id_of, weights_hash

STRATEGIES = ("alpha", "beta", "gamma")
NETTED = netted_strategy(STRATEGIES)
INITIAL_CASH = 100_000_000.0

# ------------------------------------------------------------------------------ pure rules


def test_netted_strategy_names_each_strategy_once() -> None:
    assert netted_strategy(["beta", "alpha", "beta"]) == "alpha+beta"
    assert strategies_of("alpha+beta") == ["alpha", "beta"]
    assert strategies_of("rot") == ["rot"]
    with pytest.raises(AttributionError, match="without"):
        netted_strategy(["a+b"])


def test_crossing_pairs_match_sellers_to_buyers() -> None:
    # buyers want 300 + 100, sellers offer 200 + 50: 250 cross, pro rata 188/62 to the buyers
    pairs = crossing_pairs({"alpha": 300, "beta": -200, "gamma": -50, "delta": 100})
    assert pairs == [("beta", "alpha", 188), ("beta", "delta", 12), ("gamma", "delta", 50)]
    assert crossing_pairs({"alpha": 300, "beta": 100}) == []


def test_share_fill_serves_what_is_still_wanted_and_splits_commission_exactly() -> None:
    shares = share_fill(fill_id="f1", side=Side.BUY, quantity=700, price=Decimal("3.901"),
                        commission=Decimal("5.4613"), still_wanted={"alpha": 600, "beta": 400},
                        side_wishes={"alpha": 600, "beta": 400}, held={})
    assert {s: p.units for s, p in shares.items()} == {"alpha": 420, "beta": 280}
    assert sum(p.commission for p in shares.values()) == Decimal("5.4613")
    assert sum(p.cash for p in shares.values()) == -(Decimal("3.901") * 700 + Decimal("5.4613"))
    assert shares["beta"].commission == Decimal("2.1845200000")


def test_share_fill_gives_lot_rounding_excess_pro_rata_and_refuses_impossible_sales() -> None:
    bought = share_fill(fill_id="f2", side=Side.BUY, quantity=300, price=Decimal(2),
                        commission=Decimal(0), still_wanted={"alpha": 150, "beta": 80},
                        side_wishes={"alpha": 150, "beta": 80}, held={})
    # 230 wanted, 70 beyond: 45.65 and 24.35 more, the larger remainder takes the odd unit
    assert {s: p.units for s, p in bought.items()} == {"alpha": 196, "beta": 104}
    sold = share_fill(fill_id="f3", side=Side.SELL, quantity=100, price=Decimal(2),
                      commission=Decimal(1), still_wanted={"alpha": 30}, side_wishes={},
                      held={"alpha": 40, "beta": 90})
    # alpha's 30 first, then 70 pro rata to what is still held (10 and 90): 7 and 63
    assert {s: p.units for s, p in sold.items()} == {"alpha": -37, "beta": -63}
    with pytest.raises(AttributionError, match=r"fill f4: 50 sell units .* holds enough"):
        share_fill(fill_id="f4", side=Side.SELL, quantity=100, price=Decimal(2),
                   commission=Decimal(0), still_wanted={"alpha": 50}, side_wishes={},
                   held={"alpha": 50})


def test_holding_realised_minus_cost_is_the_cash_moved() -> None:
    held = Holding().bought(300, Decimal("1205.1")).bought(100, Decimal("410"))
    after = held.sold(150, Decimal("630.7"), what="x")
    assert after.quantity == 250
    assert after.realised - after.cost == Decimal("630.7") - Decimal("1205.1") - Decimal("410")
    with pytest.raises(AttributionError, match="strategy beta: sells 300 units but holds 250"):
        after.sold(300, Decimal(1), what="strategy beta")


def test_wishes_from_weights_sizes_each_strategy_and_sells_what_no_target_keeps() -> None:
    parts = {"510300": {"alpha": 0.3, "beta": 0.2}, "159915": {"beta": 0.1}}
    wishes = wishes_from_weights(parts, equity=100_000.0, prices={"510300": 4.0, "159915": 2.5},
                                 held={"alpha": {"510300": 1000, "518880": 300}})
    assert wishes == {"510300": {"alpha": 6500, "beta": 5000}, "159915": {"beta": 4000},
                      "518880": {"alpha": -300}}


def test_signal_parts_refuse_bad_input_naming_signal_and_fund() -> None:
    with pytest.raises(AttributionError, match="signal s1 fund 510300: reference price"):
        SignalParts("s1", {"510300": {"alpha": 100}}, {})
    with pytest.raises(AttributionError, match="signal s1 fund 510300 strategy alpha: units"):
        SignalParts("s1", {"510300": {"alpha": 1.5}}, {"510300": 4.0})  # type: ignore[dict-item]
    with pytest.raises(AttributionError, match="not a single strategy"):
        SignalParts("s1", {"510300": {"alpha+beta": 1}}, {"510300": 4.0})


# ------------------------------------------------------------------------------ the ledger


@pytest.fixture(scope="module")
def ledger() -> Iterator[Ledger]:
    with scratch_database("etf_attrib") as name:
        migrate(base.sa_url(name))
        led = Ledger(base.sa_url(name), retry_seconds=20)
        yield led
        led.dispose()


@pytest.fixture
def account(ledger: Ledger) -> str:
    account_id = f"acct-{uuid.uuid4().hex[:8]}"
    ledger.open_account(account_id, INITIAL_CASH, actor="test")
    return account_id


def approve(ledger: Ledger, account_id: str, day: dt.date, strategy: str = NETTED
            ) -> SignalRecord:
    weights = {"510300": round(random.random(), 6)}
    return ledger.record_signal(SignalRecord(
        signal_id=signal_id_of(strategy, account_id, day, weights), account_id=account_id,
        strategy=strategy, as_of=day, weights=weights, weights_hash=weights_hash(weights),
        status=SignalStatus.APPROVED, reasons=[], data_version="dv", dagster_run_id="run"),
        actor="gate")


def order(ledger: Ledger, signal: SignalRecord, symbol: str, side: Side, quantity: int,
          price: float) -> OrderRecord:
    return ledger.record_orders(
        [base.make_order(signal, symbol, side, quantity, price)], actor="executor")[0]


def test_a_fill_is_shared_by_the_strategies_wishes_once(ledger: Ledger, account: str) -> None:
    signal = approve(ledger, account, dt.date(2024, 3, 4))
    parts = SignalParts(signal.signal_id, {"510300": {"alpha": 600, "beta": 400}},
                        {"510300": 3.9})
    assert ledger.record_signal_parts(parts, actor="gate")
    assert not ledger.record_signal_parts(parts, actor="gate")           # same parts: no-op
    assert ledger.signal_parts(signal.signal_id) == parts
    buy = order(ledger, signal, "510300", Side.BUY, 1000, 3.9)
    first = base.make_fill(buy, 700, 3.901, 5.4613)
    assert ledger.record_fill(first, actor="venue")
    assert not ledger.record_fill(first, actor="venue")                   # re-delivered
    assert not ledger.record_attributed_fill(first, actor="venue")
    assert {s: p.units for s, p in ledger.fill_attribution(first.fill_id).items()} == {
        "alpha": 420, "beta": 280}
    assert ledger.record_fill(base.make_fill(buy, 300, 3.95, 5.0), actor="venue")
    holdings = ledger.strategy_holdings(account)
    assert {s: h["510300"].quantity for s, h in holdings.items()} == {"alpha": 600,
                                                                     "beta": 400}
    (audit,) = [e for e in ledger.audit_log(entity="fill", entity_id=first.fill_id)]
    assert audit["details"]["strategies"] == {"alpha": 420, "beta": 280}
    assert_adds_up(ledger, account, {"510300": 4.2})


def test_a_fill_delivered_concurrently_is_attributed_once(ledger: Ledger, account: str) -> None:
    signal = approve(ledger, account, dt.date(2024, 3, 4))
    ledger.record_signal_parts(SignalParts(signal.signal_id, {"510300": {"alpha": 300,
                                                                         "beta": 200}},
                                           {"510300": 4.0}), actor="gate")
    fill = base.make_fill(order(ledger, signal, "510300", Side.BUY, 500, 4.0), 500, 4.0, 5.0)
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def book(record: Callable[..., bool]) -> None:
        barrier.wait()
        results.append(record(fill, actor="venue"))

    threads = [threading.Thread(target=book, args=(record,)) for record in (
        ledger.record_fill, ledger.record_attributed_fill) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False, False, False, True]
    assert {s: p.units for s, p in ledger.fill_attribution(fill.fill_id).items()} == {
        "alpha": 300, "beta": 200}
    assert_adds_up(ledger, account, {"510300": 4.0})


def test_parts_are_immutable_name_the_signals_strategies_and_come_before_fills(
        ledger: Ledger, account: str) -> None:
    signal = approve(ledger, account, dt.date(2024, 3, 4), strategy="alpha+beta")
    with pytest.raises(LedgerError, match=r"may not name \['gamma'\]"):
        ledger.record_signal_parts(SignalParts(signal.signal_id, {"510300": {"gamma": 1}},
                                               {"510300": 4.0}), actor="gate")
    ledger.record_signal_parts(SignalParts(signal.signal_id, {"510300": {"alpha": 100}},
                                           {"510300": 4.0}), actor="gate")
    with pytest.raises(LedgerError, match="different parts recorded"):
        ledger.record_signal_parts(SignalParts(signal.signal_id, {"510300": {"alpha": 200}},
                                               {"510300": 4.0}), actor="gate")
    other = approve(ledger, account, dt.date(2024, 3, 5), strategy="alpha")
    ledger.record_fill(base.make_fill(order(ledger, other, "510300", Side.BUY, 100, 4.0),
                                      100, 4.0, 5.0), actor="venue")
    with pytest.raises(LedgerError, match="already has fills"):
        ledger.record_signal_parts(SignalParts(other.signal_id, {"510300": {"alpha": 100}},
                                               {"510300": 4.0}), actor="gate")


def test_a_fill_without_parts_goes_to_the_one_strategy_or_is_refused(ledger: Ledger,
                                                                     account: str) -> None:
    single = approve(ledger, account, dt.date(2024, 3, 4), strategy="alpha")
    fill = base.make_fill(order(ledger, single, "510300", Side.BUY, 500, 4.0), 500, 4.0, 5.0)
    assert ledger.record_attributed_fill(fill, actor="venue")
    assert ledger.fill_attribution(fill.fill_id)["alpha"].units == 500

    netted = approve(ledger, account, dt.date(2024, 3, 5))
    orphan = base.make_fill(order(ledger, netted, "159915", Side.BUY, 100, 2.0), 100, 2.0, 5.0)
    cash = ledger.cash(account)
    with pytest.raises(LedgerError, match=rf"signal {re.escape(netted.signal_id)} nets 3 "
                                          rf"strategies .*fill {orphan.fill_id} cannot be "
                                          "attributed"):
        ledger.record_attributed_fill(orphan, actor="venue")
    # The venue's plain booking (reconcile) refuses it too: never booked to the account alone.
    with pytest.raises(LedgerError, match="cannot be attributed"):
        ledger.record_fill(orphan, actor="venue")
    assert ledger.fills(account, signal_id=netted.signal_id) == []       # nothing booked
    assert ledger.cash(account) == cash
    assert "159915" not in ledger.positions(account)


def test_opposite_wishes_cross_at_the_reference_price(ledger: Ledger, account: str) -> None:
    first = approve(ledger, account, dt.date(2024, 3, 4))
    ledger.record_signal_parts(SignalParts(first.signal_id, {"510300": {"alpha": 500}},
                                           {"510300": 4.0}), actor="gate")
    ledger.record_fill(base.make_fill(order(ledger, first, "510300", Side.BUY, 500, 4.0),
                                      500, 4.0, 5.0), actor="venue")
    second = approve(ledger, account, dt.date(2024, 3, 5))
    ledger.record_signal_parts(SignalParts(
        second.signal_id, {"510300": {"alpha": -300, "beta": 500}}, {"510300": 4.1}),
        actor="gate")
    position, cash = ledger.positions(account), ledger.cash(account)
    (crossed,) = ledger.book_crossings(second.signal_id, session=dt.date(2024, 3, 6),
                                       actor="executor")
    assert (crossed.seller, crossed.buyer, crossed.units, crossed.price) == (
        "alpha", "beta", 300, 4.1)
    assert crossed.cash == pytest.approx(1230.0)
    assert ledger.book_crossings(second.signal_id, session=dt.date(2024, 3, 6),
                                 actor="executor") == [crossed]           # booked once
    assert ledger.positions(account) == position and ledger.cash(account) == cash
    ledger.record_fill(base.make_fill(order(ledger, second, "510300", Side.BUY, 200, 4.1),
                                      200, 4.12, 5.0), actor="venue")
    holdings = ledger.strategy_holdings(account)
    assert (holdings["alpha"]["510300"].quantity, holdings["beta"]["510300"].quantity) == (
        200, 500)
    books = ledger.strategy_books(account, {"510300": 4.2})
    assert books["beta"].cash == pytest.approx(-1230.0 - 200 * 4.12 - 5.0)
    assert_adds_up(ledger, account, {"510300": 4.2})


def test_strategy_books_need_a_price_for_every_holding(ledger: Ledger, account: str) -> None:
    single = approve(ledger, account, dt.date(2024, 3, 4), strategy="alpha")
    ledger.record_attributed_fill(base.make_fill(
        order(ledger, single, "510300", Side.BUY, 100, 4.0), 100, 4.0, 5.0), actor="venue")
    with pytest.raises(LedgerError, match=r"strategy alpha: no price to mark \['510300'\]"):
        ledger.strategy_books(account, {})


# ------------------------------------------------------------------------------ the invariant

FUNDS = ("510300", "159915", "518880")


def assert_adds_up(ledger: Ledger, account: str, prices: dict[str, float]) -> None:
    """Units per fund, cash and P&L of the strategies sum to the account's (to the cent)."""
    books = ledger.strategy_books(account, prices)
    positions = ledger.positions(account)
    units: dict[str, int] = {}
    for book in books.values():
        for fund, held in book.positions.items():
            units[fund] = units.get(fund, 0) + held
        assert book.pnl == pytest.approx(book.cash + book.market_value, abs=1e-6)
    assert units == {fund: p.quantity for fund, p in positions.items()}
    cash, initial = ledger.cash(account), ledger.initial_cash(account)
    value = sum(p.quantity * prices[fund] for fund, p in positions.items())
    # Far inside a cent: what is left is the floats the API returns (the database is exact).
    assert sum(b.cash for b in books.values()) == pytest.approx(cash - initial, abs=1e-6)
    assert sum(b.pnl for b in books.values()) == pytest.approx(cash + value - initial,
                                                               abs=1e-6)


def test_strategies_add_up_to_the_account_over_random_steps(ledger: Ledger,
                                                            account: str) -> None:
    rng = random.Random(20261206)
    prices = {f: rng.uniform(1.0, 5.0) for f in FUNDS}
    booked: list = []
    for step in range(36):
        day = dt.date(2024, 1, 1) + dt.timedelta(days=step)
        prices = {f: round(p * rng.uniform(0.95, 1.05), 3) for f, p in prices.items()}
        if step % 5 == 4:
            single_strategy_step(ledger, account, day, prices, rng, booked)
        else:
            netted_step(ledger, account, day, prices, rng, booked)
        for fill in rng.sample(booked, min(3, len(booked))):           # re-delivered fills
            assert not ledger.record_fill(fill, actor="venue")
            assert not ledger.record_attributed_fill(fill, actor="venue")
        assert_adds_up(ledger, account, prices)
    assert_every_fill_attributed_exactly(ledger, account, len(booked))
    assert_the_steps_covered_every_path(ledger, account)


def wishes_of(ledger: Ledger, account: str, rng: random.Random) -> dict[str, dict[str, int]]:
    held = ledger.strategy_holdings(account)
    wishes: dict[str, dict[str, int]] = {}
    for fund in FUNDS:
        for strategy in STRATEGIES:
            have = held.get(strategy, {}).get(fund, Holding()).quantity
            units = -rng.randint(0, have) if have and rng.random() < 0.4 \
                else 100 * rng.randint(0, 6) + rng.choice((0, 0, 37))
            if units:
                wishes.setdefault(fund, {})[strategy] = units
    return wishes


def netted_step(ledger: Ledger, account: str, day: dt.date, prices: dict[str, float],
                rng: random.Random, booked: list) -> None:
    signal = approve(ledger, account, day)
    wishes = wishes_of(ledger, account, rng) or {"510300": {"alpha": 100}}
    parts = SignalParts(signal.signal_id, wishes, {f: prices[f] for f in wishes})
    assert ledger.record_signal_parts(parts, actor="gate")
    ledger.book_crossings(signal.signal_id, session=day, actor="executor")
    for fund, by_strategy in wishes.items():
        net = sum(by_strategy.values())
        if net == 0:
            continue
        side = Side.BUY if net > 0 else Side.SELL
        quantity = abs(net)
        if side is Side.BUY and rng.random() < 0.5:
            quantity = -(-quantity // 100) * 100                 # rounded up to a lot
        trade(ledger, order(ledger, signal, fund, side, quantity, prices[fund]), prices[fund],
              rng, booked, attributed=False)


def single_strategy_step(ledger: Ledger, account: str, day: dt.date,
                         prices: dict[str, float], rng: random.Random, booked: list) -> None:
    strategy = rng.choice(STRATEGIES)
    signal = approve(ledger, account, day, strategy=strategy)
    fund = rng.choice(FUNDS)
    have = ledger.strategy_holdings(account).get(strategy, {}).get(fund, Holding()).quantity
    side, quantity = (Side.SELL, rng.randint(1, have)) if have and rng.random() < 0.5 \
        else (Side.BUY, 100 * rng.randint(1, 5))
    trade(ledger, order(ledger, signal, fund, side, quantity, prices[fund]), prices[fund], rng,
          booked, attributed=True)


def trade(ledger: Ledger, placed: OrderRecord, price: float, rng: random.Random,
          booked: list, *, attributed: bool) -> None:
    """Fill the order in one to three parts, sometimes leaving the rest unfilled."""
    left = placed.quantity
    for _ in range(rng.randint(1, 3)):
        if not left:
            break
        quantity = left if rng.random() < 0.4 else rng.randint(1, left)
        fill_price = round(price * rng.uniform(0.99, 1.01), 3)
        commission = round(max(5.0, fill_price * quantity * 0.0002), 4)
        fill = base.make_fill(placed, quantity, fill_price, commission)
        book = ledger.record_attributed_fill if attributed else ledger.record_fill
        assert book(fill, actor="venue")
        booked.append(fill)
        left -= quantity


def assert_every_fill_attributed_exactly(ledger: Ledger, account: str, fills: int) -> None:
    """Exact in the database: each fill's shares sum to its units, commission and cash."""
    with ledger.transaction() as conn:
        rows = conn.execute(sa.text("""
            SELECT f.fill_id, f.quantity, a.units, f.commission, a.commission,
                   CASE f.side WHEN 'buy' THEN -(f.quantity * f.price + f.commission)
                               ELSE f.quantity * f.price - f.commission END, a.cash
            FROM fills f LEFT JOIN (
                SELECT fill_id, sum(abs(units)) AS units, sum(commission) AS commission,
                       sum(cash) AS cash FROM fill_attributions GROUP BY fill_id) a
              USING (fill_id)
            WHERE f.account_id = :account"""), {"account": account}).all()
    assert len(rows) == fills
    wrong = [r for r in rows if (r[1], r[3], r[5]) != (r[2], r[4], r[6])]
    assert wrong == []


def assert_the_steps_covered_every_path(ledger: Ledger, account: str) -> None:
    """The seed is fixed: make sure its steps crossed, sold, shared fills, left orders
    partially filled and booked lot-rounding excess, so the invariant was tested on them."""
    with ledger.transaction() as conn:
        covered = conn.execute(sa.text("""
            SELECT (SELECT count(*) FROM strategy_crossings WHERE account_id = :a),
                   (SELECT count(*) FROM fills WHERE account_id = :a AND side = 'sell'),
                   (SELECT count(*) FROM (SELECT fill_id FROM fill_attributions
                                          WHERE account_id = :a GROUP BY fill_id
                                          HAVING count(*) > 1) shared),
                   (SELECT count(*) FROM orders WHERE account_id = :a
                                                  AND status = 'partially_filled'),
                   (SELECT count(*) FROM orders o JOIN signal_parts p USING (signal_id, symbol)
                    WHERE o.account_id = :a AND o.side = 'buy'
                    GROUP BY o.order_id, o.quantity HAVING o.quantity > sum(p.wanted_units)
                    LIMIT 1)"""), {"a": account}).one()
    assert all(n and n > 0 for n in covered), covered

"""Paper-broker rules with hand-computed numbers, on REAL raw bars of
``shared/data/cn_etf_morphkyan_raw``:

* 510300 (沪深300ETF) 2025-06-10: open 3.997, close 3.972; 2025-06-11: open 3.974, close 4.004;
* 512880 (证券ETF) opened limit-up on 2024-10-08 (open = close = 1.218, previous close 1.107);
* 518880 (黄金ETF) opened limit-down on 2026-02-02 (open 9.908, previous close 11.009);
* 513100 (纳指ETF) has no bar on the session 2022-01-13 (share-split suspension).

Costs: 2 bp commission with a 5 CNY minimum, 5 bp slippage, lots of 100 units.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from rotation.costs import CostModel
from rotation.sources.files import FileMarketSource, load_dataset_spec
from trading.contract import temporary_database
from trading.models import OrderRequest, OrderStatus, Side, order_id_of
from trading.paper import (
    REASON_CASH_SHORT,
    REASON_PARTICIPATION,
    REASON_T1,
    SHANGHAI,
    FrameQuotes,
    PaperBroker,
    SessionBook,
    child_schedule,
    execute_on_bar,
    participation_cap,
    sellable_quantity,
)
from trading.twap import TwapVenue, aggregate, split_quantity
from trading.venue import ExecutionVenue, UnknownOrder, VenueError

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "config" / "datasets" / "cn_etf_morphkyan_raw.yaml"
D1 = dt.date(2025, 6, 10)      # 510300: open 3.997, close 3.972
D2 = dt.date(2025, 6, 11)      # 510300: open 3.974, close 4.004
COSTS = CostModel(commission_bps=2.0, min_commission=5.0, slippage_bps=5.0, lot_size=100)
SYMBOLS = ("510300", "510500", "512880", "518880", "513100")


@pytest.fixture(scope="module")
def bars(shared_data: Path) -> pd.DataFrame:
    source = FileMarketSource(shared_data / "cn_etf_morphkyan_raw", load_dataset_spec(DATASET))
    frame = source.load(dt.date(2021, 12, 1), dt.date(2026, 3, 31)).bars
    return frame.loc[frame["symbol"].isin(SYMBOLS)].reset_index(drop=True)


@pytest.fixture(scope="module")
def limits(shared_data: Path) -> dict[str, float | None]:
    source = FileMarketSource(shared_data / "cn_etf_morphkyan_raw", load_dataset_spec(DATASET))
    return {i.symbol: i.price_limit for i in source.instruments()}


@pytest.fixture(scope="module")
def quotes(bars: pd.DataFrame, limits: dict[str, float | None]) -> FrameQuotes:
    return FrameQuotes(bars, limits)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with temporary_database(prefix="etf_paper") as url:
        yield url


@pytest.fixture(scope="module")
def broker(database: str, quotes: FrameQuotes) -> Iterator[PaperBroker]:
    paper = PaperBroker(database, quotes, COSTS)
    yield paper
    paper.close()


def account(venue: ExecutionVenue, cash: float) -> str:
    account_id = f"acct-{uuid.uuid4().hex[:12]}"
    venue.open_account(account_id, cash)
    return account_id


def req(account_id: str, symbol: str, side: Side, quantity: int, session: dt.date = D2,
        **extra: object) -> OrderRequest:
    return OrderRequest(client_order_id=f"o-{uuid.uuid4().hex[:16]}", account_id=account_id,
                        symbol=symbol, side=side, quantity=quantity, session=session,
                        reference_price=4.0, **extra)  # type: ignore[arg-type]


# -- the data the numbers below are computed from -------------------------------------------
def test_real_bars_used_by_the_hand_computations(quotes: FrameQuotes) -> None:
    d1, d2 = quotes.quote("510300", D1), quotes.quote("510300", D2)
    assert d1 is not None and (d1.open, d1.close) == (3.997, 3.972)
    assert d2 is not None and (d2.open, d2.close) == (3.974, 4.004)


# -- pricing and commission -----------------------------------------------------------------
def test_buy_fill_price_has_slippage_and_minimum_commission(broker: PaperBroker) -> None:
    acct = account(broker, 100_000.0)
    order = req(acct, "510300", Side.BUY, 1_000)
    state = broker.submit(order)
    assert state.status is OrderStatus.SUBMITTED
    assert state.venue_order_id == f"paper-{order.client_order_id}"
    [fill] = broker.fills(acct, D2)
    # 3.974 × (1 + 5 bp) = 3.975987; notional 3,975.987; 2 bp = 0.795 < 5 CNY minimum.
    assert fill.price == pytest.approx(3.975987, abs=1e-12)
    assert fill.commission == 5.0
    assert fill.fill_id == f"paper-{order.client_order_id}-1"
    assert fill.filled_at == dt.datetime(2025, 6, 11, 9, 30, tzinfo=SHANGHAI)
    assert broker.cash(acct) == pytest.approx(100_000 - 3_975.987 - 5.0, abs=1e-9)
    assert broker.positions(acct) == {"510300": 1_000}
    done = broker.order(order.client_order_id)
    assert done is not None and done.status is OrderStatus.FILLED
    assert done.filled_quantity == 1_000 and done.average_price == pytest.approx(3.975987)


def test_commission_rate_above_the_minimum(broker: PaperBroker) -> None:
    acct = account(broker, 1_000_000.0)
    broker.submit(req(acct, "510300", Side.BUY, 100_000))
    [fill] = broker.fills(acct, D2)
    # notional 100,000 × 3.975987 = 397,598.7; 2 bp = 79.51974 CNY.
    assert fill.commission == pytest.approx(79.51974, abs=1e-9)
    assert broker.cash(acct) == pytest.approx(1_000_000 - 397_598.7 - 79.51974, abs=1e-6)


def test_sell_price_slippage_and_cash(broker: PaperBroker) -> None:
    acct = account(broker, 100_000.0)
    broker.submit(req(acct, "510300", Side.BUY, 1_000, D1))
    broker.submit(req(acct, "510300", Side.SELL, 1_000, D2))
    buy, sell = broker.fills(acct, D2)
    # Buy on D1 at 3.997 × 1.0005 = 3.9989985; sell on D2 at 3.974 × 0.9995 = 3.972013.
    assert (buy.side, buy.session, buy.price) == (Side.BUY, D1, pytest.approx(3.9989985))
    assert (sell.side, sell.session, sell.price) == (Side.SELL, D2, pytest.approx(3.972013))
    assert buy.commission == sell.commission == 5.0
    assert broker.cash(acct) == pytest.approx(100_000 - 3_998.9985 - 5 + 3_972.013 - 5,
                                              abs=1e-9)   # 99,963.0145
    assert broker.positions(acct) == {}


def test_matching_stops_at_until_and_at_the_latest_session(broker: PaperBroker, database: str,
                                                           bars: pd.DataFrame,
                                                           limits: dict[str, float | None]
                                                           ) -> None:
    acct = account(broker, 100_000.0)
    first = req(acct, "510300", Side.BUY, 1_000, D1)
    second = req(acct, "510300", Side.SELL, 1_000, D2)
    broker.submit(first)
    broker.submit(second)
    assert [f.session for f in broker.fills(acct, D1)] == [D1]
    assert broker.order(second.client_order_id).status is OrderStatus.SUBMITTED  # type: ignore
    # A venue whose market data ends on D1 cannot match D2 whatever ``until`` says.
    early = PaperBroker(database, FrameQuotes(bars, limits, as_of=D1), COSTS)
    try:
        assert [f.session for f in early.fills(acct)] == [D1]
        assert early.order(second.client_order_id).status is OrderStatus.SUBMITTED  # type: ignore
    finally:
        early.close()
    assert [f.session for f in broker.fills(acct)] == [D1, D2]
    assert broker.positions(acct) == {}


# -- cash -----------------------------------------------------------------------------------
def test_cash_short_buy_is_cut_to_affordable_lots(broker: PaperBroker) -> None:
    acct = account(broker, 10_000.0)
    order = req(acct, "510300", Side.BUY, 5_000)
    broker.submit(order)
    [fill] = broker.fills(acct, D2)
    # One lot costs 397.5987: 25 lots = 9,939.9675 + 5 ≤ 10,000; 26 lots = 10,337.57 > 10,000.
    assert fill.quantity == 2_500
    state = broker.order(order.client_order_id)
    assert state is not None
    assert (state.status, state.filled_quantity, state.reason) == (
        OrderStatus.EXPIRED, 2_500, "cash_short")
    assert broker.cash(acct) == pytest.approx(10_000 - 9_939.9675 - 5, abs=1e-9)   # 55.0325


def test_cash_short_zero_lots_expires_unfilled(broker: PaperBroker) -> None:
    acct = account(broker, 300.0)      # one lot costs 397.60 + 5
    order = req(acct, "510300", Side.BUY, 100)
    broker.submit(order)
    assert broker.fills(acct, D2) == []
    state = broker.order(order.client_order_id)
    assert state is not None
    assert (state.status, state.filled_quantity, state.reason) == (
        OrderStatus.EXPIRED, 0, "cash_short")
    assert broker.cash(acct) == 300.0


def test_sells_are_matched_before_buys(broker: PaperBroker) -> None:
    acct = account(broker, 4_100.0)
    broker.submit(req(acct, "510300", Side.BUY, 1_000, D1))   # 3,998.9985 + 5 → 96.0015 left
    broker.fills(acct, D1)
    buy = req(acct, "510500", Side.BUY, 600)                  # ≈ 3,470 CNY: needs the sale
    sell = req(acct, "510300", Side.SELL, 1_000)
    broker.submit(buy)                                         # submitted first
    broker.submit(sell)
    fills = broker.fills(acct, D2)
    assert [(f.side, f.quantity) for f in fills if f.session == D2] == [
        (Side.SELL, 1_000), (Side.BUY, 600)]
    assert broker.order(buy.client_order_id).status is OrderStatus.FILLED  # type: ignore


# -- validation -----------------------------------------------------------------------------
def test_rejections_are_stored_and_idempotent(broker: PaperBroker) -> None:
    acct = account(broker, 100_000.0)
    cases = {
        "odd_lot": req(acct, "510300", Side.BUY, 150),
        "invalid_quantity": req(acct, "510300", Side.BUY, 0),
        "unknown_account": req("no-such-account", "510300", Side.BUY, 100),
        "unsupported_order_type": req(acct, "510300", Side.BUY, 100, order_type="limit"),
    }
    for reason, order in cases.items():
        state = broker.submit(order)
        assert (state.status, state.reason) == (OrderStatus.REJECTED, reason)
        assert broker.submit(order) == state
        assert broker.order(order.client_order_id) == state
        assert broker.cancel(order.client_order_id) == state
    assert broker.fills(acct) == []
    assert broker.positions(acct) == {}


def test_odd_lot_sell_must_carry_the_positions_odd_remainder(broker: PaperBroker,
                                                             database: str) -> None:
    acct = account(broker, 100_000.0)
    broker.submit(req(acct, "510300", Side.BUY, 1_000, D1))
    broker.fills(acct, D1)
    _set_position(database, acct, "510300", 1_050)   # e.g. units left by a share conversion
    assert broker.submit(req(acct, "510300", Side.SELL, 530)).reason == "odd_lot"
    assert broker.submit(req(acct, "510300", Side.SELL, 1_150)).reason == "odd_lot"   # > held
    assert broker.submit(req(acct, "510300", Side.SELL, 550)).status is OrderStatus.SUBMITTED
    assert broker.submit(req(acct, "510300", Side.SELL, 500)).status is OrderStatus.SUBMITTED
    broker.fills(acct, D2)
    assert broker.positions(acct) == {}


def test_order_for_an_already_matched_session_is_rejected(broker: PaperBroker) -> None:
    acct = account(broker, 100_000.0)
    broker.submit(req(acct, "510300", Side.BUY, 100, D2))
    broker.fills(acct, D2)
    late = broker.submit(req(acct, "510300", Side.BUY, 100, D1))
    assert (late.status, late.reason) == (OrderStatus.REJECTED, "session_closed")
    # The matched session itself still takes orders (matched at the next ``fills``).
    same = broker.submit(req(acct, "510300", Side.BUY, 100, D2))
    assert same.status is OrderStatus.SUBMITTED
    broker.fills(acct, D2)
    assert broker.positions(acct) == {"510300": 200}


def test_unknown_ids_and_accounts(broker: PaperBroker) -> None:
    assert broker.order("nope") is None
    with pytest.raises(UnknownOrder, match="nope"):
        broker.cancel("nope")
    with pytest.raises(VenueError, match="no-such"):
        broker.cash("no-such")
    with pytest.raises(VenueError, match="no-such"):
        broker.fills("no-such")
    acct = account(broker, 1_000.0)
    broker.open_account(acct, 5_000.0)          # funded once: opening again changes nothing
    assert broker.cash(acct) == 1_000.0


# -- blocked executions ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("symbol", "side", "session", "hold_on", "reason"),
    [
        ("513100", Side.BUY, dt.date(2022, 1, 13), None, "no_bar"),
        ("512880", Side.BUY, dt.date(2024, 10, 8), None, "limit_up"),
        ("518880", Side.SELL, dt.date(2026, 2, 2), dt.date(2026, 1, 30), "limit_down"),
    ],
)
def test_blocked_orders_expire_with_the_reason(broker: PaperBroker, symbol: str, side: Side,
                                               session: dt.date, hold_on: dt.date | None,
                                               reason: str) -> None:
    acct = account(broker, 100_000.0)
    if hold_on is not None:
        broker.submit(req(acct, symbol, Side.BUY, 100, hold_on))
        broker.fills(acct, hold_on)
    before = broker.fills(acct, session)
    order = req(acct, symbol, side, 100, session)
    broker.submit(order)
    assert broker.fills(acct, session) == before
    state = broker.order(order.client_order_id)
    assert state is not None
    assert (state.status, state.filled_quantity, state.reason) == (
        OrderStatus.EXPIRED, 0, reason)


def test_t1_shortfall_sells_what_was_held_before_the_session(broker: PaperBroker) -> None:
    acct = account(broker, 100_000.0)
    broker.submit(req(acct, "510300", Side.BUY, 200, D1))
    broker.fills(acct, D1)
    broker.submit(req(acct, "510300", Side.BUY, 100, D2))
    sell = req(acct, "510300", Side.SELL, 300, D2)
    broker.submit(sell)
    broker.fills(acct, D2)
    state = broker.order(sell.client_order_id)
    assert state is not None
    assert (state.status, state.filled_quantity, state.reason) == (
        OrderStatus.EXPIRED, 200, "t1")
    # Units bought on D2 are not sellable on D2 even by an order arriving after the match.
    late = req(acct, "510300", Side.SELL, 100, D2)
    broker.submit(late)
    broker.fills(acct, D2)
    assert broker.order(late.client_order_id).reason == "t1"   # type: ignore[union-attr]
    assert broker.positions(acct) == {"510300": 100}


def test_cancel_open_then_final(broker: PaperBroker) -> None:
    acct = account(broker, 100_000.0)
    order = req(acct, "510300", Side.BUY, 100)
    broker.submit(order)
    cancelled = broker.cancel(order.client_order_id)
    assert (cancelled.status, cancelled.reason) == (OrderStatus.CANCELLED, "cancelled")
    assert broker.fills(acct, D2) == []
    assert broker.cancel(order.client_order_id) == cancelled


# -- TWAP -----------------------------------------------------------------------------------
def test_split_quantity() -> None:
    assert split_quantity(1_000, 4, 100) == [200, 200, 300, 300]
    assert split_quantity(1_050, 3, 100) == [300, 300, 450]
    assert split_quantity(250, 4, 100) == [100, 150]          # fewer lots than slices
    assert split_quantity(50, 3, 100) == [50]
    assert split_quantity(900, 3, 100) == [300, 300, 300]
    assert sum(split_quantity(123_456, 7, 100)) == 123_456


def test_child_schedule() -> None:
    assert child_schedule(1, 4) == (0.0, dt.time(9, 30))
    assert child_schedule(2, 4) == (pytest.approx(1 / 3), dt.time(10, 50))
    assert child_schedule(3, 4) == (pytest.approx(2 / 3), dt.time(13, 40))
    assert child_schedule(4, 4) == (1.0, dt.time(15, 0))
    assert child_schedule(2, 3)[1] == dt.time(11, 30)
    assert child_schedule(0, 1) == (0.0, dt.time(9, 30))


def test_a_participation_cap_limits_the_fill_in_the_one_model(quotes: FrameQuotes) -> None:
    """The cap (the vn.py test venue's setting) on 510300's real bar of D2: a share of the volume
    traded while the order was open, less what it has; whole lots; its shortfall is
    ``participation`` unless cash or T+1 bind first."""
    bar = quotes.quote("510300", D2)
    assert bar is not None and bar.volume > 0
    share = 1e-5
    assert participation_cap(None, bar.volume, 1.0, 0) is None
    quarter = participation_cap(share, bar.volume, 0.25, 0)
    assert quarter == int(share * bar.volume * 0.25) > 100
    assert participation_cap(share, bar.volume, 0.25, quarter) == 0
    assert participation_cap(share, bar.volume, 1.0, quarter) == int(share * bar.volume) - quarter

    def run(side: Side, wanted: int, book: SessionBook, cap: int | None) -> tuple[int, str | None]:
        out = execute_on_bar(side, "510300", wanted, 0, 1, D2, bar, book, COSTS, cap=cap)
        return out.quantity, out.reason

    assert quarter is not None
    lots = quarter - quarter % 100
    rich = SessionBook(cash=1e9, positions={}, bought={})
    assert run(Side.BUY, 50_000, rich, quarter) == (lots, REASON_PARTICIPATION)
    assert run(Side.BUY, lots, SessionBook(cash=1e9, positions={}, bought={}), quarter) == \
        (lots, None)
    poor = SessionBook(cash=2_000.0, positions={}, bought={})
    # 500 × 3.974 × 1.0005 + 5 (minimum commission) = 1992.99 ≤ 2000 < 600 units' cost.
    assert run(Side.BUY, 50_000, poor, quarter) == (500, REASON_CASH_SHORT)
    held = SessionBook(cash=0.0, positions={"510300": 50_000}, bought={})
    assert run(Side.SELL, 50_000, held, quarter) == (lots, REASON_PARTICIPATION)
    fresh = SessionBook(cash=0.0, positions={"510300": 1_000}, bought={"510300": 800})
    assert run(Side.SELL, 1_000, fresh, quarter) == (200, REASON_T1)
    assert run(Side.BUY, 300, SessionBook(cash=1e9, positions={}, bought={}), 0) == \
        (0, REASON_PARTICIPATION)


def test_sellable_quantity() -> None:
    assert sellable_quantity(300, 200, 200, 100) == 200
    assert sellable_quantity(300, 250, 250, 100) == 250        # the odd lot in one piece
    assert sellable_quantity(300, 250, 350, 100) == 250        # 50 = 350 mod 100
    assert sellable_quantity(300, 230, 350, 100) == 200        # rounded down to whole lots
    assert sellable_quantity(100, 0, 100, 100) == 0


def test_twap_children_sizes_prices_and_times(broker: PaperBroker) -> None:
    twap = TwapVenue(broker, slices=4, lot_size=100)
    acct = account(twap, 100_000.0)
    parent = req(acct, "510300", Side.BUY, 1_000)
    state = twap.submit(parent)
    assert (state.status, state.quantity) == (OrderStatus.SUBMITTED, 1_000)
    ids = [order_id_of(parent.client_order_id, "510300", Side.BUY, k) for k in (1, 2, 3, 4)]
    assert twap.children(parent.client_order_id) == ids
    assert broker.children_of(parent.client_order_id) == ids
    child = twap.request(ids[2])
    assert child is not None
    assert (child.parent_order_id, child.slice_index, child.slices) == (
        parent.client_order_id, 3, 4)
    assert twap.submit(parent) == state                      # idempotent
    fills = twap.fills(acct, D2)
    assert [f.client_order_id for f in fills] == ids
    assert [f.quantity for f in fills] == [200, 200, 300, 300]
    # open 3.974, close 4.004: 3.974, 3.984, 3.994, 4.004, each × 1.0005.
    assert [f.price for f in fills] == pytest.approx([3.975987, 3.985992, 3.995997, 4.006002])
    assert [f.filled_at.astimezone(SHANGHAI).time() for f in fills] == [
        dt.time(9, 30), dt.time(10, 50), dt.time(13, 40), dt.time(15, 0)]
    assert [f.commission for f in fills] == [5.0] * 4
    notional = 200 * 3.975987 + 200 * 3.985992 + 300 * 3.995997 + 300 * 4.006002
    assert twap.cash(acct) == pytest.approx(100_000 - notional - 20.0, abs=1e-9)
    done = twap.order(parent.client_order_id)
    assert done is not None
    assert (done.status, done.filled_quantity) == (OrderStatus.FILLED, 1_000)
    assert done.average_price == pytest.approx(notional / 1_000)
    # Without this process's plan (a restart), the paper book still knows the children.
    fresh = TwapVenue(broker, slices=4)
    assert fresh.order(parent.client_order_id) == done
    assert fresh.children(parent.client_order_id) == ids


def test_twap_closing_sell_puts_the_odd_remainder_last(broker: PaperBroker,
                                                       database: str) -> None:
    twap = TwapVenue(broker, slices=3)
    acct = account(twap, 100_000.0)
    twap.submit(req(acct, "510300", Side.BUY, 1_000, D1))
    twap.fills(acct, D1)
    _set_position(database, acct, "510300", 1_050)
    parent = req(acct, "510300", Side.SELL, 1_050)
    assert twap.submit(parent).status is OrderStatus.SUBMITTED
    fills = [f for f in twap.fills(acct, D2) if f.session == D2]
    assert [f.quantity for f in fills] == [300, 300, 450]
    # open 3.974, mid 3.989, close 4.004, each × (1 − 5 bp).
    assert [f.price for f in fills] == pytest.approx([3.972013, 3.9870055, 4.001998])
    assert twap.positions(acct) == {}
    assert twap.order(parent.client_order_id).status is OrderStatus.FILLED  # type: ignore


def test_twap_cash_short_and_cancel(broker: PaperBroker) -> None:
    twap = TwapVenue(broker, slices=3)
    acct = account(twap, 10_000.0)
    parent = req(acct, "510300", Side.BUY, 5_000)          # children 1,600 / 1,700 / 1,700
    twap.submit(parent)
    fills = twap.fills(acct, D2)
    # Child 1 at 3.975987: 1,600 units = 6,361.5792 + 5; child 2 at 3.9909945 (3.989 × 1.0005)
    # with 3,633.4208 left: 9 lots = 3,591.89505 + 5; child 3: nothing affordable.
    assert [f.quantity for f in fills] == [1_600, 900]
    state = twap.order(parent.client_order_id)
    assert state is not None
    assert (state.status, state.filled_quantity, state.reason) == (
        OrderStatus.EXPIRED, 2_500, "cash_short")
    other = req(acct, "510500", Side.BUY, 300)
    twap.submit(other)
    cancelled = twap.cancel(other.client_order_id)
    assert cancelled.status is OrderStatus.CANCELLED
    assert [twap.inner.order(c).status for c in twap.children(other.client_order_id)] == [
        OrderStatus.CANCELLED] * 3
    assert twap.cancel(parent.client_order_id) == state      # final: no-op


def test_twap_aggregate_states() -> None:
    from trading.models import VenueOrder

    def child(status: OrderStatus, filled: int = 0, qty: int = 100) -> VenueOrder:
        return VenueOrder("c", "v", status, qty, filled, 4.0 if filled else None)

    S, F, E, C, R = (OrderStatus.SUBMITTED, OrderStatus.FILLED, OrderStatus.EXPIRED,
                     OrderStatus.CANCELLED, OrderStatus.REJECTED)
    assert aggregate("p", [child(S), child(S)]).status is S
    assert aggregate("p", [child(F, 100), child(S)]).status is OrderStatus.PARTIALLY_FILLED
    assert aggregate("p", [child(F, 100), child(F, 100)]).status is F
    assert aggregate("p", [child(F, 100), child(E)]).status is E
    assert aggregate("p", [child(F, 100), child(C)]).status is C
    assert aggregate("p", [child(R), child(R)]).status is R
    assert aggregate("p", [child(R), child(E)]).status is E
    assert aggregate("p", [child(F, 100), None], [100, 100]).status is \
        OrderStatus.PARTIALLY_FILLED


# -- concurrency ----------------------------------------------------------------------------
def _race_fills(database: str, quotes: FrameQuotes, account_id: str, until: dt.date,
                threads: int = 4) -> list[list[str]]:
    """``threads`` brokers (own connection pools) call ``fills`` at the same instant; returns
    the fill ids each one saw."""
    venues = [PaperBroker(database, quotes, COSTS) for _ in range(threads)]
    barrier = threading.Barrier(threads)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run(venue: PaperBroker) -> None:
        try:
            barrier.wait()
            results.append(sorted(f.fill_id for f in venue.fills(account_id, until)))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(v,)) for v in venues]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for v in venues:
        v.close()
    assert not errors, errors
    return results


def test_concurrent_fills_produce_one_fill_per_order(broker: PaperBroker, database: str,
                                                     quotes: FrameQuotes) -> None:
    for _ in range(5):
        acct = account(broker, 1_000_000.0)
        orders = [req(acct, s, Side.BUY, 1_000, D1) for s in ("510300", "510500", "518880")]
        orders += [req(acct, "510300", Side.SELL, 1_000, D2),
                   req(acct, "512880", Side.BUY, 2_000, D2)]
        for o in orders:
            broker.submit(o)
        results = _race_fills(database, quotes, acct, D2)
        expected = sorted(f"paper-{o.client_order_id}-1" for o in orders)
        assert results == [expected] * 4
        fills = broker.fills(acct, D2)
        assert len(fills) == len(orders)
        cash = 1_000_000.0
        for f in fills:
            cash += (-1 if f.side is Side.BUY else 1) * f.quantity * f.price - f.commission
        assert broker.cash(acct) == pytest.approx(cash, abs=1e-6)
        assert broker.positions(acct) == {"510500": 1_000, "518880": 1_000, "512880": 2_000}


def test_concurrent_submit_of_one_id_creates_one_order(broker: PaperBroker, database: str,
                                                       quotes: FrameQuotes) -> None:
    acct = account(broker, 100_000.0)
    order = req(acct, "510300", Side.BUY, 100)
    venues = [PaperBroker(database, quotes, COSTS) for _ in range(4)]
    barrier = threading.Barrier(len(venues))
    states = []

    def run(venue: PaperBroker) -> None:
        barrier.wait()
        states.append(venue.submit(order))

    threads = [threading.Thread(target=run, args=(v,)) for v in venues]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for v in venues:
        v.close()
    assert len(states) == 4 and all(s == states[0] for s in states)
    assert len(broker.fills(acct, D2)) == 1


# -- quotes ---------------------------------------------------------------------------------
def test_frame_quotes(bars: pd.DataFrame, limits: dict[str, float | None]) -> None:
    raw = bars.loc[bars["symbol"] == "513100", ["date", "symbol", "open", "high", "low",
                                               "close", "volume"]]
    quotes = FrameQuotes(raw, {"513100": None})
    q = quotes.quote("513100", dt.date(2022, 1, 12))
    assert q is not None and q.price_limit is None
    assert quotes.quote("513100", dt.date(2022, 1, 13)) is None
    # The bar after the gap refers to the previous *bar* (2022-01-12 close 5.192).
    after = quotes.quote("513100", dt.date(2022, 1, 14))
    assert after is not None and after.previous_close == 5.192
    # With the split factor the reference is ex-adjusted (the exchange's reference price).
    adjusted = FrameQuotes(bars.loc[bars["symbol"] == "513100"], limits)
    ref = adjusted.quote("513100", dt.date(2022, 1, 14))
    assert ref is not None and ref.previous_close == pytest.approx(5.192 / 5, rel=0.01)
    assert FrameQuotes(raw, as_of=dt.date(2022, 1, 12)).latest_session() == dt.date(2022, 1, 12)
    assert FrameQuotes(raw).quote("513100", dt.date(2022, 1, 12)).price_limit == 0.10  # type: ignore
    with pytest.raises(ValueError, match="duplicate"):
        FrameQuotes(pd.concat([raw, raw.head(1)]))


# -- migration ------------------------------------------------------------------------------
def test_migration_downgrade_and_upgrade() -> None:
    with temporary_database(prefix="etf_paper_mig") as url:
        cfg = Config()
        cfg.set_main_option("script_location", str(ROOT / "trading" / "migrations"))
        cfg.set_main_option("sqlalchemy.url", url)
        engine = sa.create_engine(url)
        try:
            paper = {"paper_accounts", "paper_positions", "paper_orders", "paper_fills"}
            assert paper <= set(sa.inspect(engine).get_table_names())
            command.downgrade(cfg, "0001_ledger")
            assert not paper & set(sa.inspect(engine).get_table_names())
            command.upgrade(cfg, "0002_paper_broker")
            assert paper <= set(sa.inspect(engine).get_table_names())
        finally:
            engine.dispose()


def _set_position(url: str, account_id: str, symbol: str, quantity: int) -> None:
    """Set a holding in the paper book directly (a share conversion leaving an odd lot)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO paper_positions (account_id, symbol, quantity) VALUES (:a, :s, :q) "
                "ON CONFLICT (account_id, symbol) DO UPDATE SET quantity = EXCLUDED.quantity"),
                {"a": account_id, "s": symbol, "q": quantity})
    finally:
        engine.dispose()

"""VWAP slicing beside TWAP, and cancel/replace at the end of a slice (issue 18 item 4).

* The volume profile: the configured curve (validated), learned from 1-minute bars in the real
  Redis stream the quote relay writes (``<ns>:quotes:bars``), too few bars named.
* The VWAP split: sums, whole lots, proportional to the profile, deterministic; equal weights
  give TWAP's split.
* The executor on a real ledger with the paper broker on real bars: VWAP children recorded
  write-ahead with their plan, priced at their scheduled times, the parent filled.
* Cancel/replace (trading.slice_end) on the paper broker (the last slice's remainder is not
  carried; a cancel that lost the race to a fill replaces nothing) and on the real vn.py venue
  process (a chain of replacements over three slices, our process crashing after the cancel
  and after the replacement was recorded: every order reaches the venue once, the ledger is
  the venue's, total filled = the parent's quantity); a child partly filled at its slice end
  (the test venue's participation cap) is cancelled with its fill recorded and replaced by its
  remainder only.
* The TWAP venue's own parent view (trading.twap.TwapVenue) after cancel/replace: the parent's
  quantity once, its filled quantity the children's and replacements'.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import redis
from test_venue_contract import CASH, COSTS, PREVIOUS, SESSION, RealMarket
from test_venue_contract import market as market
from test_vnpy_venue import (
    ReplayMarket,
    VenueProcess,
    VenueProcesses,
    _orders_with,
)
from test_vnpy_venue import processes as processes
from test_vnpy_venue import replay_market as replay_market

from resources.execution import learn_profile
from rotation.risk import RiskLimits
from trading.executor import MarketView, execute_signal, order_request, reconcile
from trading.ledger import Ledger, OrderRecord, SignalRecord
from trading.live_prices import bar_fields, bars_key
from trading.models import (
    OrderRequest,
    OrderStatus,
    Side,
    SignalStatus,
    VenueOrder,
    signal_id_of,
    weights_hash,
)
from trading.paper import SHANGHAI, FrameQuotes, PaperBroker, child_schedule
from trading.session_clock import clock_at, minutes_at, slice_end
from trading.slice_end import (
    REASON_LAST_SLICE,
    REASON_SESSION_OVER,
    SliceNotEnded,
    close_slice,
    replacement_id,
    slices_due,
)
from trading.twap import TwapVenue, child_orders, slice_sizes, split_quantity
from trading.vnpy_venue import VnpyVenue
from trading.volume_profile import (
    DEFAULT_CURVE,
    SESSION_MINUTES,
    ProfileError,
    profile_from_curve,
)

REDIS_URL = os.environ.get("ETF_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")
LIMITS = RiskLimits(max_weight=1.0, max_order_notional=2_000_000.0,
                    max_daily_notional=5_000_000.0)


# -- the profile -------------------------------------------------------------------------------
def test_the_default_curve_is_a_u_shape_over_the_session() -> None:
    profile = profile_from_curve()
    assert len(profile.minutes) == SESSION_MINUTES
    assert sum(profile.minutes) == pytest.approx(1.0)
    halves = profile.as_dict()["half_hours"]
    assert halves == pytest.approx(list(DEFAULT_CURVE))
    assert halves[0] > halves[3] < halves[7] and halves[7] > halves[4]
    # 3 slices at 09:30, 11:30/13:00, 15:00: the first and last cover a quarter day each.
    w = profile.slice_weights(3)
    assert sum(w) == pytest.approx(1.0)
    assert w == pytest.approx([0.18 + 0.13, 0.11 + 0.10 + 0.10 + 0.10, 0.12 + 0.16])
    assert [slice_end(SESSION, k, 3).time() for k in (1, 2, 3)] == \
        [dt.time(10, 30), dt.time(14, 0), dt.time(15, 0)]
    assert profile.slice_weights(1) == [pytest.approx(1.0)]


def test_minutes_at_inverts_the_session_clock() -> None:
    """The test venue replays a session up to a time of day by its minutes of trading."""
    for minutes in (0.0, 1.0, 60.0, 119.5, 120.0, 121.0, 180.0, 240.0):
        assert minutes_at(clock_at(minutes)) == pytest.approx(minutes, abs=1 / 60)
    assert [minutes_at(dt.time(*t)) for t in ((8, 0), (12, 15), (13, 0), (16, 0))] == \
        [0.0, 120.0, 120.0, 240.0]


@pytest.mark.parametrize(("curve", "message"), [
    ([], "no weights"),
    ([0.2, -0.1, 0.3], "weight 1 is -0.1"),
    ([0.0, 0.0], "sum to 0"),
    ([1.0, float("nan")], "weight 1 is nan"),
    ([1.0] * 241, "at most 240"),
])
def test_bad_curves_are_named(curve: list[float], message: str) -> None:
    with pytest.raises(ProfileError, match=message) as info:
        profile_from_curve(curve)
    assert "execution.vwap.curve" in str(info.value)


@pytest.fixture
def bar_stream() -> Iterator[tuple[Any, str]]:
    client = redis.Redis.from_url(REDIS_URL)
    namespace = f"vwap-test-{uuid.uuid4().hex[:8]}"
    yield client, namespace
    client.delete(bars_key(namespace))
    client.close()


def _write_session(client: Any, namespace: str, symbol: str, day: dt.date,
                   volume_of: Any) -> None:
    """One session of 1-minute bars as the relay writes them (trading.live_prices.bar_fields),
    the 11:30 and 15:00 closing minutes included."""
    minutes = [dt.datetime.combine(day, dt.time(9, 30), SHANGHAI) + dt.timedelta(minutes=i)
               for i in range(121)]
    minutes += [dt.datetime.combine(day, dt.time(13, 0), SHANGHAI) + dt.timedelta(minutes=i)
                for i in range(121)]
    pipe = client.pipeline()
    for i, minute in enumerate(minutes):
        pipe.xadd(bars_key(namespace), bar_fields(symbol, "SSE", minute, 4.0, 4.0, 4.0, 4.0,
                                                  volume_of(i)))
    pipe.execute()


def test_a_profile_is_learned_from_the_relays_minute_bars(bar_stream: tuple[Any, str]) -> None:
    client, namespace = bar_stream
    days = [dt.date(2025, 6, d) for d in (9, 10, 11, 12)]
    # Two shapes: every minute alike, and one of three times the volume in the first hour.
    for day in days:
        _write_session(client, namespace, "510300", day, lambda i: 1000.0)
        _write_session(client, namespace, "510500", day,
                       lambda i: 3000.0 if i < 60 else 1000.0)
    with pytest.raises(ProfileError) as info:
        learn_profile(client, namespace, min_sessions=5)
    assert bars_key(namespace) in str(info.value) and "4 usable session(s)" in str(info.value)
    profile = learn_profile(client, namespace, sessions=3, min_sessions=3)
    assert f"Redis stream {bars_key(namespace)}: 3 session(s), 6 fund-session(s)" \
        in profile.source
    # 242 bars a session (09:30..11:30, 13:00..15:00); the closing minutes (11:30, 15:00)
    # fold into the minute before.
    flat = 1000 / (242 * 1000)
    steep_total = 60 * 3000 + 182 * 1000
    assert profile.minutes[0] == pytest.approx((flat + 3000 / steep_total) / 2)
    assert profile.minutes[100] == pytest.approx((flat + 1000 / steep_total) / 2)
    assert profile.minutes[119] == pytest.approx((2 * flat + 2000 / steep_total) / 2)
    assert sum(profile.minutes) == pytest.approx(1.0)
    only_flat = learn_profile(client, namespace, min_sessions=1, symbols=["510300"])
    assert only_flat.minutes[5] == pytest.approx(flat)
    client.xadd(bars_key(namespace), {"symbol": "510300", "minute": "not a time"})
    with pytest.raises(ProfileError, match=r"entry .* is not a 1-minute bar"):
        learn_profile(client, namespace, min_sessions=1)


def test_too_few_bars_name_the_stream_and_the_count(bar_stream: tuple[Any, str]) -> None:
    client, namespace = bar_stream
    with pytest.raises(ProfileError) as info:
        learn_profile(client, namespace)
    assert str(info.value).startswith(f"Redis stream {bars_key(namespace)}: 0 usable")
    assert "among 0 bar(s)" in str(info.value) and "at least 5 needed" in str(info.value)


# -- the split ---------------------------------------------------------------------------------
@pytest.mark.parametrize("quantity", [100, 700, 1_000, 12_300, 98_700, 1_050])
@pytest.mark.parametrize("slices", [2, 3, 5, 8])
def test_vwap_sizes_sum_in_lots_proportional_and_deterministic(quantity: int,
                                                               slices: int) -> None:
    weights = profile_from_curve().slice_weights(slices)
    sized = slice_sizes(quantity, slices, 100, weights)
    assert sum(size for _, size in sized) == quantity
    assert all(size % 100 == 0 for _, size in sized[:-1]) and sized[-1][1] % 100 == quantity % 100
    lots = quantity // 100
    for k, size in sized:
        # Largest remainder: within one lot of the exact share (the odd units aside).
        assert abs(size // 100 - lots * weights[k - 1]) < 1.0
    assert [k for k, _ in sized] == sorted({k for k, _ in sized})
    assert slice_sizes(quantity, slices, 100, weights) == sized
    parent = OrderRequest(client_order_id="o-parent", account_id="a", symbol="510300",
                          side=Side.SELL, quantity=quantity, session=SESSION,
                          reference_price=4.0)
    kids = child_orders(parent, slices, 100, weights)
    assert kids == child_orders(parent, slices, 100, weights)
    assert [(c.slice_index, c.quantity, c.slices) for c in kids] == \
        [(k, s, slices) for k, s in sized]


def test_equal_weights_are_twap() -> None:
    for quantity in range(100, 5_000, 137):
        for slices in range(1, 9):
            if quantity // 100 >= slices:
                assert [s for _, s in slice_sizes(quantity, slices, 100, [1.0] * slices)] == \
                    split_quantity(quantity, slices, 100)


# -- the executor, the ledger and the paper broker ---------------------------------------------
def _signal(ledger: Ledger, account: str, weights: dict[str, float]) -> str:
    """An approved signal of ``account`` for the evening before the session."""
    record = SignalRecord(signal_id=signal_id_of("alpha", account, PREVIOUS, weights),
                          account_id=account, strategy="alpha", as_of=PREVIOUS, weights=weights,
                          weights_hash=weights_hash(weights), status=SignalStatus.APPROVED,
                          reasons=[], data_version=None, dagster_run_id=None)
    return ledger.record_signal(record, actor="gate").signal_id


def _view(quotes: FrameQuotes, weights: dict[str, float]) -> MarketView:
    found = {s: quotes.quote(s, PREVIOUS) for s in weights}
    return MarketView(signal_day=PREVIOUS, order_session=SESSION, closed_through=PREVIOUS,
                      quotes={s: q for s, q in found.items() if q is not None},
                      average_amount={s: 5e9 for s in weights})


def _before(market: RealMarket) -> FrameQuotes:
    """The market as known the evening before the order session: the venue cannot match it."""
    bars = market.bars.loc[market.bars["date"] <= pd.Timestamp(PREVIOUS)]
    return FrameQuotes(bars.reset_index(drop=True), {s: 0.10 for s in bars["symbol"].unique()})


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    book = Ledger(ledger_url)
    book.migrate()
    yield book
    book.dispose()


def _executed(ledger: Ledger, ledger_url: str, market: RealMarket, weights: dict[str, float],
              slices: int) -> tuple[str, str, list[OrderRecord]]:
    """A VWAP execution on the paper broker whose market ends the evening before: the children
    are sent and rest unfilled. Returns the account, the signal and its orders."""
    account = f"vwap-{uuid.uuid4().hex[:8]}"
    ledger.open_account(account, CASH, actor="test")
    sid = _signal(ledger, account, weights)
    broker = PaperBroker(ledger_url, _before(market), COSTS)
    try:
        report = execute_signal(ledger=ledger, venue=broker, signal_id=sid, account_id=account,
                                market=_view(market.quotes, weights), limits=LIMITS,
                                costs=COSTS, actor="test", twap_slices=slices,
                                profile=profile_from_curve)
    finally:
        broker.close()
    assert report.status == "completed", report.summary()
    return account, sid, ledger.orders(signal_id=sid)


def _book_matches(ledger: Ledger, venue: Any, account: str, orders: list[OrderRecord]) -> None:
    for o in orders:
        if o.parent_order_id is None and o.slices > 1:
            continue
        remote = venue.order(o.order_id)
        assert remote is not None, o
        assert (o.status, o.filled_quantity) == (remote.status, remote.filled_quantity), \
            (o, remote)
    assert {s: p.quantity for s, p in ledger.positions(account).items() if p.quantity} == \
        venue.positions(account)
    assert ledger.cash(account) == pytest.approx(venue.cash(account), abs=1e-6)


def test_vwap_through_the_executor_on_the_paper_broker(ledger: Ledger, ledger_url: str,
                                                       market: RealMarket) -> None:
    weights = {"510300": 0.4, "510500": 0.3}
    account, sid, orders = _executed(ledger, ledger_url, market, weights, 5)
    parents = [o for o in orders if o.parent_order_id is None]
    assert len(parents) == 2
    expected = profile_from_curve().slice_weights(5)
    for parent in parents:
        kids = [o for o in orders if o.parent_order_id == parent.order_id]
        assert [(k.slice_index, k.quantity) for k in kids] == \
            slice_sizes(parent.quantity, 5, 100, expected)
        assert all(k.status is OrderStatus.SUBMITTED for k in kids)
        plan = [r for r in ledger.audit_log(entity="order", entity_id=parent.order_id)
                if r["action"] == "order_sliced"]
        assert len(plan) == 1 and plan[0]["details"]["algorithm"] == "vwap"
        assert plan[0]["details"]["sizes"] == {str(k.slice_index): k.quantity for k in kids}
        assert plan[0]["details"]["profile"]["half_hours"] == pytest.approx(
            list(DEFAULT_CURVE))
    broker = PaperBroker(ledger_url, market.quotes, COSTS)
    try:
        # The next evening: the session is matched, each child at its scheduled time.
        execute_signal(ledger=ledger, venue=broker, signal_id=sid, account_id=account,
                       market=_view(market.quotes, weights), limits=LIMITS, costs=COSTS,
                       actor="test", twap_slices=5, profile=profile_from_curve)
        reconcile(ledger, broker, account, actor="test", until=SESSION)
        orders = ledger.orders(signal_id=sid)
        fills = {f.client_order_id: f for f in ledger.fills(account)}
        for k in (o for o in orders if o.parent_order_id is not None):
            _, clock = child_schedule(k.slice_index, k.slices)
            assert fills[k.order_id].filled_at.astimezone(SHANGHAI).time() == clock
        for parent in (o for o in orders if o.parent_order_id is None):
            assert parent.status is OrderStatus.FILLED
            assert parent.filled_quantity == parent.quantity
        _book_matches(ledger, broker, account, orders)
    finally:
        broker.close()


def test_a_slice_is_not_closed_before_its_end_nor_carried_past_the_close(
        ledger: Ledger, ledger_url: str, market: RealMarket) -> None:
    """With the driver's clock (``now``): an earlier session's open children are no slice to
    close; a slice is not closed before its end; from the session's close on nothing is carried
    or sent (a replacement recorded but not sent is cancelled unsent, a remainder dropped)."""
    account, _, orders = _executed(ledger, ledger_url, market, {"510300": 0.5}, 3)
    parent = next(o for o in orders if o.parent_order_id is None)
    c1, c2, _ = (o for o in orders if o.parent_order_id == parent.order_id)
    next_day = dt.datetime.combine(SESSION + dt.timedelta(days=1), dt.time(10), SHANGHAI)
    assert slices_due(ledger, account, next_day) == []
    end1 = slice_end(SESSION, 1, 3)
    assert slices_due(ledger, account, end1) == [(parent.order_id, 1)]
    resting = PaperBroker(ledger_url, _before(market), COSTS)
    try:
        with pytest.raises(SliceNotEnded, match="not closed before") as early_close:
            close_slice(ledger, resting, parent_order_id=parent.order_id, slice_index=1,
                        actor="slicer", now=end1 - dt.timedelta(seconds=1))
        assert early_close.value.ends == end1     # the job retries from then
        early = ledger.order(c1.order_id)
        assert early is not None and early.status is OrderStatus.SUBMITTED
        # Slice 1's close dies after recording the replacement, before sending it ...
        with pytest.raises(Crash):
            close_slice(ledger, CrashAfter(resting, "submit"),  # type: ignore[arg-type]
                        parent_order_id=parent.order_id, slice_index=1, actor="slicer",
                        now=end1)
        recorded = ledger.order(replacement_id(c1, 2))
        assert recorded is not None and recorded.status is OrderStatus.PLANNED
        # ... and runs again only after the close: nothing is sent into another session.
        after_close = slice_end(SESSION, 3, 3) + dt.timedelta(minutes=5)
        done = close_slice(ledger, resting, parent_order_id=parent.order_id, slice_index=1,
                           actor="slicer", now=after_close)
        assert done.sent == [] and done.dropped_units == recorded.quantity
        unsent = ledger.order(recorded.order_id)
        assert unsent is not None and unsent.status is OrderStatus.CANCELLED
        assert unsent.reason == REASON_SESSION_OVER
        assert resting.order(recorded.order_id) is None
        done = close_slice(ledger, resting, parent_order_id=parent.order_id, slice_index=2,
                           actor="slicer", now=after_close)
        assert done.cancelled == [c2.order_id] and done.replacements == []
        assert done.dropped_units == c2.quantity
        stored = ledger.order(c2.order_id)
        assert stored is not None and stored.reason is not None
        assert stored.reason.startswith(REASON_LAST_SLICE)
    finally:
        resting.close()


def test_paper_last_slice_remainder_is_not_carried_and_a_lost_race_replaces_nothing(
        ledger: Ledger, ledger_url: str, market: RealMarket) -> None:
    account, sid, orders = _executed(ledger, ledger_url, market, {"510300": 0.5}, 2)
    parent = next(o for o in orders if o.parent_order_id is None)
    first, last = (o for o in orders if o.parent_order_id == parent.order_id)
    at = slice_end(SESSION, 1, 2)
    assert slices_due(ledger, account, at - dt.timedelta(seconds=1)) == []
    assert slices_due(ledger, account, at) == [(parent.order_id, 1)]
    assert slices_due(ledger, account, slice_end(SESSION, 2, 2)) == [(parent.order_id, 1),
                                                                    (parent.order_id, 2)]
    resting = PaperBroker(ledger_url, _before(market), COSTS)
    try:
        done = close_slice(ledger, resting, parent_order_id=parent.order_id, slice_index=2,
                           actor="slicer")
    finally:
        resting.close()
    assert done.cancelled == [last.order_id] and done.replacements == []
    assert done.dropped_units == last.quantity
    assert slices_due(ledger, account, slice_end(SESSION, 2, 2)) == [(parent.order_id, 1)]
    stored = ledger.order(last.order_id)
    assert stored is not None and stored.status is OrderStatus.CANCELLED
    assert stored.reason is not None and stored.reason.startswith(REASON_LAST_SLICE)
    broker = PaperBroker(ledger_url, market.quotes, COSTS)
    try:
        # The session is matched at the venue before the slice-1 cancel arrives: the fill
        # won, the ledger learns it from the cancel, nothing is replaced.
        broker.fills(account, SESSION)
        done = close_slice(ledger, broker, parent_order_id=parent.order_id, slice_index=1,
                           actor="slicer")
        assert done.replacements == [] and ledger.order(
            replacement_id(first, 2)) is None
        orders = ledger.orders(signal_id=sid)
        stored_first = next(o for o in orders if o.order_id == first.order_id)
        assert stored_first.status is OrderStatus.FILLED
        stored_parent = next(o for o in orders if o.order_id == parent.order_id)
        assert stored_parent.status is OrderStatus.CANCELLED
        assert stored_parent.filled_quantity == first.quantity < parent.quantity
        _book_matches(ledger, broker, account, orders)
    finally:
        broker.close()


# -- cancel/replace on the vn.py venue process ---------------------------------------------------
class Crash(RuntimeError):
    """Our process dying at a chosen point of a slice end."""


class CrashAfter:
    """The vn.py venue, our process 'dying' right after the venue did ``what`` (cancel) or
    right before it would (submit)."""

    def __init__(self, inner: VnpyVenue, what: str) -> None:
        self.inner, self.what = inner, what

    def cancel(self, client_order_id: str) -> VenueOrder:
        state = self.inner.cancel(client_order_id)
        if self.what == "cancel":
            raise Crash(f"died after cancelling {client_order_id}")
        return state

    def submit(self, order: OrderRequest) -> VenueOrder:
        if self.what == "submit":
            raise Crash(f"died before sending {order.client_order_id}")
        return self.inner.submit(order)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _resting_on_vnpy(ledger: Ledger, processes: VenueProcesses, replay_market: ReplayMarket,
                     tag: str, slices: int, profile: Any = None,
                     participation: float | None = None
                     ) -> tuple[str, VenueProcess, VnpyVenue, str]:
    """A sliced execution of half the cash in 510300 on a vn.py test venue process of a new
    account, the evening before the session (the venue's market stops at PREVIOUS: the
    children rest there). Returns the account, the process, the resting venue and the
    signal."""
    account = f"{tag}-{uuid.uuid4().hex[:8]}"
    ledger.open_account(account, CASH, actor="test")
    proc = processes.start(account, CASH, participation=participation)
    resting = VnpyVenue([proc.endpoint], COSTS, rpc_timeout=5.0, ack_timeout=5.0,
                        replay_clock=True, replay_through=PREVIOUS)
    weights = {"510300": 0.5}
    sid = _signal(ledger, account, weights)
    report = execute_signal(ledger=ledger, venue=resting, signal_id=sid, account_id=account,
                            market=_view(replay_market.real.quotes, weights), limits=LIMITS,
                            costs=COSTS, actor="test", twap_slices=slices, profile=profile)
    assert report.status == "completed", report.summary()
    return account, proc, resting, sid


def test_cancel_replace_on_the_vnpy_venue_with_crashes_mid_replace(
        processes: VenueProcesses, replay_market: ReplayMarket,
        ledger: Ledger) -> None:
    account, proc, resting, sid = _resting_on_vnpy(ledger, processes, replay_market, "cr", 3,
                                                   profile_from_curve())
    try:
        orders = ledger.orders(signal_id=sid)
        parent = next(o for o in orders if o.parent_order_id is None)
        c1, c2, c3 = (o for o in orders if o.parent_order_id == parent.order_id)
        assert [c.status for c in (c1, c2, c3)] == [OrderStatus.SUBMITTED] * 3

        # Slice 1 ends unfilled: child 1 is cancelled, its whole quantity goes to slice 2.
        end1 = close_slice(ledger, resting, parent_order_id=parent.order_id, slice_index=1,
                           actor="slicer")
        r1 = ledger.order(replacement_id(c1, 2))
        assert end1.cancelled == [c1.order_id] and end1.sent == [replacement_id(c1, 2)]
        assert r1 is not None and (r1.replaces, r1.slice_index, r1.quantity, r1.status) == \
            (c1.order_id, 2, c1.quantity, OrderStatus.SUBMITTED)

        # Slice 2 ends unfilled; our process dies right after the venue cancelled child 2 ...
        with pytest.raises(Crash):
            close_slice(ledger, CrashAfter(resting, "cancel"), parent_order_id=parent.order_id,
                        slice_index=2, actor="slicer")
        assert ledger.order(replacement_id(c2, 3)) is None
        # ... and again after recording child 2's replacement, before sending it.
        with pytest.raises(Crash):
            close_slice(ledger, CrashAfter(resting, "submit"), parent_order_id=parent.order_id,
                        slice_index=2, actor="slicer")
        r2 = ledger.order(replacement_id(c2, 3))
        assert r2 is not None and (r2.status, r2.quantity) == (OrderStatus.PLANNED,
                                                               c2.quantity)
        assert resting.order(r2.order_id) is None
        # The restarted slicer finishes the replace: each replacement sent once.
        end2 = close_slice(ledger, resting, parent_order_id=parent.order_id, slice_index=2,
                           actor="slicer")
        assert sorted(end2.sent) == sorted([r2.order_id, replacement_id(r1, 3)])
        assert end2.cancelled == [r1.order_id]
        again = close_slice(ledger, resting, parent_order_id=parent.order_id, slice_index=2,
                            actor="slicer")
        assert again.sent == [] and again.cancelled == []

        # The session opens: slice 3's orders fill; the slice-3 end finds nothing to carry.
        live = VnpyVenue([proc.endpoint], COSTS, rpc_timeout=5.0, ack_timeout=5.0,
                         replay_clock=True)
        try:
            live.fills(account, SESSION)
            end3 = close_slice(ledger, live, parent_order_id=parent.order_id, slice_index=3,
                               actor="slicer")
            assert end3.replacements == [] and end3.dropped_units == 0
            orders = ledger.orders(signal_id=sid)
            _book_matches(ledger, live, account, orders)
            for o in orders:
                if o.parent_order_id is not None:
                    assert len(_orders_with(proc.state_dir, o.order_id)) == 1, o
            kids = [o for o in orders if o.parent_order_id == parent.order_id]
            filled = sum(o.filled_quantity for o in kids)
            stored_parent = next(o for o in orders if o.order_id == parent.order_id)
            assert filled == parent.quantity == stored_parent.filled_quantity
            assert stored_parent.status is OrderStatus.FILLED
            assert {o.order_id: o.status for o in kids} == {
                c1.order_id: OrderStatus.CANCELLED, c2.order_id: OrderStatus.CANCELLED,
                r1.order_id: OrderStatus.CANCELLED, c3.order_id: OrderStatus.FILLED,
                replacement_id(c2, 3): OrderStatus.FILLED,
                replacement_id(r1, 3): OrderStatus.FILLED}
            assert sum(f.quantity for f in ledger.fills(account)) == parent.quantity
        finally:
            live.close()
    finally:
        resting.close()


class SubmitFails:
    """A venue whose submit raises (the slice-end run dies after recording the replacement)."""

    def __init__(self, inner: PaperBroker) -> None:
        self.inner = inner

    def submit(self, order: OrderRequest) -> VenueOrder:
        raise Crash(f"died before sending {order.client_order_id}")

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_vwap_plan_with_empty_slices_closes_each_slice_at_its_own_end(
        ledger: Ledger, ledger_url: str, market: RealMarket) -> None:
    """Few lots over 8 VWAP slices leave slices without a child: slice ends and the last
    slice are the plan's (its children's n), not the parent's count of children; and a
    replacement recorded but never sent is listed again and sent by the next close."""
    account, _, orders = _executed(ledger, ledger_url, market, {"510300": 0.0012}, 8)
    parent = next(o for o in orders if o.parent_order_id is None)
    kids = sorted((o for o in orders if o.parent_order_id == parent.order_id),
                  key=lambda o: o.slice_index)
    indices = [k.slice_index for k in kids]
    assert {k.slices for k in kids} == {8} and parent.slices == len(kids) < 8
    assert any(b - a > 1 for a, b in itertools.pairwise(indices)), indices
    first = kids[0]
    at = slice_end(SESSION, first.slice_index, 8)
    assert slices_due(ledger, account, at - dt.timedelta(seconds=1)) == []
    assert slices_due(ledger, account, at) == [(parent.order_id, first.slice_index)]
    resting = PaperBroker(ledger_url, _before(market), COSTS)
    try:
        with pytest.raises(Crash):
            close_slice(ledger, SubmitFails(resting), parent_order_id=parent.order_id,
                        slice_index=first.slice_index, actor="slicer")
        carried = ledger.order(replacement_id(first, first.slice_index + 1))
        assert carried is not None and carried.status is OrderStatus.PLANNED
        assert carried.quantity == first.quantity and carried.slices == 8
        # The original is final now; the planned replacement keeps the slice due.
        assert slices_due(ledger, account, at) == [(parent.order_id, first.slice_index)]
        done = close_slice(ledger, resting, parent_order_id=parent.order_id,
                           slice_index=first.slice_index, actor="slicer")
        assert done.sent == [carried.order_id] and done.dropped_units == 0
        sent = ledger.order(carried.order_id)
        assert sent is not None and sent.status is OrderStatus.SUBMITTED
        assert slices_due(ledger, account, at) == []
    finally:
        resting.close()


def _view_of_parent(view: VenueOrder | None, status: OrderStatus, quantity: int,
                    filled: int) -> None:
    assert view is not None
    assert (view.status, view.quantity, view.filled_quantity) == (status, quantity, filled), \
        view


def test_the_twap_venues_parent_view_counts_a_replaced_child_once(
        ledger: Ledger, ledger_url: str, market: RealMarket) -> None:
    """On the paper broker (which reports a parent's children and replacements): slice 1 ends
    unfilled and its child is replaced; the TWAP venue's parent view has the parent's quantity
    (not the cancelled child's and its replacement's both), open; once the session is matched,
    filled, as the ledger's parent."""
    account, _, orders = _executed(ledger, ledger_url, market, {"510300": 0.5}, 2)
    parent = next(o for o in orders if o.parent_order_id is None)
    first, _last = (o for o in orders if o.parent_order_id == parent.order_id)
    resting = PaperBroker(ledger_url, _before(market), COSTS)
    try:
        done = close_slice(ledger, resting, parent_order_id=parent.order_id, slice_index=1,
                           actor="slicer")
        assert done.sent == [replacement_id(first, 2)]
        assert len(resting.children_of(parent.order_id)) == 3
        _view_of_parent(TwapVenue(resting).order(parent.order_id), OrderStatus.SUBMITTED,
                        parent.quantity, 0)
    finally:
        resting.close()
    broker = PaperBroker(ledger_url, market.quotes, COSTS)
    try:
        reconcile(ledger, broker, account, actor="test", until=SESSION)
        view = TwapVenue(broker).order(parent.order_id)
        _view_of_parent(view, OrderStatus.FILLED, parent.quantity, parent.quantity)
        stored = ledger.order(parent.order_id)
        assert view is not None and stored is not None
        assert (stored.status, stored.filled_quantity) == (view.status, view.filled_quantity)
        assert view.average_price == pytest.approx(stored.average_price)
    finally:
        broker.close()


def test_close_slice_on_a_partly_filled_child_carries_only_the_remainder(
        processes: VenueProcesses, replay_market: ReplayMarket, ledger: Ledger) -> None:
    """The vn.py test venue with a participation cap: by the end of slice 1 (11:30) child 1 is
    partly filled and open. ``close_slice`` cancels it, records its partial fill, and its
    replacement carries only the remainder; the session's close fills the rest: every order
    sent once, the ledger the venue's, total filled = the parent's quantity; the TWAP venue's
    parent view agrees with the ledger's at each step."""
    account, proc, resting, sid = _resting_on_vnpy(ledger, processes, replay_market, "crp", 2,
                                                   participation=1e-4)
    try:
        orders = ledger.orders(signal_id=sid)
        parent = next(o for o in orders if o.parent_order_id is None)
        c1, c2 = (o for o in orders if o.parent_order_id == parent.order_id)
        # The TWAP venue learns the plan from a resubmission of the parent: nothing is sent.
        twap = TwapVenue(resting)
        twap.submit(order_request(parent))
        assert all(len(_orders_with(proc.state_dir, c.order_id)) == 1 for c in (c1, c2))

        resting.replay_until(account, slice_end(SESSION, 1, 2))
        part = resting.order(c1.order_id)
        assert part is not None and part.status is OrderStatus.PARTIALLY_FILLED, part
        assert 0 < part.filled_quantity < c1.quantity

        done = close_slice(ledger, resting, parent_order_id=parent.order_id, slice_index=1,
                           actor="slicer")
        stored1 = ledger.order(c1.order_id)
        carried = ledger.order(replacement_id(c1, 2))
        assert stored1 is not None and carried is not None
        assert (stored1.status, stored1.filled_quantity) == (OrderStatus.CANCELLED,
                                                             part.filled_quantity)
        assert [f.quantity for f in ledger.fills(account) if f.client_order_id == c1.order_id] \
            == [part.filled_quantity]
        assert (carried.replaces, carried.slice_index, carried.quantity, carried.status) == (
            c1.order_id, 2, c1.quantity - part.filled_quantity, OrderStatus.SUBMITTED)
        assert done.cancelled == [c1.order_id] and done.sent == [carried.order_id]
        stored_parent = ledger.order(parent.order_id)
        assert stored_parent is not None
        view = twap.order(parent.order_id)
        _view_of_parent(view, OrderStatus.PARTIALLY_FILLED, parent.quantity,
                        stored_parent.filled_quantity)

        live = VnpyVenue([proc.endpoint], COSTS, rpc_timeout=5.0, ack_timeout=5.0,
                         replay_clock=True)
        try:
            reconcile(ledger, live, account, actor="test", until=SESSION)
            end2 = close_slice(ledger, live, parent_order_id=parent.order_id, slice_index=2,
                               actor="slicer")
            assert end2.cancelled == [] and end2.dropped_units == 0
            orders = ledger.orders(signal_id=sid)
            _book_matches(ledger, live, account, orders)
            kids = {o.order_id: o for o in orders if o.parent_order_id == parent.order_id}
            assert {k: o.status for k, o in kids.items()} == {
                c1.order_id: OrderStatus.CANCELLED, c2.order_id: OrderStatus.FILLED,
                carried.order_id: OrderStatus.FILLED}
            assert all(len(_orders_with(proc.state_dir, k)) == 1 for k in kids)
            fills = ledger.fills(account)
            assert len({f.fill_id for f in fills}) == len(fills)
            assert sum(f.quantity for f in fills) == parent.quantity
            stored_parent = ledger.order(parent.order_id)
            assert stored_parent is not None
            assert (stored_parent.status, stored_parent.filled_quantity) == (
                OrderStatus.FILLED, parent.quantity)
            _view_of_parent(twap.order(parent.order_id), OrderStatus.FILLED,
                            parent.quantity, parent.quantity)
        finally:
            live.close()
    finally:
        resting.close()

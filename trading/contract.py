"""The execution-venue contract as a pytest suite (SPEC §9, :mod:`trading.venue`).

Every venue — the paper broker, :class:`trading.twap.TwapVenue`, a live adapter (QMT, CTP) run
against its broker's simulation environment — must pass it. Use it by subclassing
:class:`VenueContract` in a test module and providing a ``venue_env`` fixture that returns a
:class:`VenueEnv`::

    class TestMyVenue(VenueContract):
        @pytest.fixture
        def venue_env(self) -> VenueEnv:
            return VenueEnv(venue=..., account_id=..., cash=..., session=..., symbols=[...],
                            lot=100, reference_price=...)

``VenueContract`` has no ``Test`` prefix, so pytest does not collect it on its own. Each test
needs a *fresh* account (funded, no positions, no orders); tests that need something a venue
cannot provide (an earlier session to build holdings, a second account, a limit-up or no-bar
case) are skipped with the reason. Fills of a sliced (TWAP) order carry the child ids: the suite
maps an order to its fills through the venue's ``children(order_id)`` when it has one.

:func:`temporary_database` gives an adapter's tests a fresh, migrated PostgreSQL database.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
import pytest

from trading.ledger import migrate
from trading.models import Fill, OrderRequest, OrderStatus, Side, VenueOrder
from trading.venue import ExecutionVenue, UnknownOrder


@contextmanager
def temporary_database(server: str = "postgres@127.0.0.1:5432", prefix: str = "etf_paper"
                       ) -> Iterator[str]:
    """Create ``<prefix>_<uuid>`` on ``server`` (user@host:port), migrate it, yield its
    SQLAlchemy URL (``postgresql+psycopg://``) and drop it ``WITH (FORCE)`` afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = f"postgresql://{server}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+psycopg://{server}/{name}"
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class MarketCase:
    """A (fund, session) where the market blocks a trade, and an earlier session on which the
    fund traded normally (to build a holding first; None if not needed/possible)."""

    symbol: str
    session: dt.date
    previous_session: dt.date | None = None


@dataclass
class VenueEnv:
    """What the contract needs from a venue under test.

    * ``account_id``: a fresh account funded with ``cash`` (no positions, no orders).
    * ``session``: a session with bars for every fund in ``symbols`` (at least 3), none of them
      at a limit at any time of that session; ``previous_session``: an earlier session with the
      same property, used to build holdings before ``session`` (None: those tests skip).
    * ``reference_price(symbol, session)``: the raw close before ``session`` (order sizing).
    * ``new_account(cash)``: opens another fresh account with that cash (None: tests needing
      a specific cash amount skip).
    * ``limit_up`` / ``limit_down`` / ``no_bar``: build a market case the venue will block
      (a fund opening at limit-up, one at limit-down, a fund without a bar); None: skip.
    """

    venue: ExecutionVenue
    account_id: str
    cash: float
    session: dt.date
    symbols: Sequence[str]
    lot: int
    reference_price: Callable[[str, dt.date], float]
    previous_session: dt.date | None = None
    new_account: Callable[[float], str] | None = None
    limit_up: Callable[[], MarketCase] | None = None
    limit_down: Callable[[], MarketCase] | None = None
    no_bar: Callable[[], MarketCase] | None = None
    # Absolute tolerance of the cash check (a venue that rounds money to cents: 0.01).
    cash_tolerance: float = 1e-6


def _new_id(tag: str) -> str:
    return f"contract-{tag}-{uuid.uuid4().hex[:16]}"


class VenueContract:
    """The venue contract; subclass it and provide the ``venue_env`` fixture."""

    @pytest.fixture
    def venue_env(self) -> VenueEnv:   # pragma: no cover - provided by the subclass
        raise NotImplementedError("a VenueContract subclass must provide the venue_env fixture")

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def request(env: VenueEnv, symbol: str, side: Side, quantity: int,
                session: dt.date | None = None, account_id: str | None = None,
                tag: str = "o") -> OrderRequest:
        session = session or env.session
        return OrderRequest(client_order_id=_new_id(tag),
                            account_id=account_id or env.account_id, symbol=symbol, side=side,
                            quantity=quantity, session=session,
                            reference_price=env.reference_price(symbol, session))

    @staticmethod
    def lots_worth(env: VenueEnv, symbol: str, value: float, session: dt.date | None = None
                   ) -> int:
        """Whole lots of ``symbol`` worth about ``value`` at the reference price (≥ 1 lot)."""
        price = env.reference_price(symbol, session or env.session)
        return max(int(value // (price * env.lot)), 1) * env.lot

    @staticmethod
    def execution_ids(env: VenueEnv, client_order_id: str) -> set[str]:
        """Ids the venue's fills of an order carry (a sliced order's fills carry its children's
        ids)."""
        children = getattr(env.venue, "children", None)
        ids = list(children(client_order_id)) if callable(children) else []
        return set(ids) or {client_order_id}

    def fills_of(self, env: VenueEnv, client_order_id: str, fills: Sequence[Fill]
                 ) -> list[Fill]:
        ids = self.execution_ids(env, client_order_id)
        return [f for f in fills if f.client_order_id in ids]

    @staticmethod
    def need_previous(env: VenueEnv) -> dt.date:
        if env.previous_session is None:
            pytest.skip("the venue cannot build holdings on an earlier session")
        return env.previous_session

    @staticmethod
    def need_account(env: VenueEnv, cash: float) -> str:
        if env.new_account is None:
            pytest.skip("the venue cannot open a fresh account with a chosen cash amount")
        return env.new_account(cash)

    def hold(self, env: VenueEnv, account_id: str, symbol: str, quantity: int,
             session: dt.date) -> int:
        """Buy ``quantity`` on ``session`` and settle it; returns the units held."""
        self.assert_fill_state(env, env.venue.submit(
            self.request(env, symbol, Side.BUY, quantity, session, account_id, "hold")))
        env.venue.fills(account_id, session)
        held = env.venue.positions(account_id).get(symbol, 0)
        assert held == quantity, f"could not build a holding of {quantity} {symbol}: {held}"
        return held

    @staticmethod
    def assert_fill_state(env: VenueEnv, state: VenueOrder) -> None:
        assert 0 <= state.filled_quantity <= state.quantity, state
        if state.filled_quantity:
            assert state.average_price is not None and state.average_price > 0, state

    def assert_consistent(self, env: VenueEnv, cid: str, fills: Sequence[Fill]) -> VenueOrder:
        """An order's fills: unique ids, positive sizes, summing to ``filled_quantity`` ≤
        ``quantity``; returns the order."""
        state = env.venue.order(cid)
        assert state is not None, f"order {cid} unknown to the venue"
        self.assert_fill_state(env, state)
        own = self.fills_of(env, cid, fills)
        assert len({f.fill_id for f in own}) == len(own), f"duplicate fill ids for {cid}: {own}"
        assert all(f.quantity > 0 and f.price > 0 and f.commission >= 0 for f in own), own
        assert sum(f.quantity for f in own) == state.filled_quantity, (state, own)
        return state

    # -- idempotency, validation, unknown ids -----------------------------------------------
    def test_submit_is_idempotent(self, venue_env: VenueEnv) -> None:
        env = venue_env
        req = self.request(env, env.symbols[0], Side.BUY, env.lot)
        first = env.venue.submit(req)
        second = env.venue.submit(req)
        assert first == second
        assert first.client_order_id == req.client_order_id
        assert first.quantity == env.lot
        fills = env.venue.fills(env.account_id, env.session)
        state = self.assert_consistent(env, req.client_order_id, fills)
        assert state.filled_quantity <= env.lot
        # Resubmitting after execution changes nothing either.
        assert env.venue.submit(req) == env.venue.order(req.client_order_id)
        again = env.venue.fills(env.account_id, env.session)
        assert self.fills_of(env, req.client_order_id, again) == \
            self.fills_of(env, req.client_order_id, fills)
        assert env.venue.positions(env.account_id).get(env.symbols[0], 0) == \
            state.filled_quantity

    def test_never_overfills(self, venue_env: VenueEnv) -> None:
        env = venue_env
        budget = env.cash / (2 * len(env.symbols))
        requests = [self.request(env, s, Side.BUY, self.lots_worth(env, s, budget))
                    for s in env.symbols]
        for req in requests:
            for _ in range(3):
                env.venue.submit(req)
        for _ in range(2):
            fills = env.venue.fills(env.account_id, env.session)
        positions = env.venue.positions(env.account_id)
        for req in requests:
            state = self.assert_consistent(env, req.client_order_id, fills)
            assert state.filled_quantity <= req.quantity
            assert positions.get(req.symbol, 0) == state.filled_quantity

    def test_whole_lot_validation(self, venue_env: VenueEnv) -> None:
        env = venue_env
        symbol = env.symbols[0]
        for quantity in (env.lot + 1, env.lot // 2 or 1, 0, -env.lot):
            if quantity % env.lot == 0 and quantity > 0:
                continue
            req = self.request(env, symbol, Side.BUY, quantity, tag="odd")
            state = env.venue.submit(req)
            assert state.status is OrderStatus.REJECTED, (quantity, state)
            assert state.filled_quantity == 0 and state.reason, state
            assert env.venue.submit(req) == state          # a rejection is idempotent too
            assert env.venue.order(req.client_order_id) == state
        fills = env.venue.fills(env.account_id, env.session)
        assert fills == [] or all(f.symbol != symbol for f in fills)
        assert env.venue.positions(env.account_id) == {}

    def test_odd_lot_sell_must_close_position(self, venue_env: VenueEnv) -> None:
        env = venue_env
        previous = self.need_previous(env)
        symbol = env.symbols[0]
        held = self.hold(env, env.account_id, symbol, 3 * env.lot, previous)
        odd = self.request(env, symbol, Side.SELL, env.lot + max(env.lot // 2, 1),
                           tag="oddsell")
        state = env.venue.submit(odd)
        assert state.status is OrderStatus.REJECTED and state.filled_quantity == 0, state
        close = self.request(env, symbol, Side.SELL, held, tag="close")
        assert env.venue.submit(close).status is not OrderStatus.REJECTED
        fills = env.venue.fills(env.account_id, env.session)
        assert self.fills_of(env, odd.client_order_id, fills) == []
        closed = self.assert_consistent(env, close.client_order_id, fills)
        assert closed.status is OrderStatus.FILLED and closed.filled_quantity == held
        assert env.venue.positions(env.account_id).get(symbol, 0) == 0

    def test_unknown_order(self, venue_env: VenueEnv) -> None:
        env = venue_env
        missing = _new_id("missing")
        assert env.venue.order(missing) is None
        with pytest.raises(UnknownOrder) as info:
            env.venue.cancel(missing)
        assert missing in str(info.value)

    # -- cancel -----------------------------------------------------------------------------
    def test_cancel_open_order(self, venue_env: VenueEnv) -> None:
        env = venue_env
        req = self.request(env, env.symbols[1], Side.BUY, env.lot)
        submitted = env.venue.submit(req)
        assert submitted.status is OrderStatus.SUBMITTED, submitted
        cancelled = env.venue.cancel(req.client_order_id)
        assert cancelled.status is OrderStatus.CANCELLED and cancelled.filled_quantity == 0
        assert env.venue.cancel(req.client_order_id) == cancelled     # no-op the second time
        assert env.venue.submit(req) == cancelled                     # and no resurrection
        fills = env.venue.fills(env.account_id, env.session)
        assert self.fills_of(env, req.client_order_id, fills) == []
        assert env.venue.order(req.client_order_id) == cancelled
        assert env.venue.positions(env.account_id).get(env.symbols[1], 0) == 0
        assert env.venue.cash(env.account_id) == pytest.approx(env.cash,
                                                               abs=env.cash_tolerance)

    def test_cancel_final_order_is_noop(self, venue_env: VenueEnv) -> None:
        env = venue_env
        req = self.request(env, env.symbols[0], Side.BUY, env.lot)
        env.venue.submit(req)
        fills = env.venue.fills(env.account_id, env.session)
        done = self.assert_consistent(env, req.client_order_id, fills)
        assert done.status is OrderStatus.FILLED, done
        assert env.venue.cancel(req.client_order_id) == done
        assert env.venue.order(req.client_order_id) == done
        rejected = env.venue.submit(self.request(env, env.symbols[0], Side.BUY, env.lot + 1))
        assert rejected.status is OrderStatus.REJECTED
        assert env.venue.cancel(rejected.client_order_id) == rejected
        assert env.venue.fills(env.account_id, env.session) == fills

    # -- fills ------------------------------------------------------------------------------
    def test_fills_stable_across_reads(self, venue_env: VenueEnv) -> None:
        env = venue_env
        for s in env.symbols[:2]:
            env.venue.submit(self.request(env, s, Side.BUY, 2 * env.lot))
        first = env.venue.fills(env.account_id, env.session)
        assert first, "two fundable buys on a normal session produced no fill"
        second = env.venue.fills(env.account_id, env.session)
        third = env.venue.fills(env.account_id)
        by_id = {f.fill_id: f for f in first}
        assert len(by_id) == len(first)
        for later in (second, third):
            assert {f.fill_id: f for f in later} == by_id
        for f in first:
            assert f.account_id == env.account_id
            assert f.session == env.session
            assert f.filled_at.tzinfo is not None

    def test_fills_sum_to_filled_quantity(self, venue_env: VenueEnv) -> None:
        env = venue_env
        budget = env.cash / 4
        orders = [self.request(env, s, Side.BUY, self.lots_worth(env, s, budget))
                  for s in env.symbols[:3]]
        # One more that the remaining cash cannot fully pay: a partial fill must sum up too.
        orders.append(self.request(env, env.symbols[0], Side.BUY,
                                   self.lots_worth(env, env.symbols[0], env.cash / 2)))
        for req in orders:
            env.venue.submit(req)
        fills = env.venue.fills(env.account_id, env.session)
        total = 0
        for req in orders:
            state = self.assert_consistent(env, req.client_order_id, fills)
            assert state.status.is_final, state
            total += state.filled_quantity
        assert sum(f.quantity for f in fills) == total

    # -- market rules -----------------------------------------------------------------------
    def test_sells_before_buys_fund_the_buy(self, venue_env: VenueEnv) -> None:
        env = venue_env
        previous = self.need_previous(env)
        cash0 = 200_000.0
        account = self.need_account(env, cash0)
        a, b = env.symbols[0], env.symbols[1]
        held = self.hold(env, account, a, self.lots_worth(env, a, 0.9 * cash0, previous),
                         previous)
        left = env.venue.cash(account)
        assert left < 0.15 * cash0
        # The buy is submitted first and needs the sell's proceeds: the venue matches the
        # session's sells before its buys.
        buy = self.request(env, b, Side.BUY, self.lots_worth(env, b, 0.6 * cash0),
                           account_id=account, tag="buy")
        assert buy.quantity * buy.reference_price > 2 * left
        sell = self.request(env, a, Side.SELL, held, account_id=account, tag="sell")
        env.venue.submit(buy)
        env.venue.submit(sell)
        fills = env.venue.fills(account, env.session)
        sold = self.assert_consistent(env, sell.client_order_id, fills)
        bought = self.assert_consistent(env, buy.client_order_id, fills)
        assert sold.status is OrderStatus.FILLED and sold.filled_quantity == held
        assert bought.status is OrderStatus.FILLED and bought.filled_quantity == buy.quantity
        assert env.venue.cash(account) >= -env.cash_tolerance
        assert env.venue.positions(account) == {b: buy.quantity}

    def test_t1_units_bought_in_session_are_not_sellable(self, venue_env: VenueEnv) -> None:
        env = venue_env
        symbol = env.symbols[0]
        qty = 2 * env.lot
        buy = self.request(env, symbol, Side.BUY, qty, tag="buy")
        sell = self.request(env, symbol, Side.SELL, qty, tag="sell")
        env.venue.submit(buy)
        env.venue.submit(sell)
        fills = env.venue.fills(env.account_id, env.session)
        bought = self.assert_consistent(env, buy.client_order_id, fills)
        sold = self.assert_consistent(env, sell.client_order_id, fills)
        assert bought.filled_quantity == qty
        assert sold.filled_quantity == 0 and sold.status in (OrderStatus.EXPIRED,
                                                             OrderStatus.REJECTED), sold
        assert env.venue.positions(env.account_id) == {symbol: qty}
        # A sell submitted after the buy executed, for the same session, cannot sell it either.
        late = env.venue.submit(self.request(env, symbol, Side.SELL, qty, tag="late"))
        fills = env.venue.fills(env.account_id, env.session)
        late_state = self.assert_consistent(env, late.client_order_id, fills)
        assert late_state.filled_quantity == 0, late_state
        assert env.venue.positions(env.account_id) == {symbol: qty}

    def test_t1_only_units_held_before_the_session_sell(self, venue_env: VenueEnv) -> None:
        env = venue_env
        previous = self.need_previous(env)
        symbol = env.symbols[1]
        held = self.hold(env, env.account_id, symbol, 2 * env.lot, previous)
        buy = self.request(env, symbol, Side.BUY, env.lot, tag="buy")
        sell = self.request(env, symbol, Side.SELL, held + env.lot, tag="sell")
        env.venue.submit(buy)
        sell_state = env.venue.submit(sell)
        fills = env.venue.fills(env.account_id, env.session)
        bought = self.assert_consistent(env, buy.client_order_id, fills)
        sold = self.assert_consistent(env, sell.client_order_id, fills)
        assert bought.filled_quantity == env.lot
        if sell_state.status is not OrderStatus.REJECTED:
            assert sold.filled_quantity <= held
            assert sold.status.is_final and sold.status is not OrderStatus.FILLED, sold
        assert env.venue.positions(env.account_id).get(symbol, 0) == \
            held + env.lot - sold.filled_quantity

    def _blocked(self, env: VenueEnv, case: MarketCase, side: Side) -> None:
        account = env.account_id
        if side is Side.SELL:
            if case.previous_session is None:
                pytest.skip("the case has no earlier session to build the holding on")
            self.hold(env, account, case.symbol, env.lot, case.previous_session)
        before_cash = env.venue.cash(account)
        before = env.venue.positions(account)
        req = self.request(env, case.symbol, side, env.lot, case.session, tag="blocked")
        env.venue.submit(req)
        fills = env.venue.fills(account, case.session)
        state = self.assert_consistent(env, req.client_order_id, fills)
        assert state.filled_quantity == 0, state
        assert self.fills_of(env, req.client_order_id, fills) == []
        assert state.status in (OrderStatus.EXPIRED, OrderStatus.REJECTED), state
        assert env.venue.positions(account) == before
        assert env.venue.cash(account) == pytest.approx(before_cash, abs=env.cash_tolerance)

    def test_no_bar_no_fill(self, venue_env: VenueEnv) -> None:
        if venue_env.no_bar is None:
            pytest.skip("the venue cannot simulate a fund without a bar")
        self._blocked(venue_env, venue_env.no_bar(), Side.BUY)

    def test_limit_up_buy_no_fill(self, venue_env: VenueEnv) -> None:
        if venue_env.limit_up is None:
            pytest.skip("the venue cannot simulate a limit-up open")
        self._blocked(venue_env, venue_env.limit_up(), Side.BUY)

    def test_limit_down_sell_no_fill(self, venue_env: VenueEnv) -> None:
        if venue_env.limit_down is None:
            pytest.skip("the venue cannot simulate a limit-down open")
        self._blocked(venue_env, venue_env.limit_down(), Side.SELL)

    def test_cash_short_fills_whole_lots(self, venue_env: VenueEnv) -> None:
        env = venue_env
        symbol = env.symbols[0]
        price = env.reference_price(symbol, env.session)
        want_lots = 50
        cash0 = 25.5 * env.lot * price
        account = self.need_account(env, cash0)
        req = self.request(env, symbol, Side.BUY, want_lots * env.lot, account_id=account,
                           tag="short")
        env.venue.submit(req)
        fills = env.venue.fills(account, env.session)
        state = self.assert_consistent(env, req.client_order_id, fills)
        assert state.status is not OrderStatus.FILLED, state
        assert 0 < state.filled_quantity < req.quantity, state
        assert state.filled_quantity % env.lot == 0
        assert all(f.quantity % env.lot == 0 for f in self.fills_of(env, req.client_order_id,
                                                                    fills))
        cash = env.venue.cash(account)
        assert cash >= -env.cash_tolerance
        # Nothing affordable was left on the table: not even one more lot could be paid.
        last = max(f.price for f in self.fills_of(env, req.client_order_id, fills))
        assert cash < env.lot * last + 0.01 * cash0

    def test_book_consistent_with_fills(self, venue_env: VenueEnv) -> None:
        env = venue_env
        cash0 = env.cash
        account = env.account_id
        a, b, c = env.symbols[0], env.symbols[1], env.symbols[2]
        if env.previous_session is not None:
            prev = env.previous_session
            for s in (a, b):
                env.venue.submit(self.request(env, s, Side.BUY,
                                              self.lots_worth(env, s, cash0 / 4, prev), prev))
            env.venue.fills(account, prev)
            held = env.venue.positions(account)
            env.venue.submit(self.request(env, a, Side.SELL, env.lot))
            env.venue.submit(self.request(env, b, Side.SELL, held[b]))
        env.venue.submit(self.request(env, c, Side.BUY, self.lots_worth(env, c, cash0 / 4)))
        fills = env.venue.fills(account, env.session)
        assert fills
        expected_cash = cash0
        expected_pos: dict[str, int] = {}
        for f in fills:
            sign = 1 if f.side is Side.BUY else -1
            expected_cash += -sign * f.quantity * f.price - f.commission
            expected_pos[f.symbol] = expected_pos.get(f.symbol, 0) + sign * f.quantity
        tol = max(env.cash_tolerance, 1e-9 * cash0)
        assert env.venue.cash(account) == pytest.approx(expected_cash, abs=tol)
        assert env.venue.positions(account) == {s: q for s, q in expected_pos.items() if q}
        assert all(math.isfinite(f.price) and f.price > 0 for f in fills)

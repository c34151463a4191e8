"""The paper broker: a simulated venue with its own book in PostgreSQL (SPEC §7, §9).

It behaves like an external broker, so the ledger reconciles against it exactly as it would
against a live adapter: orders are accepted (or rejected) at ``submit`` and executed later,
when the market of their session is known, inside :meth:`PaperBroker.fills`. Its book lives in
the tables ``paper_accounts``, ``paper_positions``, ``paper_orders`` and ``paper_fills``
(migration ``0002_paper_broker``), never in the ledger's tables.

Market rules (the same as the backtest engine, :mod:`rotation.backtest.engine`):

* An order for session S is matched on S's raw daily bar, in the order of its time in the
  session (a whole order and the first TWAP child at the open, the last child at the close);
  at one time, sells before buys (so a sell funds a buy of the same session), then by arrival.
* Fill price = open × (1 + slippage) for a buy, open × (1 − slippage) for a sell; fee =
  ``costs.fee(notional, side)``: commission (rate with a minimum per order) plus the market's
  sell-side duties on sells.
* No bar → the order expires (``no_bar``); a buy at limit-up (``limit_up``) and a sell at
  limit-down (``limit_down``) expire unfilled. Expired orders are not carried to the next session.
* Settlement by instrument class (``Quote.same_session_sell``): a fund of a T+1 class can only
  sell units held before its session (units bought in that session are not sellable; a shortfall
  fills what is sellable and expires the rest, ``t1``); a T+0 fund can sell them. Sale proceeds
  of a fund whose class cannot reuse them the same session do not pay for that session's buys.
* Cash: a buy that the cash cannot pay (commission included) is cut to the largest affordable
  number of whole lots, the rest expires (``cash_short``); zero lots → expired unfilled.
* Lots: a buy is whole lots of ``costs.lot_size``. A sell is whole lots, or its odd remainder
  equals the odd remainder of the position (an odd lot can only be sold in one piece, as on the
  exchange); selling the whole position is the common case.
* Participation (``cap``, :func:`participation_cap`; the vn.py test venue's setting, never the
  paper broker's): an order trades at most a share of the bar's volume traded while it was open
  (the volume spread evenly over the session); what the cap alone held back is ``participation``
  (the test venue keeps such an order open until the session's close).
* One fill per order with the deterministic id ``f"{venue_order_id}-1"``: re-reads return the
  same ids and values. A partially executed order ends ``expired`` with ``filled_quantity > 0``
  (the paper broker never leaves an order ``partially_filled``: its session is over).
* TWAP and VWAP children (``parent_order_id`` set, ``slices`` = n > 1, ``slice_index`` =
  1..n, the index in their client id ``order_id_of(parent, symbol, side, slice_index)``; a
  slice-end replacement has the index of the slice it is carried into) are the daily-bar
  approximation of an intraday schedule: child k = slice_index − 1 (0-based) executes at
  ``open + (close − open) × k / (n − 1)`` (slippage on top) and is stamped at its scheduled
  time, the 240 minutes of 09:30–11:30 and 13:00–15:00 (Asia/Shanghai) split evenly (the first
  child at 09:30 at the open, the last at 15:00 at the close). A child whose interpolated price
  is at the limit (limit-up for a buy, limit-down for a sell) expires. An order with
  ``slice_index`` 0 is a whole order: it executes at the open, stamped ``fill_time``.

Concurrency: matching one session of one account is one transaction holding the account's row
lock (``SELECT ... FOR UPDATE``), and the order rows are locked too, so concurrent ``fills`` /
``cancel`` calls cannot double-fill or fill a cancelled order.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, create_engine, text

from rotation.costs import CostModel
from trading.models import Fill, OrderRequest, OrderStatus, Quote, Side, VenueOrder
from trading.session_clock import SESSION_MINUTES, SHANGHAI, clock_at
from trading.venue import UnknownOrder, VenueError

OPEN_STATUSES = (OrderStatus.SUBMITTED.value, OrderStatus.PARTIALLY_FILLED.value)
_CASH_EPS = 1e-6   # float tolerance when checking that cash pays for a buy

# Reasons an order is rejected at submit or expires at matching.
REASON_INVALID_QUANTITY = "invalid_quantity"
REASON_INVALID_SIDE = "invalid_side"
REASON_ORDER_TYPE = "unsupported_order_type"
REASON_INVALID_SLICE = "invalid_slice"
REASON_UNKNOWN_ACCOUNT = "unknown_account"
REASON_SESSION_CLOSED = "session_closed"
REASON_ODD_LOT = "odd_lot"
REASON_NO_BAR = "no_bar"
REASON_LIMIT_UP = "limit_up"
REASON_LIMIT_DOWN = "limit_down"
REASON_T1 = "t1"
REASON_CASH_SHORT = "cash_short"
REASON_PARTICIPATION = "participation"
REASON_CANCELLED = "cancelled"


@runtime_checkable
class QuoteSource(Protocol):
    """Raw daily bars as the paper venue sees them."""

    def quote(self, symbol: str, session: dt.date) -> Quote | None:
        """The raw bar of ``symbol`` on ``session``; None = no bar (halted / not yet known)."""
        ...

    def latest_session(self) -> dt.date | None:
        """The newest session with bars available (None = no data at all)."""
        ...


class FrameQuotes:
    """A :class:`QuoteSource` over a raw-bars frame (``date, symbol, open, high, low, close,
    volume``; raw prices, one row per (date, symbol)), e.g. ``MarketDataResource.load().bars``
    of a raw dataset.

    ``previous_close`` is the fund's previous bar close. When the frame carries an
    ``adj_factor`` column (cumulative backward-adjustment factor), the previous close is
    ex-adjusted to the day's raw scale (``close[prev] × factor[prev] / factor[t]``), the
    exchange's reference price after a split or distribution, exactly as the backtest engine
    computes limits (``ex_adjust=False`` uses the plain previous raw close). ``price_limits``
    maps symbol → daily limit (0.10, 0.20; None = no limit); symbols not in it get
    ``default_limit``. ``as_of`` hides bars after that date (the market as known on that day).
    """

    def __init__(self, bars: pd.DataFrame, price_limits: Mapping[str, float | None] | None = None,
                 *, default_limit: float | None = 0.10, as_of: dt.date | None = None,
                 ex_adjust: bool = True,
                 classes: Mapping[str, tuple[bool, bool]] | None = None) -> None:
        missing = {"date", "symbol", "open", "high", "low", "close", "volume"} - set(bars.columns)
        if missing:
            raise ValueError(f"FrameQuotes: bars lack columns {sorted(missing)}")
        frame = bars.copy()
        frame["date"] = pd.to_datetime(frame["date"]).dt.normalize()
        frame["symbol"] = frame["symbol"].astype(str)
        if as_of is not None:
            frame = frame.loc[frame["date"] <= pd.Timestamp(as_of)]
        dup = frame.duplicated(["date", "symbol"], keep=False)
        if dup.any():
            first = frame.loc[dup].iloc[0]
            raise ValueError(f"FrameQuotes: duplicate bar ({first['symbol']}, "
                             f"{first['date']:%Y-%m-%d})")
        frame = frame.sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)
        prev_close = frame.groupby("symbol", sort=False)["close"].shift(1)
        if ex_adjust and "adj_factor" in frame.columns:
            factor = frame["adj_factor"].astype(float).fillna(1.0)
            prev_factor = factor.groupby(frame["symbol"], sort=False).shift(1)
            prev_close = prev_close * prev_factor / factor
        self._limits = dict(price_limits or {})
        self._default_limit = default_limit
        # symbol → (same-session sell, sale cash same day); absent: T+1, cash reusable.
        self._classes = dict(classes or {})
        self._dates = [d.date() for d in frame["date"]]
        self._symbols = frame["symbol"].tolist()
        self._values = frame[["open", "high", "low", "close", "volume"]].to_numpy(np.float64)
        self._prev = prev_close.to_numpy(np.float64)
        self._index = {(s, d): i for i, (s, d) in enumerate(zip(self._symbols, self._dates,
                                                                strict=True))}
        self._latest = max(self._dates) if self._dates else None

    def price_limit(self, symbol: str) -> float | None:
        return self._limits.get(symbol, self._default_limit)

    def quote(self, symbol: str, session: dt.date) -> Quote | None:
        i = self._index.get((symbol, session))
        if i is None:
            return None
        o, h, lo, c, v = (float(x) for x in self._values[i])
        prev = float(self._prev[i])
        t0, reuse = self._classes.get(symbol, (False, True))
        return Quote(symbol=symbol, session=session, open=o, high=h, low=lo, close=c, volume=v,
                     previous_close=None if math.isnan(prev) else prev,
                     price_limit=self.price_limit(symbol), same_session_sell=t0,
                     sale_cash_same_day=reuse)

    def latest_session(self) -> dt.date | None:
        return self._latest

    def sessions(self, symbol: str | None = None) -> list[dt.date]:
        """Sessions with a bar (of ``symbol``, or of any fund), ascending."""
        if symbol is None:
            return sorted(set(self._dates))
        return sorted(d for s, d in self._index if s == symbol)


def child_schedule(slice_index: int, slices: int) -> tuple[float, dt.time]:
    """Fraction of the trading day and clock time (Asia/Shanghai) of TWAP child ``slice_index``
    (1..n) of n: the 240 continuous-trading minutes (09:30–11:30, 13:00–15:00) split evenly,
    the first child at the open and the last at the close."""
    if slices <= 1:
        return 0.0, dt.time(9, 30)
    frac = min(max((slice_index - 1) / (slices - 1), 0.0), 1.0)
    return frac, clock_at(frac * SESSION_MINUTES)


def sellable_quantity(wanted: int, sellable: int, held: int, lot: int) -> int:
    """Largest sell ≤ min(wanted, sellable) that is whole lots, or whose odd remainder is the
    position's odd remainder (an odd lot is sold in one piece)."""
    cap = min(wanted, sellable)
    if cap <= 0:
        return 0
    if cap % lot == 0 or cap % lot == held % lot:
        return cap
    return cap - cap % lot


def lot_rejection(side: Side, quantity: int, held: int, lot: int) -> str | None:
    """Why an order of ``quantity`` (> 0) is refused at submit for its lots (None: it is not):
    whole lots, or a sell whose odd part is the position's odd part (an odd lot is sold in one
    piece, as on the exchange); ``held`` is the position before the order."""
    if quantity % lot == 0:
        return None
    if side is Side.SELL and quantity <= held and quantity % lot == held % lot:
        return None
    return REASON_ODD_LOT


def _dec(value: float | None) -> Decimal | None:
    """Exact decimal form of a float (its shortest repr) for NUMERIC columns."""
    if value is None or not math.isfinite(value):
        return None
    return Decimal(repr(float(value)))


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class SessionBook:
    """An account's book while one session is matched (the test venue's too: vnpy_replay)."""

    cash: float
    positions: dict[str, int]
    bought: dict[str, int]   # units bought in the session being matched (T+1)
    held_back: float = 0.0   # sale cash of funds whose class cannot reuse it this session


@dataclass(frozen=True)
class Outcome:
    """What one order executes on a session's bar (:func:`execute_on_bar`)."""

    quantity: int
    price: float | None
    commission: float
    status: OrderStatus
    reason: str | None
    filled_at: dt.datetime | None


class PaperBroker:
    """Simulated :class:`trading.venue.ExecutionVenue` keeping its own book in PostgreSQL.

    ``url`` is a SQLAlchemy URL (``postgresql+psycopg://...``) of a database migrated to
    ``0002_paper_broker``; ``quotes`` supplies raw daily bars; ``costs`` the commission,
    slippage and lot size; ``tick`` the tolerance of the limit checks; ``fill_time`` the
    Asia/Shanghai time stamped on ordinary (non-TWAP) fills.
    """

    name = "paper"

    def __init__(self, url: str, quotes: QuoteSource, costs: CostModel, *, tick: float = 0.001,
                 fill_time: dt.time = dt.time(9, 30)) -> None:
        self.url = url
        self.quotes = quotes
        self.costs = costs
        self.tick = tick
        self.fill_time = fill_time
        self._engine: Engine = create_engine(url, pool_pre_ping=True)

    def close(self) -> None:
        self._engine.dispose()

    @staticmethod
    def venue_order_id(client_order_id: str) -> str:
        return f"paper-{client_order_id}"

    # -- accounts ---------------------------------------------------------------------------
    def open_account(self, account_id: str, cash: float) -> None:
        """Create and fund the account once; opening an existing account changes nothing."""
        if not account_id:
            raise VenueError("paper: open_account: empty account id")
        if not math.isfinite(cash) or cash < 0:
            raise VenueError(f"paper: open_account {account_id}: invalid cash {cash!r}")
        with self._engine.begin() as conn:
            conn.execute(
                text("INSERT INTO paper_accounts (account_id, cash) VALUES (:a, :c) "
                     "ON CONFLICT (account_id) DO NOTHING"),
                {"a": account_id, "c": _dec(cash)},
            )

    def cash(self, account_id: str) -> float:
        """Cash of the venue's book as matched so far (``fills`` advances the matching)."""
        with self._engine.connect() as conn:
            value = conn.execute(text("SELECT cash FROM paper_accounts WHERE account_id = :a"),
                                 {"a": account_id}).scalar_one_or_none()
        if value is None:
            raise VenueError(f"paper: unknown account {account_id!r}")
        return float(value)

    def positions(self, account_id: str) -> dict[str, int]:
        """Non-zero holdings of the venue's book as matched so far."""
        with self._engine.connect() as conn:
            self._require_account(conn, account_id)
            rows = conn.execute(
                text("SELECT symbol, quantity FROM paper_positions "
                     "WHERE account_id = :a AND quantity <> 0 ORDER BY symbol"),
                {"a": account_id},
            ).all()
        return {r.symbol: int(r.quantity) for r in rows}

    # -- orders -----------------------------------------------------------------------------
    def submit(self, order: OrderRequest) -> VenueOrder:
        """Accept or reject ``order``; idempotent on ``client_order_id`` (a second submit returns
        the stored order unchanged). A rejection is stored and returned, not raised."""
        cid = order.client_order_id
        if not cid:
            raise VenueError("paper: submit: empty client_order_id")
        with self._engine.begin() as conn:
            existing = self._load_order(conn, cid)
            if existing is not None:
                return existing
            # Concurrent submits of one id: the venue order id derives from it, so a conflict
            # on either unique key is this order (no conflict target: PostgreSQL may find the
            # venue_order_id key first, and a targeted ON CONFLICT would raise on it).
            account = conn.execute(
                text("SELECT matched_through FROM paper_accounts WHERE account_id = :a "
                     "FOR SHARE"), {"a": order.account_id},
            ).one_or_none()
            reason = self._validate(conn, order, account)
            quantity = order.quantity
            stored_quantity = (int(quantity) if isinstance(quantity, numbers.Real)
                               and not isinstance(quantity, bool) and math.isfinite(quantity)
                               else 0)
            conn.execute(
                text("""
                    INSERT INTO paper_orders (client_order_id, venue_order_id, account_id, symbol,
                        side, quantity, session, reference_price, parent_order_id, slice_index,
                        slices, order_type, status, reason)
                    VALUES (:cid, :vid, :a, :sym, :side, :q, :s, :ref, :parent, :k, :n, :ot,
                        :st, :reason)
                    ON CONFLICT DO NOTHING
                """),
                {"cid": cid, "vid": self.venue_order_id(cid), "a": order.account_id,
                 "sym": order.symbol, "side": str(order.side), "q": stored_quantity,
                 "s": order.session, "ref": _dec(order.reference_price),
                 "parent": order.parent_order_id, "k": max(int(order.slice_index), 0),
                 "n": max(int(order.slices), 1), "ot": order.order_type,
                 "st": (OrderStatus.REJECTED if reason else OrderStatus.SUBMITTED).value,
                 "reason": reason},
            )
            stored = self._load_order(conn, cid)
        assert stored is not None
        return stored

    def cancel(self, client_order_id: str) -> VenueOrder:
        """Cancel an open order (it will not fill); a final order is returned unchanged."""
        with self._engine.begin() as conn:
            account_id = conn.execute(
                text("SELECT account_id FROM paper_orders WHERE client_order_id = :c"),
                {"c": client_order_id},
            ).scalar_one_or_none()
            if account_id is None:
                raise UnknownOrder(f"paper: cancel {client_order_id}: unknown order")
            # Same lock order as matching (account, then orders): no deadlock, no race.
            conn.execute(text("SELECT 1 FROM paper_accounts WHERE account_id = :a FOR UPDATE"),
                         {"a": account_id})
            conn.execute(
                text("""
                    UPDATE paper_orders SET status = :cancelled,
                        reason = COALESCE(reason, :reason), updated_at = clock_timestamp()
                    WHERE client_order_id = :c AND status IN (:s1, :s2)
                """),
                {"c": client_order_id, "cancelled": OrderStatus.CANCELLED.value,
                 "reason": REASON_CANCELLED, "s1": OPEN_STATUSES[0], "s2": OPEN_STATUSES[1]},
            )
            stored = self._load_order(conn, client_order_id)
        assert stored is not None
        return stored

    def order(self, client_order_id: str) -> VenueOrder | None:
        with self._engine.connect() as conn:
            return self._load_order(conn, client_order_id)

    def request(self, client_order_id: str) -> OrderRequest | None:
        """The order as the venue stored it (None for an unknown id)."""
        with self._engine.connect() as conn:
            r = conn.execute(
                text("SELECT client_order_id, account_id, symbol, side, quantity, session, "
                     "reference_price, parent_order_id, slice_index, slices, order_type "
                     "FROM paper_orders WHERE client_order_id = :c"), {"c": client_order_id},
            ).one_or_none()
        if r is None:
            return None
        return OrderRequest(client_order_id=r.client_order_id, account_id=r.account_id,
                            symbol=r.symbol, side=Side(r.side) if r.side in ("buy", "sell")
                            else r.side, quantity=int(r.quantity), session=r.session,
                            reference_price=(float(r.reference_price)
                                             if r.reference_price is not None else math.nan),
                            parent_order_id=r.parent_order_id, slice_index=int(r.slice_index),
                            slices=int(r.slices), order_type=r.order_type)

    def children_of(self, parent_order_id: str) -> list[str]:
        """Client ids of the TWAP children the venue holds for a parent, by slice index."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                text("SELECT client_order_id FROM paper_orders WHERE parent_order_id = :p "
                     "ORDER BY slice_index, seq"), {"p": parent_order_id},
            ).scalars().all()
        return list(rows)

    # -- execution --------------------------------------------------------------------------
    def fills(self, account_id: str, until: dt.date | None = None) -> Sequence[Fill]:
        """Match every open order of the account whose session ≤ min(until, latest session of
        the quotes), one session per transaction in session order, then return every fill of
        the account (ordered by session, time stamp, execution order)."""
        with self._engine.connect() as conn:
            self._require_account(conn, account_id)
        latest = self.quotes.latest_session()
        if latest is not None:
            horizon = latest if until is None else min(until, latest)
            while self._match_next_session(account_id, horizon):
                pass
        with self._engine.connect() as conn:
            rows = conn.execute(
                text("""
                    SELECT fill_id, client_order_id, account_id, symbol, side, quantity, price,
                           commission, session, filled_at
                    FROM paper_fills WHERE account_id = :a
                    ORDER BY session, filled_at, seq
                """), {"a": account_id},
            ).all()
        return [
            Fill(fill_id=r.fill_id, client_order_id=r.client_order_id, account_id=r.account_id,
                 symbol=r.symbol, side=Side(r.side), quantity=int(r.quantity),
                 price=float(r.price), commission=float(r.commission), session=r.session,
                 filled_at=r.filled_at.astimezone(SHANGHAI))
            for r in rows
        ]

    def _match_next_session(self, account_id: str, horizon: dt.date) -> bool:
        """Match the earliest session with open orders (≤ horizon) in one transaction; False
        when there is none left."""
        with self._engine.begin() as conn:
            account = conn.execute(
                text("SELECT cash FROM paper_accounts WHERE account_id = :a FOR UPDATE"),
                {"a": account_id},
            ).one()
            session = conn.execute(
                text("SELECT min(session) FROM paper_orders WHERE account_id = :a "
                     "AND status IN (:s1, :s2) AND session <= :h"),
                {"a": account_id, "h": horizon, "s1": OPEN_STATUSES[0], "s2": OPEN_STATUSES[1]},
            ).scalar_one()
            if session is None:
                return False
            self._match_session(conn, account_id, session, float(account.cash))
        return True

    def _match_session(self, conn: Connection, account_id: str, session: dt.date,
                       cash: float) -> None:
        positions = {
            r.symbol: int(r.quantity)
            for r in conn.execute(
                text("SELECT symbol, quantity FROM paper_positions WHERE account_id = :a "
                     "FOR UPDATE"), {"a": account_id})
        }
        bought = {
            r.symbol: int(r.q)
            for r in conn.execute(
                text("SELECT symbol, sum(quantity) AS q FROM paper_fills WHERE account_id = :a "
                     "AND session = :s AND side = 'buy' GROUP BY symbol"),
                {"a": account_id, "s": session})
        }
        book = SessionBook(cash=cash, positions=positions, bought=bought)
        orders = conn.execute(
            text("""
                SELECT client_order_id, venue_order_id, symbol, side, quantity, filled_quantity,
                       parent_order_id, slice_index, slices
                FROM paper_orders
                WHERE account_id = :a AND session = :s AND status IN (:s1, :s2)
                ORDER BY CASE WHEN parent_order_id IS NOT NULL AND slices > 1
                              THEN (slice_index - 1)::float / (slices - 1) ELSE 0 END,
                         (side = 'buy'), seq
                FOR UPDATE
            """),
            {"a": account_id, "s": session, "s1": OPEN_STATUSES[0], "s2": OPEN_STATUSES[1]},
        ).all()
        touched: set[str] = set()
        for o in orders:
            side = Side(o.side)
            remaining = int(o.quantity) - int(o.filled_quantity)
            quote = self.quotes.quote(o.symbol, session)
            twap = o.parent_order_id is not None and int(o.slices) > 1 \
                and 1 <= int(o.slice_index) <= int(o.slices)
            outcome = self._execute(side, o.symbol, remaining,
                                    int(o.slice_index) if twap else 0,
                                    int(o.slices) if twap else 1, session, quote, book)
            if outcome.quantity > 0:
                touched.add(o.symbol)
                conn.execute(
                    text("""
                        INSERT INTO paper_fills (fill_id, client_order_id, account_id, symbol,
                            side, quantity, price, commission, session, filled_at)
                        VALUES (:f, :c, :a, :sym, :side, :q, :p, :comm, :s, :t)
                        ON CONFLICT (fill_id) DO NOTHING
                    """),
                    {"f": f"{o.venue_order_id}-1", "c": o.client_order_id, "a": account_id,
                     "sym": o.symbol, "side": side.value, "q": outcome.quantity,
                     "p": _dec(outcome.price), "comm": _dec(outcome.commission), "s": session,
                     "t": outcome.filled_at},
                )
            conn.execute(
                text("""
                    UPDATE paper_orders SET status = :st, reason = :reason,
                        filled_quantity = filled_quantity + :q,
                        average_price = COALESCE(:p, average_price),
                        updated_at = clock_timestamp()
                    WHERE client_order_id = :c
                """),
                {"st": outcome.status.value, "reason": outcome.reason, "q": outcome.quantity,
                 "p": _dec(outcome.price) if outcome.quantity > 0 else None,
                 "c": o.client_order_id},
            )
        for symbol in sorted(touched):
            conn.execute(
                text("""
                    INSERT INTO paper_positions (account_id, symbol, quantity)
                    VALUES (:a, :sym, :q)
                    ON CONFLICT (account_id, symbol)
                    DO UPDATE SET quantity = EXCLUDED.quantity, updated_at = now()
                """),
                {"a": account_id, "sym": symbol, "q": book.positions.get(symbol, 0)},
            )
        conn.execute(
            text("""
                UPDATE paper_accounts SET cash = :c, updated_at = now(),
                    matched_through = GREATEST(COALESCE(matched_through, :s), :s)
                WHERE account_id = :a
            """),
            {"c": _dec(book.cash), "s": session, "a": account_id},
        )

    def _execute(self, side: Side, symbol: str, wanted: int, slice_index: int, slices: int,
                 session: dt.date, quote: Quote | None, book: SessionBook) -> Outcome:
        return execute_on_bar(side, symbol, wanted, slice_index, slices, session, quote, book,
                              self.costs, tick=self.tick, fill_time=self.fill_time)

    # -- helpers ----------------------------------------------------------------------------
    def _validate(self, conn: Connection, order: OrderRequest, account: Any) -> str | None:
        q = order.quantity
        if isinstance(q, bool) or not isinstance(q, numbers.Integral):
            return REASON_INVALID_QUANTITY
        quantity = int(q)
        if quantity <= 0:
            return REASON_INVALID_QUANTITY
        try:
            side = Side(order.side)
        except ValueError:
            return REASON_INVALID_SIDE
        if order.order_type != "market":
            return REASON_ORDER_TYPE
        if order.slices < 1 or not 0 <= order.slice_index <= order.slices:
            return REASON_INVALID_SLICE
        if account is None:
            return REASON_UNKNOWN_ACCOUNT
        if account.matched_through is not None and order.session < account.matched_through:
            return REASON_SESSION_CLOSED
        lot = self.costs.lot_size
        if quantity % lot == 0 or side is Side.BUY:
            return lot_rejection(side, quantity, 0, lot)
        held = conn.execute(
            text("SELECT quantity FROM paper_positions WHERE account_id = :a AND symbol = :s"),
            {"a": order.account_id, "s": order.symbol},
        ).scalar_one_or_none() or 0
        return lot_rejection(side, quantity, int(held), lot)

    @staticmethod
    def _require_account(conn: Connection, account_id: str) -> None:
        found = conn.execute(text("SELECT 1 FROM paper_accounts WHERE account_id = :a"),
                             {"a": account_id}).scalar_one_or_none()
        if found is None:
            raise VenueError(f"paper: unknown account {account_id!r}")

    @staticmethod
    def _load_order(conn: Connection, client_order_id: str) -> VenueOrder | None:
        row = conn.execute(
            text("SELECT client_order_id, venue_order_id, status, quantity, filled_quantity, "
                 "average_price, reason FROM paper_orders WHERE client_order_id = :c"),
            {"c": client_order_id},
        ).one_or_none()
        if row is None:
            return None
        return VenueOrder(client_order_id=row.client_order_id,
                          venue_order_id=row.venue_order_id, status=OrderStatus(row.status),
                          quantity=int(row.quantity), filled_quantity=int(row.filled_quantity),
                          average_price=_float(row.average_price), reason=row.reason)


def participation_cap(share: float | None, volume: float, elapsed: float, traded: int
                      ) -> int | None:
    """Units an order may still trade when the venue lets it take at most ``share`` (0..1) of
    the bar's ``volume`` traded while it was open: ``elapsed`` (0..1) of the session, the bar's
    volume spread evenly over it, less the ``traded`` units it has already. None: no cap (the
    paper broker's default: an order takes the whole bar)."""
    if not share:
        return None
    return max(int(share * volume * elapsed) - traded, 0)


def _expired(reason: str) -> Outcome:
    return Outcome(0, None, 0.0, OrderStatus.EXPIRED, reason, None)


def execute_on_bar(side: Side, symbol: str, wanted: int, slice_index: int, slices: int,
               session: dt.date, quote: Quote | None, book: SessionBook, costs: CostModel,
               *, tick: float = 0.001, fill_time: dt.time = dt.time(9, 30),
               cap: int | None = None) -> Outcome:
    """The market rules of one order on a session's bar (module docstring), updating ``book``:
    the one place they live, for the paper broker and the vn.py test venue alike. ``cap``: at
    most that many units trade (:func:`participation_cap`); a shortfall it alone causes has the
    reason ``participation``."""
    if quote is None:
        return _expired(REASON_NO_BAR)
    frac, clock = child_schedule(slice_index, slices)
    if slices <= 1:
        base = quote.open
        clock = fill_time
        at_limit = quote.limit_up(tick) if side is Side.BUY else \
            quote.limit_down(tick)
    else:
        base = quote.open + (quote.close - quote.open) * frac
        at_limit = _at_limit(quote, base, side, tick)
    if at_limit:
        return _expired(REASON_LIMIT_UP if side is Side.BUY else REASON_LIMIT_DOWN)
    slip = costs.slippage_rate
    price = base * (1 + slip) if side is Side.BUY else base * (1 - slip)
    filled_at = dt.datetime.combine(session, clock, tzinfo=SHANGHAI)
    lot = costs.lot_size
    allowed = wanted if cap is None else max(cap, 0)
    if side is Side.SELL:
        held = book.positions.get(symbol, 0)
        # T+1 classes cannot sell units bought in this session; T+0 classes can.
        sellable = held if quote.same_session_sell else held - book.bought.get(symbol, 0)
        qty = sellable_quantity(min(wanted, allowed), sellable, held, lot)
        shortfall_reason = REASON_PARTICIPATION if allowed < min(wanted, sellable) else \
            REASON_T1 if sellable < wanted else REASON_ODD_LOT
        if qty <= 0:
            return _expired(shortfall_reason)
        notional = qty * price
        commission = costs.fee(notional, "sell")
        book.cash += notional - commission
        if not quote.sale_cash_same_day:
            book.held_back += notional - commission
        book.positions[symbol] = held - qty
    else:
        capped = min(wanted, allowed)
        qty = capped - capped % lot
        commission = costs.commission(qty * price)
        usable = book.cash - book.held_back
        if qty * price + commission > usable + _CASH_EPS:
            lots = min(qty // lot, max(int(usable // (price * lot)), 0))
            while lots > 0 and (lots * lot * price
                                + costs.commission(lots * lot * price)
                                > usable + _CASH_EPS):
                lots -= 1
            qty = lots * lot
            shortfall_reason = REASON_CASH_SHORT
        else:
            shortfall_reason = REASON_PARTICIPATION if allowed < wanted else REASON_ODD_LOT
        if qty <= 0:
            return _expired(shortfall_reason)
        notional = qty * price
        commission = costs.commission(notional)
        book.cash -= notional + commission
        book.positions[symbol] = book.positions.get(symbol, 0) + qty
        book.bought[symbol] = book.bought.get(symbol, 0) + qty
    if qty == wanted:
        return Outcome(qty, price, commission, OrderStatus.FILLED, None, filled_at)
    return Outcome(qty, price, commission, OrderStatus.EXPIRED, shortfall_reason, filled_at)


def _at_limit(quote: Quote, price: float, side: Side, tick: float) -> bool:
    """Whether an intraday (interpolated) price sits at the limit against the trade."""
    if quote.price_limit is None or quote.previous_close is None:
        return False
    if side is Side.BUY:
        return price >= quote.previous_close * (1 + quote.price_limit) - tick
    return price <= quote.previous_close * (1 - quote.price_limit) + tick

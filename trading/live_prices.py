"""Live prices for the desk (issue 18 item 3), without vn.py or Dagster: where the quote relay
(:mod:`trading.quotes`) writes in Redis, how a tick and a 1-minute bar are recorded, the one
answer to "the reference price of fund X now" that pre-trade risk uses for the price band, and
the book's intraday P&L at live prices.

Redis (``<ns>`` the namespace, ``etf`` by default; ``<market>`` the market data's name):

* ``<ns>:quotes:ticks`` — a stream of ticks (:func:`tick_fields`), bounded (``MAXLEN ~``);
* ``<ns>:quotes:bars`` — a stream of closed 1-minute bars (:func:`bar_fields`), bounded;
* ``<ns>:quotes:bar_marks`` — fund → the minute (ISO) of its newest bar in the stream: a
  relay restarted writes no bar of a minute at or before it (no duplicates);
* ``<ns>:last:<market>`` — fund → ``{"price", "at"}``, the hash the intraday risk monitor
  reads (``resources/live_quotes.py``).

The desk API's event stream (``WS /api/v1/events``) carries them as ``quote`` and ``bar``
events: the relay notifies PostgreSQL's ``ledger_events`` channel (:data:`EVENT_CHANNEL`, the
API's one listener, ``api/events.py``) with the body :func:`event_body` builds.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rotation.risk import OrderCheck
from trading.intraday import LastPrice
from trading.models import Fill, Side

# api/events.py CHANNEL: the ledger's event channel the API listens on.
EVENT_CHANNEL = "ledger_events"
QUOTE_TABLE = "quotes"
BAR_TABLE = "bars"
# A live price older than this is stale: the reference price falls back to the last close.
DEFAULT_MAX_AGE = dt.timedelta(seconds=30)


def ticks_key(namespace: str) -> str:
    return f"{namespace}:quotes:ticks"


def bars_key(namespace: str) -> str:
    return f"{namespace}:quotes:bars"


def bar_marks_key(namespace: str) -> str:
    return f"{namespace}:quotes:bar_marks"


def last_key(namespace: str, market: str) -> str:
    """resources/live_quotes.py ``LiveQuotesResource.key``."""
    return f"{namespace}:last:{market}"


def _iso(at: dt.datetime | None) -> str:
    return at.isoformat() if at is not None else ""


def tick_fields(symbol: str, exchange: str, price: float, volume: float, bid: float,
                ask: float, venue_time: dt.datetime, sent_at: dt.datetime | None,
                received_at: dt.datetime) -> dict[str, str]:
    """One tick as the stream and the event carry it (prices as text; bid/ask empty when the
    venue gave none; ``sent_at`` the venue's wall-clock stamp when it gives one)."""
    if venue_time.tzinfo is None or received_at.tzinfo is None:
        raise ValueError(f"{symbol}: tick times need their offset (venue {venue_time!r}, "
                         f"received {received_at!r})")
    return {"symbol": symbol, "exchange": exchange, "price": repr(float(price)),
            "volume": repr(float(volume)), "bid": repr(float(bid)) if bid else "",
            "ask": repr(float(ask)) if ask else "", "venue_time": venue_time.isoformat(),
            "sent_at": _iso(sent_at), "received_at": received_at.isoformat()}


def bar_fields(symbol: str, exchange: str, minute: dt.datetime, open_: float, high: float,
               low: float, close: float, volume: float) -> dict[str, str]:
    if minute.tzinfo is None:
        raise ValueError(f"{symbol}: bar minute {minute!r} needs its offset")
    return {"symbol": symbol, "exchange": exchange, "minute": minute.isoformat(),
            "open": repr(float(open_)), "high": repr(float(high)), "low": repr(float(low)),
            "close": repr(float(close)), "volume": repr(float(volume))}


def event_body(table: str, fields: Mapping[str, str], at: dt.datetime) -> str:
    """The notification the API's listener reads (api/events.py ``event_of``): ``table``
    ``quotes`` or ``bars``, the fund as ``id``, the fields as ``row`` (prices as numbers)."""
    row: dict[str, Any] = {}
    for k, v in fields.items():
        if k in ("price", "volume", "bid", "ask", "open", "high", "low", "close"):
            row[k] = float(v) if v else None
        else:
            row[k] = v or None
    return json.dumps({"table": table, "id": fields["symbol"], "at": at.isoformat(),
                       "op": "INSERT", "row": row})


# -- the reference price ------------------------------------------------------------------------

@dataclass(frozen=True)
class ReferencePrice:
    price: float
    source: str          # "live" or "close"
    at: dt.datetime | None = None     # when the live price traded

    def describe(self) -> str:
        if self.source == "live" and self.at is not None:
            return f"live last price {self.price:.3f} at {self.at.isoformat()}"
        return f"last close {self.price:.3f}"


def reference_price(symbol: str, *, now: dt.datetime, last_close: Mapping[str, float],
                    live: Mapping[str, LastPrice], max_age: dt.timedelta = DEFAULT_MAX_AGE
                    ) -> ReferencePrice | None:
    """The reference price of ``symbol`` at ``now``: its live last price when one is fresh
    (traded at most ``max_age`` before ``now``, not after it), else its last close; None when
    neither is known."""
    if now.tzinfo is None:
        raise ValueError(f"reference_price({symbol}): now {now!r} needs its offset")
    quote = live.get(symbol)
    if quote is not None and math.isfinite(quote.price) and quote.price > 0 \
            and dt.timedelta(0) <= now - quote.at <= max_age:
        return ReferencePrice(float(quote.price), "live", quote.at)
    close = last_close.get(symbol)
    if close is None:
        return None
    return ReferencePrice(float(close), "close")


def checks_at_reference(checks: Sequence[OrderCheck], *, now: dt.datetime,
                        last_close: Mapping[str, float], live: Mapping[str, LastPrice],
                        max_age: dt.timedelta = DEFAULT_MAX_AGE) -> list[OrderCheck]:
    """The orders as pre-trade risk checks them: each at its fund's reference price now (a
    fresh live price, else the last close, :func:`reference_price`), its source named in the
    check so a price-band rejection says which price it measured."""
    out = []
    for c in checks:
        ref = reference_price(c.symbol, now=now, last_close=last_close, live=live,
                              max_age=max_age)
        if ref is None:
            out.append(c)
        else:
            out.append(replace(c, reference_price=ref.price, reference_source=ref.describe()))
    return out


# -- intraday P&L ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class IntradayPnl:
    at: dt.datetime
    unrealised: dict[str, float]      # fund -> units x (mark - previous close)
    marks: dict[str, ReferencePrice]  # fund -> the price it was marked at
    realised: float                   # realised today (the ledger's, net of costs)

    @property
    def total(self) -> float:
        return self.realised + sum(self.unrealised.values())

    @property
    def stale(self) -> tuple[str, ...]:
        return tuple(sorted(s for s, m in self.marks.items() if m.source != "live"))


def intraday_pnl(positions: Mapping[str, float], previous_close: Mapping[str, float],
                 live: Mapping[str, LastPrice], realised: float, *, now: dt.datetime,
                 max_age: dt.timedelta = DEFAULT_MAX_AGE) -> IntradayPnl:
    """The book's P&L in the session: each position × (its reference price now − its previous
    close), plus what was realised today. A fund without a fresh live price is marked at its
    close (no move) and named in ``stale``; one without a previous close is an error."""
    unrealised, marks = {}, {}
    for symbol, units in positions.items():
        prev = previous_close.get(symbol)
        if prev is None:
            raise ValueError(f"intraday_pnl: {symbol} is held ({units} units) but has no "
                             "previous close to measure its move against")
        ref = reference_price(symbol, now=now, last_close=previous_close, live=live,
                              max_age=max_age)
        assert ref is not None
        marks[symbol] = ref
        unrealised[symbol] = float(units) * (ref.price - float(prev))
    return IntradayPnl(at=now, unrealised=unrealised, marks=marks, realised=float(realised))


def session_trades_pnl(fills: Sequence[Fill], previous_close: Mapping[str, float],
                       session: dt.date) -> float:
    """What the ``session``'s fills made against the previous close, net of commission: a
    buy ``quantity × (previous close − price)``, a sell ``quantity × (price − previous
    close)``. With :func:`intraday_pnl` marking the units held now from the previous close,
    their sum is the book's move since the close (units bought today count from their price,
    units sold today up to theirs)."""
    total = 0.0
    for f in fills:
        if f.session != session:
            continue
        prev = previous_close.get(f.symbol)
        if prev is None:
            raise ValueError(f"session_trades_pnl: fill {f.fill_id} of {f.symbol} on {session} "
                             "has no previous close to measure it against")
        move = float(prev) - float(f.price)
        total += (move if f.side is Side.BUY else -move) * int(f.quantity) - float(f.commission)
    return total

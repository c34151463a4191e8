"""The quote relay (issue 18 item 3): real-time quotes of the universe through the venue process.

    python -m trading.quotes --rep tcp://127.0.0.1:2014 --pub tcp://127.0.0.1:4102 \\
        --market cn_etf_morphkyan_raw [--symbols 510300,510500] [--namespace etf]

It connects to the venue process (:mod:`trading.vnpy_process`) over vn.py's RPC client (the
same process the venue sends orders to: one broker login), subscribes the universe (every fund
the venue reports, or ``--symbols``), and for each tick:

* appends it to the Redis stream ``<ns>:quotes:ticks`` (``XADD MAXLEN ~ --maxlen``) and sets the
  fund's live last price in ``<ns>:last:<market>`` (what the intraday monitor and pre-trade risk
  read, :mod:`trading.live_prices`);
* feeds vn.py's ``BarGenerator``: each closed 1-minute bar goes to ``<ns>:quotes:bars`` with the
  fund's mark in ``<ns>:quotes:bar_marks`` in one Redis transaction; a bar of a minute at or
  before the mark is not written again (a relay restarted after a kill duplicates no bar). The
  bar of the minute in progress when the relay starts holds only the ticks it saw;
* notifies the desk API's event stream (PostgreSQL ``ledger_events``, ``--postgres-url``):
  ``quote`` and ``bar`` events reach every WebSocket client of ``/api/v1/events``.

Redis is the record: a tick that cannot be written there stops the relay (exit 1, the error
named); a lost PostgreSQL connection only costs the event stream those ticks (logged, retried).
A link to the venue that stops answering is rebuilt and the universe subscribed again.
Environment: ``ETF_REDIS_URL``, ``ETF_POSTGRES_URL`` (the ledger's) when the options are unset.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from trading.live_prices import (
    BAR_TABLE,
    EVENT_CHANNEL,
    QUOTE_TABLE,
    bar_fields,
    bar_marks_key,
    bars_key,
    event_body,
    last_key,
    tick_fields,
    ticks_key,
)
from trading.paper import SHANGHAI

log = logging.getLogger("trading.quotes")

READY = "quote relay ready"
DEFAULT_MAXLEN = 100_000
PG_RETRY_SECONDS = 5.0


def libpq(url: str) -> str:
    """The ledger's SQLAlchemy URL (``postgresql+psycopg://``) as libpq reads it."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


def _aware(at: Any) -> dt.datetime | None:
    if not isinstance(at, dt.datetime):
        return None
    return at if at.tzinfo is not None else None


class QuoteRelay:
    """Venue ticks → Redis streams and the API's event stream (module docstring)."""

    def __init__(self, rep: str, pub: str, redis: Any, *, market: str, namespace: str = "etf",
                 postgres: str | None = None, symbols: Sequence[str] | None = None,
                 maxlen: int = DEFAULT_MAXLEN, rpc_timeout: float = 5.0) -> None:
        from trading.vnpy_api import BarGenerator

        self.rep, self.pub = rep, pub
        self.redis = redis
        self.market = market
        self.namespace = namespace
        self.postgres = postgres
        self.wanted = list(symbols) if symbols else None
        self.maxlen = maxlen
        self.timeout_ms = int(rpc_timeout * 1000)
        self._bar_generator = BarGenerator
        self.generators: dict[str, Any] = {}
        self.marks: dict[str, dt.datetime] = {}
        for raw_symbol, raw in redis.hgetall(bar_marks_key(namespace)).items():
            self.marks[raw_symbol.decode()] = dt.datetime.fromisoformat(raw.decode())
        self.link: Any = None
        self.requests: list[Any] = []
        self.subscribed: list[str] = []
        self.failure: str | None = None
        self.failed = threading.Event()
        self._pg: Any = None
        self._pg_retry_at = 0.0
        self.ticks = 0
        self.bars = 0

    # -- the link ----------------------------------------------------------------------------
    def connect(self) -> None:
        """A new RPC link to the venue process (the venue's own, :class:`VenueLink`: probe, then
        vn.py's full query) and the universe subscribed on it."""
        from trading.venue import VenueError
        from trading.vnpy_api import EVENT_TICK, SubscribeRequest
        from trading.vnpy_venue import VenueLink, VnpyEndpoint

        self.close_link()
        link = VenueLink(VnpyEndpoint("quotes", self.rep, self.pub), self.timeout_ms / 1000)
        try:
            link.connect()
        except VenueError as exc:
            raise ConnectionError(f"quote relay: {exc}") from exc
        link.events.register(EVENT_TICK, self._on_tick_event)
        self.link = link
        by_symbol = {c.symbol: c for c in link.gateway.client.get_all_contracts(
            timeout=self.timeout_ms)}
        if self.wanted is not None:
            unknown = sorted(set(self.wanted) - set(by_symbol))
            if unknown:
                self.close_link()
                raise ValueError(f"quote relay: the venue at {self.rep} knows no fund "
                                 f"{unknown} (it reports {sorted(by_symbol)})")
        symbols = sorted(self.wanted if self.wanted is not None else by_symbol)
        self.requests = [(SubscribeRequest(symbol=s, exchange=by_symbol[s].exchange),
                          by_symbol[s].gateway_name) for s in symbols]
        self.subscribe()
        self.subscribed = symbols

    def subscribe(self) -> None:
        """Subscribe the universe on the link (again: a gateway keeps one subscription per
        fund; a venue process restarted on the same addresses has none)."""
        for req, gateway_name in self.requests:
            self.link.gateway.client.subscribe(req, gateway_name, timeout=self.timeout_ms)

    def alive(self) -> bool:
        try:
            self.link.gateway.client.get_all_accounts(timeout=self.timeout_ms)
            return True
        except Exception as exc:
            log.warning("quote relay: the venue at %s does not answer (%s)", self.rep, exc)
            return False

    def close_link(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def close(self) -> None:
        self.close_link()
        if self._pg is not None:
            self._pg.close()
            self._pg = None

    # -- ticks and bars ----------------------------------------------------------------------
    def _on_tick_event(self, event: Any) -> None:
        # vn.py's event thread ends on an exception: the failure is kept and stops the relay.
        try:
            self.on_tick(event.data)
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            self.failed.set()

    def on_tick(self, tick: Any) -> None:
        received = dt.datetime.now(dt.UTC)
        venue_time = tick.datetime if tick.datetime.tzinfo else \
            tick.datetime.replace(tzinfo=SHANGHAI)
        tick.datetime = venue_time
        fields = tick_fields(tick.symbol, tick.exchange.value, tick.last_price, tick.volume,
                             tick.bid_price_1, tick.ask_price_1, venue_time,
                             _aware(tick.localtime), received)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(ticks_key(self.namespace), fields, maxlen=self.maxlen, approximate=True)
        if tick.last_price and tick.last_price > 0:
            pipe.hset(last_key(self.namespace, self.market), tick.symbol, json.dumps(
                {"price": float(tick.last_price), "at": venue_time.isoformat()}))
        pipe.execute()
        self.ticks += 1
        self._notify(QUOTE_TABLE, fields, received)
        generator = self.generators.get(tick.symbol)
        if generator is None:
            generator = self.generators[tick.symbol] = self._bar_generator(self.on_bar)
        generator.update_tick(tick)

    def on_bar(self, bar: Any) -> None:
        minute = bar.datetime if bar.datetime.tzinfo else bar.datetime.replace(tzinfo=SHANGHAI)
        mark = self.marks.get(bar.symbol)
        if mark is not None and minute <= mark:
            return
        fields = bar_fields(bar.symbol, bar.exchange.value, minute, bar.open_price,
                            bar.high_price, bar.low_price, bar.close_price, bar.volume)
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(bars_key(self.namespace), fields, maxlen=self.maxlen, approximate=True)
        pipe.hset(bar_marks_key(self.namespace), bar.symbol, minute.isoformat())
        pipe.execute()
        self.marks[bar.symbol] = minute
        self.bars += 1
        self._notify(BAR_TABLE, fields, dt.datetime.now(dt.UTC))

    def _notify(self, table: str, fields: dict[str, str], at: dt.datetime) -> None:
        if self.postgres is None or time.monotonic() < self._pg_retry_at:
            return
        import psycopg

        try:
            if self._pg is None or self._pg.closed:
                self._pg = psycopg.connect(self.postgres, autocommit=True, connect_timeout=5)
            self._pg.execute("SELECT pg_notify(%s, %s)",
                             (EVENT_CHANNEL, event_body(table, fields, at)))
        except psycopg.Error as exc:
            # The events of the next PG_RETRY_SECONDS are not sent (not one attempt a tick).
            self._pg_retry_at = time.monotonic() + PG_RETRY_SECONDS
            log.warning("quote relay: %s event for %s not sent to the API's event stream "
                        "(PostgreSQL: %s); retrying in %.0f s", table, fields["symbol"], exc,
                        PG_RETRY_SECONDS)
            if self._pg is not None:
                self._pg.close()
                self._pg = None

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event, probe_seconds: float = 5.0) -> int:
        """Relay until ``stop``; the link is probed every ``probe_seconds`` and rebuilt when
        the venue stops answering; a probe after which no tick came subscribes the universe
        again (a venue process restarted between two probes answers but has no subscription).
        Returns the exit code (1: a tick could not be recorded)."""
        seen = self.ticks
        while not stop.is_set():
            if self.failed.wait(probe_seconds):
                print(f"quote relay: stopped: {self.failure}", file=sys.stderr, flush=True)
                return 1
            if stop.is_set():
                break
            quiet, seen = self.ticks == seen, self.ticks
            if self.alive():
                if quiet:
                    try:
                        self.subscribe()
                    except Exception as exc:
                        log.warning("quote relay: subscribing again at %s failed (%s)",
                                    self.rep, exc)
            else:
                try:
                    self.connect()
                    log.warning("quote relay: link to %s rebuilt, %d funds subscribed",
                                self.rep, len(self.subscribed))
                except (ConnectionError, ValueError) as exc:
                    log.warning("%s", exc)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trading.quotes",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rep", required=True, help="the venue process's RPC request address")
    parser.add_argument("--pub", required=True, help="the venue process's RPC publish address")
    parser.add_argument("--market", required=True,
                        help="the market data's name (the live-price hash <ns>:last:<market>)")
    parser.add_argument("--symbols", default="",
                        help="comma-separated funds; default: every fund the venue reports")
    parser.add_argument("--namespace", default="etf")
    parser.add_argument("--maxlen", type=int, default=DEFAULT_MAXLEN,
                        help="approximate length bound of each Redis stream")
    parser.add_argument("--redis-url", default=os.environ.get("ETF_REDIS_URL"))
    parser.add_argument("--postgres-url", default=os.environ.get("ETF_POSTGRES_URL"),
                        help="the ledger (the API's event stream); unset: Redis only")
    parser.add_argument("--probe-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.redis_url:
        raise SystemExit("python -m trading.quotes: no Redis URL (--redis-url or ETF_REDIS_URL)")
    if args.maxlen < 1:
        raise SystemExit(f"python -m trading.quotes: --maxlen {args.maxlen} must be ≥ 1")
    import redis

    client = redis.Redis.from_url(args.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(f"python -m trading.quotes: Redis at {args.redis_url} does not "
                         f"answer: {exc}") from exc
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()] or None
    relay = QuoteRelay(args.rep, args.pub, client, market=args.market,
                       namespace=args.namespace, symbols=symbols,
                       postgres=libpq(args.postgres_url) if args.postgres_url else None,
                       maxlen=args.maxlen)
    try:
        relay.connect()
    except (ConnectionError, ValueError) as exc:
        raise SystemExit(str(exc)) from exc
    print(f"{READY}: {len(relay.subscribed)} funds subscribed at {args.rep}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        return relay.run(stop, args.probe_seconds)
    finally:
        relay.close()


if __name__ == "__main__":
    sys.exit(main())

"""Intraday ticks from the test venue (issue 18, items 3 and 5): :class:`TickReplayGateway` is
the replay gateway (:mod:`trading.vnpy_replay`) that also answers vn.py ``subscribe`` and, on
request, replays a session's daily bar as intraday ticks, so the quote path (the relay,
:mod:`trading.quotes`) runs against the venue process here.

    python -m trading.vnpy_process --gateway trading.vnpy_replay_ticks:TickReplayGateway \\
        --paper --setting-file replay.json --rep-port 2014 --pub-port 4102 --state-dir ...

``replay_ticks(day, minutes, ticks_per_minute, interval, start)`` (an RPC function of the venue
process) starts a thread that puts, for every subscribed fund with a bar on ``day``,
``ticks_per_minute`` ticks in each of ``minutes`` replayed minutes from ``start`` (``HH:MM``,
Shanghai time; default 09:30): the price walks open → high → low → close (open → low → high →
close when the bar fell), the cumulative volume grows evenly to the bar's, bid/ask one price
tick either side. The ticks' ``datetime`` is the replayed clock (the session's minute and
second), so 1-minute bars close without waiting real minutes; ``localtime`` is the wall time
(UTC) the venue put the tick, the stamp tick-to-client latency is measured from. ``interval``
seconds of real time pass between two steps (0: as fast as the event engine takes them). It
returns the number of ticks it will put; a replay still running is stopped first.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

from trading.paper import SHANGHAI
from trading.vnpy_api import TickData
from trading.vnpy_replay import ReplayGateway

PRICE_TICK = 0.001


def price_path(open_: float, high: float, low: float, close: float, steps: int) -> list[float]:
    """``steps`` prices through the bar's open, extremes and close (piecewise linear), rounded
    to the price tick: first the open, last the close."""
    if steps < 2:
        raise ValueError(f"price_path: steps {steps} < 2 (need at least the open and the close)")
    knots = [open_, high, low, close] if close >= open_ else [open_, low, high, close]
    out = []
    for i in range(steps):
        x = i * (len(knots) - 1) / (steps - 1)
        k = min(int(x), len(knots) - 2)
        price = knots[k] + (knots[k + 1] - knots[k]) * (x - k)
        out.append(round(round(price / PRICE_TICK) * PRICE_TICK, 3))
    return out


class TickReplayGateway(ReplayGateway):
    """The replay gateway with subscriptions and intraday ticks (module docstring)."""

    default_name = "REPLAY"

    def __init__(self, event_engine: Any, gateway_name: str) -> None:
        super().__init__(event_engine, gateway_name)
        self.subscribed: set[str] = set()
        self._exchanges: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def venue_functions(self, main_engine: Any, state_dir: Path, launch_dir: Path
                        ) -> list[Any]:
        return [*super().venue_functions(main_engine, state_dir, launch_dir),
                self.replay_ticks, self.subscribed_symbols]

    def subscribe(self, req: Any) -> None:
        with self._lock:
            self.subscribed.add(req.symbol)
            self._exchanges[req.symbol] = req.exchange

    def subscribed_symbols(self) -> list[str]:
        with self._lock:
            return sorted(self.subscribed)

    def close(self) -> None:
        self._stop.set()

    def replay_ticks(self, day: str, minutes: int = 3, ticks_per_minute: int = 4,
                     interval: float = 0.05, start: str = "09:30") -> int:
        session = dt.date.fromisoformat(day)
        if minutes < 1 or not 1 <= ticks_per_minute <= 60:
            raise ValueError(f"replay_ticks: minutes {minutes} must be ≥ 1 and ticks_per_minute "
                             f"{ticks_per_minute} between 1 and 60")
        if self.broker is None or self.broker.quotes is None:
            raise RuntimeError("replay_ticks: the replay gateway has no market loaded")
        first = dt.datetime.combine(session, dt.time.fromisoformat(start), SHANGHAI)
        with self._lock:
            symbols = sorted(self.subscribed)
            exchanges = dict(self._exchanges)
        steps = minutes * ticks_per_minute
        paths: dict[str, tuple[list[float], Any]] = {}
        for symbol in symbols:
            quote = self.broker.quotes.quote(symbol, session)
            if quote is not None:
                paths[symbol] = (price_path(quote.open, quote.high, quote.low, quote.close,
                                            max(steps, 2)), quote)
        if self._thread is not None and self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        self._stop = threading.Event()
        stop = self._stop

        def run() -> None:
            for step in range(steps):
                if stop.is_set():
                    return
                at = first + dt.timedelta(seconds=step * 60 / ticks_per_minute)
                for symbol, (path, quote) in paths.items():
                    price = path[step]
                    self.on_tick(TickData(
                        symbol=symbol, exchange=exchanges[symbol], datetime=at, name=symbol,
                        volume=round(quote.volume * (step + 1) / steps),
                        last_price=price, open_price=quote.open,
                        high_price=max(path[: step + 1]), low_price=min(path[: step + 1]),
                        pre_close=quote.previous_close or 0.0,
                        bid_price_1=round(price - PRICE_TICK, 3),
                        ask_price_1=round(price + PRICE_TICK, 3),
                        localtime=dt.datetime.now(dt.UTC), gateway_name=self.gateway_name))
                if interval > 0:
                    stop.wait(interval)

        self._thread = threading.Thread(target=run, daemon=True, name=f"replay-ticks {day}")
        self._thread.start()
        return steps * len(paths)

"""Live last prices in Redis: the hash ``<namespace>:last:<market>`` maps each fund to
``{"price": <float>, "at": "<ISO 8601 with offset>"}``. The venue process writes it on every
tick (:meth:`LiveQuotesResource.publish`); the intraday risk monitor reads it. Without a Redis
URL (the embedded profile) there are no live quotes and the monitor says so."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from trading.intraday import LastPrice


class LiveQuotesResource(dg.ConfigurableResource):
    url: str | None = None
    namespace: str = "etf"
    socket_timeout_seconds: float = 2.0

    _client: Any = PrivateAttr(default=None)

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            if self.url is None:
                raise ValueError("no Redis URL (ETF_REDIS_URL): there is no live quote feed")
            self._client = redis.Redis.from_url(
                self.url, socket_timeout=self.socket_timeout_seconds,
                socket_connect_timeout=self.socket_timeout_seconds)
        return self._client

    def key(self, market: str) -> str:
        return f"{self.namespace}:last:{market}"

    def publish(self, market: str, symbol: str, price: float, at: dt.datetime) -> None:
        if at.tzinfo is None or not (math.isfinite(price) and price > 0):
            raise ValueError(f"{symbol}: a live price needs a positive price and an aware "
                             f"time, got {price!r} at {at!r}")
        self._redis().hset(self.key(market), symbol,
                           json.dumps({"price": price, "at": at.isoformat()}))

    def last_prices(self, market: str) -> tuple[dict[str, LastPrice], list[str]]:
        """Every fund's last price, and what was unreadable (each entry named, not used)."""
        if self.url is None:
            return {}, []
        found, problems = {}, []
        for raw_symbol, raw in self._redis().hgetall(self.key(market)).items():
            symbol = raw_symbol.decode()
            try:
                entry = json.loads(raw)
                price, at = float(entry["price"]), dt.datetime.fromisoformat(entry["at"])
                if at.tzinfo is None or not (math.isfinite(price) and price > 0):
                    raise ValueError("needs a positive price and a time with its offset")
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"{self.key(market)}[{symbol}]: {exc}")
                continue
            found[symbol] = LastPrice(price, at)
        return found, problems

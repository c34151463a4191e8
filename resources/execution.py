"""The execution resource: the one interface every venue is reached through (SPEC §9).

:class:`ExecutionResource` is what the execution job depends on; :class:`PaperExecution` is the
default (the paper broker on PostgreSQL, optionally TWAP-sliced). A live adapter is another
subclass whose ``venue`` returns an implementation of :class:`trading.venue.ExecutionVenue`
that passes :mod:`trading.contract` (see ``docs/execution_venue.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import dagster as dg
import pandas as pd

from resources.cache import CacheStats, LockUnavailable, RedisCache
from resources.market_data import MarketDataResource
from trading.ledger import Ledger
from trading.models import Costs
from trading.paper import FrameQuotes, PaperBroker, QuoteSource
from trading.twap import TwapVenue
from trading.venue import ExecutionVenue


class ExecutionResource(dg.ConfigurableResource):
    """``kill_switch`` (``ETF_EXECUTION__KILL_SWITCH``) stops every submission, like the
    ledger's flag."""

    kill_switch: bool = False
    twap_slices: int = 1

    @property
    def name(self) -> str:
        raise NotImplementedError

    def venue(self, quotes: QuoteSource, costs: Costs) -> ExecutionVenue:
        raise NotImplementedError


class PaperExecution(ExecutionResource):
    """Fills at the next open with slippage and commission, under the backtest's market rules;
    its book lives in PostgreSQL beside the ledger."""

    url: str

    @property
    def name(self) -> str:
        return "paper" if self.twap_slices == 1 else f"paper+twap{self.twap_slices}"

    def venue(self, quotes: QuoteSource, costs: Costs) -> ExecutionVenue:
        broker = PaperBroker(self.url, quotes, costs)
        return broker if self.twap_slices == 1 else TwapVenue(broker, slices=self.twap_slices)


@contextmanager
def account_lock(cache: RedisCache, ledger: Ledger, account_id: str, timeout: float,
                 warn: Callable[[str], None]) -> Iterator[str]:
    """One execution per account at a time: the Redis lock, or PostgreSQL's advisory lock when
    Redis cannot be reached (the lock must hold either way)."""
    stack = ExitStack()
    try:
        stack.enter_context(cache.lock(f"execution:{account_id}", timeout_seconds=timeout))
        kind = "redis"
    except LockUnavailable as exc:
        warn(f"execution lock: Redis unavailable ({exc}); using the PostgreSQL advisory lock")
        stack.enter_context(ledger.account_lock(account_id, timeout))
        kind = "postgres"
    with stack:
        yield kind


# At least this many sessions of bars before the first traded session: the venue needs the
# previous close of a fund suspended for a few days before it (limit detection).
MIN_QUOTE_LOOKBACK_SESSIONS = 5


def quote_lookback(quality_lookback_sessions: int) -> int:
    """The venue's lookback: the quality gate's, so that a signal's execution on its evening
    asks for exactly the range ``raw_bars`` loaded for that session (a cache hit), but never
    fewer than :data:`MIN_QUOTE_LOOKBACK_SESSIONS`."""
    return max(quality_lookback_sessions, MIN_QUOTE_LOOKBACK_SESSIONS)


def venue_bars(market_data: MarketDataResource, first: pd.Timestamp, last: pd.Timestamp, *,
               lookback_sessions: int, cache: RedisCache | None = None,
               stats: CacheStats | None = None,
               warn: Callable[[str], None] | None = None) -> pd.DataFrame:
    """The raw bars the paper venue sees: from ``lookback_sessions`` before ``first`` up to
    ``last``, the newest session closed by the clock (the market has not printed later bars
    yet); through the Redis ``cache`` when one is given."""
    start = market_data.calendar.offset(first, -lookback_sessions)
    if cache is None:
        return market_data.load(start, last).bars
    return market_data.load_cached(cache, start, last, stats or CacheStats(), warn=warn).bars


def market_quotes(market_data: MarketDataResource, bars: pd.DataFrame) -> FrameQuotes:
    """Quotes over ``bars`` (from :func:`venue_bars`) with the funds' daily price limits."""
    limits = {i.symbol: i.price_limit for i in market_data.instruments()}
    return FrameQuotes(bars, limits)

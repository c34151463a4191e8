"""The execution resource: the one interface every venue is reached through (SPEC §9).

:class:`ExecutionResource` is what the execution job depends on; :class:`PaperExecution` is the
default (the paper broker on PostgreSQL, optionally TWAP-sliced), :class:`VnpyExecution` the
vn.py venue process (issue 18). A live adapter is another subclass whose ``venue`` returns an
implementation of :class:`trading.venue.ExecutionVenue` that passes :mod:`trading.contract`
(see ``docs/execution_venue.md``). Callers reach it through :meth:`ExecutionResource.connected`,
which closes what the venue holds open (vn.py's RPC link) when they are done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from resources.cache import CacheStats, RedisCache
from resources.market_data import MarketDataResource
from rotation.bars import traded_amount
from rotation.costs import CostModel
from trading.ledger import AccountLock, Ledger
from trading.paper import FrameQuotes, PaperBroker, QuoteSource
from trading.venue import ExecutionVenue
from trading.volume_profile import (
    DEFAULT_CURVE,
    ProfileError,
    VolumeProfile,
    bars_of_stream,
    profile_from_bars,
    profile_from_curve,
)


class ExecutionResource(dg.ConfigurableResource):
    """``kill_switch`` (``ETF_EXECUTION__KILL_SWITCH``) stops every submission, like the
    ledger's flag; ``twap_slices`` children per order are planned by the executor, sized by
    ``algorithm`` (twap: evenly; vwap: by the volume profile of :meth:`profile`). Bound by
    the deployment (resources/deployment.py): no run can set them."""

    kill_switch: bool = False
    twap_slices: int = 1
    algorithm: str = "twap"
    # The VWAP profile (settings execution.vwap): the curve, or the relay's bars in Redis.
    vwap_source: str = "curve"
    vwap_curve: list[float] = Field(default_factory=lambda: list(DEFAULT_CURVE))
    vwap_sessions: int = 20
    vwap_min_sessions: int = 5
    vwap_min_coverage: float = 0.9
    quotes_namespace: str = "etf"
    redis_url: str | None = None

    def profile(self) -> VolumeProfile | None:
        """The volume profile VWAP slices by (None: TWAP, or no slicing). Learned from the
        bars: read when an execution starts, so each execution follows the newest sessions;
        too few bars is a ProfileError naming the stream and the count."""
        if self.algorithm != "vwap" or self.twap_slices <= 1:
            return None
        if self.vwap_source == "curve":
            return profile_from_curve(self.vwap_curve)
        if self.redis_url is None:
            raise ProfileError("execution.vwap.source is 'bars' but no Redis URL is set "
                               "(ETF_REDIS_URL): the relay's 1-minute bars are there")
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=5.0,
                                      socket_connect_timeout=5.0)
        try:
            return learn_profile(client, self.quotes_namespace, sessions=self.vwap_sessions,
                                 min_sessions=self.vwap_min_sessions,
                                 min_coverage=self.vwap_min_coverage)
        finally:
            client.close()

    def _slicing(self) -> str:
        """The name's slicing suffix: '' unsliced, else '+twapN' / '+vwapN'."""
        return "" if self.twap_slices == 1 else f"+{self.algorithm}{self.twap_slices}"

    @property
    def name(self) -> str:
        raise NotImplementedError

    def venue(self, quotes: QuoteSource, costs: CostModel) -> ExecutionVenue:
        """The venue; ``quotes`` are the market the paper venue matches on (a venue with a
        market of its own ignores them)."""
        raise NotImplementedError

    @contextmanager
    def connected(self, quotes: QuoteSource, costs: CostModel) -> Iterator[ExecutionVenue]:
        """:meth:`venue`, closed when the block ends."""
        venue = self.venue(quotes, costs)
        try:
            yield venue
        finally:
            close = getattr(venue, "close", None)
            if callable(close):
                close()


class PaperExecution(ExecutionResource):
    """Fills at the next open with slippage and commission, under the backtest's market rules;
    its book lives in PostgreSQL beside the ledger."""

    url: str

    @property
    def name(self) -> str:
        return f"paper{self._slicing()}"

    def venue(self, quotes: QuoteSource, costs: CostModel) -> ExecutionVenue:
        # TWAP children are planned into the ledger by the executor (write-ahead) and sent
        # to the broker one by one: the venue itself never slices.
        return PaperBroker(self.url, quotes, costs)


class VnpyExecution(ExecutionResource):
    """The vn.py venue (:class:`trading.vnpy_venue.VnpyVenue`): vn.py's RPC client of the
    venue process serving ``account_id`` (settings ``execution.vnpy``). The process's market is
    its own (a broker's, or the test venue's replayed bars): the quotes given only bound the
    test venue's replay clock.
    vn.py is imported when a venue is made, never when the code location loads."""

    account_id: str
    rep_address: str
    pub_address: str
    # The gateway's account id when it is not ``account_id``.
    broker_account: str | None = None
    rpc_timeout_seconds: float = 5.0
    ack_timeout_seconds: float = 5.0
    # The test venue (trading.vnpy_replay): fills(account, D) opens session D there, up to the
    # newest session of the quotes given (the sessions the clock has closed).
    replay_clock: bool = False

    @property
    def name(self) -> str:
        return f"vnpy{self._slicing()}"

    def venue(self, quotes: QuoteSource, costs: CostModel) -> ExecutionVenue:
        from trading.vnpy_venue import VnpyEndpoint, VnpyVenue

        endpoint = VnpyEndpoint(self.account_id, self.rep_address, self.pub_address,
                                broker_account=self.broker_account)
        return VnpyVenue([endpoint], costs, rpc_timeout=self.rpc_timeout_seconds,
                         ack_timeout=self.ack_timeout_seconds, replay_clock=self.replay_clock,
                         replay_through=quotes.latest_session() if self.replay_clock else None)


def learn_profile(redis: Any, namespace: str, *, sessions: int = 20, min_sessions: int = 5,
                  min_coverage: float = 0.9, symbols: Iterable[str] | None = None
                  ) -> VolumeProfile:
    """:func:`trading.volume_profile.profile_from_bars` over the quote relay's 1-minute bars
    (``<namespace>:quotes:bars``, read whole: the relay bounds it with ``MAXLEN``)."""
    from trading.live_prices import bars_key

    key = bars_key(namespace)
    where = f"Redis stream {key}"
    return profile_from_bars(bars_of_stream(redis.xrange(key), where), sessions=sessions,
                             min_sessions=min_sessions, min_coverage=min_coverage,
                             where=where, symbols=symbols)


@contextmanager
def account_lock(ledger: Ledger, account_id: str, timeout: float) -> Iterator[AccountLock]:
    """One execution per account at a time: PostgreSQL's advisory lock on the ledger is the
    only authority (a second lock service could split: two workers each holding "the" lock)."""
    with ledger.account_lock(account_id, timeout) as lock:
        yield lock


# At least this many sessions of bars before the first traded session: the venue needs the
# previous close of a fund suspended for a few days before it (limit detection).
MIN_QUOTE_LOOKBACK_SESSIONS = 5


def quote_lookback(quality_lookback_sessions: int, liquidity_sessions: int = 1) -> int:
    """The venue's lookback: the quality gate's, so that a signal's execution on its evening
    asks for exactly the range ``raw_bars`` loaded for that session (a cache hit); long enough
    for the participation limit's window (``liquidity_sessions`` up to the signal day), whose
    average amounts then come from the same bars (:func:`average_amounts`); never fewer than
    :data:`MIN_QUOTE_LOOKBACK_SESSIONS`."""
    return max(quality_lookback_sessions, liquidity_sessions - 1, MIN_QUOTE_LOOKBACK_SESSIONS)


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


def average_amounts(market_data: MarketDataResource, day: pd.Timestamp, sessions: int, *,
                    loaded: tuple[pd.Timestamp, pd.DataFrame] | None = None,
                    cache: RedisCache | None = None, stats: CacheStats | None = None,
                    warn: Callable[[str], None] | None = None) -> dict[str, float]:
    """Each fund's average daily traded amount over the ``sessions`` up to ``day`` (the
    participation limit): the window's total over its sessions, so a day without a bar (a
    halt) counts as nothing traded rather than being skipped, as the gate's days to liquidate
    have it (``rotation.portfolio_risk.liquidity``). ``loaded``: bars already read from a
    session on (the venue's), used when they reach back over the window; else the source is
    read (through ``cache`` when given)."""
    start = market_data.calendar.offset(day, -(sessions - 1))
    if loaded is not None and loaded[0] <= start:
        bars = loaded[1].loc[loaded[1]["date"].between(start, day)]
    elif cache is None:
        bars = market_data.load(start, day).bars
    else:
        bars = market_data.load_cached(cache, start, day, stats or CacheStats(), warn=warn).bars
    window = len(market_data.calendar.sessions(start, day))
    totals = traded_amount(bars).groupby(bars["symbol"].astype(str)).sum()
    return {str(s): float(v) / window for s, v in totals.items()}


def market_quotes(market_data: MarketDataResource, bars: pd.DataFrame) -> FrameQuotes:
    """Quotes over ``bars`` (from :func:`venue_bars`) with the funds' daily price limits."""
    instruments = market_data.instruments()
    limits = {i.symbol: i.price_limit for i in instruments}
    classes = {i.symbol: (i.same_session_sell, i.sale_cash_same_day) for i in instruments}
    return FrameQuotes(bars, limits, classes=classes)

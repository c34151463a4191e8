"""The execution resource: the one interface every venue is reached through (SPEC §9).

:class:`ExecutionResource` is what the execution job depends on; :class:`PaperExecution` is the
default (the paper broker on PostgreSQL, optionally TWAP-sliced), :class:`VnpyExecution` the
vn.py venue process (issue 18). A live adapter is another subclass whose ``venue`` returns an
implementation of :class:`trading.venue.ExecutionVenue` that passes :mod:`trading.contract`
(see ``docs/execution_venue.md``). Callers reach it through :meth:`ExecutionResource.connected`,
which closes what the venue holds open (vn.py's RPC link) when they are done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg
import pandas as pd

from resources.cache import CacheStats, RedisCache
from resources.market_data import MarketDataResource
from rotation.bars import traded_amount
from rotation.costs import CostModel
from trading.ledger import AccountLock, Ledger
from trading.paper import FrameQuotes, PaperBroker, QuoteSource
from trading.venue import ExecutionVenue


class ExecutionResource(dg.ConfigurableResource):
    """``kill_switch`` (``ETF_EXECUTION__KILL_SWITCH``) stops every submission, like the
    ledger's flag; ``twap_slices`` children per order are planned by the executor. Bound by
    the deployment (resources/deployment.py): no run can set them."""

    kill_switch: bool = False
    twap_slices: int = 1

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
        return "paper" if self.twap_slices == 1 else f"paper+twap{self.twap_slices}"

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
        return "vnpy" if self.twap_slices == 1 else f"vnpy+twap{self.twap_slices}"

    def venue(self, quotes: QuoteSource, costs: CostModel) -> ExecutionVenue:
        from trading.vnpy_venue import VnpyEndpoint, VnpyVenue

        endpoint = VnpyEndpoint(self.account_id, self.rep_address, self.pub_address,
                                broker_account=self.broker_account)
        return VnpyVenue([endpoint], costs, rpc_timeout=self.rpc_timeout_seconds,
                         ack_timeout=self.ack_timeout_seconds, replay_clock=self.replay_clock,
                         replay_through=quotes.latest_session() if self.replay_clock else None)


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

"""Execution jobs: ``execution_job`` runs one approved signal through the execution resource
(launched by ``approved_signal_sensor``, one run per signal id); ``kill_switch_job`` engages or
releases the account's kill switch in the ledger."""

from collections.abc import Callable
from typing import Any

import dagster as dg
import pandas as pd
import redis
from pydantic import Field

from resources.cache import CacheStats, RedisCache
from resources.clock import ClockResource
from resources.execution import (
    ExecutionResource,
    account_lock,
    average_amounts,
    market_quotes,
    venue_bars,
)
from resources.ledger import LedgerResource
from resources.live_quotes import LiveQuotesResource
from resources.market_data import MarketDataResource
from trading.account import Account
from trading.executor import ExecutionRefused, ExecutionReport, MarketView, execute_signal
from trading.intraday import LastPrice
from trading.venue import ExecutionVenue
from trading.volume_profile import ProfileError

ACCOUNT_TAG = "etf/account"
VENUE_TAG = "etf/venue"
SIGNAL_TAG = "etf/signal_id"
# What an op that acts at the venue returns (the ledger holds the outcome) and how it retries
# (every step is idempotent in the ledger and at the venue).
LEDGER_OUTCOME = dg.Out(dg.Nothing, description="The outcome is in the ledger; the summary is "
                        "this output's metadata")
VENUE_RETRY = dg.RetryPolicy(max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL)


class ExecuteSignalConfig(dg.Config):
    signal_id: str = Field(description="The approved signal to execute (its ledger id)")


class KillSwitchConfig(dg.Config):
    engaged: bool = Field(True, description="true stops every submission; false releases it")
    reason: str = Field(description="Why: kept in the ledger and the audit log")


def signal_run_config(signal_id: str, prefix: str = "") -> dict[str, Any]:
    """The run config of an account's execution job for one signal (``prefix``: the
    account's, as given to :func:`execution_jobs`)."""
    return {"ops": {f"{prefix}execute_signal_op": {"config": {"signal_id": signal_id}}}}


def run_signal(signal_id: str, *, ledger: LedgerResource, execution: ExecutionResource,
               market_data: MarketDataResource, cache: RedisCache, clock: ClockResource,
               account: Account, actor: str, dagster_run_id: str | None,
               warn: Callable[[str], None],
               cache_stats: CacheStats,
               wrap_venue: Callable[[ExecutionVenue], ExecutionVenue] | None = None,
               live_quotes: LiveQuotesResource | None = None, market: str | None = None
               ) -> tuple[ExecutionReport, str]:
    """Execute one signal under the account lock with the resources' venue and market view
    (what ``execute_signal_op`` runs; ``wrap_venue`` decorates the venue, e.g. to audit or to
    inject faults in tests). Pre-trade risk measures each order at its fund's fresh live price
    in ``live_quotes`` (the quote relay's hash of ``market``), else at the last close
    (trading.live_prices). Returns the report and the lock that was held; the bar cache's use
    is counted in ``cache_stats``."""
    account_id, limits = account.account_id, account.limits
    book = ledger.ledger
    signal = book.signal(signal_id)
    if signal is None:
        raise ExecutionRefused(f"signal {signal_id} is not in the ledger")
    day = pd.Timestamp(signal.as_of)
    calendar = market_data.calendar
    closed = calendar.latest_closed_session(clock.now())
    # The venue must see the bars of every session an open order is for: an order left open
    # since before the signal (a gap in the daily runs) fills at its own session's open.
    waiting = [pd.Timestamp(o.session) for o in book.orders(account_id=account_id)
               if not o.status.is_final]
    first = min([day, *waiting])
    bars = venue_bars(market_data, first, closed, lookback_sessions=account.quote_lookback_sessions,
                      cache=cache, stats=cache_stats, warn=warn)
    quotes = market_quotes(market_data, bars)
    on_day = {s: q for s in {*signal.weights, *book.positions(account_id)}
              if (q := quotes.quote(s, day.date())) is not None}
    # The venue's lookback covers the participation window (quote_lookback): no second read.
    adv = average_amounts(market_data, day, limits.liquidity_sessions, loaded=(
        calendar.offset(first, -account.quote_lookback_sessions), bars))
    live: dict[str, LastPrice] = {}
    if live_quotes is not None and market is not None:
        try:
            live, problems = live_quotes.last_prices(market)
        except redis.RedisError as exc:
            # No live prices is what a quiet relay means too: the closes are the reference.
            live, problems = {}, []
            warn(f"live prices unreadable ({exc}): every fund is checked at the last close")
        for problem in problems:
            warn(f"unreadable live price {problem}: its fund is checked at the last close")
    view = MarketView(signal_day=day.date(), order_session=calendar.offset(day, 1).date(),
                      quotes=on_day, average_amount=adv, closed_through=closed.date(),
                      now=clock.now().to_pydatetime(), live=live)
    with execution.connected(quotes, account.costs) as venue, \
            account_lock(book, account_id, account.lock_timeout_seconds) as lock:
        if wrap_venue is not None:
            venue = wrap_venue(venue)
        report = execute_signal(
            ledger=book, venue=venue, signal_id=signal_id, account_id=account_id,
            market=view, limits=limits, costs=account.costs, actor=actor,
            kill_switch_env=execution.kill_switch, twap_slices=execution.twap_slices,
            profile=execution.profile,
            dagster_run_id=dagster_run_id, lock=lock, conduct=account.conduct)
    return report, "postgres"


def execution_jobs(account: Account, prefix: str = "", market: str | None = None
                   ) -> tuple[dg.JobDefinition, dg.JobDefinition]:
    """``prefix``: of a further account's job and op names (op names are unique in a code
    location; :func:`signal_run_config` names the op). ``market``: the market data's name,
    whose live prices (the quote relay's) pre-trade risk uses when fresh; None: the closes."""
    account_id = account.account_id

    @dg.op(
        name=f"{prefix}execute_signal_op", out=LEDGER_OUTCOME, retry_policy=VENUE_RETRY,
        description="Reconcile earlier fills, plan orders from the ledger positions to the "
        "signal's weights (raw closes, 100-unit lots, sells first), apply pre-trade risk, and "
        "submit through the execution resource unless the kill switch is engaged.",
    )
    def execute_signal_op(context: dg.OpExecutionContext, config: ExecuteSignalConfig,
                          ledger: LedgerResource, execution: ExecutionResource,
                          market_data: MarketDataResource, cache: RedisCache,
                          clock: ClockResource, live_quotes: LiveQuotesResource
                          ) -> dg.Output[None]:
        cache_stats = CacheStats()
        try:
            result, lock = run_signal(
                config.signal_id, ledger=ledger, execution=execution, market_data=market_data,
                cache=cache, clock=clock, account=account,
                actor=f"dagster:{context.run.run_id}", dagster_run_id=context.run.run_id,
                warn=context.log.warning, cache_stats=cache_stats,
                live_quotes=live_quotes, market=market)
        except (ExecutionRefused, ProfileError) as exc:
            # Refused, or no VWAP profile (e.g. too few bars in Redis): nothing was recorded;
            # a retry would meet the same, so it fails once, the reason named.
            raise dg.Failure(str(exc), allow_retries=False) from None
        signal_id = config.signal_id
        if result.status == "halted":
            context.log.warning(f"signal {signal_id} halted: {'; '.join(result.notes)}")
        orders = pd.DataFrame([{"order_id": o.order_id, "symbol": o.symbol, "side": str(o.side),
                                "quantity": o.quantity, "status": str(o.status),
                                "filled": o.filled_quantity, "reason": o.reason}
                               for o in result.orders])
        from assets.metadata import markdown

        return dg.Output(None, metadata={
            "signal_id": dg.MetadataValue.text(signal_id),
            "status": dg.MetadataValue.text(result.status),
            "venue": dg.MetadataValue.text(execution.name),
            "lock": dg.MetadataValue.text(lock),
            "submitted": dg.MetadataValue.int(result.submitted),
            "rejected": dg.MetadataValue.int(len(result.rejected)),
            "new_fills": dg.MetadataValue.int(result.new_fills),
            "summary": dg.MetadataValue.json(result.summary()),
            "orders": dg.MetadataValue.md(markdown(orders, 60) if len(orders) else "none"),
            **cache_stats.metadata(),
        })

    @dg.job(
        name=f"{prefix}execution_job",
        # A run that dies with its code server is failed by run monitoring after this (not the
        # instance's 4 h default), so the account's queue moves on; healthy runs take seconds.
        tags={ACCOUNT_TAG: account_id, VENUE_TAG: account.venue,
              dg.MAX_RUNTIME_SECONDS_TAG: "900"},
        executor_def=dg.in_process_executor,
        description="Executes one approved signal (launched by approved_signal_sensor with "
        "run_key = signal id). Safe to re-execute: orders and fills are idempotent by id.",
    )
    def execution_job() -> None:
        execute_signal_op()

    @dg.op(name=f"{prefix}set_kill_switch",
           description="Engage or release the kill switch of the account in the ledger.")
    def set_kill_switch(context: dg.OpExecutionContext, config: KillSwitchConfig,
                        ledger: LedgerResource) -> None:
        ledger.ledger.set_kill_switch(account_id, config.engaged,
                                      actor=f"dagster:{context.run.run_id}",
                                      reason=config.reason)
        context.log.warning(f"kill switch of {account_id} "
                            f"{'ENGAGED' if config.engaged else 'released'}: {config.reason}")

    @dg.job(
        name=f"{prefix}kill_switch_job",
        executor_def=dg.in_process_executor,
        description="Stops (engaged: true) or resumes (engaged: false) every order submission "
        "of the account at once; in-flight executions stop before their next order.",
    )
    def kill_switch_job() -> None:
        set_kill_switch()

    return execution_job, kill_switch_job

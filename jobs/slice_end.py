"""``slice_end_job``: closes one slice of a sliced (TWAP or VWAP) parent at its end: what is
still open of the slice is cancelled at the venue, the venue's fills are recorded, and the
unfilled remainder is sent as the next slice's replacement unless the kill switch is engaged
(``trading.slice_end.close_slice``, idempotent). Launched by ``slice_end_sensor`` once per
(parent, slice) whose end has passed."""

# No ``from __future__ import annotations``: Dagster reads the op's annotations (its config).
from collections.abc import Callable
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from jobs.execution import ACCOUNT_TAG, LEDGER_OUTCOME, VENUE_RETRY, VENUE_TAG
from resources.cache import CacheStats, RedisCache
from resources.clock import ClockResource
from resources.execution import ExecutionResource, account_lock, market_quotes, venue_bars
from resources.ledger import LedgerResource
from resources.market_data import MarketDataResource
from trading.account import Account
from trading.executor import kill_switch_reason
from trading.ledger import Ledger
from trading.paper import FrameQuotes
from trading.slice_end import SliceEnd, SliceError, SliceNotEnded, close_slice, closes_slices

JOB_NAME = "slice_end_job"
PARENT_TAG = "etf/parent_order_id"
SLICE_TAG = "etf/slice"
# "<parent>:<slice>": the runs of one slice end (the sensor launches one).
SLICE_END_TAG = "etf/slice_end"


class CloseSliceConfig(dg.Config):
    parent_order_id: str = Field(description="The sliced parent order (its ledger id)")
    slice_index: int = Field(ge=1, description="The slice that ended (1..n of the parent's "
                             "plan)")


def slice_key(parent_order_id: str, slice_index: int) -> str:
    return f"{parent_order_id}:{slice_index}"


def slice_run_config(parent_order_id: str, slice_index: int, prefix: str = ""
                     ) -> dict[str, Any]:
    """The run config of an account's slice-end job for one slice (``prefix``: the
    account's)."""
    return {"ops": {f"{prefix}close_slice_op": {"config": {
        "parent_order_id": parent_order_id, "slice_index": slice_index}}}}


def closed_market(market_data: MarketDataResource, clock: ClockResource, account: Account,
                  cache: RedisCache, stats: CacheStats, warn: Callable[[str], None]
                  ) -> FrameQuotes:
    """The market as the clock has closed it (the quotes a venue is made with: the test
    venue's replay never goes past them)."""
    closed = market_data.calendar.latest_closed_session(clock.now())
    bars = venue_bars(market_data, closed, closed,
                      lookback_sessions=account.quote_lookback_sessions, cache=cache,
                      stats=stats, warn=warn)
    return market_quotes(market_data, bars)


def slice_end_job(account: Account, prefix: str = "") -> dg.JobDefinition:
    """The slice-end job of ``account`` (a venue that closes slices: trading.slice_end);
    ``prefix``: of a further account's job and op names."""
    account_id = account.account_id
    if not closes_slices(account.venue):
        raise ValueError(f"slice_end_job: account {account_id} trades on venue "
                         f"{account.venue!r}, whose children are not closed at slice ends")

    @dg.op(
        name=f"{prefix}close_slice_op", out=LEDGER_OUTCOME, retry_policy=VENUE_RETRY,
        description="Cancel what is still open of the slice at the venue, record the venue's "
        "fills, and send the unfilled remainder as the next slice's replacement (the last "
        "slice's is dropped) unless the kill switch is engaged. Safe to re-execute.",
    )
    def close_slice_op(context: dg.OpExecutionContext, config: CloseSliceConfig,
                       ledger: LedgerResource, execution: ExecutionResource,
                       market_data: MarketDataResource, cache: RedisCache,
                       clock: ClockResource) -> dg.Output[None]:
        book = ledger.ledger
        parent = book.order(config.parent_order_id)
        if parent is None or parent.account_id != account_id:
            raise dg.Failure(f"{context.op.name}: order {config.parent_order_id} is not an "
                             f"order of account {account_id} in the ledger",
                             allow_retries=False)
        stats = CacheStats()
        quotes = closed_market(market_data, clock, account, cache, stats, context.log.warning)
        # Who acts on the orders: this job's run (the audit log's actor).
        actor = f"dagster:{context.run.run_id}"
        try:
            with execution.connected(quotes, account.costs) as venue, \
                    account_lock(book, account_id, account.lock_timeout_seconds) as lock:
                done = close_slice(book, venue, parent_order_id=config.parent_order_id,
                                   slice_index=config.slice_index, actor=actor,
                                   kill_switch_env=execution.kill_switch, lock=lock,
                                   now=clock.now().to_pydatetime())
        except SliceNotEnded as exc:
            # This worker's clock is behind the sensor's, or the run was launched early: try
            # again once the slice has ended (the close is idempotent).
            wait = (exc.ends - clock.now().to_pydatetime()).total_seconds()
            raise dg.RetryRequested(max_retries=3, seconds_to_wait=min(max(wait, 1.0) + 1.0,
                                                                       300.0)) from exc
        except SliceError as exc:
            # Bad config (not a sliced parent, slice out of range): a retry meets the same.
            # Anything else (the account locked by an execution, the venue unreachable) is
            # retried by VENUE_RETRY: the close is idempotent.
            raise dg.Failure(str(exc), allow_retries=False) from None
        stop = kill_switch_reason(book, account_id, execution.kill_switch)
        unsent = [r.order_id for r in done.replacements if r.order_id not in done.sent]
        if unsent:
            context.log.warning(f"slice {config.slice_index} of {config.parent_order_id}: "
                                f"replacements {unsent} not sent: {stop or done.notes}")
        return dg.Output(None, metadata=_summary(book, done, unsent, stop, execution.name)
                         | stats.metadata())

    @dg.job(
        name=f"{prefix}{JOB_NAME}",
        tags={ACCOUNT_TAG: account_id, VENUE_TAG: account.venue,
              dg.MAX_RUNTIME_SECONDS_TAG: "300"},
        executor_def=dg.in_process_executor,
        description="Closes one slice of a sliced order at its end (launched by "
        "slice_end_sensor, one run per parent and slice). Safe to re-execute: the cancel, the "
        "replacement's id and its send are idempotent.",
    )
    def slice_job() -> None:
        close_slice_op()

    return slice_job


def _summary(book: Ledger, done: SliceEnd, unsent: list[str], stop: str | None,
             venue: str) -> dict[str, dg.MetadataValue]:
    """The run's metadata: what was cancelled (with what it had filled), what replaces it,
    sent or not and why."""
    from assets.metadata import markdown

    replaced = {r.replaces: r for r in done.replacements}
    rows = []
    for order_id in done.cancelled:
        order = book.order(order_id)
        assert order is not None
        replacement = replaced.get(order_id)
        rows.append({"order_id": order_id, "status": str(order.status),
                     "filled": order.filled_quantity, "quantity": order.quantity,
                     "replacement": replacement.order_id if replacement else "",
                     "sent": bool(replacement and replacement.order_id in done.sent)})
    return {
        "parent_order_id": dg.MetadataValue.text(done.parent_order_id),
        "slice": dg.MetadataValue.int(done.slice_index),
        "venue": dg.MetadataValue.text(venue),
        "cancelled": dg.MetadataValue.json(done.cancelled),
        "new_fills": dg.MetadataValue.int(done.new_fills),
        "replacements": dg.MetadataValue.json([r.order_id for r in done.replacements]),
        "sent": dg.MetadataValue.json(done.sent),
        "not_sent": dg.MetadataValue.json(unsent),
        "dropped_units": dg.MetadataValue.int(done.dropped_units),
        "kill_switch": dg.MetadataValue.text(stop or "released"),
        "notes": dg.MetadataValue.json(done.notes),
        "orders": dg.MetadataValue.md(markdown(pd.DataFrame(rows), 60) if rows else "none"),
    }

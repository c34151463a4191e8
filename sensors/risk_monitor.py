"""``intraday_risk_sensor``: the account's book at live prices every minute while a live
quote feed runs (``resources/live_quotes.py``), checked against the limits that move within a
session (``trading.intraday``). A breach is written to the audit log (``risk_breach``, where
the breach alert sensor finds it) and logged, once per rule and day. Without fresh quotes the
tick says so and measures nothing."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pandas as pd

from resources.clock import ClockResource
from resources.ledger import LedgerResource
from resources.live_quotes import LiveQuotesResource
from resources.market_data import MarketDataResource
from rotation.risk import RiskViolation
from trading.account import Account
from trading.intraday import IntradayBook, check_intraday, mark
from trading.models import AuditEntry

SENSOR_NAME = "intraday_risk_sensor"
# A held fund's live price older than this is stale: marked at its last close and named.
MAX_QUOTE_AGE = dt.timedelta(minutes=2)
# Sessions of bars searched for a fund's last close (a fund halted for a few days).
CLOSE_LOOKBACK_SESSIONS = 5


def last_closes(market_data: MarketDataResource, now: pd.Timestamp) -> dict[str, float]:
    """Each fund's last raw close up to the newest closed session."""
    closed = market_data.calendar.latest_closed_session(now)
    start = market_data.calendar.offset(closed, -CLOSE_LOOKBACK_SESSIONS)
    bars = market_data.load(start, closed).bars.sort_values("date")
    return {str(s): float(c) for s, c in bars.groupby("symbol")["close"].last().items()}


def _cursor(raw: str | None, day: str) -> set[str]:
    """Breaches already reported today (the cursor is {"day", "reported"})."""
    state = json.loads(raw) if raw else {}
    return set(state.get("reported", [])) if state.get("day") == day else set()


def _report(ledger: LedgerResource, account_id: str, book: IntradayBook,
            breach: RiskViolation) -> None:
    ledger.ledger.audit(AuditEntry(
        actor=f"sensor:{SENSOR_NAME}", action="risk_breach", entity="account",
        entity_id=account_id, reason=breach.message,
        details={**breach.as_dict(), "at": book.at.isoformat(),
                 "session": f"{book.at:%Y-%m-%d}", "equity": book.equity,
                 "close_equity": book.close_equity, "stale": list(book.stale)}))


def intraday_risk_sensor(account: Account, market: str, minimum_interval_seconds: int = 60,
                         prefix: str = "") -> dg.SensorDefinition:
    """``prefix``: of a further account's sensor name."""
    account_id, limits = account.account_id, account.limits

    @dg.sensor(
        name=f"{prefix}{SENSOR_NAME}", minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Marks account {account_id}'s book at live prices every minute while "
        "the quote feed runs and audits each breach of the intraday loss limit, the drawdown "
        "stop or the gross exposure (once per rule and day).")
    def _sensor(context: dg.SensorEvaluationContext, ledger: LedgerResource,
                live_quotes: LiveQuotesResource, market_data: MarketDataResource,
                clock: ClockResource) -> dg.SkipReason:
        live, problems = live_quotes.last_prices(market)
        for problem in problems:
            context.log.warning(f"unreadable live quote {problem}")
        book = ledger.ledger
        held = book.positions(account_id)
        positions = {s: p.quantity for s, p in held.items()}
        now = clock.now().to_pydatetime()
        fresh = [s for s in positions if s in live
                 and dt.timedelta(0) <= now - live[s].at <= MAX_QUOTE_AGE]
        if not fresh:
            return dg.SkipReason(f"no fresh live quote for the {len(positions)} fund(s) held "
                                 f"by {account_id}: nothing measured")
        history = book.valuations(account_id)["equity"].tolist() or [
            book.initial_cash(account_id)]      # before the first valuation: the cash paid in
        closes = last_closes(market_data, clock.now())
        # A fund without a close in the look-back (a long halt): at its cost, and named.
        unpriced = sorted(s for s in positions if s not in closes)
        at_cost = {s: held[s].cost / held[s].quantity for s in unpriced}
        marked = mark(positions, book.cash(account_id), {**at_cost, **closes}, live, history,
                      now=now, max_age=MAX_QUOTE_AGE)
        day = f"{now:%Y-%m-%d}"
        reported = _cursor(context.cursor, day)
        found = check_intraday(marked, limits, account_id)
        for breach in (b for b in found if f"{b.rule}:{b.subject}" not in reported):
            _report(ledger, account_id, marked, breach)
            context.log.error(f"intraday risk breach of {account_id}: {breach.rule}: "
                              f"{breach.message}")
            reported.add(f"{breach.rule}:{breach.subject}")
        context.update_cursor(json.dumps({"day": day, "reported": sorted(reported)}))
        return dg.SkipReason(f"{account_id} at {now:%H:%M:%S}: equity {marked.equity:,.2f}, "
                             f"P&L {marked.pnl:+,.2f}, stale {list(marked.stale)}, "
                             f"unpriced (at cost) {unpriced}; "
                             f"breaches {[b.rule for b in found] or 'none'}")

    return _sensor

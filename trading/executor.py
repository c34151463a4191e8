"""Execute one approved signal against a venue, idempotently (SPEC §9).

Each step is one ledger transaction and can be repeated: a run killed anywhere and retried, a
re-execution from the UI or a duplicate launch finds the signal's orders already planned (their
ids are deterministic), resubmits only what the venue has not acknowledged (the venue
de-duplicates by client order id as well) and records fills by their venue fill id. So no order
is sent twice and no fill is lost or counted twice.

Steps: reconcile earlier fills → plan (ledger positions vs target at the signal day's raw
closes, lots, sells first) → pre-trade risk (rejections recorded with their rule) → submit,
checking the kill switch before every order → collect fills and order states.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from rotation.orders import plan_orders
from rotation.risk import (
    RiskLimits,
    RiskViolation,
    check_orders,
    limit_state,
    order_check_of,
)
from trading.ledger import Ledger, OrderRecord
from trading.models import (
    AuditEntry,
    Costs,
    OrderRequest,
    OrderStatus,
    Quote,
    Side,
    SignalStatus,
    order_id_of,
)
from trading.venue import ExecutionVenue

log = logging.getLogger(__name__)


class ExecutionRefused(RuntimeError):
    """The signal cannot be executed (unknown or not approved); the message says why."""


@dataclass
class ExecutionReport:
    signal_id: str
    status: str                        # completed | halted
    orders: list[OrderRecord] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    submitted: int = 0
    new_fills: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        by_status: dict[str, int] = {}
        for o in self.orders:
            by_status[str(o.status)] = by_status.get(str(o.status), 0) + 1
        return {"signal_id": self.signal_id, "status": self.status,
                "orders": len(self.orders), "orders_by_status": by_status,
                "rejected": len(self.rejected), "submitted": self.submitted,
                "new_fills": self.new_fills}


@dataclass(frozen=True)
class MarketView:
    """What the executor knows of the signal day: raw bars of D and the session the orders
    are for (T1_OPEN: the next session)."""

    signal_day: dt.date
    order_session: dt.date
    quotes: Mapping[str, Quote]        # symbol → raw bar of the signal day (absent = no bar)

    def last_close(self) -> dict[str, float]:
        return {s: q.close for s, q in self.quotes.items()}


def reconcile(ledger: Ledger, venue: ExecutionVenue, account_id: str, *, actor: str,
              until: dt.date | None = None) -> int:
    """Record every venue fill not yet in the ledger and align open orders' states with the
    venue. Returns the number of new fills."""
    new = sum(ledger.record_fill(f, actor=actor) for f in venue.fills(account_id, until))
    for order in ledger.orders(account_id=account_id):
        if order.status.is_final or order.status is OrderStatus.PLANNED:
            continue
        remote = venue.order(order.order_id)
        if remote is not None and remote.status != order.status:
            ledger.update_order(order.order_id, status=remote.status, actor=actor,
                                venue_order_id=remote.venue_order_id, reason=remote.reason)
    return new


def kill_switch_reason(ledger: Ledger, account_id: str, env_engaged: bool) -> str | None:
    if env_engaged:
        return "kill switch engaged by environment (ETF_EXECUTION__KILL_SWITCH)"
    state = ledger.kill_switch(account_id)
    if state.engaged:
        return f"kill switch engaged by {state.actor}: {state.reason}"
    return None


def execute_signal(*, ledger: Ledger, venue: ExecutionVenue, signal_id: str, account_id: str,
                   market: MarketView, limits: RiskLimits, costs: Costs, actor: str,
                   initial_cash: float,
                   kill_switch_env: bool = False, dagster_run_id: str | None = None,
                   on_submitted: Callable[[OrderRecord], None] | None = None
                   ) -> ExecutionReport:
    """Execute ``signal_id`` (see module doc). The caller holds the account lock;
    ``initial_cash`` funds the venue account the first time (a paper venue)."""
    signal = ledger.signal(signal_id)
    if signal is None:
        raise ExecutionRefused(f"signal {signal_id} is not in the ledger")
    if signal.status is not SignalStatus.APPROVED:
        raise ExecutionRefused(f"signal {signal_id} is {signal.status}: nothing is executed "
                               f"({'; '.join(r.get('message', '') for r in signal.reasons)})")
    if signal.account_id != account_id:
        raise ExecutionRefused(f"signal {signal_id} belongs to account {signal.account_id}, "
                               f"not {account_id}")
    report = ExecutionReport(signal_id=signal_id, status="completed")
    ledger.start_execution(signal_id, account_id, dagster_run_id=dagster_run_id, actor=actor)
    venue.open_account(account_id, initial_cash)
    report.new_fills += reconcile(ledger, venue, account_id, actor=actor,
                                  until=market.signal_day)

    stop = kill_switch_reason(ledger, account_id, kill_switch_env)
    orders = ledger.orders(signal_id=signal_id)
    if stop is not None:
        return _halt(ledger, venue, report, orders, stop, actor)
    if not orders:
        orders = _plan(ledger, report, signal_id, signal.weights, account_id, market, limits,
                       costs, actor)

    for order in orders:
        if order.status is not OrderStatus.PLANNED or order.parent_order_id is not None:
            continue
        stop = kill_switch_reason(ledger, account_id, kill_switch_env)
        if stop is not None:
            return _halt(ledger, venue, report, ledger.orders(signal_id=signal_id), stop, actor)
        remote = venue.submit(_request(order))
        _record_children(ledger, venue, order, actor)
        status = remote.status if remote.status is not OrderStatus.PLANNED \
            else OrderStatus.SUBMITTED
        stored = ledger.update_order(order.order_id, status=status, actor=actor,
                                     venue_order_id=remote.venue_order_id, reason=remote.reason)
        report.submitted += 1
        if on_submitted is not None:
            on_submitted(stored)

    report.new_fills += reconcile(ledger, venue, account_id, actor=actor,
                                  until=market.order_session)
    report.orders = ledger.orders(signal_id=signal_id)
    ledger.finish_execution(signal_id, "completed", actor=actor,
                            reason=f"{report.submitted} submitted, {len(report.rejected)} "
                            "rejected by pre-trade risk")
    return report


def _plan(ledger: Ledger, report: ExecutionReport, signal_id: str, weights: Mapping[str, float],
          account_id: str, market: MarketView, limits: RiskLimits, costs: Costs, actor: str
          ) -> list[OrderRecord]:
    positions = {s: p.quantity for s, p in ledger.positions(account_id).items()}
    cash = ledger.cash(account_id)
    closes = market.last_close()
    missing = sorted(s for s in set(weights) | set(positions)
                     if s not in closes and (weights.get(s, 0.0) > 0 or positions.get(s)))
    # A fund without a bar on the signal day cannot be valued or traded: risk rejects it below.
    planned = plan_orders({s: w for s, w in weights.items() if s not in missing},
                          {s: q for s, q in positions.items() if s not in missing},
                          cash, closes, lot_size=costs.lot_size,
                          commission_rate=costs.commission_bps / 1e4,
                          min_commission=costs.min_commission)
    equity = cash + sum(q * closes.get(s, 0.0) for s, q in positions.items())
    after = dict(positions)
    for p in planned:
        after[p.symbol] = after.get(p.symbol, 0) + (p.quantity if p.side == "buy"
                                                    else -p.quantity)
    checks = [order_check_of(p, order_id_of(signal_id, p.symbol, Side(p.side)))
              for p in planned]
    limit_up = {s for s, q in market.quotes.items()
                if limit_state(q.close, q.previous_close, q.price_limit) == "up"}
    limit_down = {s for s, q in market.quotes.items()
                  if limit_state(q.close, q.previous_close, q.price_limit) == "down"}
    _, rejected = check_orders(
        checks, last_close=closes, limit_up_close=limit_up, limit_down_close=limit_down,
        halted=set(missing), committed_notional=ledger.committed_notional(
            account_id, market.order_session),
        equity=equity, positions_value_after=sum(q * closes.get(s, 0.0)
                                                 for s, q in after.items()),
        limits=limits)
    violations: dict[str, list[RiskViolation]] = {}
    for c, v in rejected:
        violations.setdefault(c.order_id, []).append(v)
        report.rejected.append({"order_id": c.order_id, **v.as_dict()})
    records = []
    for p, c in zip(planned, checks, strict=True):
        found = violations.get(c.order_id, [])
        records.append(OrderRecord(
            order_id=c.order_id, signal_id=signal_id, account_id=account_id, symbol=p.symbol,
            side=Side(p.side), quantity=p.quantity, reference_price=p.reference_price,
            session=market.order_session,
            status=OrderStatus.REJECTED if found else OrderStatus.PLANNED,
            reason="; ".join(f"{v.layer}/{v.rule}: {v.message}" for v in found) or p.reason))
    for symbol in missing:
        ledger.audit(AuditEntry(actor=actor, action="order_not_planned", entity="signal",
                                entity_id=signal_id, reason=f"instrument/halted: {symbol} has no "
                                f"bar on {market.signal_day}; not traded",
                                details={"symbol": symbol}))
        report.rejected.append({"order_id": "", "layer": "instrument", "rule": "halted",
                                "subject": symbol,
                                "message": f"{symbol} has no bar on {market.signal_day}"})
    return ledger.record_orders(records, actor=actor)


def _request(order: OrderRecord) -> OrderRequest:
    return OrderRequest(client_order_id=order.order_id, account_id=order.account_id,
                        symbol=order.symbol, side=order.side, quantity=order.quantity,
                        session=order.session, reference_price=order.reference_price)


def _record_children(ledger: Ledger, venue: ExecutionVenue, parent: OrderRecord,
                     actor: str) -> None:
    """A slicing venue (TWAP) creates child orders; the ledger keeps them so their fills attach
    to an order and every child submission is audited."""
    children_of = getattr(venue, "children", None)
    if children_of is None:
        return
    children: list[OrderRecord] = []
    for child_id in children_of(parent.order_id):
        remote = venue.order(child_id)
        if remote is None:
            continue
        info = venue.request(child_id) if hasattr(venue, "request") else None
        children.append(OrderRecord(
            order_id=child_id, signal_id=parent.signal_id, account_id=parent.account_id,
            symbol=parent.symbol, side=parent.side, quantity=remote.quantity,
            reference_price=parent.reference_price, session=parent.session,
            status=remote.status, parent_order_id=parent.order_id,
            slice_index=getattr(info, "slice_index", len(children) + 1),
            slices=getattr(info, "slices", 1), venue_order_id=remote.venue_order_id,
            reason=remote.reason))
    if children:
        ledger.record_orders(children, actor=actor)


def _halt(ledger: Ledger, venue: ExecutionVenue, report: ExecutionReport,
          orders: Sequence[OrderRecord], reason: str, actor: str) -> ExecutionReport:
    """Kill switch: nothing more is submitted; planned orders are cancelled in the ledger and
    open ones at the venue."""
    for order in orders:
        if order.status.is_final:
            continue
        if order.status is not OrderStatus.PLANNED:
            remote = venue.cancel(order.order_id)
            ledger.update_order(order.order_id, status=remote.status, actor=actor,
                                venue_order_id=remote.venue_order_id, reason=reason)
        else:
            ledger.update_order(order.order_id, status=OrderStatus.CANCELLED, actor=actor,
                                reason=reason)
    report.status = "halted"
    report.notes.append(reason)
    report.orders = ledger.orders(signal_id=report.signal_id)
    ledger.finish_execution(report.signal_id, "halted", actor=actor, reason=reason)
    log.warning("signal %s halted: %s", report.signal_id, reason)
    return report

"""Execute one approved signal against a venue, idempotently and write-ahead (SPEC §9).

Each step is one ledger transaction and can be repeated: a run killed anywhere and retried, a
re-execution from the UI or a duplicate launch finds the signal's orders already planned (their
ids are deterministic), resubmits only what the venue has not acknowledged (the venue
de-duplicates by client order id as well) and records fills by their venue fill id. So no order
is sent twice and no fill is lost or counted twice.

Write-ahead: every order, and every TWAP/VWAP child with its slicing plan (an ``order_sliced``
audit entry per parent: algorithm, sizes by slice, the VWAP profile), is in the ledger before
the first one is sent. A retry sends what the ledger holds, whatever the slicing setting is now,
so the book never goes past the target; an order the venue has that the ledger still calls
planned (a run killed between the two) is adopted from the venue at the next reconcile.

Steps: reconcile earlier fills → cross the opposite wishes of a signal's strategies (when it
nets several, ``trading.attribution``) → plan (ledger positions and open orders vs target at
the signal day's raw closes, lots, sells first, TWAP children) → pre-trade risk (rejections
recorded with their rule, and the conduct rules of ``trading.conduct``) → submit, checking the
kill switch and the order rate before every order → collect fills and order states. Nothing is
sent once the orders' session has closed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from rotation.costs import CostModel
from rotation.orders import plan_orders
from rotation.risk import (
    OrderCheck,
    RiskLimits,
    RiskViolation,
    check_orders,
    limit_state,
    order_check_of,
    reason_text,
    unsellable_units,
)
from trading.conduct import ConductRules, order_violations, pace_violation, plan_violation
from trading.intraday import LastPrice
from trading.ledger import EXECUTION_FINAL, AccountLock, Ledger, OrderRecord
from trading.live_prices import DEFAULT_MAX_AGE, checks_at_reference
from trading.models import (
    AuditEntry,
    OrderRequest,
    OrderStatus,
    Quote,
    Side,
    SignalStatus,
    VenueOrder,
    order_id_of,
)
from trading.twap import child_orders
from trading.venue import ExecutionVenue
from trading.volume_profile import VolumeProfile

log = logging.getLogger(__name__)


# A VWAP volume profile, or what makes one when orders are planned (None: TWAP).
ProfileSource = VolumeProfile | Callable[[], VolumeProfile | None] | None


def _resolved(profile: ProfileSource) -> VolumeProfile | None:
    return profile() if callable(profile) else profile


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
    crossed: int = 0                   # units settled between the signal's strategies
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        by_status: dict[str, int] = {}
        for o in self.orders:
            by_status[str(o.status)] = by_status.get(str(o.status), 0) + 1
        return {"signal_id": self.signal_id, "status": self.status,
                "orders": len(self.orders), "orders_by_status": by_status,
                "rejected": len(self.rejected), "submitted": self.submitted,
                "new_fills": self.new_fills, "crossed_units": self.crossed}


@dataclass(frozen=True)
class MarketView:
    """What the executor knows of the signal day: raw bars of D and the session the orders
    are for (T1_OPEN: the next session)."""

    signal_day: dt.date
    order_session: dt.date
    quotes: Mapping[str, Quote]        # symbol → raw bar of the signal day (absent = no bar)
    # symbol → average daily traded amount up to the signal day (the participation limit)
    average_amount: Mapping[str, float]
    closed_through: dt.date | None = None   # the newest session closed by the clock
    # Live last prices (trading.live_prices): when ``now`` is set, pre-trade risk checks each
    # order at its fund's fresh live price (age <= live_max_age), else at the last close.
    live: Mapping[str, LastPrice] = field(default_factory=dict)
    now: dt.datetime | None = None
    live_max_age: dt.timedelta = DEFAULT_MAX_AGE

    def last_close(self) -> dict[str, float]:
        return {s: q.close for s, q in self.quotes.items()}


def reconcile(ledger: Ledger, venue: ExecutionVenue, account_id: str, *, actor: str,
              until: dt.date | None = None, closed_through: dt.date | None = None) -> int:
    """Record every venue fill not yet in the ledger and align the ledger's open orders with
    the venue; returns the number of new fills.

    A ``planned`` order the venue knows was sent by a run that died before recording it: it
    takes the venue's state. A ``planned`` order the venue does not know whose session is
    over (``<= closed_through``, the newest session closed by the clock) was never sent and
    never will be: it expires. TWAP parents follow their children."""
    # Adopt what a dead run sent before its fills land (so the venue order id is kept).
    for order in _open_leaves(ledger, account_id, OrderStatus.PLANNED):
        remote = venue.order(order.order_id)
        if remote is not None:
            ledger.update_order(order.order_id, status=sent_status(remote), actor=actor,
                                venue_order_id=remote.venue_order_id, reason=remote.reason)
    new = sum(ledger.record_fill(f, actor=actor) for f in venue.fills(account_id, until))
    for order in _open_leaves(ledger, account_id):
        remote = venue.order(order.order_id)
        if remote is not None and remote.status != order.status:
            ledger.update_order(order.order_id, status=remote.status, actor=actor,
                                venue_order_id=remote.venue_order_id, reason=remote.reason)
        elif remote is None and order.status is OrderStatus.PLANNED \
                and closed_through is not None and order.session <= closed_through:
            ledger.update_order(order.order_id, status=OrderStatus.EXPIRED, actor=actor,
                                reason=f"never sent: session {order.session} closed")
    sync_parents(ledger, account_id=account_id, actor=actor)
    return new


def _open_leaves(ledger: Ledger, account_id: str, status: OrderStatus | None = None
                 ) -> list[OrderRecord]:
    """Orders of the account that are not final and not TWAP parents (``status``: only those)."""
    orders = ledger.orders(account_id=account_id, status=status)
    parents = {o.parent_order_id for o in ledger.orders(account_id=account_id)
               if o.parent_order_id is not None}
    return [o for o in orders if not o.status.is_final and o.order_id not in parents]


def sent_status(remote: VenueOrder) -> OrderStatus:
    """The ledger status of an order the venue has just answered for: at least submitted."""
    return remote.status if remote.status is not OrderStatus.PLANNED else OrderStatus.SUBMITTED


def sync_parents(ledger: Ledger, *, actor: str, account_id: str | None = None,
                 signal_id: str | None = None) -> None:
    """A TWAP parent is never sent itself: its state is its children's."""
    orders = ledger.orders(account_id=account_id, signal_id=signal_id)
    open_ids = {o.order_id for o in orders if not o.status.is_final}
    for parent_id in sorted({o.parent_order_id for o in orders if o.parent_order_id} & open_ids):
        ledger.sync_parent(parent_id, actor=actor)


def kill_switch_reason(ledger: Ledger, account_id: str, env_engaged: bool) -> str | None:
    if env_engaged:
        return "kill switch engaged by environment (ETF_EXECUTION__KILL_SWITCH)"
    state = ledger.kill_switch(account_id)
    if state.engaged:
        return f"kill switch engaged by {state.actor}: {state.reason}"
    return None


def execute_signal(*, ledger: Ledger, venue: ExecutionVenue, signal_id: str, account_id: str,
                   market: MarketView, limits: RiskLimits, costs: CostModel, actor: str,
                   kill_switch_env: bool = False, twap_slices: int = 1,
                   profile: ProfileSource = None,
                   dagster_run_id: str | None = None, lock: AccountLock | None = None,
                   on_submitted: Callable[[OrderRecord], None] | None = None,
                   conduct: ConductRules | None = None) -> ExecutionReport:
    """Execute ``signal_id`` (see module doc). The caller holds the account ``lock``, checked
    before every order. The venue account is funded with the ledger's initial cash the first
    time (a paper venue). ``twap_slices`` > 1 slices each order: TWAP, or VWAP over
    ``profile`` when it is given (trading.twap; a callable is asked only when the signal's
    orders are not planned yet, so a retry of a planned execution needs no profile)."""
    signal = ledger.signal(signal_id)
    if signal is None:
        raise ExecutionRefused(f"signal {signal_id} is not in the ledger")
    if signal.status is not SignalStatus.APPROVED:
        raise ExecutionRefused(f"signal {signal_id} is {signal.status}: nothing is executed "
                               f"({'; '.join(r.get('message', '') for r in signal.reasons)})")
    if signal.account_id != account_id:
        raise ExecutionRefused(f"signal {signal_id} belongs to account {signal.account_id}, "
                               f"not {account_id}")
    conduct = conduct or ConductRules()
    # The VWAP profile is made before the ledger records anything of this execution, and only
    # when its orders are not planned yet (a retry sends the stored plan): a profile that
    # cannot be made (too few bars) fails here, with nothing half-done.
    plan_profile = None if ledger.orders(signal_id=signal_id) else _resolved(profile)
    report = ExecutionReport(signal_id=signal_id, status="completed")
    started = ledger.start_execution(signal_id, account_id, dagster_run_id=dagster_run_id,
                                     actor=actor)
    venue.open_account(account_id, ledger.initial_cash(account_id))
    # Every session the clock has closed can be matched (late: the order session too, so a
    # dead run's sent orders fill before anything unsent is halted).
    report.new_fills += reconcile(ledger, venue, account_id, actor=actor,
                                  until=max(market.signal_day,
                                            market.closed_through or market.signal_day),
                                  closed_through=market.closed_through)
    if started.status in EXECUTION_FINAL:     # a replay of a finished execution sends nothing
        report.status = started.status
        report.orders = ledger.orders(signal_id=signal_id)
        return report

    orders = ledger.orders(signal_id=signal_id)
    stop = kill_switch_reason(ledger, account_id, kill_switch_env) or _session_over(market)
    if stop is not None:
        return _halt(ledger, venue, report, orders, stop, actor)
    report.crossed = _cross_strategies(ledger, signal_id, market, actor)
    if not orders:
        orders = _plan(ledger, report, signal_id, signal.weights, account_id, market, limits,
                       costs, twap_slices, plan_profile, actor, conduct)

    sendable = _sendable(orders)
    for position, order in enumerate(sendable):
        if lock is not None:
            lock.ensure()
        stop = kill_switch_reason(ledger, account_id, kill_switch_env)
        if stop is not None:
            return _halt(ledger, venue, report, ledger.orders(signal_id=signal_id), stop, actor)
        breach = pace_violation(ledger.order_pace(account_id, order.session), conduct,
                                _check_of(order))
        if breach is not None:
            return _stop_stream(ledger, report, sendable[position:], breach, actor,
                                market.signal_day)
        remote = venue.submit(order_request(order))
        stored = ledger.update_order(order.order_id, status=sent_status(remote), actor=actor,
                                     venue_order_id=remote.venue_order_id, reason=remote.reason)
        report.submitted += 1
        if on_submitted is not None:
            on_submitted(stored)
    sync_parents(ledger, signal_id=signal_id, actor=actor)

    report.new_fills += reconcile(ledger, venue, account_id, actor=actor,
                                  until=market.order_session,
                                  closed_through=market.closed_through)
    report.orders = ledger.orders(signal_id=signal_id)
    ledger.finish_execution(signal_id, "completed", actor=actor,
                            reason=f"{report.submitted} submitted, {len(report.rejected)} "
                            "rejected by pre-trade risk")
    return report


def _cross_strategies(ledger: Ledger, signal_id: str, market: MarketView, actor: str) -> int:
    """A signal netting several strategies (recorded parts): their opposite wishes settle
    inside the account on the order session, at the parts' reference prices, before anything
    is sent (no order, no fee); its fills are then attributed by ``Ledger.record_fill``.
    Idempotent: a retried execution finds the crossings booked. Returns the units crossed."""
    if ledger.signal_parts(signal_id) is None:
        return 0
    crossed = ledger.book_crossings(signal_id, session=market.order_session, actor=actor)
    return sum(c.units for c in crossed)


def _session_over(market: MarketView) -> str | None:
    """Orders are for the session after the signal: once it has closed they are never sent
    (a recovered or replayed execution must not trade a day that is over)."""
    if market.closed_through is not None and market.order_session <= market.closed_through:
        return (f"order session {market.order_session} closed (clock: "
                f"{market.closed_through}) before the orders were sent")
    return None


def _sendable(orders: Sequence[OrderRecord]) -> list[OrderRecord]:
    """The planned orders that go to the venue: whole orders and TWAP children, never a parent
    (its children, already in the ledger, are what is sent)."""
    parents = {o.parent_order_id for o in orders if o.parent_order_id is not None}
    return [o for o in orders if o.status is OrderStatus.PLANNED and o.order_id not in parents]


def _book_after_open_orders(ledger: Ledger, account_id: str, signal_id: str, costs: CostModel
                            ) -> tuple[dict[str, int], float]:
    """Positions and cash as they stand once every open order of the account (other signals'
    orders not yet final, sent or not) is done: open sells' units leave, open buys' units
    arrive and their cost with commission is reserved. Sale proceeds are not counted until
    filled. Planning from this book is what keeps two signals from spending the same cash."""
    positions = {s: p.quantity for s, p in ledger.positions(account_id).items()}
    cash = ledger.cash(account_id)
    orders = ledger.orders(account_id=account_id)
    parents = {o.parent_order_id for o in orders if o.parent_order_id is not None}
    for o in orders:
        if o.status.is_final or o.order_id in parents or o.signal_id == signal_id:
            continue
        left = o.quantity - o.filled_quantity
        if o.side is Side.BUY:
            positions[o.symbol] = positions.get(o.symbol, 0) + left
            cash -= left * o.reference_price + costs.commission(left * o.reference_price)
        else:
            positions[o.symbol] = positions.get(o.symbol, 0) - left
    return {s: q for s, q in positions.items() if q > 0}, cash


def _bought_in_session(ledger: Ledger, account_id: str, market: MarketView) -> dict[str, int]:
    """Units of T+1 funds bought in the orders' session: no sell of that session may use them."""
    bought: dict[str, int] = {}
    for f in ledger.fills(account_id):
        if f.session == market.order_session and f.side is Side.BUY:
            bought[f.symbol] = bought.get(f.symbol, 0) + int(f.quantity)
    return unsellable_units(bought, {s: q.same_session_sell for s, q in market.quotes.items()})


def _plan(ledger: Ledger, report: ExecutionReport, signal_id: str, weights: Mapping[str, float],
          account_id: str, market: MarketView, limits: RiskLimits, costs: CostModel,
          twap_slices: int, profile: VolumeProfile | None, actor: str, conduct: ConductRules
          ) -> list[OrderRecord]:
    positions, cash = _book_after_open_orders(ledger, account_id, signal_id, costs)
    closes = market.last_close()
    missing = sorted(s for s in set(weights) | set(positions)
                     if s not in closes and (weights.get(s, 0.0) > 0 or positions.get(s)))
    # A fund without a bar on the signal day cannot be valued or traded: risk rejects it below.
    planned = plan_orders({s: w for s, w in weights.items() if s not in missing},
                          {s: q for s, q in positions.items() if s not in missing},
                          max(cash, 0.0), closes, costs=costs,
                          held_back=frozenset(s for s, q in market.quotes.items()
                                              if not q.sale_cash_same_day))
    equity = cash + sum(q * closes.get(s, 0.0) for s, q in positions.items())
    after = dict(positions)
    for p in planned:
        after[p.symbol] = after.get(p.symbol, 0) + (p.quantity if p.side == "buy"
                                                    else -p.quantity)
    checks = [order_check_of(p, order_id_of(signal_id, p.symbol, Side(p.side)))
              for p in planned]
    if market.now is not None:
        checks = checks_at_reference(checks, now=market.now, last_close=closes,
                                     live=market.live, max_age=market.live_max_age)
    limit_up = {s for s, q in market.quotes.items()
                if limit_state(q.close, q.previous_close, q.price_limit) == "up"}
    limit_down = {s for s, q in market.quotes.items()
                  if limit_state(q.close, q.previous_close, q.price_limit) == "down"}
    misconduct = order_violations(
        checks, conduct, held_by_us=ledger.units_held_by_all(),
        opposite_elsewhere=ledger.open_sides_elsewhere(account_id, market.order_session))
    _, rejected = check_orders(
        checks, last_close=closes, limit_up_close=limit_up, limit_down_close=limit_down,
        halted=set(missing), committed_notional=ledger.committed_notional(
            account_id, market.order_session),
        equity=equity, positions_value_after=sum(q * closes.get(s, 0.0)
                                                 for s, q in after.items()),
        limits=limits, unsellable=_bought_in_session(ledger, account_id, market),
        average_amount=market.average_amount, conduct=misconduct)
    violations: dict[str, list[RiskViolation]] = {}
    for c, v in rejected:
        violations.setdefault(c.order_id, []).append(v)
        report.rejected.append({"order_id": c.order_id, **v.as_dict()})
    records = []
    for p, c in zip(planned, checks, strict=True):
        found = violations.get(c.order_id, [])
        parent = OrderRecord(
            order_id=c.order_id, signal_id=signal_id, account_id=account_id, symbol=p.symbol,
            side=Side(p.side), quantity=p.quantity, reference_price=p.reference_price,
            session=market.order_session,
            status=OrderStatus.REJECTED if found else OrderStatus.PLANNED,
            reason=reason_text(found) or p.reason)
        records.extend(_with_slices(parent, 1 if found else twap_slices, costs.lot_size,
                                    profile))
    for symbol in missing:
        ledger.audit(AuditEntry(actor=actor, action="order_not_planned", entity="signal",
                                entity_id=signal_id, reason=f"instrument/halted: {symbol} has no "
                                f"bar on {market.signal_day}; not traded",
                                details={"symbol": symbol}))
        report.rejected.append({"order_id": "", "layer": "instrument", "rule": "halted",
                                "subject": symbol,
                                "message": f"{symbol} has no bar on {market.signal_day}"})
    breaches = [v for found in misconduct.values() for v in found]
    too_many = plan_violation(_leaves(records), ledger.order_pace(
        account_id, market.order_session), conduct)
    if too_many is not None:
        # Refused whole before anything is sent: a stream stopped half-way would leave the
        # book half-rotated (the sells sent, the buys not).
        records = [_refused(r, too_many) for r in records]
        breaches.append(too_many)
        report.rejected.append({"order_id": "", **too_many.as_dict()})
    # Write-ahead: every order, TWAP children included, is in the ledger (one transaction,
    # with the conduct breaches) before the first one is sent; a retry sends exactly these,
    # whatever the settings now.
    return ledger.record_orders(records, actor=actor, audits=[
        *(_breach_entry(account_id, signal_id, b, actor, market.signal_day) for b in breaches),
        *_slicing_entries(records, profile, actor)])


def _leaves(records: Sequence[OrderRecord]) -> int:
    """Orders of a plan that go to the venue: whole orders and TWAP children."""
    parents = {r.parent_order_id for r in records if r.parent_order_id is not None}
    return sum(1 for r in records
               if r.status is OrderStatus.PLANNED and r.order_id not in parents)


def _refused(record: OrderRecord, breach: RiskViolation) -> OrderRecord:
    if record.status is not OrderStatus.PLANNED:
        return record
    return dataclasses.replace(record, status=OrderStatus.REJECTED,
                               reason=reason_text([breach]))


def _breach_entry(account_id: str, signal_id: str, breach: RiskViolation, actor: str,
                  as_of: dt.date) -> AuditEntry:
    """A conduct breach for the audit log, where the alert sensor and the day's compliance
    report (of the signal's day) find it."""
    return AuditEntry(actor=actor, action="conduct_breach", entity="account",
                      entity_id=account_id, reason=breach.message,
                      details={**breach.as_dict(), "signal_id": signal_id,
                               "as_of": as_of.isoformat()})


def _check_of(order: OrderRecord) -> OrderCheck:
    return OrderCheck(order_id=order.order_id, symbol=order.symbol, side=order.side.value,
                      quantity=order.quantity, reference_price=order.reference_price,
                      closes_position=False)


def _stop_stream(ledger: Ledger, report: ExecutionReport, unsent: Sequence[OrderRecord],
                 breach: RiskViolation, actor: str, as_of: dt.date) -> ExecutionReport:
    """The order rate or cancel ratio is reached: ``unsent`` (this order and every one after
    it) is rejected and never sent; what was already sent keeps working at the venue."""
    reason = reason_text([breach])
    # Audited first: a run that dies while rejecting has still reported the breach.
    ledger.audit(_breach_entry(unsent[0].account_id, report.signal_id, breach, actor, as_of))
    for order in unsent:
        ledger.update_order(order.order_id, status=OrderStatus.REJECTED, actor=actor,
                            reason=reason)
        report.rejected.append({"order_id": order.order_id, **breach.as_dict()})
    return _halted(ledger, report, reason, actor)


def _slicing_entries(records: Sequence[OrderRecord], profile: VolumeProfile | None,
                     actor: str) -> list[AuditEntry]:
    """The slicing plan of each sliced parent, for the ledger: the algorithm, the children's
    sizes by slice and, for VWAP, the profile it followed."""
    children: dict[str, list[OrderRecord]] = {}
    for r in records:
        if r.parent_order_id is not None:
            children.setdefault(r.parent_order_id, []).append(r)
    return [AuditEntry(
        actor=actor, action="order_sliced", entity="order", entity_id=parent_id,
        reason="vwap" if profile is not None else "twap",
        details={"algorithm": "vwap" if profile is not None else "twap",
                 "slices": kids[0].slices,
                 "sizes": {str(k.slice_index): k.quantity for k in kids},
                 **({"profile": profile.as_dict()} if profile is not None else {})})
        for parent_id, kids in children.items()]


def _with_slices(parent: OrderRecord, slices: int, lot_size: int,
                 profile: VolumeProfile | None = None) -> list[OrderRecord]:
    """The parent and, when it is sliced, its TWAP (or VWAP over ``profile``) children
    (trading.twap.child_orders)."""
    weights = profile.slice_weights(slices) if profile is not None and slices > 1 else None
    children = child_orders(order_request(parent), slices, lot_size, weights)
    if len(children) == 1:
        return [parent]
    return [dataclasses.replace(parent, slices=len(children)), *(
        dataclasses.replace(parent, order_id=c.client_order_id, quantity=c.quantity,
                            parent_order_id=parent.order_id, slice_index=c.slice_index,
                            slices=c.slices, reason=None)
        for c in children)]


def order_request(order: OrderRecord) -> OrderRequest:
    """What the venue is sent for a recorded order (its client id is the ledger's)."""
    return OrderRequest(client_order_id=order.order_id, account_id=order.account_id,
                        symbol=order.symbol, side=order.side, quantity=order.quantity,
                        session=order.session, reference_price=order.reference_price,
                        parent_order_id=order.parent_order_id, slice_index=order.slice_index,
                        slices=order.slices)


def _halt(ledger: Ledger, venue: ExecutionVenue, report: ExecutionReport,
          orders: Sequence[OrderRecord], reason: str, actor: str) -> ExecutionReport:
    """Nothing more is submitted: planned orders are cancelled in the ledger, open ones at the
    venue (a TWAP parent through its children)."""
    parents = {o.parent_order_id for o in orders if o.parent_order_id is not None}
    for order in orders:
        if order.status.is_final or order.order_id in parents:
            continue
        if order.status is not OrderStatus.PLANNED:
            remote = venue.cancel(order.order_id)
            ledger.update_order(order.order_id, status=remote.status, actor=actor,
                                venue_order_id=remote.venue_order_id, reason=reason)
        else:
            ledger.update_order(order.order_id, status=OrderStatus.CANCELLED, actor=actor,
                                reason=reason)
    return _halted(ledger, report, reason, actor)


def _halted(ledger: Ledger, report: ExecutionReport, reason: str, actor: str
            ) -> ExecutionReport:
    """The execution ends halted: TWAP parents follow their children, the ledger records
    why."""
    sync_parents(ledger, signal_id=report.signal_id, actor=actor)
    report.status = "halted"
    report.notes.append(reason)
    report.orders = ledger.orders(signal_id=report.signal_id)
    ledger.finish_execution(report.signal_id, "halted", actor=actor, reason=reason)
    log.warning("signal %s halted: %s", report.signal_id, reason)
    return report

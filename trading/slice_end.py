"""Cancel/replace at the end of a slice (issue 18 item 4): the unfilled remainder of a sliced
(TWAP or VWAP) order is carried into the next slice, never doubled and never lost.

:func:`close_slice` is called when slice k of a parent ends (``trading.session_clock.slice_end``:
halfway to slice k+1's scheduled time; the last slice at the close; :func:`slices_due` lists
the slices whose end has passed with orders still open). For each order of slice k
(the slice's own child and a replacement carried into it) still open in the ledger:

1. cancel it at the venue — idempotent: a final order comes back unchanged, and a fill that won
   the race is in the state returned (the venue's own word on what filled);
2. record every venue fill in the ledger (without advancing the venue's market), so the ledger
   holds what filled before the cancel;
3. remainder = quantity − filled of a *cancelled* order (a filled one has none; one the venue
   itself ended — no bar, limit-up, cash — is not chased). In slice k < n, the replacement
   ``order_id_of(<cancelled id>, symbol, side, k + 1)`` with ``slice_index`` k + 1,
   ``replaces`` = the cancelled id and that remainder is recorded in the ledger (write-ahead);
   the cancelled order then moves to ``cancelled`` with the reason ``slice_end``; in the last
   slice the remainder is not carried: the order stays cancelled (``slice_end_last``) and
   the parent ends ``cancelled`` with what filled;
4. the replacement is sent unless the kill switch is engaged (then it is cancelled unsent).

Every step can be repeated. A crash after the cancel: the rerun's cancel returns the same final
state, so the same remainder, so the same replacement id. After the replacement is recorded: the
rerun finds it (an order is replaced at most once, ``orders.replaces`` is unique) and sends it;
after it was sent: the venue knows the id and does not send it again. Total filled over the
chain is therefore at most the parent's quantity.

Venues: the slicing's children are market orders for the paper broker and the vn.py venue; an
order is open there until the venue's market reaches it (the paper broker's session match, the
test venue's ``replay_session``), which is when a slice's child is still unfilled at its end.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from trading.executor import kill_switch_reason, order_request, sent_status, sync_parents
from trading.ledger import AccountLock, Ledger, OrderRecord
from trading.models import OrderStatus, VenueOrder
from trading.session_clock import SHANGHAI, slice_end
from trading.twap import replacement_order_id
from trading.venue import ExecutionVenue

log = logging.getLogger(__name__)

REASON_SLICE_END = "slice_end"
# A replacement recorded in its session but not sent before the close: not sent into another.
REASON_SESSION_OVER = "session_over: the session closed before it was sent"
# The venues whose sliced children can still be open when their slice ends: the vn.py venue's
# rest at the broker (or the test venue) until its market reaches them. The paper broker fills
# each child at its scheduled time when it matches the session (trading.paper): nothing rests
# past its slice end there, so no slice of a paper account is closed.
SLICE_CLOSING_VENUES = frozenset({"vnpy"})
REASON_LAST_SLICE = "slice_end_last"
_SENT_OPEN = (OrderStatus.SUBMITTED, OrderStatus.PARTIALLY_FILLED)


class SliceError(ValueError):
    """The slice cannot be closed (unknown or unsliced parent, slice out of range)."""


class SliceNotEnded(SliceError):
    """The slice has not ended by the caller's clock: closing it now would cancel a child the
    plan still gives time (a clock behind the driver's, a run launched by hand early)."""

    def __init__(self, message: str, ends: dt.datetime) -> None:
        super().__init__(message)
        self.ends = ends


@dataclass
class SliceEnd:
    """What :func:`close_slice` did."""

    parent_order_id: str
    slice_index: int
    cancelled: list[str] = field(default_factory=list)
    replacements: list[OrderRecord] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    dropped_units: int = 0              # the last slice's remainder, not carried
    new_fills: int = 0                  # venue fills recorded in the ledger by this close
    notes: list[str] = field(default_factory=list)


def closes_slices(venue: str) -> bool:
    """Whether the slices of an account on ``venue`` (``Account.venue``) are closed at their
    ends (:data:`SLICE_CLOSING_VENUES`)."""
    return venue in SLICE_CLOSING_VENUES


def slices_due(ledger: Ledger, account_id: str, now: dt.datetime) -> list[tuple[str, int]]:
    """(parent id, slice index) of every slice of the account's session of ``now`` (aware)
    that has ended by ``now`` and still has orders open at the venue, earliest end first: what
    an intraday driver passes to :func:`close_slice`. An earlier session's open orders are not
    slices to close (nothing is carried into another day): the executor's reconcile settles
    them before that account trades again."""
    today = now.astimezone(SHANGHAI).date()
    due: set[tuple[dt.datetime, str, int]] = set()
    # Only what can still be due (open at the venue, or a recorded replacement): the driver
    # asks every 30 s and the account's orders grow with every session.
    for o in ledger.orders(account_id=account_id, statuses=(*_SENT_OPEN, OrderStatus.PLANNED)):
        # A child's ``slices`` is its plan's n (a VWAP slice without a lot has no child, so
        # the parent's count of children is not n).
        if o.parent_order_id is None or not 1 <= o.slice_index <= o.slices \
                or o.session != today:
            continue
        if o.status in _SENT_OPEN:
            due.add((slice_end(o.session, o.slice_index, o.slices), o.parent_order_id,
                     o.slice_index))
        elif o.status is OrderStatus.PLANNED and o.replaces is not None:
            # Recorded but not sent (the closing run died in between): the slice it carries
            # on from is closed again, which sends it.
            due.add((slice_end(o.session, o.slice_index - 1, o.slices), o.parent_order_id,
                     o.slice_index - 1))
    return [(parent, k) for end, parent, k in sorted(due) if end <= now]


def replacement_id(order: OrderRecord, next_slice: int) -> str:
    """The replacement's client id: deterministic in the order it replaces."""
    return replacement_order_id(order.order_id, order.symbol, order.side, next_slice)


def close_slice(ledger: Ledger, venue: ExecutionVenue, *, parent_order_id: str,
                slice_index: int, actor: str, kill_switch_env: bool = False,
                lock: AccountLock | None = None, now: dt.datetime | None = None) -> SliceEnd:
    """End slice ``slice_index`` (1..n) of ``parent_order_id`` (module docstring). ``now``
    (aware; the driver's clock): a slice is not closed before its end, and from the session's
    close on nothing is carried or sent (as for the last slice: a remainder is not taken into
    another day). None: the caller vouches for the time (tests of the steps)."""
    parent = ledger.order(parent_order_id)
    if parent is None:
        raise SliceError(f"close_slice: order {parent_order_id} is not in the ledger")
    if parent.slices <= 1 or parent.parent_order_id is not None:
        raise SliceError(f"close_slice: order {parent_order_id} is not a sliced parent "
                         f"(slices {parent.slices})")
    n = _plan_slices(ledger, parent)
    if not 1 <= slice_index <= n:
        raise SliceError(f"close_slice: slice {slice_index} of {parent_order_id} is not one "
                         f"of 1..{n}")
    closed = _check_time(parent, slice_index, n, now)
    done = SliceEnd(parent_order_id, slice_index)
    last = slice_index == n or closed
    for order in _slice_orders(ledger, parent, slice_index):
        if lock is not None:
            lock.ensure()
        replacement = _replacement_of(ledger, order, n)
        if order.status is OrderStatus.PLANNED:
            # Never sent (its run died before): the executor's reconcile adopts or expires
            # it; nothing here to cancel.
            done.notes.append(f"{order.order_id}: still planned, not sent")
            continue
        if not order.status.is_final:
            # Idempotent: after a crash the cancel returns the same final state.
            remote = venue.cancel(order.order_id)
            done.new_fills += _record_fills(ledger, venue, order, actor)
            left = _remainder(remote)
            done.cancelled.append(order.order_id)
            if left and not last:
                if replacement is None:
                    replacement = ledger.record_orders(
                        [_replacing(order, left, slice_index + 1)], actor=actor)[0]
            elif left and replacement is None:      # a recorded one is counted below
                done.dropped_units += left
            ledger.update_order(order.order_id, status=remote.status, actor=actor,
                                venue_order_id=remote.venue_order_id,
                                reason=_reason(remote, left, last,
                                               None if closed else replacement))
        if replacement is None or replacement.status is not OrderStatus.PLANNED:
            continue
        done.replacements.append(replacement)
        stop = REASON_SESSION_OVER if closed else \
            kill_switch_reason(ledger, parent.account_id, kill_switch_env)
        if stop is not None:
            ledger.update_order(replacement.order_id, status=OrderStatus.CANCELLED,
                                actor=actor, reason=stop)
            if closed:      # not carried into another session, as a last slice's remainder
                done.dropped_units += replacement.quantity
            done.notes.append(f"{replacement.order_id}: not sent: {stop}")
            continue
        sent = venue.submit(order_request(replacement))
        ledger.update_order(replacement.order_id, status=sent_status(sent), actor=actor,
                            venue_order_id=sent.venue_order_id, reason=sent.reason)
        done.sent.append(replacement.order_id)
    sync_parents(ledger, signal_id=parent.signal_id, actor=actor)
    log.info("slice %s/%s of %s closed: cancelled %s, replaced by %s", slice_index,
             n, parent_order_id, done.cancelled,
             [r.order_id for r in done.replacements])
    return done


def _check_time(parent: OrderRecord, slice_index: int, n: int, now: dt.datetime | None
                ) -> bool:
    """Whether the parent's session has closed by ``now``; :class:`SliceError` before the
    slice's end (a launch by hand, a clock gone wrong: closing early would cancel a child the
    plan still gives time)."""
    if now is None:
        return False
    ends = slice_end(parent.session, slice_index, n)
    if now < ends:
        raise SliceNotEnded(f"close_slice: slice {slice_index} of {parent.order_id} ends at "
                            f"{ends.isoformat()}; it is not closed before (now "
                            f"{now.isoformat()})", ends)
    return now >= slice_end(parent.session, n, n)


def _slice_orders(ledger: Ledger, parent: OrderRecord, slice_index: int) -> list[OrderRecord]:
    return [o for o in ledger.orders(signal_id=parent.signal_id)
            if o.parent_order_id == parent.order_id and o.slice_index == slice_index]


def _plan_slices(ledger: Ledger, parent: OrderRecord) -> int:
    """n of the parent's slicing plan: its children's ``slices`` (the parent's own count is
    of its children, fewer when a VWAP slice got no lot)."""
    return max((o.slices for o in ledger.orders(signal_id=parent.signal_id)
                if o.parent_order_id == parent.order_id), default=parent.slices)


def _replacement_of(ledger: Ledger, order: OrderRecord, n: int) -> OrderRecord | None:
    return ledger.order(replacement_id(order, order.slice_index + 1)) \
        if order.slice_index < n else None


def _record_fills(ledger: Ledger, venue: ExecutionVenue, order: OrderRecord, actor: str) -> int:
    """The venue's fills into the ledger, its market not advanced (``until`` before the
    order's session: no session of this order is matched by the call); how many were new."""
    return sum(ledger.record_fill(fill, actor=actor) for fill in
               venue.fills(order.account_id, until=order.session - dt.timedelta(days=1)))


def _remainder(remote: VenueOrder) -> int:
    """What a slice-end cancel leaves to carry: only a cancelled order's unfilled units."""
    if remote.status is not OrderStatus.CANCELLED:
        return 0
    return max(int(remote.quantity) - int(remote.filled_quantity), 0)


def _replacing(order: OrderRecord, left: int, next_slice: int) -> OrderRecord:
    return OrderRecord(
        order_id=replacement_id(order, next_slice), signal_id=order.signal_id,
        account_id=order.account_id, symbol=order.symbol, side=order.side, quantity=left,
        reference_price=order.reference_price, session=order.session,
        parent_order_id=order.parent_order_id, slice_index=next_slice, slices=order.slices,
        reason=f"{REASON_SLICE_END}: carries {left} unfilled of {order.order_id}",
        replaces=order.order_id)


def _reason(remote: VenueOrder, left: int, last: bool, replacement: OrderRecord | None
            ) -> str | None:
    if remote.status is not OrderStatus.CANCELLED:
        return remote.reason       # filled (or ended by the venue) before the cancel
    if replacement is not None:
        return f"{REASON_SLICE_END}: {left} carried to {replacement.order_id}"
    if last and left:
        return f"{REASON_LAST_SLICE}: {left} unfilled at the close, not carried"
    return REASON_SLICE_END

"""TWAP and VWAP slicing through the execution-venue interface (SPEC §9, requirement 002 §2.4).

One slicing for both: TWAP spreads a parent's lots evenly over ``n`` slices, VWAP in proportion
to an intraday volume profile's volume in each slice (:mod:`trading.volume_profile`,
``VolumeProfile.slice_weights``). The slices are the same scheduled times either way (child k
of n at fraction (k−1)/(n−1) of the session, ``trading.paper.child_schedule``), so the paper
broker prices TWAP and VWAP children alike; only the sizes differ.

:class:`TwapVenue` wraps any :class:`trading.venue.ExecutionVenue` and is one itself. A parent
order is split into ``n`` child orders sent to the wrapped venue; the caller keeps talking about
the parent id (``submit`` / ``order`` / ``cancel`` return the parent's aggregated state), while
``fills`` passes the wrapped venue's execution reports through unchanged, so fills carry the
*child* ids (:meth:`TwapVenue.children` maps a parent to them).

Splitting (a pure function of the parent, so a resubmission after a crash or a retry recreates
exactly the same children and the wrapped venue's idempotency makes it a no-op):

* ``n`` = ``parent.slices`` when it is > 1, else the venue's default ``slices``; ``n <= 1`` or
  an order that is itself a child (``parent_order_id`` set) passes through unsplit.
* TWAP: the parent's whole lots are spread evenly, the remainder lots on the last children;
  fewer children when there are fewer lots than slices (respaced over the session). VWAP: lots
  in proportion to the slice weights by largest remainder (ties to the later slices); a slice
  that gets no lot has no child (the others keep their slice's time). A closing sell's odd
  remainder (< one lot) goes into the last child either way. A parent that cannot be split
  (non-positive, or an odd-lot buy) is sent as one child so that the wrapped venue rejects it
  durably.
* The child of slice k (1..n) has client id ``order_id_of(parent_id, symbol, side, k)``,
  ``parent_order_id`` = parent id, ``slice_index`` = k (the index in its id; 0 is reserved
  for a whole, unsliced order, so a child never collides with its parent on
  (signal, symbol, side, slice_index)) and ``slices`` = n (TWAP: the number of children).

Aggregated status of a parent: while any child is open, ``partially_filled`` if some quantity
filled, else ``submitted``. Once every child is final: ``filled`` if all filled, ``cancelled``
if any was cancelled, ``rejected`` if all were rejected, otherwise ``expired`` (with the filled
quantity, if any). ``partially_filled`` is therefore never reported for a finished parent, so a
caller waiting for a final state is not left hanging. A child cancelled at its slice end whose
remainder a replacement carries on (:mod:`trading.slice_end`; found at the venue by its
deterministic id, :func:`replacement_order_id`) counts for what it filled, and the replacement
for its own quantity: the parent's quantity stays the parent's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import numbers
import threading
from collections.abc import Collection, Sequence

from trading.models import Fill, OrderRequest, OrderStatus, Side, VenueOrder, order_id_of
from trading.venue import ExecutionVenue, UnknownOrder
from trading.volume_profile import VolumeProfile


def split_quantity(quantity: int, slices: int, lot_size: int,
                   weights: Sequence[float] | None = None) -> list[int]:
    """Child sizes of a sliced parent: whole lots spread over the slices in proportion to
    ``weights`` (unset: equal, TWAP), an odd remainder on the last child, at most ``lots``
    children. Lots go by largest remainder, ties to the later slices (so equal weights give
    TWAP's even spread with the remainder lots on the last children). Slices that get no lot
    are dropped: see :func:`slice_sizes` for the sizes by slice."""
    return [size for _, size in slice_sizes(quantity, slices, lot_size, weights)]


def slice_sizes(quantity: int, slices: int, lot_size: int,
                weights: Sequence[float] | None = None) -> list[tuple[int, int]]:
    """(slice number 1..n, size) of each non-empty child (see :func:`split_quantity`); n is
    ``min(slices, lots)`` for TWAP (the children respaced over the session) and ``slices``
    for VWAP (each child at its slice's time)."""
    if slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")
    lots, odd = divmod(quantity, lot_size)
    if quantity <= 0 or lots == 0:
        return [(1, quantity)]
    if weights is None:
        n = min(slices, lots)
        base, extra = divmod(lots, n)
        sizes = [(base + (1 if k >= n - extra else 0)) * lot_size for k in range(n)]
    else:
        if len(weights) != slices:
            raise ValueError(f"{len(weights)} slice weights for {slices} slices")
        sizes = [n_lots * lot_size for n_lots in _apportion(lots, weights)]
    numbered = [(k + 1, size) for k, size in enumerate(sizes) if size > 0]
    last_slice, last_size = numbered[-1]
    numbered[-1] = (last_slice, last_size + odd)
    return numbered


def _apportion(lots: int, weights: Sequence[float]) -> list[int]:
    """``lots`` whole lots in proportion to ``weights`` (largest remainder, ties to the later
    slices); deterministic."""
    if any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"slice weights must be >= 0 and not all 0, got {list(weights)}")
    total = float(sum(weights))
    quotas = [lots * w / total for w in weights]
    whole = [int(q) for q in quotas]
    # Rounded so that float noise does not decide between equal weights.
    order = sorted(range(len(quotas)), key=lambda k: (-round(quotas[k] - whole[k], 9), -k))
    for k in order[:lots - sum(whole)]:
        whole[k] += 1
    return whole


def replacement_order_id(order_id: str, symbol: str, side: Side, next_slice: int) -> str:
    """The client id of the order that carries ``order_id``'s unfilled remainder into slice
    ``next_slice`` at a slice end (:mod:`trading.slice_end`): deterministic in the order it
    replaces, so a venue's view of a parent finds its replacements without the ledger."""
    return order_id_of(order_id, symbol, side, next_slice)


def child_orders(parent: OrderRequest, slices: int, lot_size: int,
                 weights: Sequence[float] | None = None) -> list[OrderRequest]:
    """The children of ``parent`` (see the module doc): TWAP when ``weights`` is unset, else
    VWAP over those slice weights (``VolumeProfile.slice_weights``); ``[parent]`` when
    ``slices`` is 1. A pure function of its arguments: the executor records exactly these
    children in the ledger before the first one is sent."""
    if slices <= 1:
        return [parent]
    q = parent.quantity
    splittable = (isinstance(q, numbers.Integral) and not isinstance(q, bool) and q > 0
                  and not (parent.side == Side.BUY and q % lot_size))
    sized = slice_sizes(int(q), slices, lot_size, weights) if splittable else [(1, q)]
    # TWAP respaces fewer children over the session; VWAP keeps each at its slice's time.
    n = len(sized) if weights is None or not splittable else slices
    return [
        dataclasses.replace(
            parent,
            client_order_id=order_id_of(parent.client_order_id, parent.symbol,
                                        Side(parent.side), k),
            quantity=size, parent_order_id=parent.client_order_id, slice_index=k,
            slices=n,
        )
        for k, size in sized
    ]


class TwapVenue:
    """An :class:`ExecutionVenue` that slices each parent order into TWAP (or, with a
    ``profile``, VWAP) children.

    ``slices``: children per parent when the parent does not say (``parent.slices`` > 1 wins);
    ``lot_size``: defaults to the wrapped venue's ``costs.lot_size`` when it has one, else 100.
    """

    def __init__(self, inner: ExecutionVenue, *, slices: int | None = None,
                 lot_size: int | None = None, profile: VolumeProfile | None = None) -> None:
        if slices is not None and slices < 1:
            raise ValueError(f"slices must be >= 1, got {slices}")
        if lot_size is None:   # the wrapped venue's lot (the paper broker's costs), else 100
            costs = getattr(inner, "costs", None)
            lot_size = int(getattr(costs, "lot_size", 100))
        if lot_size < 1:
            raise ValueError(f"lot_size must be >= 1, got {lot_size}")
        self.inner = inner
        self.slices = slices
        self.lot_size = lot_size
        self.profile = profile
        self.name = f"{'twap' if profile is None else 'vwap'}:{inner.name}"
        self._plans: dict[str, list[OrderRequest]] = {}
        self._lock = threading.Lock()

    # -- planning ---------------------------------------------------------------------------
    def slices_for(self, parent: OrderRequest) -> int:
        if parent.parent_order_id is not None:
            return 1
        if parent.slices > 1:
            return parent.slices
        return self.slices or 1

    def plan(self, parent: OrderRequest) -> list[OrderRequest]:
        """The child orders of ``parent`` (deterministic; a single pass-through order when it
        is not sliced)."""
        n = self.slices_for(parent)
        weights = self.profile.slice_weights(n) if self.profile is not None and n > 1 else None
        return child_orders(parent, n, self.lot_size, weights)

    def children(self, parent_id: str) -> list[str]:
        """Client ids of the child orders of ``parent_id``, by slice index ([] for an unsliced
        order passed through, or an unknown id)."""
        return self._known_plan(parent_id) or []

    def request(self, client_order_id: str) -> OrderRequest | None:
        """The child order request as sent to the wrapped venue (slice index, slices), from
        this process's plans or the wrapped venue's own record (``request``)."""
        with self._lock:
            for plan in self._plans.values():
                for child in plan:
                    if child.client_order_id == client_order_id:
                        return child
        inner_request = getattr(self.inner, "request", None)
        return inner_request(client_order_id) if callable(inner_request) else None

    # -- ExecutionVenue ---------------------------------------------------------------------
    def open_account(self, account_id: str, cash: float) -> None:
        self.inner.open_account(account_id, cash)

    def submit(self, order: OrderRequest) -> VenueOrder:
        children = self.plan(order)
        if len(children) == 1 and children[0] is order:
            return self.inner.submit(order)
        with self._lock:
            self._plans[order.client_order_id] = children
        for child in children:
            self.inner.submit(child)
        aggregated = self.order(order.client_order_id)
        assert aggregated is not None
        return aggregated

    def order(self, client_order_id: str) -> VenueOrder | None:
        ids = self._known_plan(client_order_id)
        if ids is None:
            return self.inner.order(client_order_id)
        ids, replaced = self._with_replacements(ids)
        states = [self.inner.order(cid) for cid in ids]
        if all(s is None for s in states):
            return None
        with self._lock:
            plan = self._plans.get(client_order_id)
        planned = {c.client_order_id: c.quantity for c in plan} if plan else {}
        # A replaced child counts for what it filled: its remainder is its replacement's.
        return aggregate(client_order_id, states,
                         [planned.get(cid, 0) for cid in ids], replaced)

    def cancel(self, client_order_id: str) -> VenueOrder:
        ids = self._known_plan(client_order_id)
        if ids is None:
            return self.inner.cancel(client_order_id)
        for cid in self._with_replacements(ids)[0]:
            state = self.inner.order(cid)
            if state is not None and not state.status.is_final:
                self.inner.cancel(cid)
        aggregated = self.order(client_order_id)
        if aggregated is None:
            raise UnknownOrder(f"{self.name}: cancel {client_order_id}: no child order exists")
        return aggregated

    def fills(self, account_id: str, until: dt.date | None = None) -> Sequence[Fill]:
        return self.inner.fills(account_id, until)

    def cash(self, account_id: str) -> float:
        return self.inner.cash(account_id)

    def positions(self, account_id: str) -> dict[str, int]:
        return self.inner.positions(account_id)

    # -- helpers ----------------------------------------------------------------------------
    def _with_replacements(self, ids: Sequence[str]) -> tuple[list[str], set[str]]:
        """``ids`` (a parent's children) with every order the venue holds that carries a
        child's remainder on at a slice end (:func:`replacement_order_id`, followed down the
        chain), and the ids that were so replaced."""
        chain = list(ids)
        replaced: set[str] = set()
        todo = []
        for cid in ids:
            request = self.request(cid)
            if request is not None:
                todo.append((cid, request.symbol, Side(request.side), request.slice_index,
                             request.slices))
        while todo:
            cid, symbol, side, k, n = todo.pop()
            if not 1 <= k < n:          # the last slice's remainder is not carried
                continue
            successor = replacement_order_id(cid, symbol, side, k + 1)
            if successor not in chain:
                if self.inner.order(successor) is None:
                    continue
                chain.append(successor)
                todo.append((successor, symbol, side, k + 1, n))
            replaced.add(cid)
        return chain, replaced

    def _known_plan(self, parent_id: str) -> list[str] | None:
        """Child ids of a parent split by this process, else as the wrapped venue records
        them (``children_of``, e.g. the paper broker's ``parent_order_id``); None when the id
        is not a TWAP parent known here."""
        with self._lock:
            plan = self._plans.get(parent_id)
        if plan is not None:
            return [c.client_order_id for c in plan]
        children_of = getattr(self.inner, "children_of", None)
        if callable(children_of):
            ids = list(children_of(parent_id))
            if ids:
                return ids
        return None


def aggregate(parent_id: str, children: Sequence[VenueOrder | None],
              planned: Sequence[int] | None = None,
              replaced: Collection[str] = ()) -> VenueOrder:
    """The parent's view of its children (a missing child counts as open, with its planned
    quantity when known). A child in ``replaced`` (cancelled at its slice end, its remainder
    carried by a replacement among ``children``) counts for what it filled and as done."""
    planned = list(planned) if planned is not None else [0] * len(children)
    present = [c for c in children if c is not None]
    quantity = sum(p if c is None else c.filled_quantity if c.client_order_id in replaced
                   else c.quantity for c, p in zip(children, planned, strict=True))
    filled = sum(c.filled_quantity for c in present)
    notional = sum(c.filled_quantity * c.average_price for c in present
                   if c.filled_quantity and c.average_price is not None)
    reasons: list[str] = []
    for c in present:
        if c.client_order_id in replaced:
            continue
        for r in (c.reason or "").split(","):
            if r and r not in reasons:
                reasons.append(r)
    statuses = [c.status for c in present if c.client_order_id not in replaced]
    replaced_open = any(not c.status.is_final for c in present if c.client_order_id in replaced)
    if len(present) < len(children) or replaced_open or not all(s.is_final for s in statuses):
        status = OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.SUBMITTED
    elif all(s is OrderStatus.FILLED for s in statuses):
        status = OrderStatus.FILLED
    elif any(s is OrderStatus.CANCELLED for s in statuses):
        status = OrderStatus.CANCELLED
    elif statuses and all(s is OrderStatus.REJECTED for s in statuses):
        status = OrderStatus.REJECTED
    else:
        status = OrderStatus.EXPIRED
    return VenueOrder(client_order_id=parent_id, venue_order_id=f"twap-{parent_id}",
                      status=status, quantity=quantity, filled_quantity=filled,
                      average_price=notional / filled if filled else None,
                      reason=",".join(reasons) or None)

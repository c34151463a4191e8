"""The execution-venue contract (SPEC §9). The paper broker implements it, and so must any live
adapter (QMT, CTP, ...). ``trading.contract`` is the test suite every implementation passes.

Rules an implementation must keep:

1. ``submit`` is idempotent on ``client_order_id``: a second submit of the same id returns the
   existing order and creates nothing (a retried run may resubmit).
2. A venue never fills more than an order's quantity, never fills a buy at limit-up or a sell at
   limit-down, never fills without a bar, and never sells units bought in the same session
   (T+1). Quantities are whole lots except a sell that closes a position.
3. ``fills`` returns every execution report for the account, each with a ``fill_id`` that is
   stable across calls; callers de-duplicate by it. Reading fills never changes state other
   than letting the venue match what the market allows by now.
4. ``cancel`` of an open order stops further fills and returns the final state; cancelling a
   final order is a no-op returning that state; an unknown id raises ``UnknownOrder``.
5. ``order`` returns ``None`` for an unknown id.
6. Errors are exceptions derived from ``VenueError`` carrying a message naming the order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from trading.models import Fill, OrderRequest, VenueOrder


class VenueError(RuntimeError):
    """The venue refused or failed a request; the message names the order and why."""


class UnknownOrder(VenueError):
    pass


@runtime_checkable
class ExecutionVenue(Protocol):
    name: str

    def open_account(self, account_id: str, cash: float) -> None:
        """Make sure the account exists at the venue (paper: fund it once; live: verify)."""

    def submit(self, order: OrderRequest) -> VenueOrder: ...

    def cancel(self, client_order_id: str) -> VenueOrder: ...

    def order(self, client_order_id: str) -> VenueOrder | None: ...

    def fills(self, account_id: str, until: dt.date | None = None) -> Sequence[Fill]:
        """Every execution report of the account, matching first what the market allows up
        to ``until`` (a session date; None = everything available)."""
        ...

    def cash(self, account_id: str) -> float: ...

    def positions(self, account_id: str) -> dict[str, int]: ...

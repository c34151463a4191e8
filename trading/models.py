"""Value types shared by the ledger, the venues and the executor.

Quantities are raw units (whole lots of ``lot_size`` except a closing sell), prices raw CNY.
Every order carries a deterministic ``client_order_id`` that a venue must treat as an
idempotency key: submitting the same id twice creates one order.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderStatus(enum.StrEnum):
    PLANNED = "planned"            # in the ledger, not yet sent
    SUBMITTED = "submitted"        # accepted by the venue, waiting for the market
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"        # cancelled by us (kill switch, operator)
    EXPIRED = "expired"            # the session passed without a (complete) fill
    REJECTED = "rejected"          # refused by pre-trade risk or by the venue

    @property
    def is_final(self) -> bool:
        return self in {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED,
                        OrderStatus.REJECTED}


class SignalStatus(enum.StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    # Set aside by an audited re-decision before any of its orders reached a venue, so that
    # another signal can be approved for the same account and session.
    SUPERSEDED = "superseded"


def weights_hash(weights: Mapping[str, float]) -> str:
    """Hash of the target weights, rounded to 1e-10 so float noise does not change it."""
    canonical = json.dumps({str(k): round(float(v), 10) for k, v in sorted(weights.items())},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def signal_id_of(strategy: str, account_id: str, as_of: dt.date,
                 weights: Mapping[str, float]) -> str:
    """Deterministic signal id (SPEC §9): strategy, account, date and the weights hash. The
    account is part of it: the same target for two accounts is two decisions, each with its own
    money (and its own one-approved-signal-per-session slot)."""
    return f"{strategy}:{account_id}:{as_of:%Y-%m-%d}:{weights_hash(weights)[:16]}"


def order_id_of(signal_id: str, symbol: str, side: Side, slice_index: int = 0) -> str:
    """Deterministic client order id: one order per (signal, fund, side, TWAP slice)."""
    digest = hashlib.sha256(f"{signal_id}|{symbol}|{side}|{slice_index}".encode()).hexdigest()
    return f"o-{digest[:24]}"


@dataclass(frozen=True)
class OrderRequest:
    """What the executor asks a venue to do. ``session`` is the trading day the order is for
    (T1_OPEN: the session after the signal date); ``reference_price`` the raw close used for
    sizing and for the price band."""

    client_order_id: str
    account_id: str
    symbol: str
    side: Side
    quantity: int
    session: dt.date
    reference_price: float
    parent_order_id: str | None = None   # TWAP children point at their parent
    slice_index: int = 0
    slices: int = 1                      # TWAP: how many children the parent has
    order_type: str = "market"


@dataclass(frozen=True)
class VenueOrder:
    """A venue's view of one order."""

    client_order_id: str
    venue_order_id: str
    status: OrderStatus
    quantity: int
    filled_quantity: int = 0
    average_price: float | None = None
    reason: str | None = None            # why rejected / expired / partially filled


@dataclass(frozen=True)
class Fill:
    """One execution report. ``fill_id`` is unique per venue and stable across re-reads."""

    fill_id: str
    client_order_id: str
    account_id: str
    symbol: str
    side: Side
    quantity: int
    price: float
    commission: float
    session: dt.date
    filled_at: dt.datetime


@dataclass(frozen=True)
class Quote:
    """Raw daily bar of a fund used by the paper venue and the pre-trade price band."""

    symbol: str
    session: dt.date
    open: float
    high: float
    low: float
    close: float
    volume: float
    previous_close: float | None
    price_limit: float | None            # 0.10 / 0.20; None = no daily limit
    # The fund's instrument class (rotation.market): units bought in a session sellable in it
    # (T+0), and sale proceeds usable for buys in the same session.
    same_session_sell: bool = False
    sale_cash_same_day: bool = True

    def limit_up(self, tick: float = 0.001) -> bool:
        return (self.price_limit is not None and self.previous_close is not None
                and self.open >= self.previous_close * (1 + self.price_limit) - tick)

    def limit_down(self, tick: float = 0.001) -> bool:
        return (self.price_limit is not None and self.previous_close is not None
                and self.open <= self.previous_close * (1 - self.price_limit) + tick)


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str               # approved, rejected, submitted, filled, cancelled, ...
    entity: str               # signal, order, fill, account, kill_switch, risk
    entity_id: str
    reason: str = ""
    details: dict[str, object] = field(default_factory=dict)

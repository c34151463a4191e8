"""Order planning: the diff between current positions and a target portfolio (SPEC §7, §9).

The sizing rules are those of the backtest event loop (:mod:`rotation.backtest.engine`), so a
paper or live account and the backtest trade the same quantities:

* Equity = cash + Σ units × price. A live order is decided after close(D) and the next open is
  unknown, so every price here is the signal day's **raw close** (the backtest sizes at the
  execution open; that is the one intended difference).
* For every fund in ``targets ∪ positions``: target weight ``w`` (0 when absent),
  ``delta units = (w × equity − units × price) / price``.
* A fund with ``w == 0`` that is held is sold **whole** (odd-lot remainder included); any other
  sell is ``floor(−delta / lot) × lot`` capped at the position; a buy is
  ``floor(delta / lot) × lot``. Zero quantities are dropped.
* Sells come first, then buys; each side is sorted by symbol (deterministic).
* Cash bound (the backtest's ``cash_short`` rule, applied at the reference price): buys are
  paid from ``cash + planned sell proceeds``, in symbol order; a buy the remaining cash cannot
  pay (with the optional commission model) is cut to the largest affordable number of lots and
  dropped when that is zero. With the default zero commission this only bites when lot
  rounding of several sells leaves less cash than the buys need.

Nothing here touches a database or a broker; it is pure arithmetic on mappings.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from rotation.costs import NO_FEES, CostModel

__all__ = ["PlannedOrder", "order_notional", "plan_orders", "weights_of"]

# Same rounding slack as the backtest engine (``floor(x / lot + EPS)``).
_EPS = 1e-9


@dataclass(frozen=True)
class PlannedOrder:
    """One order of a rebalance, sized in raw units at ``reference_price`` (the last close)."""

    symbol: str
    side: Literal["buy", "sell"]
    quantity: int
    reference_price: float
    current_units: int
    target_units_value: float  # target value of the fund in CNY (w × equity)
    reason: str

    @property
    def notional(self) -> float:
        return order_notional(self)

    @property
    def closes_position(self) -> bool:
        """A sell of the whole position (the only order allowed to be an odd lot)."""
        return self.side == "sell" and self.quantity == self.current_units


def order_notional(order: PlannedOrder) -> float:
    """Quantity × reference price (CNY)."""
    return float(order.quantity) * float(order.reference_price)


def _check_units(symbol: str, units: object) -> int:
    if isinstance(units, bool) or not isinstance(units, numbers.Real):
        raise ValueError(f"position {symbol}: units {units!r} is not a number")
    if not isinstance(units, numbers.Integral):
        value = float(units)
        if not math.isfinite(value) or value != math.floor(value):
            raise ValueError(f"position {symbol}: units {units!r} is not a whole number")
        units = int(value)
    units = int(units)
    if units < 0:
        raise ValueError(f"position {symbol}: negative units {units} (short positions are not "
                         "supported)")
    return int(units)


def _check_price(symbol: str, last_close: Mapping[str, float]) -> float:
    price = last_close.get(symbol)
    if price is None:
        raise ValueError(f"fund {symbol}: no last close to size the order")
    try:
        price = float(price)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"fund {symbol}: last close {price!r} is not a number") from exc
    if not math.isfinite(price) or price <= 0.0:
        raise ValueError(f"fund {symbol}: last close {price!r} is not a positive finite price")
    return price


def _check_weight(symbol: str, weight: object) -> float:
    try:
        w = float(weight)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"target {symbol}: weight {weight!r} is not a number") from exc
    if math.isnan(w):
        raise ValueError(f"target {symbol}: weight is NaN")
    if math.isinf(w):
        raise ValueError(f"target {symbol}: weight is infinite ({w})")
    if w < 0.0:
        raise ValueError(f"target {symbol}: negative weight {w} (long-only)")
    return w


def _check_cash(cash: float) -> float:
    cash = float(cash)
    if not math.isfinite(cash):
        raise ValueError(f"cash {cash} is not finite")
    if cash < 0.0:
        raise ValueError(f"cash {cash:.2f} is negative (a cash account cannot be overdrawn)")
    return cash


def _valued_positions(positions: Mapping[str, int], last_close: Mapping[str, float]
                      ) -> tuple[dict[str, int], dict[str, float]]:
    """Held units (zero rows dropped) and the price of each held fund."""
    units: dict[str, int] = {}
    prices: dict[str, float] = {}
    for symbol, raw in positions.items():
        u = _check_units(symbol, raw)
        if u == 0:
            continue
        units[symbol] = u
        prices[symbol] = _check_price(symbol, last_close)
    return units, prices


def weights_of(positions: Mapping[str, int], cash: float, last_close: Mapping[str, float]
               ) -> dict[str, float]:
    """Current weight of every held fund (units × last close / equity), sorted by symbol.

    An empty account (no cash, no positions) has no weights: ``{}``.
    """
    cash = _check_cash(cash)
    units, prices = _valued_positions(positions, last_close)
    equity = cash + sum(units[s] * prices[s] for s in units)
    if equity <= 0.0:
        return {}
    return {s: units[s] * prices[s] / equity for s in sorted(units)}


def _fee(notional: float, costs: CostModel, side: str = "buy") -> float:
    return costs.fee(notional, side) if notional > 0.0 else 0.0


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def plan_orders(target_weights: Mapping[str, float], positions: Mapping[str, int], cash: float,
                last_close: Mapping[str, float], *, costs: CostModel = NO_FEES,
                held_back: frozenset[str] = frozenset()) -> list[PlannedOrder]:
    """Orders that move ``positions`` (raw units) to ``target_weights`` of equity.

    ``last_close`` holds raw closes of the signal day (a fund without a bar that day carries
    its previous close). Orders are whole lots of ``costs.lot_size``; the commission and the
    sell-side duties of ``costs`` only enter the cash bound of the buys (module docstring);
    sale proceeds of the funds in ``held_back`` (classes that cannot reuse sale cash the same
    session) do not. Raises :class:`ValueError` naming the fund for a target weight
    that is NaN, infinite or negative, negative or fractional position units, a fund to value
    or trade without a positive finite last close, or negative or non-finite cash.
    """
    lot_size = costs.lot_size
    cash = _check_cash(cash)
    weights = {s: _check_weight(s, w) for s, w in target_weights.items()}
    units, prices = _valued_positions(positions, last_close)
    for symbol, w in weights.items():
        if w > 0.0 and symbol not in prices:
            prices[symbol] = _check_price(symbol, last_close)
    equity = cash + sum(units[s] * prices[s] for s in units)

    sells: list[PlannedOrder] = []
    buys: list[tuple[str, int, float, float, str]] = []
    for symbol in sorted(set(weights) | set(units)):
        w = weights.get(symbol, 0.0)
        held = units.get(symbol, 0)
        if w == 0.0 and held == 0:
            continue
        price = prices[symbol]
        target_value = w * equity
        current_weight = held * price / equity if equity > 0.0 else 0.0
        if w == 0.0:
            reason = ("exit: not in target" if symbol not in weights
                      else "exit: target weight 0")
            sells.append(PlannedOrder(symbol, "sell", held, price, held, 0.0, reason))
            continue
        delta = (target_value - held * price) / price
        reason = f"rebalance to {_pct(w)} (from {_pct(current_weight)})"
        if delta < 0.0:
            qty = min(math.floor(-delta / lot_size + _EPS) * lot_size, held)
            if qty > 0:
                sells.append(PlannedOrder(symbol, "sell", qty, price, held, target_value, reason))
        elif delta > 0.0:
            qty = math.floor(delta / lot_size + _EPS) * lot_size
            if qty > 0:
                buys.append((symbol, qty, price, target_value, reason))

    # Cash bound: buys are paid from the cash plus the sell proceeds (fees included).
    available = cash
    for order in sells:
        notional = order_notional(order)
        if order.symbol not in held_back:
            available += notional - _fee(notional, costs, "sell")
    planned_buys: list[PlannedOrder] = []
    for symbol, qty, price, target_value, reason in buys:
        held = units.get(symbol, 0)
        cost = qty * price + _fee(qty * price, costs)
        if cost > available:
            lot_value = lot_size * price
            lots = min(qty // lot_size,
                       math.floor(available / (lot_value * (1.0 + costs.commission_rate))),
                       math.floor((available - costs.min_commission) / lot_value))
            lots = max(lots, 0)
            while lots > 0:
                notional = lots * lot_size * price
                if notional + _fee(notional, costs) <= available:
                    break
                lots -= 1
            if lots == 0:
                continue
            reason = f"{reason}, cut from {qty} to {lots * lot_size} units by the cash left"
            qty = lots * lot_size
            cost = qty * price + _fee(qty * price, costs)
        available -= cost
        planned_buys.append(PlannedOrder(symbol, "buy", qty, price, held, target_value, reason))
    return sells + planned_buys

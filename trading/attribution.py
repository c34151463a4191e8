"""Which strategy owns each unit, fee and yuan of an account that trades several strategies as
one netted target (issue 15 item 3). Dagster-free; the ledger stores what these rules decide.

* :class:`SignalParts` — the interchange between the netting (``rotation.allocation``) and the
  ledger: per fund, the units each strategy wants to trade for one signal, and the fund's
  reference price. :func:`wishes_from_weights` turns ``NettedTarget.parts`` into it.
* :func:`crossing_pairs` — opposite wishes settled inside the account (``allocation.cross``),
  as seller → buyer pairs.
* :func:`share_fill` — a fill's units, commission and cash per strategy, exact to the last
  decimal (the shares add up to the fill, so the strategies add up to the account).
* :class:`Holding` — a strategy's position in one fund at average cost, with realised P&L.

Crossing price: the signal's reference price (the raw close of the signal's date, the one the
wishes were sized with and the executor's orders carry). It is known when the signal is
decided, so a crossing is booked the same way on every re-run and never waits for later data;
the session's open or close is not known then, and neither strategy traded there anyway. A
crossing is zero-sum: the account's position, cash and P&L do not depend on the price, only
the split between the two strategies does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from rotation.allocation import cross, pro_rata, split_fill
from trading.models import Side

__all__ = ["NETTED_SEPARATOR", "AttributionError", "Crossing", "Holding", "SignalParts",
           "StrategyBook", "StrategyFill", "crossing_pairs", "market_wishes", "netted_strategy",
           "share_fill", "strategies_of", "wishes_from_weights"]

# Strategy names are ``[a-z][a-z0-9_]*`` (rotation.strategy): "+" never occurs in one.
NETTED_SEPARATOR = "+"
# Commission shares are cut at this precision; the largest share takes the remainder, so the
# shares always sum to the fill's commission exactly.
COMMISSION_QUANTUM = Decimal("1e-10")


class AttributionError(ValueError):
    """A fill, crossing or signal's parts that cannot be attributed; the message names them."""


def netted_strategy(strategies: Iterable[str]) -> str:
    """The ``strategy`` of a signal netting ``strategies`` (``"carry+momentum"``)."""
    names = sorted(set(strategies))
    if not names or any(not n or NETTED_SEPARATOR in n for n in names):
        raise AttributionError(f"netted strategy: names must be non-empty and without "
                               f"{NETTED_SEPARATOR!r}, got {names}")
    return NETTED_SEPARATOR.join(names)


def strategies_of(signal_strategy: str) -> list[str]:
    """The strategies a signal's ``strategy`` field names (one, or a netted several)."""
    return signal_strategy.split(NETTED_SEPARATOR)


@dataclass(frozen=True)
class SignalParts:
    """Each strategy's wish for one signal: ``wishes[fund][strategy]`` units to trade
    (+ buy, − sell), and ``reference_prices[fund]``, the raw close of the signal's date that
    sized the wishes and at which opposite wishes cross (see the module's docstring)."""

    signal_id: str
    wishes: Mapping[str, Mapping[str, int]]
    reference_prices: Mapping[str, float]

    def __post_init__(self) -> None:
        for fund, by_strategy in self.wishes.items():
            price = self.reference_prices.get(fund)
            if price is None or not (math.isfinite(price) and price > 0):
                raise AttributionError(f"signal {self.signal_id} fund {fund}: reference price "
                                       f"must be finite and > 0, got {price!r}")
            for strategy, units in by_strategy.items():
                if not strategy or NETTED_SEPARATOR in strategy:
                    raise AttributionError(f"signal {self.signal_id} fund {fund}: strategy "
                                           f"name {strategy!r} is not a single strategy")
                if not isinstance(units, int) or isinstance(units, bool):
                    raise AttributionError(f"signal {self.signal_id} fund {fund} strategy "
                                           f"{strategy}: units must be an integer, got {units!r}")

    @property
    def strategies(self) -> set[str]:
        return {s for by_strategy in self.wishes.values() for s in by_strategy}

    def rows(self) -> list[tuple[str, str, int, float]]:
        """(fund, strategy, units, reference price), sorted."""
        return sorted((fund, strategy, units, float(self.reference_prices[fund]))
                      for fund, by_strategy in self.wishes.items()
                      for strategy, units in by_strategy.items())


def wishes_from_weights(parts: Mapping[str, Mapping[str, float]], *, equity: float,
                        prices: Mapping[str, float], held: Mapping[str, Mapping[str, int]]
                        ) -> dict[str, dict[str, int]]:
    """``NettedTarget.parts`` (fund → strategy → weight of the account) as units to trade:
    ``floor(weight × equity / price)`` minus what the strategy holds (``held[strategy][fund]``);
    a holding no strategy's target keeps is sold whole. Funds without a change are left out."""
    wishes: dict[str, dict[str, int]] = {}
    funds = set(parts) | {f for by_fund in held.values() for f in by_fund}
    for fund in sorted(funds):
        by_strategy = parts.get(fund, {})
        strategies = set(by_strategy) | {s for s, by_fund in held.items() if by_fund.get(fund)}
        for strategy in sorted(strategies):
            target = _target_units(fund, strategy, by_strategy.get(strategy, 0.0), equity, prices)
            change = target - held.get(strategy, {}).get(fund, 0)
            if change:
                wishes.setdefault(fund, {})[strategy] = change
    return wishes


def _target_units(fund: str, strategy: str, weight: float, equity: float,
                  prices: Mapping[str, float]) -> int:
    if weight == 0:
        return 0
    price = prices.get(fund)
    if price is None or not (math.isfinite(price) and price > 0):
        raise AttributionError(f"strategy {strategy} fund {fund}: no usable price ({price!r}) "
                               "to size its wish")
    return math.floor(weight * equity / price)


def market_wishes(wants: Mapping[str, int]) -> dict[str, int]:
    """What each strategy still wants from the market once opposite wishes crossed."""
    return cross(wants)[1]


def crossing_pairs(wants: Mapping[str, int]) -> list[tuple[str, str, int]]:
    """(seller, buyer, units) of the units that cross inside the account, sellers and buyers
    matched in name order (any matching gives each strategy the same units)."""
    crossed, _ = cross(wants)
    sellers = [(s, -u) for s, u in sorted(crossed.items()) if u < 0]
    buyers = [(s, u) for s, u in sorted(crossed.items()) if u > 0]
    pairs: list[tuple[str, str, int]] = []
    i = j = 0
    sold = bought = 0           # units of sellers[i] and buyers[j] already matched
    while i < len(sellers) and j < len(buyers):
        units = min(sellers[i][1] - sold, buyers[j][1] - bought)
        pairs.append((sellers[i][0], buyers[j][0], units))
        sold, bought = sold + units, bought + units
        if sold == sellers[i][1]:
            i, sold = i + 1, 0
        if bought == buyers[j][1]:
            j, bought = j + 1, 0
    return pairs


@dataclass(frozen=True)
class Crossing:
    """``units`` of ``symbol`` passed from ``seller`` to ``buyer`` inside the account at
    ``price`` (the signal's reference price); the buyer pays ``cash`` = units × price to the
    seller."""

    signal_id: str
    symbol: str
    seller: str
    buyer: str
    units: int
    price: float
    cash: float


@dataclass(frozen=True)
class StrategyFill:
    """One strategy's part of a fill: ``units`` (+ bought, − sold), its commission and the
    cash it moved (− paid, + received)."""

    units: int
    commission: Decimal
    cash: Decimal


def share_fill(*, fill_id: str, side: Side, quantity: int, price: Decimal,
               commission: Decimal, still_wanted: Mapping[str, int],
               side_wishes: Mapping[str, int], held: Mapping[str, int]
               ) -> dict[str, StrategyFill]:
    """Share a fill among strategies. ``still_wanted[s]``: units ``s`` still wants on the
    fill's side (after crossing and earlier fills); they are served first, pro rata
    (``allocation.split_fill``). Units beyond them (an order rounded up to a lot) go pro rata
    to ``side_wishes`` (each strategy's wish on this side) for a buy, and to what the
    strategies still hold (``held``) for a sell."""
    wanted = {s: u for s, u in still_wanted.items() if u > 0}
    served = min(quantity, sum(wanted.values()))
    units = {s: abs(part.units) for s, part in split_fill(wanted, served, 0.0).items()} \
        if wanted else {}
    excess = quantity - served
    if excess:
        _add(units, _excess_units(fill_id, side, excess, units, side_wishes, held))
    units = {s: u for s, u in units.items() if u}
    fees = _commission_shares(commission, units)
    sign = 1 if side is Side.BUY else -1
    return {s: StrategyFill(units=sign * u, commission=fees[s],
                            cash=-sign * price * u - fees[s]) for s, u in sorted(units.items())}


def _excess_units(fill_id: str, side: Side, excess: int, served: Mapping[str, int],
                  side_wishes: Mapping[str, int], held: Mapping[str, int]) -> dict[str, int]:
    if side is Side.BUY:
        weights = {s: u for s, u in side_wishes.items() if u > 0}
        enough = bool(weights)
    else:      # a strategy can only sell what it holds beyond what this fill already sells
        weights = {s: h - served.get(s, 0) for s, h in held.items() if h - served.get(s, 0) > 0}
        enough = sum(weights.values()) >= excess
    if not enough:
        whose = "wants to buy" if side is Side.BUY else "holds enough to sell"
        raise AttributionError(f"fill {fill_id}: {excess} {side.value} units beyond the "
                               f"strategies' wishes and no strategy {whose} them "
                               f"(wishes {dict(side_wishes)}, holdings {dict(held)})")
    return pro_rata(excess, weights)


def _add(units: dict[str, int], more: Mapping[str, int]) -> None:
    for s, u in more.items():
        units[s] = units.get(s, 0) + u


def _commission_shares(commission: Decimal, units: Mapping[str, int]) -> dict[str, Decimal]:
    """Commission pro rata to units, cut at :data:`COMMISSION_QUANTUM`; the largest share
    takes the remainder so the shares sum to ``commission`` exactly."""
    total = sum(units.values())
    if not total:
        return {}
    shares = {s: (commission * u / total).quantize(COMMISSION_QUANTUM) for s, u in units.items()}
    largest = max(units, key=lambda s: (units[s], s))
    shares[largest] += commission - sum(shares.values())
    return shares


@dataclass(frozen=True)
class Holding:
    """A strategy's position in one fund: units, cost at average cost (fees included) and the
    P&L realised by its sales. ``realised − cost`` always equals the cash its trades moved."""

    quantity: int = 0
    cost: Decimal = Decimal(0)
    realised: Decimal = Decimal(0)

    def bought(self, units: int, amount: Decimal) -> Holding:
        """``units`` more for ``amount`` (price × units + commission)."""
        return Holding(self.quantity + units, self.cost + amount, self.realised)

    def sold(self, units: int, proceeds: Decimal, *, what: str) -> Holding:
        """``units`` fewer for ``proceeds`` (price × units − commission); ``what`` names the
        strategy, fund and booking in the error when it holds fewer units."""
        if units > self.quantity:
            raise AttributionError(f"{what}: sells {units} units but holds {self.quantity}")
        left = self.quantity - units
        cost = self.cost * left / self.quantity if left else Decimal(0)
        released = self.cost - cost
        return Holding(left, cost, self.realised + proceeds - released)


@dataclass(frozen=True)
class StrategyBook:
    """One strategy's part of an account, marked at given prices. ``cash`` is the cash its
    trades moved (fees included; the account's initial cash is not split here), so the
    strategies' cash sums to the account's cash minus its initial cash and their ``pnl`` to
    the account's P&L."""

    strategy: str
    positions: dict[str, int]          # fund -> units held
    cost: float
    cash: float
    realised: float
    market_value: float

    @property
    def unrealised(self) -> float:
        return self.market_value - self.cost

    @property
    def pnl(self) -> float:
        return self.realised + self.unrealised

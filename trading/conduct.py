"""Trading-conduct rules (issue 19 item 5), pure functions over what the ledger knows.

The exchanges' rules for programmatic trading give the form: a member reports and is watched
once an account sends more than 300 orders a second or 20,000 a day, or cancels an abnormal
share of what it sends. Ours are far lower (a daily rotation sends tens of orders), so a
runaway loop, a retry storm or a mis-sized TWAP is stopped long before an exchange would see it.

Rules, all in the ``conduct`` layer of :mod:`rotation.risk`:

* ``order_rate`` — orders sent to a venue by the account in any rolling minute, and in the
  session. Checked before each order is sent: the order that would go beyond it, and every
  order after it in the run, is not sent (the stream stops; what was sent stays working).
* ``cancel_ratio`` — orders cancelled at the venue over orders sent in the session, once the
  session has at least ``cancel_ratio_min_orders`` sent: beyond it nothing more is sent.
* ``restricted`` — a fund on the restricted list is not traded, either side (the list says
  why: an issuer under review, a conflict of interest).
* ``self_trade`` — an order is not sent while another of our accounts has an open order on the
  other side of the same fund for the same session: the two could meet on the exchange.
* ``holding_limit`` — a buy that would take our holding of a fund (every account of the ledger
  together) above ``max_holding_of_outstanding`` of its units outstanding. Only where the
  units outstanding are known: none of the stored datasets carries them, so the desk lists
  them in the configuration; a fund not listed is not limited.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from rotation.risk import OrderCheck, RiskViolation

# The exchanges' programmatic-trading thresholds (SSE/SZSE 2023): ours must stay below them.
EXCHANGE_ORDERS_PER_SECOND = 300
EXCHANGE_ORDERS_PER_DAY = 20_000


class ConductRules(BaseModel):
    """Configured conduct thresholds (``execution.conduct``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_orders_per_minute: int = Field(
        default=300, ge=1, le=EXCHANGE_ORDERS_PER_SECOND * 60,
        description="orders sent by an account in any rolling 60 seconds")
    max_orders_per_session: int = Field(
        default=2_000, ge=1, le=EXCHANGE_ORDERS_PER_DAY,
        description="orders sent by an account for one session")
    max_cancel_ratio: float = Field(
        default=0.5, gt=0, le=1, description="orders cancelled at the venue / orders sent")
    cancel_ratio_min_orders: int = Field(
        default=50, ge=1, description="orders sent in the session before the ratio applies")
    restricted: dict[str, str] = Field(
        default_factory=dict, description="fund -> why it may not be traded")
    self_trade_prevention: bool = True
    max_holding_of_outstanding: float = Field(
        default=0.05, gt=0, le=1,
        description="our units of a fund (all accounts) / its units outstanding")
    shares_outstanding: dict[str, int] = Field(
        default_factory=dict, description="fund -> units outstanding (where known)")


@dataclass(frozen=True)
class OrderPace:
    """What the account has sent (from the ledger, at the database's clock)."""

    sent_last_minute: int
    sent_in_session: int
    cancelled_in_session: int      # cancelled after it reached the venue


def pace_violation(pace: OrderPace, rules: ConductRules, order: OrderCheck
                   ) -> RiskViolation | None:
    """Whether sending ``order`` now breaks the order rate or the cancel ratio."""
    what = f"{order.side} {order.quantity} {order.symbol}"
    if pace.sent_last_minute + 1 > rules.max_orders_per_minute:
        return RiskViolation("conduct", "order_rate", order.order_id,
                             f"{what}: {pace.sent_last_minute} orders sent in the last minute; "
                             f"one more exceeds the limit of {rules.max_orders_per_minute} a "
                             "minute: the order stream is stopped")
    if pace.sent_in_session + 1 > rules.max_orders_per_session:
        return RiskViolation("conduct", "order_rate", order.order_id,
                             f"{what}: {pace.sent_in_session} orders sent for this session; one "
                             f"more exceeds the limit of {rules.max_orders_per_session}: the "
                             "order stream is stopped")
    if pace.sent_in_session >= rules.cancel_ratio_min_orders:
        ratio = pace.cancelled_in_session / pace.sent_in_session
        if ratio > rules.max_cancel_ratio:
            return RiskViolation(
                "conduct", "cancel_ratio", order.order_id,
                f"{what}: {pace.cancelled_in_session} of {pace.sent_in_session} orders sent "
                f"this session were cancelled ({ratio:.1%}), above the limit "
                f"{rules.max_cancel_ratio:.1%}: nothing more is sent this session")
    return None


def plan_violation(orders: int, pace: OrderPace, rules: ConductRules) -> RiskViolation | None:
    """A plan of ``orders`` to send that the order rate could never let through whole: more
    than a minute's limit, or more than what is left of the session's."""
    left = rules.max_orders_per_session - pace.sent_in_session
    if orders <= min(rules.max_orders_per_minute, left):
        return None
    return RiskViolation("conduct", "order_rate", "plan",
                         f"the plan has {orders} orders to send; the limits are "
                         f"{rules.max_orders_per_minute} a minute and "
                         f"{rules.max_orders_per_session} a session ({pace.sent_in_session} "
                         "already sent): nothing is sent (fewer TWAP slices fit)")


def order_violations(orders: Sequence[OrderCheck], rules: ConductRules, *,
                     opposite_elsewhere: Mapping[tuple[str, str], Collection[str]],
                     held_by_us: Mapping[str, int]) -> dict[str, list[RiskViolation]]:
    """Restricted list, self-trade prevention and the holding limit of each planned order,
    by order id. ``opposite_elsewhere``: (fund, side) -> the other accounts with an open
    order of that side for the session; ``held_by_us``: units held by all our accounts."""
    found: dict[str, list[RiskViolation]] = {}
    for o in orders:
        rules_hit = [v for v in (_restricted(o, rules), _self_trade(o, rules, opposite_elsewhere),
                                 _holding(o, rules, held_by_us)) if v is not None]
        if rules_hit:
            found[o.order_id] = rules_hit
    return found


def _restricted(o: OrderCheck, rules: ConductRules) -> RiskViolation | None:
    why = rules.restricted.get(o.symbol)
    if why is None:
        return None
    return RiskViolation("conduct", "restricted", o.order_id,
                         f"{o.side} {o.symbol}: the fund is on the restricted list ({why})")


def _self_trade(o: OrderCheck, rules: ConductRules,
                opposite_elsewhere: Mapping[tuple[str, str], Collection[str]]
                ) -> RiskViolation | None:
    other_side = "sell" if o.side == "buy" else "buy"
    accounts = sorted(opposite_elsewhere.get((o.symbol, other_side), ()))
    if not rules.self_trade_prevention or not accounts:
        return None
    return RiskViolation("conduct", "self_trade", o.order_id,
                         f"{o.side} {o.symbol}: account(s) {', '.join(accounts)} have an open "
                         f"{other_side} of the fund for the same session; the two orders could "
                         "trade with each other")


def _holding(o: OrderCheck, rules: ConductRules, held_by_us: Mapping[str, int]
             ) -> RiskViolation | None:
    outstanding = rules.shares_outstanding.get(o.symbol)
    if o.side != "buy" or not outstanding:
        return None
    after = held_by_us.get(o.symbol, 0) + o.quantity
    share = after / outstanding
    if share <= rules.max_holding_of_outstanding:
        return None
    return RiskViolation("conduct", "holding_limit", o.order_id,
                         f"buy {o.quantity} {o.symbol}: our accounts would hold {after:,} of its "
                         f"{outstanding:,} units outstanding ({share:.2%}), above the limit "
                         f"{rules.max_holding_of_outstanding:.2%}")

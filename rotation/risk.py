"""Layered pre-trade risk (SPEC §9): signal approval and order checks, pure functions.

Layers, in the order violations are reported:

* ``data`` — every blocking upstream data check passed (``failed_check``), the stored market
  data is of the signal's day (``stale_data``).
* ``signal`` — the weights are well-formed: finite (``nan_weight``), long-only
  (``negative_weight``), in the universe (``unknown_fund``), and the signal is of the latest
  session or at most ``max_signal_age_sessions`` older (``stale_signal``).
* ``account`` — gross exposure: Σ|w| of a signal ≤ ``max_gross_exposure`` (``weights_sum``);
  the value of the positions after the orders ≤ ``max_gross_exposure`` × equity
  (``gross_exposure``); traded notional of the day ≤ ``max_daily_notional``
  (``daily_notional``); the target's portfolio risk measured from data up to D
  (:class:`PortfolioFigures`, ``rotation.portfolio_risk``), each limit only when configured:
  1-session 99 % historical VaR (``var_limit``) and ES (``es_limit``), the loss of its worst
  window in the look-back (``stress_loss``), the sessions to trade each position at the
  allowed participation (``days_to_liquidate``); a configured limit whose figure could not be
  measured rejects (``risk_unmeasured``).
* ``strategy`` — turnover against the previous target (``turnover``), the account drawdown
  stop (``drawdown_stop``).
* ``instrument`` — weight per fund (``max_weight``), halted funds (``halted``), limit days
  (``limit_day``), the reference price against the last close (``price_band``), a sell of
  units bought in the same session of a T+1 fund (``t1_same_session_sell``; the fund's
  instrument class, ``rotation.market``, says whether it settles T+0 or T+1).
* ``order`` — lot validity (``lot_size``), notional per order (``max_order_notional``), the
  order's share of the fund's average daily traded amount (``participation``, at most
  ``max_participation``).
* ``conduct`` — trading-conduct rules (``trading.conduct``): ``restricted``, ``self_trade``,
  ``holding_limit``, and at sending time ``order_rate`` and ``cancel_ratio``.

Dynamic limits: with ``regime`` configured, the limits it names tighten by their factors while
the market's realised volatility is above its threshold (:func:`regime_limits`).

Every check runs and every violation is returned (not just the first), sorted by layer, rule
and subject, so an audit log of a rejection is complete and reproducible.

Choices worth knowing:

* A fund that is not in the universe, or halted, is only a violation with a **positive**
  weight: a zero weight (an exit) is always allowed at signal level; whether the exit can trade
  is the order checks' business.
* The daily notional cap counts **both sides** (a sell is traded notional too). Orders are
  counted sells first, then buys, each side in the given order; an order is rejected when the
  committed notional plus the orders accepted before it plus its own notional would exceed the
  cap. Once an order has been rejected by the cap, **every later buy** is rejected as well (a
  partial set of buys would be funded by sells that may not all have gone through and would
  skew the portfolio towards whatever happened to fit); later sells are still checked one by
  one because they only reduce exposure.
* An order that already fails an order or instrument rule is not counted against the daily
  cap (it is never sent), and is not checked against it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from rotation.orders import PlannedOrder

__all__ = [
    "LAYERS",
    "RULES",
    "OrderCheck",
    "PortfolioFigures",
    "RiskLimits",
    "RiskViolation",
    "check_orders",
    "check_portfolio",
    "check_signal",
    "drawdown_of",
    "gross_exposure",
    "limit_state",
    "order_check_of",
    "turnover",
]

_PRICE_EPS = 1e-9
Layer = Literal["data", "signal", "account", "strategy", "instrument", "order", "conduct"]
LAYERS: tuple[Layer, ...] = ("data", "signal", "account", "strategy", "instrument", "order",
                             "conduct")
# Stable machine names, in report order within a layer.
RULES: tuple[str, ...] = (
    "failed_check", "stale_data",
    "stale_signal", "nan_weight", "negative_weight", "unknown_fund",
    "weights_sum", "gross_exposure", "daily_notional",
    "risk_unmeasured", "var_limit", "es_limit", "stress_loss", "days_to_liquidate",
    "intraday_loss",
    "turnover", "drawdown_stop",
    "max_weight", "halted", "limit_day", "price_band",
    "lot_size", "max_order_notional", "participation",
    "restricted", "self_trade", "holding_limit", "order_rate", "cancel_ratio",
)
# Sessions a year: realised volatility is annualised with it (both profiles' exchanges).
SESSIONS_PER_YEAR = 252


# Upper bounds of the limits that have no natural one. A limit beyond them is no limit: it is a
# typo (an exponent slip such as 1e18) that switches the check off, so it is refused on load.
# 1e11 CNY (100 bn) is more than the biggest A-share ETF trades in a day and far beyond any
# account this platform runs.
MAX_NOTIONAL_LIMIT = 1e11
# 20 sessions (four weeks): a signal further behind the market is not a signal any more.
MAX_SIGNAL_AGE_LIMIT = 20
# Exchange lots are 1 to a few thousand units (A-share ETFs: 100).
MAX_LOT_SIZE = 1_000_000


# Limits a volatility regime may tighten: those the approval gate checks, where a smaller
# value is stricter (the regime is measured when a signal is decided; order-time and intraday
# limits stay as configured).
TIGHTENABLE = ("max_weight", "max_gross_exposure", "max_turnover", "max_var_99", "max_es_99",
               "max_stress_loss")


class VolatilityRegime(BaseModel):
    """Dynamic limits: while the market's annualised realised volatility over
    ``window_sessions`` (up to D) is above ``threshold``, each limit named in ``tighten`` is
    multiplied by its factor. The market is ``proxy`` (a fund) or, unset, the equal-weighted
    mean return of the funds that traded."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    window_sessions: int = Field(default=20, ge=5, le=250)
    threshold: float = Field(default=0.25, gt=0, le=5,
                             description="annualised volatility above which limits tighten")
    proxy: str | None = None
    tighten: dict[str, float] = Field(
        default_factory=lambda: {"max_var_99": 0.7, "max_es_99": 0.7, "max_stress_loss": 0.7,
                                 "max_weight": 0.8})

    @field_validator("tighten")
    @classmethod
    def _known_factors(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(TIGHTENABLE))
        if unknown:
            raise ValueError(f"cannot tighten {unknown}: only {', '.join(TIGHTENABLE)}")
        bad = {k: f for k, f in value.items() if not 0 < f <= 1}
        if bad:
            raise ValueError(f"factors must be in (0, 1] (a factor above 1 loosens): {bad}")
        return value


class RiskLimits(BaseModel):
    """Pre-trade limits (validated configuration; fractions, not percent). Every limit is
    finite and bounded: ``inf``, ``nan`` or an absurd value would silently disable a check."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # 50 %: a top-2 equal-weight portfolio (the smallest top-N the searches consider) passes.
    max_weight: float = Field(default=0.50, gt=0, le=1, description="max target weight per fund")
    max_gross_exposure: float = Field(default=1.0, gt=0, le=1, description="max Σ|weight|")
    max_turnover: float = Field(
        default=1.0, ge=0, le=1,
        description="max Σ|w_new − w_old| / 2 per signal (1 = full rotation)")
    drawdown_stop: float = Field(
        default=0.25, gt=0, le=1, description="no new signal while account drawdown ≥ this")
    max_signal_age_sessions: int = Field(
        default=0, ge=0, le=MAX_SIGNAL_AGE_LIMIT,
        description="sessions a signal may lag the latest session (0 = same session)")
    max_order_notional: float = Field(default=500_000.0, gt=0, le=MAX_NOTIONAL_LIMIT,
                                      description="CNY per order")
    max_daily_notional: float = Field(default=2_000_000.0, gt=0, le=MAX_NOTIONAL_LIMIT,
                                      description="CNY traded per day")
    price_band: float = Field(
        default=0.10, gt=0, lt=1, description="max |reference price / last close − 1|")
    weight_tolerance: float = Field(default=1e-6, ge=0, le=1e-2,
                                    description="float slack of weights")
    lot_size: int = Field(default=100, ge=1, le=MAX_LOT_SIZE, description="units per lot")
    # Portfolio risk of the target (rotation.portfolio_risk), from data up to D; None: the
    # figure is measured and shown, not limited.
    max_var_99: float | None = Field(
        default=None, gt=0, le=1,
        description="max 1-session 99% historical VaR of the target, fraction of equity")
    max_es_99: float | None = Field(
        default=None, gt=0, le=1,
        description="max 1-session 99% historical expected shortfall, fraction of equity")
    max_stress_loss: float | None = Field(
        default=None, gt=0, le=1,
        description="max loss of the target over its worst stress_window_sessions window")
    max_days_to_liquidate: float | None = Field(
        default=None, gt=0, le=250,
        description="max sessions to trade any position at max_participation")
    risk_lookback_sessions: int = Field(default=250, ge=20, le=5000,
                                        description="sessions of history the figures use")
    stress_window_sessions: int = Field(default=5, ge=1, le=60,
                                        description="length of the worst window, sessions")
    max_participation: float = Field(
        default=0.10, gt=0, le=1, description="share of a fund's average daily amount traded")
    liquidity_sessions: int = Field(default=20, ge=1, le=250,
                                    description="sessions of the average daily amount")
    max_intraday_loss: float | None = Field(
        default=None, gt=0, le=1,
        description="max loss since the last close at live prices, fraction of its equity "
        "(the intraday risk monitor)")
    regime: VolatilityRegime | None = Field(
        default=None, description="dynamic limits: tighten while volatility is high")

    @property
    def limits_portfolio(self) -> bool:
        return any(v is not None for v in (self.max_var_99, self.max_es_99,
                                           self.max_stress_loss, self.max_days_to_liquidate))


@dataclass(frozen=True)
class RiskViolation:
    layer: Layer
    rule: str
    subject: str  # the fund, order id, account or check it is about
    message: str  # names the value and the limit

    def as_dict(self) -> dict[str, str]:
        return {"layer": self.layer, "rule": self.rule, "subject": self.subject,
                "message": self.message}


@dataclass(frozen=True)
class PortfolioFigures:
    """The target portfolio's risk as the gate checks it (rotation.portfolio_risk measures
    it from data up to D); losses are positive fractions of equity."""

    var_99: float
    es_99: float
    stress_loss: float                  # the worst window's compounded loss
    stress_window: str                  # which window, e.g. "2024-01-29..2024-02-02"
    days_to_liquidate: Mapping[str, float]
    observations: int                   # daily portfolio returns the figures rest on


def check_portfolio(figures: PortfolioFigures | str | None, limits: RiskLimits
                    ) -> list[RiskViolation]:
    """Violations of the configured portfolio limits; ``figures`` a string: why they could not
    be measured (a configured limit then rejects: an unmeasured risk is not a small one)."""
    if not limits.limits_portfolio:
        return []
    if not isinstance(figures, PortfolioFigures):
        why = figures or "no figures were measured"
        return [RiskViolation("account", "risk_unmeasured", "portfolio",
                              f"portfolio risk limits are configured but the risk of the "
                              f"target could not be measured: {why}")]
    out = []
    basis = f"over {figures.observations} sessions"
    for rule, value, limit, what in (
            ("var_limit", figures.var_99, limits.max_var_99, "1-session 99% VaR"),
            ("es_limit", figures.es_99, limits.max_es_99, "1-session 99% expected shortfall"),
            ("stress_loss", figures.stress_loss, limits.max_stress_loss,
             f"loss over the worst {limits.stress_window_sessions}-session window "
             f"({figures.stress_window})")):
        if limit is not None and value > limit + limits.weight_tolerance:
            out.append(RiskViolation("account", rule, "portfolio",
                                     f"{what} {_pct(value)} {basis} exceeds the limit "
                                     f"{_pct(limit)}"))
    if limits.max_days_to_liquidate is not None:
        for symbol, days in sorted(figures.days_to_liquidate.items()):
            if days > limits.max_days_to_liquidate:
                out.append(RiskViolation(
                    "account", "days_to_liquidate", symbol,
                    f"{symbol}: {days:.1f} sessions to trade at "
                    f"{_pct(limits.max_participation)} of its average daily amount "
                    f"({limits.liquidity_sessions} sessions), limit "
                    f"{limits.max_days_to_liquidate:g}"))
    return out


# A rejected order's reason in the ledger: "layer/rule: message; layer/rule: message".
_REASON = re.compile(r"(?:^|; )([a-z]+/[a-z0-9_]+): ")


def reason_text(violations: Sequence[RiskViolation]) -> str:
    """The reason a rejected order carries in the ledger (:func:`reasons_of` reads it)."""
    return "; ".join(f"{v.layer}/{v.rule}: {v.message}" for v in violations)


def reasons_of(text: str | None) -> list[tuple[str, str]]:
    """(layer/rule, message) of each violation in an order's reason; a reason that is not
    ours (a venue's) is one entry under ``venue``."""
    text = text or ""
    marks = list(_REASON.finditer(text))
    if not marks:
        return [("venue", text or "(no reason recorded)")]
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [(m.group(1), text[m.end():end]) for m, end in zip(marks, ends, strict=True)]


def _sort_key(v: RiskViolation) -> tuple[int, int, str]:
    rule = RULES.index(v.rule) if v.rule in RULES else len(RULES)
    return LAYERS.index(v.layer), rule, v.subject


def _pct(x: float) -> str:
    return f"{100.0 * x:.2f}%"


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} {value} is not finite")
    return value


# -- helpers -----------------------------------------------------------------------------------

def turnover(new: Mapping[str, float], old: Mapping[str, float]) -> float:
    """One-way turnover Σ|w_new − w_old| / 2 over both supports (missing = 0)."""
    return 0.5 * sum(abs(float(new.get(s, 0.0)) - float(old.get(s, 0.0)))
                     for s in set(new) | set(old))


def gross_exposure(weights: Mapping[str, float]) -> float:
    """Σ|w| (long-only: the invested fraction of equity)."""
    return float(sum(abs(float(w)) for w in weights.values()))


def drawdown_of(equity: Sequence[float]) -> float:
    """Current drawdown from the running peak, ``1 − last / max(equity)`` (0 for an empty or
    new-high series). Raises :class:`ValueError` on a non-finite or non-positive value."""
    peak = 0.0
    last = 0.0
    for i, raw in enumerate(equity):
        value = float(raw)
        if not math.isfinite(value) or value <= 0.0:
            raise ValueError(f"equity[{i}] = {value} is not a positive finite value")
        peak = max(peak, value)
        last = value
    if peak == 0.0:
        return 0.0
    return max(0.0, 1.0 - last / peak)


def limit_state(close: float, previous_close: float | None, price_limit: float | None,
                tick: float = 0.001) -> Literal["up", "down", None]:
    """Did a fund close at its daily limit? From **raw** closes.

    Same rule as the backtest's open-limit flags (``limit_flags_nb``) applied to the close:
    ``close >= previous × (1 + limit) − tick`` is ``"up"``, ``close <= previous × (1 − limit)
    + tick`` is ``"down"`` (plus 1e-9 so that a close exactly one tick off is not lost to float
    noise). The exchange rounds the limit price to the tick, so one tick of slack catches it.
    ``None`` without a previous close, without a limit (cross-border funds) or with a missing /
    non-positive price. Should both hold (a price so low that one tick spans the whole band),
    the direction of the move decides.
    """
    if previous_close is None or price_limit is None:
        return None
    c, p, lim = float(close), float(previous_close), float(price_limit)
    if not (math.isfinite(c) and math.isfinite(p) and math.isfinite(lim)) or c <= 0 or p <= 0:
        return None
    if lim <= 0:
        raise ValueError(f"price_limit {price_limit} must be positive (None = no limit)")
    up = c >= p * (1.0 + lim) - tick - _PRICE_EPS
    down = c <= p * (1.0 - lim) + tick + _PRICE_EPS
    if up and down:
        return "up" if c >= p else "down"
    if up:
        return "up"
    if down:
        return "down"
    return None


# -- signal ------------------------------------------------------------------------------------

def check_signal(weights: Mapping[str, float], *, as_of: date, latest_session: date,
                 sessions_between: int, universe: Collection[str], halted: Collection[str],
                 previous_weights: Mapping[str, float] | None, failed_checks: Sequence[str],
                 data_as_of: date | None, drawdown: float | None, limits: RiskLimits
                 ) -> list[RiskViolation]:
    """Every reason why ``weights`` (a target portfolio of ``as_of``) may not become an approved
    signal; empty when it may.

    ``sessions_between``: sessions after ``as_of`` up to ``latest_session`` (0 = fresh).
    ``data_as_of``: newest session of the stored market data (None = none stored).
    ``drawdown``: current account drawdown as a positive fraction (None = no account yet).
    ``previous_weights``: the last approved target (None = skip the turnover check; ``{}`` =
    from cash). Malformed context (not the signal) raises :class:`ValueError`.
    """
    if sessions_between < 0:
        raise ValueError(f"sessions_between {sessions_between} is negative")
    out: list[RiskViolation] = []
    tol = limits.weight_tolerance

    # data
    for name in sorted(set(failed_checks)):
        out.append(RiskViolation("data", "failed_check", name,
                                 f"blocking data check {name!r} failed for {as_of.isoformat()}"))
    if data_as_of is None:
        out.append(RiskViolation("data", "stale_data", "market_data",
                                 f"no stored market data; the signal is of {as_of.isoformat()}"))
    elif data_as_of != as_of:
        out.append(RiskViolation(
            "data", "stale_data", "market_data",
            f"stored market data ends {data_as_of.isoformat()}, the signal is of "
            f"{as_of.isoformat()}; they must be the same session"))

    # signal
    if as_of > latest_session:
        out.append(RiskViolation(
            "signal", "stale_signal", as_of.isoformat(),
            f"signal date {as_of.isoformat()} is after the latest session "
            f"{latest_session.isoformat()}"))
    elif sessions_between > limits.max_signal_age_sessions:
        out.append(RiskViolation(
            "signal", "stale_signal", as_of.isoformat(),
            f"signal of {as_of.isoformat()} is {sessions_between} session(s) older than the "
            f"latest session {latest_session.isoformat()}; at most "
            f"{limits.max_signal_age_sessions} allowed"))
    universe_set = set(universe)
    halted_set = set(halted)
    finite: dict[str, float] = {}
    for symbol in sorted(weights):
        w = float(weights[symbol])
        if not math.isfinite(w):
            out.append(RiskViolation("signal", "nan_weight", symbol,
                                     f"weight of {symbol} is {w}; every weight must be finite"))
            continue
        finite[symbol] = w
        if w < 0.0:
            out.append(RiskViolation(
                "signal", "negative_weight", symbol,
                f"weight of {symbol} is {w:.6g}, below the minimum 0 (long-only)"))
        if w > 0.0 and symbol not in universe_set:
            out.append(RiskViolation(
                "signal", "unknown_fund", symbol,
                f"{symbol} has weight {_pct(w)} but is not one of the {len(universe_set)} "
                "funds of the universe"))
        if w > limits.max_weight + tol:
            out.append(RiskViolation(
                "instrument", "max_weight", symbol,
                f"weight of {symbol} is {_pct(w)}, above the max weight "
                f"{_pct(limits.max_weight)}"))
        if w > 0.0 and symbol in halted_set:
            out.append(RiskViolation(
                "instrument", "halted", symbol,
                f"{symbol} is halted (no bar on {as_of.isoformat()}) but has weight {_pct(w)}; "
                "the max weight of a halted fund is 0"))

    # account
    gross = gross_exposure(finite)
    if gross > limits.max_gross_exposure + tol:
        out.append(RiskViolation(
            "account", "weights_sum", "portfolio",
            f"weights sum to {_pct(gross)}, above the max gross exposure "
            f"{_pct(limits.max_gross_exposure)}"))

    # strategy
    if previous_weights is not None and len(finite) == len(weights):
        for symbol, w in previous_weights.items():
            _finite(f"previous weight of {symbol}", w)
        t = turnover(finite, previous_weights)
        if t > limits.max_turnover + tol:
            out.append(RiskViolation(
                "strategy", "turnover", "portfolio",
                f"turnover {_pct(t)} against the previous target is above the max turnover "
                f"{_pct(limits.max_turnover)}"))
    if drawdown is not None:
        dd = _finite("drawdown", drawdown)
        if dd >= limits.drawdown_stop:
            out.append(RiskViolation(
                "strategy", "drawdown_stop", "account",
                f"account drawdown {_pct(dd)} has reached the drawdown stop "
                f"{_pct(limits.drawdown_stop)}; no new signal until it recovers"))
    return sorted(out, key=_sort_key)


# -- orders ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OrderCheck:
    """One order as risk sees it (raw units, raw reference price)."""

    order_id: str
    symbol: str
    side: Literal["buy", "sell"]
    quantity: int
    reference_price: float
    closes_position: bool  # a sell of the whole position (may be an odd lot)
    held_before: int | None = None  # units held before the order (for the settlement rule)
    # Where reference_price comes from, named in a price-band rejection (trading.live_prices:
    # a fresh live last price, or the last close).
    reference_source: str = ""

    @property
    def notional(self) -> float:
        return float(self.quantity) * float(self.reference_price)


def order_check_of(order: PlannedOrder, order_id: str) -> OrderCheck:
    """The risk view of a planned order (``closes_position`` = a sell of every unit held)."""
    return OrderCheck(order_id=order_id, symbol=order.symbol, side=order.side,
                      quantity=order.quantity, reference_price=order.reference_price,
                      closes_position=order.side == "sell"
                      and order.quantity == order.current_units,
                      held_before=int(order.current_units))


def _participation(o: OrderCheck, average_amount: Mapping[str, float], limits: RiskLimits
                   ) -> list[RiskViolation]:
    """The order's notional against the fund's average daily traded amount (both sides: a sell
    too large for the market moves the price as much as a buy)."""
    adv = float(average_amount.get(o.symbol, math.nan))
    window = f"average daily amount over {limits.liquidity_sessions} sessions"
    if not (math.isfinite(adv) and adv > 0):
        return [RiskViolation("order", "participation", o.order_id,
                              f"{o.side} {o.symbol}: no traded amount to measure the order "
                              f"against ({window} unknown or zero)")]
    share = o.notional / adv
    if share <= limits.max_participation + 1e-12:
        return []
    return [RiskViolation("order", "participation", o.order_id,
                          f"{o.side} {o.quantity} {o.symbol}: notional {o.notional:,.2f} is "
                          f"{_pct(share)} of the fund's {window} ({adv:,.2f}), above the "
                          f"participation limit {_pct(limits.max_participation)}")]


def _order_rules(o: OrderCheck, last_close: Mapping[str, float], limit_up: set[str],
                 limit_down: set[str], halted: set[str], limits: RiskLimits
                 ) -> list[RiskViolation]:
    """Order and instrument layers of one order (independent of the other orders)."""
    out: list[RiskViolation] = []
    lot = limits.lot_size
    q = o.quantity
    odd_ok = o.side == "sell" and o.closes_position
    if q <= 0:
        out.append(RiskViolation("order", "lot_size", o.order_id,
                                 f"{o.side} {o.symbol}: quantity {q} is not positive"))
    elif q % lot != 0 and not odd_ok:
        out.append(RiskViolation(
            "order", "lot_size", o.order_id,
            f"{o.side} {o.symbol}: quantity {q} is not a multiple of the lot size {lot}"))
    price = float(o.reference_price)
    notional = q * price
    if math.isfinite(notional) and notional > limits.max_order_notional:
        out.append(RiskViolation(
            "order", "max_order_notional", o.order_id,
            f"{o.side} {q} {o.symbol} at {price:.3f}: notional {notional:,.2f} CNY is above the "
            f"max order notional {limits.max_order_notional:,.2f} CNY"))
    if o.symbol in halted:
        out.append(RiskViolation("instrument", "halted", o.order_id,
                                 f"{o.side} {o.symbol}: the fund is halted (no bar on the "
                                 "signal day); halted funds cannot trade"))
    if o.side == "buy" and o.symbol in limit_up:
        out.append(RiskViolation("instrument", "limit_day", o.order_id,
                                 f"buy {o.symbol}: the fund closed at limit-up on the signal day;"
                                 " a limit-up fund cannot be bought"))
    if o.side == "sell" and o.symbol in limit_down:
        out.append(RiskViolation("instrument", "limit_day", o.order_id,
                                 f"sell {o.symbol}: the fund closed at limit-down on the signal "
                                 "day; a limit-down fund cannot be sold"))
    last = last_close.get(o.symbol)
    last_f = float(last) if last is not None else math.nan
    if not (math.isfinite(last_f) and last_f > 0):
        out.append(RiskViolation("instrument", "price_band", o.order_id,
                                 f"{o.side} {o.symbol}: no positive last close to check the "
                                 f"reference price {price} against the band "
                                 f"±{_pct(limits.price_band)}"))
    elif not (math.isfinite(price) and price > 0):
        out.append(RiskViolation("instrument", "price_band", o.order_id,
                                 f"{o.side} {o.symbol}: reference price {price} is not a "
                                 "positive finite price"))
    else:
        dev = price / last_f - 1.0
        if abs(dev) > limits.price_band + 1e-12:
            out.append(RiskViolation(
                "instrument", "price_band", o.order_id,
                f"{o.side} {o.symbol}: reference price {price:.3f}"
                f"{f' ({o.reference_source})' if o.reference_source else ''} is {dev:+.2%} "
                f"from the last close {last_f:.3f}, outside the band ±{_pct(limits.price_band)}"))
    return out


def unsellable_units(bought_in_session: Mapping[str, int],
                     same_session_sell: Mapping[str, bool]) -> dict[str, int]:
    """Units bought in a session that no sell of that session may use: those of funds whose
    instrument class settles T+1 (a fund missing from ``same_session_sell`` counts as T+1)."""
    return {s: int(q) for s, q in bought_in_session.items()
            if q > 0 and not same_session_sell.get(s, False)}


def _settlement_rule(o: OrderCheck, unsellable: Mapping[str, int]) -> list[RiskViolation]:
    """A sell that needs units bought earlier in the same session of a T+1 fund."""
    blocked = int(unsellable.get(o.symbol, 0))
    if o.side != "sell" or blocked <= 0 or o.held_before is None:
        return []
    sellable = max(o.held_before - blocked, 0)
    if o.quantity <= sellable:
        return []
    return [RiskViolation(
        "instrument", "t1_same_session_sell", o.order_id,
        f"sell {o.quantity} {o.symbol}: {blocked} of the {o.held_before} units held were bought "
        f"this session and the fund's class settles T+1; at most {sellable} can be sold")]


def check_orders(orders: Sequence[OrderCheck], *, last_close: Mapping[str, float],
                 limit_up_close: Collection[str], limit_down_close: Collection[str],
                 halted: Collection[str], committed_notional: float, equity: float,
                 positions_value_after: float, limits: RiskLimits,
                 unsellable: Mapping[str, int] | None = None,
                 average_amount: Mapping[str, float] | None = None,
                 conduct: Mapping[str, Sequence[RiskViolation]] | None = None
                 ) -> tuple[list[OrderCheck], list[tuple[OrderCheck, RiskViolation]]]:
    """Split ``orders`` into (accepted, rejected with each violation).

    Orders are examined sells first, then buys (each side in the given order); both lists come
    back in that order. A rejected order appears once per violation. ``committed_notional`` is
    the notional already traded or submitted today; ``positions_value_after`` the value of the
    positions once all ``orders`` are filled, at the last close (see the module docstring for
    the daily-notional rule). ``unsellable``: per fund of a T+1 class, the units bought in the
    orders' session, which no sell of that session may touch (``t1_same_session_sell``; a T+0
    fund is absent). ``average_amount``: each fund's average daily traded amount over
    ``liquidity_sessions`` up to the signal day (``participation``; None: not checked, for a
    caller without volume history). ``conduct``: violations of the conduct rules by order id
    (``trading.conduct``), so a blocked order is not counted against the daily cap. Raises
    :class:`ValueError` on duplicate order ids, an unknown
    side or a non-finite account figure.
    """
    committed = _finite("committed_notional", committed_notional)
    if committed < 0:
        raise ValueError(f"committed_notional {committed} is negative")
    equity_f = _finite("equity", equity)
    after = _finite("positions_value_after", positions_value_after)
    ids = [o.order_id for o in orders]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate order ids: {', '.join(dupes)}")
    for o in orders:
        if o.side not in ("buy", "sell"):
            raise ValueError(f"order {o.order_id}: unknown side {o.side!r}")
    sequence = [o for o in orders if o.side == "sell"] + [o for o in orders if o.side == "buy"]
    up, down, stop = set(limit_up_close), set(limit_down_close), set(halted)

    exposure_violation: str | None = None
    exposure = after / equity_f if equity_f > 0 else math.inf
    if exposure > limits.max_gross_exposure + limits.weight_tolerance:
        shown = _pct(exposure) if math.isfinite(exposure) else f"{after:,.2f} CNY on equity " \
            f"{equity_f:,.2f} CNY"
        exposure_violation = (f"positions after the orders would be {shown} of equity, above "
                              f"the max gross exposure {_pct(limits.max_gross_exposure)}")

    accepted: list[OrderCheck] = []
    rejected: list[tuple[OrderCheck, RiskViolation]] = []
    traded = committed
    cap_hit = False
    for o in sequence:
        found = _order_rules(o, last_close, up, down, stop, limits)
        found.extend(_settlement_rule(o, unsellable or {}))
        if average_amount is not None and o.quantity > 0:
            found.extend(_participation(o, average_amount, limits))
        found.extend((conduct or {}).get(o.order_id, ()))
        if o.side == "buy" and exposure_violation is not None:
            found.append(RiskViolation("account", "gross_exposure", o.order_id,
                                       f"buy {o.symbol}: {exposure_violation}"))
        if not found:
            n = o.notional
            if o.side == "buy" and cap_hit:
                found.append(RiskViolation(
                    "account", "daily_notional", o.order_id,
                    f"buy {o.symbol}: the daily notional cap "
                    f"{limits.max_daily_notional:,.2f} CNY was reached by an earlier order "
                    f"(traded {traded:,.2f} CNY); later buys are not sent"))
            elif traded + n > limits.max_daily_notional:
                cap_hit = True
                found.append(RiskViolation(
                    "account", "daily_notional", o.order_id,
                    f"{o.side} {o.symbol}: traded notional {traded:,.2f} + {n:,.2f} = "
                    f"{traded + n:,.2f} CNY would exceed the max daily notional "
                    f"{limits.max_daily_notional:,.2f} CNY"))
        if found:
            rejected.extend((o, v) for v in sorted(found, key=_sort_key))
        else:
            accepted.append(o)
            traded += o.notional
    return accepted, rejected


# -- dynamic limits ----------------------------------------------------------------------------

def regime_limits(limits: RiskLimits, volatility: float) -> tuple[RiskLimits, str | None]:
    """The limits in force at a market ``volatility`` (annualised): tightened by the
    configured regime while it is above the threshold, with a message naming the rule, the
    figures and each limit changed (``None``: the configured limits hold)."""
    regime = limits.regime
    if regime is None or volatility <= regime.threshold:     # inf: unmeasured, tightens
        return limits, None
    changed = {name: getattr(limits, name) * factor for name, factor in regime.tighten.items()
               if getattr(limits, name) is not None}
    tightened = limits.model_copy(update=changed)
    shown = ", ".join(f"{name} {getattr(limits, name):g} -> {value:g}"
                      for name, value in sorted(changed.items())) or "no configured limit"
    market = regime.proxy or "the equal-weighted market"
    measured = (f"is {_pct(volatility)} a year, above {_pct(regime.threshold)}"
                if math.isfinite(volatility) else "could not be measured")
    return tightened, (f"volatility_regime: {market}'s realised volatility over "
                       f"{regime.window_sessions} sessions {measured}; tightened {shown}")

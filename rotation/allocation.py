"""Capital across the strategies of one account (issue 15 item 3), pure computation.

* :func:`allocate` — each strategy's share of the account, summing to 1:

  - ``fixed``: the configured weights, normalised;
  - ``inverse_volatility``: ``1 / σ`` of each strategy's out-of-sample daily returns;
  - ``risk_parity``: equal risk contributions ``a_i (Σa)_i = aᵀΣa / n`` under the shrunk
    (Ledoit–Wolf) covariance of those returns, solved as the convex problem
    ``min ½ yᵀΣy − Σ log(y_i) / n`` (Spinu 2013) by cyclical coordinate descent
    (Griveau-Billion, Richard and Roncalli 2013), then ``a = y / Σy``.

* :func:`net_targets` — the one target the account trades, ``Σ_s a_s · w_s`` per fund, with
  each strategy's part of it.
* :func:`cross` and :func:`split_fill` — the netted order's units shared among the strategies
  that wanted the fund, in whole units that add up: opposite wishes cross inside the account
  first (no order, no fee), then each fill and its fee go to the strategies on the order's side
  pro rata to what each still wants. Per-strategy positions, cash and so P&L sum to the
  account's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

__all__ = ["AllocationMethod", "FillShare", "NettedTarget", "allocate", "cross", "net_targets",
           "pro_rata", "risk_contributions", "risk_parity_weights", "split_fill"]

AllocationMethod = Literal["fixed", "inverse_volatility", "risk_parity"]
# Out-of-sample sessions every strategy must share before its returns decide an allocation.
MIN_COMMON_SESSIONS = 60
_TOLERANCE = 1e-12
_MAX_SWEEPS = 10_000


def allocate(method: AllocationMethod, strategies: list[str], *,
             fixed: Mapping[str, float] | None = None,
             returns: pd.DataFrame | None = None) -> pd.Series:
    """Each strategy's share of the account (index ``strategies``, summing to 1); raises
    :class:`ValueError` naming the strategy and the problem."""
    if not strategies or len(set(strategies)) != len(strategies):
        raise ValueError(f"allocation: strategies must be distinct and at least one, got "
                         f"{strategies}")
    if method == "fixed":
        return _normalised(_fixed_weights(strategies, fixed or {}))
    daily = _common_returns(strategies, returns)
    flat = daily.columns[~(daily.std(ddof=1) > 0)].tolist()
    if flat:
        raise ValueError(f"allocation {method}: strategies {flat} have no out-of-sample "
                         "volatility (they never traded)")
    if method == "inverse_volatility":
        return _normalised(1.0 / daily.std(ddof=1))
    if method == "risk_parity":
        # scipy (through portfolio_risk): imported when an allocation is computed, not when
        # an account's settings name the method.
        from rotation.portfolio_risk import shrunk_covariance

        return pd.Series(risk_parity_weights(shrunk_covariance(daily.to_numpy())), index=strategies)
    raise ValueError(f"allocation: unknown method {method!r} (fixed, inverse_volatility, "
                     "risk_parity)")


def _fixed_weights(strategies: list[str], fixed: Mapping[str, float]) -> pd.Series:
    missing = [s for s in strategies if s not in fixed]
    extra = sorted(set(fixed) - set(strategies))
    if missing or extra:
        raise ValueError(f"allocation fixed: weights must name exactly the account's strategies "
                         f"(missing {missing}, not the account's {extra})")
    weights = pd.Series({s: float(fixed[s]) for s in strategies})
    bad = weights.index[~np.isfinite(weights) | (weights < 0)].tolist()
    if bad:
        raise ValueError(f"allocation fixed: weights of {bad} must be finite and >= 0")
    return weights


def _normalised(weights: pd.Series) -> pd.Series:
    total = float(weights.sum())
    if not total > 0:
        raise ValueError("allocation: the weights sum to 0; give at least one strategy capital")
    return weights / total


def _common_returns(strategies: list[str], returns: pd.DataFrame | None) -> pd.DataFrame:
    """The strategies' daily out-of-sample returns on the sessions all of them have."""
    if returns is None:
        raise ValueError("allocation: this method needs the strategies' out-of-sample returns")
    missing = [s for s in strategies if s not in returns.columns]
    if missing:
        raise ValueError(f"allocation: no out-of-sample returns for strategies {missing}")
    daily = returns[strategies].dropna()
    if len(daily) < MIN_COMMON_SESSIONS:
        raise ValueError(f"allocation: the strategies share {len(daily)} out-of-sample "
                         f"sessions, fewer than the {MIN_COMMON_SESSIONS} an estimate needs")
    return daily


def risk_parity_weights(cov: np.ndarray) -> np.ndarray:
    """Equal-risk-contribution weights of covariance ``cov`` (cyclical coordinate descent)."""
    n = len(cov)
    budget = 1.0 / n
    y = 1.0 / np.sqrt(np.diag(cov))
    for _ in range(_MAX_SWEEPS):
        previous = y.copy()
        for i in range(n):
            others = float(cov[i] @ y - cov[i, i] * y[i])
            y[i] = (-others + math.sqrt(others * others + 4.0 * cov[i, i] * budget)) \
                / (2.0 * cov[i, i])
        if np.max(np.abs(y - previous) / y) < _TOLERANCE:
            break
    else:
        raise ValueError("allocation risk_parity: the solver did not converge")
    return y / y.sum()


def risk_contributions(weights: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Each weight's share of the portfolio variance (``a_i (Σa)_i / aᵀΣa``, summing to 1)."""
    marginal = cov @ weights
    return weights * marginal / float(weights @ marginal)


@dataclass(frozen=True)
class NettedTarget:
    """The account's target weights and, per fund, the weight each strategy contributes."""

    weights: dict[str, float]
    parts: dict[str, dict[str, float]]     # fund -> strategy -> weight of the account


def blended_returns(equities: Mapping[str, pd.Series], shares: Mapping[str, float]
                    ) -> pd.Series:
    """The daily returns of an account holding each strategy at its share (kept at the shares
    every session), on the sessions every strategy's equity curve has: what its netted
    target's VaR is backtested against."""
    returns = pd.DataFrame(dict(equities)).pct_change(fill_method=None).dropna()
    weights = pd.Series(dict(shares), dtype=float).reindex(returns.columns).fillna(0.0)
    if weights.sum() <= 0:
        raise ValueError(f"no positive share among {sorted(shares)} for {list(returns.columns)}")
    return (returns @ (weights / weights.sum())).rename("returns")


def net_targets(targets: Mapping[str, Mapping[str, float]], allocation: Mapping[str, float]
                ) -> NettedTarget:
    """``Σ_s a_s · w_s`` per fund over the strategies' target weights ``targets``."""
    unknown = sorted(set(targets) ^ set(allocation))
    if unknown:
        raise ValueError(f"net_targets: targets and allocation must name the same strategies "
                         f"(differ in {unknown})")
    parts: dict[str, dict[str, float]] = {}
    for strategy, weights in targets.items():
        for fund, weight in weights.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"net_targets: strategy {strategy} weight of {fund} is "
                                 f"{weight!r}; weights must be finite and >= 0")
            if weight > 0 and allocation[strategy] > 0:
                parts.setdefault(fund, {})[strategy] = allocation[strategy] * weight
    netted = {fund: sum(by.values()) for fund, by in sorted(parts.items())}
    if sum(netted.values()) > 1 + 1e-9:
        raise ValueError(f"net_targets: the netted weights sum to {sum(netted.values()):.6f} "
                         "> 1 (a strategy's target is over-invested)")
    return NettedTarget(weights=netted, parts=parts)


def cross(wants: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """Settle opposite wishes for one fund inside the account (no order, no fee).

    ``wants[s]``: the units strategy ``s`` wants to trade (+ buy, − sell). Returns the units
    each strategy takes in the crossing (signed, summing to 0) and what each still wants from
    the market (all on the side of the net order, summing to it)."""
    buyers = {s: w for s, w in wants.items() if w > 0}
    sellers = {s: -w for s, w in wants.items() if w < 0}
    crossing = min(sum(buyers.values()), sum(sellers.values()))
    bought, sold = pro_rata(crossing, buyers), pro_rata(crossing, sellers)
    crossed = {s: bought.get(s, 0) - sold.get(s, 0) for s in wants}
    remaining = {s: w - crossed[s] for s, w in wants.items() if w - crossed[s] != 0}
    return crossed, remaining


@dataclass(frozen=True)
class FillShare:
    """One strategy's part of a fill: units (+ bought, − sold) and the fee it pays."""

    units: int
    fee: float


def split_fill(remaining: Mapping[str, int], quantity: int, fee: float
               ) -> dict[str, FillShare]:
    """Share a fill of ``quantity`` units and its ``fee`` among the strategies that still want
    ``remaining[s]`` units from the market (one side, see :func:`cross`), pro rata in whole
    units that add up to the fill (largest remainders)."""
    signs = {int(np.sign(w)) for w in remaining.values()}
    if len(signs) > 1 or 0 in signs:
        raise ValueError(f"split_fill: the strategies' remaining wishes {dict(remaining)} must "
                         "all be on one side (cross them first)")
    wanted = sum(abs(w) for w in remaining.values())
    if not 0 <= quantity <= wanted:
        raise ValueError(f"split_fill: a fill of {quantity} units is more than the {wanted} "
                         "the strategies still want")
    sign = signs.pop() if signs else 1
    units = pro_rata(quantity, {s: abs(w) for s, w in remaining.items()})
    return {s: FillShare(sign * u, fee * u / quantity if quantity else 0.0)
            for s, u in units.items()}


def pro_rata(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """``total`` units split by ``weights`` in whole units (largest remainder, ties by name)."""
    whole = sum(weights.values())
    if total == 0 or whole == 0:
        return dict.fromkeys(weights, 0)
    exact = {s: total * w / whole for s, w in weights.items()}
    units = {s: math.floor(x) for s, x in exact.items()}
    left = total - sum(units.values())
    for s in sorted(exact, key=lambda s: (-(exact[s] - units[s]), s))[:left]:
        units[s] += 1
    return units

"""Portfolio construction (SPEC §8): composite score → top-N with hysteresis → capped weights →
regime gate → absolute-momentum filter (defensive fund or cash).

Timing (SPEC §1): every decision for session D reads rows ``<= D`` of its inputs only, in a
fixed order, so altering any data after D leaves the targets up to D bit-identical; the targets
of D are traded at open(D+1) under ``T1_OPEN``. Rows of every panel are sessions of the trading
calendar (``dates × symbols``), so "days" below always means sessions.

Schedule: decisions are taken on rebalance sessions only (every ``rebalance_every`` rows,
:func:`rebalance_schedule`). Between them the targets are carried unchanged, with one exception:
a holding that leaves the eligible universe (no history, stale, halted — SPEC §2/§9) is dropped
on the day it does and its weight goes to cash until the next rebalance; the defensive fund is
likewise zeroed while it is not eligible. So a target portfolio never names a fund that the
SPEC §9 membership check would reject, and no other trade happens between rebalance sessions.

Layout: numba kernels (``_*_nb``) for the sequential hysteresis loop, the per-row capped
weights and the rolling percentile; pandas functions align frames, call them and label results.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

import numba
import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from rotation.factors.kernels import market_returns_nb, momentum_nb, volatility_nb
from rotation.factors.registry import FactorSpec

Weighting = Literal["equal", "inverse_vol", "score"]
_SCHEMES = {"equal": 0, "inverse_vol": 1, "score": 2}
TRADING_DAYS = 252.0
# Relative slack when comparing a weight with the cap (rounding of the redistribution).
_CAP_RTOL = 1e-12


# A share in [0, 1]: a volatility percentile or an exposure of the regime gate.
_Unit = Annotated[float, Field(ge=0, le=1)]


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class PortfolioConfig:
    """SPEC §8 parameters (validated; errors name the field).

    The one definition of the portfolio rules, their defaults and bounds. Strategy files give
    them in a nested form (``portfolio: {top_n, ..., regime: {window, lookback, min_periods,
    levels: [{percentile, exposure}]}, abs_momentum: {window, threshold}}``) that
    :func:`rotation.strategy.portfolio_from_nested` maps onto these fields (error locations in
    the nested form); ``defensive_symbol`` comes from the strategy's ``universe.defensive``.

    Selection: the ``top_n`` best-ranked eligible funds; a holding stays while its rank is
    ``<= top_n + buffer`` and is never dropped before ``min_hold_days`` sessions unless it
    leaves the eligible universe. Decisions every ``rebalance_every`` sessions.

    Weights: ``equal``, ``inverse_vol`` (1 / annualised ``vol_window``-session volatility) or
    ``score`` (proportional to the positive part of the composite score), each capped at
    ``max_weight`` with the excess redistributed pro rata among the uncapped holdings.

    Regime gate: percentile of today's ``regime_window``-session market volatility among the last
    ``regime_lookback`` values (today included); exposure is the value of the highest
    ``(percentile, exposure)`` level reached, 1.0 below all levels and while fewer than
    ``regime_min_periods`` volatility values exist. An empty ``regime_levels`` disables the gate.

    Absolute momentum: a selected fund whose own ``abs_mom_window``-session return is below
    ``abs_mom_threshold`` (a return, so ``>= -1``) hands its weight to ``defensive_symbol`` (up
    to ``defensive_max_weight``, default ``max_weight``; the rest stays cash) or to cash when no
    defensive fund is set. ``abs_mom_window=None`` disables the filter.
    """

    top_n: int = Field(default=3, ge=1)
    buffer: int = Field(default=2, ge=0)
    min_hold_days: int = Field(default=5, ge=0)
    rebalance_every: int = Field(default=5, ge=1)
    weighting: Weighting = "equal"
    max_weight: float = Field(default=0.4, gt=0, le=1)
    vol_window: int = Field(default=20, ge=2)
    regime_window: int = Field(default=20, ge=2)
    regime_lookback: int = Field(default=252, ge=2)
    regime_min_periods: int = Field(default=60, ge=1)
    regime_levels: tuple[tuple[_Unit, _Unit], ...] = ((0.8, 0.5), (0.95, 0.0))
    abs_mom_window: int | None = Field(default=60, ge=1)
    abs_mom_threshold: float = Field(default=0.0, ge=-1, allow_inf_nan=False)
    defensive_symbol: str | None = Field(default=None, min_length=1)
    defensive_max_weight: float | None = Field(default=None, gt=0, le=1)

    # Messages below do not repeat the field name: the error location names it (here the flat
    # field, in a strategy file the nested key, e.g. ``portfolio.regime.levels``).
    @field_validator("regime_levels")
    @classmethod
    def _check_levels(cls, levels: tuple[tuple[float, float], ...]
                      ) -> tuple[tuple[float, float], ...]:
        for (p0, e0), (p1, e1) in itertools.pairwise(levels):
            if not p1 > p0:
                raise ValueError("percentiles must be strictly increasing")
            if e1 > e0:
                raise ValueError("exposures must not increase with the percentile (higher "
                                 "volatility, lower exposure)")
        return levels

    @field_validator("regime_min_periods")
    @classmethod
    def _check_min_periods(cls, value: int, info: ValidationInfo) -> int:
        lookback = info.data.get("regime_lookback")  # absent when it failed validation
        if lookback is not None and value > lookback:
            raise ValueError(f"{value} must be <= the regime lookback ({lookback})")
        return value

    @property
    def defensive_cap(self) -> float:
        """Largest weight the defensive fund may receive (SPEC §9 max weight per fund)."""
        return self.max_weight if self.defensive_max_weight is None else self.defensive_max_weight


# -- score --------------------------------------------------------------------------------------


def directions_of(specs: Iterable[FactorSpec]) -> dict[str, int]:
    """``{name: direction}`` of factor specs (the argument :func:`composite_score` takes)."""
    return {s.name: int(s.direction) for s in specs}


def composite_score(std_factors: Mapping[str, pd.DataFrame],
                    directions: Mapping[str, int]) -> pd.DataFrame:
    """Mean of the standardised factors, each signed by its direction hypothesis (SPEC §8).

    NaN-aware: at each (date, fund) the mean of the factors that have a value there; NaN when
    none does (missing is never zero, SPEC §3). Frames are aligned on the union of their dates
    and symbols. ``directions`` may hold more names than ``std_factors`` (e.g. every spec).
    """
    if not std_factors:
        raise ValueError("composite_score: no factors given")
    signs: dict[str, int] = {}
    for name in std_factors:
        if name not in directions:
            raise ValueError(f"composite_score: no direction for factor {name!r}")
        d = directions[name]
        if isinstance(d, bool) or d not in (1, -1):
            raise ValueError(f"composite_score: direction of {name!r} must be +1 or -1, got {d!r}")
        signs[name] = int(d)
    frames = list(std_factors.values())
    index = frames[0].index
    columns = frames[0].columns
    for f in frames[1:]:
        index = index.union(f.index)
        columns = columns.union(f.columns)
    index = index.sort_values()
    stack = np.stack([f.reindex(index=index, columns=columns).to_numpy(dtype=np.float64)
                      * signs[name] for name, f in std_factors.items()])
    count = np.sum(~np.isnan(stack), axis=0)
    total = np.nansum(stack, axis=0)
    with np.errstate(all="ignore"):
        out = np.where(count > 0, total / count, np.nan)
    return pd.DataFrame(out, index=index, columns=columns)


# -- selection ----------------------------------------------------------------------------------


def rebalance_schedule(index: pd.Index, cfg: PortfolioConfig, start: object = None) -> pd.Series:
    """True on rebalance sessions: every ``rebalance_every`` rows from ``start``.

    ``start`` (default: the first row) is the first session on or after it; rows before it are
    never rebalance sessions. Anchor it explicitly (e.g. at an out-of-sample start) when panels
    of different lengths must share a schedule.
    """
    n = len(index)
    first = 0 if start is None else int(np.searchsorted(index, pd.Timestamp(start), side="left"))
    pos = np.arange(n)
    mask = (pos >= first) & ((pos - first) % cfg.rebalance_every == 0)
    return pd.Series(mask, index=index, name="rebalance")


@numba.njit(cache=True)
def _better_nb(score_k, key_k, score_j, key_j):
    """A fund with (score_k, key_k) ranks before one with (score_j, key_j): higher score, ties
    by key (symbol). Scalars, not arrays: this is called in the innermost loops."""
    return score_k > score_j or (score_k == score_j and key_k < key_j)


@numba.njit(cache=True)
def _hysteresis_nb(score, eligible, rebalance, key, top_n, buffer, min_hold, rank_all=True):
    """Sequential top-N with buffer and minimum holding period.

    Returns ``selected`` (bool), ``rank`` (1 = best among eligible funds with a score; ties by
    ``key``, i.e. by symbol; NaN when unranked) and ``held`` (sessions a fund held at t-1 has
    been held at t, NaN otherwise). Row t reads rows <= t only.

    ``rank_all=False`` is the search's fast path with the same selection: ranks are computed
    only where the selection reads them (holdings on rebalance rows) and new entries are the
    best remaining funds found by scanning, instead of a full ranking of every row; ``rank``
    and ``held`` then come back empty (zero rows), as the search reads only ``selected``.
    """
    n_rows, n_sym = score.shape
    selected = np.zeros((n_rows, n_sym), dtype=np.bool_)
    n_out = n_rows if rank_all else 0
    rank = np.full((n_out, n_sym), np.nan)
    held = np.full((n_out, n_sym), np.nan)
    entry = np.full(n_sym, -1, dtype=np.int64)
    by_rank = np.empty(n_sym, dtype=np.int64)
    ok = np.empty(n_sym, dtype=np.bool_)
    by_key = np.argsort(key)
    cand = np.empty(n_sym, dtype=np.int64)
    neg = np.empty(n_sym)
    for t in range(n_rows):
        n_ok = 0
        for j in range(n_sym):
            ok[j] = eligible[t, j] and np.isfinite(score[t, j])
            if ok[j]:
                n_ok += 1
            if rank_all and entry[j] >= 0:
                held[t, j] = t - entry[j]
        if rank_all:
            # Highest score first, ties by key: a stable sort of the key-ordered candidates.
            m = 0
            for i in range(n_sym):
                j = by_key[i]
                if ok[j]:
                    cand[m] = j
                    neg[m] = -score[t, j]
                    m += 1
            order = np.argsort(neg[:m], kind="mergesort")
            for r in range(m):
                j = cand[order[r]]
                rank[t, j] = r + 1
                by_rank[r] = j
        if not rebalance[t]:
            for j in range(n_sym):
                if entry[j] >= 0:
                    if eligible[t, j]:
                        selected[t, j] = True
                    else:
                        entry[j] = -1
            continue
        n_kept = 0
        for j in range(n_sym):
            if entry[j] < 0:
                continue
            if rank_all:
                r = rank[t, j]
            elif ok[j]:
                r = 1.0
                for k in range(n_sym):
                    if ok[k] and _better_nb(score[t, k], key[k], score[t, j], key[j]):
                        r += 1.0
            else:
                r = np.nan
            in_buffer = ok[j] and r <= top_n + buffer
            if eligible[t, j] and (in_buffer or t - entry[j] < min_hold):
                selected[t, j] = True
                n_kept += 1
            else:
                entry[j] = -1
        slots = top_n - n_kept
        if rank_all:
            for r in range(n_ok):
                if slots <= 0:
                    break
                j = by_rank[r]
                if not selected[t, j]:
                    selected[t, j] = True
                    entry[j] = t
                    slots -= 1
        else:
            while slots > 0:
                best = -1
                for k in range(n_sym):
                    if ok[k] and not selected[t, k] and (
                            best < 0 or _better_nb(score[t, k], key[k], score[t, best], key[best])):
                        best = k
                if best < 0:
                    break
                selected[t, best] = True
                entry[best] = t
                slots -= 1
    return selected, rank, held


def _check_index(frame: pd.DataFrame, what: str) -> None:
    if not frame.index.is_monotonic_increasing or not frame.index.is_unique:
        raise ValueError(f"{what}: the date index must be sorted and unique")
    if not frame.columns.is_unique:
        raise ValueError(f"{what}: symbols must be unique")


def _bool_panel(frame: pd.DataFrame, index: pd.Index, columns: pd.Index) -> pd.DataFrame:
    """Aligned boolean panel; missing entries (and NaN) are False, never True."""
    aligned = frame.reindex(index=index, columns=columns)
    # Nothing missing: the nullable round trip (column by column, the main cost of the chain
    # per window) would change nothing.
    if all(dtype == np.dtype(bool) for dtype in aligned.dtypes):
        return aligned.astype(bool)
    return aligned.astype("boolean").fillna(False).astype(bool)


def _mask(mask: pd.Series | None, index: pd.Index, cfg: PortfolioConfig) -> np.ndarray:
    if mask is None:
        return rebalance_schedule(index, cfg).to_numpy()
    return mask.reindex(index).astype("boolean").fillna(False).to_numpy(dtype=bool)


def _symbol_keys(columns: pd.Index) -> np.ndarray:
    """Position of each column in the sorted symbol order (the deterministic tie-break)."""
    order = np.argsort(np.asarray(columns.astype(str)), kind="stable")
    keys = np.empty(len(columns), dtype=np.int64)
    keys[order] = np.arange(len(columns))
    return keys


def _hysteresis(score: pd.DataFrame, eligible: pd.DataFrame, cfg: PortfolioConfig,
                rebalance: pd.Series | None
                ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    _check_index(score, "select_with_hysteresis")
    elig = _bool_panel(eligible, score.index, score.columns)
    sched = _mask(rebalance, score.index, cfg)
    selected, rank, held = _hysteresis_nb(
        np.ascontiguousarray(score.to_numpy(dtype=np.float64)),
        np.ascontiguousarray(elig.to_numpy(dtype=np.bool_)), sched,
        _symbol_keys(score.columns), cfg.top_n, cfg.buffer, cfg.min_hold_days)

    def label(a: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(a, index=score.index, columns=score.columns)

    return label(selected), label(rank), label(held), sched


def select_with_hysteresis(score: pd.DataFrame, eligible: pd.DataFrame, cfg: PortfolioConfig,
                           *, rebalance: pd.Series | None = None) -> pd.DataFrame:
    """Holdings per session (dates × symbols, bool): top-N with buffer and minimum hold.

    On a rebalance session (``rebalance``, default :func:`rebalance_schedule`) funds are ranked
    by ``score`` among the eligible ones with a score (highest first, ties by symbol). A holding
    stays while eligible and ranked ``<= top_n + buffer``, or while held fewer than
    ``min_hold_days`` sessions; free slots up to ``top_n`` go to the best-ranked new funds.
    Between rebalance sessions holdings carry, except that one leaving the eligible universe is
    dropped at once (and can only come back at a rebalance). Sequential, so it runs in numba.
    """
    return _hysteresis(score, eligible, cfg, rebalance)[0]


# -- weights ------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _cap_row_nb(base, cap, out, fixed):
    """Water-filling: normalise ``base`` (>= 0) to 1, cap at ``cap``, hand the excess to the
    uncapped entries pro rata to ``base``, repeat until none exceeds the cap. ``fixed`` comes
    back True for the capped entries."""
    n = base.shape[0]
    fixed[:] = False
    n_fixed = 0
    while True:
        room = 1.0 - cap * n_fixed
        free_sum = 0.0
        for j in range(n):
            if not fixed[j]:
                free_sum += base[j]
        changed = False
        if room > 0.0 and free_sum > 0.0:
            for j in range(n):
                if not fixed[j] and base[j] > 0.0 and base[j] / free_sum * room > cap * (
                        1.0 + _CAP_RTOL):
                    fixed[j] = True
                    n_fixed += 1
                    changed = True
        if not changed:
            break
    room = 1.0 - cap * n_fixed
    for j in range(n):
        if fixed[j]:
            out[j] = cap
        elif room > 0.0 and free_sum > 0.0:
            out[j] = min(base[j] / free_sum * room, cap)
        else:
            out[j] = 0.0


@numba.njit(cache=True)
def _weights_nb(selected, score, vol, scheme, cap, rows):
    """Capped base weights on the rows listed in ``rows`` (every row for the portfolio; the
    search lists only the rebalance rows, the only ones it reads); other rows stay zero."""
    n_rows, n_sym = selected.shape
    out = np.zeros((n_rows, n_sym))
    capped = np.zeros((n_rows, n_sym), dtype=np.bool_)
    base = np.zeros(n_sym)
    row = np.zeros(n_sym)
    fixed = np.zeros(n_sym, dtype=np.bool_)
    for t in rows:
        k = 0
        for j in range(n_sym):
            base[j] = 0.0
            if selected[t, j]:
                k += 1
        if k == 0:
            continue
        total = 0.0
        if scheme == 1:
            for j in range(n_sym):
                if selected[t, j]:
                    v = vol[t, j]
                    if np.isfinite(v) and v > 0.0:
                        base[j] = 1.0 / v
                        total += base[j]
                    else:  # one missing volatility: the row falls back to equal weights
                        total = 0.0
                        break
        elif scheme == 2:
            for j in range(n_sym):
                if selected[t, j]:
                    s = score[t, j]
                    if np.isfinite(s) and s > 0.0:
                        base[j] = s
                        total += s
        if scheme == 0 or not total > 0.0:
            for j in range(n_sym):
                base[j] = 1.0 if selected[t, j] else 0.0
        _cap_row_nb(base, cap, row, fixed)
        for j in range(n_sym):
            out[t, j] = row[j]
            capped[t, j] = fixed[j]
    return out, capped


def _weights(selection: pd.DataFrame, score: pd.DataFrame | None, vol: pd.DataFrame | None,
             cfg: PortfolioConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    sel = _bool_panel(selection, selection.index, selection.columns)
    if cfg.weighting == "inverse_vol" and vol is None:
        raise ValueError("weights_for: weighting 'inverse_vol' needs vol")
    if cfg.weighting == "score" and score is None:
        raise ValueError("weights_for: weighting 'score' needs score")

    def arr(frame: pd.DataFrame | None) -> np.ndarray:
        if frame is None:
            return np.full(sel.shape, np.nan)
        return np.ascontiguousarray(
            frame.reindex(index=sel.index, columns=sel.columns).to_numpy(dtype=np.float64))

    out, capped = _weights_nb(np.ascontiguousarray(sel.to_numpy(dtype=np.bool_)), arr(score),
                              arr(vol), _SCHEMES[cfg.weighting], float(cfg.max_weight),
                              np.arange(len(sel), dtype=np.int64))
    return (pd.DataFrame(out, index=sel.index, columns=sel.columns),
            pd.DataFrame(capped, index=sel.index, columns=sel.columns))


def weights_for(selection: pd.DataFrame, score: pd.DataFrame | None, vol: pd.DataFrame | None,
                cfg: PortfolioConfig) -> pd.DataFrame:
    """Capped weights of the selected funds, row by row (each row uses that row only).

    ``equal``: 1/k. ``inverse_vol``: proportional to 1/``vol``; a row where a selected fund has
    no positive volatility falls back to equal weights. ``score``: proportional to the positive
    part of ``score`` (a holding kept by the buffer with a score <= 0 gets nothing); equal
    weights when no selected score is positive. Then every weight is capped at ``max_weight``
    and the excess redistributed pro rata among the uncapped funds, iteratively; when
    ``k × max_weight < 1`` the remainder is cash. Rows sum to at most 1 (rounding 1e-12).
    """
    return _weights(selection, score, vol, cfg)[0]


# -- regime gate --------------------------------------------------------------------------------


@numba.njit(cache=True)
def _regime_nb(r, window, lookback, min_periods):
    """Rolling sample std of ``r`` (all ``window`` values finite) and its percentile among the
    last ``lookback`` finite values up to and including t (share of them <= today's)."""
    n = r.shape[0]
    vol = np.full(n, np.nan)
    for t in range(window - 1, n):
        lo = t - window + 1
        good = True
        s = 0.0
        for i in range(lo, t + 1):
            if not np.isfinite(r[i]):
                good = False
                break
            s += r[i]
        if not good:
            continue
        m = s / window
        ss = 0.0
        for i in range(lo, t + 1):
            ss += (r[i] - m) * (r[i] - m)
        vol[t] = math.sqrt(ss / (window - 1))
    pct = np.full(n, np.nan)
    for t in range(n):
        v = vol[t]
        if not np.isfinite(v):
            continue
        cnt = 0
        below = 0
        for i in range(max(0, t - lookback + 1), t + 1):
            if np.isfinite(vol[i]):
                cnt += 1
                if vol[i] <= v:
                    below += 1
        if cnt >= min_periods:
            pct[t] = below / cnt
    return vol, pct


def market_volatility(market_returns: pd.Series, cfg: PortfolioConfig) -> pd.Series:
    """Annualised ``regime_window``-session volatility of the market (NaN until a full window)."""
    vol, _ = _regime_nb(np.ascontiguousarray(market_returns.to_numpy(dtype=np.float64)),
                        cfg.regime_window, cfg.regime_lookback, cfg.regime_min_periods)
    return pd.Series(vol * math.sqrt(TRADING_DAYS), index=market_returns.index,
                     name="market_vol")


def regime_percentile(market_returns: pd.Series, cfg: PortfolioConfig) -> pd.Series:
    """Causal percentile in (0, 1] of today's market volatility among the last
    ``regime_lookback`` volatility values, today included; NaN until ``regime_min_periods``."""
    if not market_returns.index.is_monotonic_increasing:
        raise ValueError("regime_percentile: the date index must be sorted")
    _, pct = _regime_nb(np.ascontiguousarray(market_returns.to_numpy(dtype=np.float64)),
                        cfg.regime_window, cfg.regime_lookback, cfg.regime_min_periods)
    return pd.Series(pct, index=market_returns.index, name="regime_percentile")


def exposure_for_percentile(percentile: pd.Series, cfg: PortfolioConfig) -> pd.Series:
    """Gross exposure from the ``regime_levels`` reached (1.0 below them and where unknown)."""
    pct = percentile.to_numpy(dtype=np.float64)
    exposure = np.ones(len(pct))
    for level, value in cfg.regime_levels:
        exposure = np.where(pct >= level, value, exposure)  # NaN >= level is False
    return pd.Series(exposure, index=percentile.index, name="exposure")


def regime_exposure(market_returns: pd.Series, cfg: PortfolioConfig) -> pd.Series:
    """Exposure per session from the causal market-volatility percentile (SPEC §8 gate)."""
    return exposure_for_percentile(regime_percentile(market_returns, cfg), cfg)


# -- absolute momentum --------------------------------------------------------------------------


def apply_absolute_momentum(weights: pd.DataFrame, abs_mom: pd.DataFrame, cfg: PortfolioConfig,
                            *, defensive_eligible: pd.Series | None = None) -> pd.DataFrame:
    """Hand the weight of funds with ``abs_mom < abs_mom_threshold`` to the defensive fund.

    With ``defensive_symbol`` set its column is added when missing; it receives the moved weight
    up to ``defensive_cap`` on sessions where ``defensive_eligible`` is True (default: always),
    the rest is cash. Without one the weight becomes cash. A missing momentum is not negative
    (the weight stays); the defensive fund itself is exempt.
    """
    out = weights.astype(np.float64)
    if cfg.abs_mom_window is None:
        return out
    mom = abs_mom.reindex(index=out.index, columns=out.columns).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        neg = mom < cfg.abs_mom_threshold
    defensive = cfg.defensive_symbol
    if defensive is not None and defensive in out.columns:
        neg[:, out.columns.get_loc(defensive)] = False
    values = out.to_numpy(dtype=np.float64, copy=True)
    moved = np.where(neg, values, 0.0).sum(axis=1)
    values[neg] = 0.0
    out = pd.DataFrame(values, index=out.index, columns=out.columns)
    if defensive is None:
        return out
    if defensive not in out.columns:
        out[defensive] = 0.0
    ok = (np.ones(len(out), dtype=bool) if defensive_eligible is None
          else defensive_eligible.reindex(out.index).astype("boolean").fillna(False)
          .to_numpy(dtype=bool))
    current = out[defensive].to_numpy()
    room = np.clip(cfg.defensive_cap - current, 0.0, None)
    out[defensive] = current + np.where(ok, np.minimum(moved, room), 0.0)
    return out


# -- the chain ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortfolioResult:
    """Every stage of the SPEC §8 chain, per session, for inspection and :func:`explain`.

    ``rank``/``held_days`` are as seen on each session before its decision; ``base_weights``
    (capped, before gate and filter), ``capped`` (hit ``max_weight``), ``percentile``,
    ``exposure`` and ``abs_mom`` are the values *applied* on each session (taken on the last
    rebalance session, listed in ``decision``, and carried; NaN before the first); ``weights``
    are the final targets (universe columns, plus the defensive fund's column when one is set).
    """

    cfg: PortfolioConfig
    score: pd.DataFrame
    eligible: pd.DataFrame
    rebalance: pd.Series
    decision: pd.Series
    rank: pd.DataFrame
    held_days: pd.DataFrame
    selection: pd.DataFrame
    base_weights: pd.DataFrame
    capped: pd.DataFrame
    percentile: pd.Series
    exposure: pd.Series
    abs_mom: pd.DataFrame
    defensive_eligible: pd.Series | None
    weights: pd.DataFrame


def fund_volatility(close: pd.DataFrame, cfg: PortfolioConfig) -> pd.DataFrame:
    """Annualised ``vol_window``-bar return volatility per fund (bar clock; factor kernel)."""
    values = volatility_nb(np.ascontiguousarray(close.to_numpy(dtype=np.float64)),
                           cfg.vol_window, TRADING_DAYS)
    return pd.DataFrame(values, index=close.index, columns=close.columns)


def absolute_momentum(close: pd.DataFrame, cfg: PortfolioConfig) -> pd.DataFrame:
    """Each fund's own ``abs_mom_window``-bar return (bar clock; factor kernel)."""
    if cfg.abs_mom_window is None:
        raise ValueError("absolute_momentum: abs_mom_window is None (filter disabled)")
    values = momentum_nb(np.ascontiguousarray(close.to_numpy(dtype=np.float64)),
                         cfg.abs_mom_window)
    return pd.DataFrame(values, index=close.index, columns=close.columns)


def market_returns_of(close: pd.DataFrame, eligible: pd.DataFrame) -> pd.Series:
    """Equal-weight daily return of the eligible funds (eligible on both sessions)."""
    masked = close.where(_bool_panel(eligible, close.index, close.columns))
    values = market_returns_nb(np.ascontiguousarray(masked.to_numpy(dtype=np.float64)))
    return pd.Series(values, index=close.index, name="market_return")


def _carry_rows(values: np.ndarray, decision: np.ndarray, fill: float) -> np.ndarray:
    taken = values[np.maximum(decision, 0)]
    where = (decision >= 0).reshape((-1,) + (1,) * (values.ndim - 1))
    return np.where(where, taken, fill)


def build_portfolio(score: pd.DataFrame, eligible: pd.DataFrame, cfg: PortfolioConfig, *,
                    close: pd.DataFrame | None = None, vol: pd.DataFrame | None = None,
                    abs_mom: pd.DataFrame | None = None,
                    market_returns: pd.Series | None = None,
                    percentile: pd.Series | None = None,
                    rebalance: pd.Series | None = None) -> PortfolioResult:
    """The SPEC §8 chain with every intermediate stage (see :func:`target_weights`).

    ``percentile``: the regime percentile (:func:`regime_percentile`) when it was computed over
    a longer history than ``score``'s (it looks back ``regime_lookback`` sessions), instead of
    from ``market_returns`` on ``score``'s sessions.
    """
    _check_index(score, "build_portfolio")
    score = score.astype(np.float64)
    index, universe = score.index, score.columns
    defensive = cfg.defensive_symbol
    if defensive is not None and defensive not in eligible.columns:
        raise ValueError(f"build_portfolio: defensive_symbol {defensive!r} has no column in "
                         "eligible (its availability cannot be checked)")
    elig = _bool_panel(eligible, index, universe)
    selection, rank, held, sched = _hysteresis(score, elig, cfg, rebalance)

    def need_close(what: str) -> pd.DataFrame:
        if close is None:
            raise ValueError(f"build_portfolio: {what} needs close (or pass it directly)")
        return close.reindex(index=index, columns=universe)

    use_mom = cfg.abs_mom_window is not None
    if cfg.weighting == "inverse_vol" and vol is None:
        vol = fund_volatility(need_close("inverse_vol weighting"), cfg)
    if use_mom and abs_mom is None:
        abs_mom = absolute_momentum(need_close("the absolute momentum filter"), cfg)
    if cfg.regime_levels and percentile is None and market_returns is None:
        market_returns = market_returns_of(need_close("the regime gate"), elig)

    base, capped = _weights(selection, score, vol, cfg)
    if cfg.regime_levels:
        pct = (regime_percentile(market_returns.reindex(index), cfg)  # type: ignore[union-attr]
               if percentile is None else percentile.reindex(index).rename("regime_percentile"))
        exposure = exposure_for_percentile(pct, cfg)
    else:
        pct = pd.Series(np.nan, index=index, name="regime_percentile")
        exposure = pd.Series(1.0, index=index, name="exposure")
    gated = base.mul(exposure, axis=0)
    def_ok = (None if defensive is None
              else _bool_panel(eligible, index, pd.Index([defensive]))[defensive])
    if use_mom:
        mom = abs_mom.reindex(index=index, columns=universe)  # type: ignore[union-attr]
        daily = apply_absolute_momentum(gated, mom, cfg, defensive_eligible=def_ok)
    else:
        mom = pd.DataFrame(np.nan, index=index, columns=universe)
        daily = gated.copy()
        if defensive is not None and defensive not in daily.columns:
            daily[defensive] = 0.0

    # Decisions of the last rebalance session carry; drop funds that left the universe.
    pos = np.where(sched, np.arange(len(index)), -1)
    decision = np.maximum.accumulate(pos) if len(pos) else pos
    live = np.zeros(daily.shape, dtype=bool)
    live[:, : len(universe)] = selection.to_numpy()
    if defensive is not None:
        live[:, daily.columns.get_loc(defensive)] = def_ok.to_numpy()  # type: ignore[union-attr]
    weights = np.where(live, _carry_rows(daily.to_numpy(), decision, 0.0), 0.0)
    base_carried = np.where(selection.to_numpy(), _carry_rows(base.to_numpy(), decision, 0.0),
                            0.0)
    dates = pd.Series(index[np.maximum(decision, 0)], index=index).where(decision >= 0)
    return PortfolioResult(
        cfg=cfg, score=score, eligible=elig, rebalance=pd.Series(sched, index=index,
                                                                name="rebalance"),
        decision=dates.rename("decision"), rank=rank, held_days=held, selection=selection,
        base_weights=pd.DataFrame(base_carried, index=index, columns=universe),
        capped=pd.DataFrame(selection.to_numpy() & _carry_rows(capped.to_numpy(), decision,
                                                               False),
                            index=index, columns=universe),
        percentile=pd.Series(_carry_rows(pct.to_numpy(), decision, np.nan), index=index,
                             name="regime_percentile"),
        exposure=pd.Series(_carry_rows(exposure.to_numpy(), decision, np.nan), index=index,
                           name="exposure"),
        abs_mom=pd.DataFrame(_carry_rows(mom.to_numpy(), decision, np.nan), index=index,
                             columns=universe),
        defensive_eligible=def_ok,
        weights=pd.DataFrame(weights, index=index, columns=daily.columns),
    )


def target_weights(score: pd.DataFrame, eligible: pd.DataFrame, cfg: PortfolioConfig, *,
                   close: pd.DataFrame | None = None, vol: pd.DataFrame | None = None,
                   abs_mom: pd.DataFrame | None = None, market_returns: pd.Series | None = None,
                   rebalance: pd.Series | None = None) -> pd.DataFrame:
    """Target weights per session (SPEC §8): hysteresis selection → capped weights → regime
    gate → absolute momentum to the defensive fund or cash.

    ``score`` (dates × symbols, e.g. :func:`composite_score`) defines the universe and calendar;
    ``eligible`` is the SPEC §2/§3 coverage mask (it must hold the defensive fund's column when
    one is set). Derived inputs default to ``close`` (adjusted): ``vol`` (for ``inverse_vol``),
    ``abs_mom`` and ``market_returns`` (equal-weight eligible universe). Rows are >= 0 and sum
    to at most 1 (the rest is cash); they change only on rebalance sessions except for funds
    leaving the eligible universe, which go to cash at once.
    """
    return build_portfolio(score, eligible, cfg, close=close, vol=vol, abs_mom=abs_mom,
                           market_returns=market_returns, rebalance=rebalance).weights


# -- explanation --------------------------------------------------------------------------------


def _pct_text(x: float) -> str:
    return f"{x * 100:+.1f} %".replace("-", "−")


def _selection_reason(cfg: PortfolioConfig, rebalance: bool, eligible: bool, held_before: bool,
                      selected: bool, rank: float, held: float) -> str:
    has_rank = not math.isnan(rank)
    r = int(rank) if has_rank else 0
    limit = cfg.top_n + cfg.buffer
    if not eligible:
        return "out: not eligible (history/stale)"
    if not rebalance:
        return ("kept: carried (not a rebalance session)" if selected
                else "out: not a rebalance session")
    if selected and not held_before:
        return f"in: rank {r} ≤ top_n"
    if selected:
        if has_rank and r <= cfg.top_n:
            return f"kept: rank {r} ≤ top_n"
        if has_rank and r <= limit:
            return f"kept: rank {r} within buffer"
        return f"kept: held {int(held)} < min_hold_days"
    if not has_rank:
        return "out: no score"
    if held_before:
        return f"out: rank {r} > top_n+buffer"
    if r <= cfg.top_n:
        return f"out: rank {r} ≤ top_n but no free slot (holdings kept by buffer/min hold)"
    return f"out: rank {r} > top_n"


def explain(date: object, result: PortfolioResult) -> pd.DataFrame:
    """Why each fund has its target weight on ``date`` (a session of ``result``).

    One row per universe fund (plus the defensive fund when set): score, rank, eligible,
    held_before, held_days, selected, base_weight (capped, before gate and filter), weight
    (final) and a readable ``reason``. Sorted by rank, unranked last.
    """
    cfg = result.cfg
    day = pd.Timestamp(date)
    if day not in result.score.index:
        raise KeyError(f"explain: {day:%Y-%m-%d} is not a session of the result")
    t = result.score.index.get_loc(day)
    rebalance = bool(result.rebalance.iloc[t])
    exposure = float(result.exposure.iloc[t])
    pct = float(result.percentile.iloc[t])
    defensive = cfg.defensive_symbol
    def_ok = (bool(result.defensive_eligible.iloc[t])
              if result.defensive_eligible is not None else False)
    decided = result.decision.iloc[t]  # the moved weight went where it could on that session
    def_ok_then = (bool(result.defensive_eligible.loc[decided])
                   if result.defensive_eligible is not None and not pd.isna(decided) else False)
    rows = []
    for sym in result.score.columns:
        held_before = bool(t > 0 and result.selection[sym].iloc[t - 1])
        selected = bool(result.selection[sym].iloc[t])
        rank = float(result.rank[sym].iloc[t])
        held = float(result.held_days[sym].iloc[t])
        eligible = bool(result.eligible[sym].iloc[t])
        reasons = [_selection_reason(cfg, rebalance, eligible, held_before, selected, rank,
                                     held)]
        base = float(result.base_weights[sym].iloc[t])
        if selected and bool(result.capped[sym].iloc[t]):
            reasons.append(f"capped at max_weight {cfg.max_weight:.2f}")
        if selected and not math.isnan(exposure) and exposure < 1.0:
            reasons.append(f"scaled by regime {exposure:g} (volatility percentile {pct:.2f})")
        mom = float(result.abs_mom[sym].iloc[t])
        if selected and sym != defensive and mom < cfg.abs_mom_threshold:
            target = "defensive" if defensive is not None and def_ok_then else "cash"
            reasons.append(f"moved to {target}: abs momentum {_pct_text(mom)}")
        if sym == defensive:
            reasons.append(f"defensive fund ({'eligible' if def_ok else 'not eligible'})")
        rows.append({"symbol": sym, "score": float(result.score[sym].iloc[t]), "rank": rank,
                     "eligible": eligible, "held_before": held_before,
                     "held_days": held if held_before else np.nan, "selected": selected,
                     "base_weight": base, "weight": float(result.weights[sym].iloc[t]),
                     "reason": "; ".join(reasons)})
    if defensive is not None and defensive not in result.score.columns:
        weight = float(result.weights[defensive].iloc[t])
        why = ("defensive: receives the weight of negative-momentum funds" if weight > 0
               else "defensive: no weight")
        if not def_ok:
            why = "defensive: not eligible (history/stale), moved weight stays cash"
        rows.append({"symbol": defensive, "score": np.nan, "rank": np.nan,
                     "eligible": def_ok, "held_before": bool(
                         t > 0 and result.weights[defensive].iloc[t - 1] > 0),
                     "held_days": np.nan, "selected": False, "base_weight": 0.0,
                     "weight": weight, "reason": why})
    out = pd.DataFrame(rows).set_index("symbol")
    order = np.lexsort((out.index.astype(str), out["rank"].fillna(np.inf).to_numpy()))
    return out.iloc[order]

"""Walk-forward combination search (SPEC §6): the fast numba engine and its vectorbt check.

For one in-sample window the engine evaluates every candidate — a combination of 2..k screened
factors × top-N × rebalance frequency × weighting — through the same SPEC §8 chain as the traded
portfolio (composite score → top-N with hysteresis → capped weights → regime gate → absolute
momentum to the defensive fund) and simulates its target weights under ``T1_OPEN``: decided
after close(D), traded at open(D+1) with commission and slippage, no trade in a fund without a
bar or at a limit price. Orders are placed on rebalance sessions and on sessions where the
targets change (a fund leaving the eligible universe), never to correct drift in between.

Accounting follows ``vectorbt.Portfolio.from_orders`` with ``size_type="targetpercent"``,
shared cash, ``call_seq="auto"`` (sells first) and fractional units, step for step, so that
:func:`vectorbt_equity` — the finalists re-run in vectorbt — gives the same daily equity to
floating-point rounding. Lots and the minimum commission are left to the full backtest
(:mod:`rotation.backtest`), which the out-of-sample results use; the search ranks candidates.

Layout: numba kernels (``*_nb``) over ``dates × funds`` arrays; :class:`SearchPanel` prepares the
arrays once per history, :func:`search_window` runs one window and labels the result.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numba
import numpy as np
import pandas as pd

from rotation.backtest import BacktestConfig, MarketPanels
from rotation.portfolio import (
    _SCHEMES,
    PortfolioConfig,
    _hysteresis_nb,
    _symbol_keys,
    _weights_nb,
    absolute_momentum,
    exposure_for_percentile,
    fund_volatility,
    market_returns_of,
    regime_percentile,
)

TRADING_DAYS = 252.0
# vectorbt's float tolerances (vectorbt.utils.math_): sizes and cash this close count as equal.
_REL_TOL = 1e-9
_ABS_TOL = 1e-12
# Columns of the per-candidate metric array.
METRICS = ("annual_return", "sharpe", "max_drawdown", "total_return", "turnover")
_N_METRICS = len(METRICS)


@dataclass(frozen=True)
class Candidate:
    """One point of the search space: factors (names) and the three varied portfolio rules."""

    factors: tuple[str, ...]
    top_n: int
    rebalance_every: int
    weighting: str

    def portfolio_config(self, base: PortfolioConfig) -> PortfolioConfig:
        return replace(base, top_n=self.top_n, rebalance_every=self.rebalance_every,
                       weighting=self.weighting)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, Any]:
        return {"factors": list(self.factors), "n_factors": len(self.factors),
                "top_n": self.top_n, "rebalance_every": self.rebalance_every,
                "weighting": self.weighting}


@dataclass(frozen=True)
class SearchSpace:
    """Combination sizes and the grid of portfolio rules (from the strategy's ``search``)."""

    min_factors: int = 2
    max_factors: int = 3
    top_n: tuple[int, ...] = (3,)
    rebalance_every: tuple[int, ...] = (5,)
    weightings: tuple[str, ...] = ("equal",)
    complexity_penalty: float = 0.02
    score_weights: tuple[float, float, float] = (0.4, 0.3, 0.3)  # return, Sharpe, drawdown
    finalists: int = 10

    def params(self) -> np.ndarray:
        """``(P, 3)`` int array of (top_n, rebalance_every, weighting scheme)."""
        grid = itertools.product(self.top_n, self.rebalance_every, self.weightings)
        return np.array([(n, r, _SCHEMES[w]) for n, r, w in grid], dtype=np.int64)


def combinations(n_factors: int, min_k: int, max_k: int) -> np.ndarray:
    """Every combination of ``min_k..max_k`` of ``n_factors`` as rows of factor indices,
    padded with -1 (``(C, max_k)`` int64)."""
    if not 1 <= min_k <= max_k:
        raise ValueError(f"combinations: need 1 <= min_k <= max_k, got {min_k}, {max_k}")
    top = min(max_k, n_factors)
    rows = [c for k in range(min_k, top + 1) for c in itertools.combinations(range(n_factors), k)]
    out = np.full((len(rows), max_k), -1, dtype=np.int64)
    for i, c in enumerate(rows):
        out[i, : len(c)] = c
    return out


# -- kernels ------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _is_close_nb(a: float, b: float) -> bool:
    if np.isnan(a) or np.isnan(b) or np.isinf(a) or np.isinf(b):
        return False
    if a == b:
        return True
    return abs(a - b) <= max(_REL_TOL * max(abs(a), abs(b)), _ABS_TOL)


@numba.njit(cache=True)
def _add_nb(a: float, b: float) -> float:
    opposite = np.sign(a) != np.sign(b)
    zero = _is_close_nb(abs(a), abs(b)) if opposite else _is_close_nb(a + b, 0.0)
    return 0.0 if zero else a + b


@numba.njit(cache=True)
def score_nb(signed: np.ndarray, combo: np.ndarray, a: int, b: int) -> np.ndarray:
    """Composite score on rows ``a..b``: NaN-aware mean of the combination's signed factors."""
    n_rows = b - a + 1
    n_sym = signed.shape[2]
    total = np.zeros((n_rows, n_sym))
    count = np.zeros((n_rows, n_sym))
    for f in combo:  # one factor panel at a time: contiguous reads
        if f < 0:
            break
        for i in range(n_rows):
            for j in range(n_sym):
                v = signed[f, a + i, j]
                if not np.isnan(v):
                    total[i, j] += v
                    count[i, j] += 1.0
    for i in range(n_rows):
        for j in range(n_sym):
            total[i, j] = total[i, j] / count[i, j] if count[i, j] > 0 else np.nan
    return total


@numba.njit(cache=True)
def targets_nb(selected: np.ndarray, base: np.ndarray, sched: np.ndarray, exposure: np.ndarray,
               abs_neg: np.ndarray, def_ok: np.ndarray, has_def: bool, def_cap: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Final targets and trade rows of :func:`rotation.portfolio.build_portfolio` from the
    selection and the capped base weights (rows aligned; row 0 must be a rebalance session).

    Decision rows apply the regime exposure and move the weight of negative-momentum funds to
    the defensive column (the last one when ``has_def``, up to ``def_cap`` while eligible);
    other rows carry the last decision for the funds still selected. A row is a trade row when
    it is a rebalance session or its targets differ from the previous row's.
    """
    n_rows, n_sym = selected.shape
    n_col = n_sym + 1 if has_def else n_sym
    out = np.zeros((n_rows, n_col))
    trade = np.zeros(n_rows, dtype=np.bool_)
    decided = np.zeros(n_col)
    for t in range(n_rows):
        if sched[t]:
            moved = 0.0
            for j in range(n_sym):
                w = base[t, j] * exposure[t]
                if abs_neg[t, j]:
                    moved += w
                    w = 0.0
                decided[j] = w
            if has_def:
                decided[n_sym] = min(moved, def_cap) if def_ok[t] else 0.0
        changed = sched[t] or t == 0
        for j in range(n_sym):
            out[t, j] = decided[j] if selected[t, j] else 0.0
            if t > 0 and out[t, j] != out[t - 1, j]:
                changed = True
        if has_def:
            out[t, n_sym] = decided[n_sym] if def_ok[t] else 0.0
            if t > 0 and out[t, n_sym] != out[t - 1, n_sym]:
                changed = True
        trade[t] = changed
    return out, trade


@numba.njit(cache=True)
def _insert_argsort_nb(values: np.ndarray, order: np.ndarray) -> None:
    """vectorbt's call-sequence sort (ascending order value, NaN last, stable)."""
    for j in range(1, len(values)):
        v = values[j]
        o = order[j]
        i = j - 1
        while i >= 0 and (values[i] > v or np.isnan(values[i])):
            values[i + 1] = values[i]
            order[i + 1] = order[i]
            i -= 1
        values[i + 1] = v
        order[i + 1] = o


@numba.njit(cache=True)
def _close_fills_nb(w: np.ndarray, close: np.ndarray, tradable: np.ndarray, pos: np.ndarray,
                    bought: np.ndarray, t0: np.ndarray, cash: float, fees: float,
                    slippage: float) -> tuple[float, float]:
    """Same-session orders at the close towards ``w`` (NaN: none), sells first: a fund of a
    T+1 class cannot sell units bought at this session's open. Returns (cash, traded)."""
    value = cash
    for j in range(w.shape[0]):
        if pos[j] != 0.0:
            value += pos[j] * close[j]
    traded = 0.0
    for side in (-1.0, 1.0):
        for j in range(w.shape[0]):
            if np.isnan(w[j]) or not tradable[j] or np.isnan(close[j]):
                continue
            size = w[j] * value / close[j] - pos[j]
            if side < 0.0 and size < 0.0:
                qty = min(pos[j], -size) if t0[j] else min(pos[j] - bought[j], -size)
                if qty <= 0.0:
                    continue
                got = qty * close[j] * (1.0 - slippage)
                cash += got - got * fees
                pos[j] -= qty
                traded += got
            elif side > 0.0 and size > 0.0:
                px = close[j] * (1.0 + slippage)
                qty = min(size, cash / (px * (1.0 + fees)))
                cash -= qty * px * (1.0 + fees)
                pos[j] += qty
                bought[j] += qty
                traded += qty * px
    return cash, traded


@numba.njit(cache=True)
def simulate_target_percent_nb(weights: np.ndarray, trade: np.ndarray, price: np.ndarray,
                               tradable: np.ndarray, close: np.ndarray, init_cash: float,
                               fees: float, slippage: float) -> tuple[np.ndarray, float]:
    """:func:`simulate_sessions_nb` with orders at the open only (how candidates trade)."""
    return simulate_sessions_nb(weights, trade, price, tradable, close, init_cash, fees,
                                slippage, np.zeros(weights.shape[1], dtype=np.bool_),
                                np.empty((0, weights.shape[1])))


@numba.njit(cache=True)
def simulate_sessions_nb(weights: np.ndarray, trade: np.ndarray, price: np.ndarray,
                         tradable: np.ndarray, close: np.ndarray, init_cash: float,
                         fees: float, slippage: float, t0: np.ndarray,
                         close_weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Daily equity (at the close) of target weights decided on trade rows and filled at the
    next row's ``price`` (the open). Returns ``(equity, traded_value)``. ``close_weights``
    (rows × funds, NaN = no order; zero rows = none at all) are filled at the close of their own
    row after its open orders, under the funds' settlement classes (``t0``).

    Mirrors ``vectorbt.Portfolio.from_orders(size_type="targetpercent", cash_sharing=True,
    call_seq="auto", direction="longonly")``: the group is valued once per session at the
    latest order prices, orders are sorted by value (sells first), a buy short of cash is
    filled partially, and a fund that cannot trade (no bar, limit day) keeps its position.
    """
    n_rows, n_col = weights.shape
    equity = np.empty(n_rows)
    pos = np.zeros(n_col)
    last_val = np.full(n_col, np.nan)
    values = np.empty(n_col)
    order = np.empty(n_col, dtype=np.int64)
    cash = init_cash
    traded = 0.0
    bought = np.zeros(n_col)
    has_close = close_weights.shape[0] > 0
    # The columns with pos != 0, ascending: positions change only where orders fill, and the
    # valuations sum over exactly these columns in this order, as a scan of every column would.
    held = np.empty(n_col, dtype=np.int64)
    n_held = 0
    for i in range(n_rows):
        orders = i > 0 and trade[i - 1]
        if has_close:
            bought[:] = 0.0
        if orders or has_close:
            for j in range(n_col):
                if not np.isnan(price[i, j]):
                    last_val[j] = price[i, j]
        else:  # only held columns' last prices are read before the next order row updates all
            for h in range(n_held):
                j = held[h]
                if not np.isnan(price[i, j]):
                    last_val[j] = price[i, j]
        if orders:
            value = cash
            for h in range(n_held):
                j = held[h]
                value += pos[j] * last_val[j]
            for j in range(n_col):
                order[j] = j
                if tradable[i, j] and not np.isnan(price[i, j]):
                    values[j] = weights[i - 1, j] * value - pos[j] * last_val[j]
                else:
                    values[j] = np.nan
            _insert_argsort_nb(values, order)
            if _is_close_nb(value, 0.0):
                value = 0.0
            for k in range(n_col):
                j = order[k]
                if not tradable[i, j] or np.isnan(price[i, j]) or value <= 0.0:
                    continue
                size = weights[i - 1, j] * value / last_val[j] - pos[j]
                if size > 0.0:
                    if cash == 0.0:
                        continue
                    adj_price = price[i, j] * (1.0 + slippage)
                    req_cash = size * adj_price
                    total = req_cash + req_cash * fees
                    if _is_close_nb(total, cash) or total < cash:
                        filled = size
                        spent = total
                    else:
                        max_req_cash = _add_nb(cash, -0.0) / (1.0 + fees)
                        if max_req_cash <= 0.0:
                            continue
                        filled = max_req_cash / adj_price
                        spent = cash
                    if _is_close_nb(size, 0.0):
                        continue
                    cash = _add_nb(cash, -spent)
                    pos[j] = _add_nb(pos[j], filled)
                    bought[j] += filled
                    traded += filled * adj_price
                else:
                    qty = min(pos[j], -size)
                    if pos[j] == 0.0 or _is_close_nb(qty, 0.0):
                        continue
                    adj_price = price[i, j] * (1.0 - slippage)
                    acquired = qty * adj_price
                    cash = cash + _add_nb(acquired, -acquired * fees)
                    pos[j] = _add_nb(pos[j], -qty)
                    traded += acquired
        if has_close:
            cash, extra = _close_fills_nb(close_weights[i], close[i], tradable[i], pos, bought,
                                          t0, cash, fees, slippage)
            traded += extra
        if orders or has_close:
            n_held = 0
            for j in range(n_col):
                if pos[j] != 0.0:
                    held[n_held] = j
                    n_held += 1
        value = cash
        for h in range(n_held):
            j = held[h]
            value += pos[j] * close[i, j]
        equity[i] = value
    return equity, traded


@numba.njit(cache=True)
def metrics_nb(equity: np.ndarray, traded: float, out: np.ndarray) -> None:
    """``METRICS`` of a daily equity curve into ``out``: CAGR, Sharpe (daily, ×√252, no
    risk-free rate), max drawdown (<= 0), total return and annualised turnover."""
    n = equity.shape[0]
    total = equity[n - 1] / equity[0] - 1.0
    years = (n - 1) / TRADING_DAYS
    if years <= 0:
        out[0] = np.nan  # a single session has no annual rate
    else:
        out[0] = (equity[n - 1] / equity[0]) ** (1.0 / years) - 1.0 if total > -1 else -1.0
    mean = 0.0
    for t in range(1, n):
        mean += equity[t] / equity[t - 1] - 1.0
    mean /= max(n - 1, 1)
    var = 0.0
    for t in range(1, n):
        d = equity[t] / equity[t - 1] - 1.0 - mean
        var += d * d
    sd = math.sqrt(var / max(n - 2, 1))
    out[1] = mean / sd * math.sqrt(TRADING_DAYS) if sd > 0 else 0.0
    peak = equity[0]
    mdd = 0.0
    avg = 0.0
    for t in range(n):
        peak = max(peak, equity[t])
        mdd = min(mdd, equity[t] / peak - 1.0)
        avg += equity[t]
    out[2] = mdd
    out[3] = total
    out[4] = traded / (avg / n) / years if years > 0 else 0.0


@numba.njit(cache=True)
def _candidate_nb(score: np.ndarray, a: int, b: int, top_n: int, every: int, scheme: int,
                  eligible: np.ndarray, key: np.ndarray, vol: np.ndarray, exposure: np.ndarray,
                  abs_neg: np.ndarray, def_ok: np.ndarray, has_def: bool, def_cap: float,
                  buffer: int, min_hold: int, cap: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    n_rows = b - a + 1
    sched = np.zeros(n_rows, dtype=np.bool_)
    for i in range(0, n_rows, every):
        sched[i] = True
    selected, _, _ = _hysteresis_nb(score, eligible[a:b + 1], sched, key, top_n, buffer,
                                    min_hold, False)
    # targets_nb reads the base weights on rebalance rows only: compute just those.
    base, _ = _weights_nb(selected, score, vol[a:b + 1], scheme, cap,
                          np.arange(0, n_rows, every))
    return targets_nb(selected, base, sched, exposure[a:b + 1], abs_neg[a:b + 1],
                      def_ok[a:b + 1], has_def, def_cap)


@numba.njit(cache=True, parallel=True)
def search_window_nb(signed: np.ndarray, combos: np.ndarray, params: np.ndarray, a: int, b: int,
                     eligible: np.ndarray, key: np.ndarray, vol: np.ndarray,
                     exposure: np.ndarray, abs_neg: np.ndarray, def_ok: np.ndarray,
                     has_def: bool, def_cap: float, buffer: int, min_hold: int, cap: float,
                     price: np.ndarray, tradable: np.ndarray, close: np.ndarray,
                     init_cash: float, fees: float, slippage: float) -> np.ndarray:
    """``(C, P, len(METRICS))`` metrics of every combination × parameter set on rows ``a..b``.

    The composite score is computed once per combination and shared by its parameter sets;
    combinations run in parallel (one per thread at a time).
    """
    n_combo = combos.shape[0]
    n_param = params.shape[0]
    out = np.empty((n_combo, n_param, _N_METRICS))
    for c in numba.prange(n_combo):
        score = score_nb(signed, combos[c], a, b)
        for p in range(n_param):
            w, trade = _candidate_nb(score, a, b, params[p, 0], params[p, 1], params[p, 2],
                                     eligible, key, vol, exposure, abs_neg, def_ok, has_def,
                                     def_cap, buffer, min_hold, cap)
            equity, traded = simulate_target_percent_nb(
                w, trade, price[a:b + 1], tradable[a:b + 1], close[a:b + 1], init_cash, fees,
                slippage)
            metrics_nb(equity, traded, out[c, p])
    return out


# -- the panel ----------------------------------------------------------------------------------


@dataclass
class SearchPanel:
    """Every array the search needs, aligned on ``dates × symbols`` once per history.

    ``symbols`` are the ranked funds; ``columns`` adds the defensive fund (last) when the
    portfolio rules name one. ``signed`` holds the standardised factors times their direction.
    Combination-independent inputs (volatility, regime exposure, absolute momentum) are causal
    and computed on the whole history, exactly as :func:`rotation.portfolio.build_portfolio`
    computes them.
    """

    dates: pd.DatetimeIndex
    symbols: pd.Index
    columns: pd.Index
    factor_names: tuple[str, ...]
    signed: np.ndarray
    eligible: np.ndarray
    key: np.ndarray
    vol: np.ndarray
    exposure: np.ndarray
    abs_neg: np.ndarray
    def_ok: np.ndarray
    price: np.ndarray
    tradable: np.ndarray
    close: np.ndarray
    cfg: PortfolioConfig
    # Per column: T+0 class (units bought in a session sellable in it).
    t0: np.ndarray

    @property
    def has_defensive(self) -> bool:
        return len(self.columns) > len(self.symbols)

    @classmethod
    def build(cls, std_factors: Mapping[str, pd.DataFrame], directions: Mapping[str, int],
              eligible: pd.DataFrame, market: MarketPanels, cfg: PortfolioConfig,
              symbols: Sequence[str] | None = None) -> SearchPanel:
        """``market``: :func:`rotation.backtest.market_panels` on the same dates over the ranked
        funds plus the defensive fund; ``eligible`` must hold the defensive fund's column."""
        dates = pd.DatetimeIndex(market.open.index)
        universe = pd.Index(symbols if symbols is not None else
                            [s for s in market.open.columns if s != cfg.defensive_symbol])
        defensive = cfg.defensive_symbol
        if defensive is not None and defensive in universe:
            raise ValueError(f"SearchPanel: the defensive fund {defensive!r} must not be ranked")
        columns = universe.append(pd.Index([defensive])) if defensive else universe
        missing = columns.difference(market.open.columns)
        if len(missing):
            raise ValueError(f"SearchPanel: no market data columns for {list(missing)}")
        names = tuple(std_factors)
        signed = np.stack([
            std_factors[n].reindex(index=dates, columns=universe).to_numpy(np.float64)
            * float(directions[n]) for n in names])
        elig = (eligible.reindex(index=dates, columns=universe).astype("boolean")
                .fillna(False).to_numpy(bool))
        close_all = market.close.reindex(columns=columns)
        close_u = close_all[universe]
        vol = fund_volatility(close_u, cfg).to_numpy(np.float64)
        if cfg.regime_levels:
            mkt = market_returns_of(close_u, pd.DataFrame(elig, index=dates, columns=universe))
            exposure = exposure_for_percentile(regime_percentile(mkt, cfg), cfg).to_numpy()
        else:
            exposure = np.ones(len(dates))
        if cfg.abs_mom_window is not None:
            mom = absolute_momentum(close_u, cfg).to_numpy(np.float64)
            with np.errstate(invalid="ignore"):
                abs_neg = mom < cfg.abs_mom_threshold
        else:
            abs_neg = np.zeros(elig.shape, dtype=bool)
        if defensive is not None:
            def_ok = (eligible[defensive].reindex(dates).astype("boolean").fillna(False)
                      .to_numpy(bool))
        else:
            def_ok = np.zeros(len(dates), dtype=bool)
        has_bar = market.has_bar.reindex(columns=columns).to_numpy(bool)
        price = np.where(has_bar, market.open.reindex(columns=columns).to_numpy(np.float64),
                         np.nan)
        tradable = has_bar & ~market.limit_up.reindex(columns=columns).to_numpy(bool) \
            & ~market.limit_down.reindex(columns=columns).to_numpy(bool)
        close = close_all.ffill().to_numpy(np.float64)
        return cls(dates=dates, symbols=universe, columns=columns, factor_names=names,
                   signed=np.ascontiguousarray(signed), eligible=np.ascontiguousarray(elig),
                   key=_symbol_keys(universe), vol=np.ascontiguousarray(vol),
                   exposure=np.ascontiguousarray(exposure, dtype=np.float64),
                   abs_neg=np.ascontiguousarray(abs_neg), def_ok=def_ok,
                   price=np.ascontiguousarray(price), tradable=np.ascontiguousarray(tradable),
                   close=np.ascontiguousarray(close), cfg=cfg,
                   t0=market.same_session_sell.reindex(columns).fillna(False).to_numpy(bool))

    def rows(self, start: object, end: object) -> tuple[int, int]:
        """Row positions of the sessions ``start..end`` (inclusive)."""
        a = int(self.dates.searchsorted(pd.Timestamp(start), side="left"))
        b = int(self.dates.searchsorted(pd.Timestamp(end), side="right")) - 1
        if a > b:
            raise ValueError(f"SearchPanel: no sessions between {start} and {end}")
        return a, b

    def factor_indices(self, names: Sequence[str]) -> np.ndarray:
        index = {n: i for i, n in enumerate(self.factor_names)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise KeyError(f"SearchPanel: unknown factors {unknown}")
        return np.array([index[n] for n in names], dtype=np.int64)

    def _common(self) -> tuple[Any, ...]:
        cfg = self.cfg
        return (self.eligible, self.key, self.vol, self.exposure, self.abs_neg, self.def_ok,
                self.has_defensive, float(cfg.defensive_cap), int(cfg.buffer),
                int(cfg.min_hold_days), float(cfg.max_weight))

    def candidate_targets(self, candidate: Candidate, start: object, end: object
                          ) -> tuple[pd.DataFrame, pd.Series]:
        """Target weights (sessions ``start..end`` × ``columns``) and trade rows of one
        candidate, as the engine computes them."""
        a, b = self.rows(start, end)
        combo = self.factor_indices(candidate.factors)
        score = score_nb(self.signed, combo, a, b)
        w, trade = _candidate_nb(score, a, b, candidate.top_n, candidate.rebalance_every,
                                 _SCHEMES[candidate.weighting], *self._common())
        idx = self.dates[a:b + 1]
        return (pd.DataFrame(w, index=idx, columns=self.columns),
                pd.Series(trade, index=idx, name="trade"))

    def candidate_equity(self, candidate: Candidate, start: object, end: object,
                         cfg: BacktestConfig) -> pd.Series:
        """Daily equity of one candidate on ``start..end`` (the engine's simulation)."""
        weights, trade = self.candidate_targets(candidate, start, end)
        a, b = self.rows(start, end)
        equity, _ = simulate_target_percent_nb(
            weights.to_numpy(), trade.to_numpy(), self.price[a:b + 1], self.tradable[a:b + 1],
            self.close[a:b + 1], cfg.initial_cash, *_proportional(cfg))
        return pd.Series(equity, index=weights.index, name="equity")

    def vectorbt_equity(self, candidate: Candidate, start: object, end: object,
                        cfg: BacktestConfig) -> pd.Series:
        """The same candidate re-run in ``vectorbt.Portfolio.from_orders`` (target percent)."""
        return self.vectorbt_equities([candidate], start, end, cfg)[0]

    def vectorbt_equities(self, candidates: Sequence[Candidate], start: object, end: object,
                          cfg: BacktestConfig) -> list[pd.Series]:
        """Several candidates re-run in ONE ``vectorbt.Portfolio.from_orders`` call, one group
        with shared cash per candidate (groups are simulated independently, so each equity is
        what a call of its own gives; one call pays vectorbt's per-call overhead once)."""
        if not candidates:
            return []
        import vectorbt as vbt

        a, b = self.rows(start, end)
        tradable = self.tradable[a:b + 1]
        close_all = np.nan_to_num(self.close[a:b + 1], nan=1.0)  # before listing: 1.0
        price_all = self.price[a:b + 1]
        sizes, closes, prices, groups = [], [], [], []
        index = self.dates[a:b + 1]
        for g, candidate in enumerate(candidates):
            weights, trade = self.candidate_targets(candidate, start, end)
            size = np.full(weights.shape, np.nan)
            decided = np.flatnonzero(trade.to_numpy()[:-1])
            size[decided + 1] = weights.to_numpy()[decided]
            size[~tradable] = np.nan
            # Only the funds the candidate orders: a fund without any order is never held,
            # and vectorbt skips it in the group value (zero position), sorts its NaN order
            # last and adds its zero asset value, so the equity is the same; the simulation
            # then costs the candidate's funds, not the universe's.
            used = np.flatnonzero(~np.isnan(size).all(axis=0))
            used = used if len(used) else np.arange(1)
            sizes.append(size[:, used])
            closes.append(close_all[:, used])
            prices.append(price_all[:, used])
            groups.append(np.full(len(used), g))
        pf = vbt.Portfolio.from_orders(
            close=pd.DataFrame(np.hstack(closes), index=index), size=np.hstack(sizes),
            size_type="targetpercent", direction="longonly",
            price=np.hstack(prices), fees=cfg.costs.commission_rate,
            slippage=cfg.costs.slippage_rate, init_cash=cfg.initial_cash, cash_sharing=True,
            group_by=np.concatenate(groups), call_seq="auto", freq="1D")
        value = np.asarray(pf.value(), dtype=float).reshape(len(index), len(candidates))
        return [pd.Series(value[:, i], index=index, name="vbt_equity")
                for i in range(len(candidates))]


# -- one window ---------------------------------------------------------------------------------


def _proportional(cfg: BacktestConfig) -> tuple[float, float]:
    """The search's proportional part of the cost model: commission and slippage rates (the
    minimum commission, sell-side duties and lots are the backtest engine's)."""
    return cfg.costs.commission_rate, cfg.costs.slippage_rate


def rank_score(table: pd.DataFrame, space: SearchSpace) -> pd.Series:
    """SPEC §6 in-sample score: rank-weighted annual return, Sharpe and max drawdown (each as a
    percentile rank in (0, 1] among the candidates, higher is better) minus the complexity
    penalty per factor beyond ``min_factors``."""
    w_ret, w_sharpe, w_dd = space.score_weights
    ranks = (w_ret * table["annual_return"].rank(pct=True)
             + w_sharpe * table["sharpe"].rank(pct=True)
             + w_dd * table["max_drawdown"].rank(pct=True))
    return ranks - space.complexity_penalty * (table["n_factors"] - space.min_factors)


def search_window(panel: SearchPanel, factors: Sequence[str], start: object, end: object,
                  space: SearchSpace, cfg: BacktestConfig) -> pd.DataFrame:
    """Every candidate of ``space`` over ``factors`` on the in-sample sessions ``start..end``,
    with its metrics and score, best first (ties broken by fewer factors, then order)."""
    if len(factors) < space.min_factors:
        raise ValueError(f"search_window: {len(factors)} factors, fewer than min_factors "
                         f"{space.min_factors}")
    a, b = panel.rows(start, end)
    idx = panel.factor_indices(factors)
    combos = combinations(len(idx), space.min_factors, space.max_factors)
    mapped = np.where(combos >= 0, idx[np.maximum(combos, 0)], -1)
    params = space.params()
    # numba's stub cannot match a star-expanded argument tuple to the kernel's signature.
    metrics = search_window_nb(panel.signed, mapped, params, a, b,  # type: ignore[call-arg]
                               *panel._common(),
                               panel.price, panel.tradable, panel.close, cfg.initial_cash,
                               *_proportional(cfg))
    n_c, n_p = len(combos), len(params)
    names = [tuple(factors[i] for i in row if i >= 0) for row in combos]
    schemes = {v: k for k, v in _SCHEMES.items()}
    table = pd.DataFrame(metrics.reshape(n_c * n_p, _N_METRICS), columns=list(METRICS))
    table.insert(0, "factors", [",".join(names[c]) for c in range(n_c) for _ in range(n_p)])
    table.insert(1, "n_factors", [len(names[c]) for c in range(n_c) for _ in range(n_p)])
    table.insert(2, "top_n", np.tile(params[:, 0], n_c))
    table.insert(3, "rebalance_every", np.tile(params[:, 1], n_c))
    table.insert(4, "weighting", [schemes[int(s)] for s in np.tile(params[:, 2], n_c)])
    table["score"] = rank_score(table, space)
    return table.sort_values(["score", "n_factors"], ascending=[False, True],
                             kind="stable").reset_index(drop=True)


def candidate_of(row: Mapping[str, Any]) -> Candidate:
    """The :class:`Candidate` of a row of :func:`search_window`'s table."""
    return Candidate(factors=tuple(str(row["factors"]).split(",")), top_n=int(row["top_n"]),
                     rebalance_every=int(row["rebalance_every"]),
                     weighting=str(row["weighting"]))

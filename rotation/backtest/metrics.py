"""Performance metrics of a daily equity curve (SPEC §7) and benchmark comparison.

Conventions: returns are simple close-to-close returns of the equity curve; annualisation uses
252 sessions; the risk-free rate is 0 unless given (annual, converted to a daily rate by
division by 252). Win rate and profit/loss ratio are **daily**: share of positive days among
days with a non-zero return, and mean gain of the positive days / |mean loss of the negative
days|. Turnover is annualised one-way: ``Σ traded notional / 2 / mean equity × 252 / sessions``.
Average holding days is the mean length (in sessions, end of day positions) of the runs in which
a fund is held. Exposure is the mean of ``(equity − cash) / equity``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

TRADING_DAYS = 252.0


def returns_of(equity: pd.Series, initial: float | None = None) -> pd.Series:
    """Daily simple returns; with ``initial`` the first day's return is against it."""
    eq = equity.astype(float)
    prev = eq.shift(1)
    if initial is not None and len(eq):
        prev.iloc[0] = initial
    return (eq / prev - 1.0).dropna()


def drawdown(equity: pd.Series) -> pd.Series:
    """Drawdown from the running peak (≤ 0)."""
    return equity / equity.cummax() - 1.0


def max_drawdown_duration(equity: pd.Series) -> int:
    """Longest number of sessions spent below a previous peak (to recovery or the end)."""
    peak = -np.inf
    longest = 0
    run = 0
    for v in equity.to_numpy(dtype=float):
        if v >= peak:
            peak = v
            run = 0
        else:
            run += 1
            longest = max(longest, run)
    return longest


def holding_runs(positions: pd.DataFrame) -> list[int]:
    """Lengths (sessions) of every run of consecutive held days, per fund."""
    runs: list[int] = []
    held = positions.to_numpy(dtype=float) > 0
    for j in range(held.shape[1]):
        run = 0
        for h in held[:, j]:
            if h:
                run += 1
            elif run:
                runs.append(run)
                run = 0
        if run:
            runs.append(run)
    return runs


def performance_metrics(equity: pd.Series, *, initial: float | None = None,
                        cash: pd.Series | None = None, positions: pd.DataFrame | None = None,
                        traded_notional: float | None = None, risk_free: float = 0.0
                        ) -> dict[str, float]:
    """Return-based metrics, plus exposure / turnover / holding days where inputs are given."""
    eq = equity.astype(float)
    start = float(initial) if initial is not None else float(eq.iloc[0])
    r = returns_of(eq, initial)
    n = len(r)
    total = float(eq.iloc[-1] / start - 1.0)
    years = n / TRADING_DAYS
    cagr = float((1.0 + total) ** (1.0 / years) - 1.0) if years > 0 and total > -1 else math.nan
    ex = r - risk_free / TRADING_DAYS
    std = float(r.std(ddof=1)) if n > 1 else math.nan
    vol = std * math.sqrt(TRADING_DAYS)
    sharpe = float(ex.mean() / std * math.sqrt(TRADING_DAYS)) if std and std > 0 else math.nan
    downside = float(np.sqrt(np.mean(np.minimum(ex.to_numpy(), 0.0) ** 2))) if n else math.nan
    sortino = (float(ex.mean() / downside * math.sqrt(TRADING_DAYS))
               if downside and downside > 0 else math.nan)
    curve = (pd.concat([pd.Series([start]), eq.reset_index(drop=True)])
             if initial is not None else eq)
    mdd = float(drawdown(curve).min())
    calmar = cagr / abs(mdd) if mdd < 0 and not math.isnan(cagr) else math.nan
    wins = r[r > 0]
    losses = r[r < 0]
    nonzero = len(wins) + len(losses)
    out: dict[str, float] = {
        "total_return": total,
        "cagr": cagr,
        "annual_volatility": vol,
        "sharpe": sharpe,
        "sortino": sortino,
        "calmar": calmar,
        "max_drawdown": mdd,
        "max_drawdown_duration": float(max_drawdown_duration(curve)),
        "win_rate": len(wins) / nonzero if nonzero else math.nan,
        "profit_loss_ratio": (float(wins.mean() / abs(losses.mean()))
                              if len(wins) and len(losses) else math.nan),
        "sessions": float(n),
    }
    if traded_notional is not None and n:
        out["turnover"] = float(traded_notional / 2.0 / eq.mean() * TRADING_DAYS / len(eq))
    if positions is not None:
        runs = holding_runs(positions)
        out["avg_holding_days"] = float(np.mean(runs)) if runs else 0.0
    if cash is not None:
        out["exposure"] = float(((eq - cash.astype(float)) / eq).mean())
    return out


def equal_weight_benchmark(close: pd.DataFrame, initial: float = 1.0) -> pd.Series:
    """Daily rebalanced equal weight of the funds with a return that day (adjusted closes)."""
    r = close.pct_change(fill_method=None).mean(axis=1, skipna=True).fillna(0.0)
    return initial * (1.0 + r).cumprod()


def benchmark_comparison(equity: pd.Series, benchmark: pd.Series) -> dict[str, float]:
    """Excess total return / CAGR, tracking error and information ratio against a benchmark
    curve (any scale; aligned on the common dates)."""
    both = pd.concat([equity.astype(float), benchmark.astype(float)], axis=1,
                     join="inner").dropna()
    if len(both) < 2:
        # No common sessions (a benchmark fund listed after the period, say): nothing to
        # compare, every figure unknown rather than an error that stops the backtest.
        return dict.fromkeys(("benchmark_total_return", "excess_return", "excess_cagr",
                              "tracking_error", "information_ratio"), math.nan)
    eq, bm = both.iloc[:, 0], both.iloc[:, 1]
    r, rb = returns_of(eq), returns_of(bm)
    active = r - rb
    years = len(r) / TRADING_DAYS
    tr, tb = float(eq.iloc[-1] / eq.iloc[0] - 1), float(bm.iloc[-1] / bm.iloc[0] - 1)
    te = float(active.std(ddof=1) * math.sqrt(TRADING_DAYS)) if len(active) > 1 else math.nan
    return {
        "benchmark_total_return": tb,
        "excess_return": tr - tb,
        "excess_cagr": ((1 + tr) ** (1 / years) - (1 + tb) ** (1 / years)) if years else math.nan,
        "tracking_error": te,
        "information_ratio": (float(active.mean() * TRADING_DAYS / te)
                              if te and te > 0 else math.nan),
    }

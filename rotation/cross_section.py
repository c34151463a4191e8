"""Per-date cross-section processing (SPEC §3).

Coverage filter → winsorise (quantile or MAD×k) → z-score or rank to [-1, 1] → optional
neutralisation against market beta. Inputs are wide panels (dates × symbols). Missing values
stay missing; nothing is ever filled with zero.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class CrossSectionConfig:
    """SPEC §3 parameters (validated; also the ``cross_section`` settings section)."""

    min_history: int = Field(default=60, ge=1)
    max_stale_days: int = Field(default=5, ge=0)
    winsorize: Literal["quantile", "mad", "none"] = "quantile"
    lower_quantile: float = Field(default=0.025, ge=0, lt=0.5)
    upper_quantile: float = Field(default=0.975, gt=0.5, le=1)
    mad_k: float = Field(default=5.0, gt=0)
    standardize: Literal["zscore", "rank"] = "zscore"
    neutralize_beta: bool = False
    beta_window: int = Field(default=60, ge=10)
    # Fewer valid funds than this on a date leaves that date's processed values missing.
    min_funds: int = Field(default=3, ge=2)
    # Point-in-time liquidity filter: on each date only the ``liquidity_top`` funds by mean
    # traded value over the ``liquidity_window`` sessions up to that date (None: no filter).
    liquidity_top: int | None = Field(default=None, ge=2)
    liquidity_window: int = Field(default=20, ge=1)


BASE_FIELDS = ("ret_1d", "ret_5d", "ret_20d", "vol_20d", "log_turnover")


def wide(bars: pd.DataFrame, column: str) -> pd.DataFrame:
    """A (dates × symbols) panel of one column of a long bar frame."""
    return bars.pivot(index="date", columns="symbol", values=column).sort_index()


def wide_many(bars: pd.DataFrame, columns: Sequence[str]) -> dict[str, pd.DataFrame]:
    """:func:`wide` of each of ``columns`` (float64), the long frame's dates and symbols
    factorised once for all of them: a pivot per column re-factorised both every time, which
    dominated building the panels of a large universe. Same frames as :func:`wide`."""
    dates, symbols = bars["date"], bars["symbol"]
    if dates.isna().any() or symbols.isna().any():
        return {c: wide(bars, c).astype(np.float64) for c in columns}
    row, index = pd.factorize(dates, sort=True)
    col, names = pd.factorize(symbols, sort=True)
    cell = row.astype(np.int64) * len(names) + col
    if np.bincount(cell, minlength=len(index) * len(names)).max(initial=0) > 1:
        raise ValueError("Index contains duplicate entries, cannot reshape")
    index = pd.Index(index, name="date")
    labels = pd.Index(names, name="symbol")
    out = {}
    for c in columns:
        values = np.full(len(index) * len(labels), np.nan)
        values[cell] = bars[c].to_numpy(dtype=np.float64)
        out[c] = pd.DataFrame(values.reshape(len(index), len(labels)), index=index,
                              columns=labels)
    return out


def coverage(close: pd.DataFrame, cfg: CrossSectionConfig,
             turnover: pd.DataFrame | None = None) -> pd.DataFrame:
    """True where a fund may enter the cross-section on that date — the point-in-time universe.

    Everything is known at the date: a fund needs ``min_history`` sessions with a bar up to and
    including it (no fund before its listing), its last bar no more than ``max_stale_days``
    sessions ago (a delisted or suspended fund drops out), and, with ``liquidity_top``, a rank
    among the ``liquidity_top`` most traded of those funds by mean ``turnover`` over the
    ``liquidity_window`` sessions up to the date — never by today's liquidity.
    """
    has_bar = close.notna()
    history = has_bar.cumsum()
    positions = np.arange(len(close))[:, None]
    last_bar = pd.DataFrame(np.where(has_bar, positions, np.nan), index=close.index,
                            columns=close.columns).ffill()
    staleness = positions - last_bar.to_numpy()
    fresh = pd.DataFrame(staleness <= cfg.max_stale_days, index=close.index,
                         columns=close.columns)
    eligible = (history >= cfg.min_history) & fresh
    if cfg.liquidity_top is None:
        return eligible
    if turnover is None:
        raise ValueError("coverage: liquidity_top needs the turnover panel")
    trailing = turnover.reindex_like(close).rolling(cfg.liquidity_window, min_periods=1).mean()
    rank = trailing.where(eligible).rank(axis=1, ascending=False, method="first")
    return eligible & (rank <= cfg.liquidity_top)


def row_quantile(values: np.ndarray, q: float) -> np.ndarray:
    """Per-row ``q`` quantile of a 2-D array ignoring NaN, as a column; an all-NaN row is NaN.

    The same numbers as ``np.nanquantile(values, q, axis=1, keepdims=True)`` (linear method,
    numpy's interpolation formula), by one sort instead of a Python-level loop over rows,
    which made winsorising every date of a long history take seconds.
    """
    return row_quantiles(values, (q,))[0]


def row_quantiles(values: np.ndarray, qs: Sequence[float]) -> list[np.ndarray]:
    """:func:`row_quantile` of each of ``qs``, from ONE sort of the rows (the sort is the
    cost; winsorising needs two quantiles of every date)."""
    if values.shape[1] == 0:
        return [np.full((len(values), 1), np.nan) for _ in qs]
    ordered = np.sort(values, axis=1)  # NaN sorts last
    count = np.count_nonzero(~np.isnan(values), axis=1)
    rows = np.arange(len(values))
    out = []
    for q in qs:
        position = (count - 1) * q
        below = np.floor(position)
        gamma = position - below
        lower = np.clip(below, 0, None).astype(np.int64)
        upper = np.minimum(lower + 1, np.maximum(count - 1, 0))
        a, b = ordered[rows, lower], ordered[rows, upper]
        diff = b - a
        quantile = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
        quantile[count == 0] = np.nan
        out.append(quantile[:, None])
    return out


def winsorize(panel: pd.DataFrame, cfg: CrossSectionConfig) -> pd.DataFrame:
    values = panel.to_numpy(dtype=np.float64, copy=True)
    if cfg.winsorize == "none":
        return panel.copy()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        # Dates where no fund qualifies are all-NaN rows: their result is NaN by design.
        warnings.simplefilter("ignore", RuntimeWarning)
        if cfg.winsorize == "quantile":
            lo, hi = row_quantiles(values, (cfg.lower_quantile, cfg.upper_quantile))
        else:
            med = np.nanmedian(values, axis=1, keepdims=True)
            mad = np.nanmedian(np.abs(values - med), axis=1, keepdims=True) * 1.4826
            lo, hi = med - cfg.mad_k * mad, med + cfg.mad_k * mad
        clipped = np.clip(values, lo, hi)
    clipped[np.isnan(values)] = np.nan
    return pd.DataFrame(clipped, index=panel.index, columns=panel.columns)


def standardize(panel: pd.DataFrame, cfg: CrossSectionConfig) -> pd.DataFrame:
    values = panel.to_numpy(dtype=np.float64)
    count = np.sum(~np.isnan(values), axis=1, keepdims=True)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN and single-fund dates
        if cfg.standardize == "zscore":
            mean = np.nanmean(values, axis=1, keepdims=True)
            std = np.nanstd(values, axis=1, ddof=1, keepdims=True)
            out = (values - mean) / np.where(std > 0, std, np.nan)
        else:
            ranks = panel.rank(axis=1, method="average").to_numpy()
            out = 2.0 * (ranks - 1.0) / (count - 1.0) - 1.0
    out[count[:, 0] < cfg.min_funds] = np.nan  # whole rows: cheaper than a full-size mask
    return pd.DataFrame(out, index=panel.index, columns=panel.columns)


def neutralize(panel: pd.DataFrame, beta: pd.DataFrame) -> pd.DataFrame:
    """Residual of a per-date least-squares fit ``value ~ a + b·beta``."""
    y = panel.to_numpy(dtype=np.float64)
    x = beta.reindex_like(panel).to_numpy(dtype=np.float64)
    ok = ~np.isnan(y) & ~np.isnan(x)
    n = ok.sum(axis=1, keepdims=True)
    with np.errstate(all="ignore"):
        xm = np.where(ok, x, 0).sum(axis=1, keepdims=True) / n
        ym = np.where(ok, y, 0).sum(axis=1, keepdims=True) / n
        cov = np.where(ok, (x - xm) * (y - ym), 0).sum(axis=1, keepdims=True)
        var = np.where(ok, (x - xm) ** 2, 0).sum(axis=1, keepdims=True)
        slope = np.where(var > 0, cov / var, 0.0)
        resid = y - ym - slope * (x - xm)
    resid[~ok] = np.nan
    return pd.DataFrame(resid, index=panel.index, columns=panel.columns)


def market_beta(returns: pd.DataFrame, window: int) -> pd.DataFrame:
    """Rolling beta of each fund to the equal-weight market of the panel (past data only)."""
    market = returns.mean(axis=1, skipna=True)
    cov = returns.rolling(window, min_periods=window // 2).cov(market)
    var = market.rolling(window, min_periods=window // 2).var()
    return cov.div(var, axis=0)


def process(panel: pd.DataFrame, eligible: pd.DataFrame, cfg: CrossSectionConfig,
            beta: pd.DataFrame | None = None) -> pd.DataFrame:
    """Coverage filter → winsorise → standardise → optional beta neutralisation."""
    masked = panel.where(
        eligible.reindex(index=panel.index, columns=panel.columns, fill_value=False).astype(bool)
    )
    out = standardize(winsorize(masked, cfg), cfg)
    if cfg.neutralize_beta and beta is not None:
        out = standardize(neutralize(out, beta), cfg)
    return out


def base_fields(adjusted: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per-fund series the cross-sections carry, from adjusted bars (past data only)."""
    close = wide(adjusted, "close")
    ret_1d = close / close.shift(1) - 1.0
    turnover = wide(adjusted, "turnover")
    return {
        "close": close,
        "ret_1d": ret_1d,
        "ret_5d": close / close.shift(5) - 1.0,
        "ret_20d": close / close.shift(20) - 1.0,
        "vol_20d": ret_1d.rolling(20, min_periods=15).std() * np.sqrt(252.0),
        "log_turnover": np.log(turnover.where(turnover > 0)),
    }


def build_cross_sections(adjusted: pd.DataFrame, cfg: CrossSectionConfig,
                         start: object = None) -> pd.DataFrame:
    """Long frame (date, symbol) of eligible funds with raw and processed base fields.

    ``adjusted`` must hold enough history before ``start`` for the windows
    (``min_history`` + 20 sessions); output rows start at ``start``.
    """
    fields = base_fields(adjusted)
    close = fields["close"]
    eligible = coverage(close, cfg, np.exp(fields["log_turnover"]))
    beta = market_beta(fields["ret_1d"], cfg.beta_window) if cfg.neutralize_beta else None
    columns: dict[str, pd.DataFrame] = {"eligible": eligible}
    for name in BASE_FIELDS:
        columns[name] = fields[name].where(eligible)
        columns[f"{name}_std"] = process(fields[name], eligible, cfg, beta)
    columns["close"] = close.ffill(limit=cfg.max_stale_days).where(eligible)
    stacked = pd.concat({k: v.stack(future_stack=True) for k, v in columns.items()}, axis=1)
    stacked.index.names = ["date", "symbol"]
    out = stacked.loc[stacked["eligible"].astype(bool)].drop(columns="eligible").reset_index()
    if start is not None:
        out = out.loc[out["date"] >= pd.Timestamp(start)]
    out["symbol"] = out["symbol"].astype("string")
    return out.sort_values(["date", "symbol"]).reset_index(drop=True)

"""Classic single-strategy signal generators (SPEC §4, last sentence) → target weights (SPEC §7).

Each generator turns adjusted price panels (:class:`rotation.factors.Panels`, or a wide
``dates × symbols`` frame of adjusted closes) into target weights for
:func:`rotation.backtest.run_backtest`. A weight row for D uses only closes up to D (it fills at
open(D+1) under ``T1_OPEN``); indicators come from the factor kernels
(:mod:`rotation.factors.kernels`), not re-implementations.

* ``ma_cross`` — long while MA(fast) > MA(slow).
* ``macd`` — long while the MACD histogram is > 0.
* ``bollinger`` — mean reversion: enter when the close is below the lower band (%B < 0), exit
  when it is back at or above the middle band (%B >= 0.5). Stateful.
* ``rsi`` — enter when RSI < ``low``, exit when RSI > ``high``. Stateful.
* ``grid`` — a per-fund geometric grid around the fund's first close ``ref`` (lines at
  ``ref × (1 + step)^k``): each line crossed downwards buys one step of ``max_weight / n_levels``,
  each line crossed upwards sells one; the holding stays within ``[0, max_weight]``. Stateful.

Sizing: long/flat strategies give every long fund ``min(1 / n_long, cap)`` with ``cap =
max_weight`` (default ``1 / n_funds``, the number of columns), so rows sum to <= 1. A missing
indicator (warm-up) means flat for the stateless strategies and "keep the state" for the stateful
ones; a day without a bar keeps the state. With ``rebalance="on_change"`` (default) a row is
emitted only when the target differs from the previous day's (other rows are all-NaN: no
decision, the backtest keeps the holdings); ``"daily"`` emits every row.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from rotation.factors import Panels, compute_factor, factor_spec

__all__ = [
    "CLASSIC_CONFIGS",
    "CLASSIC_STRATEGIES",
    "BollingerConfig",
    "GridConfig",
    "MACDConfig",
    "MACrossConfig",
    "RSIConfig",
    "bollinger",
    "classic_exposure",
    "classic_weights",
    "config_dict",
    "config_problems",
    "emit",
    "grid",
    "ma_cross",
    "macd",
    "rsi",
    "valid_configs",
]

_CFG = ConfigDict(extra="forbid")
Rebalance = Literal["on_change", "daily"]


def _require_fast_below_slow(fast: int, slow: int) -> None:
    if fast >= slow:
        raise ValueError(f"fast ({fast}) must be < slow ({slow})")


@pydantic_dataclass(frozen=True, config=_CFG)
class MACrossConfig:
    fast: int = Field(default=5, ge=1)
    slow: int = Field(default=20, ge=2)
    max_weight: float | None = Field(default=None, gt=0, le=1)
    rebalance: Rebalance = "on_change"

    def __post_init__(self) -> None:
        _require_fast_below_slow(self.fast, self.slow)


@pydantic_dataclass(frozen=True, config=_CFG)
class MACDConfig:
    fast: int = Field(default=12, ge=1)
    slow: int = Field(default=26, ge=2)
    signal: int = Field(default=9, ge=1)
    max_weight: float | None = Field(default=None, gt=0, le=1)
    rebalance: Rebalance = "on_change"

    def __post_init__(self) -> None:
        _require_fast_below_slow(self.fast, self.slow)


@pydantic_dataclass(frozen=True, config=_CFG)
class BollingerConfig:
    window: int = Field(default=20, ge=2)
    k_std: float = Field(default=2.0, gt=0)
    max_weight: float | None = Field(default=None, gt=0, le=1)
    rebalance: Rebalance = "on_change"


@pydantic_dataclass(frozen=True, config=_CFG)
class RSIConfig:
    window: int = Field(default=14, ge=1)
    low: float = Field(default=30.0, ge=0, le=100)
    high: float = Field(default=70.0, ge=0, le=100)
    max_weight: float | None = Field(default=None, gt=0, le=1)
    rebalance: Rebalance = "on_change"

    def __post_init__(self) -> None:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")


@pydantic_dataclass(frozen=True, config=_CFG)
class GridConfig:
    """``step``: grid spacing (relative); ``n_levels``: steps from flat to ``max_weight``;
    ``initial_levels``: steps held at the reference price (default ``n_levels // 2``)."""

    step: float = Field(default=0.05, gt=0, lt=1)
    n_levels: int = Field(default=4, ge=1)
    initial_levels: int | None = Field(default=None, ge=0)
    max_weight: float | None = Field(default=None, gt=0, le=1)
    rebalance: Rebalance = "on_change"

    def __post_init__(self) -> None:
        if self.initial_levels is not None and self.initial_levels > self.n_levels:
            raise ValueError(f"initial_levels ({self.initial_levels}) must be <= n_levels "
                             f"({self.n_levels})")


AnyConfig = MACrossConfig | MACDConfig | BollingerConfig | RSIConfig | GridConfig


# -- helpers -----------------------------------------------------------------------------------


def _panels(panels: Panels | pd.DataFrame) -> Panels:
    """Panels as given, or a close-only Panels from a wide frame of adjusted closes."""
    if isinstance(panels, Panels):
        return panels
    if not isinstance(panels, pd.DataFrame):
        raise TypeError("expected rotation.factors.Panels or a wide DataFrame of closes")
    close = panels.sort_index().astype(np.float64)
    return Panels(open=close, high=close, low=close, close=close, volume=close, turnover=close)


def _factor(panels: Panels, kernel: str, unit: str, **params: int | float) -> np.ndarray:
    spec = factor_spec({"name": f"classic_{kernel}", "kernel": kernel, "unit": unit,
                        "direction": 1, "params": params})
    return compute_factor(spec, panels).to_numpy(dtype=np.float64)


def _hysteresis(enter: np.ndarray, leave: np.ndarray) -> np.ndarray:
    """Causal long/flat state: flat → long on ``enter``, long → flat on ``leave``; else keep."""
    state = np.zeros(enter.shape, dtype=bool)
    cur = np.zeros(enter.shape[1], dtype=bool)
    for t in range(enter.shape[0]):
        cur = np.where(cur, ~leave[t], enter[t])
        state[t] = cur
    return state


def _frame(values: np.ndarray, panels: Panels) -> pd.DataFrame:
    out = pd.DataFrame(values.astype(np.float64), index=panels.index, columns=panels.columns)
    out.columns.name = panels.columns.name
    return out


def _cap(max_weight: float | None, n_funds: int) -> float:
    return float(max_weight) if max_weight is not None else 1.0 / max(n_funds, 1)


def _long_weights(long: np.ndarray, max_weight: float | None) -> np.ndarray:
    n_long = long.sum(axis=1, keepdims=True)
    each = np.minimum(1.0 / np.maximum(n_long, 1), _cap(max_weight, long.shape[1]))
    return np.where(long, each, 0.0)


def emit(weights: pd.DataFrame, rebalance: str) -> pd.DataFrame:
    """Keep rows where the target changes (first row always); others become all-NaN."""
    if rebalance == "daily" or weights.empty:
        return weights
    vals = weights.to_numpy()
    changed = np.ones(len(vals), dtype=bool)
    changed[1:] = ~np.isclose(vals[1:], vals[:-1], rtol=0.0, atol=1e-12).all(axis=1)
    return weights.where(pd.Series(changed, index=weights.index), axis=0)


# -- exposures (per fund, in [0, 1]) -----------------------------------------------------------


def _ma_cross_exposure(p: Panels, cfg: MACrossConfig) -> np.ndarray:
    x = _factor(p, "ma_cross", "return", fast=cfg.fast, slow=cfg.slow)
    return np.nan_to_num(x, nan=0.0) > 0.0


def _macd_exposure(p: Panels, cfg: MACDConfig) -> np.ndarray:
    x = _factor(p, "macd_hist", "ratio", fast=cfg.fast, slow=cfg.slow, signal=cfg.signal)
    return np.nan_to_num(x, nan=0.0) > 0.0


def _bollinger_exposure(p: Panels, cfg: BollingerConfig) -> np.ndarray:
    pb = _factor(p, "bollinger", "ratio", window=cfg.window, k_std=cfg.k_std)
    with np.errstate(invalid="ignore"):
        return _hysteresis(pb < 0.0, pb >= 0.5)  # NaN compares False: keep the state


def _rsi_exposure(p: Panels, cfg: RSIConfig) -> np.ndarray:
    r = _factor(p, "rsi", "score", window=cfg.window)
    with np.errstate(invalid="ignore"):
        return _hysteresis(r < cfg.low, r > cfg.high)


def _grid_levels(close: np.ndarray, step: float, n_levels: int, initial: int) -> np.ndarray:
    """Steps held per fund: anchor line ``a`` in ``[initial - n_levels, initial]`` (``a = 0`` at
    the first close), holding ``initial - a``. The anchor moves down to the lowest line crossed
    when the close falls to line ``a - 1`` or below, up to the highest line crossed when it
    rises to line ``a + 1`` or above, clipped to the grid."""
    n, m = close.shape
    out = np.zeros((n, m))
    ref = np.full(m, np.nan)
    anchor = np.zeros(m)
    lo, hi = float(initial - n_levels), float(initial)
    log_step = np.log1p(step)
    eps = 1e-9
    for t in range(n):
        c = close[t]
        ok = np.isfinite(c) & (c > 0)
        new = ok & np.isnan(ref)
        ref[new] = c[new]
        anchor[new] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.log(c / ref) / log_step
        down = ok & ~new & (x <= anchor - 1 + eps)
        up = ok & ~new & (x >= anchor + 1 - eps)
        anchor = np.where(down, np.maximum(lo, np.ceil(x - eps)), anchor)
        anchor = np.where(up, np.minimum(hi, np.floor(x + eps)), anchor)
        out[t] = np.where(np.isnan(ref), 0.0, initial - anchor)
    return out


# -- generators --------------------------------------------------------------------------------


def _resolve(cfg_cls: type, config: Any) -> Any:
    if config is None:
        return cfg_cls()
    if isinstance(config, cfg_cls):
        return config
    if isinstance(config, Mapping):
        return cfg_cls(**config)
    raise TypeError(f"expected {cfg_cls.__name__} or a mapping, got {type(config).__name__}")


def ma_cross(panels: Panels | pd.DataFrame, config: MACrossConfig | None = None) -> pd.DataFrame:
    """Target weights: long while MA(fast) > MA(slow)."""
    cfg, p = _resolve(MACrossConfig, config), _panels(panels)
    return emit(_frame(_long_weights(_ma_cross_exposure(p, cfg), cfg.max_weight), p),
                 cfg.rebalance)


def macd(panels: Panels | pd.DataFrame, config: MACDConfig | None = None) -> pd.DataFrame:
    """Target weights: long while the MACD histogram is > 0."""
    cfg, p = _resolve(MACDConfig, config), _panels(panels)
    return emit(_frame(_long_weights(_macd_exposure(p, cfg), cfg.max_weight), p),
                 cfg.rebalance)


def bollinger(panels: Panels | pd.DataFrame,
              config: BollingerConfig | None = None) -> pd.DataFrame:
    """Target weights: enter below the lower band, exit at the middle band."""
    cfg, p = _resolve(BollingerConfig, config), _panels(panels)
    return emit(_frame(_long_weights(_bollinger_exposure(p, cfg), cfg.max_weight), p),
                 cfg.rebalance)


def rsi(panels: Panels | pd.DataFrame, config: RSIConfig | None = None) -> pd.DataFrame:
    """Target weights: enter when RSI < low, exit when RSI > high."""
    cfg, p = _resolve(RSIConfig, config), _panels(panels)
    return emit(_frame(_long_weights(_rsi_exposure(p, cfg), cfg.max_weight), p),
                 cfg.rebalance)


def grid(panels: Panels | pd.DataFrame, config: GridConfig | None = None) -> pd.DataFrame:
    """Target weights: ``steps / n_levels × max_weight`` per fund (rows scaled to sum <= 1)."""
    cfg, p = _resolve(GridConfig, config), _panels(panels)
    initial = cfg.n_levels // 2 if cfg.initial_levels is None else cfg.initial_levels
    steps = _grid_levels(p.array("close"), cfg.step, cfg.n_levels, initial)
    w = steps / cfg.n_levels * _cap(cfg.max_weight, steps.shape[1])
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total > 1.0, w / np.maximum(total, 1.0), w)
    return emit(_frame(w, p), cfg.rebalance)


CLASSIC_STRATEGIES: dict[str, Callable[..., pd.DataFrame]] = {
    "ma_cross": ma_cross,
    "macd": macd,
    "bollinger": bollinger,
    "rsi": rsi,
    "grid": grid,
}

CLASSIC_CONFIGS: dict[str, type] = {
    "ma_cross": MACrossConfig,
    "macd": MACDConfig,
    "bollinger": BollingerConfig,
    "rsi": RSIConfig,
    "grid": GridConfig,
}


def classic_exposure(name: str, panels: Panels | pd.DataFrame,
                     config: AnyConfig | Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Per-fund exposure in [0, 1] before sizing: 1/0 long/flat, or grid steps / n_levels."""
    if name not in CLASSIC_STRATEGIES:
        raise KeyError(f"unknown classic strategy {name!r} (known: {sorted(CLASSIC_STRATEGIES)})")
    cfg, p = _resolve(CLASSIC_CONFIGS[name], config), _panels(panels)
    if name == "grid":
        initial = cfg.n_levels // 2 if cfg.initial_levels is None else cfg.initial_levels
        vals = _grid_levels(p.array("close"), cfg.step, cfg.n_levels, initial) / cfg.n_levels
    else:
        exposures: dict[str, Callable[[Panels, Any], np.ndarray]] = {
            "ma_cross": _ma_cross_exposure, "macd": _macd_exposure,
            "bollinger": _bollinger_exposure, "rsi": _rsi_exposure}
        vals = exposures[name](p, cfg)
    return _frame(np.asarray(vals, dtype=np.float64), p)


def classic_weights(name: str, panels: Panels | pd.DataFrame,
                    config: AnyConfig | Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Target weights of the classic strategy ``name`` (config: instance, mapping or None)."""
    if name not in CLASSIC_STRATEGIES:
        raise KeyError(f"unknown classic strategy {name!r} (known: {sorted(CLASSIC_STRATEGIES)})")
    return CLASSIC_STRATEGIES[name](panels, _resolve(CLASSIC_CONFIGS[name], config))


def config_dict(config: AnyConfig) -> dict[str, Any]:
    """Plain dict of a classic config (for tracking)."""
    return asdict(config)


# Set by the strategy (classic.rebalance), not searched.
_NOT_SEARCHED = frozenset({"rebalance"})


def config_problems(cfg_cls: type, params: Mapping[str, Sequence[Any]]) -> list[str]:
    """Why candidate values do not fit ``cfg_cls``: ``"<param>: ..."`` per unknown parameter or
    value out of the field's bounds (rules between fields, e.g. ``fast < slow``, are checked per
    combination by :func:`valid_configs`)."""
    known = [f.name for f in fields(cfg_cls) if f.name not in _NOT_SEARCHED]
    problems = []
    for name, values in params.items():
        if name not in known:
            problems.append(f"{name}: not a parameter of {cfg_cls.__name__} (parameters: "
                            f"{known})")
            continue
        for value in values:
            try:
                cfg_cls(**{name: value})
            except ValidationError as exc:
                problems += [f"{name}: {value!r}: {e['msg']}" for e in exc.errors()
                             if e["loc"] and e["loc"][0] == name]
    return problems


def valid_configs(name: str, params: Mapping[str, Sequence[Any]],
                  rebalance: str = "on_change") -> list[dict[str, Any]]:
    """Every combination of the candidate ``params`` that the generator's config accepts
    (with ``rebalance``), as parameter dicts in a stable order."""
    cfg_cls = CLASSIC_CONFIGS[name]
    names = sorted(params)
    out = []
    for values in itertools.product(*(params[n] for n in names)):
        combo = dict(zip(names, values, strict=True))
        try:
            cfg_cls(**combo, rebalance=rebalance)
        except (ValidationError, ValueError):
            continue
        out.append(combo)
    return out

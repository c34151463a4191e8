"""Factor specifications, the kernel catalogue and the SPEC §4 reference set.

A factor is configuration, not code: ``{name, kernel, params, unit, direction[, description]}``.
New factors (another window, another direction hypothesis) are new configuration entries for an
existing kernel; only a new *kind* of computation needs a new numba kernel in
:mod:`rotation.factors.kernels` and an entry in :data:`KERNELS`.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rotation.factors import kernels as K
from rotation.yaml_config import parse_yaml

UNITS = ("return", "ratio", "z", "bps", "correlation", "score")
DIRECTIONS = (1, -1)
FIELDS = ("open", "high", "low", "close", "volume", "turnover")
REQUIRED_KEYS = ("name", "kernel", "unit", "direction")
OPTIONAL_KEYS = ("params", "description")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class FactorConfigError(ValueError):
    """An invalid factor configuration entry (the message names the entry and the field)."""


@dataclass(frozen=True)
class Param:
    """One kernel parameter: ``kind`` is ``int`` or ``float``; ``minimum`` is inclusive."""

    name: str
    kind: type
    default: int | float | None = None
    minimum: int | float | None = None
    doc: str = ""


@dataclass(frozen=True)
class KernelInfo:
    """A 2-D numba kernel and how to call it.

    ``func(*[panel arrays in inputs order], *[params in params order])``; ``warmup(params)`` is
    the number of bars of a fund before its first value; ``check`` validates parameter
    combinations (returns an error message or None).
    """

    name: str
    func: Callable[..., Any]
    inputs: tuple[str, ...]
    params: tuple[Param, ...]
    warmup: Callable[[Mapping[str, Any]], int]
    recursive: bool = False
    summary: str = ""
    check: Callable[[Mapping[str, Any]], str | None] | None = None


def _window(minimum: int = 1, default: int | None = None) -> Param:
    return Param("window", int, default, minimum, "window length in bars")


_PPY = Param("periods_per_year", float, 252.0, 1.0, "annualisation periods")


def _fast_below_slow(p: Mapping[str, Any]) -> str | None:
    return None if p["fast"] < p["slow"] else f"fast ({p['fast']}) must be < slow ({p['slow']})"


KERNELS: dict[str, KernelInfo] = {
    k.name: k
    for k in (
        KernelInfo("momentum", K.momentum_nb, ("close",), (_window(),),
                   lambda p: p["window"] + 1, summary="close / close window bars ago - 1"),
        KernelInfo("volatility", K.volatility_nb, ("close",), (_window(2), _PPY),
                   lambda p: p["window"] + 1, summary="annualised std of bar returns"),
        KernelInfo("sharpe", K.sharpe_nb, ("close",), (_window(2), _PPY),
                   lambda p: p["window"] + 1, summary="annualised mean / std of bar returns"),
        KernelInfo("calmar", K.calmar_nb, ("close",), (_window(), _PPY),
                   lambda p: p["window"] + 1, summary="annualised return / max drawdown"),
        KernelInfo("max_drawdown", K.max_drawdown_nb, ("close",), (_window(),),
                   lambda p: p["window"] + 1, summary="max drawdown of the close path (>= 0)"),
        KernelInfo("slope_r2", K.slope_r2_nb, ("close",), (_window(3),),
                   lambda p: p["window"], summary="log-price OLS slope per bar × R²"),
        KernelInfo("price_position", K.price_position_nb, ("high", "low", "close"),
                   (_window(),), lambda p: p["window"],
                   summary="close within the window's low-high range, [0, 1]"),
        KernelInfo("breakout", K.breakout_nb, ("high", "close"), (_window(),),
                   lambda p: p["window"] + 1, summary="close / prior window high - 1"),
        KernelInfo("rsi", K.rsi_nb, ("close",), (_window(),), lambda p: p["window"] + 1,
                   recursive=True, summary="Wilder RSI, [0, 100]"),
        KernelInfo("adx", K.adx_nb, ("high", "low", "close"), (_window(),),
                   lambda p: 2 * p["window"], recursive=True, summary="Wilder ADX, [0, 100]"),
        KernelInfo("vortex", K.vortex_nb, ("high", "low", "close"), (_window(),),
                   lambda p: p["window"] + 1, summary="VI+ - VI-"),
        KernelInfo("obv_slope", K.obv_slope_nb, ("close", "volume"), (_window(3),),
                   lambda p: p["window"], summary="OBV OLS slope / mean volume"),
        KernelInfo("pv_corr", K.pv_corr_nb, ("close", "volume"), (_window(3),),
                   lambda p: p["window"], summary="corr(close, volume)"),
        KernelInfo("amihud", K.amihud_nb, ("close", "turnover"),
                   (_window(), Param("scale", float, 1e8, None, "multiplier (1e8: per 100M CNY)")),
                   lambda p: p["window"] + 1, summary="mean |return| / traded value"),
        KernelInfo("volume_ratio", K.volume_ratio_nb, ("volume",), (_window(),),
                   lambda p: p["window"] + 1, summary="volume / prior window mean volume"),
        KernelInfo("updown_volume", K.updown_volume_nb, ("close", "volume"), (_window(),),
                   lambda p: p["window"] + 1, summary="up-bar volume / down-bar volume"),
        KernelInfo("garman_klass", K.garman_klass_nb, ("open", "high", "low", "close"),
                   (_window(), _PPY), lambda p: p["window"],
                   summary="annualised Garman–Klass volatility"),
        KernelInfo("corr_market", K.corr_market_nb, ("close",), (_window(3),),
                   lambda p: p["window"] + 1,
                   summary="corr of returns to the panel's equal-weight market"),
        KernelInfo("ma_cross", K.ma_cross_nb, ("close",),
                   (Param("fast", int, None, 1), Param("slow", int, None, 2)),
                   lambda p: p["slow"], summary="MA(fast) / MA(slow) - 1",
                   check=_fast_below_slow),
        KernelInfo("macd_hist", K.macd_hist_nb, ("close",),
                   (Param("fast", int, 12, 1), Param("slow", int, 26, 2),
                    Param("signal", int, 9, 1)),
                   lambda p: p["slow"] + p["signal"] - 1, recursive=True,
                   summary="(MACD - signal) / close", check=_fast_below_slow),
        KernelInfo("bollinger", K.bollinger_nb, ("close",),
                   (_window(2), Param("k_std", float, 2.0, None, "band width in std")),
                   lambda p: p["window"], summary="Bollinger %B (0 lower, 1 upper band)"),
    )
}
for _info in KERNELS.values():
    assert set(_info.inputs) <= set(FIELDS), _info.name


@dataclass(frozen=True, eq=True)
class FactorSpec:
    """A configured factor: a kernel with parameters, a unit and a direction hypothesis.

    ``direction`` is +1 when a higher value is expected to predict a higher forward return, −1
    when lower is better. Build specs with :func:`factor_spec` / :func:`factor_specs_from_config`
    (validated); the constructor does the same validation.
    """

    name: str
    kernel: str
    unit: str
    direction: int
    params: dict[str, int | float] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        clean = _validate({"name": self.name, "kernel": self.kernel, "params": self.params,
                           "unit": self.unit, "direction": self.direction,
                           "description": self.description}, where=f"factor {self.name!r}")
        object.__setattr__(self, "params", clean["params"])
        object.__setattr__(self, "description", clean["description"])

    def __hash__(self) -> int:
        return hash((self.name, self.kernel, tuple(self.params.items()), self.unit,
                     self.direction, self.description))

    @property
    def info(self) -> KernelInfo:
        return KERNELS[self.kernel]

    @property
    def window(self) -> int:
        """The longest look-back parameter (``window``, else ``slow``)."""
        return int(self.params.get("window", self.params.get("slow", 0)))

    @property
    def warmup(self) -> int:
        """Bars of a fund needed before its first value (earlier values are NaN)."""
        return int(self.info.warmup(self.params))

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.info.inputs

    def to_dict(self) -> dict[str, Any]:
        """The configuration entry (``factor_specs_from_config([spec.to_dict()]) == [spec]``)."""
        return {"name": self.name, "kernel": self.kernel, "params": dict(self.params),
                "unit": self.unit, "direction": self.direction,
                "description": self.description}


def _fail(where: str, fld: str, msg: str) -> FactorConfigError:
    return FactorConfigError(f"{where}: field {fld!r}: {msg}")


def _validate(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validated, normalised copy of one configuration entry (raises FactorConfigError)."""
    if not isinstance(entry, Mapping):
        raise FactorConfigError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise _fail(where, unknown[0], f"unknown field (allowed: "
                    f"{', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)})")
    for key in REQUIRED_KEYS:
        if key not in entry or entry[key] is None:
            raise _fail(where, key, "missing required field")
    name = entry["name"]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail(where, "name", f"{name!r} must match {_NAME_RE.pattern}")
    kernel = entry["kernel"]
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise _fail(where, "kernel", f"unknown kernel {kernel!r} (known: "
                    f"{', '.join(sorted(KERNELS))})")
    info = KERNELS[kernel]
    unit = entry["unit"]
    if unit not in UNITS:
        raise _fail(where, "unit", f"{unit!r} is not one of {', '.join(UNITS)}")
    direction = entry["direction"]
    if isinstance(direction, bool) or direction not in DIRECTIONS:
        raise _fail(where, "direction", f"{direction!r} must be +1 or -1")
    raw = entry.get("params") or {}
    if not isinstance(raw, Mapping):
        raise _fail(where, "params", f"expected a mapping, got {type(raw).__name__}")
    known = {p.name: p for p in info.params}
    extra = sorted(set(raw) - set(known))
    if extra:
        raise _fail(where, f"params.{extra[0]}", f"unknown parameter of kernel {kernel!r} "
                    f"(parameters: {', '.join(known)})")
    params: dict[str, int | float] = {}
    for p in info.params:
        value = raw.get(p.name, p.default)
        fld = f"params.{p.name}"
        if value is None:
            raise _fail(where, fld, f"missing required parameter of kernel {kernel!r}")
        if isinstance(value, bool):
            raise _fail(where, fld, f"expected {p.kind.__name__}, got bool")
        if p.kind is int:
            if isinstance(value, numbers.Real) and float(value).is_integer():
                value = int(value) if isinstance(value, numbers.Integral) \
                    else int(float(value))
            if not isinstance(value, int):
                raise _fail(where, fld, f"expected an integer, got {value!r}")
        else:
            if not isinstance(value, numbers.Real):
                raise _fail(where, fld, f"expected a number, got {value!r}")
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise _fail(where, fld, f"must be finite, got {value!r}")
        if p.minimum is not None and value < p.minimum:
            raise _fail(where, fld, f"must be >= {p.minimum}, got {value!r}")
        params[p.name] = value
    if info.check is not None:
        problem = info.check(params)
        if problem:
            raise _fail(where, "params", problem)
    description = entry.get("description") or info.summary
    if not isinstance(description, str):
        raise _fail(where, "description", "expected a string")
    return {"name": name, "kernel": kernel, "params": params, "unit": unit,
            "direction": int(direction), "description": description}


def factor_spec(entry: Mapping[str, Any], *, where: str | None = None) -> FactorSpec:
    """One validated :class:`FactorSpec` from a configuration mapping."""
    if where is None:
        where = f"factor {entry.get('name')!r}" if isinstance(entry, Mapping) else "factor"
    return FactorSpec(**_validate(entry, where=where))


def factor_specs_from_config(entries: Iterable[Mapping[str, Any]]) -> list[FactorSpec]:
    """Validated specs from a list of ``{name, kernel, params, unit, direction}`` mappings.

    Errors name the entry (index and name) and the field, e.g.
    ``factor config entry 3 ('mom_20'): field 'kernel': unknown kernel 'momentom' (...)``.
    Names must be unique.
    """
    if isinstance(entries, Mapping | str | bytes):
        raise FactorConfigError("factor config: expected a list of factor entries")
    specs: list[FactorSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        where = f"factor config entry {i} ({name!r})"
        spec = FactorSpec(**_validate(entry, where=where))
        if spec.name in seen:
            raise _fail(where, "name",
                        f"duplicate name {spec.name!r} (also entry {seen[spec.name]})")
        seen[spec.name] = i
        specs.append(spec)
    return specs


def factor_specs_from_yaml(source: str | Path) -> list[FactorSpec]:
    """Specs from YAML text or a ``.yaml``/``.yml`` file: a list of entries, or a mapping with a
    ``factors`` list."""
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                    and source.endswith((".yaml", ".yml"))):
        text = Path(source).read_text(encoding="utf-8")
    else:
        text = str(source)
    data = parse_yaml(text)
    if isinstance(data, Mapping):
        if "factors" not in data:
            raise FactorConfigError("factor config: a mapping needs a 'factors' list")
        data = data["factors"]
    if not isinstance(data, list):
        raise FactorConfigError("factor config: expected a list of factor entries")
    return factor_specs_from_config(data)


def factor_table(specs: Iterable[FactorSpec]) -> pd.DataFrame:
    """One row per spec: name, kernel, params, window, warmup, unit, direction, description."""
    rows = [{"name": s.name, "kernel": s.kernel, "params": dict(s.params), "window": s.window,
             "warmup": s.warmup, "unit": s.unit, "direction": s.direction,
             "recursive": s.info.recursive, "description": s.description} for s in specs]
    return pd.DataFrame(rows)


def _f(name: str, kernel: str, unit: str, direction: int, description: str,
       **params: int | float) -> dict[str, Any]:
    return {"name": name, "kernel": kernel, "params": params, "unit": unit,
            "direction": direction, "description": description}


# The SPEC §4 reference set as configuration. Directions are hypotheses to be tested by the
# screening (SPEC §5), not conclusions.
DEFAULT_FACTOR_CONFIG: tuple[dict[str, Any], ...] = (
    _f("momentum_5", "momentum", "return", -1, "5-bar return (short-term reversal)", window=5),
    _f("momentum_20", "momentum", "return", 1, "20-bar return", window=20),
    _f("momentum_60", "momentum", "return", 1, "60-bar return", window=60),
    _f("momentum_120", "momentum", "return", 1, "120-bar return", window=120),
    _f("volatility_20", "volatility", "return", -1, "annualised 20-bar return volatility",
       window=20),
    _f("volatility_60", "volatility", "return", -1, "annualised 60-bar return volatility",
       window=60),
    _f("sharpe_20", "sharpe", "ratio", 1, "annualised 20-bar Sharpe ratio (rf = 0)", window=20),
    _f("sharpe_60", "sharpe", "ratio", 1, "annualised 60-bar Sharpe ratio (rf = 0)", window=60),
    _f("calmar_60", "calmar", "ratio", 1, "annualised 60-bar return / 60-bar max drawdown",
       window=60),
    _f("max_drawdown_60", "max_drawdown", "return", -1, "60-bar max drawdown (positive)",
       window=60),
    _f("slope_r2_20", "slope_r2", "return", 1, "20-bar log-price slope per bar × R²", window=20),
    _f("price_position_20", "price_position", "ratio", 1, "close in the 20-bar low-high range",
       window=20),
    _f("price_position_60", "price_position", "ratio", 1, "close in the 60-bar low-high range",
       window=60),
    _f("price_position_120", "price_position", "ratio", 1,
       "close in the 120-bar low-high range", window=120),
    _f("breakout_20", "breakout", "return", 1, "close / prior 20-bar high - 1", window=20),
    _f("rsi_14", "rsi", "score", -1, "Wilder RSI 14 (overbought reverts)", window=14),
    _f("adx_14", "adx", "score", 1, "Wilder ADX 14 (trend strength)", window=14),
    _f("vortex_14", "vortex", "ratio", 1, "Vortex VI+ - VI- over 14 bars", window=14),
    _f("obv_slope_10", "obv_slope", "ratio", 1, "10-bar OBV slope / mean volume", window=10),
    _f("pv_corr_20", "pv_corr", "correlation", -1, "20-bar corr(close, volume)", window=20),
    _f("amihud_20", "amihud", "ratio", 1,
       "20-bar Amihud illiquidity, |return| per 100M CNY traded", window=20, scale=1e8),
    _f("volume_ratio_20", "volume_ratio", "ratio", -1, "volume / prior 20-bar mean volume",
       window=20),
    _f("updown_volume_20", "updown_volume", "ratio", 1, "20-bar up-volume / down-volume",
       window=20),
    _f("garman_klass_20", "garman_klass", "return", -1, "annualised 20-bar Garman–Klass vol",
       window=20),
    _f("corr_market_20", "corr_market", "correlation", -1,
       "20-bar corr of returns to the equal-weight market", window=20),
    _f("ma_cross_5_20", "ma_cross", "return", 1, "MA5 / MA20 - 1", fast=5, slow=20),
    _f("ma_cross_10_60", "ma_cross", "return", 1, "MA10 / MA60 - 1", fast=10, slow=60),
    _f("macd_hist_12_26_9", "macd_hist", "ratio", 1, "MACD(12, 26, 9) histogram / close",
       fast=12, slow=26, signal=9),
    _f("bollinger_20_2", "bollinger", "ratio", -1, "Bollinger %B (20, 2)", window=20,
       k_std=2.0),
)

DEFAULT_FACTORS: tuple[FactorSpec, ...] = tuple(factor_specs_from_config(DEFAULT_FACTOR_CONFIG))


def get_factor(name: str, specs: Iterable[FactorSpec] = DEFAULT_FACTORS) -> FactorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"no factor named {name!r}")

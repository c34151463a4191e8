"""Strategy configuration (SPEC §4–§8): one validated YAML file per strategy.

A strategy names its universe, its candidate factors, the label horizons, the screening
thresholds, the walk-forward windows, the combination search, trading costs, portfolio rules and
the execution model. :func:`load_strategy` reads ``config/strategies/<name>.yaml`` (or a path)
and raises :class:`StrategyConfigError` naming the file, the field path and why, e.g.::

    invalid strategy config config/strategies/x.yaml:
      costs.commission_bps: commission is in basis points (2 = 0.02 %); 50.0 exceeds ...
      factors: entry 3 ('mom_20'): field 'kernel': unknown kernel 'momentom' (...)

Every section forbids unknown keys. The models are frozen; derived engine configs come from
:meth:`StrategyConfig.wfo_config` (:class:`rotation.wfo.WfoConfig`, ``horizon = max(horizons)``),
:meth:`StrategyConfig.portfolio_config` (:class:`rotation.portfolio.PortfolioConfig`) and
:meth:`StrategyConfig.backtest_config` (:class:`rotation.backtest.BacktestConfig`, holding the one
cost model :attr:`StrategyConfig.cost_model`).

The portfolio rules are defined once, by :class:`rotation.portfolio.PortfolioConfig`:
:attr:`StrategyConfig.portfolio` *is* one, read from (and dumped to) the file's nested
``portfolio:`` form by :func:`portfolio_from_nested` / :func:`portfolio_to_nested`, which only
map key names (:data:`PORTFOLIO_KEYS`). ``initial_cash`` belongs to the backtest side
(``costs.initial_cash``); ``portfolio.initial_cash`` in older files is still read there.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import hashlib
import json
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rotation.backtest import BacktestConfig
from rotation.classic import CLASSIC_CONFIGS, config_problems, valid_configs
from rotation.config_paths import DATASET_CONFIG_DIR, STRATEGY_CONFIG_DIR
from rotation.costs import CostModel
from rotation.factors.registry import (
    DEFAULT_FACTORS,
    FactorConfigError,
    FactorSpec,
    factor_spec,
)
from rotation.market import (
    DEFAULT_MARKET,
    FeeSchedule,
    MarketConfigError,
    MarketProfile,
    SymbolScheme,
    load_market,
)
from rotation.portfolio import PortfolioConfig, Weighting
from rotation.wfo import WfoConfig
from rotation.yaml_config import parse_yaml

# The built-in generated market (rotation.sources.sample) has no dataset config file.
SAMPLE_DATASET = "sample"
# Commission on exchange-traded funds in China is capped at 0.3 % of the traded value; the
# market profiles' rates (config/markets) are far below it in every market.
MAX_COMMISSION_BPS = 30.0

_CODE_RE = re.compile(r"^[15]\d{5}$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class StrategyConfigError(ValueError):
    """An invalid strategy file: ``path`` and ``problems`` as ``(field path, reason)`` pairs."""

    def __init__(self, path: str | Path | None, problems: list[tuple[str, str]]) -> None:
        self.path = None if path is None else str(path)
        self.problems = problems
        where = f"strategy config {self.path}" if self.path else "strategy config"
        lines = [f"{loc}: {msg}" if loc else msg for loc, msg in problems]
        super().__init__(f"invalid {where}:\n  " + "\n  ".join(lines))


class StrategyWarning(UserWarning):
    """A valid but noteworthy setting (e.g. the comparison-only ``CLOSE`` execution model)."""


# The symbol scheme codes are read with: the market of the universe being validated
# (set by UniverseConfig's validator; A-share fund codes otherwise).
_SCHEME: contextvars.ContextVar[SymbolScheme | None] = contextvars.ContextVar("scheme",
                                                                              default=None)


def _fund_code(value: Any) -> Any:
    """A fund symbol in the market's scheme: ``510300``, ``"510300"``, ``"510300.SH"`` for
    A-share funds (returned as the 6-digit code), ``SPY`` for US funds."""
    scheme = _SCHEME.get()
    if scheme is not None and scheme.kind != "cn_fund":
        if not isinstance(value, str) or scheme.parse(value.strip().upper()) \
                != value.strip().upper():
            raise ValueError(f"{value!r} is not a symbol of this market ({scheme.kind})")
        return value.strip().upper()
    if isinstance(value, bool):
        raise ValueError(f"expected a 6-digit fund code, got {value!r}")
    if isinstance(value, int):
        value = f"{value:06d}"
    if isinstance(value, str):
        text = value.strip().upper()
        for suffix in (".SH", ".SZ"):
            if text.endswith(suffix):
                code = text[: -len(suffix)]
                if _CODE_RE.match(code) and (suffix == ".SH") != code.startswith("1"):
                    return code
                raise ValueError(f"{value!r}: exchange suffix does not match the code "
                                 "(Shanghai 5xxxxx.SH, Shenzhen 1xxxxx.SZ)")
        if not _CODE_RE.match(text):
            raise ValueError(f"{value!r} is not a fund code (6 digits: Shanghai 5xxxxx, "
                             "Shenzhen 1xxxxx)")
        return text
    raise ValueError(f"expected a 6-digit fund code, got {type(value).__name__}")


def _market_of(data: Mapping[str, Any]) -> str:
    """The market profile a universe section trades in: its dataset's (the sample market is
    A-share funds), else ``market``, else A-share funds. A ``market`` that contradicts the
    dataset's is an error."""
    given = str(data["market"]) if data.get("market") else None
    dataset = data.get("dataset")
    if not isinstance(dataset, str):
        return given or DEFAULT_MARKET
    of_data: str | None = DEFAULT_MARKET
    if dataset != SAMPLE_DATASET:
        path = Path(dataset) if Path(dataset).suffix in {".yaml", ".yml"} \
            else DATASET_CONFIG_DIR / f"{dataset}.yaml"
        try:
            spec = parse_yaml(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            spec = None  # the dataset field reports the unreadable file
        of_data = str(spec.get("market", DEFAULT_MARKET)) if isinstance(spec, Mapping) \
            else None
    if given is not None and of_data is not None and given != of_data:
        raise ValueError(f"market: {given!r} differs from the market of dataset {dataset!r} "
                         f"({of_data!r}); the dataset's market is the strategy's (remove it)")
    return given or of_data or DEFAULT_MARKET


FundCode = Annotated[str, BeforeValidator(_fund_code)]
_MODEL = ConfigDict(extra="forbid", frozen=True)


def _sorted_unique(values: tuple[int, ...]) -> tuple[int, ...]:
    if not values:
        raise ValueError("at least one value is required")
    if len(set(values)) != len(values):
        raise ValueError(f"duplicate values in {list(values)}")
    return tuple(sorted(values))


# -- sections -----------------------------------------------------------------------------------


class UniverseConfig(BaseModel):
    """SPEC §2: the funds the strategy ranks, its benchmark and its defensive fund.

    Exactly one of ``dataset`` (a config in ``config/datasets``, or ``sample`` for the built-in
    generated market: all its funds) and ``symbols`` (an explicit list). ``exclude`` removes funds
    from the ranking. ``defensive`` (a bond fund, or null for cash) receives the weight of
    holdings that fail the absolute-momentum filter; it is not ranked itself.
    """

    model_config = _MODEL

    dataset: str | None = None
    # The market profile (config/markets); by default the dataset's, A-share funds otherwise.
    market: str = DEFAULT_MARKET
    symbols: tuple[FundCode, ...] = ()
    exclude: tuple[FundCode, ...] = ()
    # Default: the market profile's benchmark (510300 for A-share funds, SPY for US funds).
    benchmark: FundCode
    defensive: str | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _in_market(cls, data: Any, handler: Any) -> Any:
        """Codes are read in the universe's market; the benchmark defaults to its profile's."""
        if not isinstance(data, Mapping):
            return handler(data)
        name = _market_of(data)
        try:
            profile = load_market(name)
        except MarketConfigError as exc:
            raise ValueError(f"market: {exc}") from None
        data = {"market": name, "benchmark": profile.benchmark, **data}
        token = _SCHEME.set(profile.symbol_scheme)
        try:
            return handler(data)
        finally:
            _SCHEME.reset(token)

    @field_validator("defensive", mode="before")
    @classmethod
    def _defensive_code(cls, value: Any) -> Any:
        return None if value is None else _fund_code(value)

    @field_validator("dataset")
    @classmethod
    def _dataset_known(cls, value: str | None) -> str | None:
        if value is None or value == SAMPLE_DATASET:
            return value
        path = Path(value)
        if path.suffix in {".yaml", ".yml"}:
            if not path.is_file():
                raise ValueError(f"no dataset config at {value}")
            return value
        if not (DATASET_CONFIG_DIR / f"{value}.yaml").is_file():
            known = sorted(p.stem for p in DATASET_CONFIG_DIR.glob("*.yaml"))
            raise ValueError(f"unknown dataset {value!r} (known: {[SAMPLE_DATASET, *known]})")
        return value

    @field_validator("symbols", "exclude")
    @classmethod
    def _unique(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ValueError(f"duplicate fund codes {dupes}")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> UniverseConfig:
        if (self.dataset is None) == (not self.symbols):
            raise ValueError("dataset/symbols: give exactly one of 'dataset' and 'symbols'")
        if self.symbols:
            stray = sorted(set(self.exclude) - set(self.symbols))
            if stray:
                raise ValueError(f"exclude: {stray} not in symbols")
            if len(set(self.symbols) - set(self.exclude) - {self.defensive}) < 2:
                raise ValueError("symbols: fewer than 2 funds left to rank after exclusions "
                                 "and the defensive fund")
        if self.defensive is not None:
            if self.defensive == self.benchmark:
                raise ValueError(f"defensive: {self.defensive} is also the benchmark; the "
                                 "defensive fund should be a bond fund (or null for cash)")
            if self.defensive in self.exclude:
                raise ValueError(f"defensive: {self.defensive} is in exclude")
        if self.benchmark in self.exclude:
            raise ValueError(f"benchmark: {self.benchmark} is in exclude")
        return self

    @property
    def not_ranked(self) -> frozenset[str]:
        """Codes never ranked: the exclusions and the defensive fund."""
        return frozenset(self.exclude) | ({self.defensive} if self.defensive else set())


class ScreeningConfig(BaseModel):
    """SPEC §5 selection thresholds (the arguments of :func:`rotation.ic.select_factors`).

    ``horizon``: the label horizon the screen is run on (default: the longest horizon).
    """

    model_config = _MODEL

    horizon: int | None = Field(default=None, ge=1)
    min_abs_ic: float = Field(default=0.02, ge=0, lt=1)
    min_positive_rate: float = Field(default=0.5, ge=0, le=1)
    fdr_alpha: float = Field(default=0.05, gt=0, lt=1)
    max_corr: float = Field(default=0.7, gt=0, le=1)


class WfoSection(BaseModel):
    """SPEC §6 windows in sessions; the purge comes from the longest label horizon."""

    model_config = _MODEL

    in_sample: int = Field(default=252, ge=60)
    out_of_sample: int = Field(default=60, ge=1)
    step: int = Field(default=60, ge=1)
    mode: Literal["rolling", "anchored"] = "rolling"
    embargo: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _no_gaps(self) -> WfoSection:
        if self.step > self.out_of_sample:
            raise ValueError(f"step: {self.step} must be <= out_of_sample "
                             f"({self.out_of_sample}): larger steps leave sessions out of the "
                             "stitched out-of-sample curve")
        return self


class ScoreWeights(BaseModel):
    """Weights of the rank-weighted in-sample score (SPEC §6); non-negative, summing to 1."""

    model_config = _MODEL

    annual_return: float = Field(default=0.4, ge=0, le=1)
    sharpe: float = Field(default=0.3, ge=0, le=1)
    max_drawdown: float = Field(default=0.3, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> ScoreWeights:
        total = self.annual_return + self.sharpe + self.max_drawdown
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"weights must sum to 1, got {total:g}")
        return self


class ClassicSection(BaseModel):
    """A classic single-strategy (:mod:`rotation.classic`) researched instead of the factor
    rotation: no factor screening and no combination search; the walk-forward picks the
    generator's parameters in-sample (:mod:`rotation.classic_search`).

    ``params``: candidate values per parameter of the generator's config class (e.g. ``fast:
    [5, 10]``); parameters not given keep the class defaults. Combinations the class refuses
    (``fast >= slow``) are left out of the space. ``search``: ``grid`` scores every combination,
    ``optuna`` a seeded TPE sample of ``trials`` of them, ``auto`` the grid when it holds at most
    ``max_grid`` combinations, else Optuna. The winner is the candidate with the best
    rank-weighted in-sample score (``score_weights``, as the rotation search ranks).
    """

    model_config = _MODEL

    generator: Literal["ma_cross", "macd", "bollinger", "rsi", "grid"]
    params: dict[str, tuple[float, ...]] = Field(default_factory=dict)
    search: Literal["grid", "optuna", "auto"] = "auto"
    max_grid: int = Field(default=200, ge=1)
    trials: int = Field(default=60, ge=1)
    seed: int = Field(default=0, ge=0)
    rebalance: Literal["on_change", "daily"] = "on_change"
    score_weights: ScoreWeights = Field(default_factory=ScoreWeights)

    @field_validator("params", mode="before")
    @classmethod
    def _value_lists(cls, value: Any) -> Any:
        """A single value is a one-value list; each list is non-empty and unique."""
        if not isinstance(value, Mapping):
            return value
        out: dict[str, list[Any]] = {}
        for name, values in value.items():
            values = list(values) if isinstance(values, list | tuple) else [values]
            if not values:
                raise ValueError(f"{name}: at least one candidate value is required")
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: duplicate candidate values in {values}")
            out[str(name)] = values
        return out

    @field_validator("params")
    @classmethod
    def _params_of_generator(cls, value: dict[str, tuple[float, ...]],
                             info: ValidationInfo) -> dict[str, tuple[float, ...]]:
        generator = info.data.get("generator")
        if generator is None:  # reported at classic.generator
            return value
        problems = config_problems(CLASSIC_CONFIGS[generator], value)
        if problems:
            raise ValueError("\n".join(problems))
        return {name: tuple(_as_int(v) for v in values) for name, values in value.items()}

    @model_validator(mode="after")
    def _some_candidate(self) -> ClassicSection:
        if not self.candidates():
            raise ValueError(f"params: no combination of {dict(self.params)} is a valid "
                             f"{self.generator} configuration")
        return self

    def candidates(self) -> list[dict[str, Any]]:
        """Every valid parameter combination (the grid), with the section's rebalance mode."""
        return valid_configs(self.generator, self.params, rebalance=self.rebalance)

    @property
    def method(self) -> Literal["grid", "optuna"]:
        """The search that runs: ``auto`` resolved by the size of the grid."""
        if self.search != "auto":
            return self.search
        return "grid" if len(self.candidates()) <= self.max_grid else "optuna"


def _as_int(value: float) -> float | int:
    """``5.0`` from YAML or JSON as ``5``, so integer parameters keep their type."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class SearchConfig(BaseModel):
    """SPEC §6 in-sample search: factor combinations × top-N × rebalance × weighting.

    Combination sizes run ``min_factors..max_factors`` over the factors that pass the screen.
    ``complexity_penalty`` is subtracted from the score per factor beyond ``min_factors`` (the
    score is in rank units, 0..1). ``finalists`` best candidates are re-run in vectorbt.
    """

    model_config = _MODEL

    min_factors: int = Field(default=2, ge=1)
    max_factors: int = Field(default=3, ge=1)
    top_n: tuple[int, ...] = (3, 4, 5)
    rebalance_every: tuple[int, ...] = (5, 10, 20)
    weightings: tuple[Weighting, ...] = ("equal", "inverse_vol")
    complexity_penalty: float = Field(default=0.02, ge=0, le=1)
    score_weights: ScoreWeights = Field(default_factory=ScoreWeights)
    finalists: int = Field(default=10, ge=1)

    @field_validator("top_n", "rebalance_every")
    @classmethod
    def _positive_sorted(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        bad = [v for v in values if v < 1]
        if bad:
            raise ValueError(f"values must be >= 1, got {bad}")
        return _sorted_unique(values)

    @field_validator("weightings")
    @classmethod
    def _weightings(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if not values:
            raise ValueError("at least one weighting is required")
        if len(set(values)) != len(values):
            raise ValueError(f"duplicate weightings in {list(values)}")
        return values

    @model_validator(mode="after")
    def _sizes(self) -> SearchConfig:
        if self.max_factors < self.min_factors:
            raise ValueError(f"max_factors: {self.max_factors} must be >= min_factors "
                             f"({self.min_factors})")
        return self

    def n_candidates(self, n_factors: int) -> int:
        """Candidates searched in a window where ``n_factors`` passed the screen."""
        sizes = range(self.min_factors, min(self.max_factors, n_factors) + 1)
        combos = sum(math.comb(n_factors, k) for k in sizes)
        return combos * len(self.top_n) * len(self.rebalance_every) * len(self.weightings)


class CostSection(BaseModel):
    """The strategy file's ``costs:`` section: what this strategy's broker and fills change in
    the market's costs, and the backtest's starting capital. Not a cost model: the one cost
    model is :class:`rotation.costs.CostModel`, built from this section and the market profile
    by :attr:`StrategyConfig.cost_model`.

    The market profile's fee schedule (``config/markets``) is the basis: lots and sell-side
    duties (stamp duty, a regulator's fee) come from it only. ``commission_bps`` and
    ``min_commission`` (in the market's currency) override its commission for a broker's
    negotiated rate; ``lot_size``, if given, must equal the market's. ``initial_cash`` is in the
    market's currency.

    ``initial_cash`` is not a portfolio rule; older files give it as ``portfolio.initial_cash``,
    which is still read (as ``costs.initial_cash``; giving both with different values is an
    error).
    """

    model_config = _MODEL

    commission_bps: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    min_commission: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    slippage_bps: float = Field(default=5.0, ge=0, le=200, allow_inf_nan=False)
    lot_size: int | None = Field(default=None, ge=1)
    initial_cash: float = Field(default=1_000_000.0, gt=0, allow_inf_nan=False)

    def fees(self, market: MarketProfile) -> FeeSchedule:
        """The market's fee schedule with this strategy's commission overrides."""
        overrides = {k: v for k, v in (("commission_bps", self.commission_bps),
                                       ("min_commission", self.min_commission)) if v is not None}
        return market.fees.model_copy(update=overrides) if overrides else market.fees

    @field_validator("commission_bps")
    @classmethod
    def _commission_in_bps(cls, value: float | None) -> float | None:
        if value is not None and value > MAX_COMMISSION_BPS:
            raise ValueError(f"commission is in basis points (2 = 0.02 %); {value:g} exceeds "
                             f"the {MAX_COMMISSION_BPS:g} bp (0.3 %) bound on a commission rate")
        return value


# The strategy file's nested ``portfolio:`` section → the fields of
# :class:`rotation.portfolio.PortfolioConfig`, the one definition of the SPEC §8 rules (defaults,
# bounds, checks). Only names live here. ``regime.levels`` is a list of {percentile, exposure}
# mappings where PortfolioConfig holds (percentile, exposure) pairs.
PORTFOLIO_KEYS: dict[tuple[str, ...], str] = {
    ("top_n",): "top_n",
    ("buffer",): "buffer",
    ("min_hold_days",): "min_hold_days",
    ("rebalance_every",): "rebalance_every",
    ("weighting",): "weighting",
    ("max_weight",): "max_weight",
    ("vol_window",): "vol_window",
    ("regime", "window"): "regime_window",
    ("regime", "lookback"): "regime_lookback",
    ("regime", "min_periods"): "regime_min_periods",
    ("regime", "levels"): "regime_levels",
    ("abs_momentum", "window"): "abs_mom_window",
    ("abs_momentum", "threshold"): "abs_mom_threshold",
}
# PortfolioConfig fields a strategy file does not set in its portfolio section.
PORTFOLIO_FIELDS_ELSEWHERE: dict[str, str] = {
    "defensive_symbol": "universe.defensive",
    "defensive_max_weight": "not configurable (default: portfolio.max_weight)",
}
LEVEL_KEYS = ("percentile", "exposure")
_NESTED_PATH = {field: path for path, field in PORTFOLIO_KEYS.items()}
_SECTIONS = frozenset(path[0] for path in PORTFOLIO_KEYS if len(path) > 1)
_LEGACY_CASH = "initial_cash"
# Every key of the nested form (for "did you mean" hints).
_PORTFOLIO_KEY_NAMES = frozenset({k for path in PORTFOLIO_KEYS for k in path}
                                 | set(LEVEL_KEYS) | {_LEGACY_CASH})


def _line_error(kind: str, loc: tuple[Any, ...], value: Any, msg: str = "",
                ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    """One pydantic line error (``InitErrorDetails``); ``msg`` makes it a ``value_error``."""
    if msg:
        return {"type": "value_error", "loc": loc, "input": value,
                "ctx": {"error": ValueError(msg)}}
    out: dict[str, Any] = {"type": kind, "loc": loc, "input": value}
    if ctx is not None:
        out["ctx"] = ctx
    return out


def _cash_errors(value: Any) -> list[dict[str, Any]]:
    """Errors of ``value`` as ``costs.initial_cash`` (empty when valid), at ``initial_cash``."""
    try:
        CostSection(initial_cash=value)
    except ValidationError as exc:
        return [_line_error(e["type"], (_LEGACY_CASH,), e["input"], ctx=e.get("ctx"))
                for e in exc.errors()]
    return []


def _nested_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A PortfolioConfig error location in the nested form: ``regime_levels.1.1`` →
    ``regime.levels[1].exposure``."""
    if not loc or loc[0] not in _NESTED_PATH:
        return loc
    rest = loc[1:]
    if loc[0] == "regime_levels" and len(rest) >= 2 and rest[1] in (0, 1):
        rest = (rest[0], LEVEL_KEYS[rest[1]], *rest[2:])
    return (*_NESTED_PATH[loc[0]], *rest)


def _levels_from_nested(value: Any, errors: list[dict[str, Any]]) -> Any:
    """``[{percentile, exposure}, ...]`` → ``((percentile, exposure), ...)``; shape errors are
    appended to ``errors``. Values that are no list are left to PortfolioConfig to reject."""
    if not isinstance(value, list | tuple):
        return value
    loc = _NESTED_PATH["regime_levels"]
    pairs: list[tuple[Any, Any]] = []
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            errors.append(_line_error("dict_type", (*loc, i), entry))
            continue
        for key in entry:
            if key not in LEVEL_KEYS:
                errors.append(_line_error("extra_forbidden", (*loc, i, key), entry[key]))
        missing = [key for key in LEVEL_KEYS if key not in entry]
        for key in missing:
            errors.append(_line_error("missing", (*loc, i, key), dict(entry)))
        if not missing:
            pairs.append((entry["percentile"], entry["exposure"]))
    return tuple(pairs)


def portfolio_from_nested(value: Any) -> PortfolioConfig:
    """:class:`rotation.portfolio.PortfolioConfig` from a strategy file's ``portfolio:`` section.

    The nested form (keys in :data:`PORTFOLIO_KEYS`)::

        top_n, buffer, min_hold_days, rebalance_every, weighting, max_weight, vol_window,
        regime: {window, lookback, min_periods, levels: [{percentile, exposure}, ...]},
        abs_momentum: {window, threshold}

    Omitted keys take PortfolioConfig's defaults; unknown keys are errors. Raises
    :class:`pydantic.ValidationError` located in the nested form (``regime.levels[1].exposure``),
    so a strategy file's errors read ``portfolio.regime.levels[1].exposure: ...``. A
    ``PortfolioConfig`` is returned as is. ``defensive_symbol`` is not part of the section (it
    is the strategy's ``universe.defensive``). ``initial_cash`` (older files) is a backtest
    setting: :class:`StrategyConfig` reads it as ``costs.initial_cash`` before this runs; here it
    is validated and then rejected.
    """
    if isinstance(value, PortfolioConfig):
        return value
    if not isinstance(value, Mapping):
        raise ValidationError.from_exception_data(
            "PortfolioConfig", [_line_error("dict_type", (), value)])  # type: ignore[list-item]
    errors: list[dict[str, Any]] = []
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if (key,) in PORTFOLIO_KEYS:
            flat[PORTFOLIO_KEYS[(key,)]] = item
        elif key in _SECTIONS:
            if not isinstance(item, Mapping):
                errors.append(_line_error("dict_type", (key,), item))
                continue
            for sub, sub_item in item.items():
                field = PORTFOLIO_KEYS.get((key, sub))
                if field is None:
                    errors.append(_line_error("extra_forbidden", (key, sub), sub_item))
                elif field == "regime_levels":
                    flat[field] = _levels_from_nested(sub_item, errors)
                else:
                    flat[field] = sub_item
        elif key == _LEGACY_CASH:
            errors.extend(_cash_errors(item) or [_line_error(
                "value_error", (key,), item,
                "a backtest setting, not a portfolio rule: give it as costs.initial_cash "
                "(portfolio.initial_cash, its former place, is read only when "
                "costs.initial_cash is absent or equal)")])
        else:
            errors.append(_line_error("extra_forbidden", (key,), item))
    try:
        config = PortfolioConfig(**flat)
    except ValidationError as exc:
        errors.extend(_line_error(e["type"], _nested_loc(tuple(e["loc"])), e["input"],
                                  ctx=e.get("ctx")) for e in exc.errors())
    if errors:
        raise ValidationError.from_exception_data("PortfolioConfig", errors)  # type: ignore[arg-type]
    return config


def portfolio_to_nested(config: PortfolioConfig) -> dict[str, Any]:
    """The strategy-file form of ``config`` (inverse of :func:`portfolio_from_nested`; without
    the fields in :data:`PORTFOLIO_FIELDS_ELSEWHERE`)."""
    out: dict[str, Any] = {}
    for path, field in PORTFOLIO_KEYS.items():
        value = getattr(config, field)
        if field == "regime_levels":
            value = [dict(zip(LEVEL_KEYS, level, strict=True)) for level in value]
        target = out
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return out


# The ``portfolio`` section: a PortfolioConfig, read and written in the nested form.
PortfolioSection = Annotated[PortfolioConfig, BeforeValidator(portfolio_from_nested),
                             PlainSerializer(portfolio_to_nested)]


class ExecutionConfig(BaseModel):
    """SPEC §1: ``T1_OPEN`` (decide after close D, fill at open D+1) is the only model for
    signals; ``CLOSE`` (fill at close D) is accepted for comparison backtests only."""

    model_config = _MODEL

    model: Literal["T1_OPEN", "CLOSE"] = "T1_OPEN"

    @property
    def comparison_only(self) -> bool:
        return self.model != "T1_OPEN"


# -- factors ------------------------------------------------------------------------------------

_DEFAULTS_BY_NAME: dict[str, FactorSpec] = {s.name: s for s in DEFAULT_FACTORS}


def _factor_entries(value: Any) -> tuple[FactorSpec, ...]:
    """Factor list → specs: a name of the reference set, or a full configuration entry."""
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise ValueError("expected a list of factor names or factor entries "
                         "{name, kernel, params, unit, direction}")
    if not value:
        raise ValueError("at least one factor is required")
    specs: list[FactorSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(value):
        if isinstance(entry, FactorSpec):
            spec = entry
        elif isinstance(entry, str):
            known = _DEFAULTS_BY_NAME.get(entry)
            if known is None:
                close = difflib.get_close_matches(entry, _DEFAULTS_BY_NAME, n=3)
                hint = f"; did you mean {close}?" if close else ""
                raise ValueError(f"[{i}]: {entry!r} is not a factor of the reference set{hint} "
                                 "(give a full entry {name, kernel, params, unit, direction} "
                                 "for a new factor)")
            spec = known
        elif isinstance(entry, Mapping):
            try:
                spec = factor_spec(entry, where=f"[{i}]")
            except FactorConfigError as exc:
                text = str(exc).removeprefix(f"[{i}]: ")
                field = re.match(r"^field '([^']+)': (.*)$", text, re.S)
                name = f" (factor {entry.get('name')!r})" if entry.get("name") else ""
                if field:
                    raise ValueError(f"[{i}].{field.group(1)}: {field.group(2)}{name}") from None
                raise ValueError(f"[{i}]: {text}{name}") from None
        else:
            raise ValueError(f"[{i}]: expected a factor name or a mapping, got "
                             f"{type(entry).__name__}")
        if spec.name in seen:
            raise ValueError(f"[{i}].name: duplicate factor name {spec.name!r} (also entry "
                             f"{seen[spec.name]})")
        seen[spec.name] = i
        specs.append(spec)
    return tuple(specs)


FactorList = Annotated[tuple[FactorSpec, ...], BeforeValidator(_factor_entries)]


# -- the strategy -------------------------------------------------------------------------------


class StrategyConfig(BaseModel):
    """A complete, validated strategy (one MLflow experiment: :attr:`name`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = Field(min_length=1, max_length=100)
    description: str = ""
    universe: UniverseConfig
    factors: FactorList
    horizons: tuple[int, ...] = (1, 5, 10, 20)
    screening: ScreeningConfig = Field(default_factory=ScreeningConfig)
    wfo: WfoSection = Field(default_factory=WfoSection)
    search: SearchConfig = Field(default_factory=SearchConfig)
    costs: CostSection = Field(default_factory=CostSection)
    # SPEC §8 rules as traded (the search varies top_n, rebalance frequency and weighting
    # around them); nested in the file, see portfolio_from_nested.
    portfolio: PortfolioSection = Field(default_factory=PortfolioConfig, validate_default=True)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    # A classic single-strategy instead of the factor rotation (None: the rotation).
    classic: ClassicSection | None = None

    @model_validator(mode="before")
    @classmethod
    def _classic_without_search(cls, data: Any) -> Any:
        """A classic strategy searches its generator's parameters, not factor combinations:
        a ``search`` section would be ignored, so it is refused. Its ``factors`` (optional,
        default the reference set) feed only the shared factor research assets."""
        if not isinstance(data, Mapping) or data.get("classic") is None:
            return data
        if "search" in data:
            raise ValueError("search: a classic strategy has no factor combination search; "
                             "its candidates are classic.params (remove the section)")
        if "factors" not in data:
            return {**data, "factors": [s.name for s in DEFAULT_FACTORS]}
        return data

    @model_validator(mode="before")
    @classmethod
    def _initial_cash_under_costs(cls, data: Any) -> Any:
        """Read ``portfolio.initial_cash`` (older files) as ``costs.initial_cash``.

        Moved only when valid and not contradicted by ``costs.initial_cash``; otherwise it stays
        and :func:`portfolio_from_nested` reports it at ``portfolio.initial_cash``.
        """
        if not isinstance(data, Mapping):
            return data
        portfolio = data.get("portfolio")
        if not isinstance(portfolio, Mapping) or _LEGACY_CASH not in portfolio:
            return data
        cash = portfolio[_LEGACY_CASH]
        costs = data.get("costs", {})
        if isinstance(costs, CostSection):
            costs = costs.model_dump()
        if (not isinstance(costs, Mapping) or _cash_errors(cash)
                or costs.get(_LEGACY_CASH, cash) != cash):
            return data
        return {**data, "costs": {**costs, _LEGACY_CASH: cash},
                "portfolio": {k: v for k, v in portfolio.items() if k != _LEGACY_CASH}}

    @field_validator("portfolio")
    @classmethod
    def _defensive_from_universe(cls, value: PortfolioConfig,
                                 info: ValidationInfo) -> PortfolioConfig:
        """The defensive fund of the rules is ``universe.defensive`` (one place)."""
        universe = info.data.get("universe")  # absent when the universe is invalid
        if universe is None or value.defensive_symbol == universe.defensive:
            return value
        if value.defensive_symbol is not None:
            raise ValueError(f"defensive_symbol: {value.defensive_symbol!r} differs from "
                             f"universe.defensive ({universe.defensive!r}); set it there only")
        return dataclasses.replace(value, defensive_symbol=universe.defensive)

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"{value!r}: use lower-case letters, digits and '_', starting with "
                             "a letter (it names the MLflow experiment and partitions)")
        return value

    @field_validator("horizons")
    @classmethod
    def _horizons(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        bad = [v for v in values if v < 1]
        if bad:
            raise ValueError(f"every horizon must be >= 1 session, got {bad}")
        return _sorted_unique(values)

    @model_validator(mode="after")
    def _cross_fields(self) -> StrategyConfig:
        problems: list[str] = []
        longest = max(self.horizons)
        if self.screening.horizon is not None and self.screening.horizon not in self.horizons:
            problems.append(f"screening.horizon: {self.screening.horizon} is not one of the "
                            f"horizons {list(self.horizons)}")
        if self.wfo.in_sample < 3 * longest:
            problems.append(f"wfo.in_sample: {self.wfo.in_sample} sessions is too short for the "
                            f"{longest}-session horizon (need >= {3 * longest}: at least three "
                            "non-overlapping labels)")
        if self.classic is None:
            problems += self._rotation_problems()
        lot = self.costs.lot_size
        if lot is not None and lot != self.market.lot_size:
            problems.append(f"costs.lot_size: {lot} differs from market {self.market.name}'s lot "
                            f"of {self.market.lot_size} units; lots come from the market profile "
                            "(remove the field)")
        try:
            self.wfo_config  # noqa: B018 - the engine config must validate too
        except ValidationError as exc:
            problems.append(f"wfo: {exc}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _rotation_problems(self) -> list[str]:
        """The search's and the portfolio rules' consistency (rotation strategies only)."""
        problems: list[str] = []
        if self.search.min_factors > len(self.factors):
            problems.append(f"search.min_factors: {self.search.min_factors} exceeds the "
                            f"{len(self.factors)} configured factor(s)")
        rules = self.portfolio
        for where, n in [("portfolio.top_n", rules.top_n),
                         *[("search.top_n", n) for n in self.search.top_n]]:
            if rules.max_weight * n < 1 - 1e-9:
                problems.append(f"{where}: {n} funds × portfolio.max_weight {rules.max_weight:g} "
                                "< 100 %: the portfolio could never be fully invested")
                break
        if self.universe.symbols:
            rankable = len(set(self.universe.symbols) - self.universe.not_ranked)
            top = max(rules.top_n, *self.search.top_n)
            if top >= rankable:
                problems.append(f"portfolio.top_n/search.top_n: top {top} of {rankable} ranked "
                                "funds is not a rotation (need fewer than the universe)")
        return problems

    # -- derived ----------------------------------------------------------------------------
    @property
    def market(self) -> MarketProfile:
        """The market profile the strategy trades in (its universe's)."""
        return load_market(self.universe.market)

    @property
    def fees(self) -> FeeSchedule:
        """The market's fee schedule with this strategy's commission overrides."""
        return self.costs.fees(self.market)

    @property
    def cost_model(self) -> CostModel:
        """The one cost model of this strategy: its market's fees and lot with its overrides
        and slippage (what the backtest, the search and the account's venue charge)."""
        return CostModel.of_market(self.fees, lot_size=self.market.lot_size,
                                   slippage_bps=self.costs.slippage_bps)

    @property
    def factor_specs(self) -> tuple[FactorSpec, ...]:
        return self.factors

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.factors)

    @property
    def max_horizon(self) -> int:
        return max(self.horizons)

    @property
    def screening_horizon(self) -> int:
        return self.screening.horizon or self.max_horizon

    @property
    def wfo_config(self) -> WfoConfig:
        """The walk-forward engine config; purge from the longest label horizon."""
        w = self.wfo
        return WfoConfig(in_sample=w.in_sample, out_of_sample=w.out_of_sample, step=w.step,
                         mode=w.mode, horizon=self.max_horizon, embargo=w.embargo)

    @property
    def comparison_only(self) -> bool:
        """True under the ``CLOSE`` model: results are for comparison, never for signals."""
        return self.execution.comparison_only

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment of this strategy (SPEC §10: one per strategy)."""
        return self.name

    def select_kwargs(self) -> dict[str, float]:
        """Keyword arguments of :func:`rotation.ic.select_factors`."""
        s = self.screening
        return {"min_abs_ic": s.min_abs_ic, "min_positive_rate": s.min_positive_rate,
                "alpha": s.fdr_alpha, "max_corr": s.max_corr}

    def portfolio_config(self, *, top_n: int | None = None, rebalance_every: int | None = None,
                         weighting: str | None = None) -> PortfolioConfig:
        """:class:`rotation.portfolio.PortfolioConfig` of the rules (:attr:`portfolio`, whose
        ``defensive_symbol`` is ``universe.defensive``), optionally with one search candidate's
        top-N, rebalance frequency and weighting (validated)."""
        overrides: dict[str, Any] = {key: value for key, value in (("top_n", top_n),
                                                   ("rebalance_every", rebalance_every),
                                                   ("weighting", weighting))
                     if value is not None}
        return dataclasses.replace(self.portfolio, **overrides) if overrides else self.portfolio

    def backtest_config(self) -> BacktestConfig:
        """:class:`rotation.backtest.BacktestConfig`: the strategy's :attr:`cost_model`, its
        ``initial_cash`` and the market's tick; ``risk_free`` keeps the engine default.

        Raises ``ValueError`` under the ``CLOSE`` execution model: the engine simulates
        ``T1_OPEN`` only, so it cannot produce a ``CLOSE`` comparison backtest.
        """
        if self.execution.model != "T1_OPEN":
            raise ValueError(f"strategy {self.name!r}: the backtest engine simulates T1_OPEN "
                             f"only, not the {self.execution.model} execution model")
        return BacktestConfig(costs=self.cost_model, tick=self.market.tick,
                              initial_cash=self.costs.initial_cash)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able configuration (factor entries in full)."""
        data = self.model_dump(mode="json", exclude={"factors"})
        if data.get("classic") is None:  # a rotation strategy's text (and fingerprint) as before
            data.pop("classic", None)
        else:  # a classic strategy has no combination search (and a file may not give one)
            data.pop("search", None)
        data["factors"] = [s.to_dict() for s in self.factors]
        return {"name": data.pop("name"), "description": data.pop("description"),
                "universe": data.pop("universe"), "factors": data.pop("factors"), **data}

    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex) of the canonical configuration: equal configs, equal fingerprints."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def tracking_params(self) -> dict[str, Any]:
        """Parameters for an MLflow run (nested; the tracking resource flattens them)."""
        data = self.to_dict()
        data.pop("description", None)
        data["factors"] = {s.name: {"kernel": s.kernel, "params": dict(s.params),
                                    "direction": s.direction} for s in self.factors}
        data["wfo"]["horizon"] = self.max_horizon
        data["wfo"]["purge"] = self.wfo_config.purge
        # The costs as charged: the market's fee schedule with this strategy's overrides.
        data["costs"].update(dataclasses.asdict(self.cost_model),
                             currency=self.market.currency)
        return data

    def tracking_tags(self) -> dict[str, str]:
        return {"strategy": self.name, "strategy.fingerprint": self.fingerprint,
                "execution_model": self.execution.model,
                "comparison_only": str(self.comparison_only).lower()}


# -- loading ------------------------------------------------------------------------------------

def _all_field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names = set(model.model_fields)
    for info in model.model_fields.values():
        for candidate in _types_in(info.annotation):
            names |= _all_field_names(candidate, seen)
    return names


def _types_in(annotation: Any) -> list[type[BaseModel]]:
    out: list[type[BaseModel]] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        out.append(annotation)
    for arg in getattr(annotation, "__args__", ()) or ():
        out.extend(_types_in(arg))
    return out


def _loc(parts: tuple[Any, ...]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


_LEAD_ITEM = re.compile(r"^(\[\d+\][\w.\[\]]*): (.*)$", re.S)
_LEAD_FIELD = re.compile(r"^([a-z_][a-z0-9_]*(?:[./][a-z_][a-z0-9_]*)*): (.*)$", re.S)


def explain(exc: ValidationError) -> list[tuple[str, str]]:
    """``(field path, reason)`` per pydantic error, with the offending value and hints.

    Model-level validators name the field they object to at the start of their message
    (``"step: ..."``); that name is appended to the error's location.
    """
    fields = _all_field_names(StrategyConfig) | _PORTFOLIO_KEY_NAMES
    problems: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = _loc(tuple(p for p in err["loc"] if not str(p).startswith("function-")))
        msg = str(err["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(err["loc"][-1])
            close = difflib.get_close_matches(key, fields, n=1)
            problems.append((loc, "unknown key" + (f" (did you mean {close[0]!r}?)"
                                                   if close else "")))
            continue
        if kind not in {"value_error", "missing", "assertion_error"}:
            problems.append((loc, f"{msg} (got {err.get('input')!r})"))
            continue
        for line in msg.splitlines():
            item = _LEAD_ITEM.match(line)
            if item:  # "[3].kernel: ..." from a list validator
                problems.append((f"{loc}{item.group(1)}", item.group(2)))
                continue
            match = _LEAD_FIELD.match(line)
            if match and all(part in fields for part in re.split(r"[./]", match.group(1))):
                lead = "/".join(f"{loc}.{p}" if loc else p
                                for p in match.group(1).split("/"))
                problems.append((lead, match.group(2)))
            else:
                problems.append((loc, line))
    return problems


def resolve_strategy_path(name_or_path: str | Path) -> Path:
    """A path as given, or ``config/strategies/<name>.yaml`` for a bare name."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.is_file():
        return path
    return STRATEGY_CONFIG_DIR / f"{name_or_path}.yaml"


def strategy_from_dict(data: Any, *, path: str | Path | None = None) -> StrategyConfig:
    """Validate a mapping (e.g. parsed YAML); errors as :class:`StrategyConfigError`."""
    if not isinstance(data, Mapping):
        raise StrategyConfigError(path, [("", f"expected a mapping at the top level, got "
                                              f"{type(data).__name__}")])
    try:
        return StrategyConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise StrategyConfigError(path, explain(exc)) from None


def load_strategy(name_or_path: str | Path, *, warn: bool = True) -> StrategyConfig:
    """Read and validate a strategy YAML file (a path, or a name in ``config/strategies``).

    Raises :class:`StrategyConfigError` naming the file, the field path and why. A strategy on
    the ``CLOSE`` execution model loads (comparison backtests) with a :class:`StrategyWarning`.
    """
    path = resolve_strategy_path(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in STRATEGY_CONFIG_DIR.glob("*.yaml"))
        raise StrategyConfigError(path, [("", f"no such file (strategies in "
                                              f"{STRATEGY_CONFIG_DIR}: {known})")])
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise StrategyConfigError(path, [("", f"not valid YAML: {exc}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StrategyConfigError(path, [("", f"cannot be read as UTF-8 text: {exc}")]
                                  ) from None
    config = strategy_from_dict(data, path=path)
    if warn and config.comparison_only:
        warnings.warn(f"strategy {config.name!r} ({path}): execution model "
                      f"{config.execution.model} is for comparison only; it never produces "
                      "signals", StrategyWarning, stacklevel=2)
    return config


__all__ = [
    "PORTFOLIO_FIELDS_ELSEWHERE",
    "PORTFOLIO_KEYS",
    "STRATEGY_CONFIG_DIR",
    "ClassicSection",
    "CostSection",
    "ExecutionConfig",
    "PortfolioSection",
    "ScoreWeights",
    "ScreeningConfig",
    "SearchConfig",
    "StrategyConfig",
    "StrategyConfigError",
    "StrategyWarning",
    "UniverseConfig",
    "WfoSection",
    "explain",
    "load_strategy",
    "portfolio_from_nested",
    "portfolio_to_nested",
    "resolve_strategy_path",
    "strategy_from_dict",
]

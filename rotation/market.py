"""Market profiles: the one rules model of a market (SPEC §2, §7).

A profile (``config/markets/<name>.yaml``) names a market's calendar, timezone, currency, symbol
scheme, lot and odd-lot rule, fee schedule and a table of instrument classes (settlement, price
limit band, same-session reuse of sale cash), each rule with the source it comes from. A dataset
names its profile and assigns each fund a class (:class:`ClassAssignment`); :func:`resolve`
turns that into :class:`rotation.bars.Instrument` rows, which carry the rules every engine reads:
the search engine, the backtest, the vectorbt replay, the paper broker, order planning and
pre-trade risk. Nothing outside this module assumes a market.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rotation.bars import Instrument
from rotation.config_paths import CONFIG_DIR
from rotation.yaml_config import load_yaml_model

MARKET_CONFIG_DIR = CONFIG_DIR / "markets"
DEFAULT_MARKET = "cn_funds"
Settlement = Literal["T+0", "T+1"]
_MODEL = ConfigDict(extra="forbid", frozen=True)


class MarketConfigError(ValueError):
    """A market profile or a class assignment that cannot be used (names the file and field)."""


# -- symbol schemes ------------------------------------------------------------------------------

_CN_CODE = re.compile(r"(?<!\d)(\d{6})(?!\d)")
_CN_SUFFIX = re.compile(r"^(\d{6})\.(SH|SZ|SS)$")
_US_TICKER = re.compile(r"^[A-Z][A-Z0-9]{0,5}([.\-][A-Z])?$")
_HK_CODE = re.compile(r"(?<!\d)(\d{4,5})(?:\.HK)?(?!\d)")
_FILE_SUFFIXES = (".gz", ".csv", ".parquet", ".txt", ".json")


def _stem(text: str) -> str:
    """A file name without its data suffixes (``SPY.csv.gz`` → ``SPY``); other text unchanged."""
    name = Path(text).name if ("/" in text or any(text.endswith(s) for s in _FILE_SUFFIXES)) \
        else text
    for suffix in _FILE_SUFFIXES * 2:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


class SymbolScheme(BaseModel):
    """How a market writes fund symbols, and which exchange a symbol belongs to.

    ``cn_fund``: 6-digit codes, ``5xxxxx`` Shanghai (``.SH``), ``1xxxxx`` Shenzhen (``.SZ``);
    found in ``510050``, ``510050.SH``, ``sh510050`` or ``510050_hfq_factor.csv``.
    ``us_ticker``: 1-6 letters/digits with an optional class letter (``BRK.B``), found in
    ``SPY`` or ``SPY.csv.gz``. ``hk_code``: 4-5 digits, written 5 digits (``02800``).
    """

    model_config = _MODEL

    kind: Literal["cn_fund", "us_ticker", "hk_code"]
    # Exchange of a symbol by its leading characters (cn_fund); one exchange for all otherwise.
    exchange_by_prefix: dict[str, str] = Field(default_factory=dict)
    exchange: str | None = None

    def parse(self, text: object) -> str | None:
        """The symbol written in ``text`` (a code, a code with suffix, a file name), or None."""
        raw = str(text).strip()
        if not raw or raw.lower() in {"nan", "none", "<na>"}:
            return None
        if self.kind == "cn_fund":
            match = _CN_CODE.search(raw)
            return match.group(1) if match else None
        if self.kind == "hk_code":
            match = _HK_CODE.search(_stem(raw))
            return match.group(1).zfill(5) if match else None
        ticker = _stem(raw).upper()
        return ticker if _US_TICKER.match(ticker) else None

    def expected_exchange(self, symbol: str) -> str | None:
        for prefix, exchange in self.exchange_by_prefix.items():
            if symbol.startswith(prefix):
                return exchange
        return self.exchange

    def suffix_problem(self, text: object) -> str | None:
        """Why a written code's exchange suffix contradicts the code (``510050.SZ``), or None."""
        match = _CN_SUFFIX.match(str(text).strip().upper()) if self.kind == "cn_fund" else None
        if match is None:
            return None
        code, suffix = match.group(1), {"SS": "SH"}.get(match.group(2), match.group(2))
        expected = self.expected_exchange(code)
        if expected is not None and expected != suffix:
            return (f"{text}: code {code} trades on {expected}, not {suffix} "
                    f"(symbol scheme {self.kind})")
        return None


# -- rules ---------------------------------------------------------------------------------------


class InstrumentClass(BaseModel):
    """Trading rules shared by a class of funds.

    ``settlement``: ``T+0`` — units bought in a session may be sold in the same session;
    ``T+1`` — not before the next session. ``price_limit``: the daily band as a fraction of the
    previous close (None: no daily limit). ``sale_cash_same_day``: proceeds of a sale may pay
    for a buy in the same session.
    """

    model_config = _MODEL

    description: str
    settlement: Settlement
    price_limit: float | None = Field(default=None, gt=0, le=1)
    sale_cash_same_day: bool = True
    # Longest run of unchanged closes that is normal for the class (None: the quality
    # configuration's ``max_stale_days``), e.g. T-bill funds at zero interest rates.
    max_stale_days: int | None = Field(default=None, ge=1, le=250)
    source: str = Field(min_length=5, description="where these rules come from")

    @property
    def same_session_sell(self) -> bool:
        return self.settlement == "T+0"


class FeeSchedule(BaseModel):
    """A market's fees as its profile states them: commission (rate with a minimum per order)
    on every order, plus sell-side ad-valorem duties (stamp duty, a regulator's transaction fee)
    where they apply. What an order is charged is :class:`rotation.costs.CostModel`'s, built from
    this (:meth:`rotation.costs.CostModel.of_market`)."""

    model_config = _MODEL

    commission_bps: float = Field(ge=0, le=30, allow_inf_nan=False)
    min_commission: float = Field(ge=0, allow_inf_nan=False)
    stamp_duty_sell_bps: float = Field(default=0.0, ge=0, le=50, allow_inf_nan=False)
    transaction_fee_sell_bps: float = Field(default=0.0, ge=0, le=5, allow_inf_nan=False)
    source: str = Field(min_length=5)

    @property
    def sell_rate(self) -> float:
        """Sell-side duties as a fraction of the notional (on top of the commission)."""
        return (self.stamp_duty_sell_bps + self.transaction_fee_sell_bps) / 1e4


class MarketProfile(BaseModel):
    """One market: calendar, currency, symbols, lots, fees and instrument classes."""

    model_config = _MODEL

    name: str
    description: str
    calendar: str
    timezone: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    symbol_scheme: SymbolScheme
    lot_size: int = Field(ge=1)
    tick: float = Field(gt=0, description="price increment, in the currency")
    # ``sell_only``: an odd lot (fewer units than a lot) may only be sold, in one order.
    odd_lot: Literal["sell_only", "allowed"]
    fees: FeeSchedule
    classes: dict[str, InstrumentClass] = Field(min_length=1)
    default_class: str
    # Market-wide classes by code prefix (a board's code range), used where a dataset says
    # nothing more specific about a fund.
    class_by_prefix: dict[str, str] = Field(default_factory=dict)
    benchmark: str
    # Local time (the profile's timezone) of the after-close run, by which the session's bars
    # are final: the default schedule runs then, Monday to Friday (ETF_SCHEDULE_CRON overrides).
    after_close: str = Field(default="16:30", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    sources: list[str] = Field(default_factory=list)

    @property
    def after_close_cron(self) -> str:
        """The after-close run as a cron, Monday to Friday (``30 16 * * 1-5`` for 16:30);
        sessions are told from holidays by the calendar, not by the cron."""
        hour, minute = self.after_close.split(":")
        return f"{int(minute)} {int(hour)} * * 1-5"

    @model_validator(mode="after")
    def _default_known(self) -> MarketProfile:
        named = {self.default_class, *self.class_by_prefix.values()}
        unknown = sorted(named - set(self.classes))
        if unknown:
            raise ValueError(f"default_class/class_by_prefix name class(es) {unknown} that are "
                             f"not in classes {sorted(self.classes)}")
        return self

    def instrument_class(self, name: str) -> InstrumentClass:
        try:
            return self.classes[name]
        except KeyError:
            raise MarketConfigError(f"market {self.name}: unknown instrument class {name!r} "
                                    f"(known: {sorted(self.classes)})") from None


class ClassAssignment(BaseModel):
    """Which instrument class each fund of a dataset belongs to: by symbol, then by symbol
    prefix, then by the dataset's asset-class column (prefix match), then by the profile's
    ``class_by_prefix``, else the profile's default class."""

    model_config = _MODEL

    by_symbol: dict[str, str] = Field(default_factory=dict)
    by_prefix: dict[str, str] = Field(default_factory=dict)
    by_asset_class_prefix: dict[str, str] = Field(default_factory=dict)

    def class_of(self, symbol: str, asset_class: str, profile: MarketProfile) -> str:
        if symbol in self.by_symbol:
            return self.by_symbol[symbol]
        for prefix, name in self.by_prefix.items():
            if symbol.startswith(prefix):
                return name
        for prefix, name in self.by_asset_class_prefix.items():
            if asset_class.startswith(prefix):
                return name
        for prefix, name in profile.class_by_prefix.items():
            if symbol.startswith(prefix):
                return name
        return profile.default_class

    def unknown_classes(self, profile: MarketProfile) -> list[str]:
        named = {*self.by_symbol.values(), *self.by_prefix.values(),
                 *self.by_asset_class_prefix.values()}
        return sorted(named - set(profile.classes))


# -- loading -------------------------------------------------------------------------------------


def market_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"}:
        return path
    return MARKET_CONFIG_DIR / f"{name_or_path}.yaml"


@lru_cache(maxsize=32)
def _load(path: Path, mtime: int) -> MarketProfile:
    return load_yaml_model(path, MarketProfile, MarketConfigError, "market profile")


def load_market(name_or_path: str | Path = DEFAULT_MARKET) -> MarketProfile:
    """The profile ``config/markets/<name>.yaml`` (or a YAML path)."""
    path = market_path(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in MARKET_CONFIG_DIR.glob("*.yaml"))
        raise MarketConfigError(f"no market profile {name_or_path!r} (known: {known})")
    return _load(path.resolve(), path.stat().st_mtime_ns)


def resolve(profile: MarketProfile, assignment: ClassAssignment,
            rows: Iterable[Mapping[str, str]]) -> list[Instrument]:
    """Instruments with their class's rules, from rows with ``symbol`` and optionally ``name``,
    ``exchange`` and ``asset_class``."""
    unknown = assignment.unknown_classes(profile)
    if unknown:
        raise MarketConfigError(f"instrument_classes names class(es) {unknown} that market "
                                f"{profile.name} does not define "
                                f"(known: {sorted(profile.classes)})")
    out = []
    for row in rows:
        symbol = row["symbol"]
        name = assignment.class_of(symbol, row.get("asset_class", ""), profile)
        rules = profile.instrument_class(name)
        out.append(Instrument(
            symbol=symbol, name=row.get("name", ""),
            exchange=row.get("exchange", "") or profile.symbol_scheme.expected_exchange(symbol)
            or "",
            asset_class=row.get("asset_class", ""), price_limit=rules.price_limit,
            instrument_class=name, settlement=rules.settlement,
            sale_cash_same_day=rules.sale_cash_same_day, max_stale_days=rules.max_stale_days))
    return out

"""A directory of CSV or Parquet files described by a dataset configuration (YAML).

Nothing here is specific to one dataset or market: file globs, header lines, column maps, units,
adjustment factors (or an adjusted-close column), a split table, the universe and its instrument
classes come from the dataset's YAML, and symbols are read in the scheme of the market it names
(``config/markets``: 6-digit A-share codes, US tickers), so the real datasets in
``shared/data`` are read as they are.
"""

from __future__ import annotations

import datetime as dt
import glob
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rotation.bars import (
    Instrument,
    LoadResult,
    PriceBasis,
    conform_bars,
    empty_bars,
    empty_issues,
    issue,
)
from rotation.calendar import get_calendar
from rotation.market import (
    DEFAULT_MARKET,
    ClassAssignment,
    MarketConfigError,
    MarketProfile,
    SymbolScheme,
    load_market,
    resolve,
)
from rotation.sources.mapping import SourceSchema, normalise
from rotation.yaml_config import load_yaml_model


class PriceFiles(SourceSchema):
    glob: str = Field(description="glob of price files, relative to the dataset root")
    format: Literal["csv", "parquet"] = "csv"


class FactorFiles(BaseModel):
    """Cumulative backward-adjustment (hfq) factors: adjusted = raw × forward-filled factor."""

    model_config = ConfigDict(extra="forbid")

    glob: str
    date_column: str
    factor_column: str


class SplitTable(BaseModel):
    """Split / share-conversion events; ``ratio`` = new units per old unit."""

    model_config = ConfigDict(extra="forbid")

    path: str
    symbol_column: str
    date_column: str
    ratio_column: str
    # The table's date is the record date; units trade ex on the next session.
    effective: Literal["next_session", "same_session"] = "next_session"


class UniverseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbols: list[str] | None = None
    symbols_file: str | None = None
    symbol_column: str = "code"
    name_column: str | None = "name"
    exchange_column: str | None = "exchange"
    asset_class_column: str | None = None
    exclude: list[str] = Field(default_factory=list)
    # Fund names where the data names none (no symbols file, or an empty name in it).
    names: dict[str, str] = Field(default_factory=dict)


class AcceptedAnomaly(BaseModel):
    """A documented, reviewed exception to one quality rule for one (symbol, date)."""

    model_config = ConfigDict(extra="forbid")

    symbol: str
    date: dt.date
    rule: str
    reason: str = Field(min_length=10)


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    # The market profile (config/markets/<market>.yaml): currency, symbols, lots, fees, classes.
    market: str = DEFAULT_MARKET
    # The sessions the data follows: the market profile's calendar unless given.
    calendar: str | None = None
    calendar_start: str = "2005-01-01"
    # First session with data: where the session partitions of this dataset start.
    history_start: str
    # Last session with data for any fund of the dataset (a backfill's natural end).
    history_end: str
    price_basis: PriceBasis = "raw"
    prices: PriceFiles
    adjustment_factors: FactorFiles | None = None
    splits: SplitTable | None = None
    universe: UniverseSpec = Field(default_factory=UniverseSpec)
    instrument_classes: ClassAssignment = Field(default_factory=ClassAssignment)
    accepted_anomalies: list[AcceptedAnomaly] = Field(default_factory=list)

    @model_validator(mode="after")
    def _market_rules(self) -> DatasetSpec:
        try:
            profile = load_market(self.market)
        except MarketConfigError as exc:
            raise ValueError(str(exc)) from None
        unknown = self.instrument_classes.unknown_classes(profile)
        if unknown:
            raise ValueError(f"instrument_classes: class(es) {unknown} are not defined by "
                             f"market {profile.name} (known: {sorted(profile.classes)})")
        self._symbols_in_scheme(profile.symbol_scheme)
        if self.calendar is None:
            self.calendar = profile.calendar
        return self

    def _symbols_in_scheme(self, scheme: SymbolScheme) -> None:
        """The symbols this file writes (``universe.symbols``, ``exclude``, ``names``,
        ``instrument_classes.by_symbol``) in the market's form (``510300.SH`` → ``510300``,
        ``spy`` → ``SPY``); one that is no symbol of the market is an error naming the entry."""
        bad: list[str] = []

        def canonical(values: list[str], where: str) -> list[str]:
            out = []
            for i, value in enumerate(values):
                symbol = scheme.parse(value)
                if symbol is None:
                    bad.append(f"{where}[{i}] {value!r}")
                out.append(symbol or value)
            return out

        u = self.universe
        if u.symbols is not None:
            u.symbols = canonical(u.symbols, "universe.symbols")
        u.exclude = canonical(u.exclude, "universe.exclude")
        u.names = dict(zip(canonical(list(u.names), "universe.names"), u.names.values(),
                           strict=True))
        by_symbol = self.instrument_classes.by_symbol
        keys = canonical(list(by_symbol), "instrument_classes.by_symbol")
        if keys != list(by_symbol):
            self.instrument_classes = self.instrument_classes.model_copy(
                update={"by_symbol": dict(zip(keys, by_symbol.values(), strict=True))})
        if bad:
            raise ValueError(f"not a symbol of market {self.market} ({scheme.kind}): "
                             + ", ".join(bad))

    @property
    def calendar_name(self) -> str:
        assert self.calendar is not None  # filled from the market profile on validation
        return self.calendar


class DatasetConfigError(ValueError):
    pass


def load_dataset_spec(path: str | os.PathLike[str]) -> DatasetSpec:
    return load_yaml_model(Path(path), DatasetSpec, DatasetConfigError, "dataset config")


class FileMarketSource:
    """Reads one dataset directory according to its :class:`DatasetSpec`."""

    def __init__(self, root: str | os.PathLike[str], spec: DatasetSpec) -> None:
        self.root = Path(root)
        self.spec = spec
        if not self.root.is_dir():
            raise DatasetConfigError(
                f"dataset {spec.name}: root {self.root} is not a directory "
                "(set market_data.files_root to the folder holding the dataset)"
            )

    # -- universe ---------------------------------------------------------------------------
    def instruments(self) -> list[Instrument]:
        u = self.spec.universe
        rows: list[dict[str, str]] = []
        if u.symbols_file:
            rows = self._universe_file()[0]
        elif u.symbols:
            rows = [{"symbol": s, "name": "", "exchange": "", "asset_class": ""} for s in u.symbols]
        else:
            rows = [
                {"symbol": self._parse(Path(p).name) or "", "name": "", "exchange": "",
                 "asset_class": ""}
                for p in self._price_paths()
            ]
        if u.symbols and u.symbols_file:
            rows = [r for r in rows if r["symbol"] in set(u.symbols)]
        excluded = set(u.exclude)
        kept = [{**r, "name": r["name"] or u.names.get(r["symbol"], "")}
                for r in rows if r["symbol"] and r["symbol"] not in excluded]
        return resolve(self.profile, self.spec.instrument_classes, kept)

    def _universe_file(self) -> tuple[list[dict[str, str]], list[dict[str, object]]]:
        """The symbols file's rows, and its problems as issues: text in no known encoding
        (``symbols_file_encoding``: read with the undecodable bytes replaced, so codes still
        come through), a missing code column, an exchange the code does not trade on."""
        u = self.spec.universe
        assert u.symbols_file is not None
        path = self.root / u.symbols_file
        label = self._rel(str(path))
        table, found = _read_table(path, label, self._parse)
        if u.symbol_column not in table.columns:
            return [], [*found, issue(label, None, None, u.symbol_column, "source_columns",
                                      f"{label}: missing column {u.symbol_column!r}; found "
                                      f"{list(table.columns)}")]
        rows = []
        for line, rec in enumerate(table.fillna("").to_dict("records"), start=2):
            code = str(rec[u.symbol_column])
            row = {"symbol": self._parse(code) or code,
                   "name": rec.get(u.name_column or "", ""),
                   "exchange": rec.get(u.exchange_column or "", ""),
                   "asset_class": rec.get(u.asset_class_column or "", "")}
            problem = self.profile.symbol_scheme.suffix_problem(
                f"{row['symbol']}.{row['exchange']}") if row["exchange"] else None
            if problem is not None:
                found.append(issue(label, row["symbol"], None, u.exchange_column,
                                   "symbol_exchange", f"{label}: line {line}: {problem}"))
            rows.append(row)
        return rows, found

    def _universe_issues(self) -> list[dict[str, object]]:
        """The symbols file's problems (a missing file is a configuration error, raised where
        the universe is read: :meth:`instruments`)."""
        if not self.spec.universe.symbols_file:
            return []
        try:
            return self._universe_file()[1]
        except DatasetConfigError:
            return []

    @property
    def profile(self) -> MarketProfile:
        return load_market(self.spec.market)

    def _parse(self, text: object) -> str | None:
        return self.profile.symbol_scheme.parse(text)

    # -- bars -------------------------------------------------------------------------------
    def load(self, start: object = None, end: object = None) -> LoadResult:
        """Bars with ``start <= date <= end`` for every price file, factors applied."""
        excluded = set(self.spec.universe.exclude)
        frames: list[pd.DataFrame] = []
        issue_rows: list[dict[str, object]] = self._universe_issues()
        sources: list[str] = []
        paths = self._price_paths()
        if not paths:
            issue_rows.append(
                issue(str(self.root), None, None, None, "source_not_empty",
                      f"{self.root}: no file matches {self.spec.prices.glob!r}")
            )
        for path in paths:
            symbol = self._parse(Path(path).name)
            if symbol in excluded:
                continue
            bars, found = _read_price_file(
                path, _mtime(path), self.spec.prices.model_dump_json(), self._rel(path),
                self.profile.symbol_scheme.model_dump_json(), self.profile.lot_size,
            )
            sources.append(self._rel(path))
            issue_rows.extend(found)
            frames.append(bars)
        bars = pd.concat(frames, ignore_index=True) if frames else empty_bars()
        bars = bars.loc[~bars["symbol"].isin(excluded)]
        lo = pd.Timestamp(start) if start is not None else None
        hi = pd.Timestamp(end) if end is not None else None
        # Each bar's factor depends only on its own date and symbol: cut the range first.
        if lo is not None:
            bars = bars.loc[bars["date"] >= lo]
        if hi is not None:
            bars = bars.loc[bars["date"] <= hi]
        bars, factor_issues = self._apply_factors(bars)
        issue_rows.extend(factor_issues)
        issues = pd.DataFrame(issue_rows) if issue_rows else empty_issues()
        # Cell-level issues belong to their date's partition; file-level ones (no date) to all.
        when = pd.to_datetime(issues["date"])
        keep = when.isna()
        keep |= (when >= lo) if lo is not None else True
        if hi is not None:
            keep &= when.isna() | (when <= hi)
        return LoadResult(bars=conform_bars(bars), issues=issues.loc[keep].reset_index(drop=True),
                          sources=sources)

    def _apply_factors(self, bars: pd.DataFrame
                       ) -> tuple[pd.DataFrame, list[dict[str, object]]]:
        """Bars with their adjustment factor, and the factor files' problems."""
        if bars.empty:
            return bars, []
        # The price file's own factor (adj_close / close where the source has it, else 1).
        factor = bars["adj_factor"].astype("float64")
        covered_until: dict[str, pd.Timestamp] = {}
        found: list[dict[str, object]] = []
        if self.spec.adjustment_factors is not None:
            table, found = self._factor_table()
            if not table.empty:
                covered_until = table.groupby("symbol")["date"].max().to_dict()
                keyed = bars[["date", "symbol"]].reset_index()
                merged = pd.merge_asof(
                    keyed.sort_values("date"),
                    table.sort_values("date"),
                    on="date",
                    by="symbol",
                    direction="backward",
                ).set_index("index")
                # Before a fund's first factor row the factor is 1 (the source's own convention).
                factor = factor * merged["factor"].reindex(bars.index).fillna(1.0)
        if self.spec.splits is not None:
            events, split_issues = self._split_events()
            found = found + split_issues
            factor = factor * _split_factor(bars, covered_until, events)
        out = bars.copy()
        out["adj_factor"] = factor.to_numpy()
        return out, found

    def _split_events(self) -> tuple[list[SplitEvent], list[dict[str, object]]]:
        """The split table's usable events, and its problems: a row without a fund's code, a
        date or a ratio > 0 (``split_events_valid``: every session's factor may depend on it),
        a record date that is not a session (``split_record_date_is_session``, a warning dated
        on the ex-date: the event still applies, from the first session after that date)."""
        spec = self.spec.splits
        assert spec is not None
        label = self._rel(str(self.root / spec.path))
        try:
            table = pd.read_csv(self.root / spec.path, dtype=str)
        except (OSError, ValueError) as exc:
            return [], [issue(label, None, None, None, "split_events_valid",
                              f"{label}: unreadable: {exc}")]
        columns = (spec.symbol_column, spec.date_column, spec.ratio_column)
        missing = [c for c in columns if c not in table.columns]
        if missing:
            return [], [issue(label, None, None, ",".join(missing), "split_events_valid",
                              f"{label}: missing column(s) {missing}")]
        cal = get_calendar(self.spec.calendar_name, self.spec.calendar_start)
        days = pd.to_datetime(table[spec.date_column], errors="coerce").dt.normalize()
        ratios = pd.to_numeric(table[spec.ratio_column], errors="coerce")
        events, found = [], []
        for idx, raw in table[list(columns)].iterrows():
            symbol, day, ratio = self._parse(raw.iloc[0]), days.at[idx], ratios.at[idx]
            line = f"{label}: line {int(idx) + 2}"
            if symbol is None or pd.isna(day) or not (np.isfinite(ratio) and ratio > 0):
                found.append(issue(label, symbol, None, None, "split_events_valid",
                                   f"{line}: code {raw.iloc[0]!r}, date {raw.iloc[1]!r}, ratio "
                                   f"{raw.iloc[2]!r}: needs a fund's code, a date, a ratio > 0"))
                continue
            after = spec.effective == "next_session"
            # The first session after the record date (whether or not that date is a session).
            ex = cal.next_session_on_or_after(day + pd.Timedelta(days=1) if after else day)
            if not cal.is_session(day):
                found.append(issue(
                    label, symbol, ex, spec.date_column, "split_record_date_is_session",
                    f"{line}: {symbol} split recorded on {day:%Y-%m-%d}, not a "
                    f"{cal.name} session; applied from {ex:%Y-%m-%d}, the first session "
                    f"{'after' if after else 'on or after'} it (check the table's date)"))
            events.append(SplitEvent(symbol, ex, float(ratio)))
        return events, found

    def _factor_table(self) -> tuple[pd.DataFrame, list[dict[str, object]]]:
        """Every factor file's valid rows, and each invalid row as an issue naming its file."""
        spec = self.spec.adjustment_factors
        assert spec is not None
        frames, found = [], []
        for path in sorted(glob.glob(str(self.root / spec.glob))):
            table, issues = _read_factor_file(path, _mtime(path), spec.date_column,
                                              spec.factor_column, self._rel(path),
                                              self.profile.symbol_scheme.model_dump_json())
            frames.append(table)
            found.extend(issues)
        if not frames:
            return pd.DataFrame({"date": [], "symbol": [], "factor": []}), found
        return pd.concat(frames, ignore_index=True), found

    def _price_paths(self) -> list[str]:
        return sorted(glob.glob(str(self.root / self.spec.prices.glob)))

    def _rel(self, path: str) -> str:
        return f"{self.spec.name}/{Path(path).relative_to(self.root).as_posix()}"


@dataclass(frozen=True)
class SplitEvent:
    symbol: str
    ex_date: pd.Timestamp  # first session trading on the new units
    ratio: float           # new units per old unit


def _split_factor(bars: pd.DataFrame, covered_until: dict[str, pd.Timestamp],
                  events: list[SplitEvent]) -> pd.Series:
    """Split events not already inside a factor series (no file, or after its last date)."""
    out = pd.Series(1.0, index=bars.index)
    for event in events:
        if event.symbol in covered_until and event.ex_date <= covered_until[event.symbol]:
            continue
        mask = (bars["symbol"] == event.symbol) & (bars["date"] >= event.ex_date)
        out.loc[mask] *= event.ratio
    return out


# Chinese vendors write CSV in UTF-8 (often with a BOM) or in GBK / its superset GB18030.
_ENCODINGS = ("utf-8-sig", "gb18030")


def _read_table(path: Path, label: str, parse: Callable[[object], str | None]
                ) -> tuple[pd.DataFrame, list[dict[str, object]]]:
    """A small CSV of text cells (a symbols file) in UTF-8 or GB18030. Text in neither is read
    in the encoding that got further, its bad bytes replaced, and is a
    ``symbols_file_encoding`` issue naming the line (and the code on it)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetConfigError(f"{path}: cannot read: {exc}") from exc
    failures: dict[str, UnicodeDecodeError] = {}
    for encoding in _ENCODINGS:
        try:
            return _csv_cells(data.decode(encoding), label), []
        except UnicodeDecodeError as exc:
            failures[encoding] = exc
    encoding, error = max(failures.items(), key=lambda item: item[1].start)
    text = data.decode(encoding, errors="replace")
    line = data[: error.start].count(b"\n") + 1
    code = parse(text.split("\n")[line - 1])
    return _csv_cells(text, label), [issue(
        label, code, None, None, "symbols_file_encoding",
        f"{label}: line {line} ({code or 'no fund code'}): bytes "
        f"{data[error.start:error.end]!r} are neither UTF-8 nor GBK/GB18030 text (the universe "
        "of every session); re-save the file as UTF-8")]


def _csv_cells(text: str, label: str) -> pd.DataFrame:
    try:
        return pd.read_csv(io.StringIO(text), dtype=str)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DatasetConfigError(f"{label}: not a CSV table: {exc}") from exc


def _mtime(path: str) -> float:
    return os.stat(path).st_mtime_ns


@lru_cache(maxsize=512)
def _read_price_file(
    path: str, mtime: float, spec_json: str, label: str, scheme_json: str, lot_size: int = 1
) -> tuple[pd.DataFrame, list[dict[str, object]]]:
    """Parse one price file (memoised on path and mtime: a backfill reads each file once)."""
    spec = PriceFiles.model_validate_json(spec_json)
    scheme = SymbolScheme.model_validate_json(scheme_json)
    symbol = scheme.parse(Path(path).name)
    try:
        raw = pd.read_parquet(path) if spec.format == "parquet" else _read_csv(path, spec)
    except pd.errors.EmptyDataError:
        raw = pd.DataFrame()
    except (OSError, ValueError) as exc:
        return empty_bars(), [issue(label, symbol, None, None, "source_columns",
                                    f"{label}: unreadable: {exc}")]
    if symbol is None and not any(m.symbol for m in spec.schemas):
        return empty_bars(), [issue(label, None, None, None, "source_symbols",
                                    f"{label}: the file name names no symbol of this market "
                                    f"({scheme.kind}) and the file has no symbol column")]
    bars, found = normalise(raw, spec, source=label, symbol=symbol, parse=scheme.parse,
                            suffix_problem=scheme.suffix_problem)
    problem = scheme.suffix_problem(_FILE_EXTENSIONS.sub("", Path(path).name))
    if problem is not None:
        found.append(issue(label, symbol, None, None, "symbol_exchange",
                           f"{label}: the file name says {problem}"))
    return bars, found + _volume_unit_issues(bars, spec, lot_size, label)


_FILE_EXTENSIONS = re.compile(r"(\.(csv|txt|parquet|gz|bz2|xz|zip))+$", re.IGNORECASE)


# A file is in the wrong volume unit when this share of its traded days says so (below).
_UNIT_EVIDENCE = 0.95
_UNIT_MIN_DAYS = 20


def _volume_unit_issues(bars: pd.DataFrame, spec: PriceFiles, lot: int, label: str
                        ) -> list[dict[str, object]]:
    """``volume_units``: the volume's unit contradicts the configuration. Trades happen in
    whole lots, so a count of units (shares) is nearly always a multiple of the lot while a
    count of lots is not: a file said to be in lots whose values are almost all multiples of
    the lot is in units, and one said to be in units whose values mostly are not is in lots."""
    raw = bars["volume"] / spec.volume_multiplier
    traded = raw[raw > 0]
    if lot <= 1 or len(traded) < _UNIT_MIN_DAYS:
        return _volume_day_issues(bars, spec, lot, label)
    whole = float((np.mod(traded, lot) == 0).mean())
    said_lots = spec.volume_multiplier == lot
    if said_lots and whole >= _UNIT_EVIDENCE:
        unit, configured = "units (shares)", f"lots (volume_multiplier {lot:g})"
    elif spec.volume_multiplier == 1 and whole <= 1 - _UNIT_EVIDENCE:
        unit, configured = f"lots of {lot}", "units (volume_multiplier 1)"
    else:
        return _volume_day_issues(bars, spec, lot, label)
    first = bars.loc[traded.index[0]]
    days = f"{bars['date'].min():%Y-%m-%d}..{bars['date'].max():%Y-%m-%d}"
    return [issue(label, first["symbol"], None, "volume", "volume_units",
                  f"{label}: {first['symbol']} ({days}): {whole:.0%} of {len(traded)} traded "
                  f"days have a volume that is a whole multiple of {lot}: the file counts "
                  f"{unit}, but the dataset configures {configured}")]


# Days in units among days in lots (a unit change in the middle of a file). On the real data
# (cn_etf_akshare_qfq_2020, cn_etf_morphkyan_raw) a whole multiple of the lot is at most 26x
# its previous 20 traded days' median (below 10x without an amount), and at most 3 come in a
# row; a day counted in units is about a lot's size (100x) above that median.
_JUMP_FACTOR = 20.0
_JUMP_WINDOW = 20
_WHOLE_RUN = 5


def _volume_day_issues(bars: pd.DataFrame, spec: PriceFiles, lot: int, label: str
                       ) -> list[dict[str, object]]:
    """``volume_units`` per day of a file in lots: a volume that is a whole multiple of the
    lot (one day in a hundred for a count of lots, every day for a count of units) and either
    ``_JUMP_FACTOR`` times the fund's median of its previous ``_JUMP_WINDOW`` traded days on
    a day without an amount (with one, ``amount_matches_prices`` sees the scale), or one of
    ``_WHOLE_RUN`` or more such days in a row."""
    if lot <= 1 or spec.volume_multiplier != lot:
        return []
    f = bars.loc[bars["volume"] > 0].sort_values(["symbol", "date"])
    raw = f["volume"] / spec.volume_multiplier
    whole = np.mod(raw, lot) == 0
    by = raw.groupby(f["symbol"], sort=False)
    median = by.transform(lambda v: v.shift().rolling(_JUMP_WINDOW, min_periods=5).median())
    jump = whole & f["amount"].isna() & (raw >= _JUMP_FACTOR * median)
    run = (~whole).astype(int).groupby(f["symbol"], sort=False).cumsum()
    run_length = whole.groupby([f["symbol"], run], sort=False).transform("sum")
    flagged = jump | (whole & (run_length >= _WHOLE_RUN))
    return [issue(label, f.at[i, "symbol"], f.at[i, "date"], "volume", "volume_units",
                  f"{label}: {f.at[i, 'symbol']} on {f.at[i, 'date']:%Y-%m-%d}: volume "
                  f"{raw[i]:g} is a whole multiple of {lot} and "
                  + (f"{raw[i] / median[i]:.0f}x the median of the previous {_JUMP_WINDOW} "
                     "traded days" if jump[i] else
                     f"one of {int(run_length[i])} such days in a row")
                  + f": counted in units (shares), where the dataset configures lots "
                  f"(volume_multiplier {spec.volume_multiplier:g})")
            for i in f.index[flagged]]


def _read_csv(path: str, spec: PriceFiles) -> pd.DataFrame:
    """All cells as text; ``header_lines`` lines before the data, the first naming the columns
    unless ``column_names`` does."""
    if spec.column_names is not None:
        return pd.read_csv(path, dtype=str, header=None, names=spec.column_names,
                           skiprows=spec.header_lines, keep_default_na=True)
    skip = list(range(1, spec.header_lines))
    return pd.read_csv(path, dtype=str, skiprows=skip, keep_default_na=True)


@lru_cache(maxsize=512)
def _read_factor_file(path: str, mtime: float, date_column: str, factor_column: str,
                      label: str, scheme_json: str
                      ) -> tuple[pd.DataFrame, list[dict[str, object]]]:
    """One fund's cumulative factors (memoised on path and mtime) and the rows that are not
    usable: unparsable or repeated dates (``factor_dates_valid``), factors that are not finite
    numbers > 0 (``factor_values_valid``). Bad rows are left out and reported, never guessed."""
    symbol = SymbolScheme.model_validate_json(scheme_json).parse(Path(path).name)
    try:
        table = pd.read_csv(path, dtype=str)
    except (OSError, ValueError) as exc:
        return _no_factors(), [issue(label, symbol, None, None, "factor_values_valid",
                                     f"{label}: unreadable: {exc}")]
    missing = [c for c in (date_column, factor_column) if c not in table.columns]
    if missing:
        return _no_factors(), [issue(label, symbol, None, ",".join(missing), "source_columns",
                                     f"{label}: missing column(s) {missing}")]
    dates = pd.to_datetime(table[date_column], errors="coerce")
    values = pd.to_numeric(table[factor_column], errors="coerce")
    found: list[dict[str, object]] = []
    bad_date = dates.isna() | dates.duplicated(keep=False)
    for idx in table.index[bad_date]:
        what = "unparsable" if pd.isna(dates.at[idx]) else "repeated"
        found.append(issue(label, symbol, None if pd.isna(dates.at[idx]) else dates.at[idx],
                           date_column, "factor_dates_valid",
                           f"{label}: {symbol}: row {idx}: {what} date "
                           f"{table.at[idx, date_column]!r}"))
    bad_value = ~bad_date & ~(np.isfinite(values) & (values > 0))
    for idx in table.index[bad_value]:
        found.append(issue(label, symbol, dates.at[idx], factor_column, "factor_values_valid",
                           f"{label}: {symbol} on {dates.at[idx]:%Y-%m-%d}: factor "
                           f"{table.at[idx, factor_column]!r} is not a number > 0"))
    keep = ~bad_date & ~bad_value
    out = pd.DataFrame({"date": dates[keep].astype("datetime64[ns]"), "symbol": symbol,
                        "factor": values[keep].astype(np.float64)})
    out["symbol"] = out["symbol"].astype("string")
    return out, found


def _no_factors() -> pd.DataFrame:
    return pd.DataFrame({"date": pd.Series(dtype="datetime64[ns]"),
                         "symbol": pd.Series(dtype="string"), "factor": pd.Series(dtype=float)})

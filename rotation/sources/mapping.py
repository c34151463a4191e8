"""Column mapping and unit normalisation from a source's own schema to the canonical bar frame.

Every source (files, AKShare) describes its columns and units in configuration; this module is
the one place that turns such a description plus a raw frame into canonical bars, recording each
structural problem (missing column, unparsable value, empty input) as an issue instead of
dropping or guessing.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from rotation.bars import BAR_COLUMNS, PRICE_COLUMNS, conform_bars, empty_bars, issue

NUMERIC_FIELDS = (*PRICE_COLUMNS, "volume", "amount")
SYMBOL_DIGITS = re.compile(r"(\d{6})")


class ColumnMap(BaseModel):
    """Canonical field → the source's column name. ``symbol`` is optional (else from file name)."""

    model_config = ConfigDict(extra="forbid")

    date: str
    open: str
    high: str
    low: str
    close: str
    volume: str
    amount: str | None = None
    symbol: str | None = None
    # A total-return (split- and dividend-adjusted) close beside the traded close: the
    # adjustment factor is adj_close / close, so research sees total returns and order sizing
    # the traded prices (yfinance's "Adj Close").
    adj_close: str | None = None

    def required(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class SourceSchema(BaseModel):
    """One or more alternative column maps (a dataset may mix schemas) plus units."""

    model_config = ConfigDict(extra="forbid")

    schemas: list[ColumnMap] = Field(min_length=1)
    volume_multiplier: float = Field(default=1.0, gt=0,
                                     description="units per volume unit, 100 for lots")
    amount_multiplier: float = Field(default=1.0, gt=0)
    date_format: str | None = None
    # Lines before the data (CSV): the first holds the column names unless ``column_names``
    # gives them (yfinance's multi-index CSV has 4 header lines).
    header_lines: int = Field(default=1, ge=0, le=20)
    column_names: list[str] | None = None

    def choose(self, columns: pd.Index) -> tuple[ColumnMap | None, list[str]]:
        """The first schema whose columns are all present; else the fewest-missing columns."""
        best_missing: list[str] | None = None
        for schema in self.schemas:
            missing = [c for c in schema.required().values() if c not in columns]
            if not missing:
                return schema, []
            if best_missing is None or len(missing) < len(best_missing):
                best_missing = missing
        return None, best_missing or []


def symbol_of(text: str) -> str | None:
    """The 6-digit code in ``510050.SH``, ``sh510050`` or ``510050_hfq_factor.csv``."""
    match = SYMBOL_DIGITS.search(str(text))
    return match.group(1) if match else None


def normalise(
    raw: pd.DataFrame, spec: SourceSchema, *, source: str, symbol: str | None,
    parse: Callable[[str], str | None] = symbol_of,
    suffix_problem: Callable[[str], str | None] | None = None,
) -> tuple[pd.DataFrame, list[dict[str, object]]]:
    """Canonical bars from one source frame, and the issues found on the way. ``parse`` reads
    a symbol from the frame's symbol column (the market's symbol scheme); ``suffix_problem``
    says why a written code's exchange suffix is wrong (``510050.SZ``), if it is."""
    issues: list[dict[str, object]] = []
    if raw.empty:
        issues.append(issue(source, symbol, None, None, "source_not_empty", f"{source}: no rows"))
        return empty_bars(), issues
    mapping, missing = spec.choose(raw.columns)
    if mapping is None:
        issues.append(
            issue(
                source,
                symbol,
                None,
                ",".join(missing),
                "source_columns",
                f"{source}: missing column(s) {missing}; found {list(raw.columns)}",
            )
        )
        return empty_bars(), issues

    cols = mapping.required()
    out = pd.DataFrame(index=raw.index)
    dates, found = _parse_dates(raw[cols["date"]], spec.date_format, source, symbol)
    issues.extend(found)
    out["date"] = dates
    if mapping.symbol is not None:
        out["symbol"] = raw[mapping.symbol].astype(str).map(parse)
        if suffix_problem is not None:
            issues.extend(_suffix_issues(raw[mapping.symbol], dates, source, suffix_problem))
        for idx in raw.index[out["symbol"].isna()]:
            issues.append(issue(
                source, None, dates.at[idx], mapping.symbol, "source_symbols",
                f"{source}: row {idx} ({_day(dates.at[idx])}): column {mapping.symbol!r} holds "
                f"{raw.at[idx, mapping.symbol]!r}, not a symbol of this market"))
    else:
        out["symbol"] = symbol

    for field in NUMERIC_FIELDS:
        column = cols.get(field)
        if column is None:
            out[field] = np.nan
            continue
        values = raw[column]
        numbers = pd.to_numeric(values, errors="coerce")
        # Unparsable: no number from a value that is not blank (looked at only where no number
        # came out; stripping every cell of a long file is most of a read's time).
        suspect = numbers.isna() & values.notna()
        bad = suspect & False
        if suspect.any():
            bad.loc[suspect] = values.loc[suspect].astype(str).str.strip() != ""
        for idx in raw.index[bad]:
            issues.append(
                issue(
                    source,
                    out.at[idx, "symbol"],
                    dates.at[idx],
                    column,
                    "source_values_numeric",
                    f"{source}: {out.at[idx, 'symbol']} on {_day(dates.at[idx])}: "
                    f"column {column!r} holds {values.at[idx]!r}, not a number",
                )
            )
        out[field] = numbers.astype("float64")
    out["volume"] = out["volume"] * spec.volume_multiplier
    out["amount"] = out["amount"] * spec.amount_multiplier
    out["adj_factor"] = 1.0 if mapping.adj_close is None else _factor_from_adj_close(
        raw[mapping.adj_close], out, source, issues)
    out["source"] = source
    out = out.loc[out["date"].notna(), list(BAR_COLUMNS)]
    return conform_bars(out), issues


def _suffix_issues(codes: pd.Series, dates: pd.Series, source: str,
                   problem_of: Callable[[str], str | None]) -> list[dict[str, object]]:
    """One ``symbol_exchange`` issue per written code whose suffix names the wrong exchange
    (at its first row)."""
    out: list[dict[str, object]] = []
    for code, rows in codes.astype(str).groupby(codes.astype(str), sort=True).groups.items():
        problem = problem_of(str(code))
        if problem is not None:
            first = rows[0]
            # File-level (no date): every partition the file feeds is blocked.
            out.append(issue(source, str(code), None, codes.name, "symbol_exchange",
                             f"{source}: row {first} ({_day(dates.at[first])}): {problem}; "
                             f"{len(rows)} row(s)"))
    return out


def _parse_dates(values: pd.Series, date_format: str | None, source: str, symbol: str | None
                 ) -> tuple[pd.Series, list[dict[str, object]]]:
    """Naive calendar dates of a date column (NaT where unusable) and its ``source_dates``
    issues: a date that carries a timezone (an instant, not the exchange's calendar date: never
    converted or stripped) and a date that does not parse. A column that is timezone-aware on
    every row is one issue, not one per row."""
    column = str(values.name)
    aware = _timezone_aware(values)
    plain = values.dt.tz_localize(None) if isinstance(values.dtype, pd.DatetimeTZDtype) else values
    dates = pd.to_datetime(plain.where(~aware), format=date_format, errors="coerce")
    if isinstance(dates.dtype, pd.DatetimeTZDtype):  # an offset the text check did not see
        aware |= dates.notna()
        dates = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    who = f"{source}: {symbol}" if symbol else source
    if len(values) > 1 and aware.all():
        messages = [f"{who}: column {column!r} carries a timezone on all {len(values)} rows "
                    f"(first {values.iloc[0]!r}, last {values.iloc[-1]!r}); dates must be the "
                    "exchange's calendar dates"]
    else:
        messages = [f"{who}: row {i}: date {values.at[i]!r} carries a timezone; dates must be "
                    "the exchange's calendar dates" for i in values.index[aware]]
    messages += [f"{who}: row {i}: unparsable date {values.at[i]!r}"
                 for i in values.index[dates.isna() & ~aware]]
    return dates, [issue(source, symbol, None, column, "source_dates", m) for m in messages]


# A time followed by a zone: Z, an offset (+08:00, +0800, +08, UTC+8) or a name (GMT, CST).
_TZ_SUFFIX = (r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*"
              r"(?:Z|(?:UTC|GMT)?[+-]\d{1,2}(?::?\d{2})?|(?![AaPp][Mm]$)[A-Za-z]{2,5})$")


def _timezone_aware(values: pd.Series) -> pd.Series:
    """Rows whose date carries a timezone (a tz-aware column, or text with an offset)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return pd.Series(True, index=values.index)
    if values.dtype != object:
        return pd.Series(False, index=values.index)
    text = values.astype(str)
    long = text.str.len() > 10  # a bare date cannot carry an offset
    out = pd.Series(False, index=values.index)
    out.loc[long] = text.loc[long].str.contains(_TZ_SUFFIX, regex=True)
    stamped = values.map(lambda v: getattr(v, "tzinfo", None) is not None)
    return out | stamped.astype(bool)


def _factor_from_adj_close(adj_close: pd.Series, out: pd.DataFrame, source: str,
                           issues: list[dict[str, object]]) -> pd.Series:
    """adj_close / close; a row where that is not a positive number is an issue (factor NaN,
    so the bar fails the factor rule rather than trading on a guessed factor)."""
    factor = pd.to_numeric(adj_close, errors="coerce") / out["close"]
    bad = ~(factor > 0) & out["close"].notna()
    for idx in out.index[bad]:
        issues.append(issue(
            source, out.at[idx, "symbol"], out.at[idx, "date"], adj_close.name, "source_adj_close",
            f"{source}: {out.at[idx, 'symbol']} on {_day(out.at[idx, 'date'])}: adjusted close "
            f"{adj_close.at[idx]!r} against close {out.at[idx, 'close']!r} gives no positive "
            "adjustment factor"))
    return factor.where(~bad).astype("float64")


def _day(value: object) -> str:
    return "unknown date" if pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%d")

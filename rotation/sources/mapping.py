"""Column mapping and unit normalisation from a source's own schema to the canonical bar frame.

Every source (files, AKShare) describes its columns and units in configuration; this module is
the one place that turns such a description plus a raw frame into canonical bars, recording each
structural problem (missing column, unparsable value, empty input) as an issue instead of
dropping or guessing.
"""

from __future__ import annotations

import re

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
    raw: pd.DataFrame, spec: SourceSchema, *, source: str, symbol: str | None
) -> tuple[pd.DataFrame, list[dict[str, object]]]:
    """Canonical bars from one source frame, and the issues found on the way."""
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
    dates = pd.to_datetime(raw[cols["date"]], format=spec.date_format, errors="coerce")
    for idx in raw.index[dates.isna()]:
        issues.append(
            issue(
                source,
                symbol,
                None,
                cols["date"],
                "source_dates",
                f"{source}: row {idx}: unparsable date {raw.at[idx, cols['date']]!r}",
            )
        )
    out["date"] = dates
    if mapping.symbol is not None:
        out["symbol"] = raw[mapping.symbol].astype(str).map(symbol_of)
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
    out["adj_factor"] = 1.0
    out["source"] = source
    out = out.loc[out["date"].notna(), list(BAR_COLUMNS)]
    return conform_bars(out), issues


def _day(value: object) -> str:
    return "unknown date" if pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%d")

"""A directory of CSV or Parquet files described by a dataset configuration (YAML).

Nothing here is specific to one dataset: file globs, column maps, units, adjustment factors, a
split table, the universe and price limits all come from the dataset's YAML, so the real
datasets in ``shared/data`` are read as they are.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
from rotation.sources.mapping import SourceSchema, normalise, symbol_of


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


def _default_prefix_limits() -> dict[str, float | None]:
    return {"588": 0.20}  # STAR-market funds move ±20 %


class PriceLimits(BaseModel):
    """Daily price limit per fund: by symbol, then by code prefix, then by asset class, else
    the default. ``null`` means no limit (cross-border funds)."""

    model_config = ConfigDict(extra="forbid")

    default: float | None = 0.10
    by_prefix: dict[str, float | None] = Field(default_factory=_default_prefix_limits)
    by_asset_class_prefix: dict[str, float | None] = Field(default_factory=dict)
    by_symbol: dict[str, float | None] = Field(default_factory=dict)

    def limit_for(self, symbol: str, asset_class: str = "") -> float | None:
        if symbol in self.by_symbol:
            return self.by_symbol[symbol]
        for prefix, limit in self.by_prefix.items():
            if symbol.startswith(prefix):
                return limit
        for prefix, limit in self.by_asset_class_prefix.items():
            if asset_class.startswith(prefix):
                return limit
        return self.default


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
    calendar: str = "XSHG"
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
    price_limits: PriceLimits = Field(default_factory=PriceLimits)
    accepted_anomalies: list[AcceptedAnomaly] = Field(default_factory=list)


class DatasetConfigError(ValueError):
    pass


def load_dataset_spec(path: str | os.PathLike[str]) -> DatasetSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetConfigError(f"dataset config {path}: cannot read: {exc}") from exc
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise DatasetConfigError(f"dataset config {path}: {problems}") from exc


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
            table = pd.read_csv(self.root / u.symbols_file, dtype=str).fillna("")
            for rec in table.to_dict("records"):
                rows.append(
                    {
                        "symbol": symbol_of(rec[u.symbol_column]) or rec[u.symbol_column],
                        "name": rec.get(u.name_column or "", ""),
                        "exchange": rec.get(u.exchange_column or "", ""),
                        "asset_class": rec.get(u.asset_class_column or "", ""),
                    }
                )
        elif u.symbols:
            rows = [{"symbol": s, "name": "", "exchange": "", "asset_class": ""} for s in u.symbols]
        else:
            rows = [
                {"symbol": symbol_of(Path(p).name) or "", "name": "", "exchange": "",
                 "asset_class": ""}
                for p in self._price_paths()
            ]
        if u.symbols and u.symbols_file:
            rows = [r for r in rows if r["symbol"] in set(u.symbols)]
        excluded = set(u.exclude)
        return [
            Instrument(
                symbol=r["symbol"],
                name=r["name"],
                exchange=r["exchange"],
                asset_class=r["asset_class"],
                price_limit=self.spec.price_limits.limit_for(r["symbol"], r["asset_class"]),
            )
            for r in rows
            if r["symbol"] and r["symbol"] not in excluded
        ]

    # -- bars -------------------------------------------------------------------------------
    def load(self, start: object = None, end: object = None) -> LoadResult:
        """Bars with ``start <= date <= end`` for every price file, factors applied."""
        excluded = set(self.spec.universe.exclude)
        frames: list[pd.DataFrame] = []
        issue_rows: list[dict[str, object]] = []
        sources: list[str] = []
        paths = self._price_paths()
        if not paths:
            issue_rows.append(
                issue(str(self.root), None, None, None, "source_not_empty",
                      f"{self.root}: no file matches {self.spec.prices.glob!r}")
            )
        for path in paths:
            symbol = symbol_of(Path(path).name)
            if symbol in excluded:
                continue
            bars, found = _read_price_file(
                path, _mtime(path), self.spec.prices.model_dump_json(), self._rel(path)
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
        bars = self._apply_factors(bars)
        issues = pd.DataFrame(issue_rows) if issue_rows else empty_issues()
        # Cell-level issues belong to their date's partition; file-level ones (no date) to all.
        when = pd.to_datetime(issues["date"])
        keep = when.isna()
        keep |= (when >= lo) if lo is not None else True
        if hi is not None:
            keep &= when.isna() | (when <= hi)
        return LoadResult(bars=conform_bars(bars), issues=issues.loc[keep].reset_index(drop=True),
                          sources=sources)

    def _apply_factors(self, bars: pd.DataFrame) -> pd.DataFrame:
        if bars.empty:
            return bars
        factor = pd.Series(1.0, index=bars.index)
        covered_until: dict[str, pd.Timestamp] = {}
        if self.spec.adjustment_factors is not None:
            table = self._factor_table()
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
                factor = merged["factor"].reindex(bars.index).fillna(1.0)
        if self.spec.splits is not None:
            factor = factor * self._split_factor(bars, covered_until)
        out = bars.copy()
        out["adj_factor"] = factor.to_numpy()
        return out

    def _split_factor(
        self, bars: pd.DataFrame, covered_until: dict[str, pd.Timestamp]
    ) -> pd.Series:
        """Split events not already inside a factor series (no file, or after its last date)."""
        spec = self.spec.splits
        assert spec is not None
        cal = get_calendar(self.spec.calendar, self.spec.calendar_start)
        events = pd.read_csv(self.root / spec.path, dtype={spec.symbol_column: str})
        out = pd.Series(1.0, index=bars.index)
        for rec in events.to_dict("records"):
            symbol = symbol_of(rec[spec.symbol_column])
            day = pd.Timestamp(rec[spec.date_column])
            ex = cal.offset(day, 1) if spec.effective == "next_session" else day
            if symbol in covered_until and ex <= covered_until[symbol]:
                continue
            ratio = float(rec[spec.ratio_column])
            mask = (bars["symbol"] == symbol) & (bars["date"] >= ex)
            out.loc[mask] *= ratio
        return out

    def _factor_table(self) -> pd.DataFrame:
        spec = self.spec.adjustment_factors
        assert spec is not None
        frames = []
        for path in sorted(glob.glob(str(self.root / spec.glob))):
            frames.append(_read_factor_file(path, _mtime(path), spec.date_column,
                                            spec.factor_column))
        if not frames:
            return pd.DataFrame({"date": [], "symbol": [], "factor": []})
        return pd.concat(frames, ignore_index=True)

    def _price_paths(self) -> list[str]:
        return sorted(glob.glob(str(self.root / self.spec.prices.glob)))

    def _rel(self, path: str) -> str:
        return f"{self.spec.name}/{Path(path).relative_to(self.root).as_posix()}"


def _mtime(path: str) -> float:
    return os.stat(path).st_mtime_ns


@lru_cache(maxsize=512)
def _read_price_file(
    path: str, mtime: float, spec_json: str, label: str
) -> tuple[pd.DataFrame, list[dict[str, object]]]:
    """Parse one price file (memoised on path and mtime: a backfill reads each file once)."""
    spec = PriceFiles.model_validate_json(spec_json)
    symbol = symbol_of(Path(path).name)
    try:
        if spec.format == "parquet":
            raw = pd.read_parquet(path)
        else:
            raw = pd.read_csv(path, dtype=str, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raw = pd.DataFrame()
    except (OSError, ValueError) as exc:
        return empty_bars(), [issue(label, symbol, None, None, "source_columns",
                                    f"{label}: unreadable: {exc}")]
    return normalise(raw, spec, source=label, symbol=symbol)


@lru_cache(maxsize=512)
def _read_factor_file(path: str, mtime: float, date_column: str, factor_column: str
                      ) -> pd.DataFrame:
    table = pd.read_csv(path)
    out = pd.DataFrame(
        {
            "date": pd.to_datetime(table[date_column]).astype("datetime64[ns]"),
            "symbol": symbol_of(Path(path).name),
            "factor": pd.to_numeric(table[factor_column], errors="coerce").astype(np.float64),
        }
    )
    out["symbol"] = out["symbol"].astype("string")
    return out.dropna(subset=["factor"])

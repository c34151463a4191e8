"""The canonical bar frame every market-data source produces.

One row per (date, symbol). Units are normalised at the source boundary: prices in the quote
currency per unit, ``volume`` in units (shares), ``amount`` in the quote currency (NaN where the
source has none), ``adj_factor`` the cumulative backward-adjustment factor (adjusted price =
raw price × factor; 1.0 where the source has no adjustment data), ``source`` the file or feed
the row came from, so every quality failure can name it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

# What a source's prices are: as traded, or adjusted forward (qfq) / backward (hfq).
PriceBasis = Literal["raw", "forward_adjusted", "backward_adjusted"]
PRICE_COLUMNS = ("open", "high", "low", "close")
BAR_COLUMNS = ("date", "symbol", *PRICE_COLUMNS, "volume", "amount", "adj_factor", "source")
ISSUE_COLUMNS = ("source", "symbol", "date", "column", "rule", "message")

BAR_DTYPES: dict[str, str] = {
    "symbol": "string",
    "open": "float64",
    "high": "float64",
    "low": "float64",
    "close": "float64",
    "volume": "float64",
    "amount": "float64",
    "adj_factor": "float64",
    "source": "string",
}


def empty_bars() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=BAR_DTYPES.get(c, "object")) for c in BAR_COLUMNS})
    frame["date"] = pd.Series(dtype="datetime64[ns]")
    return frame


def empty_issues() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in ISSUE_COLUMNS})


def traded_amount(bars: pd.DataFrame) -> pd.Series:
    """Value traded per bar in the quote currency: ``amount`` where the source has it, else
    volume × the raw close (some sources, e.g. akshare's qfq set, carry no amount; an adjusted
    close would misstate the value of old bars)."""
    price = bars["raw_close"] if "raw_close" in bars else bars["close"]
    return bars["amount"].fillna(bars["volume"] * price)


def conform_bars(frame: pd.DataFrame) -> pd.DataFrame:
    """Order columns, set dtypes, sort by (date, symbol). Missing optional columns become NaN."""
    out = frame.copy()
    if "amount" not in out:
        out["amount"] = float("nan")
    if "adj_factor" not in out:
        out["adj_factor"] = 1.0
    dates = pd.to_datetime(out["date"])
    if isinstance(dates.dtype, pd.DatetimeTZDtype):
        # Sources report such rows (``source_dates``) and drop them: an instant is not a date.
        raise ValueError("conform_bars: dates carry a timezone; a source must report and drop "
                         "them (rotation.sources.mapping.normalise), never strip it")
    out["date"] = dates.dt.normalize().astype("datetime64[ns]")
    out = out.astype(BAR_DTYPES)
    return out.loc[:, list(BAR_COLUMNS)].sort_values(["date", "symbol"], kind="stable").reset_index(
        drop=True
    )


@dataclass
class LoadResult:
    """Bars plus the structural problems met while reading them (kept, never dropped silently)."""

    bars: pd.DataFrame
    issues: pd.DataFrame = field(default_factory=empty_issues)
    # Sources that were read, for lineage metadata (file paths or feed names).
    sources: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Instrument:
    symbol: str
    name: str = ""
    exchange: str = ""
    asset_class: str = ""
    # Daily price limit as a fraction (0.10, 0.20); None for funds without a daily limit.
    price_limit: float | None = 0.10
    # The fund's class in its market profile (rotation.market) and that class's rules.
    instrument_class: str = "equity"
    settlement: str = "T+1"          # T+0: units bought in a session may be sold in it
    sale_cash_same_day: bool = True  # sale proceeds may pay for buys in the same session
    # Longest run of unchanged closes the class allows (None: the quality configuration's).
    max_stale_days: int | None = None

    @property
    def same_session_sell(self) -> bool:
        return self.settlement == "T+0"


def issue(
    source: str, symbol: str | None, date: object, column: str | None, rule: str, message: str
) -> dict[str, object]:
    return {
        "source": source,
        "symbol": symbol,
        "date": None if date is None else pd.Timestamp(date),
        "column": column,
        "rule": rule,
        "message": message,
    }

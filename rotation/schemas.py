"""pandera models: the structural contract of every stored frame (columns, dtypes, keys).

Data-quality rules (SPEC §2) are the Great Expectations suite in :mod:`rotation.quality`; these
models guard the shape of what each stage hands to the next.
"""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series

# Any market's symbol (6-digit A-share codes, US tickers, HK codes); whether it belongs to
# the dataset's market and universe is the known_symbols quality rule's business.
SYMBOL_PATTERN = r"^[A-Z0-9][A-Z0-9.\-]{0,11}$"


class RawBars(pa.DataFrameModel):
    """Daily bars as read from the source: raw prices, units normalised."""

    date: Series[pa.DateTime] = pa.Field(nullable=False, description="session date")
    symbol: Series[pa.String] = pa.Field(str_matches=SYMBOL_PATTERN, description="6-digit code")
    open: Series[float] = pa.Field(gt=0, description="raw open, market currency")
    high: Series[float] = pa.Field(gt=0, description="raw high, market currency")
    low: Series[float] = pa.Field(gt=0, description="raw low, market currency")
    close: Series[float] = pa.Field(gt=0, description="raw close, market currency")
    volume: Series[float] = pa.Field(ge=0, description="units traded")
    amount: Series[float] = pa.Field(nullable=True, ge=0, description="value traded, currency")
    adj_factor: Series[float] = pa.Field(gt=0, description="cumulative backward factor")
    source: Series[pa.String] = pa.Field(description="file or feed the row came from")

    class Config:
        unique = ("date", "symbol")
        strict = True
        ordered = True


class AdjustedBars(pa.DataFrameModel):
    """Backward-adjusted bars for research, with the raw prices kept for order sizing."""

    date: Series[pa.DateTime] = pa.Field(nullable=False)
    symbol: Series[pa.String] = pa.Field(str_matches=SYMBOL_PATTERN)
    open: Series[float] = pa.Field(gt=0)
    high: Series[float] = pa.Field(gt=0)
    low: Series[float] = pa.Field(gt=0)
    close: Series[float] = pa.Field(gt=0)
    volume: Series[float] = pa.Field(ge=0, description="volume in adjusted units")
    amount: Series[float] = pa.Field(nullable=True, ge=0)
    turnover: Series[float] = pa.Field(ge=0, description="value traded (amount or volume×close)")
    raw_open: Series[float] = pa.Field(gt=0, description="raw open: order sizing")
    raw_close: Series[float] = pa.Field(gt=0, description="raw close: order sizing")
    adj_factor: Series[float] = pa.Field(gt=0)

    class Config:
        unique = ("date", "symbol")
        strict = True
        ordered = True


class CrossSections(pa.DataFrameModel):
    """Per-date panels of eligible funds: base fields and their processed (_std) versions."""

    date: Series[pa.DateTime] = pa.Field(nullable=False)
    symbol: Series[pa.String] = pa.Field(str_matches=SYMBOL_PATTERN)
    ret_1d: Series[float] = pa.Field(nullable=True)
    ret_1d_std: Series[float] = pa.Field(nullable=True)
    ret_5d: Series[float] = pa.Field(nullable=True)
    ret_5d_std: Series[float] = pa.Field(nullable=True)
    ret_20d: Series[float] = pa.Field(nullable=True)
    ret_20d_std: Series[float] = pa.Field(nullable=True)
    vol_20d: Series[float] = pa.Field(nullable=True, ge=0)
    vol_20d_std: Series[float] = pa.Field(nullable=True)
    log_turnover: Series[float] = pa.Field(nullable=True)
    log_turnover_std: Series[float] = pa.Field(nullable=True)
    close: Series[float] = pa.Field(gt=0, description="adjusted close, ffilled <= max_stale_days")

    class Config:
        unique = ("date", "symbol")
        strict = True

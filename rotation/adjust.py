"""Adjusted bars: research uses adjusted prices, order sizing keeps the raw ones."""

from __future__ import annotations

import pandas as pd

from rotation.bars import PRICE_COLUMNS

ADJUSTED_COLUMNS = ("date", "symbol", "open", "high", "low", "close", "volume", "amount",
                    "turnover", "raw_open", "raw_close", "adj_factor")


def adjust_bars(raw: pd.DataFrame) -> pd.DataFrame:
    """Backward adjustment: adjusted price = raw price × cumulative factor.

    Backward (hfq) factors only change at events on or before the bar's date, so the adjusted
    series of a date never depends on later data (no look-ahead, unlike forward adjustment).
    ``turnover`` is the traded value: ``amount`` where the source has it, else volume × close.
    """
    out = pd.DataFrame({"date": raw["date"], "symbol": raw["symbol"]})
    for col in PRICE_COLUMNS:
        out[col] = raw[col] * raw["adj_factor"]
    # Volume in adjusted units keeps volume × price invariant across splits.
    out["volume"] = raw["volume"] / raw["adj_factor"]
    out["amount"] = raw["amount"]
    out["turnover"] = raw["amount"].fillna(raw["volume"] * raw["close"])
    out["raw_open"] = raw["open"]
    out["raw_close"] = raw["close"]
    out["adj_factor"] = raw["adj_factor"]
    return out.loc[:, list(ADJUSTED_COLUMNS)].reset_index(drop=True)

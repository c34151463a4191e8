"""Metadata a researcher sees in the UI: rows, date range, funds, missing data, a preview."""

from __future__ import annotations

import hashlib

import dagster as dg
import pandas as pd

PREVIEW_ROWS = 10


def frame_metadata(frame: pd.DataFrame, **extra: object) -> dict[str, object]:
    meta: dict[str, object] = {"dagster/row_count": dg.MetadataValue.int(len(frame))}
    if "date" in frame and len(frame):
        meta["first_date"] = dg.MetadataValue.text(str(frame["date"].min().date()))
        meta["last_date"] = dg.MetadataValue.text(str(frame["date"].max().date()))
        meta["sessions"] = dg.MetadataValue.int(int(frame["date"].nunique()))
    if "symbol" in frame:
        meta["funds_covered"] = dg.MetadataValue.int(int(frame["symbol"].nunique()))
    missing = frame.isna().sum()
    missing = missing[missing > 0]
    meta["missing_values"] = dg.MetadataValue.json({k: int(v) for k, v in missing.items()})
    meta["preview"] = dg.MetadataValue.md(markdown(frame.tail(PREVIEW_ROWS)))
    meta.update({k: _value(v) for k, v in extra.items()})
    return meta


def data_fingerprint(frame: pd.DataFrame) -> str:
    """A short content hash of a frame (the data version tagged on MLflow runs)."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def markdown(frame: pd.DataFrame, limit: int = 50) -> str:
    if frame.empty:
        return "_no rows_"
    shown = frame.head(limit).copy()
    for col in shown.columns:
        if pd.api.types.is_datetime64_any_dtype(shown[col]):
            shown[col] = shown[col].dt.strftime("%Y-%m-%d")
    text = shown.to_markdown(index=False, floatfmt=".6g")
    if len(frame) > limit:
        text += f"\n\n… {len(frame) - limit} more row(s)"
    return text


def _value(value: object) -> object:
    if isinstance(value, dg.MetadataValue):
        return value
    if isinstance(value, bool | int):
        return dg.MetadataValue.int(int(value))
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, dict | list):
        return dg.MetadataValue.json(value)
    return dg.MetadataValue.text(str(value))

"""Metadata a researcher sees in the UI: rows, date range, funds, missing data, a preview.

Everything is Dagster's native metadata: previews and result tables are
``MetadataValue.table`` with a ``TableSchema`` (shown inline, not behind "[Show Markdown]"),
every frame carries ``dagster/column_schema`` (a range of partitions: its newest), and each
metric is its own float key whose name carries the unit (``total_return_pct``), so the asset's
Plots tab charts it across materialisations.

A partitioned asset materialised over a range (a single-run backfill) describes each partition
by itself (:func:`partition_metadata`: its rows, funds and missing values, or that it has no
session); the run's newest partition adds a preview of its rows and the figures of the whole
run, keyed ``run_…`` (they say so).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import dagster as dg
import numpy as np
import pandas as pd

from orchestration.dagster_private import add_partitions_metadata

PREVIEW_ROWS = 10
# Figures of a partitioned asset's whole run (not of the partition shown) carry this prefix.
RUN_PREFIX = "run_"
RUN_SCOPE_KEY = "run_scope"


def frame_metadata(frame: pd.DataFrame, *, preview: bool = True,
                   schema: dg.TableSchema | None = None, **extra: object) -> dict[str, object]:
    """Rows, dates, funds, missing values, a preview and the column schema of ``frame``.
    ``preview=False`` leaves the preview to the caller; ``schema``: the frame's column schema
    when the caller already has it (every partition of a run's frame shares it)."""
    schema = schema or column_schema(frame)
    dated = "date" in frame and len(frame)
    meta = _figures(
        len(frame),
        (frame["date"].min(), frame["date"].max(), frame["date"].nunique()) if dated else None,
        frame["symbol"].nunique() if "symbol" in frame else None,
        frame.isna().sum().items())
    if preview:
        meta["preview"] = table(frame.tail(PREVIEW_ROWS), schema=schema)
    meta["dagster/column_schema"] = dg.MetadataValue.table_schema(schema)
    meta.update({k: _value(v) for k, v in extra.items()})
    return meta


def _figures(rows: int, dates: tuple[pd.Timestamp, pd.Timestamp, int] | None,
             funds: int | None, missing: Iterable[tuple[object, int]]) -> dict[str, object]:
    """The figures of a frame (or of one partition's rows): rows, first and last date and
    sessions, funds, and the missing values by column (those with any)."""
    meta: dict[str, object] = {"dagster/row_count": dg.MetadataValue.int(int(rows))}
    if dates is not None:
        first, last, sessions = dates
        meta["first_date"] = dg.MetadataValue.text(str(first.date()))
        meta["last_date"] = dg.MetadataValue.text(str(last.date()))
        meta["sessions"] = dg.MetadataValue.int(int(sessions))
    if funds is not None:
        meta["funds_covered"] = dg.MetadataValue.int(int(funds))
    gaps = {str(column): int(count) for column, count in missing if count > 0}
    meta["missing_values"] = dg.MetadataValue.int(sum(gaps.values()))
    if gaps:
        meta["missing_by_column"] = dg.MetadataValue.json(gaps)
    return meta


# -- tables -------------------------------------------------------------------------------------

def _column_type(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "date"
    return "string"


def column_schema(frame: pd.DataFrame, descriptions: Mapping[str, str] | None = None
                  ) -> dg.TableSchema:
    """The frame's columns and their types (and descriptions where given)."""
    descriptions = descriptions or {}
    return dg.TableSchema(columns=[
        dg.TableColumn(str(name), _column_type(frame[name]),
                       description=descriptions.get(str(name)))
        for name in frame.columns])


def _cell(value: object) -> str | int | float | bool | None:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        if not math.isfinite(number):
            return None
        # Amounts and volumes to the cent; prices, returns and statistics to 6 decimals.
        return round(number, 2) if abs(number) >= 1e4 else round(number, 6)
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d") if value == value.normalize() else value.isoformat()
    if isinstance(value, list | tuple | set):
        return ", ".join(str(v) for v in value)
    return str(value)


def table(frame: pd.DataFrame, limit: int = 50,
          descriptions: Mapping[str, str] | None = None,
          schema: dg.TableSchema | None = None) -> dg.TableMetadataValue:
    """The first ``limit`` rows of ``frame`` as a native Dagster table (shown inline in the UI);
    dates as YYYY-MM-DD, floats to 6 decimals, missing values empty. ``schema``: the frame's
    column schema when the caller already has it."""
    shown = frame.head(limit)
    names = [str(k) for k in shown.columns]
    # Column lists rather than to_dict("records"): a backfill builds thousands of previews.
    columns = [shown[c].tolist() for c in shown.columns]
    records = [dg.TableRecord({n: _cell(v) for n, v in zip(names, row, strict=True)})
               for row in zip(*columns, strict=True)]
    return dg.MetadataValue.table(records, schema=schema or column_schema(frame, descriptions))


# -- metrics ------------------------------------------------------------------------------------

# Metric name → (unit suffix of the key, scale): fractions are shown in percent.
_PERCENT = ("return", "cagr", "drawdown", "volatility", "exposure", "turnover", "win_rate",
            "tracking_error", "invested", "weight")
_COUNTS = ("duration", "days", "sessions", "orders", "trades", "count")


def metric_key(name: str) -> tuple[str, float]:
    """The metadata key of a metric with its unit, and the factor its value is multiplied by:
    fractions become ``…_pct`` (×100), counts ``…_sessions``/``…`` as they are, ratios bare."""
    lower = name.lower()
    if "duration" in lower:
        return f"{name}_sessions", 1.0
    if any(c in lower for c in _COUNTS):
        return name, 1.0
    if any(p in lower for p in _PERCENT):
        return f"{name}_pct", 100.0
    return name, 1.0


def metric_metadata(metrics: Mapping[str, object], prefix: str = "",
                    digits: int = 2) -> dict[str, dg.MetadataValue]:
    """One float key per metric, in its unit (percent for fractions), rounded for reading; the
    Plots tab of the asset charts each key across materialisations. Non-finite values are left
    out (a chart point of NaN says nothing)."""
    out: dict[str, dg.MetadataValue] = {}
    for name, value in metrics.items():
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if not math.isfinite(number):
            continue
        key, scale = metric_key(name)
        out[f"{prefix}{key}"] = dg.MetadataValue.float(round(number * scale, digits + 2
                                                             if scale == 1.0 else digits))
    return out


def metric_label(name: str, value: object) -> str:
    """A metric as text in the unit of its metadata key (``12.34 %``, ``1.23``)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return "–"
    _, scale = metric_key(name)
    return f"{number * scale:.2f} %" if scale != 1.0 else f"{number:.4g}"


# -- partitions ---------------------------------------------------------------------------------

def partition_positions(frame: pd.DataFrame, keys: Sequence[str]) -> np.ndarray:
    """The index in ``keys`` (sorted weekday keys) of each row's partition: the last key on or
    before its date (a Saturday bar is in Friday's window); -1 before the first key."""
    starts = pd.DatetimeIndex(pd.to_datetime(list(keys)))
    days = pd.DatetimeIndex(pd.to_datetime(frame["date"])).normalize()
    return starts.searchsorted(days, side="right") - 1


def rows_by_partition(frame: pd.DataFrame, keys: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The rows of each partition of ``keys`` (sorted weekday keys): a row belongs to the last
    key on or before its date (a Saturday bar is in Friday's window)."""
    if "date" not in frame or frame.empty:
        return {k: frame.iloc[0:0] for k in keys}
    groups = {int(p): part for p, part in frame.groupby(partition_positions(frame, keys),
                                                        sort=False)}
    return {k: groups.get(i, frame.iloc[0:0]) for i, k in enumerate(keys)}


def partitions_frame_metadata(frame: pd.DataFrame, keys: Sequence[str],
                              schema: dg.TableSchema) -> dict[str, dict[str, object]]:
    """``frame_metadata(part, preview=False, schema=schema)`` of each partition's rows, computed
    for all partitions at once (grouped once, not a frame per partition: a history has
    thousands)."""
    if "date" not in frame or frame.empty:
        return {k: frame_metadata(frame.iloc[0:0], preview=False, schema=schema) for k in keys}
    position = partition_positions(frame, keys)
    grouped = frame.groupby(position, sort=False)
    rows = grouped.size()
    dates = grouped["date"].agg(["min", "max", "nunique"])
    funds = grouped["symbol"].nunique() if "symbol" in frame else None
    missing = frame.isna().groupby(position, sort=False).sum()
    schema_value = dg.MetadataValue.table_schema(schema)
    out: dict[str, dict[str, object]] = {}
    for i, key in enumerate(keys):
        if i not in rows.index:
            out[key] = frame_metadata(frame.iloc[0:0], preview=False, schema=schema)
            continue
        meta = _figures(rows[i], (dates.at[i, "min"], dates.at[i, "max"], dates.at[i, "nunique"]),
                        None if funds is None else funds[i], missing.loc[i].items())
        meta["dagster/column_schema"] = schema_value
        out[key] = meta
    return out


def partition_previews(frame: pd.DataFrame, keys: Sequence[str], sort: Sequence[str],
                       schema: dg.TableSchema) -> dict[str, dg.TableMetadataValue]:
    """The first ``PREVIEW_ROWS`` rows of each partition that has rows, ordered by ``sort``
    (sorted once for the whole frame)."""
    if "date" not in frame or frame.empty:
        return {}
    by = [c for c in sort if c in frame.columns] or list(frame.columns)[:1]
    position = pd.Series(partition_positions(frame, keys), index=frame.index)
    order = frame.assign(_partition=position).sort_values(["_partition", *by], kind="stable")
    heads = order.groupby("_partition", sort=False).head(PREVIEW_ROWS)
    return {keys[int(p)]: table(part.drop(columns="_partition"), schema=schema)
            for p, part in heads.groupby("_partition", sort=False) if 0 <= p < len(keys)}


def partition_metadata(
    context: dg.AssetExecutionContext,
    frame: pd.DataFrame,
    *,
    no_session: Callable[[str], str | None],
    sort: Sequence[str] = ("symbol",),
    run: Mapping[str, object] | None = None,
    per_partition: Callable[[str, pd.DataFrame], Mapping[str, object]] | None = None,
) -> dict[str, object]:
    """Per-partition metadata of a partitioned asset (``context.add_asset_metadata`` with each
    partition key); returns the (empty) metadata for the step's output, so nothing of the run
    is shown without its label.

    Each partition shows its own rows (``dagster/row_count``), date, funds and missing values;
    a partition without a session says so (``no_session(key)`` returns the sentence, or None
    for a session) instead of showing rows of other days. The run's newest partition — the
    only one of the evening's run, the asset's latest materialisation after a backfill — also
    carries the whole run's figures keyed ``run_…`` and the column schema; its newest partition
    with rows (the same one unless a range ends on a holiday) a preview of its rows and the
    schema; the other partitions of a range name them (``run_figures``). A preview and a schema
    in every one of a history's thousands of events were most of a backfill's bookkeeping:
    Dagster serialises each event several times (issue 20)."""
    keys = list(context.partition_keys)
    # Every partition is a slice of ``frame``: one schema for all.
    schema = column_schema(frame)
    figures = partitions_frame_metadata(frame, keys, schema)
    newest = keys[-1]
    shown = next((k for k in reversed(keys) if "last_date" in figures[k]), newest)
    latest = (frame.loc[partition_positions(frame, keys) >= keys.index(shown)]
              if "date" in frame else frame)
    previews = partition_previews(latest, [shown], sort, schema)
    parts = rows_by_partition(frame, keys) if per_partition is not None else {}
    where = (f"on {newest}, the newest of this run's {len(keys)} partitions: the run's figures "
             f"(run_*); on {shown}: a preview of its rows and the column schema")
    described: dict[str, dict[str, object]] = {}
    for key in keys:
        reason = no_session(key)
        meta = figures[key]
        meta["partition"] = dg.MetadataValue.text(key)
        if "last_date" in meta:
            meta["session"] = meta["last_date"]
        elif reason is not None:
            meta["session"] = dg.MetadataValue.text(reason)
        if per_partition is not None:
            meta.update({k: _value(v) for k, v in per_partition(key, parts[key]).items()})
        if key == shown:
            meta["preview"] = (previews[key] if key in previews
                               else dg.MetadataValue.text(reason or "no rows"))
        elif key != newest:   # the latest materialisation keeps the schema
            del meta["dagster/column_schema"]
        if key == newest:
            # The partition's own figures first, then the run's (as the UI lists them).
            meta |= run_metadata(frame, keys, **(run or {}))
        if len(keys) > 1:
            meta["run_figures"] = dg.MetadataValue.text(where)
        described[key] = meta
    add_partitions_metadata(context, described)
    return {}


def run_metadata(frame: pd.DataFrame, keys: Sequence[str], **extra: object
                 ) -> dict[str, object]:
    """The figures of a whole run over ``keys``, each keyed ``run_…``."""
    scope = (f"run_* figures cover this run's {len(keys)} partition(s) {keys[0]}..{keys[-1]}, "
             "not only the partition shown" if keys else "run_* figures cover this run")
    meta: dict[str, object] = {RUN_SCOPE_KEY: dg.MetadataValue.text(scope),
                               f"{RUN_PREFIX}partitions": dg.MetadataValue.int(len(keys)),
                               f"{RUN_PREFIX}row_count": dg.MetadataValue.int(len(frame))}
    if "date" in frame and len(frame):
        meta[f"{RUN_PREFIX}first_date"] = dg.MetadataValue.text(f"{frame['date'].min():%Y-%m-%d}")
        meta[f"{RUN_PREFIX}last_date"] = dg.MetadataValue.text(f"{frame['date'].max():%Y-%m-%d}")
    if "symbol" in frame:
        meta[f"{RUN_PREFIX}funds_covered"] = dg.MetadataValue.int(int(frame["symbol"].nunique()))
    meta.update({k if k.startswith(RUN_PREFIX) else f"{RUN_PREFIX}{k}": _value(v)
                 for k, v in extra.items()})
    return meta


def run_level(metadata: Mapping[str, object]) -> dict[str, object]:
    """``metadata`` with every key prefixed ``run_`` (figures of the whole run)."""
    return {k if k.startswith(RUN_PREFIX) else f"{RUN_PREFIX}{k}": v
            for k, v in metadata.items()}


def names_of(symbols: Iterable[str], instruments: Iterable[object]) -> dict[str, str]:
    """Fund name by symbol (empty when the source has none)."""
    names = {str(getattr(i, "symbol", "")): str(getattr(i, "name", "") or "")
             for i in instruments}
    return {str(s): names.get(str(s), "") for s in symbols}


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

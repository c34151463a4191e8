"""The per-partition metadata of a backfill is built once per partition, cheaply, and says the
same as before: each partition's preview holds its own rows, typed and rounded as the UI shows
them, and every partition carries the run frame's column schema."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd

from assets.metadata import (
    PREVIEW_ROWS,
    _cell,
    column_schema,
    frame_metadata,
    partition_previews,
    partitions_frame_metadata,
    rows_by_partition,
    table,
)


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "date": pd.to_datetime(["2024-01-04", "2024-01-05", "2024-01-06", None]),
        "symbol": ["510300", "510300", "159915", "513100"],
        "close": [3.123456789, np.nan, 2.5, 1.0],
        "volume": [123456.789, 1.0, 2.0, 3.0],
        "halted": [False, True, False, False],
        "adj_factor": pd.array([1.0, None, 2.0, 1.0], dtype="Float64"),
    })


def test_preview_records_are_the_rows_as_the_ui_shows_them() -> None:
    frame = _frame()
    expected = [{str(k): _cell(v) for k, v in row.items()} for row in frame.to_dict("records")]
    shown = table(frame)
    assert [r.data for r in shown.records] == expected
    assert expected[0] == {"date": "2024-01-04", "symbol": "510300", "close": 3.123457,
                           "volume": 123456.79, "halted": False, "adj_factor": 1.0}
    assert expected[1]["close"] is None and expected[1]["adj_factor"] is None
    assert expected[3]["date"] is None
    assert [c.type for c in shown.schema.columns] == ["date", "string", "float", "float",
                                                      "bool", "float"]


def test_a_partition_shares_the_run_schema_and_keeps_its_own_figures() -> None:
    frame = _frame().dropna(subset=["date"])
    schema = column_schema(frame)
    parts = rows_by_partition(frame, ["2024-01-04", "2024-01-05"])
    friday = parts["2024-01-05"]                      # Friday's window holds the Saturday bar
    assert list(friday["date"].dt.strftime("%Y-%m-%d")) == ["2024-01-05", "2024-01-06"]
    meta = frame_metadata(friday, preview=False, schema=schema)
    assert "preview" not in meta                       # the caller adds the partition's own
    assert meta["dagster/column_schema"] == dg.MetadataValue.table_schema(column_schema(friday))
    assert meta["dagster/row_count"] == dg.MetadataValue.int(2)
    assert meta["missing_values"] == dg.MetadataValue.int(2)
    assert meta["sessions"] == dg.MetadataValue.int(2)
    whole = frame_metadata(friday)
    assert [r.data["date"] for r in whole["preview"].records] == ["2024-01-05", "2024-01-06"]


def test_the_partitions_figures_computed_at_once_are_each_partitions_own() -> None:
    """Grouped once for the whole frame, each partition's figures and preview are those of its
    own rows: a Saturday bar in Friday's window, a weekday without rows, missing values, more
    rows than a preview holds, a row before the first partition left out."""
    days = ["2024-01-03", "2024-01-04", "2024-01-05", "2024-01-06", "2024-01-09"]
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({
        "date": pd.to_datetime(np.repeat(days, 12)),
        "symbol": [f"{s:06d}" for s in rng.permutation(60)],
        "close": rng.normal(size=60),
    })
    frame.loc[[5, 30, 31], "close"] = np.nan
    keys = ["2024-01-04", "2024-01-05", "2024-01-08", "2024-01-09"]
    schema = column_schema(frame)
    figures = partitions_frame_metadata(frame, keys, schema)
    previews = partition_previews(frame, keys, ("symbol",), schema)
    parts = rows_by_partition(frame, keys)
    assert len(parts["2024-01-05"]) == 24 and parts["2024-01-08"].empty
    for key in keys:
        part = parts[key]
        assert figures[key] == frame_metadata(part, preview=False, schema=schema), key
        if part.empty:
            assert key not in previews
        else:
            expected = table(part.sort_values("symbol").head(PREVIEW_ROWS), schema=schema)
            assert previews[key] == expected, key
    assert figures["2024-01-05"]["missing_by_column"] == dg.MetadataValue.json({"close": 2})

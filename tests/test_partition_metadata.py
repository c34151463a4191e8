"""The per-partition metadata of a backfill is built once per partition, cheaply, and says the
same as before: each partition's preview holds its own rows, typed and rounded as the UI shows
them, and every partition carries the run frame's column schema."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd

from assets.metadata import _cell, column_schema, frame_metadata, rows_by_partition, table


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

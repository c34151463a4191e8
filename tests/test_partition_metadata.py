"""The per-partition metadata of a backfill is built once per partition, cheaply, and says the
same as before: each partition's figures are its own rows', a preview holds its own rows, typed
and rounded as the UI shows them; over a range, the newest partition carries the preview, the
run frame's column schema and the run's figures, the older ones point to it."""

import dagster as dg
import numpy as np
import pandas as pd

from assets.metadata import (
    PREVIEW_ROWS,
    _cell,
    column_schema,
    frame_metadata,
    partition_metadata,
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


DAYS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-11")


def _range_frame() -> pd.DataFrame:
    days = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-06", "2024-01-08"]
    return pd.DataFrame({"date": pd.to_datetime(np.repeat(days, 3)),
                         "symbol": ["510300", "159915", "513100"] * len(days),
                         "close": np.arange(18, dtype=float)})


def _ranged(name: str) -> dg.AssetsDefinition:
    @dg.asset(name=name, partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run())
    def _asset(context: dg.AssetExecutionContext) -> dg.Output[None]:
        frame = _range_frame()
        frame = frame.loc[frame["date"] <= pd.Timestamp(context.partition_keys[-1])]
        # As adjusted_bars' no_bars_text: a sentence for every key, shown only without rows.
        return dg.Output(None, metadata=partition_metadata(
            context, frame, no_session=lambda key: f"no bars on {key}",
            run={"source": "test"}))
    return _asset


ranged, ranged_to_a_holiday = _ranged("ranged"), _ranged("ranged_to_a_holiday")


@dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run())
def ranged_one_call_each(context: dg.AssetExecutionContext) -> None:
    """Dagster's own per-call API, for the same metadata (the reference)."""
    for key in context.partition_keys:
        context.add_asset_metadata({"partition": dg.MetadataValue.text(key)}, partition_key=key)


def _materialised(instance: dg.DagsterInstance, asset: str) -> dict[str, dict[str, object]]:
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
    return {r.partition_key: dict(r.asset_materialization.metadata)  # type: ignore[union-attr]
            for r in records if r.partition_key}


def _range(start: str, end: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": start,
            "dagster/asset_partition_range_end": end}


def test_a_range_describes_each_partition_and_the_run_on_its_newest(
        pg_instance: dg.DagsterInstance) -> None:
    assert dg.materialize([ranged, ranged_one_call_each], instance=pg_instance,
                          tags=_range("2024-01-02", "2024-01-08")).success
    stored = _materialised(pg_instance, "ranged")
    keys = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-06", "2024-01-07",
            "2024-01-08"]
    assert sorted(stored) == keys
    frame = _range_frame()
    parts = rows_by_partition(frame, keys)
    schema = column_schema(frame)
    where = ("on 2024-01-08, the newest of this run's 7 partitions: the run's figures (run_*); "
             "on 2024-01-08: a preview of its rows and the column schema")
    for key in keys[:-1]:
        meta = stored[key]
        own = {k: v for k, v in frame_metadata(parts[key], preview=False, schema=schema).items()
               if k != "dagster/column_schema"}
        assert {k: meta[k] for k in own} == own, key
        assert "preview" not in meta and "dagster/column_schema" not in meta, key
        assert not any(k.startswith("run_") and k != "run_figures" for k in meta), key
        assert meta["run_figures"] == dg.MetadataValue.text(where), key
        # A partition with rows shows its session, even where the asset has a sentence for
        # every key (the one without rows shows the sentence).
        expected = "no bars on 2024-01-07" if key == "2024-01-07" else key
        assert meta["session"] == dg.MetadataValue.text(expected), key
    newest = stored["2024-01-08"]
    assert newest["dagster/row_count"] == dg.MetadataValue.int(3)
    assert newest["dagster/column_schema"] == dg.MetadataValue.table_schema(schema)
    assert [r.data["close"] for r in newest["preview"].records] == [16.0, 15.0, 17.0]
    assert newest["run_row_count"] == dg.MetadataValue.int(18)
    assert newest["run_source"] == dg.MetadataValue.text("test")
    reference = _materialised(pg_instance, "ranged_one_call_each")
    assert {k: m["partition"] for k, m in reference.items()} == {
        k: m["partition"] for k, m in stored.items()}


def test_a_range_ending_on_a_holiday_shows_its_last_rows(pg_instance: dg.DagsterInstance
                                                         ) -> None:
    assert dg.materialize([ranged_to_a_holiday], instance=pg_instance,
                          tags=_range("2024-01-02", "2024-01-07")).success
    stored = _materialised(pg_instance, "ranged_to_a_holiday")
    holiday, shown = stored["2024-01-07"], stored["2024-01-06"]
    assert holiday["dagster/row_count"] == dg.MetadataValue.int(0)
    assert holiday["run_row_count"] == dg.MetadataValue.int(15)
    assert "preview" not in holiday and "dagster/column_schema" in holiday
    assert [r.data["close"] for r in shown["preview"].records] == [13.0, 12.0, 14.0]
    assert "dagster/column_schema" in shown and "run_row_count" not in shown
    assert shown["run_figures"] == dg.MetadataValue.text(
        "on 2024-01-07, the newest of this run's 6 partitions: the run's figures (run_*); "
        "on 2024-01-06: a preview of its rows and the column schema")

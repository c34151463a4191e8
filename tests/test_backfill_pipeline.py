"""Full-history single-run backfills on the Dagster instance backed by PostgreSQL: the two real
datasets and the built-in sample market, every check green, every partition materialised,
the metadata a researcher reads present and right."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from orchestration.definitions import build_definitions
from orchestration.runs import RANGE_END_TAG, RANGE_START_TAG, full_history, run_range
from orchestration.settings import Settings
from resources.deployment import deployed
from resources.parquet_io import PartitionedParquetIOManager
from rotation import quality
from rotation.sources.files import FileMarketSource, load_dataset_spec

ASSETS = ("raw_bars", "adjusted_bars", "cross_sections")
EXPECTED_CHECKS = {r.name for r in quality.RULES} | {"cross_sections_standardized"}


def _backfill(settings: Settings, instance: dg.DagsterInstance) -> tuple[dg.Definitions,
                                                                         dg.ExecuteInProcessResult,
                                                                         str, str]:
    defs = build_definitions(settings)
    start, end = full_history(defs)
    result = run_range(defs, instance, start, end)
    return defs, result, start, end


def _assert_green_single_run(result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance,
                             start: str, end: str) -> None:
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    assert run.tags[RANGE_START_TAG] == start and run.tags[RANGE_END_TAG] == end
    evaluations = [e.asset_check_evaluation_data for e in result.all_events
                   if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert {e.check_name for e in evaluations} == EXPECTED_CHECKS
    assert all(e.passed for e in evaluations), [e.check_name for e in evaluations if not e.passed]
    # One run, one step per asset: the single-run backfill policy.
    steps = [e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"]
    assert sorted(steps) == sorted(ASSETS)


def _assert_partitions_recorded(defs: dg.Definitions, instance: dg.DagsterInstance, start: str,
                                end: str) -> list[str]:
    keys = [k for k in defs.resolve_job_def("market_data_job").partitions_def.get_partition_keys()
            if start <= k <= end]
    for name in ASSETS:
        materialized = instance.get_materialized_partitions(dg.AssetKey(name))
        assert set(keys) <= materialized, f"{name}: {len(set(keys) - materialized)} missing"
    return keys


def _latest_metadata(instance: dg.DagsterInstance, name: str) -> dict[str, object]:
    event = instance.get_latest_materialization_event(dg.AssetKey(name))
    assert event is not None and event.asset_materialization is not None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["cn_etf_morphkyan_raw", "cn_etf_akshare_qfq_2020"])
def test_full_history_backfill_of_a_real_dataset(
    dataset: str, shared_data: Path, pg_instance: dg.DagsterInstance,
    make_settings: Callable[..., Settings],
) -> None:
    root = shared_data / dataset
    settings = make_settings(
        market_data={"source": "files", "dataset": dataset, "files_root": str(root)}
    )
    defs, result, start, end = _backfill(settings, pg_instance)
    _assert_green_single_run(result, pg_instance, start, end)
    _assert_partitions_recorded(defs, pg_instance, start, end)

    # Everything the source holds was stored, bar for bar, with factors applied.
    source = FileMarketSource(root, load_dataset_spec(settings.market_data.dataset_config_path()))
    expected = source.load().bars
    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    assert isinstance(io, PartitionedParquetIOManager)
    keys = io.stored_partitions(dg.AssetKey("raw_bars"))
    stored = io.load_partitions(dg.AssetKey("raw_bars"), keys)
    assert len(stored) == len(expected)
    merged = stored.merge(expected, on=["date", "symbol"], suffixes=("", "_src"))
    assert len(merged) == len(expected)
    for column in ("open", "close", "volume", "adj_factor"):
        pd.testing.assert_series_equal(merged[column], merged[f"{column}_src"],
                                       check_names=False)

    # Each partition of a single-run backfill describes itself; the run's figures are run_*.
    meta = _latest_metadata(pg_instance, "raw_bars")
    last_day = expected.loc[expected["date"] == end]
    assert meta["dagster/row_count"] == len(last_day)
    assert meta["funds_covered"] == last_day["symbol"].nunique()
    assert (meta["first_date"], meta["last_date"], meta["session"]) == (end, end, end)
    assert meta["missing_values"] == int(last_day.isna().sum().sum())
    closes = {r.data["close"] for r in meta["preview"].records}  # type: ignore[attr-defined]
    assert closes <= set(last_day["close"].round(6))
    assert meta["run_row_count"] == len(expected)
    assert meta["run_funds_covered"] == expected["symbol"].nunique()
    assert (meta["run_first_date"], meta["run_last_date"]) == (start, end)

    cross = io.load_partitions(dg.AssetKey("cross_sections"), [end])
    assert len(cross) >= 0.8 * cross_funds_expected(expected, end)
    assert cross["ret_20d_std"].mean() == pytest.approx(0.0, abs=1e-9)


def cross_funds_expected(bars: pd.DataFrame, day: str) -> int:
    """Funds trading on ``day`` with at least 60 sessions of history (the coverage filter)."""
    history = bars.loc[bars["date"] <= day].groupby("symbol")["date"].count()
    today = set(bars.loc[bars["date"] == day, "symbol"])
    return sum(1 for s, n in history.items() if n >= 60 and s in today)


@pytest.mark.slow
def test_full_history_backfill_of_the_sample_market(
    pg_instance: dg.DagsterInstance, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    defs, result, start, end = _backfill(settings, pg_instance)
    _assert_green_single_run(result, pg_instance, start, end)
    keys = _assert_partitions_recorded(defs, pg_instance, start, end)
    assert (start, end) == ("2019-01-02", "2025-12-31")
    assert len(keys) == len(pd.bdate_range(start, end))
    meta = _latest_metadata(pg_instance, "cross_sections")
    assert meta["run_funds_per_session_max"] == 20

    # The schedule's unit of work: one session, reading 85 days of history from storage.
    job = defs.resolve_job_def("market_data_job")
    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    assert isinstance(io, PartitionedParquetIOManager)
    before = io.load_partitions(dg.AssetKey("cross_sections"), [end])
    daily = job.execute_in_process(instance=pg_instance, partition_key=end)
    assert daily.success
    pd.testing.assert_frame_equal(io.load_partitions(dg.AssetKey("cross_sections"), [end]),
                                  before)
    assert len(before) == 20
    # A weekday holiday is a partition without bars: it materialises empty, every check passes.
    holiday = job.execute_in_process(instance=pg_instance, partition_key="2025-10-01")
    assert holiday.success
    assert io.load_partitions(dg.AssetKey("raw_bars"), ["2025-10-01"]).empty

    # The research stage reads the whole history of adjusted bars.
    research = defs.resolve_job_def("research_job").execute_in_process(instance=pg_instance)
    assert research.success
    ic = pd.read_parquet(io.path_for(dg.AssetKey("factor_ic")))
    assert set(ic["horizon"]) == {1, 5, 10, 20}
    assert ic["factor"].nunique() >= 25
    assert ((ic["count"] > 1000) & ic["mean_ic"].abs().lt(1)).all()
    reasons = pd.read_parquet(io.path_for(dg.AssetKey("selected_factors")))
    assert len(reasons) == ic["factor"].nunique()
    meta = _latest_metadata(pg_instance, "selected_factors")
    assert meta["selected"] == reasons.loc[reasons["selected"], "factor"].tolist()
    # The plots are shown inline from the MLflow UI that serves the screening run's artifacts.
    ic_meta = _latest_metadata(pg_instance, "factor_ic")
    assert "/get-artifact?path=plots%2Fcumulative_ic.png" in ic_meta["plot_cumulative_ic"]


def test_cross_sections_without_their_history_fail_clearly(
    pg_instance: dg.DagsterInstance, make_settings: Callable[..., Settings]
) -> None:
    defs = build_definitions(make_settings())
    result = run_range(defs, pg_instance, "2025-06-02", "2025-06-30")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "cross_sections"
    assert "adjusted_bars: 85 partition(s) not materialised" in str(
        failure.event_specific_data.error.cause
    ) + str(failure.event_specific_data.error.message)



"""A whole-history backfill with one bad bar stores what is good: every partition outside the bad
bar's reach is stored exactly as a clean backfill stores it, the failed ones are named by the
run (reported failed) and shown as failed by Dagster.

Data: four funds of cn_etf_akshare_qfq_2020 (2020-01-02..2026-05-07) copied to tmp_path; the
corrupted copy has 510300's high below its low on 2024-03-05.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from conftest import PG_SERVER, copy_dataset, scratch_database, session_digests
from dagster._core.definitions.data_version import CODE_VERSION_TAG
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from assets.market import FIELD_WINDOW, failed_partitions
from orchestration.dagster_storage import instance_yaml
from orchestration.definitions import build_definitions
from orchestration.runs import full_history, run_range
from orchestration.settings import Settings, load_settings
from resources.parquet_io import PartitionedParquetIOManager
from rotation import quality

DATASET = "cn_etf_akshare_qfq_2020"
SYMBOLS = ("510300", "159915", "510500", "518880")
BAD_SYMBOL, BAD_DAY = "510300", "2024-03-05"
ASSETS = ("raw_bars", "adjusted_bars", "cross_sections")


def _copy(shared: Path, root: Path) -> Path:
    return copy_dataset(shared, DATASET, root, SYMBOLS)


def _corrupt(root: Path) -> None:
    path = root / "parquet" / f"{BAD_SYMBOL}.parquet"
    bars = pd.read_parquet(path)
    day = bars["date"] == pd.Timestamp(BAD_DAY)
    assert day.sum() == 1
    bars.loc[day, "high"] = bars.loc[day, "low"] - 0.01   # high < low: ohlc_consistent
    bars.to_parquet(path, index=False)


def _hashes(storage: Path) -> dict[str, str]:
    return session_digests(storage, ASSETS)


@dataclass
class Backfills:
    defs: dg.Definitions
    instance: dg.DagsterInstance
    result: dg.ExecuteInProcessResult
    keys: list[str]
    clean: Path
    stored: Path

    @property
    def failure(self) -> dg.DagsterEvent:
        return next(e for e in self.result.all_events if e.event_type_value == "STEP_FAILURE")

    @property
    def failed(self) -> dict[str, list[str]]:
        data = self.failure.event_specific_data.user_failure_data.metadata  # type: ignore[union-attr]
        return data["failed_partitions"].value


def _settings(root: Path, home: Path) -> Settings:
    return load_settings(home=home, market_data={
        "source": "files", "dataset": str(root / "dataset.yaml"), "files_root": str(root)})


def _backfill(root: Path, home: Path, instance: dg.DagsterInstance
              ) -> tuple[dg.Definitions, dg.ExecuteInProcessResult, list[str]]:
    settings = _settings(root, home)
    defs = build_definitions(settings)
    start, end = full_history(defs)
    assert (start, end) == ("2020-01-02", "2026-05-07")
    keys = [k for k in defs.resolve_job_def("market_data_job").partitions_def
            .get_partition_keys() if start <= k <= end]  # type: ignore[union-attr]
    return defs, run_range(defs, instance, start, end, log_level="WARNING"), keys


@pytest.fixture(scope="module")
def backfills(tmp_path_factory: pytest.TempPathFactory, shared_data: Path
              ) -> Iterator[Backfills]:
    tmp = tmp_path_factory.mktemp("partial_backfill")
    clean_root = _copy(shared_data, tmp / "clean")
    bad_root = _copy(shared_data, tmp / "corrupted")
    _corrupt(bad_root)
    with dg.DagsterInstance.ephemeral() as scratch:
        _, clean, _ = _backfill(clean_root, tmp / "clean_home", scratch)
    assert clean.success
    # A Dagster instance of its own: the partition status is this run's alone.
    with scratch_database("etf_partial") as name:
        (tmp / "dagster").mkdir()
        (tmp / "dagster" / "dagster.yaml").write_text(
            instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{name}"), encoding="utf-8")
        with dg.DagsterInstance.from_config(str(tmp / "dagster")) as instance:
            defs, result, keys = _backfill(bad_root, tmp / "bad_home", instance)
            yield Backfills(defs, instance, result, keys,
                            _settings(clean_root, tmp / "clean_home").resolved_storage_root,
                            _settings(bad_root, tmp / "bad_home").resolved_storage_root)


def test_the_run_fails_naming_the_failed_partitions(backfills: Backfills) -> None:
    assert not backfills.result.success
    run = backfills.instance.get_run_by_id(backfills.result.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
    failed = backfills.failed
    assert failed["raw_bars"] == failed["adjusted_bars"] == [BAD_DAY]
    # The cross-sections of a day read the adjusted bars of the days before it (the coverage
    # filter and the 20-day fields): the bad day and the sessions after it within that reach.
    reach = failed["cross_sections"]
    start = backfills.keys.index(BAD_DAY)
    assert reach == backfills.keys[start:start + len(reach)]
    assert len(reach) > 60 + FIELD_WINDOW
    assert reach[-1] < "2024-08-01"
    message = backfills.failure.event_specific_data.error.message  # type: ignore[union-attr]
    assert f"raw_bars 1 partition(s): {BAD_DAY}" in message
    assert f"cross_sections {len(reach)} partition(s): {BAD_DAY}..{reach[-1]}" in message
    assert "ohlc_consistent" in message and f"{BAD_SYMBOL} on {BAD_DAY}" in message


def test_every_partition_outside_the_reach_is_stored_as_a_clean_backfill_stores_it(
        backfills: Backfills) -> None:
    stored, clean = _hashes(backfills.stored), _hashes(backfills.clean)
    for asset in ASSETS:
        failed = set(backfills.failed[asset])
        good = [k for k in backfills.keys if k not in failed]
        assert backfills.instance.get_materialized_partitions(dg.AssetKey(asset)) == set(good)
        files = {f"{asset}/{k}" for k in good}
        assert {f for f in stored if f.startswith(f"{asset}/")} == files
        different = sorted(f for f in files if stored[f] != clean[f])
        if asset == "cross_sections":
            # Rolling windows run over one fewer session: the same numbers to rounding.
            sessions = [name.split("/")[1] for name in different]
            stored_rows, clean_rows = (
                PartitionedParquetIOManager(base_path=str(root)).load_partitions(
                    dg.AssetKey(asset), sessions) for root in (backfills.stored, backfills.clean))
            pd.testing.assert_frame_equal(stored_rows, clean_rows,
                                          check_exact=False, rtol=1e-9, atol=1e-12)
        else:
            assert not different, f"{asset}: {len(different)} differ, e.g. {different[:3]}"
    # Before and after the reach, in the same run: 2020 to 2026.
    raw = backfills.instance.get_materialized_partitions(dg.AssetKey("raw_bars"))
    cross = backfills.instance.get_materialized_partitions(dg.AssetKey("cross_sections"))
    assert {"2020-01-02", "2024-03-04", "2024-03-06", "2026-05-07"} <= raw
    assert {"2024-03-04", "2026-05-07"} <= cross


def test_dagster_shows_the_failed_partitions_as_failed(backfills: Backfills) -> None:
    partitions = backfills.defs.resolve_job_def("market_data_job").partitions_def
    assert partitions is not None
    for asset in ASSETS:
        status = get_and_update_asset_status_cache_value(
            backfills.instance, dg.AssetKey(asset), partitions)
        assert status is not None
        shown = status.deserialize_failed_partition_subsets(partitions).get_partition_keys()
        assert sorted(shown) == backfills.failed[asset]


def test_stored_partitions_carry_their_asset_code_version(backfills: Backfills) -> None:
    graph = backfills.defs.resolve_asset_graph()
    for asset in ASSETS:
        key = dg.AssetKey(asset)
        record = backfills.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=["2025-06-03"]), limit=1
        ).records[0]
        materialization = record.asset_materialization
        assert materialization is not None
        assert materialization.tags is not None
        assert materialization.tags[CODE_VERSION_TAG] == graph.get(key).code_version


def test_each_check_reports_once_for_the_range_with_its_failed_partitions(
        backfills: Backfills) -> None:
    """One record per check and run, resolved by its evaluation (none left "planned" for
    each partition); its metadata names the partitions it covered and the ones it failed."""
    run_id = backfills.result.run_id
    graph = backfills.defs.resolve_asset_graph()
    raw_checks = [k for k in graph.asset_check_keys if k.asset_key == dg.AssetKey("raw_bars")]
    assert len(raw_checks) == len(quality.RULES)
    # The storage's one record per check and run holds for unpartitioned checks: all of ours.
    assert all(graph.get(k).partitions_def is None for k in graph.asset_check_keys)
    for key in raw_checks:
        records = [r for r in backfills.instance.event_log_storage
                   .get_asset_check_execution_history(key, limit=50) if r.run_id == run_id]
        assert len(records) == 1, (key.name, len(records))
        record = records[0]
        assert record.partition is None
        evaluation = record.event.dagster_event.asset_check_evaluation_data  # type: ignore[union-attr]
        meta = evaluation.metadata
        assert meta["partitions_checked"].value == len(backfills.keys)
        assert meta["partition_range"].value == f"{backfills.keys[0]}..{backfills.keys[-1]}"
        if key.name == "ohlc_consistent":
            assert record.status.value == "FAILED"
            assert meta["failed_partitions"].value == [BAD_DAY]
        else:
            assert record.status.value == "SUCCEEDED", key.name
            assert meta["failed_partitions"].value == []


def _outcome(dates: list[object]) -> quality.RuleOutcome:
    failures = pd.DataFrame({"rule": "r", "source": "s", "symbol": "510300", "date": dates,
                             "message": "m"})
    return quality.RuleOutcome(quality.RULES[0], failures, failures.iloc[0:0], len(dates))


def test_failing_rows_fail_the_partition_of_their_date() -> None:
    keys = ["2024-03-01", "2024-03-04", "2024-03-05", "2024-03-06"]
    # A Saturday bar lies in Friday's window; a row without a date fails every partition.
    assert failed_partitions([_outcome([pd.Timestamp("2024-03-02"),
                                        pd.Timestamp("2024-03-05")])], keys) == [
        "2024-03-01", "2024-03-05"]
    assert failed_partitions([_outcome([None])], keys) == keys

"""The research chain through Dagster on PostgreSQL: factors → screening → every walk-forward
window → stitched out-of-sample backtest → target portfolio, with its MLflow runs.

Runs on the built-in sample market shortened to 2019–2021 (five windows) so the whole chain
takes about a minute; the real-data run of the same chain is in test_walk_forward_chain.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from conftest import postgres_instance, scratch_database
from mlflow import MlflowClient

from assets.walk_forward import POSITIONS_CHECK, REPLAY_CHECK, VBT_CHECK
from orchestration.definitions import build_definitions, strategy_for
from orchestration.runs import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    full_history,
    rebuild_research,
    run_range,
    window_keys,
)
from orchestration.settings import Settings, SettingsError
from resources.deployment import deployed
from resources.parquet_io import PartitionedParquetIOManager
from resources.tracking import MlflowTracking, experiment_of

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="module")
def pg_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dg.DagsterInstance]:
    """This module's own instance (not the session's): it counts the stored partitions of
    wfo_windows, which other modules' strategies on other data materialise too."""
    with scratch_database("etf_wfo_dagster") as name, postgres_instance(
            tmp_path_factory.mktemp("wfo_dagster"), name) as instance:
        yield instance


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, pg_instance: dg.DagsterInstance):
    home = tmp_path_factory.mktemp("wfo_home")
    settings = Settings(home=home, market_data={"sample_end": "2021-12-31"})
    defs = build_definitions(settings)
    start, end = full_history(defs)
    market = run_range(defs, pg_instance, start, end, log_level="WARNING")
    assert market.success
    results = rebuild_research(defs, pg_instance)
    return settings, defs, results


def _io(defs: dg.Definitions) -> PartitionedParquetIOManager:
    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    assert isinstance(io, PartitionedParquetIOManager)
    return io


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def test_every_stage_runs_and_its_checks_pass(chain, pg_instance: dg.DagsterInstance) -> None:
    _, defs, results = chain
    assert [r.dagster_run.job_name for r in results] == ["research_job", "walk_forward_job",
                                                         "portfolio_job"]
    assert all(r.success for r in results)
    assert _checks(results[1]) == {VBT_CHECK: True}
    assert _checks(results[2]) == {REPLAY_CHECK: True, POSITIONS_CHECK: True}
    keys = window_keys(defs)
    assert len(keys) >= 3
    for asset in ("wfo_windows", "wfo_results"):
        stored = pg_instance.get_materialized_partitions(dg.AssetKey(asset))
        assert stored == set(keys)


def test_window_results_hold_the_frozen_winner_and_its_out_of_sample_result(chain) -> None:
    _, defs, _ = chain
    keys = window_keys(defs)
    results = _io(defs).load_partitions(dg.AssetKey("wfo_results"), keys)
    screens = _io(defs).load_partitions(dg.AssetKey("wfo_windows"), keys)
    assert list(results["window"]) == keys
    for row in results.to_dict("records"):
        screened = set(screens.loc[(screens["window"] == row["window"]) & screens["selected"],
                                   "factor"])
        assert set(row["factors"].split(",")) <= screened  # the winner uses screened factors
        assert row["is_end"] < row["oos_start"]  # purged in-sample
        assert row["vbt_max_rel_diff"] <= 1e-9
        assert np.isfinite(row["oos_total_return"])
    # Every screen row says why the factor is in or out.
    assert screens["reason"].str.len().gt(0).all()


def test_oos_backtest_is_stitched_from_the_windows(chain) -> None:
    settings, defs, _ = chain
    daily = pd.read_parquet(_io(defs).path_for(dg.AssetKey("oos_backtest")))
    keys = window_keys(defs)
    results = _io(defs).load_partitions(dg.AssetKey("wfo_results"), keys)
    strategy = strategy_for(settings)
    assert daily["equity"].iloc[0] == pytest.approx(strategy.backtest_config().initial_cash)
    # The windows' out-of-sample sessions, then the newest winner on to the latest session:
    # the backtest ends where target_portfolio decides (the same date on every screen).
    _, end = full_history(defs)
    assert results["oos_end"].max() <= daily["date"].iloc[-1] == pd.Timestamp(end)
    newest = results.sort_values("oos_start")["window"].iloc[-1]
    assert (daily.loc[daily["date"] > results["oos_end"].max(), "window"] == newest).all()
    # Each out-of-sample session belongs to the window whose frozen winner traded it.
    first_days = daily.groupby("window")["date"].min()
    expected = results.set_index("window")["oos_start"]
    assert (first_days.drop(first_days.index[0]) ==
            expected.reindex(first_days.index).drop(first_days.index[0])).all()
    assert {"benchmark_equal-weight universe", "benchmark_510010"} <= set(daily.columns)
    assert (daily["drawdown"] <= 0).all()


def test_target_portfolio_explains_every_fund(chain) -> None:
    settings, defs, _ = chain
    target = pd.read_parquet(_io(defs).path_for(dg.AssetKey("target_portfolio")))
    _, end = full_history(defs)
    assert (target["date"] == pd.Timestamp(end)).all()
    assert (target["weight"] >= 0).all() and target["weight"].sum() <= 1 + 1e-9
    assert target["reason"].str.len().gt(0).all()
    assert target["symbol"].is_unique
    assert strategy_for(settings).universe.defensive in set(target["symbol"])


def test_mlflow_has_a_closed_run_per_window_and_per_backtest(chain) -> None:
    settings, defs, results = chain
    client = MlflowClient(tracking_uri=settings.resolved_mlflow_uri)
    experiment = client.get_experiment_by_name(strategy_for(settings).experiment_name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    keys = window_keys(defs)
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {f"wfo {k}" for k in keys} | {"oos backtest", "factor screening"}
    wfo_run_id = results[1].run_id
    for run in runs:
        assert run.info.status == "FINISHED"
        if run.info.run_name == "factor screening":   # factor_ic's plots and table
            continue
        tags = run.data.tags
        assert tags["code_version"] and tags["data_version"] and tags["strategy"]
        assert tags["dagster.asset_key"] in {"wfo_results", "oos_backtest"}
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"report.html", "weights.csv", "params.json", "plots"} <= artifacts
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        bars = ({"plots/sharpe_by_window.png", "plots/return_by_window.png"}
                if run.info.run_name == "oos backtest" else set())
        assert plots == {"plots/equity.png", "plots/drawdown.png"} | bars
        # Equity and drawdown as stepped series, one point per session.
        history = client.get_metric_history(run.info.run_id, "equity")
        assert len(history) > 20 and [m.step for m in history] == list(range(len(history)))
    window_run = by_name[f"wfo {keys[0]}"]
    assert window_run.data.tags["dagster.run_id"] == wfo_run_id
    assert window_run.data.tags["wfo.window"] == keys[0]
    assert window_run.data.tags["dagster.partition_key_range"] == f"{keys[0]}..{keys[-1]}"
    assert "winner.factors" in window_run.data.params
    assert "oos_total_return" in window_run.data.metrics
    assert "sharpe" in by_name["oos backtest"].data.metrics
    # Each window's row names its run's experiment: target_portfolio links the newest run
    # without opening the tracking store, to the page the store's lookup gives.
    stored = _io(defs).load_partitions(dg.AssetKey("wfo_results"), keys)
    served = MlflowTracking(tracking_uri=settings.resolved_mlflow_uri,
                            ui_url="http://127.0.0.1:5000")
    assert len(stored) == len(keys)
    for _, row in stored.iterrows():
        assert experiment_of(row) == experiment.experiment_id
        run_id = str(row["mlflow_run_id"])
        assert by_name[f"wfo {row['window']}"].info.run_id == run_id
        assert served.run_url(run_id, experiment_of(row)) == served.run_url(run_id)
    assert experiment_of(stored.drop(columns="mlflow_experiment_id").iloc[0]) is None


def test_one_window_rematerialises_to_the_same_winner(chain, pg_instance) -> None:
    _, defs, _ = chain
    key = window_keys(defs)[1]
    before = _io(defs).load_partitions(dg.AssetKey("wfo_results"), [key])
    job = defs.resolve_job_def("walk_forward_job")
    again = job.execute_in_process(instance=pg_instance, partition_key=key,
                                   raise_on_error=False)
    assert again.success
    after = _io(defs).load_partitions(dg.AssetKey("wfo_results"), [key])
    same = ["window", "factors", "top_n", "rebalance_every", "weighting", "in_sample_score",
            "oos_total_return"]
    pd.testing.assert_frame_equal(before[same], after[same])


def test_a_strategy_for_other_data_is_refused(make_settings: Callable[..., Settings],
                                              shared_data: Path) -> None:
    settings = make_settings(strategy="etf_rotation_akshare")
    with pytest.raises(SettingsError, match="trades the dataset 'cn_etf_akshare_qfq_2020' but "
                                            "market_data is 'sample'"):
        build_definitions(settings)


def test_unknown_window_range_is_a_clear_failure(chain, pg_instance) -> None:
    _, defs, _ = chain
    keys = window_keys(defs)
    job = defs.resolve_job_def("walk_forward_job")
    with pytest.raises(Exception, match="w999"):
        job.execute_in_process(instance=pg_instance,
                               tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: "w999_2099-01-01"})


def test_windows_searched_in_two_local_processes_store_the_same_results(chain,
                                                                        pg_instance) -> None:
    """walk_forward.workers = 2: the run's windows are searched in two processes
    (rotation.walkforward.evaluate_windows) and every window's stored result is unchanged."""
    settings, defs, _ = chain
    keys = window_keys(defs)
    before = _io(defs).load_partitions(dg.AssetKey("wfo_results"), keys)
    pooled = build_definitions(Settings(home=settings.home, market_data=settings.market_data,
                                        walk_forward={"workers": 2}))
    again = pooled.resolve_job_def("walk_forward_job").execute_in_process(
        instance=pg_instance, tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]},
        raise_on_error=False)
    assert again.success
    assert _checks(again) == {VBT_CHECK: True}
    after = _io(pooled).load_partitions(dg.AssetKey("wfo_results"), keys)
    same = ["window", "no_trade", "factors", "top_n", "rebalance_every", "weighting",
            "candidates", "in_sample_score", "oos_total_return", "oos_sharpe"]
    assert len(after) == len(keys)
    pd.testing.assert_frame_equal(before[same], after[same])

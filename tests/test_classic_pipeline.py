"""A classic strategy through Dagster on PostgreSQL, on the real data (cn_etf_akshare_qfq_2020):
ETF_STRATEGY=ma_cross_akshare → market data → every walk-forward window (in-sample parameter
search, frozen winner) → stitched out-of-sample backtest → target portfolio, with the same asset
keys and frames as the rotation; and choosing the strategy by data never picks a classic file.

The history starts on 2024-01-02 (about three windows after the 120-session warm-up) so the
chain stays light."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from mlflow import MlflowClient

from assets.classic_walk_forward import WINNER_REPLAY_CHECK
from assets.walk_forward import POSITIONS_CHECK, REPLAY_CHECK
from orchestration.definitions import build_definitions, strategy_for
from orchestration.runs import RANGE_END_TAG, RANGE_START_TAG, full_history, run_range, window_keys
from orchestration.settings import Settings, load_settings
from resources.deployment import deployed
from resources.parquet_io import PartitionedParquetIOManager
from rotation.catalogue import read_catalogue
from rotation.strategy import load_strategy

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
DATASET = "cn_etf_akshare_qfq_2020"
START = "2024-01-02"
EXPLAIN_COLUMNS = ["date", "strategy", "window", "symbol", "score", "rank", "eligible",
                   "held_before", "held_days", "selected", "base_weight", "weight", "reason"]


def _settings(shared: Path, home: Path, start: str = START) -> Settings:
    return load_settings(home=home, partitions_start=start, market_data={
        "source": "files", "dataset": DATASET, "files_root": str(shared / DATASET)})


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, shared_data: Path,
          pg_instance: dg.DagsterInstance) -> Iterator[tuple[dg.Definitions, list]]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ETF_STRATEGY", "ma_cross_akshare")
        settings = _settings(shared_data, tmp_path_factory.mktemp("classic_home"))
        defs = build_definitions(settings)
        start, end = full_history(defs)
        assert run_range(defs, pg_instance, start, end, log_level="WARNING").success
        keys = window_keys(defs)
        config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        results = [defs.resolve_job_def(name).execute_in_process(
            instance=pg_instance, tags=tags, raise_on_error=False, run_config=config)
            for name, tags in (("walk_forward_job", {RANGE_START_TAG: keys[0],
                                                     RANGE_END_TAG: keys[-1]}),
                               ("portfolio_job", {}))]
        yield defs, results


def _io(defs: dg.Definitions) -> PartitionedParquetIOManager:
    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    assert isinstance(io, PartitionedParquetIOManager)
    return io


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def test_the_classic_walk_forward_materialises_with_its_checks(
        chain, pg_instance: dg.DagsterInstance) -> None:
    defs, results = chain
    assert all(r.success for r in results)
    assert _checks(results[0]) == {WINNER_REPLAY_CHECK: True}
    assert _checks(results[1]) == {REPLAY_CHECK: True, POSITIONS_CHECK: True}
    keys = window_keys(defs)
    assert 2 <= len(keys) <= 4
    # (this run's: the session's instance holds other modules' windows too)
    assert {e.partition for e in results[0].get_asset_materialization_events()
            if e.asset_key == dg.AssetKey("wfo_results")} == set(keys)
    # the shared factor research still builds; the classic walk-forward does not read it
    graph = defs.resolve_asset_graph()
    assert {"factors", "selected_factors"} <= {k.to_user_string()
                                                for k in graph.get_all_asset_keys()}
    defs.resolve_job_def("research_job")
    for name in ("wfo_windows", "wfo_results", "oos_backtest", "target_portfolio"):
        parents = {p.to_user_string() for p in graph.get(dg.AssetKey(name)).parent_keys}
        assert not parents & {"factors", "selected_factors"}, name


def test_each_window_holds_its_in_sample_winner_and_out_of_sample_result(chain) -> None:
    defs, _ = chain
    keys = window_keys(defs)
    results = _io(defs).load_partitions(dg.AssetKey("wfo_results"), keys)
    strategy = load_strategy("ma_cross_akshare")
    assert strategy.classic is not None
    valid = [dict(p) for p in strategy.classic.candidates()]
    for row in results.to_dict("records"):
        assert row["generator"] == "ma_cross" and row["search_method"] == "grid"
        assert json.loads(row["params"]) in valid
        assert row["candidates"] == len(valid)
        assert pd.notna(row["in_sample_score"]) and pd.notna(row["oos_sharpe"])
        assert row["is_end"] < row["oos_start"]
        run = MlflowClient(tracking_uri=_tracking_uri(defs)).get_run(row["mlflow_run_id"])
        assert run.data.params["winner.fast"] == str(json.loads(row["params"])["fast"])
        # target_portfolio's link to the newest window's run needs no look-up in the store.
        assert row["mlflow_experiment_id"] == run.info.experiment_id
        assert "in_sample_sharpe" in run.data.metrics and "oos_sharpe" in run.data.metrics


def test_backtest_and_target_have_the_rotation_frames(chain) -> None:
    defs, _ = chain
    io = _io(defs)
    daily = pd.read_parquet(io.path_for(dg.AssetKey("oos_backtest")))
    assert {"date", "equity", "cash", "drawdown", "window", "invested"} <= set(daily.columns)
    assert daily["equity"].gt(0).all()
    target = pd.read_parquet(io.path_for(dg.AssetKey("target_portfolio")))
    assert list(target.columns) == EXPLAIN_COLUMNS
    assert (target["strategy"] == "ma_cross_akshare").all()
    assert target["weight"].sum() <= 1 + 1e-9 and (target["weight"] >= 0).all()
    assert target["date"].nunique() == 1 and str(target["date"].iloc[0])[:10] == "2026-05-07"
    held = target.loc[target["weight"] > 0]
    assert len(held) and held["reason"].str.startswith("in: ma_cross").all()
    positions = pd.read_parquet(io.path_for(dg.AssetKey("oos_positions")))
    assert {"date", "window", "symbol", "units", "value", "weight"} <= set(positions.columns)


def _tracking_uri(defs: dg.Definitions) -> str:
    from resources.tracking import MlflowTracking

    tracking = deployed(defs, "tracking", MlflowTracking)
    assert isinstance(tracking, MlflowTracking)
    return str(tracking.tracking_uri)


def test_choosing_by_data_never_picks_a_classic_strategy(shared_data: Path,
                                                         tmp_path: Path) -> None:
    catalogue = read_catalogue()
    classic = [f for f, s in catalogue.files.items()
               if s.classic is not None and s.universe.dataset == DATASET]
    assert {"ma_cross_akshare", "macd_akshare"} <= set(classic)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("ETF_STRATEGY", raising=False)
        assert strategy_for(_settings(shared_data, tmp_path)).name == "etf_rotation_akshare"
        env.setenv("ETF_STRATEGY", "macd_akshare")
        assert strategy_for(_settings(shared_data, tmp_path)).name == "macd_akshare"


def test_a_broken_classic_file_does_not_stop_the_choice_by_data(
        shared_data: Path, tmp_path: Path) -> None:
    """A refused file that would be chosen by the data stops the choice; a classic one never
    would be, so it stays a warning."""
    from orchestration import deployment
    from rotation import catalogue as cat

    folder = tmp_path / "strategies"
    folder.mkdir()
    for name in ("etf_rotation_akshare", "ma_cross_akshare"):
        text = (cat.STRATEGY_CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8")
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    broken = (folder / "ma_cross_akshare.yaml")
    broken.write_text(broken.read_text(encoding="utf-8").replace("generator: ma_cross",
                                                                 "generator: ma_crossing"))
    read = cat.read_catalogue(folder)
    assert [r.path.name for r in read.refused] == ["ma_cross_akshare.yaml"]
    assert read.refused[0].classic and not read.refused[0].may_trade(DATASET)
    assert deployment._strategy_of_dataset(read, DATASET) == "etf_rotation_akshare"


def test_a_classic_deployment_defines_the_rotations_assets_and_gate(
        shared_data: Path, tmp_path: Path) -> None:
    """The same asset keys and groups as the rotation of the same data; the approval gate
    builds on the classic target and is guarded by the classic walk-forward's blocking checks."""
    ledger = {"postgres_url": "postgresql+psycopg://postgres@127.0.0.1:5432/none"}

    def defs_of(strategy: str) -> dg.Definitions:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("ETF_STRATEGY", strategy)
            # from 2022: the rotation's 250-session warm-up leaves it windows too
            settings = _settings(shared_data, tmp_path / strategy, "2022-01-04"
                                 ).model_copy(update=ledger)
            return build_definitions(settings)

    classic_defs = defs_of("ma_cross_akshare")
    classic = classic_defs.resolve_asset_graph()
    rotation = defs_of("etf_rotation_akshare").resolve_asset_graph()
    # The deployment's own assets (the strategies beside it are under their names).
    groups = {k.to_user_string(): classic.get(k).group_name
              for k in classic.get_all_asset_keys() if len(k.path) == 1}
    assert groups == {k.to_user_string(): rotation.get(k).group_name
                      for k in rotation.get_all_asset_keys() if len(k.path) == 1}
    assert {"approved_signal", "positions_report"} <= set(groups)
    gate = classic.get(dg.AssetKey("approved_signal"))
    assert dg.AssetKey("target_portfolio") in gate.parent_keys
    blocking = {(c.asset_key.to_user_string(), c.name)
                for a in classic_defs.assets or [] if isinstance(a, dg.AssetsDefinition)
                for c in a.check_specs if c.blocking}
    assert {("wfo_results", WINNER_REPLAY_CHECK), ("oos_backtest", REPLAY_CHECK)} <= blocking

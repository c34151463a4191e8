"""What a researcher loads after a research rebuild: the daily IC series (factor_ic_daily) and the
out-of-sample targets, orders and positions of the stitched backtest (oos_positions), stored by
the Parquet IO manager with their metadata, and consistent with factor_ic and oos_backtest.

Runs the chain on the built-in sample market shortened to 2019–2021, as
test_walk_forward_pipeline does."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from assets.walk_forward import POSITIONS_CHECK
from orchestration.definitions import build_definitions, strategy_for
from orchestration.runs import full_history, rebuild_research, run_range
from orchestration.settings import Settings
from resources.deployment import deployed
from resources.parquet_io import PartitionedParquetIOManager


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, pg_instance: dg.DagsterInstance):
    settings = Settings(home=tmp_path_factory.mktemp("outputs_home"),
                        market_data={"sample_end": "2021-12-31"})
    defs = build_definitions(settings)
    start, end = full_history(defs)
    assert run_range(defs, pg_instance, start, end, log_level="WARNING").success
    results = rebuild_research(defs, pg_instance)
    assert all(r.success for r in results)
    return settings, defs, results


def _load(defs: dg.Definitions, name: str) -> pd.DataFrame:
    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    path = io.path_for(dg.AssetKey(name))
    assert path.exists(), path
    return pd.read_parquet(path)


def _metadata(result: dg.ExecuteInProcessResult, name: str) -> dict[str, object]:
    (event,) = [e for e in result.get_asset_materialization_events()
                if e.asset_key == dg.AssetKey(name)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_daily_ic_is_the_series_factor_ic_summarises(chain) -> None:
    settings, defs, results = chain
    daily = _load(defs, "factor_ic_daily")
    summary = _load(defs, "factor_ic")
    assert list(daily.columns) == ["date", "horizon", "factor", "ic"]
    assert set(daily["horizon"]) == set(strategy_for(settings).horizons)
    assert set(daily["factor"]) == set(summary["factor"])
    assert daily["ic"].between(-1, 1).all() and daily["ic"].notna().all()
    assert not daily.duplicated(["date", "horizon", "factor"]).any()
    stats = daily.groupby(["factor", "horizon"])["ic"].agg(["mean", "size"])
    expected = summary.set_index(["factor", "horizon"])[["mean_ic", "count"]]
    joined = expected.join(stats, how="outer")
    np.testing.assert_allclose(joined["mean"], joined["mean_ic"], rtol=1e-12, atol=1e-15)
    assert (joined["size"] == joined["count"]).all()
    meta = _metadata(results[0], "factor_ic_daily")
    assert meta["dagster/row_count"] == len(daily)
    assert (meta["first_date"], meta["last_date"]) == (
        f"{daily['date'].min():%Y-%m-%d}", f"{daily['date'].max():%Y-%m-%d}")
    assert meta["factor_count"] == daily["factor"].nunique()
    assert [c.name for c in meta["preview"].schema.columns] == [  # type: ignore[attr-defined]
        "date", "horizon", "factor", "ic"]
    assert "momentum_20" in {r.data["factor"] for r in meta["mean_ic"].records}  # type: ignore[attr-defined]


def test_oos_positions_are_the_stitched_backtest_per_session_and_fund(chain) -> None:
    settings, defs, results = chain
    rows = _load(defs, "oos_positions")
    daily = _load(defs, "oos_backtest").set_index("date")
    portfolio = results[2]
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
              for e in portfolio.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks[POSITIONS_CHECK]
    assert {"date", "window", "symbol", "target_weight", "order_side", "order_units",
            "order_price", "order_commission", "order_blocked", "order_reason", "units",
            "value", "weight"} <= set(rows.columns)
    assert set(rows["date"]) <= set(daily.index)
    assert rows.set_index(["date", "symbol"]).index.is_unique
    # Held value plus cash is the equity; held weights are the invested share.
    value = rows.groupby("date")["value"].sum().reindex(daily.index, fill_value=0.0)
    np.testing.assert_allclose(value + daily["cash"], daily["equity"], rtol=1e-9)
    invested = rows.groupby("date")["weight"].sum().reindex(daily.index, fill_value=0.0)
    np.testing.assert_allclose(invested, daily["invested"], rtol=1e-9, atol=1e-12)
    # Decisions are whole portfolios within the long-only budget; fills are whole lots.
    decided = rows.dropna(subset=["target_weight"]).groupby("date")["target_weight"].sum()
    assert len(decided) and (decided <= 1 + 1e-9).all()
    filled = rows.loc[rows["order_blocked"].eq(False).fillna(False).astype(bool)]
    lot = strategy_for(settings).cost_model.lot_size
    assert len(filled) and np.allclose(filled["order_units"] % lot, 0, atol=1e-6)
    assert (rows["window"].dropna().isin(set(daily["window"].dropna()))).all()
    meta = _metadata(portfolio, "oos_positions")
    orders = int(meta["orders_filled"]) + int(meta["orders_blocked"])
    assert orders == _metadata(portfolio, "oos_backtest")["orders"]
    assert orders == rows["order_side"].notna().sum()
    header = [c.name for c in meta["preview"].schema.columns]  # type: ignore[attr-defined]
    assert "symbol" in header and "target_weight" in header and "order_side" in header


def test_oos_positions_hold_the_orders_mlflow_logged(chain, tmp_path: Path) -> None:
    settings, defs, _ = chain
    rows = _load(defs, "oos_positions")
    client = MlflowClient(tracking_uri=settings.resolved_mlflow_uri)
    experiment = client.get_experiment_by_name(strategy_for(settings).experiment_name)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id],
                                filter_string="attributes.run_name = 'oos backtest'")
    logged = pd.read_csv(client.download_artifacts(run.info.run_id, "orders.csv", str(tmp_path)),
                         dtype={"symbol": str}, parse_dates=["date"])
    stored = rows.dropna(subset=["order_side"]).sort_values(["date", "symbol"])
    logged = logged.sort_values(["date", "symbol"])
    assert list(stored["symbol"]) == list(logged["symbol"])
    assert list(stored["order_side"]) == list(logged["side"])
    np.testing.assert_allclose(stored["order_units"], logged["units"], rtol=1e-12)
    assert run.data.tags["git.commit"] and run.data.tags["git.dirty"] in {"true", "false"}

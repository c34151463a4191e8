"""`make demo`: the whole pipeline on the embedded default, then a summary of what it produced.

Local SQLite Dagster instance under ``.etf_home/dagster`` (the one `make dev` shows), Parquet
under ``.etf_home/storage``, the built-in generated sample market; no servers, no network.
"""

from __future__ import annotations

import os
import sys
import time

import dagster as dg
import pandas as pd

from orchestration.definitions import build_definitions, strategy_for
from orchestration.instance import prepare_local_instance
from orchestration.runs import full_history, rebuild_research, run_range, window_keys
from orchestration.settings import load_settings
from resources.deployment import deployed
from resources.market_data import MarketDataResource
from resources.parquet_io import PartitionedParquetIOManager


def main() -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    settings = load_settings()
    home = prepare_local_instance(settings)
    defs = build_definitions(settings)
    start, end = full_history(defs)
    market_data = deployed(defs, "market_data", MarketDataResource)
    print(f"market data : {market_data.label}")
    print(f"instance    : {home} (SQLite)")
    print(f"storage     : {settings.resolved_storage_root}")
    print(f"running     : market_data_job over {start} .. {end} as one run")
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = run_range(defs, instance, start, end, log_level="INFO")
        elapsed = time.perf_counter() - started
        checks = [
            e.asset_check_evaluation_data
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        passed = sum(1 for c in checks if c.passed)
        print(f"run         : {result.run_id} {'succeeded' if result.success else 'FAILED'} "
              f"in {elapsed:.1f}s")
        print(f"checks      : {passed}/{len(checks)} passed")
        for c in checks:
            if not c.passed:
                print(f"  FAILED {c.check_name}: {c.metadata.get('first_failure')}")
        if not result.success:
            _print_failures(result)
            return 1
        print("running     : research_job, walk_forward_job (every window, one run), "
              "portfolio_job")
        started = time.perf_counter()
        for research in rebuild_research(defs, instance):
            ok = "succeeded" if research.success else "FAILED"
            print(f"  {research.dagster_run.job_name:<17}: {ok}")
            if not research.success:
                _print_failures(research)
                return 1
        print(f"research    : {time.perf_counter() - started:.1f}s")

    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    for name in ("raw_bars", "adjusted_bars", "cross_sections"):
        folder = io.path_for(dg.AssetKey(name), "x").parent
        stored = list(folder.glob("*.parquet"))
        print(f"{name:<14}: {len(stored)} partition files in {folder}")
    last = io.load_partitions(dg.AssetKey("cross_sections"), [end])
    pd.set_option("display.width", 160)
    print(f"\ncross-section of {end} ({len(last)} eligible funds):")
    print(last.drop(columns=["date"]).round(4).to_string(index=False))
    ic = pd.read_parquet(io.path_for(dg.AssetKey("factor_ic")))
    top = ic.loc[ic["horizon"] == 5].assign(abs_icir=lambda t: t["icir"].abs())
    top = top.sort_values("abs_icir", ascending=False).head(8)
    print("\nfactor screening, horizon 5 sessions (T1_OPEN), strongest |ICIR| first:")
    print(top[["factor", "mean_ic", "icir", "t_nw", "p_value", "hit_rate"]].round(4)
          .to_string(index=False))
    reasons = pd.read_parquet(io.path_for(dg.AssetKey("selected_factors")))
    chosen = reasons.loc[reasons["selected"], "factor"].tolist()
    print(f"selected factors: {chosen or 'none pass the SPEC §5 screen on this market'}")

    results = io.load_partitions(dg.AssetKey("wfo_results"), window_keys(defs))
    print(f"\nwalk-forward: {len(results)} windows, frozen winner per window "
          "(in-sample score; out-of-sample result):")
    print(results[["window", "factors", "top_n", "rebalance_every", "weighting",
                   "in_sample_score", "oos_total_return", "oos_max_drawdown"]]
          .round(4).to_string(index=False))
    daily = pd.read_parquet(io.path_for(dg.AssetKey("oos_backtest")))
    first, last_row = daily.iloc[0], daily.iloc[-1]
    print(f"\nstitched out-of-sample backtest {first['date']:%Y-%m-%d} .. "
          f"{last_row['date']:%Y-%m-%d}: equity {first['equity']:,.0f} -> "
          f"{last_row['equity']:,.0f} CNY, max drawdown {daily['drawdown'].min():.2%}")
    bench = [c for c in daily.columns if c.startswith("benchmark_")]
    for column in bench:
        print(f"  {column.removeprefix('benchmark_'):<22}: {last_row[column] - 1:+.2%}")
    target = pd.read_parquet(io.path_for(dg.AssetKey("target_portfolio")))
    held = target.loc[target["weight"] > 0]
    print(f"\ntarget portfolio for the session after {target['date'].iloc[0]:%Y-%m-%d} "
          f"(window {target['window'].iloc[0]}):")
    print(held[["symbol", "weight", "reason"]].round(4).to_string(index=False))
    print(f"cash: {1 - held['weight'].sum():.2%}")
    experiment = strategy_for(settings).experiment_name
    print(f"MLflow      : {settings.resolved_mlflow_uri} (experiment {experiment})")
    if settings.postgres_url:
        status = _execute(settings, end)
        if status:
            return status
    else:
        print("\nexecution   : not run (the ledger needs PostgreSQL: set ETF_POSTGRES_URL="
              "postgresql+psycopg://user@host/db to approve the signal and paper-trade it)")
    print("\nInspect it in the UI: make dev  (same instance)")
    return 0


def _execute(settings, last_session: str) -> int:
    """approved_signal → the sensor's run request → execution_job, on the sample's last session
    (the clock is pinned there unless ETF_EXECUTION__AS_OF says otherwise)."""
    from trading.ledger import Ledger

    if not settings.execution.as_of:
        settings = settings.model_copy(update={"execution": settings.execution.model_copy(
            update={"as_of": last_session})})
    defs = build_definitions(settings)
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with dg.DagsterInstance.get() as instance:
        approval = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, run_config=quiet, asset_selection=[dg.AssetKey("approved_signal")],
            raise_on_error=False)
        if not approval.success:
            _print_failures(approval)
            return 1
        meta = approval.asset_materializations_for_node("approved_signal")[-1].metadata
        print(f"\nsignal      : {meta['signal_id'].value} {meta['status'].value.upper()}")
        if meta["status"].value != "approved":
            print(meta["reasons"].value)
            return 0
        sensor = defs.resolve_sensor_def("approved_signal_sensor")
        with dg.build_sensor_context(instance=instance, definitions=defs,
                                     resources={"ledger": defs.resources["ledger"]}) as tick:
            requests = [r for r in sensor(tick).run_requests
                        if r.run_key == meta["signal_id"].value]
        for request in requests[-1:]:
            run = defs.resolve_job_def("execution_job").execute_in_process(
                instance=instance, run_config={**quiet, **request.run_config},
                tags=request.tags, raise_on_error=False)
            if not run.success:
                _print_failures(run)
                return 1
    ledger = Ledger(settings.postgres_url)
    orders = ledger.orders(signal_id=str(meta["signal_id"].value))
    print(f"orders      : {len(orders)} in the ledger (paper venue; they fill at the next "
          "open once its bar exists)")
    for o in orders:
        print(f"  {o.side:<4} {o.symbol} {o.quantity:>9,d} @ ref {o.reference_price:.3f} "
              f"{o.status}")
    ledger.dispose()
    return 0


def _print_failures(result: dg.ExecuteInProcessResult) -> None:
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            print(event.message)


if __name__ == "__main__":
    sys.exit(main())

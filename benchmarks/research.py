"""Full research rebuild of the 60-fund AKShare set: wall time and peak memory.

One process, the way a rebuild launched from the UI runs its three jobs on a PostgreSQL-backed
Dagster instance: research_job (factors, rank IC, selection), walk_forward_job (every window as
one run: in-sample screen, combination search, vectorbt check of the finalists, out-of-sample
result, an MLflow run each) and portfolio_job (stitched out-of-sample backtest, target
portfolio). The market data is backfilled first and is not part of the timing.

The baseline, in the same process and on the same stored bars, is the same research done as a
script with the Dagster-free package: no lineage, no storage, no MLflow. The printed ratio is
pipeline / baseline (the price of orchestration). Targets: ≤ 180 s and ≤ 2 GB peak.

    python -m benchmarks.research
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

from benchmarks.scratch import scratch_postgres_home

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ETF_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASET = "cn_etf_akshare_qfq_2020"
TARGET_SECONDS = 180.0
TARGET_MB = 2048.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _baseline(defs: object) -> tuple[float, int]:
    """The research chain as a script on the stored adjusted bars."""
    import dagster as dg

    from assets.walk_forward import search_space, warmup_sessions
    from orchestration.definitions import strategy_for
    from orchestration.settings import load_settings
    from resources.deployment import deployed
    from resources.market_data import MarketDataResource
    from resources.parquet_io import PartitionedParquetIOManager
    from rotation import walkforward as wf
    from rotation.cross_section import CrossSectionConfig

    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    market = deployed(defs, "market_data", MarketDataResource)
    key = dg.AssetKey("adjusted_bars")
    started = time.perf_counter()
    bars = io.load_partitions(key, io.stored_partitions(key))
    strategy = strategy_for(load_settings())
    u = strategy.universe
    universe = wf.resolve_universe(bars["symbol"].unique(), exclude=u.exclude,
                                   benchmark=u.benchmark, defensive=u.defensive)
    data = wf.prepare(bars, strategy.factor_specs, CrossSectionConfig(), universe,
                      market.instruments(), strategy.horizons)
    pcfg, bcfg, space = strategy.portfolio_config(), strategy.backtest_config(), \
        search_space(strategy)
    panel = data.search_panel(pcfg)
    winners = []
    windows = wf.windows_for(data, strategy.wfo_config, warmup_sessions(strategy))
    for window in windows:
        screen = wf.screen_window(data, window, strategy.screening_horizon,
                                  strategy.select_kwargs(), space.min_factors)
        chosen = screen.loc[screen["selected"], "factor"].tolist()
        result = wf.evaluate_window(data, panel, window, chosen, space, bcfg)
        winners.append((window, result.winner))
    wf.oos_backtest(data, wf.stitched_targets(data, pcfg, winners), bcfg)
    last_window, last_winner = winners[-1]
    wf.latest_targets(data, pcfg, last_winner, last_window)
    return time.perf_counter() - started, len(windows)


def main() -> int:
    import dagster as dg

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ["ETF_STRATEGY"] = "etf_rotation_akshare"
    os.environ["ETF_MARKET_DATA__SOURCE"] = "files"
    os.environ["ETF_MARKET_DATA__DATASET"] = DATASET
    os.environ["ETF_MARKET_DATA__FILES_ROOT"] = str(SHARED / DATASET)
    from orchestration.definitions import build_definitions
    from orchestration.instance import configure_event_batching
    from orchestration.runs import full_history, rebuild_research, run_range, window_keys
    from orchestration.settings import load_settings

    configure_event_batching()
    with scratch_postgres_home() as scratch:
        os.environ["ETF_HOME"] = str(scratch.root)
        settings = load_settings()
        defs = build_definitions(settings)
        with dg.DagsterInstance.from_config(str(scratch.dagster_home)) as instance:
            start, end = full_history(defs)
            t0 = time.perf_counter()
            assert run_range(defs, instance, start, end, log_level="WARNING").success
            market_s, market_mb = time.perf_counter() - t0, _peak_mb()
            t0 = time.perf_counter()
            results = rebuild_research(defs, instance)
            pipeline_s = time.perf_counter() - t0
            ok = all(r.success for r in results) and len(results) == 3
            pipeline_mb = _peak_mb()
            baseline_s, windows = _baseline(defs)
        print(f"research rebuild of {DATASET} ({start}..{end}), {windows} walk-forward "
              f"windows, {len(window_keys(defs))} window partitions, cpus {os.cpu_count()}")
        print(f"  market backfill (not timed as research): {market_s:.1f} s, "
              f"peak RSS {market_mb:.0f} MB")
        for r in results:
            print(f"  {r.dagster_run.job_name:<17} {'ok' if r.success else 'FAILED'}")
        print(f"  pipeline (3 jobs, PostgreSQL instance, MLflow): {pipeline_s:.1f} s, "
              f"peak RSS {pipeline_mb:.0f} MB")
        print(f"  baseline (same chain as a script)             : {baseline_s:.1f} s")
        print(f"  ratio pipeline / baseline: {pipeline_s / baseline_s:.2f}x")
        met_s = "MET" if pipeline_s <= TARGET_SECONDS else "MISSED"
        met_mb = "MET" if pipeline_mb <= TARGET_MB else "MISSED"
        print(f"  target <= {TARGET_SECONDS:.0f} s: {met_s}; target <= {TARGET_MB:.0f} MB "
              f"peak: {met_mb}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

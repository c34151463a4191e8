"""Full-history single-run backfill of the real datasets: wall time and peak memory.

Each measurement runs in a fresh subprocess (so peak RSS is its own) against a fresh
PostgreSQL-backed Dagster instance, the way a backfill launched from the UI runs. The baseline,
in the same subprocess, is the notebook way of doing the same work with plain pandas: read every
file, apply the factors, compute the cross-section fields — no quality gates, no lineage, no
storage. The printed ratio is pipeline / baseline.

    python -m benchmarks.backfill [dataset ...]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.scratch import scratch_postgres_home

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ETF_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASETS = ("cn_etf_morphkyan_raw", "cn_etf_akshare_qfq_2020")


def _baseline(dataset: str) -> dict[str, float]:
    """Plain pandas: what a research script does with the same files."""
    import pandas as pd

    from rotation.adjust import adjust_bars
    from rotation.cross_section import CrossSectionConfig, build_cross_sections
    from rotation.sources.files import FileMarketSource, load_dataset_spec

    started = time.perf_counter()
    spec = load_dataset_spec(ROOT / "config" / "datasets" / f"{dataset}.yaml")
    bars = FileMarketSource(SHARED / dataset, spec).load().bars
    panel = build_cross_sections(adjust_bars(bars), CrossSectionConfig())
    assert len(panel) and isinstance(panel, pd.DataFrame)
    return {"seconds": time.perf_counter() - started, "rows": float(len(bars))}


def _pipeline(dataset: str) -> dict[str, float]:
    import dagster as dg

    from orchestration.definitions import build_definitions
    from orchestration.runs import full_history, run_range
    from orchestration.settings import load_settings

    with scratch_postgres_home() as scratch:
        settings = load_settings(
            home=scratch.root / "etf",
            market_data={"source": "files", "dataset": dataset,
                         "files_root": str(SHARED / dataset)},
        )
        defs = build_definitions(settings)
        start, end = full_history(defs)
        with dg.DagsterInstance.from_config(str(scratch.dagster_home)) as instance:
            started = time.perf_counter()
            result = run_range(defs, instance, start, end)
            seconds = time.perf_counter() - started
            assert result.success, f"{dataset}: backfill failed"
            steps = {
                e.step_key: e.event_specific_data.duration_ms / 1000  # type: ignore[union-attr]
                for e in result.all_events if e.event_type_value == "STEP_SUCCESS"
            }
        keys = defs.resolve_job_def("market_data_job").partitions_def.get_partition_keys()
        partitions = sum(1 for k in keys if start <= k <= end)
        size = scratch.database_mb()
    return {"seconds": seconds, "partitions": float(partitions), "event_db_mb": size,
            **{f"step_{k}_s": v for k, v in steps.items()}}


def _dagster_floor(partitions: int) -> float:
    """Seconds of a single-run backfill of three chained daily assets that do nothing, over
    ``partitions`` partitions."""
    import dagster as dg

    every = dg.DailyPartitionsDefinition(start_date="1990-01-01", end_date="2100-01-01")
    keys = every.get_partition_keys()[:partitions + 1]
    # Exactly ``partitions`` partitions (the end date is exclusive), all in the run's range.
    days = dg.DailyPartitionsDefinition(start_date=keys[0], end_date=keys[-1])
    keys = keys[:-1]

    class Nothing(dg.ConfigurableIOManager):
        def handle_output(self, context: dg.OutputContext, obj: object) -> None:
            return None

        def load_input(self, context: dg.InputContext) -> None:
            return None

    def idle(name: str, upstream: str | None) -> dg.AssetsDefinition:
        @dg.asset(name=name, partitions_def=days, backfill_policy=dg.BackfillPolicy.single_run(),
                  deps=[upstream] if upstream else None, io_manager_key="nothing")
        def _asset() -> None:
            return None
        return _asset

    chain = [idle("first", None), idle("second", "first"), idle("third", "second")]
    job = dg.Definitions(
        assets=chain, resources={"nothing": Nothing()},
        jobs=[dg.define_asset_job("floor", partitions_def=days,
                                   executor_def=dg.in_process_executor)],
    ).resolve_job_def("floor")
    with scratch_postgres_home() as scratch, \
            dg.DagsterInstance.from_config(str(scratch.dagster_home)) as instance:
        started = time.perf_counter()
        result = job.execute_in_process(
            instance=instance, run_config={"loggers": {"console": {"config": {
                "log_level": "WARNING"}}}},
            tags={"dagster/asset_partition_range_start": keys[0],
                  "dagster/asset_partition_range_end": keys[-1]})
        seconds = time.perf_counter() - started
    assert result.success
    return seconds


def _measure(dataset: str) -> dict[str, float]:
    from orchestration.instance import configure_event_batching

    configure_event_batching()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    base = _baseline(dataset)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pipe = _pipeline(dataset)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    floor = _dagster_floor(int(pipe["partitions"]))
    return {"baseline_s": base["seconds"], "baseline_peak_mb": base_rss, "rows": base["rows"],
            "pipeline_s": pipe.pop("seconds"), "peak_rss_mb": rss, "floor_s": floor, **pipe}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        print(json.dumps(_measure(argv[1])))
        return 0
    env = dict(os.environ)
    if argv[:1] == ["--engine"]:
        if len(argv) < 2:
            print("--engine: name the quality engine (auto, gx or pandera)", file=sys.stderr)
            return 2
        env["ETF_QUALITY__ENGINE"], argv = argv[1], argv[2:]
    for dataset in argv or DATASETS:
        out = subprocess.run([sys.executable, "-m", "benchmarks.backfill", "--child", dataset],
                             cwd=ROOT, capture_output=True, text=True, check=False, env=env)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return out.returncode
        m = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{dataset}: {int(m['rows'])} bars, {int(m['partitions'])} day partitions")
        print(f"  pipeline (single-run backfill, PostgreSQL instance): {m['pipeline_s']:.1f} s, "
              f"peak RSS {m['peak_rss_mb']:.0f} MB, event log {m['event_db_mb']:.0f} MB")
        print("  steps: " + ", ".join(f"{k[5:-2]} {v:.1f} s" for k, v in m.items()
                                      if k.startswith("step_")))
        print(f"  baseline (plain pandas, same process): {m['baseline_s']:.1f} s, "
              f"peak RSS {m['baseline_peak_mb']:.0f} MB")
        print(f"  ratio pipeline/baseline: {m['pipeline_s'] / m['baseline_s']:.1f}x wall "
              f"(quality engine: {env.get('ETF_QUALITY__ENGINE', 'auto')})")
        per_event = m["floor_s"] / (3 * m["partitions"]) * 1e3
        print("  Dagster alone (3 assets doing nothing: no data, metadata or checks; as many "
              f"partitions): {m['floor_s']:.1f} s, "
              f"{per_event:.2f} ms per partition and asset, "
              f"{m['floor_s'] / m['baseline_s']:.1f}x the baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

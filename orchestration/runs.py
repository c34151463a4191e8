"""Launch the market-data job over a partition range as one run (what a single-run backfill
launched from the UI executes), for the demo, the benchmarks and the tests."""

from __future__ import annotations

import dagster as dg

from resources.deployment import deployed
from resources.market_data import MarketDataResource

PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def full_history(defs: dg.Definitions) -> tuple[str, str]:
    """First and last partition key of the configured source's history."""
    market_data = deployed(defs, "market_data", MarketDataResource)
    job = defs.resolve_job_def("market_data_job")
    keys = job.partitions_def.get_partition_keys()  # type: ignore[union-attr]
    start = max(market_data.history_start, keys[0])
    end = min(market_data.history_end, keys[-1])
    return start, end


def run_range(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    start: str,
    end: str,
    *,
    job_name: str = "market_data_job",
    raise_on_error: bool = False,
    log_level: str = "DEBUG",
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def(job_name)
    return job.execute_in_process(
        instance=instance,
        tags={RANGE_START_TAG: start, RANGE_END_TAG: end},
        raise_on_error=raise_on_error,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )


def window_keys(defs: dg.Definitions, prefix: str = "") -> list[str]:
    """Every walk-forward window partition key (of the strategy whose jobs are ``prefix``ed:
    orchestration.strategy_stage)."""
    job = defs.resolve_job_def(f"{prefix}walk_forward_job")
    return list(job.partitions_def.get_partition_keys())  # type: ignore[union-attr]


def rebuild_research(defs: dg.Definitions, instance: dg.DagsterInstance, *,
                     log_level: str = "WARNING", prefix: str = ""
                     ) -> list[dg.ExecuteInProcessResult]:
    """Factors and screening, every walk-forward window as one run, then the portfolio; stops
    at the first failed run (its result is the last in the list). ``prefix``: of another
    strategy's jobs (orchestration.strategy_stage)."""
    config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    results = []
    keys = window_keys(defs, prefix)
    repository = defs.get_repository_def()
    for name, tags in (("research_job", {}),
                       ("walk_forward_job", {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}),
                       ("portfolio_job", {})):
        if not repository.has_job(prefix + name):   # a classic strategy beside: no screening
            continue
        result = defs.resolve_job_def(prefix + name).execute_in_process(
            instance=instance, tags=tags, raise_on_error=False, run_config=config)
        results.append(result)
        if not result.success:
            break
    return results

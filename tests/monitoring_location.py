"""Code location served by `dagster api grpc` in tests/test_run_monitoring.py.

Jobs shaped like ``execution_job`` (in-process executor, tagged with ``etf/account``) whose op
does "slow work": it holds until the test drops a release file, so the test decides how long an
attempt runs and can kill its worker meanwhile. Every attempt leaves a marker named after its
run id holding the worker's pid, so the test can tell the attempts apart and find the process.

``pooled_account_job`` runs the same op in a concurrency pool (limit 1: the instance's
``concurrency.pools.default_limit``), as ledger and broker steps are meant to, so a killed worker
leaves a claimed slot behind; ``account_job`` has no pool, so only the account limit queues it.
"""

import os
import sys
import time
from pathlib import Path

import dagster as dg

ACCOUNT_TAG = "etf/account"
DEFAULT_ACCOUNT = "monitoring-test"
RELEASE_FILE = "release"
POOL = "etf_monitoring_test"


class HoldConfig(dg.Config):
    markers: str                  # directory of the per-attempt markers and the release file
    hold_seconds: float = 60.0    # upper bound: an attempt never waits longer than this


def hold_until_released(context: dg.OpExecutionContext, config: HoldConfig) -> None:
    markers = Path(config.markers)
    # Written first: the test waits for it to know the worker is up, and reads the pid from it.
    (markers / f"{context.run_id}.started").write_text(str(os.getpid()), encoding="utf-8")
    # Whether the worker started with the run-worker preload (tests/test_code_server.py): this
    # file never imports it, so only a worker forked from orchestration.code_server has it.
    (markers / f"{context.run_id}.preloaded").write_text(
        str("orchestration.run_worker_preload" in sys.modules), encoding="utf-8")
    deadline = time.monotonic() + config.hold_seconds
    while not (markers / RELEASE_FILE).exists():
        if time.monotonic() > deadline:
            # A step failure, which run_retries deliberately does not retry.
            raise dg.Failure(f"not released within {config.hold_seconds} s")
        time.sleep(0.1)
    (markers / f"{context.run_id}.done").write_text(str(os.getpid()), encoding="utf-8")


hold = dg.op(name="hold")(hold_until_released)
hold_in_pool = dg.op(name="hold_in_pool", pool=POOL)(hold_until_released)


@dg.job(tags={ACCOUNT_TAG: DEFAULT_ACCOUNT}, executor_def=dg.in_process_executor)
def account_job() -> None:
    hold()


@dg.job(tags={ACCOUNT_TAG: DEFAULT_ACCOUNT}, executor_def=dg.in_process_executor)
def pooled_account_job() -> None:
    hold_in_pool()


# The op of each job, for its run config.
HOLD_OP = {account_job.name: hold.name, pooled_account_job.name: hold_in_pool.name}

defs = dg.Definitions(jobs=[account_job, pooled_account_job])

"""The platform as our users reach it: `dagster dev` (webserver and daemon) on a
PostgreSQL-backed instance, driven through DagsterGraphQLClient and the GraphQL API.

Launches ``daily_job`` for the signal day, a partition backfill of ``raw_bars`` over a date
range, waits for the backfill and for the execution run that ``approved_signal_sensor`` launches
from the daemon, checks the ledger, and shuts everything down."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster_dev import dagster_dev, wait_for
from dagster_graphql import DagsterGraphQLClient

from trading.ledger import Ledger
from trading.models import OrderStatus, SignalStatus

ROOT = Path(__file__).resolve().parents[1]
BACKFILL_RANGE = ["2023-12-18", "2023-12-19", "2023-12-20", "2023-12-21", "2023-12-22"]

LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""
BACKFILL_STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status isAssetBackfill }
    ... on PythonError { message }
  }
}"""
RUNS = """
query Runs($job: String!) {
  runsOrError(filter: {pipelineName: $job}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}"""
RESOURCES = """
query Resources($selector: RepositorySelector!) {
  allTopLevelResourceDetailsOrError(repositorySelector: $selector) {
    __typename
    ... on ResourceDetailsList { results { name description
      configuredValues { key value type } } }
  }
}"""
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on RunConfigValidationInvalid { errors { message } }
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}"""
SELECTOR = {"repositoryLocationName": "etf_rotation", "repositoryName": "__repository__"}
# Trust auth ignores the password: it is there to prove the UI never shows it.
LEDGER_PASSWORD = "s3cret-ledger-pw"
@pytest.fixture(name="dagster_dev")
def dagster_dev_fixture(execution_market, ledger_url, tmp_path: Path) -> Iterator[tuple[
        DagsterGraphQLClient, int, str]]:
    market = execution_market
    user, rest = ledger_url.split("://", 1)[1].split("@", 1)
    ledger_url = f"postgresql+psycopg://{user.split(':')[0]}:{LEDGER_PASSWORD}@{rest}"
    settings = market.settings(ledger_url)
    env = {**os.environ,
           "DAGSTER_HOME": str(market.home / "dagster"),
           "ETF_HOME": str(settings.home),
           "ETF_PARTITIONS_START": str(settings.partitions_start),
           "ETF_POSTGRES_URL": ledger_url,
           "ETF_REDIS_URL": str(settings.redis_url),
           "ETF_CACHE_SECRET": settings.cache_secret.get_secret_value()
           if settings.cache_secret else "",
           "ETF_EXECUTION__AS_OF": market.signal_day,
           "ETF_MARKET_DATA__SOURCE": "files",
           "ETF_MARKET_DATA__DATASET": str(market.dataset),
           "ETF_MARKET_DATA__FILES_ROOT": str(market.shared / "cn_etf_morphkyan_raw"),
           "GX_ANALYTICS_ENABLED": "false"}
    with dagster_dev(env, tmp_path / "dagster_dev.log") as dev:
        yield dev.client, dev.port, ledger_url


def test_ui_path_daily_job_backfill_sensor_execution(dagster_dev, execution_market) -> None:
    client, _, ledger_url = dagster_dev
    market = execution_market

    # 0. The UI shows no resource configuration (no secret) and refuses launch config that
    # names a resource: the controls are the deployment's.
    found = client._execute(RESOURCES, {"selector": SELECTOR})[
        "allTopLevelResourceDetailsOrError"]
    assert found["__typename"] == "ResourceDetailsList", found
    assert {r["name"] for r in found["results"]} >= {"ledger", "execution", "clock", "cache"}
    assert all(r["configuredValues"] == [] for r in found["results"])
    assert LEDGER_PASSWORD not in str(found)
    for resource, config in (("execution", {"kill_switch": False}),
                             ("clock", {"as_of": "2099-12-31"}),
                             ("ledger", {"url": "postgresql+psycopg://postgres@127.0.0.1/x"})):
        refused = client._execute(LAUNCH, {"params": {
            "selector": {**SELECTOR, "jobName": "execution_job"},
            "runConfigData": {"ops": {"execute_signal_op": {"config": {"signal_id": "x"}}},
                              "resources": {resource: {"config": config}}}}})["launchRun"]
        assert refused["__typename"] == "RunConfigValidationInvalid", refused

    # 1. daily_job for the signal day, as the schedule (or a user) launches it.
    run_id = client.submit_job_execution(
        "daily_job", tags={"dagster/partition": market.signal_day})
    status = wait_for("daily_job", lambda: (s := client.get_run_status(run_id).value) in {
        "SUCCESS", "FAILURE", "CANCELED"} and s, 600, every=3)
    assert status == "SUCCESS"

    # 2. A partition backfill of raw_bars over a week, through the GraphQL API.
    launched = client._execute(LAUNCH_BACKFILL, {"params": {
        "partitionNames": BACKFILL_RANGE, "assetSelection": [{"path": ["raw_bars"]}],
        "fromFailure": False}})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def backfill_done() -> str | None:
        state = client._execute(BACKFILL_STATUS, {"id": backfill_id})
        status = state["partitionBackfillOrError"]["status"]
        return status if status not in {"REQUESTED", "CANCELING", "FAILING"} else None

    assert wait_for("the raw_bars backfill", backfill_done, 600, every=3) in {
        "COMPLETED", "COMPLETED_SUCCESS"}

    # 3. The daemon's sensor hands the approved signal to execution_job, exactly once.
    ledger = Ledger(ledger_url)
    try:
        signals = ledger.signals(status=SignalStatus.APPROVED)
        assert len(signals) == 1
        signal_id = signals[0].signal_id

        def execution_runs() -> list[dict[str, Any]]:
            runs = client._execute(RUNS, {"job": "execution_job"})["runsOrError"]["results"]
            return [r for r in runs
                    if {"key": "dagster/run_key", "value": signal_id} in r["tags"]
                    and r["status"] in {"SUCCESS", "FAILURE", "CANCELED"}]

        finished = wait_for("the sensor-launched execution run", execution_runs, 600, every=5)
        assert [r["status"] for r in finished] == ["SUCCESS"]
        tags = {t["key"]: t["value"] for t in finished[0]["tags"]}
        assert tags["dagster/sensor_name"] == "approved_signal_sensor"

        # 4. The ledger: orders planned and submitted for the next session, audited.
        orders = ledger.orders(signal_id=signal_id)
        assert orders and all(o.status is OrderStatus.SUBMITTED for o in orders)
        assert all(str(o.session) == market.fill_day for o in orders)
        actions = [r["action"] for r in ledger.audit_log()]
        assert actions.count("signal_approved") == 1
        assert actions.count("order_submitted") == len(orders)
        # The execution read the session's bars from the cache that daily_job's raw_bars
        # filled, instead of parsing the source files again.
        outputs = market.instance.all_logs(finished[0]["runId"],
                                           of_type=dg.DagsterEventType.STEP_OUTPUT)
        (metadata,) = [e.dagster_event.step_output_data.metadata for e in outputs]
        assert metadata["cache"].value == "ok"
        assert (metadata["cache_hits"].value, metadata["cache_misses"].value) == (1, 0)
        # Later daemon ticks launch nothing more for the same signal.
        time.sleep(35)
        runs = client._execute(RUNS, {"job": "execution_job"})["runsOrError"]["results"]
        assert [r["runId"] for r in runs
                if {"key": "dagster/run_key", "value": signal_id} in r["tags"]] == [
            finished[0]["runId"]]
    finally:
        ledger.dispose()

"""Hot reload of the strategy folder (issue 15 item 5), end to end as our users reach it:
`dagster dev` (webserver and daemon) on a PostgreSQL-backed instance, driven through the
webserver's GraphQL API only.

A strategy file added while it runs appears after ``reloadRepositoryLocation`` with its assets,
group, jobs and schedule, without restarting the webserver or the daemon; a broken file (invalid
YAML, or a bad field) is refused with file, field and why while the location still loads; a
strategy whose file breaks after it validated keeps its last valid version.

On the built-in sample market shortened to 2019-2021 (one complete window of the sample
strategy), without a ledger, nothing materialised."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import PG_SERVER, scratch_database
from dagster_dev import dagster_dev, location_loaded, wait_for
from dagster_graphql import DagsterGraphQLClient

from orchestration.dagster_storage import instance_yaml
from rotation.config_paths import STRATEGY_CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
LOCATION_NAME = "etf_rotation"
SELECTOR = {"repositoryLocationName": LOCATION_NAME, "repositoryName": "__repository__"}
PRIMARY = "etf_rotation_sample"
SECOND = "sample_momentum"
STAGE_ASSETS = ("factor_ic", "selected_factors", "wfo_windows", "wfo_results", "oos_backtest",
                "oos_positions", "target_portfolio")
STAGE_JOBS = ("research_job", "walk_forward_job", "portfolio_job")

RELOAD = """
mutation Reload($location: String!) {
  reloadRepositoryLocation(repositoryLocationName: $location) {
    __typename
    ... on WorkspaceLocationEntry { name loadStatus
      locationOrLoadError { __typename ... on PythonError { message } } }
    ... on PythonError { message }
  }
}"""
ASSETS = """
query { assetNodes { assetKey { path } groupName description
  metadataEntries { label __typename
    ... on MarkdownMetadataEntry { mdStr }
    ... on IntMetadataEntry { intValue }
    ... on JsonMetadataEntry { jsonString }
    ... on TableMetadataEntry { table { records } } } } }"""
REPOSITORY = """
query Repository($selector: RepositorySelector!) {
  repositoryOrError(repositorySelector: $selector) {
    __typename
    ... on Repository { jobs { name } schedules { name pipelineName } }
    ... on PythonError { message }
  }
}"""
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message }
  }
}"""
START_SCHEDULE = """
mutation Start($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
  }
}"""
SCHEDULE = """
query Schedule($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    __typename
    ... on Schedule { scheduleState { status } }
    ... on PythonError { message }
  }
}"""
DAEMONS = """
query { instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"""
# A small second strategy on the sample data: few factors, short windows, a small search.
SMALL = {"factors": ["momentum_20", "momentum_60", "volatility_20"],
         "search": {"min_factors": 2, "max_factors": 2, "top_n": [2], "rebalance_every": [5],
                    "weightings": ["equal"], "finalists": 2},
         "wfo": {"in_sample": 120, "out_of_sample": 40, "step": 40, "mode": "rolling"}}


def strategy_text(name: str, **fields: object) -> str:
    data = yaml.safe_load((STRATEGY_CONFIG_DIR / f"{PRIMARY}.yaml").read_text())
    data.update({"name": name, **SMALL, **fields})
    return yaml.safe_dump(data)


@dataclass(frozen=True)
class Dev:
    client: DagsterGraphQLClient
    process: subprocess.Popen[bytes]
    strategies: Path


def dagster_dev_env(home: Path, strategies: Path, database: str) -> dict[str, str]:
    """The environment of `dagster dev`: none of the caller's ETF_ settings (no ledger, no
    Redis), the sample market to 2020 and the strategy folder under test."""
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(
        instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{database}"), encoding="utf-8")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("ETF_")}
    return {**inherited, "DAGSTER_HOME": str(dagster_home), "ETF_HOME": str(home / "etf"),
            "ETF_STRATEGY_DIR": str(strategies), "ETF_MARKET_DATA__SAMPLE_END": "2021-12-31",
            "GX_ANALYTICS_ENABLED": "false"}


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    home = tmp_path_factory.mktemp("hot_reload")
    strategies = home / "strategies"
    strategies.mkdir()
    shutil.copy(STRATEGY_CONFIG_DIR / f"{PRIMARY}.yaml", strategies)
    with scratch_database("etf_reload_dagster") as database, dagster_dev(
            dagster_dev_env(home, strategies, database), home / "dagster_dev.log",
            timeout=120) as running:
        yield Dev(running.client, running.process, strategies)


def reload(dev: Dev) -> None:
    """The UI's "Reload" button: the location must come back LOADED, never a PythonError."""
    entry = dev.client._execute(RELOAD, {"location": LOCATION_NAME})["reloadRepositoryLocation"]
    assert entry["__typename"] == "WorkspaceLocationEntry", entry
    assert entry["locationOrLoadError"]["__typename"] != "PythonError", \
        entry["locationOrLoadError"]["message"]
    wait_for("the reloaded code location", lambda: location_loaded(dev.client), 240)


def server_processes(dev: Dev) -> dict[str, int]:
    """The PIDs of the webserver and the daemon, the direct children of `dagster dev`."""
    found: dict[str, int] = {}
    for child in psutil.Process(dev.process.pid).children():
        module = child.cmdline()[2:3]       # python -m <module> ...
        if module == ["dagster_webserver"]:
            found["webserver"] = child.pid
        elif module == ["dagster._daemon"]:
            found["daemon"] = child.pid
    return found


@dataclass(frozen=True)
class Seen:
    """What the webserver shows of the code location."""
    assets: dict[str, dict[str, Any]]       # asset key "a/b" -> node
    jobs: set[str]
    schedules: dict[str, str]               # schedule -> its job

    def states(self, file: str) -> list[str]:
        """The states strategy_files shows for ``file`` (a kept strategy: valid and refused)."""
        return [row["state"] for row in self.files()["files"] if row["file"] == file]

    def group(self, key: str) -> str:
        return str(self.assets[key]["groupName"])

    def files(self) -> dict[str, Any]:
        """strategy_files: its description and metadata (tables as their records)."""
        node = self.assets["strategy_files"]
        meta = {e["label"]: e for e in node["metadataEntries"]}
        return {"description": node["description"],
                "files": [json.loads(row) for row in meta["files"]["table"]["records"]],
                "running": json.loads(meta["running"]["jsonString"]),
                "refused": meta["refused"]["intValue"],
                "refusals": meta["refusals"]["mdStr"]}


def seen(dev: Dev) -> Seen:
    nodes = dev.client._execute(ASSETS)["assetNodes"]
    repo = dev.client._execute(REPOSITORY, {"selector": SELECTOR})["repositoryOrError"]
    assert repo["__typename"] == "Repository", repo
    return Seen({"/".join(n["assetKey"]["path"]): n for n in nodes},
                {j["name"] for j in repo["jobs"]},
                {s["name"]: s["pipelineName"] for s in repo["schedules"]})


def second_schedule_status(dev: Dev) -> str:
    selector = {**SELECTOR, "scheduleName": f"{SECOND}_weekly_research"}
    found = dev.client._execute(SCHEDULE, {"selector": selector})["scheduleOrError"]
    assert found["__typename"] == "Schedule", found
    return str(found["scheduleState"]["status"])


def daemons_healthy(dev: Dev) -> bool:
    statuses = dev.client._execute(DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
    return all(d["healthy"] for d in statuses if d["required"])


def assert_second_strategy_defined(now: Seen) -> None:
    for asset in STAGE_ASSETS:
        assert now.group(f"{SECOND}/{asset}") == SECOND
    assert {f"{SECOND}_{job}" for job in STAGE_JOBS} <= now.jobs
    assert now.schedules[f"{SECOND}_weekly_research"] == f"{SECOND}_research_job"


def test_strategy_files_hot_reload(dev: Dev) -> None:
    servers = server_processes(dev)
    assert set(servers) == {"webserver", "daemon"}, servers

    # a. One strategy: the deployment's, nothing beside it.
    first = seen(dev)
    assert not any(key.startswith(f"{SECOND}/") for key in first.assets)
    assert first.group("target_portfolio") != SECOND
    assert "weekly_research" in first.schedules
    assert not any(s.startswith(SECOND) for s in first.schedules)
    files = first.files()
    assert files["running"] == [PRIMARY] and files["refused"] == 0
    assert first.states(PRIMARY) == ["runs: the deployment's strategy"]

    # b. A second valid file appears after a reload, with its assets, group, jobs, schedule.
    (dev.strategies / f"{SECOND}.yaml").write_text(strategy_text(SECOND))
    reload(dev)
    second = seen(dev)
    assert_second_strategy_defined(second)
    files = second.files()
    assert files["running"] == [PRIMARY, SECOND] and files["refused"] == 0
    assert second.states(SECOND) == ["runs beside it"]
    assert {r["dataset"] for r in files["files"] if r["file"] == SECOND} == {"sample"}
    assert server_processes(dev) == servers     # reloaded, not restarted
    # Its schedule can be turned on (the daemon runs it from the same instance).
    started = dev.client._execute(START_SCHEDULE, {"selector": {
        **SELECTOR, "scheduleName": f"{SECOND}_weekly_research"}})["startSchedule"]
    assert started["__typename"] == "ScheduleStateResult", started
    assert started["scheduleState"]["status"] == "RUNNING"

    # c. Broken files are refused by name, field and why; the others keep running.
    (dev.strategies / "typo_field.yaml").write_text(
        strategy_text("typo_field", costs={"commission_bps": 50}))
    (dev.strategies / "half_saved.yaml").write_text("name: half_saved\nuniverse: [\n")
    reload(dev)
    broken = seen(dev)
    assert_second_strategy_defined(broken)
    assert broken.group("target_portfolio") == first.group("target_portfolio")
    files = broken.files()
    assert files["running"] == [PRIMARY, SECOND] and files["refused"] == 2
    assert files["description"].startswith("2 strategy file(s) REFUSED")
    assert "typo_field.yaml" in files["refusals"]
    assert "costs.commission_bps: commission is in basis points" in files["refusals"]
    assert "half_saved.yaml" in files["refusals"] and "not valid YAML" in files["refusals"]
    for file in ("typo_field", "half_saved"):
        assert broken.states(file) == ["refused: not loaded"]

    # d. The second strategy's file breaks after it validated: its last valid version runs.
    (dev.strategies / "typo_field.yaml").unlink()
    (dev.strategies / "half_saved.yaml").unlink()
    path = dev.strategies / f"{SECOND}.yaml"
    path.write_text(path.read_text().replace("in_sample:", "in_sample: [", 1))
    reload(dev)
    kept = seen(dev)
    assert_second_strategy_defined(kept)
    files = kept.files()
    assert files["running"] == [PRIMARY, SECOND] and files["refused"] == 1
    assert f"{SECOND}.yaml" in files["refusals"] and "not valid YAML" in files["refusals"]
    assert f"strategy {SECOND} keeps running its last valid version" in files["refusals"]
    assert kept.states(SECOND) == ["runs beside it", "refused: its last valid version runs"]
    assert second_schedule_status(dev) == "RUNNING"         # still on, from its kept version
    assert server_processes(dev) == servers
    wait_for("the daemon's heartbeats after the reloads", lambda: daemons_healthy(dev), 120)

"""The API's one door to Dagster's webserver: launches and run reads over its GraphQL API
(plain GraphQL over httpx: the API needs four operations, and a typed error for each way a
call can fail, not ``DagsterGraphQLClient``'s generic one), and the poller that turns run
status changes into ``run`` events of the live stream.

A call that cannot reach the webserver raises :class:`DagsterUnavailable` (the API answers
503); a call the webserver refuses (unknown job or location, invalid config, a Python error in
Dagster) raises :class:`DagsterRefused` (502). Neither carries a traceback to the client."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from api.events import EventHub, notice
from api.schemas import EventOut
from orchestration.settings import Settings

log = logging.getLogger(__name__)

# What the webserver names the job of an ad-hoc asset materialisation (the UI's "Materialize").
IMPLICIT_ASSET_JOB = "__ASSET_JOB"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
FINISHED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})

_RUN_FIELDS = """runId jobName status creationTime startTime endTime updateTime
                 tags { key value }"""
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}"""
RUN = f"""
query Run($runId: ID!) {{
  runOrError(runId: $runId) {{
    __typename
    ... on Run {{ {_RUN_FIELDS} }}
    ... on Error {{ message }}
  }}
}}"""
RUNS = f"""
query Runs($filter: RunsFilter, $limit: Int) {{
  runsOrError(filter: $filter, limit: $limit) {{
    __typename
    ... on Runs {{ count results {{ {_RUN_FIELDS} }} }}
    ... on Error {{ message }}
  }}
}}"""
PARTITION_KEYS = """
query Keys($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode { partitionKeys }
    ... on Error { message }
  }
}"""


class DagsterError(RuntimeError):
    """A GraphQL call to the Dagster webserver failed; the message says which and why."""


class DagsterUnavailable(DagsterError):
    """The webserver did not answer (down, unreachable, timed out, or not configured)."""


class DagsterRefused(DagsterError):
    """The webserver answered with an error (a launch it refused, a Python error)."""


class RunNotFound(LookupError):
    pass


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    job: str
    status: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    updated_at: dt.datetime | None
    tags: dict[str, str]


@dataclass(frozen=True)
class RunPage:
    runs: list[RunInfo]
    total: int


def _time(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


def run_of(raw: dict[str, Any]) -> RunInfo:
    created = _time(raw["creationTime"])
    assert created is not None
    return RunInfo(run_id=raw["runId"], job=raw["jobName"], status=raw["status"],
                   created_at=created, started_at=_time(raw.get("startTime")),
                   ended_at=_time(raw.get("endTime")), updated_at=_time(raw.get("updateTime")),
                   tags={t["key"]: t["value"] for t in raw.get("tags", [])})


class DagsterRuns:
    """Launches and reads runs of the deployment through the webserver's GraphQL API."""

    def __init__(self, settings: Settings) -> None:
        api = settings.api
        self.url = api.dagster_graphql_url
        self.location = api.dagster_location
        self.execution_location = api.resolved_execution_location
        self.repository = api.dagster_repository
        self._client = httpx.Client(timeout=api.dagster_timeout_seconds)

    @property
    def configured(self) -> bool:
        return self.url is not None

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        if self.url is None:
            raise DagsterUnavailable(f"{what}: no Dagster webserver configured (set "
                                     "ETF_API__DAGSTER_GRAPHQL_URL)")
        try:
            response = self._client.post(self.url, json={"query": query,
                                                         "variables": variables})
        except httpx.TransportError as exc:
            raise DagsterUnavailable(f"{what}: the Dagster webserver at {self.url} did not "
                                     f"answer ({type(exc).__name__}: {exc})") from None
        if response.status_code >= 500:
            raise DagsterUnavailable(f"{what}: the Dagster webserver at {self.url} answered "
                                     f"HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise DagsterRefused(f"{what}: the Dagster webserver at {self.url} answered HTTP "
                                 f"{response.status_code} without JSON") from None
        if body.get("errors") or "data" not in body:
            messages = "; ".join(str(e.get("message")) for e in body.get("errors") or [])
            raise DagsterRefused(f"{what}: Dagster GraphQL error: {messages[:500]}")
        data: dict[str, Any] = body["data"]
        return data

    # ------------------------------------------------------------------ launches

    def launch(self, job: str, *, location: str | None = None, tags: dict[str, str],
               assets: list[str] | None = None) -> str:
        """Launch ``job`` of the code location (the research one unless named) with ``tags``
        (``assets``: only these assets of the job); the new run's id."""
        where = location or self.location
        selector: dict[str, Any] = {"repositoryLocationName": where,
                                    "repositoryName": self.repository, "jobName": job}
        if assets is not None:
            selector["assetSelection"] = [{"path": [a]} for a in assets]
        params = {"selector": selector, "runConfigData": {},
                  "executionMetadata": {"tags": [{"key": k, "value": v}
                                                 for k, v in sorted(tags.items())]}}
        what = f"launching {job} in code location {where}"
        result = self._call(what, LAUNCH, {"params": params})["launchRun"]
        if result["__typename"] == "LaunchRunSuccess":
            run_id: str = result["run"]["runId"]
            return run_id
        errors = [e["message"] for e in result.get("errors", [])] or [result.get("message")]
        raise DagsterRefused(f"{what}: Dagster refused ({result['__typename']}): "
                             f"{'; '.join(str(e) for e in errors)[:500]}")

    def partition_keys(self, asset: str) -> list[str]:
        what = f"reading the partitions of {asset}"
        node = self._call(what, PARTITION_KEYS, {"assetKey": {"path": [asset]}})[
            "assetNodeOrError"]
        if node["__typename"] != "AssetNode":
            raise DagsterRefused(f"{what}: {node['__typename']}: {node.get('message')}")
        keys: list[str] = node["partitionKeys"]
        return keys

    # ------------------------------------------------------------------ reads

    def run(self, run_id: str) -> RunInfo:
        found = self._call(f"reading run {run_id}", RUN, {"runId": run_id})["runOrError"]
        if found["__typename"] == "RunNotFoundError":
            raise RunNotFound(f"no Dagster run {run_id!r}")
        if found["__typename"] != "Run":
            raise DagsterRefused(f"reading run {run_id}: {found['__typename']}: "
                                 f"{found.get('message')}")
        return run_of(found)

    def runs(self, *, statuses: list[str] | None = None, job: str | None = None,
             updated_after: float | None = None, limit: int = 50) -> RunPage:
        """The newest runs matching the filters (at most ``limit``) and how many match."""
        run_filter: dict[str, Any] = {}
        if statuses:
            run_filter["statuses"] = statuses
        if job:
            run_filter["pipelineName"] = job
        if updated_after is not None:
            run_filter["updatedAfter"] = updated_after
        found = self._call("listing runs", RUNS, {"filter": run_filter, "limit": limit})[
            "runsOrError"]
        if found["__typename"] != "Runs":
            raise DagsterRefused(f"listing runs: {found['__typename']}: {found.get('message')}")
        return RunPage(runs=[run_of(r) for r in found["results"]], total=found["count"])


# ---------------------------------------------------------------------- run events

# A run seen this long ago is forgotten (its status no longer deduplicated).
FORGET_SECONDS = 3600.0
# Each poll re-reads this much before the newest update it saw: a run updated in the same
# instant as the cursor is not missed (repeats are deduplicated by status).
OVERLAP_SECONDS = 2.0


@dataclass
class RunWatch:
    """What the poller has already told the clients: each run's last status."""

    cursor: float = field(default_factory=time.time)
    seen: dict[str, tuple[str, float]] = field(default_factory=dict)

    def changes(self, runs: list[RunInfo]) -> list[RunInfo]:
        fresh = []
        for run in sorted(runs, key=lambda r: r.updated_at or r.created_at):
            stamp = (run.updated_at or run.created_at).timestamp()
            self.cursor = max(self.cursor, stamp)
            if self.seen.get(run.run_id, ("", 0.0))[0] != run.status:
                fresh.append(run)
            self.seen[run.run_id] = (run.status, stamp)
        horizon = self.cursor - FORGET_SECONDS
        self.seen = {k: v for k, v in self.seen.items() if v[1] >= horizon}
        return fresh


def run_event(run: RunInfo, ui_url: str | None) -> EventOut:
    return EventOut(type="run", entity="dagster_runs", id=run.run_id,
                    at=run.updated_at or run.created_at,
                    payload={"job": run.job, "status": run.status,
                             "url": f"{ui_url}/runs/{run.run_id}" if ui_url else None})


async def watch_runs(dagster: DagsterRuns, hub: EventHub, every: float,
                     ui_url: str | None) -> None:
    """Poll the webserver for runs updated since the last poll and publish each status
    change as a ``run`` event, until cancelled. An unreachable webserver is retried; clients
    are told once that run events may be missed meanwhile."""
    watch = RunWatch()
    reachable = True
    while True:
        try:
            page = await asyncio.to_thread(dagster.runs, updated_after=watch.cursor
                                           - OVERLAP_SECONDS, limit=200)
        except DagsterError as exc:
            if reachable:
                log.warning("run events: %s", exc)
                hub.publish(notice("dagster_connection_lost",
                                   detail="run events may be missed until it is back"))
            reachable = False
        else:
            reachable = True
            for run in watch.changes(page.runs):
                hub.publish(run_event(run, ui_url))
        await asyncio.sleep(every)

"""Dagster runs through the desk API (issue 16 items 2 and 4) on real processes: ``dagster dev``
(the webserver and the daemon, whose queued run coordinator hands runs to the default launcher:
a subprocess on this machine) serving the project's code location on the generated sample
market over a dagster-postgres instance in a scratch database, and ``python -m api`` (uvicorn)
launching through the webserver's GraphQL API.

A researcher launches a backtest and follows it to success through the API; the run is in
Dagster and its MLflow runs carry its id; a viewer's launch is refused and audited; the live
stream carries the run's status changes. Then the failure paths: a refused launch (unknown code
location) is 502, an unreachable webserver 503, neither audited as done; a signal that is not
a rejected signal of the latest target is not re-decided."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import psycopg
import pytest
from api_desk import PASSWORD, REDIS_URL, Desk, desk
from conftest import PG_SERVER, ROOT, TEST_CACHE_SECRET, postgres_instance, scratch_database
from dagster_dev import stop_group
from fastapi.testclient import TestClient
from test_api_live import api_env, free_port, wait_for
from websockets.sync.client import ClientConnection, connect

from api.app import create_app
from api.permissions import Role
from api.schemas import EventOut
from orchestration.definitions import build_definitions
from orchestration.runs import full_history, run_range
from resources.tracking import TAG_DAGSTER_RUN_ID

V1 = "/api/v1"
DAGSTER_START_SECONDS = 300
RUN_SECONDS = 900
WAIT_SECONDS = 10.0
RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename ... on Run { runId jobName status tags { key value } }
  }
}"""
LOCATIONS = """
query { workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


@dataclass(frozen=True)
class Stack:
    api: str
    dagster: str
    desk: Desk
    home: Path

    @property
    def graphql(self) -> str:
        return f"{self.dagster}/graphql"


def graphql(url: str, query: str, **variables: Any) -> dict[str, Any]:
    response = httpx.post(url, json={"query": query, "variables": variables}, timeout=30)
    response.raise_for_status()
    data: dict[str, Any] = response.json()["data"]
    return data


def _prepare_sample(home: Path, dagster_home: Path) -> None:
    """The market data and the research chain up to the factors on the sample, in process:
    what the walk-forward windows read (a backtest rebuilds only what follows)."""
    from orchestration.settings import load_settings

    settings = load_settings(home=home, redis_url=REDIS_URL, cache_secret=TEST_CACHE_SECRET)
    with warnings.catch_warnings():     # no ledger here: the execution stage is not needed
        warnings.filterwarnings("ignore", message="postgres_url .* is not set")
        defs = build_definitions(settings)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        start, end = full_history(defs)
        assert run_range(defs, instance, start, end, log_level="WARNING").success
        research = defs.resolve_job_def("research_job").execute_in_process(
            instance=instance, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
        assert research.success


def _location_loaded(url: str) -> bool:
    entries = graphql(url, LOCATIONS)["workspaceOrError"]["locationEntries"]
    errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
    assert not errors, errors[0]["locationOrLoadError"]["message"]
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


def _wait_for_dagster(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DAGSTER_START_SECONDS
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-4000:]
        try:
            if _location_loaded(f"{url}/graphql"):
                return
        except (httpx.HTTPError, KeyError, TypeError):
            pass
        time.sleep(2)
    pytest.fail(f"dagster dev did not load the code location in {DAGSTER_START_SECONDS} s:\n"
                + log.read_text()[-4000:])



@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The seeded desk ledger, the sample researched up to the factors, ``dagster dev`` on a
    dagster-postgres instance and ``python -m api`` pointed at its GraphQL API."""
    base = tmp_path_factory.mktemp("api_runs")
    home = base / "etf_home"
    with desk(home, login_attempts=1000) as d, scratch_database("etf_api_runs_dagster") as db:
        dagster_home = base / "dagster"
        dagster_home.mkdir()
        with postgres_instance(dagster_home, db):
            pass                                    # writes dagster.yaml, creates the schema
        _prepare_sample(home, dagster_home)
        port, api_port = free_port(), free_port()
        dagster_url = f"http://127.0.0.1:{port}"
        env = {**api_env(d), "DAGSTER_HOME": str(dagster_home),
               "ETF_DAGSTER_WEBSERVER_URL": dagster_url, "GX_ANALYTICS_ENABLED": "false"}
        log = base / "dagster_dev.log"
        with log.open("w") as out:
            dev = subprocess.Popen(
                [str(Path(sys.executable).parent / "dagster"), "dev", "-w",
                 str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        api_log = base / "api.log"
        server: subprocess.Popen[bytes] | None = None
        try:
            _wait_for_dagster(dagster_url, dev, log)
            with api_log.open("w") as out:
                server = subprocess.Popen(
                    [sys.executable, "-m", "api"], cwd=ROOT, stdout=out,
                    stderr=subprocess.STDOUT,
                    env=api_env(d, API_PORT=str(api_port), ETF_API__LOGIN_ATTEMPTS="1000",
                                ETF_DAGSTER_WEBSERVER_URL=dagster_url,
                                ETF_API__DAGSTER_GRAPHQL_URL=f"{dagster_url}/graphql"))
            api_url = f"http://127.0.0.1:{api_port}"
            wait_for(api_url, server, api_log)
            yield Stack(api=api_url, dagster=dagster_url, desk=d, home=home)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
            stop_group(dev)


def sign_in(stack: Stack, role: Role) -> dict[str, str]:
    response = httpx.post(f"{stack.api}{V1}/auth/token",
                          data={"username": stack.desk.username(role), "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def receive(ws: ClientConnection, timeout: float = WAIT_SECONDS) -> EventOut:
    return EventOut.model_validate_json(ws.recv(timeout=timeout))


def run_events(ws: ClientConnection, run_id: str, until: str) -> list[EventOut]:
    """The run's events from the stream, up to its ``until`` status."""
    events: list[EventOut] = []
    deadline = time.monotonic() + WAIT_SECONDS
    while (left := deadline - time.monotonic()) > 0:
        event = receive(ws, timeout=left)
        if event.type == "run" and event.id == run_id:
            events.append(event)
            if event.payload["status"] == until:
                return events
    raise AssertionError(f"no {until} event for run {run_id}; got {events}")


def follow(stack: Stack, headers: dict[str, str], run_id: str) -> dict[str, Any]:
    """GET /runs/{id} until the run ends."""
    deadline = time.monotonic() + RUN_SECONDS
    while time.monotonic() < deadline:
        response = httpx.get(f"{stack.api}{V1}/runs/{run_id}", headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        if run["status"] in {"SUCCESS", "FAILURE", "CANCELED"}:
            return run
        time.sleep(3)
    pytest.fail(f"run {run_id} did not end within {RUN_SECONDS} s")


def audit_rows(d: Desk, action: str) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    with psycopg.connect(f"postgresql://{PG_SERVER}/{d.database}") as conn:
        return [(r[0], r[1], r[2], r[3]) for r in conn.execute(
            "SELECT actor, entity_id, reason, details FROM audit_log WHERE action = %s "
            "ORDER BY id", (action,))]


def mlflow_runs(home: Path, run_id: str) -> list[Any]:
    from mlflow import MlflowClient

    from orchestration.settings import load_settings

    settings = load_settings(home=home, redis_url=REDIS_URL, cache_secret=TEST_CACHE_SECRET)
    client = MlflowClient(tracking_uri=settings.resolved_mlflow_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(experiments,
                                   filter_string=f"tags.`{TAG_DAGSTER_RUN_ID}` = '{run_id}'"))


def test_a_researcher_launches_a_backtest_and_follows_it_to_success(stack: Stack) -> None:
    d = stack.desk
    viewer = httpx.post(f"{stack.api}{V1}/runs", headers=sign_in(stack, Role.VIEWER),
                        json={"kind": "backtest", "reason": "curious"})
    assert viewer.status_code == 403, viewer.text
    denied = [r for r in audit_rows(d, "access_denied") if r[1] == f"POST {V1}/runs"]
    assert denied and denied[-1][0] == f"api:{d.username(Role.VIEWER)}"
    assert denied[-1][3]["permission"] == "research.launch"

    researcher = sign_in(stack, Role.RESEARCHER)
    token = researcher["Authorization"].removeprefix("Bearer ")
    stream = stack.api.replace("http://", "ws://") + f"{V1}/events?token={token}"
    with connect(stream, open_timeout=WAIT_SECONDS) as ws:
        assert receive(ws).payload["notice"] == "subscribed"
        launched = httpx.post(f"{stack.api}{V1}/runs", headers=researcher, timeout=60,
                              json={"kind": "backtest", "reason": "new costs in the config"})
        assert launched.status_code == 202, launched.text
        body = launched.json()
        run_id = body["run_id"]
        assert (body["job"], body["status_url"]) == ("walk_forward_job", f"{V1}/runs/{run_id}")
        assert body["dagster_url"] == f"{stack.dagster}/runs/{run_id}"
        run = follow(stack, researcher, run_id)
        events = run_events(ws, run_id, until=run["status"])
    assert run["status"] == "SUCCESS", run
    assert run["job"] == "walk_forward_job" and run["started_at"] and run["ended_at"]
    assert run["tags"]["etf/requested_by"] == f"api:{d.username(Role.RESEARCHER)}"
    assert run["tags"]["dagster/asset_partition_range_start"]
    assert run["dagster_url"] == f"{stack.dagster}/runs/{run_id}"
    # The stream told its status changes in order, ending with the success.
    statuses = [e.payload["status"] for e in events]
    assert statuses[-1] == "SUCCESS" and "STARTED" in statuses, statuses
    assert all(e.payload["job"] == "walk_forward_job" for e in events)

    # Dagster holds the run, with who asked for it.
    found = graphql(stack.graphql, RUN_QUERY, runId=run_id)["runOrError"]
    assert (found["__typename"], found["status"]) == ("Run", "SUCCESS")
    assert {"key": "etf/requested_by", "value": f"api:{d.username(Role.RESEARCHER)}"} in \
        found["tags"]
    # One MLflow run per walk-forward window, each tied to the Dagster run.
    tracked = mlflow_runs(stack.home, run_id)
    assert tracked and all(r.data.tags[TAG_DAGSTER_RUN_ID] == run_id for r in tracked)

    listed = httpx.get(f"{stack.api}{V1}/runs", headers=sign_in(stack, Role.VIEWER),
                       params={"job": "walk_forward_job", "status": "SUCCESS"}).json()
    assert run_id in [r["run_id"] for r in listed["items"]] and listed["total"] >= 1
    launches = [r for r in audit_rows(d, "runs.launch") if r[3]["run_id"] == run_id]
    assert len(launches) == 1
    actor, entity_id, reason, details = launches[0]
    assert (actor, entity_id, reason) == (f"api:{d.username(Role.RESEARCHER)}",
                                          "walk_forward_job", "new costs in the config")
    assert details["kind"] == "backtest" and details["location"] == "etf_rotation"


def test_an_unknown_run_is_404(stack: Stack) -> None:
    missing = httpx.get(f"{stack.api}{V1}/runs/00000000-0000-0000-0000-000000000000",
                        headers=sign_in(stack, Role.VIEWER))
    assert missing.status_code == 404 and "no Dagster run" in missing.json()["detail"]


def test_a_refused_launch_is_502_and_an_unreachable_dagster_503(stack: Stack) -> None:
    """Neither is audited as a launch: the failure is, with Dagster's message."""
    d = stack.desk
    cases = ((f"{stack.graphql}", "no_such_location", 502, "no_such_location"),
             (f"http://127.0.0.1:{free_port()}/graphql", "etf_rotation", 503, "did not answer"))
    for url, location, code, says in cases:
        settings = d.settings.model_copy(update={"api": d.settings.api.model_copy(update={
            "dagster_graphql_url": url, "dagster_location": location})})
        with TestClient(create_app(settings)) as client:
            before = len(audit_rows(d, "runs.launch"))
            answer = client.post(f"{V1}/runs", headers=d.headers(Role.ADMIN),
                                 json={"kind": "research_rebuild", "reason": "drill"})
        assert answer.status_code == code, answer.text
        detail = answer.json()["detail"]
        assert "launching research_job" in detail and says in detail, detail
        assert "Traceback" not in detail
        assert len(audit_rows(d, "runs.launch")) == before
        failed = audit_rows(d, "runs.launch_failed")[-1]
        assert failed[1] == "research_job" and says in failed[3]["error"]


def test_only_a_rejected_signal_of_the_latest_target_is_redecided(stack: Stack) -> None:
    d = stack.desk
    trader = sign_in(stack, Role.TRADER)

    def redecide(signal_id: str, headers: dict[str, str] = trader) -> httpx.Response:
        return httpx.post(f"{stack.api}{V1}/signals/{signal_id}/redecide", headers=headers,
                          json={"reason": "limits were raised"}, timeout=60)

    assert redecide("no-such-signal").status_code == 404
    approved = redecide(d.approved.signal_id)
    assert approved.status_code == 409 and "only a rejected signal" in approved.json()["detail"]
    # The seeded rejection is of another account and an old session: not this gate's to redo.
    other = redecide(d.rejected.signal_id)
    assert other.status_code == 409, other.text
    assert redecide(d.rejected.signal_id, sign_in(stack, Role.RESEARCHER)).status_code == 403
    assert redecide(d.rejected.signal_id, sign_in(stack, Role.VIEWER)).status_code == 403
    assert not [r for r in audit_rows(d, "signals.redecide")
                if r[1] in (d.rejected.signal_id, d.approved.signal_id)]


def _reject_the_latest_target(stack: Stack) -> str:
    """A rejection of the stored target, as a stricter gate would have recorded it: the signal
    id is the gate's own (strategy, account, session, weights), so the gate decides it again."""
    import pandas as pd

    from orchestration.settings import load_settings
    from trading.approval import proposed_weights
    from trading.ledger import SignalRecord
    from trading.models import SignalStatus, signal_id_of, weights_hash

    settings = load_settings(home=stack.home, redis_url=REDIS_URL, cache_secret=TEST_CACHE_SECRET)
    target = pd.read_parquet(settings.resolved_storage_root / "target_portfolio.parquet")
    target = target[target["strategy"] == "etf_rotation_sample"]
    weights = proposed_weights(target["symbol"].astype(str).tolist(),
                               target["weight"].astype(float).tolist())
    as_of = pd.Timestamp(target["date"].iloc[0]).date()
    account = settings.execution.account_id
    signal_id = signal_id_of("etf_rotation_sample", account, as_of, weights)
    ledger = stack.desk.ledger()
    try:
        ledger.record_signal(SignalRecord(
            signal_id=signal_id, account_id=account, strategy="etf_rotation_sample",
            as_of=as_of, weights=weights, weights_hash=weights_hash(weights),
            status=SignalStatus.REJECTED, reasons=[{
                "layer": "account", "rule": "drill", "subject": account,
                "message": "a limit since raised"}], data_version=None, dagster_run_id=None),
            actor="gate")
    finally:
        ledger.dispose()
    return signal_id


def test_the_gate_decides_a_rejected_signal_again(stack: Stack) -> None:
    """After the backtest above, the deployment's sensor ran portfolio_job (the target of
    the latest session); a rejection of that target is sent back to the gate: a run of
    approved_signal decides it again by its own rules and records the decision."""
    viewer = sign_in(stack, Role.VIEWER)
    deadline = time.monotonic() + RUN_SECONDS
    while not httpx.get(f"{stack.api}{V1}/runs", headers=viewer, timeout=30, params={
            "job": "portfolio_job", "status": "SUCCESS"}).json()["items"]:
        assert time.monotonic() < deadline, "the sensor's portfolio_job did not succeed"
        time.sleep(5)
    signal_id = _reject_the_latest_target(stack)
    trader = sign_in(stack, Role.TRADER)
    launched = httpx.post(f"{stack.api}{V1}/signals/{signal_id}/redecide", headers=trader,
                          json={"reason": "the drill limit was raised"}, timeout=60)
    assert launched.status_code == 202, launched.text
    run_id = launched.json()["run_id"]
    run = follow(stack, trader, run_id)
    assert run["status"] == "SUCCESS", run
    assert run["job"] == "__ASSET_JOB" and run["tags"]["etf/signal_id"] == signal_id
    ledger = stack.desk.ledger()
    try:
        decided = ledger.signal(signal_id)
        trail = ledger.audit_log(entity="signal", entity_id=signal_id)
    finally:
        ledger.dispose()
    # Decided again by that run, under the gate's rules (the drill's reason is gone).
    assert decided is not None and decided.dagster_run_id == run_id
    assert all(r["rule"] != "drill" for r in decided.reasons)
    assert any(r["actor"] == f"dagster:{run_id}" for r in trail), trail
    asked = audit_rows(stack.desk, "signals.redecide")
    assert [(a[0], a[1], a[2], a[3]["run_id"]) for a in asked] == [
        (f"api:{stack.desk.username(Role.TRADER)}", signal_id, "the drill limit was raised",
         run_id)]


def test_the_run_reads_hold_to_the_openapi_document(stack: Stack) -> None:
    """GET /runs and GET /runs/{id} against the real webserver with generated input: no 5xx,
    every answer as documented (launches are left out: each valid one would start a run)."""
    import hypothesis
    import schemathesis
    from test_api_live import CHECKS

    document = schemathesis.openapi.from_url(f"{stack.api}{V1}/openapi.json")
    reads = [op for result in document.get_all_operations()
             if (op := result.ok()).path.startswith(f"{V1}/runs") and op.method.upper() == "GET"]
    assert len(reads) == 2
    headers = sign_in(stack, Role.VIEWER)
    for operation in reads:
        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=25, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def conforms(case: schemathesis.Case) -> None:
            response = case.call(base_url=stack.api, headers=headers)
            case.validate_response(response, checks=CHECKS)

        conforms()


def test_each_status_of_a_run_is_told_once() -> None:
    """The poller re-reads an overlap before its cursor: a status already told is not
    repeated, a new one is, and the cursor follows Dagster's update times."""
    import datetime as dt

    from api.dagster_runs import RunInfo, RunWatch

    def run(run_id: str, status: str, at: float) -> RunInfo:
        when = dt.datetime.fromtimestamp(at, dt.UTC)
        return RunInfo(run_id=run_id, job="walk_forward_job", status=status, created_at=when,
                       started_at=None, ended_at=None, updated_at=when, tags={})

    watch = RunWatch(cursor=100.0)
    first = watch.changes([run("a", "QUEUED", 101.0), run("b", "STARTED", 102.0)])
    assert [(r.run_id, r.status) for r in first] == [("a", "QUEUED"), ("b", "STARTED")]
    again = watch.changes([run("a", "STARTED", 103.0), run("b", "STARTED", 102.0)])
    assert [(r.run_id, r.status) for r in again] == [("a", "STARTED")]
    assert watch.cursor == 103.0

"""The reverse proxy of deploy/proxy, run by Debian's nginx in front of the real services
(tests/proxy_stack.py): no session means the sign-in page or 401; a viewer gets the read-only
Dagster UI and cannot launch through its GraphQL; a researcher launches a research backfill but
cannot reach execution_job or kill_switch_job; a trader can; MLflow writes are a researcher's;
refusals are audited; an expired access cookie is replaced while the session lasts, a
signed-out session does not pass. And the daily path across the two code locations behind
it."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import html
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pandas as pd
import pytest
from api_desk import JWT_SECRET, PASSWORD
from chromium import chromium
from demo_home import Demo
from proxy_stack import EXECUTION, RESEARCH, Stack, proxy_stack

from api import security
from orchestration.definitions import build_definitions
from orchestration.settings import load_settings
from trading.ledger import Ledger

PERMISSIONS = "{ permissions { permission value } }"
LOCATIONS = """{ workspaceOrError { __typename
  ... on Workspace { locationEntries { name
    locationOrLoadError { __typename ... on RepositoryLocation {
      repositories { name jobs { name } } } } } } } }"""
LAUNCH_RUN = """mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}"""
LAUNCH_BACKFILL = """mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""
REEXECUTE = """mutation Again($params: ReexecutionParams!) {
  launchRunReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}"""
TERMINATE = """mutation Stop($runId: String!) {
  terminateRun(runId: $runId) { __typename ... on Error { message } }
}"""
SHOTS = Path(os.environ.get("ETF_TEST_SHOTS", "/tmp/issue16_shots"))
EXPERIMENTS_SEARCH = "/mlflow/ajax-api/2.0/mlflow/experiments/search"
EXPERIMENTS_CREATE = "/mlflow/ajax-api/2.0/mlflow/experiments/create"
PAGE = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}


@pytest.fixture(scope="module")
def stack(demo: Demo) -> Iterator[Stack]:
    with proxy_stack(demo) as running:
        yield running


def graphql(client: httpx.Client, query: str, variables: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    answer = client.post("/dagster/graphql", json={"query": query,
                                                   "variables": variables or {}})
    assert answer.status_code == 200, answer.text[:2000]
    body: dict[str, Any] = answer.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def can_launch(client: httpx.Client) -> bool:
    values = {p["permission"]: p["value"] for p in graphql(client, PERMISSIONS)["permissions"]}
    return bool(values["launch_pipeline_execution"])


def jobs_by_location(client: httpx.Client) -> dict[str, set[str]]:
    entries = graphql(client, LOCATIONS)["workspaceOrError"]["locationEntries"]
    out = {}
    for entry in entries:
        location = entry["locationOrLoadError"]
        assert location["__typename"] == "RepositoryLocation", entry
        out[entry["name"]] = {j["name"] for r in location["repositories"] for j in r["jobs"]}
    return out


def launch(client: httpx.Client, location: str, job: str,
           config: dict[str, Any] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = graphql(client, LAUNCH_RUN, {"params": {
        "selector": {"repositoryLocationName": location, "repositoryName": "__repository__",
                     "jobName": job},
        "runConfigData": config or {}}})["launchRun"]
    return result


def execute_config(signal_id: str) -> dict[str, Any]:
    return {"ops": {"execute_signal_op": {"config": {"signal_id": signal_id}}}}


def kill_switch_config() -> dict[str, Any]:
    return {"ops": {"set_kill_switch": {"config": {"engaged": True,
                                                   "reason": "proxy test"}}}}


def refusals(stack: Stack, username: str) -> list[dict[str, object]]:
    ledger = Ledger(stack.ledger_url)
    try:
        rows = ledger.audit_log(action="access_denied")
    finally:
        ledger.dispose()
    return [r for r in rows if r["actor"] == f"api:{username}" and r["entity"] == "surface"]


# ------------------------------------------------------------------ no session


@pytest.mark.parametrize("path", ["/dagster/", "/dagster/runs?q=status:FAILURE", "/mlflow/",
                                  "/metrics"])
def test_no_session_gets_the_sign_in_page(stack: Stack, path: str) -> None:
    with stack.client() as client:
        first = client.get(path, headers=PAGE)
        assert first.status_code == 302
        assert first.headers["location"] == f"/signin?next={path}"
        page = client.get(first.headers["location"], headers=PAGE)
        assert page.status_code == 200
        assert 'name="password"' in page.text
        assert f'value="{html.escape(path, quote=True)}"' in page.text


def test_no_session_is_refused_to_a_script(stack: Stack) -> None:
    with stack.client() as client:
        answer = client.post("/dagster/graphql", json={"query": PERMISSIONS})
        assert answer.status_code == 401
        assert "sign in" in answer.json()["detail"]
        # Nothing but the routed prefixes is proxied anywhere.
        assert client.get("/dagster-viewer/").status_code == 404


def test_a_literal_fragment_is_refused(stack: Stack) -> None:
    """MLflow would cut "…/delete#/search" to a delete that the check read as a search."""
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(b"POST /mlflow/ajax-api/2.0/mlflow/experiments/delete#/search HTTP/1.1\r\n"
                    b"Host: " + host.encode() + b"\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n")
        status_line = raw.recv(200).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"400", status_line


@pytest.mark.parametrize("kind", ["forged", "expired", "claimed"])
def test_a_token_the_api_did_not_issue_or_that_expired_does_not_pass(stack: Stack,
                                                                     kind: str) -> None:
    if kind == "forged":
        token, _ = security.issue_access_token("x" * 64, "trader", "trader",
                                               dt.timedelta(minutes=5))
    else:
        token, _ = security.issue_access_token(JWT_SECRET, "trader", "trader",
                                               dt.timedelta(minutes=-1 if kind == "expired"
                                                            else 5))
    cookies = {} if kind == "claimed" else {"etf_access": token}
    # "claimed": no session, only the header the proxy itself sets for the surfaces.
    with stack.client(cookies=cookies) as client:
        answer = client.post("/dagster/graphql", json={"query": PERMISSIONS},
                             headers={"X-Etf-User": "trader"})
        assert answer.status_code == 401, answer.text


# ------------------------------------------------------------------ roles


def test_a_viewer_gets_the_read_only_ui(stack: Stack) -> None:
    with stack.signed_in("viewer") as client:
        home = client.get("/dagster/", headers=PAGE)
        assert home.status_code == 200 and "<html" in home.text.lower()
        assert not can_launch(client)
        assert set(jobs_by_location(client)) == {RESEARCH, EXECUTION}
        refused = launch(client, RESEARCH, "research_job")
        assert refused["__typename"] == "UnauthorizedError", refused
        refused = launch(client, EXECUTION, "kill_switch_job", kill_switch_config())
        assert refused["__typename"] == "UnauthorizedError", refused


def test_a_researcher_backfills_research_but_cannot_reach_execution(stack: Stack) -> None:
    with stack.signed_in("researcher") as client:
        assert can_launch(client)
        jobs = jobs_by_location(client)
        assert set(jobs) == {RESEARCH}
        assert {"research_job", "daily_job", "market_data_job"} <= jobs[RESEARCH]
        assert not jobs[RESEARCH] & {"execution_job", "kill_switch_job",
                                     "supersede_signal_job", "approval_job"}
        launched = graphql(client, LAUNCH_BACKFILL, {"params": {
            "partitionNames": ["2025-12-29", "2025-12-30"],
            "assetSelection": [{"path": ["raw_bars"]}], "fromFailure": False}})[
            "launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        for job, config in (("execution_job", execute_config("no-such-signal")),
                            ("kill_switch_job", kill_switch_config())):
            refused = launch(client, EXECUTION, job, config)
            assert refused["__typename"] == "PipelineNotFoundError", refused
            assert f"{EXECUTION}.__repository__.{job}" in refused["message"], refused
    with dg.DagsterInstance.from_config(str(stack.dagster_home)) as instance:
        backfill = instance.get_backfill(launched["backfillId"])
        assert backfill is not None
        assert backfill.status.value == "REQUESTED"     # no daemon here to run it


def test_a_trader_reaches_execution(stack: Stack) -> None:
    with stack.signed_in("trader") as client:
        assert can_launch(client)
        jobs = jobs_by_location(client)
        assert {"execution_job", "kill_switch_job", "supersede_signal_job",
                "approval_job"} <= jobs[EXECUTION]
        launched = launch(client, EXECUTION, "execution_job", execute_config("no-such-signal"))
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
    with dg.DagsterInstance.from_config(str(stack.dagster_home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.job_name == "execution_job"
        assert run.remote_job_origin is not None
        assert run.remote_job_origin.location_name == EXECUTION
    with stack.signed_in("researcher") as client:
        # The researcher's webserver cannot re-execute it (its location is not there) ...
        again = client.post("/dagster/graphql", json={"query": REEXECUTE, "variables": {
            "params": {"parentRunId": run_id, "strategy": "ALL_STEPS"}}})
        assert again.json()["data"]["launchRunReexecution"]["__typename"] == "PythonError"
        assert f"Location {EXECUTION} does not exist" in again.text
        # ... but can terminate it: Dagster OSS checks no roles on instance-wide mutations,
        # the limit docs/desk_api.md states. (Queued, no daemon here: nothing ran.)
        stopped = graphql(client, TERMINATE, {"runId": run_id})["terminateRun"]
        assert stopped["__typename"] == "TerminateRunSuccess", stopped


def test_mlflow_writes_are_a_researchers_and_refusals_are_audited(stack: Stack) -> None:
    name = f"proxy-test-{dt.datetime.now(dt.UTC):%H%M%S%f}"
    with stack.signed_in("viewer") as viewer:
        found = viewer.post(EXPERIMENTS_SEARCH, json={"max_results": 10})
        assert found.status_code == 200, found.text[:500]
        assert found.json()["experiments"]
        assert viewer.get("/mlflow/").status_code == 200
        refused = viewer.post(EXPERIMENTS_CREATE, json={"name": name})
        assert refused.status_code == 403
    assert any(r["entity_id"] == f"POST mlflow:{EXPERIMENTS_CREATE}"
               for r in refusals(stack, "viewer"))
    with stack.signed_in("researcher") as researcher:
        created = researcher.post(EXPERIMENTS_CREATE, json={"name": name})
        assert created.status_code == 200, created.text[:500]
        assert created.json()["experiment_id"]


def test_metrics_behind_the_sign_in(stack: Stack) -> None:
    with stack.signed_in("risk") as client:
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert "etf_exporter_scrape_duration_seconds" in metrics.text


# ------------------------------------------------------------------ session life


def test_an_expired_session_renews_from_its_refresh_cookie(stack: Stack) -> None:
    with stack.signed_in("researcher") as client:
        refresh = client.cookies["etf_refresh"]
        client.cookies.delete("etf_access")
        answer = client.post("/dagster/graphql", json={"query": PERMISSIONS})
        assert answer.status_code == 200, answer.text[:500]
        renewed = client.cookies["etf_access"]
        assert security.decode_access_token(JWT_SECRET, renewed).username == "researcher"
        assert client.cookies["etf_refresh"] == refresh     # the session goes on
        # Many requests at once without an access cookie all pass (none spends the session).
        client.cookies.delete("etf_access")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: client.post(
                "/dagster/graphql", json={"query": PERMISSIONS}).status_code, range(8)))
        assert codes == [200] * 8


def test_a_signed_out_session_does_not_pass(stack: Stack) -> None:
    with stack.signed_in("trader") as client:
        access, refresh = client.cookies["etf_access"], client.cookies["etf_refresh"]
        page = client.get("/signin", headers=PAGE)
        assert "Signed in as <strong>trader</strong> (trader)" in page.text
        assert 'action="/signout"' in page.text
        out = client.post("/signout")
        assert out.status_code == 303 and out.headers["location"] == "/signin"
    # The revoked cookies, replayed.
    with stack.client(cookies={"etf_access": access, "etf_refresh": refresh}) as replay:
        answer = replay.post("/dagster/graphql", json={"query": PERMISSIONS})
        assert answer.status_code == 401
    # Without the access cookie, the revoked refresh cookie alone does not pass either.
    with stack.client(cookies={"etf_refresh": refresh}) as replay:
        answer = replay.post("/dagster/graphql", json={"query": PERMISSIONS})
        assert answer.status_code == 401


def test_a_wrong_password_stays_on_the_page(stack: Stack) -> None:
    with stack.client() as client:
        answer = client.post("/signin", data={"username": "viewer", "password": "wrong",
                                              "next": "/mlflow/"})
        assert answer.status_code == 401
        assert "wrong username or password" in answer.text
        assert 'value="/mlflow/"' in answer.text
        assert "etf_access" not in client.cookies
        # Another host is never a target.
        evil = client.get("/signin?next=//evil.example/", headers=PAGE)
        assert 'value="/"' in evil.text


# ------------------------------------------------------------------ across the two locations


def _location(stack: Stack, part: str, day: str) -> dg.Definitions:
    settings = load_settings(home=stack.home, postgres_url=stack.ledger_url,
                             code_location=part, execution={"as_of": day})
    return build_definitions(settings)


def test_the_daily_path_crosses_from_research_to_execution(stack: Stack) -> None:
    """daily_job of the research location ends at the target portfolio; its success launches
    the gate in the execution location, which reads the research location's stored assets and
    checks; approved_signal_sensor follows the new signal there."""
    day = "2025-12-31"
    timezone = load_settings(home=stack.home).schedule_timezone
    evening = pd.Timestamp(f"{day} 23:59").tz_localize(timezone).to_pydatetime()
    with dg.partition_loading_context(effective_dt=evening), \
            dg.DagsterInstance.from_config(str(stack.dagster_home)) as instance:
        research, execution = _location(stack, "research", day), \
            _location(stack, "execution", day)
        daily = research.resolve_job_def("daily_job")
        assert "approved_signal" not in {k.to_user_string() for k in daily.asset_layer.
                                         executable_asset_keys}
        sensor = execution.resolve_sensor_def("approval_after_daily")

        def after(tags: dict[str, str]) -> tuple[str, object]:
            ran = daily.execute_in_process(instance=instance, partition_key=day, tags=tags)
            assert ran.success
            success = instance.all_logs(ran.run_id,
                                        of_type=dg.DagsterEventType.RUN_SUCCESS)[0]
            return ran.run_id, sensor(dg.build_run_status_sensor_context(
                sensor_name=sensor.name, dagster_instance=instance,
                dagster_run=ran.dagster_run, dagster_event=success.get_dagster_event()))

        # Launched by hand (a researcher can, from the research webserver): no decision.
        _, skipped = after({})
        assert isinstance(skipped, dg.SkipReason) and "not launched by" in str(
            skipped.skip_message)
        # Launched by the after-close schedule: the gate runs.
        run_id, request = after({"dagster/schedule_name": "daily_after_close"})
        assert isinstance(request, dg.RunRequest), request
        assert request.run_key == f"approve:{run_id}"

        approval = execution.resolve_job_def("approval_job").execute_in_process(
            instance=instance, tags=request.tags)
        assert approval.success
        decided = approval.asset_materializations_for_node("approved_signal")[0].metadata
        signal_id = str(decided["signal_id"].value)
        assert signal_id.split(":")[2] == day
        ledger = Ledger(stack.ledger_url)
        try:
            stored = ledger.signal(signal_id)
        finally:
            ledger.dispose()
        assert stored is not None and stored.status.value == decided["status"].value

        follow = execution.resolve_sensor_def("approved_signal_sensor")
        with dg.build_sensor_context(instance=instance, definitions=execution, resources={
                "ledger": execution.resources["ledger"]}) as tick:
            result = follow(tick)
        launched = {r.run_key for r in result.run_requests or []}
        assert (signal_id in launched) == (stored.status.value == "approved"), (
            launched, stored.status)


# ------------------------------------------------------------------ in a browser


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    with chromium(SHOTS) as launched:
        yield launched


def _sign_in_page(browser: Any, stack: Stack, username: str, path: str, shot: str) -> Any:
    """A fresh browser session: the surface's page, the sign-in form it leads to, back."""
    page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    page.goto(f"{stack.url}{path}", wait_until="domcontentloaded")
    assert page.url.startswith(f"{stack.url}/signin?next=")
    page.screenshot(path=str(SHOTS / "proxy_sign_in.png"))
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack.url}{path}*", timeout=60_000)
    skip = page.get_by_role("button", name="Skip")    # Dagster's first-visit dialog
    page.wait_for_timeout(3000)
    if skip.count():
        skip.first.click()
    return page


def _locations_page(browser: Any, stack: Stack, username: str) -> tuple[str, bool]:
    """The code locations the role's webserver shows, and whether it may reload them."""
    page = _sign_in_page(browser, stack, username, "/dagster/locations", username)
    page.get_by_text(RESEARCH, exact=True).first.wait_for(timeout=120_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(SHOTS / f"proxy_dagster_{username}.png"), full_page=True)
    text: str = page.inner_text("body")
    reload_all = page.get_by_role("button", name="Reload all")
    may_reload = reload_all.count() > 0 and reload_all.first.is_enabled()
    page.context.close()
    return text, may_reload


def test_each_role_sees_its_dagster_webserver_in_a_browser(stack: Stack, browser: Any) -> None:
    seen, may_reload = _locations_page(browser, stack, "researcher")
    assert EXECUTION not in seen and may_reload
    seen, may_reload = _locations_page(browser, stack, "trader")
    assert EXECUTION in seen and may_reload
    seen, may_reload = _locations_page(browser, stack, "viewer")
    assert EXECUTION in seen and not may_reload     # read-only


def test_the_mlflow_ui_through_the_proxy(stack: Stack, browser: Any) -> None:
    page = _sign_in_page(browser, stack, "viewer", "/mlflow/", "mlflow")
    page.get_by_text("Experiments", exact=False).first.wait_for(timeout=120_000)
    page.wait_for_timeout(3000)
    page.screenshot(path=str(SHOTS / "proxy_mlflow_viewer.png"), full_page=True)
    page.context.close()

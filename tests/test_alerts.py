"""The run-failure alert sensor on a real dagster-postgres instance: a failed run is posted once
to a local webhook with its run id, job, failed step and error; a dead webhook never raises."""

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import pytest

from sensors.alerts import SENSOR_NAME, alert_payload, post_webhook, run_failure_alert_sensor


@dataclass
class Webhook:
    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A local HTTP server recording every POST body (JSON) it receives."""
    hook = Webhook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            hook.posts.append(json.loads(body))
            hook.headers.append(dict(self.headers))
            self.send_response(hook.status)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_port}/hooks/secret-token"
    yield hook
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class FailedRun:
    job: str
    step: str
    result: dg.ExecuteInProcessResult


@pytest.fixture(scope="module")
def failed_run(pg_instance: dg.DagsterInstance) -> FailedRun:
    tag = uuid.uuid4().hex[:8]

    @dg.op(name=f"load_prices_{tag}")
    def load_prices() -> int:
        return 1

    @dg.op(name=f"validate_prices_{tag}")
    def validate_prices(prices: int) -> None:
        raise ValueError(f"prices of 510300 are stale ({prices})")

    @dg.job(name=f"alerting_job_{tag}")
    def alerting_job() -> None:
        validate_prices(load_prices())

    result = alerting_job.execute_in_process(instance=pg_instance, raise_on_error=False)
    assert not result.success
    return FailedRun(alerting_job.name, validate_prices.name, result)


def failure_context(instance: dg.DagsterInstance, run: FailedRun,
                    sensor: dg.SensorDefinition) -> dg.RunStatusSensorContext:
    """The context the daemon hands a run-failure sensor for this run's failure event."""
    return dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_instance=instance,
        dagster_run=run.result.dagster_run, dagster_event=run.result.get_run_failure_event())


def test_failed_run_is_posted_once(pg_instance: dg.DagsterInstance, failed_run: FailedRun,
                                   webhook: Webhook) -> None:
    sensor = run_failure_alert_sensor(webhook.url, timeout=5.0,
                                      dagster_url="http://dagster.local:3000/")
    assert sensor.name == SENSOR_NAME
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING

    sensor(failure_context(pg_instance, failed_run, sensor))

    assert len(webhook.posts) == 1
    body = webhook.posts[0]
    run_id = failed_run.result.run_id
    assert webhook.headers[0]["Content-Type"] == "application/json"
    assert body["run_id"] == run_id
    assert body["job"] == failed_run.job
    assert body["failed_steps"] == [failed_run.step]
    assert "ValueError: prices of 510300 are stale (1)" in body["error"]
    assert body["step_errors"][failed_run.step].startswith("ValueError: prices of 510300")
    assert body["dagster_url"] == f"http://dagster.local:3000/runs/{run_id}"
    for part in (failed_run.job, run_id, "prices of 510300 are stale", body["dagster_url"]):
        assert part in body["text"]


def test_payload_without_webserver_url(pg_instance: dg.DagsterInstance,
                                       failed_run: FailedRun) -> None:
    sensor = run_failure_alert_sensor(None)
    context = failure_context(pg_instance, failed_run, sensor).for_run_failure()
    payload = alert_payload(context)
    assert set(payload) == {"text", "job", "run_id", "error", "failed_steps", "step_errors"}
    json.dumps(payload)                       # serialisable as it is posted


def test_no_webhook_only_logs(pg_instance: dg.DagsterInstance, failed_run: FailedRun,
                              capfd: pytest.CaptureFixture[str]) -> None:
    """Without a webhook the failure is still logged (the sensor's log: the daemon keeps it
    with the tick; a directly built context writes it to stderr)."""
    sensor = run_failure_alert_sensor(None)
    assert sensor(failure_context(pg_instance, failed_run, sensor)) is None
    logged = [line for line in capfd.readouterr().err.splitlines() if "ERROR" in line]
    assert any(failed_run.result.run_id in line and failed_run.step in line
               and "prices of 510300 are stale" in line for line in logged), logged


def test_unreachable_webhook_never_raises(pg_instance: dg.DagsterInstance,
                                          failed_run: FailedRun,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{unused_port()}/hook-token"
    sensor = run_failure_alert_sensor(url, timeout=1.0, retry_delay=0.05)
    started = time.monotonic()
    assert sensor(failure_context(pg_instance, failed_run, sensor)) is None
    assert time.monotonic() - started < 10
    err = capfd.readouterr().err
    assert err.count("retrying") == 2                       # three attempts in all
    assert "NOT delivered" in err
    assert "hook-token" not in err                          # the path may hold a secret


def test_http_error_is_logged_not_retried(webhook: Webhook) -> None:
    webhook.status = 500
    warnings: list[str] = []
    assert not post_webhook(webhook.url, {"text": "x"}, retry_delay=0.01,
                            warn=warnings.append)
    assert len(webhook.posts) == 1
    assert warnings and "HTTP 500" in warnings[0]
    assert "secret-token" not in warnings[0]


def test_sensor_monitors_the_whole_code_location(failed_run: FailedRun) -> None:
    """Registered in Definitions next to jobs, it loads and names no particular job."""

    @dg.op
    def noop() -> None:
        pass

    @dg.job
    def some_job() -> None:
        noop()

    sensor = run_failure_alert_sensor("http://127.0.0.1:9/hook")
    defs = dg.Definitions(jobs=[some_job], sensors=[sensor])
    loaded = defs.resolve_sensor_def(SENSOR_NAME)
    assert loaded.name == SENSOR_NAME
    assert "127.0.0.1:9" in (loaded.description or "") and "/hook" not in (
        loaded.description or "")

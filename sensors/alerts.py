"""``run_failure_alert_sensor``: every failed run of the code location is logged and, when a
webhook is configured, posted to it as JSON.

The payload works with Slack-style incoming webhooks (``text``) and carries the details for
anything else::

    {"text": "...", "job": "...", "run_id": "...", "error": "...",
     "failed_steps": ["step", ...], "step_errors": {"step": "message"},
     "dagster_url": "http://dagster/runs/<run id>"}       # only with a base URL

The webhook never breaks the sensor: connection errors are retried twice, any other failure
(an HTTP error status, a timeout on the last attempt) is logged and the tick still succeeds, so
the daemon moves its cursor on and does not alert about the same run again.
"""


import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import dagster as dg

SENSOR_NAME = "run_failure_alert_sensor"
ERROR_LIMIT = 2000          # characters of error text in the payload (chat webhooks cap size)
RETRIES = 2                 # extra attempts after a connection error

log = logging.getLogger(__name__)


def _error_text(error: Any) -> str:
    """The innermost user-facing message of a SerializableErrorInfo chain."""
    if error is None:
        return ""
    # Dagster wraps an op's exception in a framework error whose cause is the user's error.
    while getattr(error, "cause", None) is not None and str(
            getattr(error, "cls_name", "")).startswith("Dagster"):
        error = error.cause
    cls_name = getattr(error, "cls_name", None)
    message = str(getattr(error, "message", error)).strip()
    if cls_name and not message.startswith(f"{cls_name}:"):
        message = f"{cls_name}: {message}"
    return message


def _truncate(text: str, limit: int = ERROR_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def alert_payload(context: dg.RunFailureSensorContext,
                  dagster_url: str | None = None) -> dict[str, Any]:
    """The JSON body of the alert for the failed run of ``context``.

    ``dagster_url`` is the webserver's base URL (``http://host:3000``); when given, the payload
    links to the run."""
    run = context.dagster_run
    step_errors: dict[str, str] = {}
    for event in context.get_step_failure_events():
        step = event.step_key or "?"
        data = event.event_specific_data
        step_errors.setdefault(step, _truncate(_error_text(getattr(data, "error", None))
                                               or event.message or "step failed"))
    run_error = _error_text(getattr(context.failure_event.event_specific_data, "error", None))
    if step_errors:
        error = "; ".join(f"{step}: {message}" for step, message in step_errors.items())
    else:
        error = run_error or context.failure_event.message or "run failed"
    error = _truncate(error)
    url = (f"{dagster_url.rstrip('/')}/runs/{run.run_id}" if dagster_url else None)
    steps = list(step_errors)
    text = (f"Dagster run failed: job {run.job_name}, run {run.run_id}"
            + (f", failed steps {', '.join(steps)}" if steps else "") + f": {error}"
            + (f" ({url})" if url else ""))
    payload: dict[str, Any] = {
        "text": text,
        "job": run.job_name,
        "run_id": run.run_id,
        "error": error,
        "failed_steps": steps,
        "step_errors": step_errors,
    }
    if url:
        payload["dagster_url"] = url
    return payload


def _host(url: str) -> str:
    """Scheme and host of a webhook URL: the path often holds the secret token."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


def post_webhook(url: str, payload: dict[str, Any], *, timeout: float = 5.0,
                 retries: int = RETRIES, retry_delay: float = 1.0,
                 warn: Callable[[str], None] = log.warning) -> bool:
    """POST ``payload`` as JSON; True when the server answered 2xx. Never raises: connection
    errors are retried ``retries`` times (``retry_delay`` doubling), other failures reported
    through ``warn``."""
    body = json.dumps(payload).encode("utf-8")
    where = _host(url)
    delay = retry_delay
    for attempt in range(retries + 1):
        request = urllib.request.Request(
            url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "etf-rotation-alerts"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
                return True
        except urllib.error.HTTPError as exc:           # the server answered: no retry
            warn(f"alert webhook {where} answered HTTP {exc.code} {exc.reason}; "
                 "alert not delivered")
            return False
        except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, DNS, timeout
            reason = getattr(exc, "reason", exc)
            if attempt < retries:
                warn(f"alert webhook {where} unreachable ({reason}); retrying in {delay:g}s")
                time.sleep(delay)
                delay *= 2
                continue
            warn(f"alert webhook {where} unreachable after {retries + 1} attempts ({reason}); "
                 "alert not delivered")
            return False
        except Exception as exc:                         # never let the alert break the tick
            warn(f"alert webhook {where} failed ({type(exc).__name__}: {exc}); "
                 "alert not delivered")
            return False
    return False


def run_failure_alert_sensor(webhook_url: str | None, timeout: float = 5.0, *,
                             dagster_url: str | None = None, retry_delay: float = 1.0,
                             minimum_interval_seconds: int = 30,
                             name: str = SENSOR_NAME) -> dg.SensorDefinition:
    """A run-failure sensor over every job of the code location (running by default).

    Each failed run is logged with ``context.log.error``; with ``webhook_url`` it is also POSTed
    there (see the module docstring). ``dagster_url`` (the webserver's base URL) adds a link."""
    target = _host(webhook_url) if webhook_url else "no webhook configured"

    @dg.run_failure_sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Logs every failed run of this code location and posts it to the alert "
        f"webhook ({target}).",
    )
    def _alert(context: dg.RunFailureSensorContext) -> None:
        payload = alert_payload(context, dagster_url)
        context.log.error(
            f"run failed: job={payload['job']} run_id={payload['run_id']} "
            f"failed_steps={payload['failed_steps']} error={payload['error']}")
        if not webhook_url:
            return
        delivered = post_webhook(webhook_url, payload, timeout=timeout,
                                 retry_delay=retry_delay, warn=context.log.warning)
        if delivered:
            context.log.info(f"alert for run {payload['run_id']} posted to {target}")
        else:
            context.log.error(f"alert for run {payload['run_id']} NOT delivered to {target}")

    return _alert

"""Executions that stall: the ledger says ``running`` but no Dagster run is working on them.

A run killed between planning and its last order (worker or code server gone, the run failed
by run monitoring) leaves its execution ``running`` in the ledger. Nothing else would notice:
the sensor launched the signal once, parity compares the book. ``stalled_execution_sensor``
finds such executions, alerts (log and webhook) and launches the execution again for the same
signal. That is safe because the executor is write-ahead and idempotent: the retry adopts what
the venue already has, sends only the planned orders still unsent, and sends nothing at all
once the orders' session has closed (it halts and says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from jobs.execution import ACCOUNT_TAG, SIGNAL_TAG, signal_run_config
from resources.ledger import LedgerResource
from sensors.alerts import post_webhook
from trading.account import Account
from trading.ledger import ExecutionRecord, Ledger

SENSOR_NAME = "stalled_execution_sensor"
RECOVERS_TAG = "etf/recovers_run"
MAX_RECOVERIES = 3
# Set by Dagster on a failed run that run_retries (deploy/dagster.prod.yaml) will relaunch.
WILL_RETRY = "dagster/will_retry"
_ACTIVE = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
           dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
           dg.DagsterRunStatus.CANCELING}


@dataclass(frozen=True)
class Stall:
    execution: ExecutionRecord
    run_status: str          # the Dagster run's status, or "missing"

    def describe(self) -> str:
        e = self.execution
        return (f"execution of signal {e.signal_id} (account {e.account_id}) is running in the "
                f"ledger since {e.started_at:%Y-%m-%d %H:%M:%S %Z} but its Dagster run "
                f"{e.dagster_run_id or '(none)'} is {self.run_status}")


def stalled_executions(instance: dg.DagsterInstance, ledger: Ledger,
                       account_id: str) -> list[Stall]:
    """Running executions of the account whose Dagster run is finished or unknown."""
    stalls = []
    for execution in ledger.executions(status="running", account_id=account_id):
        run = instance.get_run_by_id(execution.dagster_run_id) \
            if execution.dagster_run_id else None
        if run is not None and (run.status in _ACTIVE or run.tags.get(WILL_RETRY) == "true"):
            continue            # still working, or run_retries is about to relaunch it
        stalls.append(Stall(execution, run.status.value if run is not None else "missing"))
    return stalls


def _recovery(stall: Stall, account_id: str, attempt: int, prefix: str) -> dg.RunRequest:
    e = stall.execution
    return dg.RunRequest(
        # One run per attempt: a recovery that dies too (even before it reaches the ledger)
        # is followed by the next attempt, up to MAX_RECOVERIES.
        run_key=f"recover:{e.signal_id}:{attempt}",
        run_config=signal_run_config(e.signal_id, prefix),
        tags={ACCOUNT_TAG: account_id, SIGNAL_TAG: e.signal_id,
              RECOVERS_TAG: e.dagster_run_id or "none"})


def stalled_execution_sensor(job: dg.JobDefinition, account: Account,
                             webhook_url: str | None, timeout: float = 5.0,
                             minimum_interval_seconds: int = 60, prefix: str = ""
                             ) -> dg.SensorDefinition:
    """``prefix``: of a further account's sensor name."""
    account_id = account.account_id

    @dg.sensor(
        name=f"{prefix}{SENSOR_NAME}", job=job, minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Finds executions of account {account_id} left running by a dead run, "
        f"alerts and launches {job.name} again for the signal (idempotent, write-ahead).")
    def _sensor(context: dg.SensorEvaluationContext, ledger: LedgerResource
                ) -> dg.SensorResult | dg.SkipReason:
        book = ledger.ledger
        stalls = stalled_executions(context.instance, book, account_id)
        if not stalls:
            return dg.SkipReason(f"no stalled execution of account {account_id}")
        requests = []
        for stall in stalls:
            runs = context.instance.get_runs(
                filters=dg.RunsFilter(tags={SIGNAL_TAG: stall.execution.signal_id}))
            if any(r.status in _ACTIVE for r in runs):
                continue        # a run for the signal is queued or working: let it
            tries = sum(1 for r in runs if RECOVERS_TAG in r.tags)
            if tries < MAX_RECOVERIES:
                _alert(context, stall, f"relaunching execution_job (recovery {tries + 1} of "
                       f"{MAX_RECOVERIES})", webhook_url, timeout)
                requests.append(_recovery(stall, account_id, tries + 1, prefix))
                continue
            # A failure that recurs is not a crash: stop, say so, leave it to an operator.
            reason = f"{stall.describe()}; {tries} recoveries failed: needs an operator"
            book.finish_execution(stall.execution.signal_id, "failed",
                                  actor=f"sensor:{SENSOR_NAME}", reason=reason)
            _alert(context, stall, "marked failed after "
                   f"{tries} recoveries; re-execute it by hand once the cause is fixed",
                   webhook_url, timeout)
        return dg.SensorResult(run_requests=requests)

    return _sensor


def _alert(context: dg.SensorEvaluationContext, stall: Stall, action: str,
           webhook_url: str | None, timeout: float) -> None:
    text = f"stalled execution: {stall.describe()}; {action}"
    context.log.error(text)
    if webhook_url:
        post_webhook(webhook_url, {"text": text, "signal_id": stall.execution.signal_id,
                                   "account_id": stall.execution.account_id,
                                   "dagster_run_id": stall.execution.dagster_run_id,
                                   "run_status": stall.run_status},
                     timeout=timeout, warn=context.log.warning)

"""``slice_end_sensor``: the intraday driver of cancel/replace at the end of a slice (issue 18
item 4). Every 30 s it asks the ledger which slices of the account's sliced orders have ended
by the deployment's clock with orders still open at the venue (``trading.slice_end.slices_due``)
and launches ``slice_end_job`` once for each (parent, slice).

Once: the run key is the parent and the slice, so a replayed tick, a restarted daemon or a
slice still due on the next tick launches nothing new; a slice whose run is queued or working,
or whose run ended with the slice still due (its retries spent), is not asked for again: the
sensor says so, and an operator re-executes that run (the close is idempotent).

Only accounts on a venue whose children rest past their slice end (the vn.py venue:
``trading.slice_end.closes_slices``) have this sensor. Not on the test venue's replay clock
(``execution.vnpy.replay_clock``): its market moves only when an execution replays a session,
so by the wall clock every child would look unfilled at its slice end.
"""

from __future__ import annotations

import json

import dagster as dg

from jobs.execution import ACCOUNT_TAG
from jobs.slice_end import PARENT_TAG, SLICE_END_TAG, SLICE_TAG, slice_key, slice_run_config
from resources.clock import ClockResource
from resources.execution import ExecutionResource, VnpyExecution
from resources.ledger import LedgerResource
from trading.account import Account
from trading.slice_end import closes_slices, slices_due

SENSOR_NAME = "slice_end_sensor"
_ACTIVE = {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
           dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
           dg.DagsterRunStatus.CANCELING}


def slice_end_sensor(job: dg.JobDefinition, account: Account, prefix: str = "",
                     minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    """``prefix``: of a further account's sensor name."""
    account_id = account.account_id
    if not closes_slices(account.venue):
        raise ValueError(f"slice_end_sensor: account {account_id} trades on venue "
                         f"{account.venue!r}, which fills each child at its scheduled time: "
                         "no slice of it is closed")

    @dg.sensor(
        name=f"{prefix}{SENSOR_NAME}", job=job, minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Launches {job.name} once per slice of account {account_id}'s sliced "
        "orders whose end has passed with orders still open (cancel, record fills, send the "
        "remainder in the next slice).")
    def _sensor(context: dg.SensorEvaluationContext, ledger: LedgerResource,
                execution: ExecutionResource, clock: ClockResource
                ) -> dg.SensorResult | dg.SkipReason:
        if isinstance(execution, VnpyExecution) and execution.replay_clock:
            return dg.SkipReason("the venue is the test venue on its replay clock: its market "
                                 "moves when an execution replays a session, not by the "
                                 "clock; no slice is closed")
        now = clock.now().to_pydatetime()
        due = slices_due(ledger.ledger, account_id, now)
        if not due:
            return dg.SkipReason(f"no slice of {account_id} due at {now:%Y-%m-%d %H:%M:%S}")
        requests, stuck = [], set()
        reported = set(json.loads(context.cursor)) if context.cursor else set()
        for parent, k in _first_due_of_each_parent(due):
            key = slice_key(parent, k)
            of_parent = context.instance.get_runs(filters=dg.RunsFilter(
                job_name=job.name, tags={PARENT_TAG: parent}))
            if any(r.status in _ACTIVE for r in of_parent):
                # A slice of this parent is being closed: its slices close in order (a later
                # one closed first would leave the earlier one's replacement to nobody).
                continue
            runs = [r for r in of_parent if r.tags.get(SLICE_END_TAG) == key]
            if runs:
                stuck.add(key)
                if key not in reported:     # said once, not every tick
                    context.log.error(f"slice {k} of {parent} is still due after run "
                                      f"{runs[0].run_id} ended {runs[0].status.value}: "
                                      "re-execute that run once the cause is fixed")
                continue
            requests.append(dg.RunRequest(
                run_key=f"slice_end:{key}", run_config=slice_run_config(parent, k, prefix),
                tags={ACCOUNT_TAG: account_id, PARENT_TAG: parent, SLICE_TAG: str(k),
                      SLICE_END_TAG: key}))
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(sorted(stuck)))

    return _sensor


def _first_due_of_each_parent(due: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The earliest due slice of each parent (``due``: earliest end first): the next is asked
    for once it is closed."""
    first: dict[str, int] = {}
    for parent, k in due:
        first.setdefault(parent, k)
    return list(first.items())

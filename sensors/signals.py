"""``approved_signal_sensor``: hands each approved signal to ``execution_job`` exactly once.

The cursor walks the ``approved_signal`` materialisations in storage order, so no signal is
skipped when several arrive between ticks. The run key is the signal id: a replayed tick, a
restarted daemon or a reset cursor asks for the same keys again and Dagster launches nothing
new; the execution itself is idempotent in the ledger as a second line of defence. A
materialisation whose signal is not approved in this deployment's ledger (e.g. recorded against
another ledger) is skipped and logged.
"""

import dagster as dg

from jobs.execution import ACCOUNT_TAG, SIGNAL_TAG, signal_run_config
from resources.ledger import LedgerResource
from trading.account import Account
from trading.models import SignalStatus

PAGE = 100


def approved_signal_sensor(job: dg.JobDefinition, account: Account, prefix: str = "",
                           gate: str = "approved_signal") -> dg.SensorDefinition:
    """``prefix``: of a further account's names; ``gate``: its approved_signal's key."""
    account_id = account.account_id

    @dg.sensor(
        name=f"{prefix}approved_signal_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=None,
        description=f"Launches {job.name} once per approved signal of account {account_id} "
        "(run key = signal id); rejected signals launch nothing.",
    )
    def _sensor(context: dg.SensorEvaluationContext, ledger: LedgerResource
                ) -> dg.SensorResult:
        found = context.instance.fetch_materializations(
            dg.AssetKey.from_user_string(gate), limit=PAGE, cursor=context.cursor, ascending=True)
        requests, skipped = [], []
        for record in found.records:
            materialization = record.asset_materialization
            assert materialization is not None
            meta = materialization.metadata
            if not record.run_id or "signal_id" not in meta or "status" not in meta:
                # Reported without a run (Dagster's report mutations): not the gate's.
                context.log.warning(f"approved_signal materialisation {record.storage_id} "
                                    "was not made by a run of the gate: ignored")
                continue
            signal_id = str(meta["signal_id"].value)
            if meta["status"].value != "approved":
                skipped.append(signal_id)
                continue
            stored = ledger.ledger.signal(signal_id)
            if stored is None or stored.status is not SignalStatus.APPROVED:
                context.log.warning(f"approved_signal {signal_id} is not approved in the "
                                    f"ledger of account {account_id}: not executed")
                continue
            requests.append(dg.RunRequest(
                run_key=signal_id,
                run_config=signal_run_config(signal_id, prefix),
                tags={ACCOUNT_TAG: account_id, SIGNAL_TAG: signal_id}))
        if skipped:
            context.log.info(f"rejected signals, not executed: {skipped}")
        return dg.SensorResult(run_requests=requests,
                               cursor=found.cursor if found.records else context.cursor)

    return _sensor

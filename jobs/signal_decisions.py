"""Operator decisions on signals, from the Dagster UI: ``supersede_signal_job`` sets an approved
signal of the account aside (approved -> superseded), audited with the run as actor and the
operator's reason, so that another target can be approved for that session (one approved signal
per account and session, SPEC §9 and issue 11).

The ledger refuses once any order of the signal went to a venue, or its execution is running,
completed or halted: such a signal is stopped with ``kill_switch_job`` or corrected in a later
session. The sensor never launches a superseded signal (it executes only signals the ledger
holds as approved), and an execution that starts later refuses it too.
"""

import dagster as dg
from pydantic import Field

from resources.ledger import LedgerResource
from trading.account import Account
from trading.ledger import LedgerError
from trading.models import SignalStatus


class SupersedeSignalConfig(dg.Config):
    signal_id: str = Field(description="The approved signal to set aside (its ledger id)")
    reason: str = Field(min_length=1,
                        description="Why: kept in the ledger's audit log with the run as actor")


def supersede_signal_job(account: Account, prefix: str = "") -> dg.JobDefinition:
    """The job for ``account``: a signal of another account is refused, whatever the ledger
    holds. ``prefix``: of a further account's job and op names."""
    account_id = account.account_id

    @dg.op(
        name=f"{prefix}supersede_signal",
        out=dg.Out(dg.Nothing, description="The decision is in the ledger and its audit log"),
        description="Supersede one approved signal of the account in the ledger (refused once "
        "it traded or its execution ran).",
    )
    def supersede_signal(context: dg.OpExecutionContext, config: SupersedeSignalConfig,
                         ledger: LedgerResource) -> dg.Output[None]:
        book = ledger.ledger
        stored = book.signal(config.signal_id)
        if stored is None:
            raise dg.Failure(f"signal {config.signal_id} is not in the ledger",
                             allow_retries=False)
        if stored.account_id != account_id:
            raise dg.Failure(f"signal {config.signal_id} belongs to account {stored.account_id}, "
                             f"not {account_id} (this job's account)",
                             allow_retries=False)
        already = stored.status is SignalStatus.SUPERSEDED
        try:
            record = book.supersede_signal(config.signal_id,
                                           actor=f"dagster:{context.run.run_id}",
                                           reason=config.reason)
        except LedgerError as exc:
            raise dg.Failure(str(exc), allow_retries=False) from None
        context.log.warning(
            f"signal {record.signal_id} of {account_id} for {record.as_of} "
            + ("was already superseded" if already else f"superseded: {config.reason}"))
        return dg.Output(None, metadata={
            "signal_id": dg.MetadataValue.text(record.signal_id),
            "account_id": dg.MetadataValue.text(record.account_id),
            "as_of": dg.MetadataValue.text(record.as_of.isoformat()),
            "status": dg.MetadataValue.text(str(record.status)),
            "already_superseded": dg.MetadataValue.bool(already),
        })

    @dg.job(
        name=f"{prefix}supersede_signal_job",
        executor_def=dg.in_process_executor,
        description="Sets an approved signal aside (config: signal_id, reason) so that another "
        "target can be approved for its session; refused once any of its orders reached the "
        "venue. Audited in the ledger with the run as actor.",
    )
    def _job() -> None:
        supersede_signal()

    return _job

"""Signals with their approval or rejection reasons (the ledger's decisions)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from api.dagster_runs import IMPLICIT_ASSET_JOB
from api.deps import ApiState, CurrentSession, PageParams, State, authorize
from api.paging import fields_of, page_from
from api.permissions import V1
from api.routers.runs import DAGSTER_RESPONSES, REQUESTED_BY_TAG, dagster_url, launch_audited
from api.routers.strategies import latest_target
from api.schemas import (
    PLAIN_TEXT,
    SIGNED_IN_RESPONSES,
    Page,
    Problem,
    RedecideLaunched,
    SignalOut,
    SignalRedecide,
    text_filter,
)
from jobs.execution import SIGNAL_TAG
from trading import approval
from trading.ledger import SignalRecord
from trading.models import SignalStatus, signal_id_of

SignalId = Annotated[str, Path(max_length=200, pattern=PLAIN_TEXT)]
# The asset of the approval gate.
GATE_ASSET = "approved_signal"
router = APIRouter(prefix=f"{V1}/signals", tags=["signals"], dependencies=[Depends(authorize)],
                   responses=SIGNED_IN_RESPONSES)


def signal_out(record: SignalRecord) -> SignalOut:
    return SignalOut(**{**fields_of(record), "status": record.status.value})


@router.get("", summary="Signals, newest session first")
def list_signals(state: State, paging: PageParams,
                 account_id: Annotated[str | None, text_filter(200)] = None,
                 status_: Annotated[SignalStatus | None, Query(alias="status")] = None,
                 strategy: Annotated[str | None, text_filter(200)] = None,
                 since: Annotated[dt.date | None, Query(description="as_of on or after")] = None,
                 until: Annotated[dt.date | None, Query(description="as_of on or before")] = None,
                 ) -> Page[SignalOut]:
    found = state.ledger.signals_page(account_id=account_id, status=status_, strategy=strategy,
                                      since=since, until=until, limit=paging.limit,
                                      offset=paging.offset)
    return page_from(found, paging, signal_out)


@router.get("/{signal_id}", summary="One signal", responses={404: {"description": "No such "
                                                                     "signal"}})
def get_signal(signal_id: SignalId, state: State) -> SignalOut:
    record = state.ledger.signal(signal_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no signal {signal_id!r}")
    return signal_out(record)


def _redecidable(state: ApiState, signal_id: str) -> SignalRecord:
    """The rejected signal the gate can decide again, else 404 or 409 saying why."""
    record = state.ledger.signal(signal_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no signal {signal_id!r}")
    if record.status is not SignalStatus.REJECTED:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=(
            f"signal {signal_id} is {record.status.value}: only a rejected signal is decided "
            "again (an approved one is final; supersede it with supersede_signal_job)"))
    account = state.settings.execution.account_id
    if record.account_id != account:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=(
            f"signal {signal_id} is of account {record.account_id}: the gate of this "
            f"deployment decides for account {account}"))
    # approved_signal decides the latest stored target: launching it for another session or
    # other weights would decide another signal while the audit said this one.
    target = latest_target(state.settings.resolved_storage_root, record.strategy)
    gate_would_decide = None if target is None else signal_id_of(
        record.strategy, account, target.as_of, approval.proposed_weights(
            [w.symbol for w in target.weights], [w.weight for w in target.weights]))
    if gate_would_decide != signal_id:
        latest = "none is stored" if target is None else \
            f"as of {target.as_of}, signal {gate_would_decide}"
        raise HTTPException(status.HTTP_409_CONFLICT, detail=(
            f"signal {signal_id} is not the latest target portfolio of {record.strategy} "
            f"({latest}): the gate decides only that one, a past target is not re-decided"))
    return record


@router.post("/{signal_id}/redecide", status_code=status.HTTP_202_ACCEPTED,
             summary="Ask the approval gate to decide a rejected signal again",
             description="Launches a materialisation of approved_signal through Dagster: the "
             "gate applies its own checks and risk limits again (no override). Answers with "
             "the run; the decision is in the ledger when the run succeeds.",
             responses={404: {"model": Problem, "description": "No such signal"},
                        409: {"model": Problem, "description": "Not a rejected signal of the "
                              "latest target"}, **DAGSTER_RESPONSES})
def redecide(signal_id: SignalId, body: SignalRedecide, session: CurrentSession,
             state: State) -> RedecideLaunched:
    record = _redecidable(state, signal_id)
    location = state.dagster.execution_location
    tags = {REQUESTED_BY_TAG: session.actor, SIGNAL_TAG: signal_id}
    run_id = launch_audited(
        state, session, action="signals.redecide", entity="signal", entity_id=signal_id,
        reason=body.reason, details={"as_of": record.as_of.isoformat(), "location": location},
        launch=lambda: state.dagster.launch(IMPLICIT_ASSET_JOB, location=location, tags=tags,
                                            assets=[GATE_ASSET]))
    return RedecideLaunched(signal_id=signal_id, run_id=run_id,
                            status_url=f"{V1}/runs/{run_id}",
                            dagster_url=dagster_url(state, run_id))

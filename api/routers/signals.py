"""Signals with their approval or rejection reasons (the ledger's decisions)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from api.deps import PageParams, State, authorize
from api.paging import page_of
from api.permissions import V1
from api.schemas import PLAIN_TEXT, SIGNED_IN_RESPONSES, Page, SignalOut, text_filter
from trading.ledger import SignalRecord
from trading.models import SignalStatus

router = APIRouter(prefix=f"{V1}/signals", tags=["signals"], dependencies=[Depends(authorize)],
                   responses=SIGNED_IN_RESPONSES)


def signal_out(record: SignalRecord) -> SignalOut:
    return SignalOut(**{**dataclasses.asdict(record), "status": record.status.value})


@router.get("", summary="Signals, newest session first")
def list_signals(state: State, paging: PageParams,
                 account_id: Annotated[str | None, text_filter(200)] = None,
                 status_: Annotated[SignalStatus | None, Query(alias="status")] = None,
                 strategy: Annotated[str | None, text_filter(200)] = None,
                 since: Annotated[dt.date | None, Query(description="as_of on or after")] = None,
                 until: Annotated[dt.date | None, Query(description="as_of on or before")] = None,
                 ) -> Page[SignalOut]:
    records = state.ledger.signals(account_id, status_)
    chosen = [s for s in reversed(records)
              if (strategy is None or s.strategy == strategy)
              and (since is None or s.as_of >= since) and (until is None or s.as_of <= until)]
    return page_of(chosen, paging, signal_out)


@router.get("/{signal_id}", summary="One signal", responses={404: {"description": "No such "
                                                                     "signal"}})
def get_signal(signal_id: Annotated[str, Path(max_length=200, pattern=PLAIN_TEXT)],
               state: State) -> SignalOut:
    record = state.ledger.signal(signal_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no signal {signal_id!r}")
    return signal_out(record)

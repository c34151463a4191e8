"""Signals with their approval or rejection reasons (the ledger's decisions)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from api.deps import PageParams, State, authorize
from api.paging import fields_of, page_from
from api.permissions import V1
from api.schemas import PLAIN_TEXT, SIGNED_IN_RESPONSES, Page, SignalOut, text_filter
from trading.ledger import SignalRecord
from trading.models import SignalStatus

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
def get_signal(signal_id: Annotated[str, Path(max_length=200, pattern=PLAIN_TEXT)],
               state: State) -> SignalOut:
    record = state.ledger.signal(signal_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no signal {signal_id!r}")
    return signal_out(record)

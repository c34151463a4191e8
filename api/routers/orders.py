"""Orders as the ledger records them (TWAP parents and their children)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from api.deps import PageParams, State, authorize
from api.paging import fields_of, page_from
from api.permissions import V1
from api.schemas import PLAIN_TEXT, SIGNED_IN_RESPONSES, OrderOut, Page, text_filter
from trading.ledger import OrderRecord
from trading.models import OrderStatus, Side

router = APIRouter(prefix=f"{V1}/orders", tags=["orders"], dependencies=[Depends(authorize)],
                   responses=SIGNED_IN_RESPONSES)


def order_out(record: OrderRecord) -> OrderOut:
    return OrderOut(**{**fields_of(record), "side": record.side.value,
                       "status": OrderStatus(record.status).value})


@router.get("", summary="Orders, most recently recorded first")
def list_orders(state: State, paging: PageParams,
                account_id: Annotated[str | None, text_filter(200)] = None,
                signal_id: Annotated[str | None, text_filter(200)] = None,
                status_: Annotated[OrderStatus | None, Query(alias="status")] = None,
                symbol: Annotated[str | None, text_filter(50)] = None,
                side: Annotated[Side | None, Query()] = None,
                session: Annotated[dt.date | None, Query()] = None) -> Page[OrderOut]:
    found = state.ledger.orders_page(signal_id=signal_id, account_id=account_id, status=status_,
                                     symbol=symbol, side=side, session=session,
                                     limit=paging.limit, offset=paging.offset)
    return page_from(found, paging, order_out)


@router.get("/{order_id}", summary="One order",
            responses={404: {"description": "No such order"}})
def get_order(order_id: Annotated[str, Path(max_length=200, pattern=PLAIN_TEXT)],
              state: State) -> OrderOut:
    record = state.ledger.order(order_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no order {order_id!r}")
    return order_out(record)

"""The append-only audit log of the ledger: decisions, orders, fills, the kill switch and
every API mutation or refused call."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.deps import PageParams, State, authorize
from api.permissions import V1
from api.schemas import SIGNED_IN_RESPONSES, AuditOut, Page, text_filter

router = APIRouter(prefix=f"{V1}/audit", tags=["audit"], dependencies=[Depends(authorize)],
                   responses=SIGNED_IN_RESPONSES)


@router.get("", summary="Audit entries, newest first")
def list_audit(state: State, paging: PageParams,
               entity: Annotated[str | None, text_filter(100)] = None,
               entity_id: Annotated[str | None, text_filter(300)] = None,
               action: Annotated[str | None, text_filter(100)] = None,
               actor: Annotated[str | None, text_filter(200)] = None,
               since: Annotated[dt.datetime | None, Query(
                   description="at or after (UTC unless an offset is given)")] = None,
               ) -> Page[AuditOut]:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)        # a time without an offset is UTC
    entries, total = state.ledger.audit_page(
        entity=entity, entity_id=entity_id, action=action, actor=actor, since=since,
        limit=paging.limit, offset=paging.offset)
    return Page[AuditOut](items=[AuditOut(**e) for e in entries], total=total,
                          limit=paging.limit, offset=paging.offset)

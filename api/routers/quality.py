"""Quality-check results per session, from the Dagster instance."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, status

from api.dagster_checks import NoInstanceError
from api.deps import State, authorize
from api.permissions import V1
from api.schemas import SIGNED_IN_RESPONSES, CheckResultOut, SessionQuality

router = APIRouter(prefix=f"{V1}/quality", tags=["quality"], dependencies=[Depends(authorize)],
                   responses=SIGNED_IN_RESPONSES)


@router.get("/sessions/{session}", summary="The check results of a session's market data",
            responses={404: {"description": "Nothing materialised for the session"},
                       503: {"description": "No Dagster instance configured"}})
def session_quality(session: Annotated[dt.date, Path(description="YYYY-MM-DD")],
                    state: State) -> SessionQuality:
    try:
        records = state.checks.for_session(session)
    except NoInstanceError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from None
    if not records:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"session: no checked asset materialised for {session}")
    checks = [CheckResultOut(**dataclasses.asdict(r)) for r in records]
    passed = all(c.passed for c in checks if c.blocking)
    return SessionQuality(session=session, passed=passed, checks=checks)

"""Dependencies: the service state, the signed-in user, authorisation against the permission
table (a refused call is audited) and paging."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordBearer

from api import security
from api.dagster_checks import DagsterChecks
from api.permissions import V1, allowed, permission_of
from api.ratelimit import LoginLimiter
from api.store import Audit, User, UserStore
from orchestration.settings import Settings
from trading.ledger import Ledger


@dataclass
class ApiState:
    settings: Settings
    ledger: Ledger
    users: UserStore
    limiter: LoginLimiter
    signing_key: str
    checks: DagsterChecks

    @property
    def access_lifetime(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.settings.api.access_token_minutes)

    @property
    def refresh_lifetime(self) -> dt.timedelta:
        return dt.timedelta(hours=self.settings.api.refresh_token_hours)


def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


State = Annotated[ApiState, Depends(get_state)]

bearer = OAuth2PasswordBearer(tokenUrl=f"{V1}/auth/token", auto_error=False)


@dataclass(frozen=True)
class Session:
    user: User
    claims: security.AccessClaims

    @property
    def actor(self) -> str:
        # Audit rows of the API name their user so: apart from dagster:<run> and the gate.
        return f"api:{self.user.username}"


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail,
                         headers={"WWW-Authenticate": "Bearer"})


def signed_in(state: State, token: Annotated[str | None, Depends(bearer)]) -> Session:
    if not token:
        raise _unauthorized("not signed in: send Authorization: Bearer <access token>")
    try:
        claims = security.decode_access_token(state.signing_key, token)
    except security.InvalidTokenError as exc:
        raise _unauthorized(str(exc)) from None
    user = state.users.signed_in_user(claims.username, claims.jti)
    if user is None:
        raise _unauthorized("the access token was revoked or its user is disabled")
    return Session(user=user, claims=claims)


def authorize(request: Request, state: State,
              session: Annotated[Session, Depends(signed_in)]) -> Session:
    """The caller's role against the permission table for the matched route."""
    route: APIRoute = request.scope["route"]
    permission = permission_of(request.method, route.path)
    if allowed(session.user.role, permission):
        return session
    why = f"role {session.user.role} lacks permission {permission}"
    state.users.audit(Audit(actor=session.actor, action="access_denied", entity="api_route",
                            entity_id=f"{request.method} {route.path}", reason=why,
                            details={"path": request.url.path,
                                     "role": session.user.role.value,
                                     "permission": permission}))
    raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"forbidden: {why}")


CurrentSession = Annotated[Session, Depends(authorize)]


@dataclass(frozen=True)
class Paging:
    limit: int
    offset: int


def paging(limit: Annotated[int, Query(ge=1, le=500, description="Page size")] = 50,
           offset: Annotated[int, Query(ge=0, le=10_000_000, description="Items to skip")] = 0
           ) -> Paging:
    return Paging(limit=limit, offset=offset)


PageParams = Annotated[Paging, Depends(paging)]

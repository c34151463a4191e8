"""Dependencies: the service state, the signed-in user, authorisation against the permission
table (a refused call is audited) and paging."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Query, Request, WebSocket, WebSocketException, status
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi.security import OAuth2PasswordBearer
from starlette.requests import HTTPConnection

from api import security
from api.dagster_checks import DagsterChecks
from api.dagster_runs import DagsterRuns
from api.events import EventHub
from api.experiments import Tracking
from api.permissions import V1, WEBSOCKET, allowed, permission_of
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
    events: EventHub
    tracking: Tracking
    dagster: DagsterRuns

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


# Browser sessions: the access token and the refresh token in HttpOnly cookies (SameSite=Lax:
# a cross-site form or script cannot send them with a POST). Set by api/signin.py.
ACCESS_COOKIE = "etf_access"
REFRESH_COOKIE = "etf_refresh"
# Longer than any token this API issues: not ours, not looked at.
_COOKIE_MAX_LENGTH = {ACCESS_COOKIE: 4096, REFRESH_COOKIE: 200}
# The header the desk console's script sends with every JSON call: a page of another origin
# cannot set it without a CORS preflight, which this API never grants, so a call carrying it
# and the cookie comes from this site's own pages (besides SameSite=Lax and Sec-Fetch-Site).
CONSOLE_HEADER = "x-desk-console"


def cookie(connection: HTTPConnection, name: str) -> str | None:
    """A session cookie, or None when absent or longer than any token this API issues."""
    value = connection.cookies.get(name)
    return value if value and len(value) <= _COOKIE_MAX_LENGTH[name] else None


def from_another_site(connection: HTTPConnection) -> bool:
    """The browser says the request comes from another site (Sec-Fetch-Site), or a
    WebSocket's Origin is not this host (browsers send cookies on a cross-site handshake)."""
    if connection.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = connection.headers.get("origin")
    return origin is not None and urlsplit(origin).netloc != connection.headers.get("host")


def access_token(request: Request, bearer_token: Annotated[str | None, Depends(bearer)]
                 ) -> str | None:
    """The bearer token; else, on a call of the console's script (its header, from this
    site), the browser session's access cookie."""
    if bearer_token:
        return bearer_token
    if request.headers.get(CONSOLE_HEADER) != "1" or from_another_site(request):
        return None
    return cookie(request, ACCESS_COOKIE)


def signed_in(state: State, token: Annotated[str | None, Depends(access_token)]) -> Session:
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


def _refuse(state: ApiState, session: Session, method: str, route: str, path: str,
            permission: str) -> str:
    """Audit a call the permission table refuses; the reason to answer with."""
    why = f"role {session.user.role} lacks permission {permission}"
    state.users.audit(Audit(actor=session.actor, action="access_denied", entity="api_route",
                            entity_id=f"{method} {route}", reason=why,
                            details={"path": path, "role": session.user.role.value,
                                     "permission": permission}))
    return why


def authorize(request: Request, state: State,
              session: Annotated[Session, Depends(signed_in)]) -> Session:
    """The caller's role against the permission table for the matched route."""
    route: APIRoute = request.scope["route"]
    permission = permission_of(request.method, route.path)
    if allowed(session.user.role, permission):
        return session
    why = _refuse(state, session, request.method, route.path, request.url.path, permission)
    raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"forbidden: {why}")


# Close codes of a refused WebSocket: 4000 + the HTTP status a REST call would get.
WS_UNAUTHORIZED = 4401
WS_FORBIDDEN = 4403


def _websocket_session(state: ApiState, websocket: WebSocket, token: str | None) -> Session:
    """The signed-in session of a WebSocket, checked against the permission table (a refusal
    is audited as on REST routes); raises WebSocketException with the close code."""
    header = websocket.headers.get("authorization", "")
    if not token and header.lower().startswith("bearer "):
        token = header[len("bearer "):]
    if not token and not from_another_site(websocket):
        # The console's page: a browser sends its cookies and its Origin with the handshake.
        token = cookie(websocket, ACCESS_COOKIE)
    try:
        session = signed_in(state, token)
    except HTTPException as exc:
        raise WebSocketException(WS_UNAUTHORIZED, reason=str(exc.detail)[:120]) from None
    route: APIWebSocketRoute = websocket.scope["route"]
    permission = permission_of(WEBSOCKET, route.path)
    if not allowed(session.user.role, permission):
        why = _refuse(state, session, WEBSOCKET, route.path, websocket.url.path, permission)
        raise WebSocketException(WS_FORBIDDEN, reason=f"forbidden: {why}"[:120])
    return session


async def authorize_websocket(
        websocket: WebSocket,
        token: Annotated[str | None, Query(max_length=4096,
                                           description="The access token (browsers cannot "
                                           "set a header on a WebSocket)")] = None) -> Session:
    """:func:`authorize` for a WebSocket route: the token from ``?token=`` or the
    Authorization header. A refused socket is accepted and then closed with 4401 or 4403, so
    that the client reads why (a socket closed during the handshake only sees an HTTP 403)."""
    state: ApiState = websocket.app.state.api
    try:
        return await run_in_threadpool(_websocket_session, state, websocket, token)
    except WebSocketException:
        await websocket.accept()
        raise


WebSocketSession = Annotated[Session, Depends(authorize_websocket)]


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

"""Sign-in (OAuth2 password flow), token refresh and sign-out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from api import security, signin
from api.deps import CurrentSession, State, bearer
from api.permissions import DAGSTER_WEBSERVER, V1, Surface, allowed, surface_permission
from api.schemas import PLAIN_TEXT, LogoutRequest, RefreshRequest, TokenPair, UserOut
from api.store import Audit, RefreshRefused

router = APIRouter(prefix=f"{V1}/auth", tags=["auth"])

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "Not signed in, or the token is invalid, expired or revoked"}}


@router.post("/token", summary="Sign in (OAuth2 password flow)",
             responses={**UNAUTHORIZED,
                        429: {"description": "Too many attempts; see Retry-After"}})
def sign_in(request: Request, state: State,
            form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenPair:
    client = request.client.host if request.client else "unknown"
    try:
        user = signin.authenticate(state, form.username, form.password, client)
    except signin.SignInRefused as exc:
        if exc.wait is not None:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail=exc.detail,
                                headers={"Retry-After": str(exc.wait)}) from None
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=exc.detail,
                            headers={"WWW-Authenticate": "Bearer"}) from None
    return signin.token_pair(state, user)


@router.post("/refresh", summary="A new token pair for a refresh token (which is spent)",
             responses=UNAUTHORIZED)
def refresh(body: RefreshRequest, state: State) -> TokenPair:
    try:
        return signin.rotate(state, body.refresh_token)
    except RefreshRefused as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=str(exc),
                            headers={"WWW-Authenticate": "Bearer"}) from None


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=UNAUTHORIZED,
             summary="Revoke this access token and, if given, the refresh token")
def logout(session: CurrentSession, state: State, body: LogoutRequest | None = None) -> None:
    refresh_token = body.refresh_token if body else None
    state.users.revoke_session(
        session.user.username, session.claims.jti, session.claims.expires_at,
        None if refresh_token is None else security.digest(refresh_token),
        Audit(actor=session.actor, action="signed_out", entity="api_user",
              entity_id=session.user.username, reason="logout",
              details={"refresh_token_revoked": refresh_token is not None}))


@router.get("/me", responses=UNAUTHORIZED, summary="The signed-in user")
def me(session: CurrentSession) -> UserOut:
    return UserOut.model_validate(session.user, from_attributes=True)


@router.get("/forward", status_code=status.HTTP_204_NO_CONTENT,
            summary="Forward auth: may this session pass the reverse proxy?",
            description="Asked by the reverse proxy (deploy/proxy) before every request to a "
            "surface: the access token from the browser's session cookie or the Authorization "
            "header (an expired access cookie is replaced while the session's refresh cookie "
            "is valid: Set-Cookie), the original method and URI from X-Original-Method and "
            "X-Original-URI. 204 names the user (X-Etf-User), the role (X-Etf-Role) and, for "
            "Dagster, the webserver the role reaches (X-Etf-Dagster: viewer, research or "
            "desk). A refusal is audited.",
            responses={**UNAUTHORIZED,
                       403: {"description": "The role may not do this on the surface "
                             "(audited)"}})
def forward(request: Request, state: State,
            surface: Annotated[Surface, Query(description="The surface behind the proxy")],
            token: Annotated[str | None, Depends(bearer)],
            x_original_method: Annotated[str, Header(pattern=r"^[A-Z]{1,16}$")] = "GET",
            x_original_uri: Annotated[str, Header(max_length=8192, pattern=PLAIN_TEXT)] = "/",
            ) -> Response:
    session, renewed = signin.browser_session(state, request, token)
    path = x_original_uri.split("?", 1)[0]
    permission = surface_permission(surface, x_original_method, x_original_uri)
    role = session.user.role
    if not allowed(role, permission):
        why = f"role {role} lacks permission {permission}"
        state.users.audit(Audit(actor=session.actor, action="access_denied", entity="surface",
                                entity_id=f"{x_original_method} {surface}:{path}"[:200],
                                reason=why, details={"role": role.value,
                                                     "surface": surface.value,
                                                     "permission": permission}))
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"forbidden: {why}")
    response = Response(status_code=status.HTTP_204_NO_CONTENT, headers={
        "X-Etf-User": session.user.username, "X-Etf-Role": role.value})
    if surface is Surface.DAGSTER:
        response.headers["X-Etf-Dagster"] = DAGSTER_WEBSERVER[role]
    if renewed is not None:     # the proxy passes it on to the browser
        signin.set_access_cookie(state, response, request, renewed)
    return response

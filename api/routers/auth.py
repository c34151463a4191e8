"""Sign-in (OAuth2 password flow), token refresh and sign-out."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm

from api import security
from api.deps import ApiState, CurrentSession, State
from api.permissions import V1
from api.schemas import USERNAME_PATTERN, LogoutRequest, RefreshRequest, TokenPair, UserOut
from api.store import Audit, RefreshRefused, User

router = APIRouter(prefix=f"{V1}/auth", tags=["auth"])

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "Not signed in, or the token is invalid, expired or revoked"}}


def _pair(state: ApiState, user: User, refresh_token: str) -> TokenPair:
    access, _ = security.issue_access_token(state.signing_key, user.username, user.role.value,
                                            state.access_lifetime)
    return TokenPair(access_token=access,
                     expires_in=int(state.access_lifetime.total_seconds()),
                     refresh_token=refresh_token,
                     refresh_expires_in=int(state.refresh_lifetime.total_seconds()))


def _token_pair(state: ApiState, user: User) -> TokenPair:
    """A new access token and a new refresh token (stored as its digest)."""
    refresh_token = security.new_refresh_token()
    state.users.store_refresh_token(security.digest(refresh_token), user.username,
                                    dt.datetime.now(dt.UTC) + state.refresh_lifetime)
    return _pair(state, user, refresh_token)


@router.post("/token", summary="Sign in (OAuth2 password flow)",
             responses={**UNAUTHORIZED,
                        429: {"description": "Too many attempts; see Retry-After"}})
def sign_in(request: Request, state: State,
            form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenPair:
    client = request.client.host if request.client else "unknown"
    wait = state.limiter.hit(form.username, client)
    if wait is not None:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            detail=f"too many sign-in attempts; retry in {wait} s",
                            headers={"Retry-After": str(wait)})
    wrong = HTTPException(status.HTTP_401_UNAUTHORIZED, detail="wrong username or password",
                          headers={"WWW-Authenticate": "Bearer"})
    # A name no user can have is not looked up (nor sent to the database: it may hold NUL),
    # but costs a verification all the same.
    known = re.fullmatch(USERNAME_PATTERN, form.username) is not None
    stored = state.users.password_hash(form.username) if known else None
    if not security.verify_password(stored, form.password):
        if stored is not None:      # a user's failures, not every name tried (no flooding)
            _audit_sign_in(state, form.username, client, "sign_in_failed")
        raise wrong
    user = state.users.user(form.username)
    if user is None or user.disabled:       # changed between the two reads
        raise wrong
    _audit_sign_in(state, user.username, client, "signed_in")
    return _token_pair(state, user)


def _audit_sign_in(state: ApiState, username: str, client: str, action: str) -> None:
    state.users.audit(Audit(actor=f"api:{username}", action=action, entity="api_user",
                            entity_id=username, reason=None, details={"client": client}))


@router.post("/refresh", summary="A new token pair for a refresh token (which is spent)",
             responses=UNAUTHORIZED)
def refresh(body: RefreshRequest, state: State) -> TokenPair:
    # The new refresh token is issued inside the rotation, so a token is spent exactly once.
    new = security.new_refresh_token()
    try:
        user = state.users.rotate_refresh_token(
            security.digest(body.refresh_token), security.digest(new),
            dt.datetime.now(dt.UTC) + state.refresh_lifetime)
    except RefreshRefused as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=str(exc),
                            headers={"WWW-Authenticate": "Bearer"}) from None
    return _pair(state, user, new)


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

"""Signing in, shared by the OAuth2 password flow (``POST /api/v1/auth/token``) and the
browser's sign-in page (``POST /signin``): the rate limit, the password check, the audit of
both outcomes and the token pair."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from fastapi import HTTPException, Request, Response, status

from api import security
from api.deps import ACCESS_COOKIE, REFRESH_COOKIE, ApiState, Session, cookie, signed_in
from api.schemas import USERNAME_PATTERN, TokenPair
from api.store import Audit, User

# The cookie names and reader live in api.deps (the auth dependency reads them too).
__all__ = ["ACCESS_COOKIE", "REFRESH_COOKIE", "SignInRefused", "audit_sign_in", "authenticate",
           "browser_session", "clear_session_cookies", "cookie", "rotate",
           "set_access_cookie", "set_session_cookies", "token_pair"]


@dataclass
class SignInRefused(Exception):
    """Wrong credentials (401) or too many attempts (429, retry after ``wait`` seconds)."""

    detail: str
    wait: int | None = None


def authenticate(state: ApiState, username: str, password: str, client: str) -> User:
    """The enabled user whose password this is; raises :class:`SignInRefused`."""
    wait = state.limiter.hit(username, client)
    if wait is not None:
        raise SignInRefused(f"too many sign-in attempts; retry in {wait} s", wait)
    # A name no user can have is not looked up (nor sent to the database: it may hold NUL),
    # but costs a verification all the same.
    known = re.fullmatch(USERNAME_PATTERN, username) is not None
    stored = state.users.password_hash(username) if known else None
    if not security.verify_password(stored, password):
        if stored is not None:      # a user's failures, not every name tried (no flooding)
            audit_sign_in(state, username, client, "sign_in_failed")
        raise SignInRefused("wrong username or password")
    user = state.users.user(username)
    if user is None or user.disabled:       # changed between the two reads
        raise SignInRefused("wrong username or password")
    audit_sign_in(state, user.username, client, "signed_in")
    return user


def audit_sign_in(state: ApiState, username: str, client: str, action: str) -> None:
    state.users.audit(Audit(actor=f"api:{username}", action=action, entity="api_user",
                            entity_id=username, reason=None, details={"client": client}))


def token_pair(state: ApiState, user: User, refresh_token: str | None = None) -> TokenPair:
    """A new access token, with ``refresh_token`` (already stored) or a new one stored as its
    digest."""
    if refresh_token is None:
        refresh_token = security.new_refresh_token()
        state.users.store_refresh_token(security.digest(refresh_token), user.username,
                                        dt.datetime.now(dt.UTC) + state.refresh_lifetime)
    access, _ = security.issue_access_token(state.signing_key, user.username, user.role.value,
                                            state.access_lifetime)
    return TokenPair(access_token=access,
                     expires_in=int(state.access_lifetime.total_seconds()),
                     refresh_token=refresh_token,
                     refresh_expires_in=int(state.refresh_lifetime.total_seconds()))


def rotate(state: ApiState, refresh_token: str) -> TokenPair:
    """A new pair for a refresh token, which is spent; raises ``RefreshRefused``."""
    # The new refresh token is issued inside the rotation, so a token is spent exactly once.
    new = security.new_refresh_token()
    user = state.users.rotate_refresh_token(
        security.digest(refresh_token), security.digest(new),
        dt.datetime.now(dt.UTC) + state.refresh_lifetime)
    return token_pair(state, user, new)


# Browser sessions for the proxied surfaces and the desk console: the access token and the
# refresh token in HttpOnly cookies (api.deps.ACCESS_COOKIE, REFRESH_COOKIE). The refresh
# cookie is the session: while it is valid, the forward check mints a new access
# cookie when the old one expired (without spending it: see UserStore.session_user); signing
# out revokes both.
def _secure(state: ApiState, request: Request) -> bool:
    configured = state.settings.api.secure_cookies
    if configured is not None:
        return configured
    return state.settings.profile == "prod" or request.url.scheme == "https"


def set_access_cookie(state: ApiState, response: Response, request: Request, token: str
                      ) -> None:
    response.set_cookie(ACCESS_COOKIE, token, path="/", httponly=True, samesite="lax",
                        max_age=int(state.access_lifetime.total_seconds()),
                        secure=_secure(state, request))


def set_session_cookies(state: ApiState, response: Response, request: Request,
                        pair: TokenPair) -> None:
    set_access_cookie(state, response, request, pair.access_token)
    response.set_cookie(REFRESH_COOKIE, pair.refresh_token, max_age=pair.refresh_expires_in,
                        path="/", httponly=True, samesite="lax", secure=_secure(state, request))


def clear_session_cookies(response: Response) -> None:
    for name in (ACCESS_COOKIE, REFRESH_COOKIE):
        response.delete_cookie(name, path="/", httponly=True, samesite="lax")


def browser_session(state: ApiState, request: Request, bearer_token: str | None
                    ) -> tuple[Session, str | None]:
    """The session of a proxied request: the access cookie (or a bearer token), else the
    refresh cookie's, with a new access token to set; raises 401 without either."""
    access = cookie(request, ACCESS_COOKIE) or bearer_token
    if access:
        try:
            return signed_in(state, access), None
        except HTTPException:
            pass
    refresh_token = cookie(request, REFRESH_COOKIE)
    user = None if refresh_token is None else \
        state.users.session_user(security.digest(refresh_token))
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            detail="not signed in: sign in at /signin")
    token, claims = security.issue_access_token(state.signing_key, user.username,
                                                user.role.value, state.access_lifetime)
    return Session(user=user, claims=claims), token

"""Browser sign-in for the surfaces behind the reverse proxy (deploy/proxy): the Dagster
webservers, the MLflow UI, Grafana and the exporter.

The proxy asks ``GET /api/v1/auth/forward`` on every request (api/routers/auth.py). Without a
session a page load lands on the sign-in form here, with the page it wanted as the target:
"everything after ``next=``", since the proxy cannot URL-encode and appends the original
request URI as it is."""

from __future__ import annotations

import html
from typing import Annotated
from urllib.parse import unquote

from fastapi import APIRouter, Form, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse

from api import security
from api.deps import State, signed_in
from api.signin import (
    ACCESS_COOKIE,
    REFRESH_COOKIE,
    SignInRefused,
    authenticate,
    clear_session_cookies,
    cookie,
    set_session_cookies,
    token_pair,
)
from api.store import Audit

router = APIRouter(tags=["browser sign-in"])

MAX_TARGET = 2048
# Documented here; read raw by target_of (the proxy appends the URI unencoded).
NextParam = Annotated[str, Query(alias="next", max_length=MAX_TARGET,
                                 description="Where to go once signed in: a path of this "
                                 "site (the rest of the query string)")]


def safe_target(value: str) -> str:
    """A path on this site, else ``/``: never another host (``//x``, ``/\\x``, a scheme)."""
    if (not value.startswith("/") or value.startswith(("//", "/\\")) or len(value) > MAX_TARGET
            or any(ord(c) < 0x20 or c == "\x7f" for c in value)):
        return "/"
    return value


def target_of(request: Request) -> str:
    """The ``next`` target: the raw rest of the query string (as the proxy appends it), or an
    encoded path (as this service's own links carry it)."""
    query = request.scope.get("query_string", b"").decode("latin-1")
    if not query.startswith("next="):
        return "/"
    raw = query[len("next="):]
    return safe_target(raw if raw.startswith("/") else unquote(raw))


def cross_site(request: Request) -> bool:
    """A form posted from another site (the browser says so in Sec-Fetch-Site): signing a
    victim in as the attacker, or out, is refused."""
    return request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


def _page(target: str, message: str = "", code: int = status.HTTP_200_OK,
          headers: dict[str, str] | None = None) -> HTMLResponse:
    notice = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    body = SIGN_IN_PAGE.format(next=html.escape(target, quote=True), notice=notice)
    return HTMLResponse(body, status_code=code, headers=headers)


@router.get("/signin", response_class=HTMLResponse, summary="The sign-in page",
            description="The form; to a signed-in browser, who it is signed in as, the "
            "surfaces and a sign-out button.")
def sign_in_page(request: Request, state: State, target: NextParam = "/") -> HTMLResponse:
    access = cookie(request, ACCESS_COOKIE)
    if access:
        try:
            session = signed_in(state, access)
        except HTTPException:
            session = None
        if session is not None:
            return HTMLResponse(SIGNED_IN_PAGE.format(
                user=html.escape(session.user.username), role=session.user.role.value))
    return _page(target_of(request))


@router.post("/signin", response_class=RedirectResponse, summary="Sign in from the page",
             status_code=status.HTTP_303_SEE_OTHER,
             responses={303: {"description": "Signed in: cookies set, on to the target"},
                        401: {"description": "Wrong username or password (the page again)",
                              "content": {"text/html": {}}},
                        403: {"description": "Posted from another site (Sec-Fetch-Site)",
                              "content": {"text/html": {}}},
                        429: {"description": "Too many attempts; see Retry-After (the page "
                              "again)", "content": {"text/html": {}}}})
def sign_in(request: Request, state: State,
            username: Annotated[str, Form(max_length=200)],
            password: Annotated[str, Form(max_length=1024)],
            target: Annotated[str, Form(alias="next", max_length=MAX_TARGET)] = "/"
            ) -> Response:
    target = safe_target(target)
    if cross_site(request):
        return _page(target, "sign in from this site's own page", status.HTTP_403_FORBIDDEN)
    client = request.client.host if request.client else "unknown"
    try:
        user = authenticate(state, username, password, client)
    except SignInRefused as exc:
        if exc.wait is not None:
            return _page(target, exc.detail, status.HTTP_429_TOO_MANY_REQUESTS,
                         {"Retry-After": str(exc.wait)})
        return _page(target, exc.detail, status.HTTP_401_UNAUTHORIZED)
    response = RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
    set_session_cookies(state, response, request, token_pair(state, user))
    return response


@router.post("/signout", summary="Sign out of the browser session",
             status_code=status.HTTP_303_SEE_OTHER, response_class=RedirectResponse,
             responses={303: {"description": "Cookies cleared, tokens revoked: the sign-in page"}})
def sign_out(request: Request, state: State) -> Response:
    if cross_site(request):
        return RedirectResponse("/signin", status_code=status.HTTP_303_SEE_OTHER)
    access = cookie(request, ACCESS_COOKIE)
    refresh_token = cookie(request, REFRESH_COOKIE)
    digest = None if refresh_token is None else security.digest(refresh_token)
    claims = None
    if access:
        try:
            claims = security.decode_access_token(state.signing_key, access)
        except security.InvalidTokenError:
            claims = None
    owner = None if digest is None else state.users.session_user(digest)
    username = claims.username if claims is not None else owner.username if owner else None
    if username is not None:
        state.users.revoke_session(
            username, None if claims is None else claims.jti,
            None if claims is None else claims.expires_at,
            digest if owner is not None and owner.username == username else None,
            Audit(actor=f"api:{username}", action="signed_out", entity="api_user",
                  entity_id=username, reason="browser sign-out",
                  details={"refresh_token_revoked": owner is not None}))
    response = RedirectResponse("/signin", status_code=status.HTTP_303_SEE_OTHER)
    clear_session_cookies(response)
    return response


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · ETF rotation desk</title>
<link rel="icon" href="data:,">
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; background: #f4f5f7; margin: 0; }}
main {{ max-width: 22rem; margin: 12vh auto; background: #fff; padding: 2rem;
        border-radius: 8px; box-shadow: 0 1px 4px rgba(0,0,0,.12); }}
h1 {{ font-size: 1.25rem; margin: 0 0 .25rem; }}
p.hint {{ color: #555; margin: 0 0 1.25rem; font-size: .9rem; }}
label {{ display: block; margin: .75rem 0 .25rem; font-weight: 600; }}
input {{ width: 100%; box-sizing: border-box; padding: .5rem; font: inherit;
         border: 1px solid #bbb; border-radius: 4px; }}
button {{ margin-top: 1.25rem; width: 100%; padding: .6rem; font: inherit; font-weight: 600;
          color: #fff; background: #1f5fbf; border: 0; border-radius: 4px; cursor: pointer; }}
ul {{ padding-left: 1.2rem; }}
.error {{ color: #a40000; background: #fdecec; padding: .5rem; border-radius: 4px; }}
</style></head>
<body><main>
<h1>ETF rotation desk</h1>
"""

SIGN_IN_PAGE = _HEAD + """<p class="hint">Sign in to reach the desk console, Dagster, MLflow and the
dashboards.</p>
{notice}
<form method="post" action="/signin">
<input type="hidden" name="next" value="{next}">
<label for="username">Username</label>
<input id="username" name="username" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>
</main></body></html>
"""

SIGNED_IN_PAGE = _HEAD + """<p class="hint">Signed in as <strong>{user}</strong> ({role}).</p>
<ul>
<li><a href="/console">Desk console</a></li>
<li><a href="/dagster/">Dagster</a></li>
<li><a href="/mlflow/">MLflow</a></li>
<li><a href="/grafana/">Dashboards</a></li>
<li><a href="/api/v1/docs">Desk API</a></li>
</ul>
<form method="post" action="/signout"><button type="submit">Sign out</button></form>
</main></body></html>
"""

"""The desk console: server-rendered pages for the trading desk (Today, Book) with a small
script that reads the JSON routes of this API with the browser session's cookie (see
api.deps.access_token) and follows the live event stream.

The page itself only knows who is signed in: what the role may press is decided here from
the permission table (a control the role lacks is not on the page), and every call the
script makes is authorised by the API as for any other client."""

from __future__ import annotations

import functools
import html
import json
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse

from api.deps import ApiState, Session, State
from api.permissions import PERMISSION_TEXT, PERMISSIONS, ROLES, allowed
from api.results import deployment_accounts
from api.schemas import Problem
from api.signin import browser_session, set_access_cookie

router = APIRouter(tags=["desk console"])



@dataclass(frozen=True)
class ConsolePage:
    """A page of the console: ``<name>.html`` in api/console, its script ``<name>.js``, the
    libraries it draws with, and the permission a role needs to open it (and see it in the
    navigation)."""

    name: str
    title: str
    permission: str
    libraries: tuple[str, ...] = ()


PAGES: dict[str, ConsolePage] = {p.name: p for p in (
    ConsolePage("today", "Today", "signals.read"),
    ConsolePage("book", "Book", "accounts.read", ("plotly.min.js",)),
    ConsolePage("research", "Research", "strategies.read", ("plotly.min.js",)),
    ConsolePage("risk", "Risk & audit", "accounts.read", ("plotly.min.js",)),
    ConsolePage("admin", "Administration", "users.read"),
)}
JS, CSS = "text/javascript; charset=utf-8", "text/css; charset=utf-8"
# The files the pages load, with their content types (a fixed list: no path from a request
# ever reaches the file system).
STATIC: dict[str, str] = {"console.js": JS, "console.css": CSS,
                          **{f"{name}.js": JS for name in PAGES}}
# Plotly's browser bundle, as the plotly Python package of uv.lock ships it (the kept charting
# library, served from this site: desk networks may be offline).
LIBRARIES: dict[str, tuple[str, str]] = {
    "plotly.min.js": ("plotly", "package_data/plotly.min.js")}
# The pages are HTML of this site only: no frame, no script from elsewhere. Plotly sets the
# styles of its charts with <style> elements it writes, hence 'unsafe-inline' for styles
# (never for scripts).
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
                "form-action 'self'",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
AccountParam = Annotated[str | None, Query(max_length=60, description="One of the "
                                           "deployment's accounts (default: its first)")]


def _asset(name: str) -> str:
    return resources.files("api.console").joinpath(name).read_text(encoding="utf-8")


@functools.cache
def _library(name: str) -> bytes:
    package, path = LIBRARIES[name]
    return resources.files(package).joinpath(path).read_bytes()


@dataclass(frozen=True)
class Viewer:
    """Who looks at a page, and the account the page is about."""

    session: Session
    account: str
    accounts: list[str]

    def may(self, permission: str) -> bool:
        return allowed(self.session.user.role, permission)

    def context(self) -> str:
        """What the page's script needs, as JSON safe inside a <script> element."""
        permissions = sorted(p for p in PERMISSIONS if self.may(p))
        data = {"user": self.session.user.username, "role": self.session.user.role.value,
                "account": self.account, "permissions": permissions}
        return json.dumps(data).replace("<", "\\u003c")


@router.get("/console", summary="The desk console (its Today page)",
            response_class=RedirectResponse, status_code=status.HTTP_303_SEE_OTHER)
def console_home() -> RedirectResponse:
    return RedirectResponse("/console/today", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/console/static/{name}", summary="The console's script and style sheet",
            response_class=Response,
            responses={200: {"content": {"text/javascript": {}, "text/css": {}}},
                       404: {"model": Problem, "description": "No such file"}})
def console_static(name: Annotated[str, Path(max_length=40)]) -> Response:
    if name in LIBRARIES:       # a library changes only with uv.lock: the browser keeps it
        return Response(_library(name), media_type=JS,
                        headers={"X-Content-Type-Options": "nosniff",
                                 "Cache-Control": "public, max-age=86400"})
    if name not in STATIC:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no console file {name!r}")
    return Response(_asset(name), media_type=STATIC[name],
                    headers={"X-Content-Type-Options": "nosniff"})


PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    303: {"description": "Not signed in: to the sign-in page"},
    404: {"description": "Not an account of this deployment (an HTML page)",
          "content": {"text/html": {}}}}


@router.get("/console/{page}", response_class=HTMLResponse, responses=PAGE_RESPONSES,
            summary="A page of the console: " + ", ".join(
                f"{p.name} ({p.title})" for p in PAGES.values()))
def console_page(page: Annotated[str, Path(max_length=20)], request: Request, state: State,
                 account: AccountParam = None) -> Response:
    if page not in PAGES:
        return _not_found(f"The console has no page {page!r}: it has "
                          f"{', '.join(PAGES)}.")
    return serve_page(PAGES[page], request, state, account)


def serve_page(page: ConsolePage, request: Request, state: ApiState, account: str | None
               ) -> Response:
    """The page for the browser's session, else a redirect to sign in and come back."""
    try:
        session, new_access = browser_session(state, request, None)
    except HTTPException:
        target = quote(request.url.path + (f"?{request.url.query}" if request.url.query
                                           else ""), safe="")
        return RedirectResponse(f"/signin?next={target}", status_code=status.HTTP_303_SEE_OTHER)
    accounts = deployment_accounts(state.settings)
    chosen = account or accounts[0]
    if chosen not in accounts:
        return _not_found(f"{chosen!r} is not an account of this deployment: choose one of "
                          f"{', '.join(accounts)}.")
    viewer = Viewer(session, chosen, accounts)
    if not viewer.may(page.permission):
        response: Response = _refused(page, viewer)
    else:
        response = HTMLResponse(render(page, viewer), headers=PAGE_HEADERS)
    if new_access is not None:      # the access cookie had expired: the session goes on
        set_access_cookie(state, response, request, new_access)
    return response


def _not_found(message: str) -> HTMLResponse:
    return _plain_page("Not found", message, status.HTTP_404_NOT_FOUND)


def _refused(page: ConsolePage, viewer: Viewer) -> HTMLResponse:
    return _plain_page("Not for your role", f"Your role ({viewer.session.user.role.value}) "
                       f"cannot open {page.title}: it is for "
                       f"{_roles_with(page.permission)}.", status.HTTP_403_FORBIDDEN)


def _plain_page(title: str, message: str, status_code: int) -> HTMLResponse:
    body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title} · '
            f'Desk console</title><link rel="icon" href="data:,"></head><body><p role="alert">'
            f'{html.escape(message)}</p><p><a href="/console/today">Back to the console</a>'
            f"</p></body></html>")
    return HTMLResponse(body, status_code=status_code, headers=PAGE_HEADERS)


def render(page: ConsolePage, viewer: Viewer) -> str:
    body = Template(_asset(f"{page.name}.html")).safe_substitute(
        kill_switch_controls=kill_switch_controls(viewer), audit_controls=audit_controls(viewer),
        kill_dialog=reason_dialog("kill"), user_dialog=reason_dialog("user"),
        permission_table=permission_table(), role_options="".join(
            f'<option value="{role.value}">{role.value}</option>' for role in ROLES))
    nav = "".join(
        f'<a href="/console/{p.name}?account={quote(viewer.account)}"'
        f'{" aria-current=page" if p is page else ""}>{html.escape(p.title)}</a>'
        for p in PAGES.values() if viewer.may(p.permission))
    scripts = "".join(f'<script src="/console/static/{name}" defer></script>'
                      for name in (*page.libraries, "console.js", f"{page.name}.js"))
    options = "".join(
        f'<option value="{html.escape(a, quote=True)}"{" selected" if a == viewer.account else ""}'
        f">{html.escape(a)}</option>" for a in viewer.accounts)
    user = viewer.session.user
    return Template(_asset("page.html")).substitute(
        title=html.escape(page.title), page=page.name, nav=nav, account_options=options,
        context=viewer.context(), scripts=scripts, user=html.escape(user.username),
        role=user.role.value, body=body)


def kill_switch_controls(viewer: Viewer) -> str:
    """The buttons the role may press (the script shows the one the state calls for), and
    who may do what the role may not."""
    engage, release = viewer.may("kill_switch.engage"), viewer.may("kill_switch.release")
    if not (engage or release):
        return (f'<p class="muted" id="kill-switch-no-control">Your role '
                f"({viewer.session.user.role.value}) cannot change the kill switch. Engaged "
                f"by: {_roles_with('kill_switch.engage')}; released by: "
                f"{_roles_with('kill_switch.release')}.</p>")
    buttons = [('<button type="button" class="danger" data-kill-switch="engage" hidden>'
                "Engage kill switch…</button>") if engage else "",
               ('<button type="button" data-kill-switch="release" hidden>'
                "Release kill switch…</button>") if release else ""]
    note = "" if release else \
        f'<p class="muted">Releasing it is for: {_roles_with("kill_switch.release")}.</p>'
    return f'<div class="controls">{"".join(buttons)}</div>{note}'


def reason_dialog(name: str) -> str:
    """A confirmation asking why (the reason goes to the audit log): ids ``<name>-dialog``,
    ``-reason``, ``-error``, ``-confirm``... for the page's script."""
    return Template(_asset("reason_dialog.html")).substitute(id=name)


def audit_controls(viewer: Viewer) -> str:
    """The audit log's filters for a role that may read it; else who may (no failing call)."""
    if not viewer.may("audit.read"):
        return (f'<p class="muted" id="audit-not-yours">Your role '
                f"({viewer.session.user.role.value}) cannot read the audit log: it is for "
                f"{_roles_with('audit.read')}.</p>")
    return _asset("audit_filters.html")


def permission_table() -> str:
    """Each permission of api/permissions.py against the roles that hold it."""
    head = "".join(f'<th class="role-col" scope="col">{role.value}</th>' for role in ROLES)
    rows = "".join(
        f'<tr><th scope="row">{html.escape(name)}</th>'
        f'<td class="what">{html.escape(PERMISSION_TEXT[name])}</td>' + "".join(
            '<td class="yes" title="allowed">✓</td>' if role in roles
            else '<td class="no" title="refused">–</td>' for role in ROLES) + "</tr>"
        for name, roles in PERMISSIONS.items())
    return (f'<div class="table-wrap"><table id="permission-table"><thead><tr>'
            f"<th>Permission</th><th>What it allows</th>{head}</tr></thead><tbody>{rows}"
            f"</tbody></table></div>")


def _roles_with(permission: str) -> str:
    return ", ".join(role.value for role in ROLES if role in PERMISSIONS[permission])

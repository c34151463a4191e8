"""The reverse proxy's question (GET /api/v1/auth/forward) and the browser sign-in pages, on
the real PostgreSQL: every surface × every role × reads and writes answers as the permission
table says (the matrix is generated from it), the Dagster webserver follows the role, a
session renews its access cookie from its refresh cookie, and signing out ends it. The same
rules through nginx: tests/test_proxy.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import httpx
import pytest
from api_desk import JWT_SECRET, PASSWORD, Desk, desk
from fastapi.testclient import TestClient

from api import security
from api.app import create_app
from api.permissions import (
    DAGSTER_WEBSERVER,
    PERMISSIONS,
    ROLES,
    Role,
    Surface,
    surface_permission,
)
from api.signin import ACCESS_COOKIE, REFRESH_COOKIE

FORWARD = "/api/v1/auth/forward"
# (method, original URI) per surface: one read and, where the surface tells them apart, a write.
REQUESTS = {
    Surface.DAGSTER: [("GET", "/dagster/runs"), ("POST", "/dagster/graphql")],
    Surface.MLFLOW: [("GET", "/mlflow/"),
                     ("POST", "/mlflow/ajax-api/2.0/mlflow/runs/search"),
                     ("POST", "/mlflow/ajax-api/2.0/mlflow/experiments/create"),
                     ("DELETE", "/mlflow/ajax-api/2.0/mlflow-artifacts/artifacts/x")],
    Surface.GRAFANA: [("GET", "/grafana/d/etf"), ("POST", "/grafana/api/ds/query")],
    Surface.METRICS: [("GET", "/metrics")],
}
MATRIX = [(surface, method, uri, role) for surface, requests in REQUESTS.items()
          for method, uri in requests for role in ROLES]


@pytest.fixture(scope="module")
def desk_(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    with desk(tmp_path_factory.mktemp("forward_home")) as d:
        yield d


@pytest.fixture(scope="module")
def client(desk_: Desk) -> Iterator[TestClient]:
    with TestClient(create_app(desk_.settings)) as c:
        yield c


def ask(client: TestClient, surface: Surface, method: str, uri: str,
        headers: dict[str, str] | None = None) -> httpx.Response:
    return client.get(FORWARD, params={"surface": surface.value},
                      headers={"X-Original-Method": method, "X-Original-URI": uri,
                               **(headers or {})})


def test_every_surface_has_a_request_here() -> None:
    assert set(REQUESTS) == set(Surface)
    assert set(DAGSTER_WEBSERVER) == set(ROLES)


@pytest.mark.parametrize(("surface", "method", "uri", "role"), MATRIX)
def test_forward_matrix(client: TestClient, desk_: Desk, surface: Surface, method: str,
                        uri: str, role: Role) -> None:
    answer = ask(client, surface, method, uri, headers=desk_.headers(role))
    allowed = role in PERMISSIONS[surface_permission(surface, method, uri)]
    assert answer.status_code == (204 if allowed else 403), answer.text
    if allowed:
        assert answer.headers["X-Etf-User"] == desk_.username(role)
        assert answer.headers["X-Etf-Role"] == role.value
        if surface is Surface.DAGSTER:
            assert answer.headers["X-Etf-Dagster"] == DAGSTER_WEBSERVER[role]


def test_mlflow_reads_and_writes() -> None:
    mlflow = Surface.MLFLOW
    assert surface_permission(mlflow, "POST", "/mlflow/ajax-api/2.0/mlflow/runs/search") \
        == "surface.mlflow.read"
    assert surface_permission(mlflow, "POST", "/mlflow/graphql") == "surface.mlflow.read"
    for method, path in (("POST", "/mlflow/ajax-api/2.0/mlflow/runs/delete"),
                         ("POST", "/mlflow/ajax-api/2.0/mlflow/runs/set-tag"),
                         ("PUT", "/mlflow/api/2.0/mlflow-artifacts/artifacts/a.png"),
                         ("PATCH", "/mlflow/ajax-api/3.0/mlflow/traces/x")):
        assert surface_permission(mlflow, method, path) == "surface.mlflow.write", path


@pytest.mark.parametrize("token", [None, "not-a-jwt", "expired", "forged"])
def test_forward_without_a_valid_token_is_401(client: TestClient, desk_: Desk,
                                               token: str | None) -> None:
    if token == "expired":
        token = desk_.token(Role.ADMIN, dt.timedelta(minutes=-1))
    elif token == "forged":
        token, _ = security.issue_access_token("y" * 64, desk_.username(Role.ADMIN), "admin",
                                               dt.timedelta(minutes=5))
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    answer = ask(client, Surface.DAGSTER, "GET", "/dagster/", headers=headers)
    assert answer.status_code == 401
    assert "sign in" in answer.json()["detail"] or "token" in answer.json()["detail"]


def test_a_refusal_is_audited(client: TestClient, desk_: Desk) -> None:
    uri = "/mlflow/ajax-api/2.0/mlflow/experiments/delete"
    assert ask(client, Surface.MLFLOW, "POST", uri,
               headers=desk_.headers(Role.VIEWER)).status_code == 403
    ledger = desk_.ledger()
    try:
        rows = ledger.audit_log(action="access_denied", entity="surface")
    finally:
        ledger.dispose()
    assert any(r["entity_id"] == f"POST mlflow:{uri}"
               and r["actor"] == f"api:{desk_.username(Role.VIEWER)}" for r in rows)


def test_browser_session_renews_and_ends(desk_: Desk) -> None:
    with TestClient(create_app(desk_.settings)) as browser:
        signed = browser.post("/signin", data={"username": desk_.username(Role.RISK),
                                               "password": PASSWORD, "next": "/grafana/"},
                              follow_redirects=False)
        assert signed.status_code == 303 and signed.headers["location"] == "/grafana/"
        cookies = signed.headers.get_list("set-cookie")
        assert all("HttpOnly" in c and "SameSite=lax" in c for c in cookies)
        refresh = browser.cookies[REFRESH_COOKIE]
        assert ask(browser, Surface.GRAFANA, "GET", "/grafana/").status_code == 204

        browser.cookies.delete(ACCESS_COOKIE)
        renewed = ask(browser, Surface.GRAFANA, "GET", "/grafana/")
        assert renewed.status_code == 204
        new_access = browser.cookies[ACCESS_COOKIE]
        claims = security.decode_access_token(JWT_SECRET, new_access)
        assert claims.username == desk_.username(Role.RISK)
        assert browser.cookies[REFRESH_COOKIE] == refresh

        out = browser.post("/signout", follow_redirects=False)
        assert out.status_code == 303
        browser.cookies.set(ACCESS_COOKIE, new_access)
        browser.cookies.set(REFRESH_COOKIE, refresh)
        assert ask(browser, Surface.GRAFANA, "GET", "/grafana/").status_code == 401
        browser.cookies.delete(ACCESS_COOKIE)
        assert ask(browser, Surface.GRAFANA, "GET", "/grafana/").status_code == 401


@pytest.mark.parametrize(("given", "target"), [
    ("/dagster/runs?q=1&b=2", "/dagster/runs?q=1&b=2"),
    ("%2Fmlflow%2F%23%2Fexperiments", "/mlflow/#/experiments"),
    ("//evil.example/", "/"), ("/\\evil.example", "/"), ("https://evil.example/", "/"),
])
def test_the_sign_in_target_stays_on_this_site(client: TestClient, given: str,
                                               target: str) -> None:
    page = client.get(f"/signin?next={given}")
    assert page.status_code == 200
    assert f'name="next" value="{target}"' in page.text.replace("&amp;", "&")


@pytest.mark.parametrize("uri", [
    "/mlflow/ajax-api/2.0/mlflow/experiments/delete#/search",      # MLflow cuts at "#"
    "/mlflow/ajax-api/2.0/mlflow/experiments/delete%23/search",
    "/mlflow/ajax-api/2.0/mlflow/experiments/delete/..%2fsearch",
    "/mlflow/ajax-api/2.0/mlflow/x/../runs/search",
    "/mlflow/./ajax-api/2.0/mlflow/runs/search",
    "//mlflow/search",
    "/mlflow/" + "a/" * 3000 + "#",                                  # long: still linear
])
def test_an_mlflow_write_dressed_as_a_search_is_a_write(client: TestClient, desk_: Desk,
                                                        uri: str) -> None:
    assert surface_permission(Surface.MLFLOW, "POST", uri) == "surface.mlflow.write"
    assert ask(client, Surface.MLFLOW, "POST", uri,
               headers=desk_.headers(Role.VIEWER)).status_code == 403


def test_a_sign_in_or_out_posted_from_another_site_is_refused(desk_: Desk) -> None:
    with TestClient(create_app(desk_.settings)) as browser:
        forged = browser.post("/signin", data={"username": desk_.username(Role.VIEWER),
                                               "password": PASSWORD},
                              headers={"Sec-Fetch-Site": "cross-site"}, follow_redirects=False)
        assert forged.status_code == 403 and ACCESS_COOKIE not in browser.cookies
        signed = browser.post("/signin", data={"username": desk_.username(Role.VIEWER),
                                               "password": PASSWORD},
                              headers={"Sec-Fetch-Site": "same-origin"},
                              follow_redirects=False)
        assert signed.status_code == 303 and ACCESS_COOKIE in browser.cookies
        # A cross-site sign-out neither revokes nor clears the session.
        browser.post("/signout", headers={"Sec-Fetch-Site": "cross-site"},
                     follow_redirects=False)
        assert ask(browser, Surface.GRAFANA, "GET", "/grafana/").status_code == 204

"""The desk API (issue 16) on the real PostgreSQL and Redis through FastAPI's TestClient: the
role matrix generated from the permission table and the app's routes, tokens, the login rate
limit, the audit of every mutation and refusal, the read endpoints and the settings."""

from __future__ import annotations

import datetime as dt
import logging
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import jwt
import pandas as pd
import psycopg
import pytest
import sqlalchemy as sa
from api_desk import JWT_SECRET, PASSWORD, REDIS_URL, Desk, desk
from conftest import PG_SERVER, TEST_CACHE_SECRET
from fastapi import APIRouter, FastAPI, WebSocketDisconnect
from fastapi.testclient import TestClient

import api.app
from api import security
from api.app import ApiConfigError, api_routes, create_app
from api.deps import WS_FORBIDDEN, WS_UNAUTHORIZED
from api.permissions import (
    PERMISSIONS,
    PUBLIC,
    ROLES,
    ROUTES,
    WEBSOCKET,
    Role,
    UnmappedRouteError,
    allowed,
    permission_of,
)
from api.store import metadata as store_metadata
from orchestration.definitions import build_definitions
from orchestration.instance import LOCAL_INSTANCE_YAML
from orchestration.runs import run_range
from orchestration.settings import SettingsError, load_settings

V1 = "/api/v1"
QUALITY_SESSION = "2025-12-30"     # a session of the generated sample market


def _route_list() -> list[tuple[str, str]]:
    """Every (method, path) of the app as its OpenAPI document lists them, and its WebSocket
    routes (which OpenAPI does not describe) as (WEBSOCKET, path); an app built without
    touching a database: only the lifespan connects."""
    settings = load_settings(postgres_url="postgresql+psycopg://unused@127.0.0.1:1/unused",
                             api={"jwt_secret": JWT_SECRET})
    paths = create_app(settings).openapi()["paths"]
    sockets = [(method, path) for method, path, _ in api_routes() if method == WEBSOCKET]
    return sorted([(method.upper(), path) for path, operations in paths.items()
                   for method in operations] + sockets)


ROUTE_LIST = _route_list()
HTTP_ROUTES = [r for r in ROUTE_LIST if r[0] != WEBSOCKET]
WEBSOCKET_ROUTES = [r[1] for r in ROUTE_LIST if r[0] == WEBSOCKET]
SIGNED_IN_ROUTES = [r for r in HTTP_ROUTES if ROUTES.get(r) != PUBLIC]


@pytest.fixture(scope="module")
def desk_(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    with desk(tmp_path_factory.mktemp("api_home"), login_attempts=5,
              login_window_seconds=60) as d:
        yield d


@pytest.fixture(scope="module")
def client(desk_: Desk) -> Iterator[TestClient]:
    with TestClient(create_app(desk_.settings)) as c:
        yield c


def concrete(path: str, d: Desk) -> str:
    return path.format(account_id=d.account, signal_id=d.approved.signal_id,
                       order_id=d.order.order_id, name="etf_rotation_sample",
                       username=f"nobody-{d.run}", session=QUALITY_SESSION,
                       run_id="00000000-0000-0000-0000-000000000000", page="today")


def audit_rows(d: Desk, **where: str) -> list[dict[str, object]]:
    ledger = d.ledger()
    try:
        rows = ledger.audit_log(**{k: v for k, v in where.items() if k != "actor"})
    finally:
        ledger.dispose()
    return [r for r in rows if "actor" not in where or r["actor"] == where["actor"]]


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    response = client.post(f"{V1}/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------ the permission table


def test_every_route_has_a_rule_and_every_rule_a_route() -> None:
    assert set(ROUTE_LIST) == set(ROUTES)
    assert all(p == PUBLIC or p in PERMISSIONS for p in ROUTES.values())
    # Whatever sends orders or changes a control is the desk's, never a viewer's or researcher's.
    for permission in ("kill_switch.engage", "kill_switch.release", "users.manage",
                       "signals.redecide"):
        assert not PERMISSIONS[permission] & {Role.VIEWER, Role.RESEARCHER}
    # Launching research costs compute: not a viewer's call.
    assert Role.VIEWER not in PERMISSIONS["research.launch"]


def test_a_route_without_a_rule_stops_the_app(monkeypatch: pytest.MonkeyPatch,
                                              desk_: Desk) -> None:
    extra = APIRouter()

    @extra.get(f"{V1}/unruled")
    def unruled() -> dict[str, str]:
        return {}

    monkeypatch.setattr(api.app, "ROUTERS", (*api.app.ROUTERS, extra))
    with pytest.raises(UnmappedRouteError, match=f"GET {V1}/unruled"):
        create_app(desk_.settings)


def test_a_ruled_route_that_does_not_authorize_stops_the_app(monkeypatch: pytest.MonkeyPatch,
                                                             desk_: Desk) -> None:
    extra = APIRouter()

    @extra.get(f"{V1}/unguarded")
    def unguarded() -> dict[str, str]:
        return {}

    monkeypatch.setattr(api.app, "ROUTERS", (*api.app.ROUTERS, extra))
    monkeypatch.setitem(ROUTES, ("GET", f"{V1}/unguarded"), "signals.read")
    with pytest.raises(RuntimeError, match=r"does not depend on api\.deps\.authorize"):
        create_app(desk_.settings)


@pytest.mark.parametrize(("method", "path", "role"),
                         [(m, p, r) for m, p in HTTP_ROUTES for r in ROLES],
                         ids=[f"{m} {p} {r}" for m, p in HTTP_ROUTES for r in ROLES])
def test_role_matrix(client: TestClient, desk_: Desk, method: str, path: str,
                     role: Role) -> None:
    """Every route x every role: allowed (anything but 401/403: a mutation sent without its
    body is refused by validation, so nothing changes) or 403."""
    response = client.request(method, concrete(path, desk_), headers=desk_.headers(role))
    if allowed(role, permission_of(method, path)):
        assert response.status_code not in (401, 403), response.text
    else:
        assert response.status_code == 403, response.text
        assert f"role {role.value} lacks" in response.json()["detail"]


@pytest.mark.parametrize(("path", "role"), [(p, r) for p in WEBSOCKET_ROUTES for r in ROLES],
                         ids=[f"{WEBSOCKET} {p} {r}" for p in WEBSOCKET_ROUTES for r in ROLES])
def test_websocket_role_matrix(client: TestClient, desk_: Desk, path: str, role: Role) -> None:
    """Every WebSocket route x every role: allowed (the stream's first message) or closed
    with 4403, audited as a refused REST call is."""
    with client.websocket_connect(f"{path}?token={desk_.token(role)}") as ws:
        if allowed(role, permission_of(WEBSOCKET, path)):
            assert ws.receive_json()["payload"]["notice"] == "subscribed"
            return
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == WS_FORBIDDEN and f"role {role.value} lacks" in closed.value.reason
    assert audit_rows(desk_, action="access_denied", entity_id=f"{WEBSOCKET} {path}",
                      actor=f"api:{desk_.username(role)}")


@pytest.mark.parametrize("path", WEBSOCKET_ROUTES)
def test_no_token_closes_every_websocket_with_4401(client: TestClient, path: str) -> None:
    with client.websocket_connect(path) as ws, pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    assert closed.value.code == WS_UNAUTHORIZED


def test_a_denied_websocket_is_closed_with_4403_and_audited(
        monkeypatch: pytest.MonkeyPatch, client: TestClient, desk_: Desk) -> None:
    """events.read is every role's, so the matrix never sees a refusal: narrow it here."""
    path = WEBSOCKET_ROUTES[0]
    monkeypatch.setitem(PERMISSIONS, permission_of(WEBSOCKET, path), frozenset({Role.ADMIN}))
    test_websocket_role_matrix(client, desk_, path, Role.VIEWER)
    test_websocket_role_matrix(client, desk_, path, Role.ADMIN)


@pytest.mark.parametrize(("method", "path"), SIGNED_IN_ROUTES,
                         ids=[f"{m} {p}" for m, p in SIGNED_IN_ROUTES])
def test_no_token_is_401_on_every_signed_in_route(client: TestClient, desk_: Desk,
                                                  method: str, path: str) -> None:
    response = client.request(method, concrete(path, desk_))
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"


# ------------------------------------------------------------------ tokens


def test_forged_expired_and_malformed_tokens_are_401(client: TestClient, desk_: Desk) -> None:
    user = desk_.username(Role.ADMIN)
    forged = jwt.encode({"sub": user, "role": "admin", "type": "access", "jti": "x",
                         "iss": security.ISSUER,
                         "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)},
                        "another key of at least thirty-two characters", algorithm="HS256")
    unsigned = jwt.encode({"sub": user, "type": "access"}, None, algorithm="none")
    expired = desk_.token(Role.ADMIN, lifetime=dt.timedelta(seconds=-1))
    for token, why in ((forged, "not a valid"), (unsigned, "not a valid"),
                       (expired, "expired"), ("not-a-jwt", "not a valid")):
        response = client.get(f"{V1}/auth/me", headers=bearer(token))
        assert response.status_code == 401, token
        assert why in response.json()["detail"]


def test_logout_revokes_the_access_and_the_refresh_token(client: TestClient,
                                                         desk_: Desk) -> None:
    pair = sign_in(client, desk_.username(Role.RESEARCHER))
    assert audit_rows(desk_, action="signed_in", entity_id=desk_.username(Role.RESEARCHER))
    access = bearer(pair["access_token"])
    assert client.get(f"{V1}/auth/me", headers=access).json()["role"] == "researcher"
    out = client.post(f"{V1}/auth/logout", headers=access,
                      json={"refresh_token": pair["refresh_token"]})
    assert out.status_code == 204
    assert client.get(f"{V1}/auth/me", headers=access).status_code == 401
    refused = client.post(f"{V1}/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refused.status_code == 401
    assert audit_rows(desk_, action="signed_out", actor=f"api:{desk_.username(Role.RESEARCHER)}")


def test_refresh_rotates_and_a_replayed_refresh_token_revokes_the_family(
        client: TestClient, desk_: Desk) -> None:
    first = sign_in(client, desk_.username(Role.RISK))
    second = client.post(f"{V1}/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    newer = second.json()
    assert client.get(f"{V1}/auth/me", headers=bearer(newer["access_token"])).status_code == 200
    # The spent token presented again: a stolen copy; every refresh token of the user goes.
    replay = client.post(f"{V1}/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401
    after = client.post(f"{V1}/auth/refresh", json={"refresh_token": newer["refresh_token"]})
    assert after.status_code == 401


def test_a_disabled_user_is_refused_at_once(client: TestClient, desk_: Desk) -> None:
    admin = desk_.headers(Role.ADMIN)
    name = f"leaver-{desk_.run}"
    created = client.post(f"{V1}/users", headers=admin, json={
        "username": name, "password": PASSWORD, "role": "trader", "reason": "joins the desk"})
    assert created.status_code == 201, created.text
    pair = sign_in(client, name)
    disabled = client.patch(f"{V1}/users/{name}", headers=admin,
                            json={"disabled": True, "reason": "left the desk"})
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    assert client.get(f"{V1}/auth/me", headers=bearer(pair["access_token"])).status_code == 401
    assert client.post(f"{V1}/auth/refresh",
                       json={"refresh_token": pair["refresh_token"]}).status_code == 401
    wrong = client.post(f"{V1}/auth/token", data={"username": name, "password": PASSWORD})
    assert wrong.status_code == 401


def test_a_role_change_applies_to_tokens_already_issued(client: TestClient,
                                                      desk_: Desk) -> None:
    """Authorisation reads the user's role at each call, not the role the token was issued
    with: a demotion takes effect at once."""
    name = f"mover-{desk_.run}"
    client.post(f"{V1}/users", headers=desk_.headers(Role.ADMIN), json={
        "username": name, "password": PASSWORD, "role": "risk", "reason": "joins risk"})
    token = bearer(sign_in(client, name)["access_token"])
    assert client.get(f"{V1}/audit", headers=token).status_code == 200
    client.patch(f"{V1}/users/{name}", headers=desk_.headers(Role.ADMIN),
                 json={"role": "viewer", "reason": "moves to the viewer desk"})
    assert client.get(f"{V1}/audit", headers=token).status_code == 403
    # A refresh token is no access token.
    refresh = sign_in(client, name)["refresh_token"]
    assert client.get(f"{V1}/auth/me", headers=bearer(refresh)).status_code == 401


def test_wrong_password_and_unknown_user_get_the_same_answer(client: TestClient,
                                                             desk_: Desk) -> None:
    answers = [client.post(f"{V1}/auth/token", data={"username": u, "password": "wrong one"})
               for u in (desk_.username(Role.TRADER), f"ghost-{desk_.run}")]
    assert [a.status_code for a in answers] == [401, 401]
    assert answers[0].json() == answers[1].json()
    trader = desk_.username(Role.TRADER)
    failed = audit_rows(desk_, action="sign_in_failed", entity_id=trader)
    assert [(r["actor"], r["details"]) for r in failed] == [
        (f"api:{trader}", {"client": "testclient"})]
    assert audit_rows(desk_, entity_id=f"ghost-{desk_.run}") == []


def test_login_is_rate_limited_per_username_and_client_across_processes(
        client: TestClient, desk_: Desk) -> None:
    name = f"burst-{desk_.run}"
    client.post(f"{V1}/users", headers=desk_.headers(Role.ADMIN), json={
        "username": name, "password": PASSWORD, "role": "viewer", "reason": "rate limit test"})
    form = {"username": name, "password": "not the password"}
    assert [client.post(f"{V1}/auth/token", data=form).status_code
            for _ in range(5)] == [401] * 5
    # Over the limit even the right password is refused, with the wait.
    limited = client.post(f"{V1}/auth/token", data={"username": name, "password": PASSWORD})
    assert limited.status_code == 429
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    # The count is in Redis: a second API process refuses as well ...
    with TestClient(create_app(desk_.settings)) as other:
        again = other.post(f"{V1}/auth/token", data={"username": name, "password": PASSWORD})
        assert again.status_code == 429
    # ... while another client address, or another user from this one, is not held up.
    with TestClient(create_app(desk_.settings), client=("10.1.2.3", 4000)) as elsewhere:
        assert elsewhere.post(f"{V1}/auth/token",
                              data={"username": name, "password": PASSWORD}).status_code == 200
    sign_in(client, desk_.username(Role.VIEWER))


def test_passwords_are_argon2_hashes_and_never_logged(client: TestClient, desk_: Desk,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    secret = "a-password-that-must-not-leak-" + desk_.run
    name = f"quiet-{desk_.run}"
    with caplog.at_level(logging.DEBUG):
        client.post(f"{V1}/users", headers=desk_.headers(Role.ADMIN), json={
            "username": name, "password": secret, "role": "viewer", "reason": "log test"})
        sign_in(client, name, secret)
        client.post(f"{V1}/auth/token", data={"username": name, "password": secret + "x"})
    assert secret not in caplog.text
    with psycopg.connect(f"postgresql://{PG_SERVER}/{desk_.database}") as conn:
        stored = conn.execute("SELECT password_hash FROM api_users WHERE username = %s",
                              (name,)).fetchone()
    assert stored is not None and stored[0].startswith("$argon2id$")
    assert secret not in str(audit_rows(desk_, entity_id=name))


# ------------------------------------------------------------------ operations and audit


def test_user_management_is_audited_with_its_reason(client: TestClient, desk_: Desk) -> None:
    admin_name = desk_.username(Role.ADMIN)
    name = f"analyst-{desk_.run}"
    created = client.post(f"{V1}/users", headers=desk_.headers(Role.ADMIN), json={
        "username": name, "password": PASSWORD, "role": "viewer", "reason": "new analyst"})
    assert created.status_code == 201
    assert created.json()["created_by"] == f"api:{admin_name}"
    promoted = client.patch(f"{V1}/users/{name}", headers=desk_.headers(Role.ADMIN),
                            json={"role": "researcher", "reason": "moves to research"})
    assert promoted.json()["role"] == "researcher"
    duplicate = client.post(f"{V1}/users", headers=desk_.headers(Role.ADMIN), json={
        "username": name, "password": PASSWORD, "role": "viewer", "reason": "again"})
    assert duplicate.status_code == 409
    rows = audit_rows(desk_, entity="api_user", entity_id=name)
    assert [(r["actor"], r["action"], r["reason"]) for r in rows] == [
        (f"api:{admin_name}", "user_created", "new analyst"),
        (f"api:{admin_name}", "user_updated", "moves to research")]
    assert rows[1]["details"] == {"role": "researcher"}
    listed = client.get(f"{V1}/users", params={"role": "researcher"},
                        headers=desk_.headers(Role.ADMIN)).json()
    assert name in {u["username"] for u in listed["items"]}


def test_admins_cannot_change_themselves(client: TestClient, desk_: Desk) -> None:
    response = client.patch(f"{V1}/users/{desk_.username(Role.ADMIN)}",
                            headers=desk_.headers(Role.ADMIN),
                            json={"disabled": True, "reason": "oops"})
    assert response.status_code == 409


def test_kill_switch_by_role_with_every_call_audited(client: TestClient, desk_: Desk) -> None:
    switch = f"{V1}/accounts/{desk_.account}/kill-switch"
    trader, risk = desk_.username(Role.TRADER), desk_.username(Role.RISK)
    engaged = client.post(f"{switch}/engage", headers=desk_.headers(Role.TRADER),
                          json={"reason": "venue misbehaving"})
    assert engaged.status_code == 200, engaged.text
    assert engaged.json() | {"at": None} == {
        "account_id": desk_.account, "engaged": True, "reason": "venue misbehaving",
        "actor": f"api:{trader}", "at": None}
    # A trader may stop trading but not resume it.
    assert client.post(f"{switch}/release", headers=desk_.headers(Role.TRADER),
                       json={"reason": "looks fine"}).status_code == 403
    assert client.get(switch, headers=desk_.headers(Role.VIEWER)).json()["engaged"] is True
    released = client.post(f"{switch}/release", headers=desk_.headers(Role.RISK),
                           json={"reason": "venue confirmed fixed"})
    assert released.status_code == 200 and released.json()["engaged"] is False
    rows = audit_rows(desk_, entity="kill_switch", entity_id=desk_.account)
    assert [(r["actor"], r["action"], r["reason"]) for r in rows] == [
        (f"api:{trader}", "kill_switch_engaged", "venue misbehaving"),      # the ledger's
        (f"api:{trader}", "kill_switch.engage", "venue misbehaving"),       # the API's
        (f"api:{risk}", "kill_switch_released", "venue confirmed fixed"),
        (f"api:{risk}", "kill_switch.release", "venue confirmed fixed")]
    denied = audit_rows(desk_, action="access_denied", actor=f"api:{trader}")
    assert any(r["details"]["permission"] == "kill_switch.release"  # type: ignore[index]
               for r in denied)


def test_a_viewers_refused_attempt_is_audited_and_changes_nothing(client: TestClient,
                                                                   desk_: Desk) -> None:
    viewer = desk_.username(Role.VIEWER)
    path = f"{V1}/accounts/{desk_.account}/kill-switch/engage"
    before = max(int(r["id"]) for r in audit_rows(desk_))  # type: ignore[call-overload]
    response = client.post(path, headers=desk_.headers(Role.VIEWER),
                           json={"reason": "just curious"})
    assert response.status_code == 403
    assert client.get(f"{V1}/accounts/{desk_.account}/kill-switch",
                      headers=desk_.headers(Role.VIEWER)).json()["engaged"] is False
    denied = [r for r in audit_rows(desk_) if int(r["id"]) > before]  # type: ignore[call-overload]
    assert [(r["actor"], r["action"], r["details"]["path"])  # type: ignore[index]
            for r in denied] == [(f"api:{viewer}", "access_denied", path)]
    assert denied[0]["entity_id"] == f"POST {V1}/accounts/{{account_id}}/kill-switch/engage"
    assert denied[0]["reason"] == "role viewer lacks permission kill_switch.engage"


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "ok", "extra": 1}])
def test_a_mutation_needs_a_reason_and_nothing_else(client: TestClient, desk_: Desk,
                                                    body: dict[str, object]) -> None:
    response = client.post(f"{V1}/accounts/{desk_.account}/kill-switch/engage",
                           headers=desk_.headers(Role.RISK), json=body)
    assert response.status_code == 422
    assert {tuple(e["loc"])[:2] for e in response.json()["detail"]} <= {
        ("body", "reason"), ("body", "extra")}


# ------------------------------------------------------------------ reads


def test_signals_with_reasons_filtered_and_paged(client: TestClient, desk_: Desk) -> None:
    headers = desk_.headers(Role.VIEWER)
    rejected = client.get(f"{V1}/signals", headers=headers,
                          params={"status": "rejected", "account_id": desk_.account}).json()
    assert rejected["total"] == 1
    assert rejected["items"][0]["reasons"][0]["rule"] == "max_weight"
    first = client.get(f"{V1}/signals", headers=headers,
                       params={"account_id": desk_.account, "limit": 1}).json()
    second = client.get(f"{V1}/signals", headers=headers,
                        params={"account_id": desk_.account, "limit": 1, "offset": 1}).json()
    assert (first["total"], len(first["items"]), first["limit"]) == (2, 1, 1)
    assert {first["items"][0]["signal_id"], second["items"][0]["signal_id"]} == {
        desk_.approved.signal_id, desk_.rejected.signal_id}
    one = client.get(f"{V1}/signals/{desk_.approved.signal_id}", headers=headers).json()
    assert one["weights"] == {"510300": 0.6, "159915": 0.4} and one["status"] == "approved"
    assert client.get(f"{V1}/signals/nope", headers=headers).status_code == 404
    assert client.get(f"{V1}/signals", headers=headers,
                      params={"since": "2024-03-05"}).json()["total"] == 0


def test_orders_fills_positions_and_cash(client: TestClient, desk_: Desk) -> None:
    headers = desk_.headers(Role.RESEARCHER)
    orders = client.get(f"{V1}/orders", headers=headers,
                        params={"signal_id": desk_.approved.signal_id}).json()
    assert [(o["symbol"], o["side"], o["status"], o["filled_quantity"])
            for o in orders["items"]] == [("510300", "buy", "filled", 1000)]
    assert client.get(f"{V1}/orders/{desk_.order.order_id}",
                      headers=headers).json()["average_price"] == pytest.approx(3.51)
    account = f"{V1}/accounts/{desk_.account}"
    fills = client.get(f"{account}/fills", headers=headers).json()["items"]
    assert [(f["order_id"], f["quantity"], f["price"]) for f in fills] == [
        (desk_.order.order_id, 1000, 3.51)]
    positions = client.get(f"{account}/positions", headers=headers).json()["items"]
    assert [(p["symbol"], p["quantity"]) for p in positions] == [("510300", 1000)]
    cash = client.get(f"{account}/cash", headers=headers).json()
    assert cash["balance"] == pytest.approx(1_000_000 - 3510 - 5)
    assert cash["initial_cash"] == 1_000_000
    missing = client.get(f"{V1}/accounts/nobody/cash", headers=headers)
    assert missing.status_code == 404 and "not open" in missing.json()["detail"]


def test_strategies_with_the_latest_target_and_its_reasons(client: TestClient,
                                                           desk_: Desk) -> None:
    headers = desk_.headers(Role.VIEWER)
    listed = client.get(f"{V1}/strategies", headers=headers, params={"market": "us_funds"})
    names = {s["name"] for s in listed.json()["items"]}
    assert names == {"us_rotation_sectors", "us_rotation_taa"}
    assert client.get(f"{V1}/strategies/etf_rotation_sample",
                      headers=headers).json()["target_portfolio"] is None
    storage = desk_.settings.resolved_storage_root
    storage.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"date": pd.Timestamp("2025-12-30"), "strategy": "etf_rotation_sample",
                  "window": "w07", "symbol": ["F001", "F002"], "rank": [1.0, float("nan")],
                  "weight": [1.0, 0.0], "reason": ["top 1", "below the hysteresis band"]}
                 ).to_parquet(storage / "target_portfolio.parquet")
    detail = client.get(f"{V1}/strategies/etf_rotation_sample", headers=headers).json()
    assert detail["config"]["name"] == "etf_rotation_sample"
    assert detail["target_portfolio"] == {
        "as_of": "2025-12-30", "window": "w07", "weights": [
            {"symbol": "F001", "weight": 1.0, "rank": 1.0, "reason": "top 1"},
            {"symbol": "F002", "weight": 0.0, "rank": None,
             "reason": "below the hysteresis band"}]}
    assert client.get(f"{V1}/strategies/none_such", headers=headers).status_code == 404
    assert client.get(f"{V1}/strategies/..%2Fsecrets", headers=headers).status_code in (404, 422)


def test_any_date_a_query_may_carry_is_answered(client: TestClient, desk_: Desk) -> None:
    """Dates outside what pandas holds (schemathesis found year 194) are clamped, not 500."""
    headers = desk_.headers(Role.VIEWER)
    extremes = {"since": "0194-02-13", "until": "9999-12-31"}
    compared = client.get(f"{V1}/strategies/compare", headers=headers, params=extremes)
    assert compared.status_code == 200 and compared.json()["dates"] == []
    pnl = client.get(f"{V1}/accounts/{desk_.account}/pnl", headers=headers, params=extremes)
    assert pnl.status_code == 200 and pnl.json()["sessions"] == []
    assert pnl.json()["within_tolerance"] is None


def test_the_audit_log_is_filtered_and_newest_first(client: TestClient, desk_: Desk) -> None:
    page = client.get(f"{V1}/audit", headers=desk_.headers(Role.RISK),
                      params={"entity": "signal", "limit": 500}).json()
    ids = [e["id"] for e in page["items"]]
    assert ids == sorted(ids, reverse=True) and page["total"] >= 2
    assert {e["entity_id"] for e in page["items"]} >= {desk_.approved.signal_id,
                                                       desk_.rejected.signal_id}
    since = client.get(f"{V1}/audit", headers=desk_.headers(Role.RISK),
                       params={"since": "2999-01-01T00:00:00"}).json()
    assert since["total"] == 0
    # Paged in the database: the second page of one holds the second newest entry.
    second = client.get(f"{V1}/audit", headers=desk_.headers(Role.RISK),
                        params={"entity": "signal", "limit": 1, "offset": 1}).json()
    assert (second["total"], [e["id"] for e in second["items"]]) == (page["total"], ids[1:2])
    gate = client.get(f"{V1}/audit", headers=desk_.headers(Role.RISK),
                      params={"actor": "gate", "action": "signal_approved"}).json()
    assert [e["entity_id"] for e in gate["items"]] == [desk_.approved.signal_id]


@pytest.mark.parametrize(("params", "field"), [
    ({"limit": "abc"}, "limit"), ({"limit": 0}, "limit"), ({"offset": -1}, "offset"),
    ({"status": "maybe"}, "status"), ({"since": "yesterday"}, "since")])
def test_bad_input_is_a_422_naming_the_field(client: TestClient, desk_: Desk,
                                             params: dict[str, object], field: str) -> None:
    response = client.get(f"{V1}/signals", headers=desk_.headers(Role.VIEWER), params=params)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["query", field]]


def test_quality_checks_of_a_session_from_the_dagster_instance(
        client: TestClient, desk_: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    headers = desk_.headers(Role.VIEWER)
    url = f"{V1}/quality/sessions/{QUALITY_SESSION}"
    no_instance = client.get(url, headers=headers)
    assert no_instance.status_code == 503 and "dagster.yaml" in no_instance.json()["detail"]

    home = desk_.settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(LOCAL_INSTANCE_YAML, encoding="utf-8")
    research = load_settings(home=desk_.settings.home)      # the generated sample market
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = run_range(build_definitions(research), instance, "2025-12-29", "2025-12-31",
                        job_name="market_data_job", log_level="WARNING")
    # cross_sections needs 85 earlier sessions: it fails and has no result; the raw bars'
    # checks ran (adjusted_bars carries none of its own).
    quality = client.get(url, headers=headers).json()
    assert quality["session"] == QUALITY_SESSION and quality["passed"] is True
    assert {c["asset"] for c in quality["checks"]} == {"raw_bars"}
    assert {c["run_id"] for c in quality["checks"]} == {run.run_id}
    assert "ohlc_consistent" in {c["check"] for c in quality["checks"]}
    before = client.get(f"{V1}/quality/sessions/2020-01-02", headers=headers)
    assert before.status_code == 404
    bad = client.get(f"{V1}/quality/sessions/2025-13-45", headers=headers)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["path", "session"]


# ------------------------------------------------------------------ schema and settings


def test_table_definitions_match_the_migrated_schema(desk_: Desk) -> None:
    engine = sa.create_engine(f"postgresql+psycopg://{PG_SERVER}/{desk_.database}")
    try:
        inspector = sa.inspect(engine)
        for table in store_metadata.sorted_tables:
            columns = [c["name"] for c in inspector.get_columns(table.name)]
            assert columns == [c.name for c in table.columns], table.name
    finally:
        engine.dispose()


def test_prod_refuses_to_start_without_a_signing_key(desk_: Desk) -> None:
    prod = load_settings(profile="prod", postgres_url=desk_.settings.postgres_url,
                         redis_url=REDIS_URL, cache_secret=TEST_CACHE_SECRET,
                         mlflow_tracking_uri="http://127.0.0.1:5000")
    with pytest.raises(security.SecretMissingError, match="ETF_API__JWT_SECRET"):
        create_app(prod)


def test_local_generates_its_key_once_into_home_with_mode_0600(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, postgres_url="postgresql+psycopg://u@h/d")
    first, second = security.signing_key(settings), security.signing_key(settings)
    key_file = tmp_path / "api" / "jwt_secret"
    assert first == second and len(first) == 64
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_weak_secrets_and_a_missing_ledger_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"api\.jwt_secret"):
        load_settings(api={"jwt_secret": "short"})
    with pytest.raises(ApiConfigError, match="ETF_POSTGRES_URL"):
        create_app(load_settings(home=tmp_path))


def test_openapi_documents_every_route_with_its_errors() -> None:
    settings = load_settings(postgres_url="postgresql+psycopg://unused@127.0.0.1:1/unused",
                             api={"jwt_secret": JWT_SECRET})
    app: FastAPI = create_app(settings)
    schema = app.openapi()
    assert schema["paths"][f"{V1}/signals"]["get"]["responses"].keys() >= {"200", "401", "403"}
    security_schemes = schema["components"]["securitySchemes"]
    assert security_schemes["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] == \
        f"{V1}/auth/token"


def test_docs_page_is_served_by_the_api_itself(client: TestClient) -> None:
    """The Swagger UI comes from the API (no CDN: a desk network may have no internet)."""
    page = client.get(f"{V1}/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text
    scripts = re.findall(r'src="([^"]+\.js)"', page.text)
    assert scripts and all(s.startswith(f"{V1}/docs-static/") for s in scripts)
    for asset in scripts + re.findall(r'href="([^"]+\.css)"', page.text):
        loaded = client.get(asset)
        assert loaded.status_code == 200 and len(loaded.content) > 10_000, asset

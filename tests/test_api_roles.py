"""The desk API logged in to PostgreSQL as deploy's application role (a member of
``etf_ledger_writer``, migration 0004's grants): sign-in, refresh, logout, user management and
the kill switch all work without owning anything; the reader role sees no password hash."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from api_desk import PASSWORD, desk_settings
from conftest import PG_SERVER, scratch_database
from fastapi.testclient import TestClient

from api import security
from api.__main__ import create_admin
from api.app import create_app
from api.permissions import Role
from api.store import Audit, UserStore
from trading.ledger import Ledger, migrate

V1 = "/api/v1"
HOST = PG_SERVER.rpartition("@")[2]


@pytest.fixture(scope="module")
def as_writer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """(database, writer login, reader login): migrated by the superuser, as deploy's
    migrate step does; the API then runs as the writer."""
    tag = uuid.uuid4().hex[:8]
    writer, reader = f"etf_t{tag}_api", f"etf_t{tag}_reader"
    with scratch_database("etf_api_roles") as database:
        migrate(f"postgresql+psycopg://{PG_SERVER}/{database}")
        with psycopg.connect(f"postgresql://{PG_SERVER}/postgres", autocommit=True) as conn:
            for login, group in ((writer, "etf_ledger_writer"), (reader, "etf_ledger_reader")):
                conn.execute(f'CREATE ROLE "{login}" LOGIN NOSUPERUSER NOCREATEROLE '
                             f"NOCREATEDB IN ROLE {group}")
        try:
            yield database, writer, reader
        finally:
            with psycopg.connect(f"postgresql://{PG_SERVER}/postgres", autocommit=True) as conn:
                for login in (writer, reader):
                    conn.execute(f'DROP ROLE IF EXISTS "{login}"')


def test_the_api_runs_as_the_ledger_writer(as_writer: tuple[str, str, str],
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    database, writer, _ = as_writer
    url = f"postgresql+psycopg://{writer}@{HOST}/{database}"
    settings = desk_settings(tmp_path_factory.mktemp("api_writer_home"), database)
    settings = settings.model_copy(update={"postgres_url": url})
    run = uuid.uuid4().hex[:8]
    admin = f"admin-{run}"
    create_admin(settings, admin, PASSWORD)
    ledger = Ledger(url)
    try:
        ledger.open_account(f"acct-{run}", 1000.0, actor="test")
    finally:
        ledger.dispose()

    with TestClient(create_app(settings)) as client:
        pair = client.post(f"{V1}/auth/token",
                           data={"username": admin, "password": PASSWORD}).json()
        headers = {"Authorization": f"Bearer {pair['access_token']}"}
        created = client.post(f"{V1}/users", headers=headers, json={
            "username": f"trader-{run}", "password": PASSWORD, "role": "trader",
            "reason": "desk set-up"})
        assert created.status_code == 201, created.text
        disabled = client.patch(f"{V1}/users/trader-{run}", headers=headers,
                                json={"disabled": True, "reason": "left"})
        assert disabled.status_code == 200, disabled.text
        engaged = client.post(f"{V1}/accounts/acct-{run}/kill-switch/engage", headers=headers,
                              json={"reason": "drill"})
        assert engaged.status_code == 200 and engaged.json()["engaged"] is True
        refreshed = client.post(f"{V1}/auth/refresh",
                                json={"refresh_token": pair["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text
        newer = refreshed.json()
        out = client.post(f"{V1}/auth/logout",
                          headers={"Authorization": f"Bearer {newer['access_token']}"},
                          json={"refresh_token": newer["refresh_token"]})
        assert out.status_code == 204
        assert client.get(f"{V1}/audit", headers=headers).json()["total"] >= 5


def test_the_reader_role_cannot_read_password_hashes(as_writer: tuple[str, str, str]) -> None:
    database, _, reader = as_writer
    with psycopg.connect(f"postgresql://{reader}@{HOST}/{database}", autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM audit_log")
        for table in ("api_users", "api_refresh_tokens", "api_revoked_access_tokens"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM {table}")  # type: ignore[arg-type]


def test_the_writer_cannot_delete_users_or_tokens(as_writer: tuple[str, str, str]) -> None:
    database, writer, _ = as_writer
    with psycopg.connect(f"postgresql://{writer}@{HOST}/{database}", autocommit=True) as conn:
        for statement in ("DELETE FROM api_users", "DELETE FROM api_refresh_tokens",
                          "UPDATE api_users SET created_by = 'forged'",
                          "UPDATE api_refresh_tokens SET username = 'other'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)  # type: ignore[arg-type]


def test_the_writer_purges_only_expired_tokens(as_writer: tuple[str, str, str]) -> None:
    """Migration 0006: the writer deletes expired sign-in records through the owner's function
    (an hour past expiry), never a live one, and still may not DELETE them itself."""
    database, writer, _ = as_writer
    ledger = Ledger(f"postgresql+psycopg://{writer}@{HOST}/{database}")
    users = UserStore(ledger)
    run = uuid.uuid4().hex[:8]
    name = f"purge-{run}"
    now = dt.datetime.now(dt.UTC)
    long_ago, soon = now - dt.timedelta(hours=2), now + dt.timedelta(hours=1)
    try:
        users.create_user(name, security.hash_password(PASSWORD), Role.VIEWER, Audit(
            actor="test", action="user_created", entity="api_user", entity_id=name,
            reason="purge", details={}))
        for digest, expires in ((f"old-{run}", long_ago), (f"live-{run}", soon),
                                (f"recent-{run}", now - dt.timedelta(minutes=5))):
            users.store_refresh_token(digest, name, expires)
        for jti, expires in ((f"old-{run}", long_ago), (f"live-{run}", soon)):
            users.revoke_session(name, jti, expires, None, Audit(
                actor=f"api:{name}", action="signed_out", entity="api_user", entity_id=name,
                reason="purge", details={}))
        refresh, access = users.purge_expired_tokens()
        assert refresh >= 1 and access >= 1
        assert users.session_user(f"old-{run}") is None
        assert users.session_user(f"live-{run}") is not None
        # Within the hour's margin an expired token is kept, but does not pass.
        assert users.session_user(f"recent-{run}") is None
        assert users.signed_in_user(name, f"live-{run}") is None       # still revoked
        with psycopg.connect(f"postgresql://{writer}@{HOST}/{database}",
                             autocommit=True) as conn:
            kept = {r[0] for r in conn.execute(
                "SELECT token_digest FROM api_refresh_tokens WHERE username = %s", (name,))}
            assert kept == {f"live-{run}", f"recent-{run}"}
            for statement in ("DELETE FROM api_revoked_access_tokens",
                              "DELETE FROM api_refresh_tokens"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)  # type: ignore[arg-type]
    finally:
        ledger.dispose()

"""Users, refresh tokens, revoked access tokens (migration ``0004_desk_api``) and the API's
audit rows, which go to the ledger's append-only ``audit_log``: a change and its audit row are
one transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from api.permissions import Role
from trading.ledger import AUDIT_LOG, Ledger

T = TypeVar("T")
TS = sa.DateTime(timezone=True)
metadata = sa.MetaData()

USERS = sa.Table(
    "api_users", metadata,
    sa.Column("username", sa.Text, primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
)
REFRESH_TOKENS = sa.Table(
    "api_refresh_tokens", metadata,
    sa.Column("token_digest", sa.Text, primary_key=True),
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("issued_at", TS, nullable=False, server_default=sa.func.now()),
    sa.Column("expires_at", TS, nullable=False),
    sa.Column("revoked_at", TS),
    sa.Column("revoked_reason", sa.Text),
)
REVOKED_ACCESS = sa.Table(
    "api_revoked_access_tokens", metadata,
    sa.Column("jti", sa.Text, primary_key=True),
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
    sa.Column("revoked_at", TS, nullable=False, server_default=sa.func.now()),
)


@dataclass(frozen=True)
class User:
    username: str
    role: Role
    disabled: bool
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class Audit:
    """One audit row: who (``actor``), what (``action``), on what (``entity``/``entity_id``)
    and why."""

    actor: str
    action: str
    entity: str
    entity_id: str
    reason: str | None
    details: Mapping[str, Any]


class UserExistsError(ValueError):
    pass


class UnknownUserError(LookupError):
    pass


class RefreshRefused(ValueError):
    """Unknown, expired or revoked refresh token, or a disabled user."""


def _user_of(row: sa.Row[Any]) -> User:
    return User(username=row.username, role=Role(row.role), disabled=row.disabled,
                created_by=row.created_by, created_at=row.created_at,
                updated_at=row.updated_at)


def write_audit(conn: Connection, entry: Audit) -> None:
    conn.execute(sa.insert(AUDIT_LOG).values(
        actor=entry.actor, action=entry.action, entity=entry.entity,
        entity_id=entry.entity_id, reason=entry.reason, details=dict(entry.details)))


class UserStore:
    """Sign-in state on the ledger's engine (and its connection pool)."""

    def __init__(self, ledger: Ledger) -> None:
        self._engine = ledger.engine
        self._reader = ledger.reader

    def _run(self, work: Callable[[Connection], T]) -> T:
        with self._engine.begin() as conn:
            return work(conn)

    def _read(self, work: Callable[[Connection], T]) -> T:
        """One statement outside a transaction (every request reads its user)."""
        with self._reader.connect() as conn:
            return work(conn)

    # ------------------------------------------------------------------ users

    def user(self, username: str) -> User | None:
        row = self._run(lambda conn: conn.execute(
            sa.select(USERS).where(USERS.c.username == username)).first())
        return None if row is None else _user_of(row)

    def password_hash(self, username: str) -> str | None:
        """The stored hash of an enabled user (None: unknown or disabled)."""
        return self._run(lambda conn: conn.execute(
            sa.select(USERS.c.password_hash).where(USERS.c.username == username,
                                                   ~USERS.c.disabled)).scalar())

    def users(self, *, role: Role | None = None, disabled: bool | None = None) -> list[User]:
        query = sa.select(USERS).order_by(USERS.c.username)
        if role is not None:
            query = query.where(USERS.c.role == role.value)
        if disabled is not None:
            query = query.where(USERS.c.disabled == disabled)
        return self._run(lambda conn: [_user_of(r) for r in conn.execute(query)])

    def create_user(self, username: str, password_hash: str, role: Role, audit: Audit) -> User:
        def work(conn: Connection) -> User:
            row = conn.execute(
                pg_insert(USERS).values(username=username, password_hash=password_hash,
                                        role=role.value, disabled=False,
                                        created_by=audit.actor)
                .on_conflict_do_nothing(index_elements=["username"]).returning(USERS)).first()
            if row is None:
                raise UserExistsError(f"user {username!r} exists already")
            write_audit(conn, audit)
            return _user_of(row)

        return self._run(work)

    def update_user(self, username: str, *, role: Role | None, disabled: bool | None,
                    audit: Audit) -> User:
        changes: dict[str, Any] = {"updated_at": sa.func.now()}
        if role is not None:
            changes["role"] = role.value
        if disabled is not None:
            changes["disabled"] = disabled

        def work(conn: Connection) -> User:
            row = conn.execute(sa.update(USERS).where(USERS.c.username == username)
                               .values(**changes).returning(USERS)).first()
            if row is None:
                raise UnknownUserError(f"no user {username!r}")
            if disabled:
                _revoke_refresh_tokens(conn, username, "user disabled")
            write_audit(conn, audit)
            return _user_of(row)

        return self._run(work)

    # ------------------------------------------------------------------ tokens

    def store_refresh_token(self, digest: str, username: str, expires_at: dt.datetime) -> None:
        self._run(lambda conn: conn.execute(sa.insert(REFRESH_TOKENS).values(
            token_digest=digest, username=username, expires_at=expires_at)))

    def rotate_refresh_token(self, digest: str, new_digest: str, expires_at: dt.datetime
                             ) -> User:
        """Spend a refresh token for a new one. A revoked token presented again is a stolen
        copy or a replay: every refresh token of its user is revoked."""

        def work(conn: Connection) -> User | None:
            token = conn.execute(sa.select(REFRESH_TOKENS).where(
                REFRESH_TOKENS.c.token_digest == digest).with_for_update()).first()
            if token is None:
                return None
            if token.revoked_at is not None:
                _revoke_refresh_tokens(conn, token.username, "revoked token presented again")
                return None
            user = conn.execute(sa.select(USERS).where(
                USERS.c.username == token.username)).first()
            if user is None or user.disabled or token.expires_at <= dt.datetime.now(dt.UTC):
                return None
            conn.execute(sa.update(REFRESH_TOKENS).where(
                REFRESH_TOKENS.c.token_digest == digest).values(
                revoked_at=sa.func.now(), revoked_reason="rotated"))
            conn.execute(sa.insert(REFRESH_TOKENS).values(
                token_digest=new_digest, username=token.username, expires_at=expires_at))
            return _user_of(user)

        # Committed even when refused: the family revocation must stick.
        user = self._run(work)
        if user is None:
            raise RefreshRefused("the refresh token is unknown, expired or revoked")
        return user

    def session_user(self, digest: str) -> User | None:
        """The user of a browser session's refresh token, which is not spent (the proxied
        pages send many requests at once; each may need a new access token): None when the
        token is unknown, revoked or expired, or its user disabled."""
        query = sa.select(USERS).join(
            REFRESH_TOKENS, REFRESH_TOKENS.c.username == USERS.c.username).where(
            REFRESH_TOKENS.c.token_digest == digest, REFRESH_TOKENS.c.revoked_at.is_(None),
            REFRESH_TOKENS.c.expires_at > sa.func.now(), USERS.c.disabled.is_(False))
        row = self._read(lambda conn: conn.execute(query).first())
        return None if row is None else _user_of(row)

    def revoke_session(self, username: str, jti: str | None,
                       access_expires_at: dt.datetime | None, refresh_digest: str | None,
                       audit: Audit) -> None:
        """Revoke an access token (by ``jti``, kept until it would expire) and a refresh
        token, either of which may be absent."""

        def work(conn: Connection) -> None:
            if jti is not None and access_expires_at is not None:
                conn.execute(pg_insert(REVOKED_ACCESS).values(
                    jti=jti, username=username, expires_at=access_expires_at)
                    .on_conflict_do_nothing(index_elements=["jti"]))
            if refresh_digest is not None:
                conn.execute(sa.update(REFRESH_TOKENS).where(
                    REFRESH_TOKENS.c.token_digest == refresh_digest,
                    REFRESH_TOKENS.c.username == username,
                    REFRESH_TOKENS.c.revoked_at.is_(None)).values(
                    revoked_at=sa.func.now(), revoked_reason="logout"))
            write_audit(conn, audit)

        self._run(work)

    def signed_in_user(self, username: str, jti: str) -> User | None:
        """The user of a valid access token: None when unknown, disabled or the token was
        revoked (one round trip per request)."""
        revoked = sa.exists().where(REVOKED_ACCESS.c.jti == jti)
        query = sa.select(USERS, revoked.label("revoked")).where(USERS.c.username == username)
        row = self._read(lambda conn: conn.execute(query).first())
        if row is None or row.disabled or row.revoked:
            return None
        return _user_of(row)

    def purge_expired_tokens(self) -> tuple[int, int]:
        """Delete refresh and revoked access tokens past their expiry (migration 0006's
        function: the writer may not DELETE them itself); how many of each."""
        row = self._run(lambda conn: conn.execute(
            sa.text("SELECT refresh_tokens, access_tokens FROM api_purge_expired_tokens()")
        ).one())
        return int(row.refresh_tokens), int(row.access_tokens)

    def audit(self, entry: Audit) -> None:
        self._run(lambda conn: write_audit(conn, entry))


def _revoke_refresh_tokens(conn: Connection, username: str, reason: str) -> None:
    conn.execute(sa.update(REFRESH_TOKENS).where(
        REFRESH_TOKENS.c.username == username, REFRESH_TOKENS.c.revoked_at.is_(None)).values(
        revoked_at=sa.func.now(), revoked_reason=reason))

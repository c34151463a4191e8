"""Passwords (argon2id), access tokens (JWT, HS256) and refresh tokens (opaque, stored as a
SHA-256 digest), and where the signing key comes from."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from orchestration.settings import Settings

ALGORITHM = "HS256"
ISSUER = "etf-desk-api"
ACCESS = "access"
SECRET_FILE = Path("api") / "jwt_secret"

_hasher = PasswordHasher()
# Verified against when the username is unknown, so an unknown user costs what a wrong
# password costs (no timing oracle for which usernames exist).
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class SecretMissingError(RuntimeError):
    """prod without ETF_API__JWT_SECRET."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; ``None`` (no such user) costs a verification too."""
    try:
        _hasher.verify(password_hash or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False
    return password_hash is not None


def signing_key(settings: Settings) -> str:
    """ETF_API__JWT_SECRET; in the local profile without it, a key generated once into
    ``<home>/api/jwt_secret`` (mode 0600), as the embedded PostgreSQL keeps its password."""
    if settings.api.jwt_secret is not None:
        return settings.api.jwt_secret.get_secret_value()
    if settings.profile == "prod":
        raise SecretMissingError(
            "profile=prod needs api.jwt_secret (set ETF_API__JWT_SECRET, at least 32 "
            "characters: openssl rand -hex 32); the desk API does not start without it")
    return _local_key(settings.home / SECRET_FILE)


def _local_key(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once never write two different keys.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        key = secrets.token_hex(32)
        out.write(key + "\n")
    return key


@dataclass(frozen=True)
class AccessClaims:
    username: str
    jti: str
    expires_at: dt.datetime


class InvalidTokenError(ValueError):
    """Not a token this API issued, expired, or of the wrong type."""


def issue_access_token(key: str, username: str, role: str, lifetime: dt.timedelta
                       ) -> tuple[str, AccessClaims]:
    now = dt.datetime.now(dt.UTC)
    claims = AccessClaims(username=username, jti=uuid.uuid4().hex, expires_at=now + lifetime)
    token = jwt.encode({"sub": username, "role": role, "type": ACCESS, "jti": claims.jti,
                        "iss": ISSUER, "iat": now, "exp": claims.expires_at},
                       key, algorithm=ALGORITHM)
    return token, claims


def decode_access_token(key: str, token: str) -> AccessClaims:
    try:
        payload = jwt.decode(token, key, algorithms=[ALGORITHM], issuer=ISSUER,
                             options={"require": ["sub", "jti", "exp", "iss", "type"]})
    except jwt.ExpiredSignatureError:
        raise InvalidTokenError("the access token has expired") from None
    except jwt.PyJWTError:
        raise InvalidTokenError("not a valid access token") from None
    if payload["type"] != ACCESS:
        raise InvalidTokenError("not an access token")
    return AccessClaims(username=str(payload["sub"]), jti=str(payload["jti"]),
                        expires_at=dt.datetime.fromtimestamp(payload["exp"], dt.UTC))


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()

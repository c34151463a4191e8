"""``python -m api``: serve the desk API on $API_HOST:$API_PORT (default 127.0.0.1:8000; a
container listens on 0.0.0.0 behind the reverse proxy, deploy/compose.yaml).
``python -m api create-admin --username X``: create an administrator, the password read from a
prompt (or from stdin when it is not a terminal); there is no default user or password.

Without ``ETF_POSTGRES_URL`` in the local profile, the ledger is the embedded PostgreSQL of
``make demo`` (started for as long as the command runs)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from api import security
from api.app import ApiConfigError, create_app
from api.permissions import Role
from api.schemas import USERNAME_PATTERN, UserCreate
from api.store import Audit, UserExistsError, UserStore
from orchestration.settings import Settings, SettingsError, load_settings
from trading.ledger import Ledger

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@contextmanager
def ledger_settings(settings: Settings) -> Iterator[Settings]:
    """The settings, with the embedded ledger's URL when none is set (local profile only)."""
    if settings.postgres_url or settings.profile == "prod":
        yield settings
        return
    from orchestration.embedded_pg import embedded_ledger

    with embedded_ledger(settings.data_home) as server:
        print(f"ETF_POSTGRES_URL={server.url(hide_password=True)} (embedded PostgreSQL)",
              file=sys.stderr)
        yield settings.model_copy(update={"postgres_url": server.url()})


def api_port() -> int:
    raw = os.environ.get("API_PORT", str(DEFAULT_PORT))
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ApiConfigError(f"API_PORT={raw!r} is not a TCP port (1-65535)")
    return int(raw)


def api_host() -> str:
    return os.environ.get("API_HOST") or DEFAULT_HOST


def serve(settings: Settings) -> None:
    port, host = api_port(), api_host()
    with ledger_settings(settings) as resolved:
        workers = resolved.api.workers
        if workers == 1:
            uvicorn.run(create_app(resolved), host=host, port=port, log_level="info")
            return
        # uvicorn starts each worker process from an import string, so the workers read
        # their settings from the environment: the embedded ledger's URL goes there, and the
        # local signing key is generated here once rather than raced for by the workers.
        security.signing_key(resolved)
        if resolved.postgres_url and not settings.postgres_url:
            os.environ["ETF_POSTGRES_URL"] = resolved.postgres_url
        uvicorn.run("api.app:app_from_environment", factory=True, workers=workers, host=host,
                    port=port, log_level="info")


def read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password for the new administrator: ")
    if getpass.getpass("again: ") != first:
        raise ApiConfigError("the two passwords differ")
    return first


def create_admin(settings: Settings, username: str, password: str) -> None:
    # The same rules as POST /users (username pattern, password length).
    body = UserCreate(username=username, password=password, role=Role.ADMIN,
                      reason="first administrator (python -m api create-admin)")
    actor = f"cli:{getpass.getuser()}"
    with ledger_settings(settings) as resolved:
        assert resolved.postgres_url is not None
        ledger = Ledger(resolved.postgres_url)
        try:
            ledger.migrate()
            UserStore(ledger).create_user(
                body.username, security.hash_password(body.password), body.role,
                Audit(actor=actor, action="user_created", entity="api_user",
                      entity_id=body.username, reason=body.reason,
                      details={"role": body.role.value}))
        finally:
            ledger.dispose()
    print(f"administrator {body.username} created", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    admin = commands.add_parser("create-admin", help="create an administrator")
    admin.add_argument("--username", required=True,
                       help=f"the new administrator's name ({USERNAME_PATTERN})")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "create-admin":
            create_admin(settings, args.username, read_password())
        else:
            serve(settings)
    except (SettingsError, ApiConfigError, security.SecretMissingError,
            UserExistsError) as exc:
        print(f"python -m api: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:       # pydantic: the username or password rules
        print(f"python -m api: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

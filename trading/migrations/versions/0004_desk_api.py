"""The desk API's sign-in state (issue 16): users with their role, refresh tokens and revoked
access tokens, beside the ledger so that the API's audit rows go to the ledger's one
append-only ``audit_log`` in the same transaction as the change they record.

Why here and not a version table of the API's own: :func:`trading.ledger.migrate` refuses a
database holding tables its migrations do not create (so a ledger never mixes with another
application's schema); tables of a second Alembic history would be such tables. One history
also means one migrate step in deploy (``python -m orchestration.migrate_ledger``) and one
owner role.

Least privilege as in 0003: the tables belong to ``etf_ledger_owner``; the application role
``etf_ledger_writer`` may read, insert and update exactly the columns the API changes, never
delete; the reader role gets nothing (password hashes and token digests are no analyst's).

Revision ID: 0004_desk_api
Revises: 0003_signal_discipline
Create Date: 2026-12-05
"""

from collections.abc import Mapping, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_desk_api"
down_revision: str | None = "0003_signal_discipline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER = "etf_ledger_owner"
WRITER = "etf_ledger_writer"
READER = "etf_ledger_reader"

# Frozen copy of api.permissions.ROLES at this revision.
ROLES = ("viewer", "researcher", "trader", "risk", "admin")
TABLES = ("api_users", "api_refresh_tokens", "api_revoked_access_tokens")
WRITER_UPDATE: Mapping[str, tuple[str, ...]] = {
    "api_users": ("password_hash", "role", "disabled", "updated_at"),
    "api_refresh_tokens": ("revoked_at", "revoked_reason"),
}
TS = sa.DateTime(timezone=True)


def _array(values: Sequence[str]) -> str:
    return "ARRAY[" + ", ".join(f"'{v}'" for v in values) + "]"


HAND_TO_OWNER = f"""
DO $$
DECLARE
    name text;
BEGIN
    IF NOT pg_has_role(current_user, '{OWNER}', 'MEMBER') THEN
        RAISE EXCEPTION 'ledger migration 0004: role % may not hand the API tables to {OWNER}',
            current_user USING HINT = 'migrate as a superuser or as a member of {OWNER}';
    END IF;
    FOREACH name IN ARRAY {_array(TABLES)} LOOP
        IF (SELECT relowner FROM pg_class WHERE oid = to_regclass(quote_ident(name)))
           <> '{OWNER}'::regrole THEN
            EXECUTE format('ALTER TABLE %I OWNER TO {OWNER}', name);
        END IF;
    END LOOP;
END
$$;
"""


def _grants() -> list[str]:
    tables = ", ".join(TABLES)
    statements = [
        f"REVOKE ALL ON TABLE {tables} FROM PUBLIC, {WRITER}, {READER}",
        f"GRANT SELECT, INSERT ON TABLE {tables} TO {WRITER}",
    ]
    statements += [f"GRANT UPDATE ({', '.join(columns)}) ON TABLE {table} TO {WRITER}"
                   for table, columns in WRITER_UPDATE.items()]
    return statements


def upgrade() -> None:
    op.create_table(
        "api_users",
        sa.Column("username", sa.Text, primary_key=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(f"role IN ({', '.join(repr(r) for r in ROLES)})",
                           name="api_users_role_check"),
        sa.CheckConstraint("username ~ '^[a-z0-9][a-z0-9_.-]{1,63}$'",
                           name="api_users_username_check"),
    )
    op.create_table(
        "api_refresh_tokens",
        # SHA-256 of the token: a database dump does not hand out sessions.
        sa.Column("token_digest", sa.Text, primary_key=True),
        sa.Column("username", sa.Text, sa.ForeignKey("api_users.username"), nullable=False),
        sa.Column("issued_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("revoked_at", TS),
        sa.Column("revoked_reason", sa.Text),
    )
    op.create_index("api_refresh_tokens_username", "api_refresh_tokens", ["username"])
    op.create_table(
        "api_revoked_access_tokens",
        sa.Column("jti", sa.Text, primary_key=True),
        sa.Column("username", sa.Text, sa.ForeignKey("api_users.username"), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=False, server_default=sa.func.now()),
    )
    for statement in _grants():
        op.execute(statement)
    op.execute(HAND_TO_OWNER)


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)

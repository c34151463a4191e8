"""Purging the desk API's spent sign-in records (issue 16): refresh tokens past their expiry
and revoked access tokens past theirs can never be presented again, so they are deleted.

The writer may not DELETE on these tables: deleting a row of ``api_revoked_access_tokens``
would un-revoke a token, and one of ``api_refresh_tokens`` would forget a revocation that the
replay check relies on. It calls ``api_purge_expired_tokens()`` instead, a ``SECURITY DEFINER``
function of ``etf_ledger_owner`` that deletes only rows whose ``expires_at`` has passed (a
margin of one hour for clock skew between the API's hosts and the database) and returns how
many of each it deleted. Fixed search_path, not executable by PUBLIC.

Revision ID: 0006_token_purge
Revises: 0005_ledger_events
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006_token_purge"
down_revision: str | None = "0005_ledger_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER = "etf_ledger_owner"
WRITER = "etf_ledger_writer"
FUNCTION = "api_purge_expired_tokens()"

PURGE = """
CREATE FUNCTION api_purge_expired_tokens(OUT refresh_tokens bigint, OUT access_tokens bigint)
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    DELETE FROM api_refresh_tokens WHERE expires_at < now() - interval '1 hour';
    GET DIAGNOSTICS refresh_tokens = ROW_COUNT;
    DELETE FROM api_revoked_access_tokens WHERE expires_at < now() - interval '1 hour';
    GET DIAGNOSTICS access_tokens = ROW_COUNT;
END
$$;
"""

HAND_TO_OWNER = f"""
DO $$
BEGIN
    IF NOT pg_has_role(current_user, '{OWNER}', 'MEMBER') THEN
        RAISE EXCEPTION 'ledger migration 0006: role % may not hand the purge to {OWNER}',
            current_user USING HINT = 'migrate as a superuser or as a member of {OWNER}';
    END IF;
    EXECUTE format('ALTER FUNCTION {FUNCTION} SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
    ALTER FUNCTION {FUNCTION} OWNER TO {OWNER};
END
$$;
"""


def upgrade() -> None:
    op.execute(PURGE)
    op.execute(f"REVOKE ALL ON FUNCTION {FUNCTION} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {FUNCTION} TO {WRITER}")
    op.execute(HAND_TO_OWNER)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {FUNCTION}")

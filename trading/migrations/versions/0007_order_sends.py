"""When each order reached its venue (issue 19 item 5): ``order_sends`` holds one row per
order, written by the application the first time a venue answers for a planned order. The
conduct rules count from it: orders an account sent in the last minute and for a session, and
how many of those were then cancelled at the venue (an order cancelled before it was sent has
no row). A table of its own, not a column of ``orders``: a send is an event, written once and
never changed, and a downgrade drops it whole.

Least privilege as in 0003/0004: owned by ``etf_ledger_owner``; the writer may read and
insert, never update or delete; the reader may read.

Revision ID: 0007_order_sends
Revises: 0006_token_purge
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_order_sends"
down_revision: str | None = "0006_token_purge"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER = "etf_ledger_owner"
WRITER = "etf_ledger_writer"
READER = "etf_ledger_reader"
TABLE = "order_sends"

HAND_TO_OWNER = f"""
DO $$
BEGIN
    IF NOT pg_has_role(current_user, '{OWNER}', 'MEMBER') THEN
        RAISE EXCEPTION 'ledger migration 0007: role % may not hand {TABLE} to {OWNER}',
            current_user USING HINT = 'migrate as a superuser or as a member of {OWNER}';
    END IF;
    ALTER TABLE {TABLE} OWNER TO {OWNER};
END
$$;
"""


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("order_id", sa.Text, sa.ForeignKey("orders.order_id"), primary_key=True),
        sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"), nullable=False),
        sa.Column("session", sa.Date, nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.clock_timestamp()),
    )
    op.create_index("order_sends_account_session", TABLE, ["account_id", "session"])
    op.create_index("order_sends_account_sent_at", TABLE, ["account_id", "sent_at"])
    op.execute(f"REVOKE ALL ON TABLE {TABLE} FROM PUBLIC, {WRITER}, {READER}")
    op.execute(f"GRANT SELECT, INSERT ON TABLE {TABLE} TO {WRITER}")
    op.execute(f"GRANT SELECT ON TABLE {TABLE} TO {READER}")
    op.execute(HAND_TO_OWNER)


def downgrade() -> None:
    op.drop_table(TABLE)

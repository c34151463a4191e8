"""When each order reached its venue (issue 19 item 5): ``orders.sent_at``, set once by the
application when a venue first answers for a planned order. The conduct rules count from it:
orders sent by an account in the last minute and in the session, and the share of those that
were cancelled at the venue (an order cancelled before it was sent has no ``sent_at``).

The writer may set the column (a column grant, as 0003 grants every updatable column); an
index serves the per-account, per-session counts.

Revision ID: 0007_order_sent_at
Revises: 0006_token_purge
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_order_sent_at"
down_revision: str | None = "0006_token_purge"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WRITER = "etf_ledger_writer"


def upgrade() -> None:
    op.add_column("orders", sa.Column("sent_at", sa.DateTime(timezone=True)))
    op.create_index("orders_account_session_sent", "orders",
                    ["account_id", "session", "sent_at"])
    op.execute(f"GRANT UPDATE (sent_at) ON TABLE orders TO {WRITER}")


def downgrade() -> None:
    op.execute(f"REVOKE UPDATE (sent_at) ON TABLE orders FROM {WRITER}")
    op.drop_index("orders_account_session_sent", table_name="orders")
    op.drop_column("orders", "sent_at")

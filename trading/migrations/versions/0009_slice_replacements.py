"""Cancel/replace at the end of a slice (issue 18 item 4): ``orders.replaces`` names the child
order a replacement carries the unfilled remainder of (trading/slice_end.py).

A replacement lives in the next slice, so it shares (signal, fund, side, slice_index) with that
slice's own child: the uniqueness of that key now holds for the planned children only
(``replaces IS NULL``, the same name as before), and each order is replaced at most once
(``orders_replaces_key``). The writer inserts the column with the row (table-level INSERT, as
before) and never updates it.

Revision ID: 0009_slice_replacements
Revises: 0008_strategy_attribution
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_slice_replacements"
down_revision: str | None = "0008_strategy_attribution"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "orders_signal_symbol_side_slice_key"


def upgrade() -> None:
    op.add_column("orders", sa.Column("replaces", sa.Text, sa.ForeignKey("orders.order_id"),
                                      nullable=True))
    op.create_unique_constraint("orders_replaces_key", "orders", ["replaces"])
    op.drop_constraint(KEY, "orders", type_="unique")
    op.create_index(KEY, "orders", ["signal_id", "symbol", "side", "slice_index"],
                    unique=True, postgresql_where=sa.text("replaces IS NULL"))


def downgrade() -> None:
    # A replacement's fills and audit trail must not be lost to a downgrade: refused instead.
    op.execute("""
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM orders WHERE replaces IS NOT NULL) THEN
        RAISE EXCEPTION 'ledger downgrade 0009: replacement orders exist (orders.replaces); '
            'they would collide with their slice''s child';
    END IF;
END
$$;
""")
    op.drop_index(KEY, table_name="orders")
    op.create_unique_constraint(KEY, "orders", ["signal_id", "symbol", "side", "slice_index"])
    op.drop_constraint("orders_replaces_key", "orders", type_="unique")
    op.drop_column("orders", "replaces")

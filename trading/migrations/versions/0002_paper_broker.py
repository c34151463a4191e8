"""The paper broker's own book (SPEC §9): its accounts, positions, orders and fills.

These tables are the *venue's* state, deliberately separate from the ledger (``accounts``,
``orders``, ``fills``, ...): the ledger reconciles against them exactly as it would against a
real broker's reports. Only :mod:`trading.paper` writes them.

Money and prices are ``NUMERIC`` like the ledger; the broker binds the exact decimal form of
its values (``Decimal(repr(x))``), so a value read back is the float that was written.

Revision ID: 0002_paper_broker
Revises: 0001_ledger
Create Date: 2024-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_paper_broker"
down_revision: str | None = "0001_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of trading.models.OrderStatus: a migration must not change when the code does.
ORDER_STATUSES = ("submitted", "partially_filled", "filled", "cancelled", "expired", "rejected")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "paper_accounts",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("cash", sa.Numeric, nullable=False),
        # The last session whose orders this account has matched: an order for an earlier
        # session arrives after that session's market and is rejected ("session_closed").
        sa.Column("matched_through", sa.Date),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_table(
        "paper_positions",
        sa.Column("account_id", sa.Text, sa.ForeignKey("paper_accounts.account_id"),
                  primary_key=True),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.CheckConstraint("quantity >= 0", name="paper_positions_quantity_check"),
    )
    op.create_table(
        "paper_orders",
        sa.Column("client_order_id", sa.Text, primary_key=True),
        sa.Column("venue_order_id", sa.Text, nullable=False, unique=True),
        # No foreign key: an order for an unknown account is stored as a rejection.
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("side", sa.Text, nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("session", sa.Date, nullable=False),
        sa.Column("reference_price", sa.Numeric),
        sa.Column("parent_order_id", sa.Text),
        sa.Column("slice_index", sa.Integer, nullable=False, server_default="0"),
        sa.Column("slices", sa.Integer, nullable=False, server_default="1"),
        sa.Column("order_type", sa.Text, nullable=False, server_default="market"),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("filled_quantity", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("average_price", sa.Numeric),
        sa.Column("reason", sa.Text),
        # Arrival order (matching order within a side); created_at ties inside a transaction.
        sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("clock_timestamp()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("clock_timestamp()")),
        sa.CheckConstraint(_in("status", ORDER_STATUSES), name="paper_orders_status_check"),
        # A malformed request is kept as a rejection, so only accepted orders need sane values.
        sa.CheckConstraint(
            "status = 'rejected' OR (quantity > 0 AND side IN ('buy', 'sell'))",
            name="paper_orders_accepted_check",
        ),
        sa.CheckConstraint("filled_quantity >= 0 AND filled_quantity <= GREATEST(quantity, 0)",
                           name="paper_orders_filled_quantity_check"),
        sa.CheckConstraint("slices >= 1 AND slice_index >= 0", name="paper_orders_slices_check"),
    )
    op.create_index("paper_orders_open_idx", "paper_orders", ["account_id", "session"],
                    postgresql_where=sa.text("status IN ('submitted', 'partially_filled')"))
    op.create_index("paper_orders_parent_idx", "paper_orders", ["parent_order_id"],
                    postgresql_where=sa.text("parent_order_id IS NOT NULL"))
    op.create_table(
        "paper_fills",
        sa.Column("fill_id", sa.Text, primary_key=True),
        sa.Column("client_order_id", sa.Text, sa.ForeignKey("paper_orders.client_order_id"),
                  nullable=False),
        sa.Column("account_id", sa.Text, sa.ForeignKey("paper_accounts.account_id"),
                  nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("side", sa.Text, nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("price", sa.Numeric, nullable=False),
        sa.Column("commission", sa.Numeric, nullable=False),
        sa.Column("session", sa.Date, nullable=False),
        sa.Column("filled_at", sa.DateTime(timezone=True), nullable=False),
        # Execution order (sells before buys within a session): ties of filled_at in reports.
        sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False, unique=True),
        sa.CheckConstraint(_in("side", ("buy", "sell")), name="paper_fills_side_check"),
        sa.CheckConstraint("quantity > 0", name="paper_fills_quantity_check"),
        sa.CheckConstraint("price > 0", name="paper_fills_price_check"),
        sa.CheckConstraint("commission >= 0", name="paper_fills_commission_check"),
    )
    op.create_index("paper_fills_account_idx", "paper_fills", ["account_id", "session"])
    op.create_index("paper_fills_order_idx", "paper_fills", ["client_order_id"])


def downgrade() -> None:
    for table in ("paper_fills", "paper_orders", "paper_positions", "paper_accounts"):
        op.drop_table(table)

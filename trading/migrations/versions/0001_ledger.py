"""The execution ledger: accounts, signals, executions, orders, fills, positions, cash,
valuations and the append-only audit log (SPEC §9).

Two database-side guarantees do not depend on the Python code:

* an approved signal is immutable (a trigger refuses UPDATE of an approved row, any change of a
  signal's content and any DELETE/TRUNCATE); only a rejected signal may be re-decided;
* ``audit_log`` is append-only (triggers refuse UPDATE, DELETE and TRUNCATE).

Revision ID: 0001_ledger
Revises:
Create Date: 2024-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_ledger"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the enums in trading.models: a migration must not change when the code does.
ORDER_STATUSES = ("planned", "submitted", "partially_filled", "filled", "cancelled", "expired",
                  "rejected")
EXECUTION_STATUSES = ("running", "completed", "halted", "failed")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> sa.TextClause:
    return sa.text("now()")


def _account_fk() -> sa.ForeignKey:
    return sa.ForeignKey("accounts.account_id")


SIGNALS_GUARD = """
CREATE FUNCTION ledger_signals_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'signals are immutable: % refused', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status = 'approved' THEN
        RAISE EXCEPTION 'signal % is approved and immutable: UPDATE refused', OLD.signal_id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.signal_id IS DISTINCT FROM OLD.signal_id
       OR NEW.account_id IS DISTINCT FROM OLD.account_id
       OR NEW.strategy IS DISTINCT FROM OLD.strategy
       OR NEW.as_of IS DISTINCT FROM OLD.as_of
       OR NEW.weights IS DISTINCT FROM OLD.weights
       OR NEW.weights_hash IS DISTINCT FROM OLD.weights_hash
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'signal %: content (strategy, as_of, weights, account) is immutable',
            OLD.signal_id USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;
"""

AUDIT_GUARD = """
CREATE FUNCTION ledger_audit_log_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'restrict_violation';
END
$$;
"""


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("account_id", sa.Text, primary_key=True),
        sa.Column("initial_cash", sa.Numeric, nullable=False),
        sa.Column("currency", sa.Text, nullable=False, server_default="CNY"),
        sa.Column("kill_switch", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("kill_reason", sa.Text),
        sa.Column("kill_actor", sa.Text),
        sa.Column("kill_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_table(
        "signals",
        sa.Column("signal_id", sa.Text, primary_key=True),
        sa.Column("account_id", sa.Text, _account_fk(), nullable=False),
        sa.Column("strategy", sa.Text, nullable=False),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("weights", postgresql.JSONB, nullable=False),
        sa.Column("weights_hash", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reasons", postgresql.JSONB, nullable=False,
                  server_default=sa.text("'[]'::jsonb")),
        sa.Column("data_version", sa.Text),
        sa.Column("dagster_run_id", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.CheckConstraint(_in("status", ("approved", "rejected")), name="signals_status_check"),
    )
    op.create_index("signals_account_as_of_idx", "signals", ["account_id", "as_of"])
    op.create_table(
        "executions",
        sa.Column("signal_id", sa.Text, sa.ForeignKey("signals.signal_id"), primary_key=True),
        sa.Column("account_id", sa.Text, _account_fk(), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("dagster_run_id", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("reason", sa.Text),
        sa.CheckConstraint(_in("status", EXECUTION_STATUSES), name="executions_status_check"),
    )
    op.create_table(
        "orders",
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("signal_id", sa.Text, sa.ForeignKey("signals.signal_id"), nullable=False),
        sa.Column("account_id", sa.Text, _account_fk(), nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("side", sa.Text, nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("reference_price", sa.Numeric, nullable=False),
        sa.Column("session", sa.Date, nullable=False),
        sa.Column("parent_order_id", sa.Text),
        sa.Column("slice_index", sa.Integer, nullable=False, server_default="0"),
        sa.Column("slices", sa.Integer, nullable=False, server_default="1"),
        sa.Column("status", sa.Text, nullable=False, server_default="planned"),
        sa.Column("venue_order_id", sa.Text),
        sa.Column("filled_quantity", sa.Integer, nullable=False, server_default="0"),
        sa.Column("average_price", sa.Numeric),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.CheckConstraint(_in("side", ("buy", "sell")), name="orders_side_check"),
        sa.CheckConstraint("quantity > 0", name="orders_quantity_check"),
        sa.CheckConstraint(_in("status", ORDER_STATUSES), name="orders_status_check"),
        sa.CheckConstraint("filled_quantity >= 0 AND filled_quantity <= quantity",
                           name="orders_filled_quantity_check"),
        sa.CheckConstraint("slices >= 1 AND slice_index >= 0", name="orders_slices_check"),
        sa.UniqueConstraint("signal_id", "symbol", "side", "slice_index",
                            name="orders_signal_symbol_side_slice_key"),
    )
    op.create_index("orders_signal_idx", "orders", ["signal_id"])
    op.create_index("orders_account_session_idx", "orders", ["account_id", "session"])
    op.create_table(
        "fills",
        sa.Column("fill_id", sa.Text, primary_key=True),
        sa.Column("order_id", sa.Text, sa.ForeignKey("orders.order_id"), nullable=False),
        sa.Column("account_id", sa.Text, _account_fk(), nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("side", sa.Text, nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("price", sa.Numeric, nullable=False),
        sa.Column("commission", sa.Numeric, nullable=False, server_default="0"),
        sa.Column("session", sa.Date, nullable=False),
        sa.Column("filled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=_now()),
        sa.CheckConstraint(_in("side", ("buy", "sell")), name="fills_side_check"),
        sa.CheckConstraint("quantity > 0", name="fills_quantity_check"),
        sa.CheckConstraint("price > 0", name="fills_price_check"),
        sa.CheckConstraint("commission >= 0", name="fills_commission_check"),
    )
    op.create_index("fills_order_idx", "fills", ["order_id"])
    op.create_index("fills_account_idx", "fills", ["account_id", "filled_at"])
    op.create_table(
        "positions",
        sa.Column("account_id", sa.Text, _account_fk(), primary_key=True),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("cost", sa.Numeric, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.CheckConstraint("quantity >= 0", name="positions_quantity_check"),
    )
    op.create_table(
        "cash",
        sa.Column("account_id", sa.Text, _account_fk(), primary_key=True),
        sa.Column("balance", sa.Numeric, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_table(
        "valuations",
        sa.Column("account_id", sa.Text, _account_fk(), primary_key=True),
        sa.Column("session", sa.Date, primary_key=True),
        sa.Column("cash", sa.Numeric, nullable=False),
        sa.Column("positions_value", sa.Numeric, nullable=False),
        sa.Column("equity", sa.Numeric, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=_now()),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),   # bigserial
        sa.Column("at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("clock_timestamp()")),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("entity", sa.Text, nullable=False),
        sa.Column("entity_id", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("details", postgresql.JSONB, nullable=False,
                  server_default=sa.text("'{}'::jsonb")),
    )
    op.create_index("audit_log_entity_idx", "audit_log", ["entity", "entity_id"])
    op.create_index("audit_log_action_idx", "audit_log", ["action"])

    op.execute(SIGNALS_GUARD)
    op.execute("CREATE TRIGGER signals_immutable BEFORE UPDATE OR DELETE ON signals "
               "FOR EACH ROW EXECUTE FUNCTION ledger_signals_guard()")
    op.execute("CREATE TRIGGER signals_no_truncate BEFORE TRUNCATE ON signals "
               "FOR EACH STATEMENT EXECUTE FUNCTION ledger_signals_guard()")
    op.execute(AUDIT_GUARD)
    op.execute("CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
               "FOR EACH ROW EXECUTE FUNCTION ledger_audit_log_guard()")
    op.execute("CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
               "FOR EACH STATEMENT EXECUTE FUNCTION ledger_audit_log_guard()")


def downgrade() -> None:
    for table in ("audit_log", "valuations", "cash", "positions", "fills", "orders",
                  "executions", "signals", "accounts"):
        op.drop_table(table)
    op.execute("DROP FUNCTION IF EXISTS ledger_audit_log_guard()")
    op.execute("DROP FUNCTION IF EXISTS ledger_signals_guard()")

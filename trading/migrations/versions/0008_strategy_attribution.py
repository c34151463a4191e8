"""Per-strategy attribution (issue 15 item 3): an account holding several strategies trades one
netted target; these tables say which strategy each unit, fee and yuan belongs to.

* ``signal_parts`` — each strategy's wish per signal and fund: the signed units it wants to
  trade (+ buy, − sell) and the fund's reference price (the raw close of the signal's date,
  the price the wish was sized with and the price units cross at). Written once per signal.
* ``fill_attributions`` — every fill's units, commission and cash per strategy (the fill
  itself stays in ``fills``: one concept, one place); written in the fill's own transaction.
* ``strategy_crossings`` — opposite wishes settled inside the account: ``units`` from
  ``seller`` to ``buyer`` at ``price``; ``cash`` (= units × price) is paid by the buyer to
  the seller. No order, no fee, no change to the account's position or cash.
* ``strategy_positions`` — each strategy's holding of a fund with its average cost and the
  P&L realised on what it sold (mutable state, as ``positions`` is for the account).

Least privilege as in 0003/0004/0007: owned by ``etf_ledger_owner``; the writer may read and
insert, and update only the strategy positions' running figures; the reader may read.

Revision ID: 0008_strategy_attribution
Revises: 0007_order_sends
Create Date: 2026-12-06
"""

from collections.abc import Mapping, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_strategy_attribution"
down_revision: str | None = "0007_order_sends"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER = "etf_ledger_owner"
WRITER = "etf_ledger_writer"
READER = "etf_ledger_reader"
# Parents before children (downgrade drops them in reverse).
TABLES = ("signal_parts", "fill_attributions", "strategy_crossings", "strategy_positions")
WRITER_UPDATE: Mapping[str, tuple[str, ...]] = {
    "strategy_positions": ("quantity", "cost", "realised", "updated_at"),
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
        RAISE EXCEPTION 'ledger migration 0008: role % may not hand the attribution tables '
            'to {OWNER}', current_user
            USING HINT = 'migrate as a superuser or as a member of {OWNER}';
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
        f"GRANT SELECT ON TABLE {tables} TO {READER}",
    ]
    statements += [f"GRANT UPDATE ({', '.join(columns)}) ON TABLE {table} TO {WRITER}"
                   for table, columns in WRITER_UPDATE.items()]
    return statements


def _account() -> sa.Column[str]:
    return sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"),
                     nullable=False)


def upgrade() -> None:
    op.create_table(
        "signal_parts",
        sa.Column("signal_id", sa.Text, sa.ForeignKey("signals.signal_id"), primary_key=True),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("strategy", sa.Text, primary_key=True),
        sa.Column("wanted_units", sa.Integer, nullable=False),
        sa.Column("reference_price", sa.Numeric, nullable=False),
        sa.Column("recorded_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("reference_price > 0", name="signal_parts_price_check"),
    )
    op.create_table(
        "fill_attributions",
        sa.Column("fill_id", sa.Text, sa.ForeignKey("fills.fill_id"), primary_key=True),
        sa.Column("strategy", sa.Text, primary_key=True),
        _account(),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("units", sa.Integer, nullable=False),
        sa.Column("commission", sa.Numeric, nullable=False),
        sa.Column("cash", sa.Numeric, nullable=False),
        sa.CheckConstraint("units <> 0", name="fill_attributions_units_check"),
        sa.CheckConstraint("commission >= 0", name="fill_attributions_commission_check"),
    )
    op.create_index("fill_attributions_account", "fill_attributions", ["account_id", "strategy"])
    op.create_table(
        "strategy_crossings",
        sa.Column("signal_id", sa.Text, sa.ForeignKey("signals.signal_id"), primary_key=True),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("seller", sa.Text, primary_key=True),
        sa.Column("buyer", sa.Text, primary_key=True),
        _account(),
        sa.Column("units", sa.Integer, nullable=False),
        sa.Column("price", sa.Numeric, nullable=False),
        sa.Column("cash", sa.Numeric, nullable=False),
        sa.Column("session", sa.Date, nullable=False),
        sa.Column("recorded_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("units > 0", name="strategy_crossings_units_check"),
        sa.CheckConstraint("price > 0", name="strategy_crossings_price_check"),
        sa.CheckConstraint("seller <> buyer", name="strategy_crossings_sides_check"),
    )
    op.create_index("strategy_crossings_account", "strategy_crossings", ["account_id"])
    op.create_table(
        "strategy_positions",
        sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"),
                  primary_key=True),
        sa.Column("strategy", sa.Text, primary_key=True),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("cost", sa.Numeric, nullable=False),
        sa.Column("realised", sa.Numeric, nullable=False),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("quantity >= 0", name="strategy_positions_quantity_check"),
    )
    for statement in _grants():
        op.execute(statement)
    op.execute(HAND_TO_OWNER)


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)

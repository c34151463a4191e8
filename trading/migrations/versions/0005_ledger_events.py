"""The desk API's live event stream (issue 16 item 4): triggers on the ledger tables that
``pg_notify`` the channel ``ledger_events`` with a small JSON payload when a signal, an order
or a fill is written or a kill switch changes. The API LISTENs on one connection and fans the
events out to its WebSocket clients, so a client sees a fill as soon as its booking commits
(NOTIFY is delivered at commit, never for a rolled-back write).

Payload: ``{"table", "op", "id", "account", "status", "at", "row"}`` where ``row`` is the
written row without the signal's weights and reasons (NOTIFY payloads stop at 8000 bytes;
the stream says what changed, the REST API has the whole record) and is left out if still
too long.

Least privilege as in 0003/0004: the trigger function is not SECURITY DEFINER (it runs as the
writer whose write fires it, and pg_notify needs no privilege), has a fixed search_path,
belongs to ``etf_ledger_owner`` and may not be called by anyone directly. No role gains a
privilege on any table.

Revision ID: 0005_ledger_events
Revises: 0004_desk_api
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005_ledger_events"
down_revision: str | None = "0004_desk_api"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER = "etf_ledger_owner"
CHANNEL = "ledger_events"           # frozen copy of api.events.CHANNEL
FUNCTION = "ledger_notify_event()"
# Larger payloads are refused by NOTIFY (8000 bytes); keep a margin for the envelope.
ROW_LIMIT = 7000

NOTIFY_EVENT = f"""
CREATE FUNCTION ledger_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- TG_ARGV[0]: the table's key column.
    written jsonb := to_jsonb(NEW) - 'weights' - 'reasons';
    status text := written ->> 'status';
    event jsonb;
BEGIN
    IF TG_TABLE_NAME = 'accounts' THEN
        status := CASE WHEN (written ->> 'kill_switch')::boolean
                       THEN 'engaged' ELSE 'released' END;
    END IF;
    event := jsonb_build_object(
        'table', TG_TABLE_NAME, 'op', lower(TG_OP), 'id', written ->> TG_ARGV[0],
        'account', written ->> 'account_id', 'status', status,
        'at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
    IF octet_length(written::text) <= {ROW_LIMIT} THEN
        event := event || jsonb_build_object('row', written);
    END IF;
    PERFORM pg_notify('{CHANNEL}', event::text);
    RETURN NULL;
END
$$;
"""

# (trigger, table, key column, events, WHEN): accounts only when the kill switch changes.
TRIGGERS = (
    ("signals_notify", "signals", "signal_id", "INSERT OR UPDATE", ""),
    ("orders_notify", "orders", "order_id", "INSERT OR UPDATE", ""),
    ("fills_notify", "fills", "fill_id", "INSERT", ""),
    ("accounts_kill_switch_notify", "accounts", "account_id",
     "UPDATE OF kill_switch, kill_reason",
     "WHEN (OLD.kill_switch IS DISTINCT FROM NEW.kill_switch "
     "OR OLD.kill_reason IS DISTINCT FROM NEW.kill_reason)"),
)

HAND_TO_OWNER = f"""
DO $$
BEGIN
    IF (SELECT proowner FROM pg_proc WHERE oid = '{FUNCTION}'::regprocedure)
       <> '{OWNER}'::regrole THEN
        EXECUTE 'ALTER FUNCTION {FUNCTION} OWNER TO {OWNER}';
    END IF;
    EXECUTE format('ALTER FUNCTION {FUNCTION} SET search_path = pg_catalog, %I, pg_temp',
                   current_schema());
END
$$;
"""


def upgrade() -> None:
    op.execute(NOTIFY_EVENT)
    # A trigger function cannot be called directly anyway; no grant keeps it obvious.
    op.execute(f"REVOKE ALL ON FUNCTION {FUNCTION} FROM PUBLIC")
    for name, table, key, events, when in TRIGGERS:
        op.execute(f"CREATE TRIGGER {name} AFTER {events} ON {table} FOR EACH ROW {when} "
                   f"EXECUTE FUNCTION ledger_notify_event('{key}')")
    op.execute(HAND_TO_OWNER)


def downgrade() -> None:
    for name, table, _key, _events, _when in reversed(TRIGGERS):
        op.execute(f"DROP TRIGGER {name} ON {table}")
    op.execute(f"DROP FUNCTION {FUNCTION}")

"""Signal discipline and least privilege (issue 11).

Money discipline, in the database:

* one approved signal per account and session: a partial unique index on
  ``signals (account_id, as_of) WHERE status = 'approved'``;
* a third status, ``superseded``: an approved signal is set aside only through an explicit,
  audited re-decision, and only while none of its orders has reached a venue;
* a decision changes only through two ``SECURITY DEFINER`` functions owned by the ledger's owner
  role: ``ledger_decide_signal`` (insert, or re-decide a rejected signal) and
  ``ledger_supersede_signal`` (approved -> superseded);
* every insert and every decision change of a signal - through those functions or by anyone
  else's SQL - is written to ``audit_log`` by the ``signals_audit`` trigger in the same
  transaction (who: the functions' ``actor`` argument, else ``db:<login role>``);
* the guard trigger keeps 0001's guarantees (content immutable, approved immutable, no DELETE or
  TRUNCATE) and allows exactly approved -> superseded as the one change of an approved row.

Least privilege, with three NOLOGIN group roles (cluster-wide, shared by every ledger database
of the server):

* ``etf_ledger_owner`` owns every ledger and paper-broker table, sequence and function, and
  runs migrations (deploy: a login role that is a member of it);
* ``etf_ledger_writer`` is the application: SELECT, INSERT and UPDATE of exactly the tables and
  columns it writes, EXECUTE on the two decision functions, nothing on ``signals`` but SELECT,
  no DELETE, no TRUNCATE, owns nothing (so it can neither alter tables nor disable triggers);
* ``etf_ledger_reader``: SELECT only (the exporter, Grafana, analysts).

Who may run this migration: a role that can create roles (a superuser locally, in tests and in
``make demo``: the roles are created if missing), or - in deploy, where the migrating login role
cannot create roles - any member of ``etf_ledger_owner`` once deploy's init SQL has created the
three roles (deploy/compose.yaml, deploy/helm/README.md). Missing roles without the right to
create them stop the migration with a message saying so. Ownership moves to
``etf_ledger_owner`` only for objects owned by another role (the migrating superuser, or the
deploy login role that created them in 0001/0002). A later migration creates objects owned by
whoever runs it: it must hand them to ``etf_ledger_owner`` the same way (``HAND_TO_OWNER``) and
grant the writer and the reader what they need (``_grants``), or the application is refused.

Every statement is plain SQL (server-side ``DO`` blocks where it depends on the database), so
``alembic upgrade --sql`` renders it too.

Revision ID: 0003_signal_discipline
Revises: 0002_paper_broker
Create Date: 2025-01-10
"""

from collections.abc import Mapping, Sequence

from alembic import op

revision: str = "0003_signal_discipline"
down_revision: str | None = "0002_paper_broker"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER = "etf_ledger_owner"
WRITER = "etf_ledger_writer"
READER = "etf_ledger_reader"
ROLES = (OWNER, WRITER, READER)

LEDGER_TABLES = ("accounts", "signals", "executions", "orders", "fills", "positions", "cash",
                 "valuations", "audit_log")
PAPER_TABLES = ("paper_accounts", "paper_positions", "paper_orders", "paper_fills")
VERSION_TABLE = "etf_ledger_alembic_version"        # frozen copy of migrations/env.py's
TABLES = (*LEDGER_TABLES, *PAPER_TABLES, VERSION_TABLE)

# What the application writes (trading/ledger.py, trading/paper.py at this revision). Signals
# are absent on purpose: only the decision functions write them.
WRITER_INSERT = ("accounts", "executions", "orders", "fills", "positions", "cash",
                 "valuations", "audit_log", *PAPER_TABLES)
WRITER_UPDATE: Mapping[str, tuple[str, ...]] = {
    "accounts": ("kill_switch", "kill_reason", "kill_actor", "kill_at"),
    "cash": ("balance", "updated_at"),
    "executions": ("status", "dagster_run_id", "started_at", "finished_at", "reason"),
    "orders": ("status", "venue_order_id", "filled_quantity", "average_price", "reason",
               "updated_at"),
    "positions": ("quantity", "cost", "updated_at"),
    "valuations": ("cash", "positions_value", "equity", "recorded_at"),
    "paper_accounts": ("cash", "matched_through", "updated_at"),
    "paper_positions": ("quantity", "updated_at"),
    "paper_orders": ("status", "filled_quantity", "average_price", "reason", "updated_at"),
}
WRITER_SEQUENCES = ("audit_log_id_seq",)            # bigserial; identity columns need none

DECIDE = ("ledger_decide_signal(text, text, text, date, jsonb, text, text, jsonb, text, text, "
          "timestamp with time zone, text, text)")
SUPERSEDE = "ledger_supersede_signal(text, text, text, double precision)"
FUNCTIONS = ("ledger_signals_guard()", "ledger_audit_log_guard()", "ledger_signals_audit()",
             DECIDE, SUPERSEDE)
WRITER_FUNCTIONS = (DECIDE, SUPERSEDE)

# Frozen copy of trading.ledger.ACCOUNT_LOCK_NAMESPACE: superseding takes the account lock the
# executor holds while it plans and submits.
ACCOUNT_LOCK_NAMESPACE = 0x4C656467
SESSION_INDEX = "signals_one_signal_per_session"
MIGRATION_ACTOR = "migration:0003_signal_discipline"


def _array(values: Sequence[str]) -> str:
    return "ARRAY[" + ", ".join(f"'{v}'" for v in values) + "]"


ENSURE_ROLES = f"""
DO $$
DECLARE
    missing text[];
    role_name text;
BEGIN
    SELECT array_agg(r) INTO missing FROM unnest({_array(ROLES)}) AS r
    WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
    IF missing IS NULL THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user
                   AND (rolsuper OR rolcreaterole)) THEN
        RAISE EXCEPTION 'ledger migration 0003: group role(s) % do not exist and role % may not '
            'create roles', array_to_string(missing, ', '), current_user
            USING HINT = 'create them first as a superuser (CREATE ROLE {OWNER} NOLOGIN; '
                'CREATE ROLE {WRITER} NOLOGIN; CREATE ROLE {READER} NOLOGIN; deploy''s init '
                'SQL does), or run this migration once as a role with CREATEROLE';
    END IF;
    FOREACH role_name IN ARRAY missing LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;   -- created meanwhile by the migration of another ledger database
        END;
    END LOOP;
END
$$;
"""

# The application and the readers must not inherit the owner's rights (ALTER, DISABLE TRIGGER).
CHECK_SEPARATION = f"""
DO $$
BEGIN
    IF pg_has_role('{WRITER}', '{OWNER}', 'MEMBER') OR pg_has_role('{READER}', '{OWNER}', 'MEMBER')
    THEN
        RAISE EXCEPTION 'ledger migration 0003: {WRITER} or {READER} is a member of {OWNER}, so '
            'the application could alter or drop the ledger'
            USING HINT = 'REVOKE {OWNER} FROM {WRITER}, {READER}';
    END IF;
END
$$;
"""

SIGNALS_GUARD = """
CREATE OR REPLACE FUNCTION ledger_signals_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'signals are immutable: % refused', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status = 'approved' THEN
        -- The one change of an approved row: to superseded, with nothing else changed.
        IF NEW.status IS DISTINCT FROM 'superseded'
           OR (to_jsonb(NEW) - 'status') IS DISTINCT FROM (to_jsonb(OLD) - 'status') THEN
            RAISE EXCEPTION 'signal % is approved and immutable: UPDATE refused (only '
                'approved -> superseded, through ledger_supersede_signal)', OLD.signal_id
                USING ERRCODE = 'restrict_violation';
        END IF;
    ELSIF OLD.status = 'superseded' THEN
        RAISE EXCEPTION 'signal % is superseded and immutable: UPDATE refused', OLD.signal_id
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
    IF OLD.status = 'rejected' AND NEW.status NOT IN ('approved', 'rejected') THEN
        RAISE EXCEPTION 'signal %: a rejected signal is approved or rejected again, not %',
            OLD.signal_id, NEW.status USING ERRCODE = 'restrict_violation';
    END IF;
    -- A decision changes only with the owner's rights (the SECURITY DEFINER functions) and
    -- with a declared actor, so that signals_audit records who.
    IF NOT pg_has_role(current_user,
                       (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'USAGE')
       OR coalesce(current_setting('etf_ledger.actor', true), '') = '' THEN
        RAISE EXCEPTION 'signal %: a decision changes only through ledger_decide_signal() or '
            'ledger_supersede_signal(), which record who and why (role %)', OLD.signal_id,
            current_user USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;
"""

SIGNALS_AUDIT = """
CREATE FUNCTION ledger_signals_audit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    who text := nullif(current_setting('etf_ledger.actor', true), '');
    why text := nullif(current_setting('etf_ledger.reason', true), '');
BEGIN
    IF TG_OP = 'UPDATE' AND NOT (OLD IS DISTINCT FROM NEW) THEN
        RETURN NULL;
    END IF;
    INSERT INTO audit_log (actor, action, entity, entity_id, reason, details)
    VALUES (coalesce(who, 'db:' || session_user), 'signal_' || NEW.status, 'signal',
            NEW.signal_id, why,
            jsonb_build_object(
                'strategy', NEW.strategy, 'as_of', to_char(NEW.as_of, 'YYYY-MM-DD'),
                'account_id', NEW.account_id, 'weights', NEW.weights, 'reasons', NEW.reasons,
                'data_version', NEW.data_version, 'dagster_run_id', NEW.dagster_run_id,
                'previous_status', CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END));
    RETURN NULL;
END
$$;
"""

DECIDE_FUNCTION = f"""
CREATE FUNCTION ledger_decide_signal(
    p_signal_id text, p_account_id text, p_strategy text, p_as_of date, p_weights jsonb,
    p_weights_hash text, p_status text, p_reasons jsonb, p_data_version text,
    p_dagster_run_id text, p_decided_at timestamptz, p_actor text, p_reason text
) RETURNS signals LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    stored signals;
    decided signals;
    holder text;
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('approved', 'rejected') THEN
        RAISE EXCEPTION 'signal %: a decision is approved or rejected, not % (an approved '
            'signal is superseded through ledger_supersede_signal)', p_signal_id,
            coalesce(p_status, 'NULL') USING ERRCODE = 'check_violation';
    END IF;
    IF coalesce(btrim(p_actor), '') = '' THEN
        RAISE EXCEPTION 'signal %: the deciding actor is required', p_signal_id
            USING ERRCODE = 'not_null_violation';
    END IF;
    SELECT * INTO stored FROM signals WHERE signal_id = p_signal_id FOR UPDATE;
    IF FOUND THEN
        IF (stored.account_id, stored.strategy, stored.as_of, stored.weights_hash)
           IS DISTINCT FROM (p_account_id, p_strategy, p_as_of, p_weights_hash) THEN
            RAISE EXCEPTION 'signal % already exists with a different account, strategy, date '
                'or weights: a signal''s content is immutable', p_signal_id
                USING ERRCODE = 'restrict_violation';
        END IF;
        IF stored.status = 'superseded' THEN
            RAISE EXCEPTION 'signal % was superseded: it cannot be decided again', p_signal_id
                USING ERRCODE = 'restrict_violation';
        END IF;
        IF stored.status = 'approved' THEN
            IF p_status = 'approved' THEN
                RETURN stored;
            END IF;
            RAISE EXCEPTION 'signal % is approved and immutable: refusing to reject it',
                p_signal_id USING ERRCODE = 'restrict_violation';
        END IF;
        IF p_status = 'rejected' AND stored.reasons = p_reasons THEN
            RETURN stored;
        END IF;
    END IF;
    IF p_status = 'approved' THEN
        SELECT signal_id INTO holder FROM signals
        WHERE account_id = p_account_id AND as_of = p_as_of AND status = 'approved'
          AND signal_id <> p_signal_id
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'account % already has approved signal % for session %: one '
                'approved signal per account and session (one_signal_per_session); supersede '
                'it first', p_account_id, holder, p_as_of
                USING ERRCODE = 'unique_violation', CONSTRAINT = '{SESSION_INDEX}';
        END IF;
    END IF;
    PERFORM set_config('etf_ledger.actor', p_actor, true),
            set_config('etf_ledger.reason', coalesce(p_reason, ''), true);
    IF stored.signal_id IS NULL THEN
        INSERT INTO signals (signal_id, account_id, strategy, as_of, weights, weights_hash,
                             status, reasons, data_version, dagster_run_id, decided_at)
        VALUES (p_signal_id, p_account_id, p_strategy, p_as_of, p_weights, p_weights_hash,
                p_status, coalesce(p_reasons, '[]'::jsonb), p_data_version, p_dagster_run_id,
                coalesce(p_decided_at, now()))
        ON CONFLICT (signal_id) DO NOTHING
        RETURNING * INTO decided;
        IF decided.signal_id IS NULL THEN
            -- A concurrent decision stored this id first: the caller decides again against it.
            RAISE EXCEPTION 'signal % was recorded concurrently; decide again', p_signal_id
                USING ERRCODE = 'serialization_failure';
        END IF;
    ELSE
        UPDATE signals SET status = p_status, reasons = coalesce(p_reasons, '[]'::jsonb),
                           data_version = p_data_version, dagster_run_id = p_dagster_run_id,
                           decided_at = coalesce(p_decided_at, now())
        WHERE signal_id = p_signal_id
        RETURNING * INTO decided;
    END IF;
    PERFORM set_config('etf_ledger.actor', '', true), set_config('etf_ledger.reason', '', true);
    RETURN decided;
END
$$;
"""

SUPERSEDE_FUNCTION = f"""
CREATE FUNCTION ledger_supersede_signal(
    p_signal_id text, p_actor text, p_reason text, p_lock_wait_seconds double precision DEFAULT 30
) RETURNS signals LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    account text;
    stored signals;
    decided signals;
    sent bigint;
    example text;
    run_status text;
    deadline timestamptz;
BEGIN
    IF coalesce(btrim(p_actor), '') = '' OR coalesce(btrim(p_reason), '') = '' THEN
        RAISE EXCEPTION 'superseding signal %: an actor and a reason are required', p_signal_id
            USING ERRCODE = 'not_null_violation';
    END IF;
    SELECT s.account_id INTO account FROM signals s WHERE s.signal_id = p_signal_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'superseding signal %: the signal is not in the ledger', p_signal_id
            USING ERRCODE = 'no_data_found';
    END IF;
    -- The executor plans and submits holding this account's lock (Ledger.account_lock, same
    -- key): holding it to commit, no execution starts between the checks and the update.
    deadline := clock_timestamp() + make_interval(secs => greatest(p_lock_wait_seconds, 0));
    WHILE NOT pg_try_advisory_xact_lock({ACCOUNT_LOCK_NAMESPACE}, hashtext(account)) LOOP
        IF clock_timestamp() >= deadline THEN
            RAISE EXCEPTION 'superseding signal %: account % is locked by a running execution '
                '(waited % s); try again once it has finished', p_signal_id, account,
                p_lock_wait_seconds USING ERRCODE = 'lock_not_available';
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    SELECT * INTO STRICT stored FROM signals WHERE signal_id = p_signal_id FOR UPDATE;
    IF stored.status = 'superseded' THEN
        RETURN stored;
    END IF;
    IF stored.status <> 'approved' THEN
        RAISE EXCEPTION 'superseding signal %: it is %, only an approved signal can be '
            'superseded', p_signal_id, stored.status USING ERRCODE = 'restrict_violation';
    END IF;
    SELECT count(*), min(o.order_id || ' ' || o.status) INTO sent, example
    FROM orders o WHERE o.signal_id = p_signal_id AND o.status NOT IN ('planned', 'rejected');
    IF sent > 0 THEN
        RAISE EXCEPTION 'superseding signal %: % of its orders already went to the venue (%): '
            'a signal that has traded is not superseded; engage the kill switch or correct it '
            'in a later session', p_signal_id, sent, example
            USING ERRCODE = 'restrict_violation';
    END IF;
    SELECT e.status INTO run_status FROM executions e WHERE e.signal_id = p_signal_id;
    IF run_status IN ('running', 'completed', 'halted') THEN
        RAISE EXCEPTION 'superseding signal %: its execution is %: it is handled by the kill '
            'switch or a later session, not superseded', p_signal_id, run_status
            USING ERRCODE = 'restrict_violation';
    END IF;
    PERFORM set_config('etf_ledger.actor', p_actor, true),
            set_config('etf_ledger.reason', p_reason, true);
    UPDATE signals SET status = 'superseded' WHERE signal_id = p_signal_id
    RETURNING * INTO decided;
    PERFORM set_config('etf_ledger.actor', '', true), set_config('etf_ledger.reason', '', true);
    RETURN decided;
END
$$;
"""

# Ledgers that already hold several approved signals for one account and session (the incident
# that motivated this revision) keep the first decided and record the others as superseded, each
# with an audit row, so the unique index can be built; fills and positions stay as they are.
SUPERSEDE_DUPLICATES = f"""
DO $$
DECLARE
    dup record;
BEGIN
    FOR dup IN
        SELECT signal_id, account_id, as_of, kept FROM (
            SELECT signal_id, account_id, as_of,
                   first_value(signal_id) OVER w AS kept, row_number() OVER w AS n
            FROM signals WHERE status = 'approved'
            WINDOW w AS (PARTITION BY account_id, as_of
                         ORDER BY decided_at, created_at, signal_id)) ranked
        WHERE n > 1
    LOOP
        PERFORM set_config('etf_ledger.actor', '{MIGRATION_ACTOR}', true),
                set_config('etf_ledger.reason', format(
                    'account %s had more than one approved signal for session %s before one '
                    'approved signal per session was enforced; %s (decided first) stays approved',
                    dup.account_id, dup.as_of, dup.kept), true);
        UPDATE signals SET status = 'superseded' WHERE signal_id = dup.signal_id;
        RAISE WARNING 'signal % superseded by migration 0003: % already approved for account % '
            'on %', dup.signal_id, dup.kept, dup.account_id, dup.as_of;
    END LOOP;
    PERFORM set_config('etf_ledger.actor', '', true), set_config('etf_ledger.reason', '', true);
END
$$;
"""

# SECURITY DEFINER functions must not resolve names through the caller's search_path; the
# trigger functions get the same fixed path.
FIX_SEARCH_PATH = f"""
DO $$
DECLARE
    fn text;
BEGIN
    FOREACH fn IN ARRAY {_array(FUNCTIONS)} LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', fn,
                       current_schema());
    END LOOP;
END
$$;
"""

HAND_TO_OWNER = f"""
DO $$
DECLARE
    name text;
    fn text;
BEGIN
    IF NOT pg_has_role(current_user, '{OWNER}', 'MEMBER') THEN
        RAISE EXCEPTION 'ledger migration 0003: role % may not hand the ledger to {OWNER}',
            current_user USING HINT = 'migrate as a superuser or as a member of {OWNER}';
    END IF;
    IF NOT has_schema_privilege('{OWNER}', current_schema(), 'CREATE')
       AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND rolsuper) THEN
        RAISE EXCEPTION 'ledger migration 0003: {OWNER} needs CREATE on schema %',
            current_schema()
            USING HINT = 'make it the owner of the ledger database (ALTER DATABASE ... OWNER '
                'TO {OWNER}), as deploy''s init SQL does';
    END IF;
    FOREACH name IN ARRAY {_array(TABLES)} LOOP
        IF (SELECT relowner FROM pg_class WHERE oid = to_regclass(quote_ident(name)))
           <> '{OWNER}'::regrole THEN
            -- Moves the table's indexes and owned sequences (serial, identity) with it.
            EXECUTE format('ALTER TABLE %I OWNER TO {OWNER}', name);
        END IF;
    END LOOP;
    FOREACH fn IN ARRAY {_array(FUNCTIONS)} LOOP
        IF (SELECT proowner FROM pg_proc WHERE oid = fn::regprocedure) <> '{OWNER}'::regrole
        THEN
            EXECUTE format('ALTER FUNCTION %s OWNER TO {OWNER}', fn);
        END IF;
    END LOOP;
END
$$;
"""

GRANT_SCHEMA_USAGE = f"""
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO {WRITER}, {READER}', current_schema());
END
$$;
"""


def _grants() -> list[str]:
    """Exactly the privileges of the writer and the reader (revoked first: re-running a
    downgraded and upgraded ledger leaves no stale grant)."""
    tables = ", ".join(TABLES)
    functions = ", ".join(FUNCTIONS)
    statements = [
        f"REVOKE ALL ON TABLE {tables} FROM PUBLIC, {WRITER}, {READER}",
        f"REVOKE ALL ON FUNCTION {functions} FROM PUBLIC, {WRITER}, {READER}",
        f"GRANT SELECT ON TABLE {tables} TO {WRITER}, {READER}",
        f"GRANT INSERT ON TABLE {', '.join(WRITER_INSERT)} TO {WRITER}",
        f"GRANT USAGE ON SEQUENCE {', '.join(WRITER_SEQUENCES)} TO {WRITER}",
        f"GRANT EXECUTE ON FUNCTION {', '.join(WRITER_FUNCTIONS)} TO {WRITER}",
    ]
    statements += [f"GRANT UPDATE ({', '.join(columns)}) ON TABLE {table} TO {WRITER}"
                   for table, columns in WRITER_UPDATE.items()]
    return statements


def upgrade() -> None:
    op.execute(ENSURE_ROLES)
    op.execute(CHECK_SEPARATION)

    op.drop_constraint("signals_status_check", "signals", type_="check")
    op.create_check_constraint("signals_status_check", "signals",
                               "status IN ('approved', 'rejected', 'superseded')")
    op.execute(SIGNALS_GUARD)
    op.execute(SIGNALS_AUDIT)
    op.execute("CREATE TRIGGER signals_audit AFTER INSERT OR UPDATE ON signals "
               "FOR EACH ROW EXECUTE FUNCTION ledger_signals_audit()")
    op.execute(SUPERSEDE_DUPLICATES)
    op.execute(f"CREATE UNIQUE INDEX {SESSION_INDEX} ON signals (account_id, as_of) "
               "WHERE status = 'approved'")
    op.execute(DECIDE_FUNCTION)
    op.execute(SUPERSEDE_FUNCTION)
    op.execute(FIX_SEARCH_PATH)

    for statement in _grants():
        op.execute(statement)
    op.execute(GRANT_SCHEMA_USAGE)
    op.execute(HAND_TO_OWNER)


# 0001's guard, restored by the downgrade.
SIGNALS_GUARD_0001 = """
CREATE OR REPLACE FUNCTION ledger_signals_guard() RETURNS trigger LANGUAGE plpgsql AS $$
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

REFUSE_SUPERSEDED_DOWNGRADE = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM signals WHERE status = 'superseded') THEN
        RAISE EXCEPTION 'ledger downgrade below 0003: superseded signals exist, and revision '
            '0002 has no such status; the decision history cannot be rewritten';
    END IF;
END
$$;
"""


def downgrade() -> None:
    """Back to 0002's rules. Roles and ownership stay (the roles are shared by every ledger
    database of the server); the writer's and reader's privileges are revoked."""
    op.execute(REFUSE_SUPERSEDED_DOWNGRADE)
    op.execute(f"REVOKE ALL ON TABLE {', '.join(TABLES)} FROM {WRITER}, {READER}")
    op.execute(f"DROP FUNCTION {SUPERSEDE}")
    op.execute(f"DROP FUNCTION {DECIDE}")
    op.execute("DROP TRIGGER signals_audit ON signals")
    op.execute("DROP FUNCTION ledger_signals_audit()")
    op.execute(SIGNALS_GUARD_0001)
    op.execute("ALTER FUNCTION ledger_signals_guard() RESET search_path")
    op.execute(f"DROP INDEX {SESSION_INDEX}")
    op.drop_constraint("signals_status_check", "signals", type_="check")
    op.create_check_constraint("signals_status_check", "signals",
                               "status IN ('approved', 'rejected')")

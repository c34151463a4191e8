"""Least privilege and signal discipline in the ledger database (issue 11), on the real server.

A scratch database migrated by the superuser, and login roles made for this module (unique
names, dropped at the end) as members of the ledger's group roles; every check connects AS that
role and finds the forbidden statement refused by PostgreSQL itself:

* the application's role (``etf_ledger_writer``) cannot change a signal's status, insert a
  signal past the gate, delete or truncate the audit log or signals, disable a trigger, alter or
  drop a table, and owns nothing - yet the application's whole normal path (signals, orders,
  fills, executions, valuations, the paper broker) works as that role;
* the reader's role selects and nothing else;
* the decision functions change a status and write exactly one audit row; even the superuser's
  raw SQL cannot flip a decision without one;
* one approved signal per account and session, by the gate and by the database; supersede works
  before any order reached the venue and is refused after; every decision is audited;
* the deploy's arrangement: a login that is a member of ``etf_ledger_owner`` (and may not create
  roles) migrates; the application's login on an unmigrated database says the migrate step has
  not run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
import test_attribution as attribution
import test_ledger as base
from alembic import command
from alembic.config import Config
from conftest import PG_SERVER, scratch_database
from psycopg.types.json import Jsonb

from rotation.costs import CostModel
from rotation.risk import RiskLimits
from trading import approval
from trading.ledger import (
    MIGRATIONS_DIR,
    ImmutableSignalError,
    Ledger,
    LedgerError,
    SignalRecord,
    SignalSessionConflict,
    migrate,
)
from trading.models import OrderRequest, OrderStatus, Quote, Side, SignalStatus
from trading.paper import PaperBroker

HOST = PG_SERVER.rpartition("@")[2]
OWNER, WRITER, READER = "etf_ledger_owner", "etf_ledger_writer", "etf_ledger_reader"
LEDGER_TABLES = ("accounts", "signals", "executions", "orders", "fills", "positions", "cash",
                 "valuations", "audit_log", "paper_accounts", "paper_positions", "paper_orders",
                 "paper_fills", "order_sends", "signal_parts", "fill_attributions",
                 "strategy_crossings", "strategy_positions", "etf_ledger_alembic_version")
DAY = dt.date(2024, 3, 4)
UNIVERSE = {"510300", "510500", "159915", "518880"}
FIRST = {"510300": 0.5, "510500": 0.5}
OTHER = {"510300": 0.5, "159915": 0.5}


def dsn(role: str, database: str) -> str:
    return f"postgresql://{role}@{HOST}/{database}"


def sa_url(role: str, database: str) -> str:
    return f"postgresql+psycopg://{role}@{HOST}/{database}"


def connect(role: str, database: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn(role, database), autocommit=True)


def as_superuser(database: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(f"postgresql://{PG_SERVER}/{database}", autocommit=True)


@dataclass(frozen=True)
class Logins:
    writer: str            # the application (compose: etf_app)
    reader: str            # read-only (compose: etf_reader)
    migrator: str          # the migrate step (compose: etf_ledger_migrator)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """Migrated by the superuser: the group roles exist once this has run."""
    with scratch_database("etf_roles") as name:
        migrate(base.sa_url(name))
        yield name


@pytest.fixture(scope="module")
def logins(database: str) -> Iterator[Logins]:
    tag = uuid.uuid4().hex[:8]
    names = Logins(f"etf_t{tag}_app", f"etf_t{tag}_reader", f"etf_t{tag}_migrator")
    with as_superuser() as conn:
        for login, group in ((names.writer, WRITER), (names.reader, READER),
                             (names.migrator, OWNER)):
            # NOSUPERUSER NOCREATEROLE: as in deploy, only the group membership gives rights.
            conn.execute(f'CREATE ROLE "{login}" LOGIN NOSUPERUSER NOCREATEROLE '
                         f'NOCREATEDB IN ROLE {group}')
    yield names
    with as_superuser() as conn:
        for login in dataclasses.astuple(names):
            conn.execute(f'DROP ROLE IF EXISTS "{login}"')


@pytest.fixture(scope="module")
def writer(database: str, logins: Logins) -> Iterator[Ledger]:
    """The application's ledger, logged in as the writer (migrate(): at head, a check only)."""
    ledger = Ledger(sa_url(logins.writer, database), retry_seconds=20)
    ledger.migrate()
    yield ledger
    ledger.dispose()


def open_account(ledger: Ledger) -> str:
    account_id = f"acct-{uuid.uuid4().hex[:8]}"
    ledger.open_account(account_id, 1_000_000.0, actor="test")
    return account_id


def facts(account_id: str, weights: Mapping[str, float], day: dt.date = DAY
          ) -> approval.SignalFacts:
    return approval.SignalFacts(
        strategy="rot", account_id=account_id, as_of=day, weights=dict(weights),
        latest_session=day, sessions_between=0, data_as_of=day, universe=UNIVERSE, halted=[],
        failed_checks=[])


def decide(ledger: Ledger, account_id: str, weights: Mapping[str, float],
           actor: str = "gate") -> SignalRecord:
    return approval.decide(facts(account_id, weights), ledger, RiskLimits(), actor=actor)


def actions(ledger: Ledger, signal_id: str) -> list[tuple[str, str, str | None]]:
    return [(r["action"], r["actor"], r["reason"])
            for r in ledger.audit_log(entity="signal", entity_id=signal_id)]


def audit_count(database: str, signal_id: str) -> int:
    with as_superuser(database) as conn:
        row = conn.execute("SELECT count(*) FROM audit_log WHERE entity_id = %s",
                           (signal_id,)).fetchone()
    assert row is not None
    return int(row[0])


# ------------------------------------------------------------------------------ the roles


def test_the_owner_role_owns_every_ledger_object(database: str, logins: Logins) -> None:
    with as_superuser(database) as conn:
        groups = dict(conn.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)",
            ([OWNER, WRITER, READER],)).fetchall())
        relations = conn.execute(
            "SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner) FROM pg_class c "
            "WHERE c.relnamespace = 'public'::regnamespace").fetchall()
        functions = {r[0]: r[1:] for r in conn.execute(
            "SELECT proname, pg_get_userbyid(proowner), prosecdef, proconfig FROM pg_proc "
            "WHERE pronamespace = 'public'::regnamespace").fetchall()}
        owned_by_others = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = ANY(%(roles)s::regrole[]) "
            "UNION ALL SELECT count(*) FROM pg_proc WHERE proowner = ANY(%(roles)s::regrole[])",
            {"roles": [WRITER, READER, logins.writer, logins.reader]}).fetchall()
        separated = conn.execute(
            "SELECT pg_has_role(%s, %s, 'MEMBER'), pg_has_role(%s, %s, 'MEMBER')",
            (logins.writer, OWNER, logins.reader, OWNER)).fetchone()

    assert groups == {OWNER: False, WRITER: False, READER: False}          # NOLOGIN
    tables = {name for name, kind, _ in relations if kind == "r"}
    assert set(LEDGER_TABLES) <= tables
    # tables, their indexes and sequences (audit_log's bigserial, the paper identities)
    assert {owner for _, _, owner in relations} == {OWNER}, relations
    assert {"audit_log_id_seq", "signals_one_signal_per_session"} <= {r[0] for r in relations}
    assert {owner for owner, _, _ in functions.values()} == {OWNER}
    for name in ("ledger_decide_signal", "ledger_supersede_signal"):
        _, definer, config = functions[name]
        assert definer, f"{name} must be SECURITY DEFINER"
        assert config == ["search_path=pg_catalog, public, pg_temp"], config
    assert [r[0] for r in owned_by_others] == [0, 0]
    assert separated == (False, False)


WRITER_REFUSED = {
    "flip a rejected signal to approved": (
        "UPDATE signals SET status = 'approved' WHERE signal_id = %(rejected)s"),
    "insert a signal past the gate": (
        "INSERT INTO signals (signal_id, account_id, strategy, as_of, weights, weights_hash, "
        "status, reasons) VALUES ('forged', %(account)s, 'rot', '2024-03-04', '{}', 'h', "
        "'approved', '[]')"),
    "delete audit rows": "DELETE FROM audit_log",
    "truncate the audit log": "TRUNCATE audit_log",
    "rewrite the audit log": "UPDATE audit_log SET reason = 'forged'",
    "delete signals": "DELETE FROM signals",
    "truncate signals": "TRUNCATE signals CASCADE",
    "disable the signal guard": "ALTER TABLE signals DISABLE TRIGGER signals_immutable",
    "disable the signal audit": "ALTER TABLE signals DISABLE TRIGGER signals_audit",
    "disable the audit guard": "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
    "switch triggers off for the session": "SET session_replication_role = replica",
    "drop a table": "DROP TABLE audit_log",
    "alter a table": "ALTER TABLE orders ADD COLUMN note text",
    "create a table": "CREATE TABLE shadow_signals (x int)",
    "re-own a decision function": (
        "ALTER FUNCTION ledger_supersede_signal(text, text, text, double precision) "
        "SECURITY INVOKER"),
    "change an order's quantity": "UPDATE orders SET quantity = 1",
    "change a fill's price": "UPDATE fills SET price = 1",
    "delete orders": "DELETE FROM orders",
    "delete positions": "DELETE FROM positions",
    "rewind the audit sequence": "SELECT setval('audit_log_id_seq', 1)",
    "move the schema version": "UPDATE etf_ledger_alembic_version SET version_num = 'x'",
    "change a strategy's wish": "UPDATE signal_parts SET wanted_units = 1",
    "rewrite a fill's attribution": "UPDATE fill_attributions SET units = 1",
    "delete a fill's attribution": "DELETE FROM fill_attributions",
    "undo a crossing": "DELETE FROM strategy_crossings",
    "delete a strategy's holding": "DELETE FROM strategy_positions",
}


@pytest.mark.parametrize("statement", list(WRITER_REFUSED))
def test_the_writer_is_refused(database: str, logins: Logins, writer: Ledger,
                               statement: str) -> None:
    account = open_account(writer)
    rejected = writer.record_signal(base.make_signal(
        account, {"510300": 1.0}, status=SignalStatus.REJECTED,
        reasons=[{"layer": "instrument", "rule": "max_weight", "message": "too big"}]),
        actor="gate")
    with connect(logins.writer, database) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(WRITER_REFUSED[statement],  # type: ignore[arg-type]  (fixed test SQL)
                     {"rejected": rejected.signal_id, "account": account})
    assert writer.signal(rejected.signal_id) == rejected
    assert [a for a, _, _ in actions(writer, rejected.signal_id)] == ["signal_rejected"]


READER_REFUSED = {
    "insert": "INSERT INTO accounts (account_id, initial_cash) VALUES ('r', 1)",
    "update cash": "UPDATE cash SET balance = balance + 1",
    "update a paper order": "UPDATE paper_orders SET status = 'filled'",
    "delete": "DELETE FROM valuations",
    "audit": ("INSERT INTO audit_log (actor, action, entity, entity_id) "
              "VALUES ('r', 'x', 'y', 'z')"),
    "decide a signal": ("SELECT ledger_supersede_signal('x', 'reader', 'because', 1)"),
}


@pytest.mark.parametrize("statement", list(READER_REFUSED))
def test_the_reader_selects_and_writes_nothing(database: str, logins: Logins, writer: Ledger,
                                               statement: str) -> None:
    open_account(writer)
    with connect(logins.reader, database) as conn:
        for table in LEDGER_TABLES:
            conn.execute(f"SELECT * FROM {table} LIMIT 1")  # type: ignore[arg-type]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(READER_REFUSED[statement])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ decisions

DECIDE_SQL = ("SELECT status FROM ledger_decide_signal(%s::text, %s::text, %s::text, %s::date, "
              "%s::jsonb, %s::text, %s::text, %s::jsonb, %s::text, %s::text, %s::timestamptz, "
              "%s::text, %s::text)")


def test_the_decision_function_changes_a_status_with_exactly_one_audit_row(
        database: str, logins: Logins, writer: Ledger) -> None:
    account = open_account(writer)
    sig = base.make_signal(account, {"510300": 1.0})
    reasons = [{"layer": "instrument", "rule": "max_weight", "subject": "510300",
                "message": "100% > 50%"}]

    def call(conn: psycopg.Connection[Any], status: str, why: list[dict[str, str]],
             actor: str, reason: str) -> str:
        row = conn.execute(DECIDE_SQL, (
            sig.signal_id, account, sig.strategy, sig.as_of, Jsonb(sig.weights),
            sig.weights_hash, status, Jsonb(why), None, None, None, actor, reason)).fetchone()
        assert row is not None
        return str(row[0])

    with connect(logins.writer, database) as conn:
        assert call(conn, "rejected", reasons, "gate", "too big") == "rejected"
        assert audit_count(database, sig.signal_id) == 1
        assert call(conn, "approved", [], "ops:alice", "limit raised") == "approved"
        assert audit_count(database, sig.signal_id) == 2
        assert call(conn, "approved", [], "ops:alice", "again") == "approved"     # no change
        assert audit_count(database, sig.signal_id) == 2
        with pytest.raises(psycopg.errors.RestrictViolation, match="approved and immutable"):
            call(conn, "rejected", reasons, "gate", "no")
        with pytest.raises(psycopg.errors.CheckViolation, match="superseded"):
            call(conn, "superseded", [], "gate", "no")
    rows = writer.audit_log(entity="signal", entity_id=sig.signal_id)
    assert [(r["action"], r["actor"], r["reason"]) for r in rows] == [
        ("signal_rejected", "gate", "too big"), ("signal_approved", "ops:alice", "limit raised")]
    assert rows[1]["details"]["previous_status"] == "rejected"
    assert rows[1]["details"]["weights"] == {"510300": 1.0}


def test_raw_sql_cannot_flip_a_decision_without_an_audit_row(database: str,
                                                             writer: Ledger) -> None:
    """Not even the superuser's: a status changes with a declared actor, and is audited."""
    account = open_account(writer)
    rejected = writer.record_signal(base.make_signal(
        account, {"510500": 1.0}, status=SignalStatus.REJECTED,
        reasons=[{"message": "stale"}]), actor="gate")
    flip = "UPDATE signals SET status = 'approved', reasons = '[]' WHERE signal_id = %s"
    with as_superuser(database) as conn:
        with pytest.raises(psycopg.errors.RestrictViolation, match="ledger_decide_signal"):
            conn.execute(flip, (rejected.signal_id,))
        assert audit_count(database, rejected.signal_id) == 1
        with conn.transaction():
            conn.execute("SELECT set_config('etf_ledger.actor', 'dba:bob', true)")
            conn.execute(flip, (rejected.signal_id,))
        conn.execute("INSERT INTO signals (signal_id, account_id, strategy, as_of, weights, "
                     "weights_hash, status, reasons) VALUES (%s, %s, 'rot', '2024-03-01', "
                     "'{}', 'h', 'rejected', '[]')", (f"raw-{account}", account))
    assert actions(writer, rejected.signal_id)[-1] == ("signal_approved", "dba:bob", None)
    assert actions(writer, f"raw-{account}") == [("signal_rejected", "db:postgres", None)]


def test_one_approved_signal_per_account_and_session(database: str, logins: Logins,
                                                     writer: Ledger) -> None:
    account = open_account(writer)
    first = decide(writer, account, FIRST)
    assert first.status is SignalStatus.APPROVED
    assert decide(writer, account, FIRST, actor="gate-2") == first        # re-decided: as is

    # The gate: a different target for the same account and day is rejected, naming the first.
    second = decide(writer, account, OTHER)
    assert second.status is SignalStatus.REJECTED
    (reason,) = second.reasons
    assert (reason["layer"], reason["rule"], reason["subject"]) == (
        "account", "one_signal_per_session", account)
    assert first.signal_id in reason["message"]

    # The database: past the gate (the ledger API, the writer's raw SQL), still refused.
    forced = dataclasses.replace(second, status=SignalStatus.APPROVED, reasons=[])
    with pytest.raises(SignalSessionConflict, match=first.signal_id):
        writer.record_signal(forced, actor="bypass")
    with connect(logins.writer, database) as conn, \
            pytest.raises(psycopg.errors.UniqueViolation, match="one_signal_per_session"):
        conn.execute(DECIDE_SQL, (
            f"{second.signal_id}-raw", account, "rot", DAY, Jsonb(OTHER), second.weights_hash,
            "approved", Jsonb([]), None, None, None, "bypass", ""))
    assert writer.approved_signal_for(account, DAY) == first

    # Another account has its own slot, and its own signal id for the same target.
    other_account = open_account(writer)
    theirs = decide(writer, other_account, FIRST)
    assert theirs.status is SignalStatus.APPROVED and theirs.signal_id != first.signal_id
    # Another day of the same account too.
    later = approval.decide(facts(account, FIRST, dt.date(2024, 3, 5)), writer, RiskLimits(),
                            actor="gate")
    assert later.status is SignalStatus.APPROVED

    assert actions(writer, first.signal_id) == [("signal_approved", "gate", None)]
    assert [a for a, _, _ in actions(writer, second.signal_id)] == ["signal_rejected"]


def test_concurrent_approvals_for_one_session_leave_exactly_one(writer: Ledger) -> None:
    account = open_account(writer)
    barrier = threading.Barrier(2)
    results: list[SignalRecord] = []
    errors: list[BaseException] = []

    def run(weights: Mapping[str, float]) -> None:
        try:
            barrier.wait()
            results.append(decide(writer, account, weights))
        except BaseException as exc:      # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in (FIRST, OTHER)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    statuses = sorted(str(r.status) for r in results)
    assert statuses == ["approved", "rejected"]
    loser = next(r for r in results if r.status is SignalStatus.REJECTED)
    assert [r["rule"] for r in loser.reasons] == ["one_signal_per_session"]


def test_supersede_before_any_order_then_approve_another(writer: Ledger) -> None:
    account = open_account(writer)
    first = decide(writer, account, FIRST)
    second = decide(writer, account, OTHER)
    assert second.status is SignalStatus.REJECTED

    superseded = writer.supersede_signal(first.signal_id, actor="ops:alice",
                                         reason="wrong universe file")
    assert superseded.status is SignalStatus.SUPERSEDED
    assert dataclasses.replace(superseded, status=SignalStatus.APPROVED) == first
    assert writer.approved_signal_for(account, DAY) is None
    # Again: unchanged, no second audit row.
    assert writer.supersede_signal(first.signal_id, actor="ops:bob", reason="again") == \
        superseded

    approved = decide(writer, account, OTHER, actor="gate-2")
    assert approved.signal_id == second.signal_id and approved.status is SignalStatus.APPROVED
    # The superseded target stays superseded: re-deciding returns it; it cannot be executed.
    assert decide(writer, account, FIRST) == superseded
    with pytest.raises(ImmutableSignalError, match="superseded"):
        writer.record_signal(first, actor="gate")
    with pytest.raises(LedgerError, match="only an approved signal"):
        writer.start_execution(first.signal_id, account, dagster_run_id=None, actor="job")
    with pytest.raises(LedgerError, match="only an approved signal can be superseded"):
        writer.supersede_signal(decide(writer, open_account(writer), {"510300": 1.0})
                                .signal_id, actor="ops", reason="rejected anyway")

    assert actions(writer, first.signal_id) == [
        ("signal_approved", "gate", None),
        ("signal_superseded", "ops:alice", "wrong universe file")]
    assert actions(writer, second.signal_id) == [
        ("signal_rejected", "gate", reason_text(second)), ("signal_approved", "gate-2", None)]
    assert writer.signals(account, SignalStatus.SUPERSEDED) == [superseded]


def reason_text(signal: SignalRecord) -> str:
    (reason,) = signal.reasons
    return f"account/one_signal_per_session {signal.account_id}: {reason['message']}"


def _order_submitted(ledger: Ledger, signal: SignalRecord) -> None:
    order = base.make_order(signal, "510300", Side.BUY, 100, 3.9)
    ledger.record_orders([order], actor="executor")
    ledger.update_order(order.order_id, status=OrderStatus.SUBMITTED, actor="executor",
                        venue_order_id="v-1")


def _execution(status: str | None) -> Callable[[Ledger, SignalRecord], None]:
    def start(ledger: Ledger, signal: SignalRecord) -> None:
        ledger.start_execution(signal.signal_id, signal.account_id, dagster_run_id="r1",
                               actor="job")
        if status is not None:
            ledger.finish_execution(signal.signal_id, status, actor="job", reason="test")
    return start


PROGRESS: dict[str, tuple[Callable[[Ledger, SignalRecord], None], str]] = {
    "an order was submitted": (_order_submitted, "already went to the venue"),
    "the execution is running": (_execution(None), "its execution is running"),
    "the execution completed": (_execution("completed"), "its execution is completed"),
    "the execution halted": (_execution("halted"), "its execution is halted"),
}


@pytest.mark.parametrize("progress", list(PROGRESS))
def test_supersede_is_refused_once_the_signal_went_to_the_venue(writer: Ledger,
                                                                progress: str) -> None:
    account = open_account(writer)
    signal = decide(writer, account, FIRST)
    advance, why = PROGRESS[progress]
    advance(writer, signal)
    with pytest.raises(LedgerError, match=why) as info:
        writer.supersede_signal(signal.signal_id, actor="ops", reason="too late")
    assert signal.signal_id in str(info.value)
    assert writer.signal(signal.signal_id) == signal
    assert [a for a, _, _ in actions(writer, signal.signal_id)] == ["signal_approved"]


def test_supersede_after_planned_orders_and_a_failed_execution(writer: Ledger) -> None:
    """Nothing reached the venue: planned and risk-rejected orders, an execution that failed."""
    account = open_account(writer)
    signal = decide(writer, account, FIRST)
    writer.record_orders([
        base.make_order(signal, "510300", Side.BUY, 100, 3.9),
        base.make_order(signal, "510500", Side.BUY, 100, 6.0, status=OrderStatus.REJECTED,
                        reason="max_order_notional")], actor="executor")
    _execution("failed")(writer, signal)
    done = writer.supersede_signal(signal.signal_id, actor="ops", reason="replaced")
    assert done.status is SignalStatus.SUPERSEDED
    with pytest.raises(LedgerError, match="only an approved signal"):
        writer.start_execution(signal.signal_id, account, dagster_run_id="r2", actor="job")


def test_supersede_waits_for_the_account_lock(writer: Ledger) -> None:
    account = open_account(writer)
    signal = decide(writer, account, FIRST)
    with writer.account_lock(account), pytest.raises(LedgerError, match="locked by a running"):
        writer.supersede_signal(signal.signal_id, actor="ops", reason="x", lock_wait_seconds=0.3)
    assert writer.supersede_signal(signal.signal_id, actor="ops", reason="x").status is \
        SignalStatus.SUPERSEDED


def test_supersede_needs_an_actor_and_a_reason(writer: Ledger) -> None:
    signal = decide(writer, open_account(writer), FIRST)
    for actor, reason in (("", "why"), ("ops", " ")):
        with pytest.raises(LedgerError, match="actor and a reason"):
            writer.supersede_signal(signal.signal_id, actor=actor, reason=reason)
    with pytest.raises(LedgerError, match="not in the ledger"):
        writer.supersede_signal("no-such-signal", actor="ops", reason="x")


# ------------------------------------------------------------------------------ the app path

ROUND_TRIPS = [
    base.test_open_account_is_idempotent_with_one_audit_row,
    base.test_kill_switch_set_and_release_are_audited,
    base.test_signal_insert_is_idempotent_and_approved_is_immutable,
    base.test_rejected_signal_can_be_redecided_and_is_audited,
    base.test_execution_lifecycle,
    base.test_record_orders_is_idempotent,
    base.test_update_order_never_leaves_a_final_status,
    base.test_fill_arithmetic_on_a_hand_computed_example,
    base.test_record_fill_is_idempotent,
    base.test_sell_beyond_position_is_refused_and_rolled_back,
    base.test_late_fill_on_cancelled_order_counts_but_keeps_status,
    base.test_committed_notional,
    base.test_valuations_upsert,
    base.test_account_lock_excludes_a_second_holder,
    attribution.test_a_fill_is_shared_by_the_strategies_wishes_once,
    attribution.test_a_fill_without_parts_goes_to_the_one_strategy_or_is_refused,
    attribution.test_opposite_wishes_cross_at_the_reference_price,
]


@pytest.mark.parametrize("round_trip", ROUND_TRIPS, ids=lambda f: f.__name__[5:])
def test_the_application_path_works_as_the_writer(database: str, writer: Ledger,
                                                  round_trip: Callable[..., None]) -> None:
    """tests/test_ledger.py's own round trips, on a ledger logged in as the writer."""
    account = open_account(writer)
    available: dict[str, Any] = {"ledger": writer, "account": account, "database": database}
    if "approved" in round_trip.__code__.co_varnames[:round_trip.__code__.co_argcount]:
        available["approved"] = writer.record_signal(
            base.make_signal(account, {"510300": 0.6, "159915": 0.4}), actor="test")
    names = round_trip.__code__.co_varnames[:round_trip.__code__.co_argcount]
    round_trip(**{name: available[name] for name in names})


class OneBar:
    """One raw bar of 510300 on the order session (the paper venue's quote source)."""

    def __init__(self, session: dt.date) -> None:
        self.session = session

    def quote(self, symbol: str, session: dt.date) -> Quote | None:
        if symbol != "510300" or session != self.session:
            return None
        return Quote(symbol, session, open=4.0, high=4.1, low=3.9, close=4.05, volume=1e7,
                     previous_close=3.98, price_limit=0.10)

    def latest_session(self) -> dt.date | None:
        return self.session


def test_the_paper_broker_works_as_the_writer(database: str, logins: Logins) -> None:
    session = dt.date(2024, 3, 5)
    broker = PaperBroker(sa_url(logins.writer, database), OneBar(session), CostModel())
    try:
        account = f"paper-{uuid.uuid4().hex[:8]}"
        broker.open_account(account, 100_000.0)

        def order(quantity: int) -> OrderRequest:
            return OrderRequest(client_order_id=f"o-{uuid.uuid4().hex[:12]}",
                                account_id=account, symbol="510300", side=Side.BUY,
                                quantity=quantity, session=session, reference_price=4.0)

        filled, cancelled = order(1_000), order(500)
        assert broker.submit(filled).status is OrderStatus.SUBMITTED
        assert broker.submit(cancelled).status is OrderStatus.SUBMITTED
        assert broker.cancel(cancelled.client_order_id).status is OrderStatus.CANCELLED
        (fill,) = broker.fills(account)
        assert (fill.client_order_id, fill.quantity) == (filled.client_order_id, 1_000)
        assert broker.positions(account) == {"510300": 1_000}
        assert broker.cash(account) == pytest.approx(100_000.0 - fill.quantity * fill.price
                                                     - fill.commission)
    finally:
        broker.close()


# ------------------------------------------------------------------------------ migrating


def test_a_member_of_the_owner_role_migrates_without_creating_roles(logins: Logins) -> None:
    """The deploy's arrangement: the database belongs to etf_ledger_owner, the migrate step's
    login is a member of it and may not create roles, the application's login may not
    migrate."""
    with scratch_database("etf_roles_deploy") as name:
        with as_superuser() as conn:
            conn.execute(f'ALTER DATABASE "{name}" OWNER TO {OWNER}')
        app = Ledger(sa_url(logins.writer, name), retry_seconds=5)
        try:
            with pytest.raises(LedgerError, match="the migrate step has not run"):
                app.migrate()
            migrate(sa_url(logins.migrator, name))
            with as_superuser(name) as conn:
                owners = {r[0] for r in conn.execute(
                    "SELECT pg_get_userbyid(relowner) FROM pg_class "
                    "WHERE relnamespace = 'public'::regnamespace UNION "
                    "SELECT pg_get_userbyid(proowner) FROM pg_proc "
                    "WHERE pronamespace = 'public'::regnamespace")}
            assert owners == {OWNER}                      # handed over by the migrator
            app.migrate()                                 # at head now: a check, no error
            account = open_account(app)
            assert decide(app, account, FIRST).status is SignalStatus.APPROVED
            migrate(sa_url(logins.migrator, name))        # again: at head, unchanged
        finally:
            app.dispose()


def test_a_role_outside_the_owner_role_cannot_take_the_ledger() -> None:
    """A login that may create tables but is not a member of etf_ledger_owner: the migration
    stops before handing anything out, and nothing of it is kept."""
    intruder = f"etf_t{uuid.uuid4().hex[:8]}_intruder"
    with as_superuser() as conn:
        conn.execute(f'CREATE ROLE "{intruder}" LOGIN NOSUPERUSER NOCREATEROLE')
    try:
        with scratch_database("etf_roles_intruder") as name:
            with as_superuser() as conn:
                conn.execute(f'ALTER DATABASE "{name}" OWNER TO "{intruder}"')
            with pytest.raises(sa.exc.DBAPIError, match=f"may not hand the ledger to {OWNER}"):
                migrate(sa_url(intruder, name), retry_seconds=5)
            with as_superuser(name) as conn:
                left = conn.execute("SELECT count(*) FROM pg_tables "
                                    "WHERE schemaname = 'public'").fetchone()
            assert left == (0,)
    finally:
        with as_superuser() as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{intruder}"')


def alembic(url: str, action: Callable[[Config, str], None], target: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = conn
            action(config, target)
    finally:
        engine.dispose()


def test_two_approved_signals_of_one_session_are_resolved_by_the_migration() -> None:
    """A ledger from before 0003 holding the incident (two approved signals, one account, one
    day): the first decided stays approved, the other is superseded with an audit row."""
    with scratch_database("etf_roles_upgrade") as name:
        url = base.sa_url(name)
        alembic(url, command.upgrade, "0002_paper_broker")
        with as_superuser(name) as conn:
            conn.execute("INSERT INTO accounts (account_id, initial_cash) VALUES ('a', 1e6)")
            for sid, decided in (("s-first", "2024-03-04 16:30+08"),
                                 ("s-second", "2024-03-04 16:45+08")):
                conn.execute(
                    "INSERT INTO signals (signal_id, account_id, strategy, as_of, weights, "
                    "weights_hash, status, reasons, decided_at) VALUES (%s, 'a', 'rot', "
                    "'2024-03-04', '{}', %s, 'approved', '[]', %s)", (sid, sid, decided))
        migrate(url)
        ledger = Ledger(url)
        try:
            assert [(s.signal_id, s.status) for s in ledger.signals("a")] == [
                ("s-first", SignalStatus.APPROVED), ("s-second", SignalStatus.SUPERSEDED)]
            (row,) = ledger.audit_log(entity="signal", entity_id="s-second")
            assert (row["action"], row["actor"]) == ("signal_superseded",
                                                     "migration:0003_signal_discipline")
            assert "s-first" in row["reason"] and row["details"]["previous_status"] == "approved"
            assert ledger.audit_log(entity="signal", entity_id="s-first") == []
        finally:
            ledger.dispose()


def test_the_migration_downgrades_and_upgrades_again() -> None:
    with scratch_database("etf_roles_downgrade") as name:
        url = base.sa_url(name)
        migrate(url)
        alembic(url, command.downgrade, "0002_paper_broker")
        with as_superuser(name) as conn:
            functions = conn.execute("SELECT count(*) FROM pg_proc WHERE proname = ANY(%s)",
                                     (["ledger_decide_signal", "ledger_supersede_signal"],)
                                     ).fetchone()
        assert functions == (0,)
        migrate(url)
        ledger = Ledger(url)
        try:
            account = open_account(ledger)
            signal = decide(ledger, account, FIRST)
            ledger.supersede_signal(signal.signal_id, actor="ops", reason="test")
            # A superseded signal has no place in 0002's schema: refused, nothing rewritten.
            with pytest.raises(sa.exc.DBAPIError, match="superseded signals exist"):
                alembic(url, command.downgrade, "0002_paper_broker")
            assert ledger.signal(signal.signal_id).status is SignalStatus.SUPERSEDED  # type: ignore[union-attr]
        finally:
            ledger.dispose()

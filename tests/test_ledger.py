"""The execution ledger on a real PostgreSQL server (SPEC §9): schema migrations, idempotent and
audited writes, database-enforced immutability, fill arithmetic, locks and reconnection."""

from __future__ import annotations

import datetime as dt
import functools
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import PG_SERVER, scratch_database

from trading.ledger import (
    MIGRATIONS_DIR,
    ImmutableSignalError,
    Ledger,
    LedgerError,
    OrderRecord,
    SignalRecord,
    migrate,
)
from trading.ledger import (
    metadata as ledger_metadata,
)
from trading.models import (
    AuditEntry,
    Fill,
    OrderStatus,
    Side,
    SignalStatus,
    order_id_of,
    signal_id_of,
    weights_hash,
)

SESSION = dt.date(2024, 3, 5)
AT = dt.datetime(2024, 3, 5, 9, 30, tzinfo=dt.UTC)


def sa_url(database: str, server: str = PG_SERVER) -> str:
    return f"postgresql+psycopg://{server}/{database}"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with scratch_database("etf_ledger") as name:
        migrate(sa_url(name))
        yield name


@pytest.fixture(scope="module")
def ledger(database: str) -> Iterator[Ledger]:
    led = Ledger(sa_url(database), retry_seconds=20)
    yield led
    led.dispose()


@pytest.fixture
def account(ledger: Ledger) -> str:
    """A fresh account with 1,000,000 CNY (tests share the module database)."""
    account_id = f"acct-{uuid.uuid4().hex[:8]}"
    ledger.open_account(account_id, 1_000_000.0, actor="test")
    return account_id


def raw(database: str) -> psycopg.Connection:
    return psycopg.connect(f"postgresql://{PG_SERVER}/{database}", autocommit=True)


def make_signal(account_id: str, weights: dict[str, float], *,
                status: SignalStatus = SignalStatus.APPROVED,
                reasons: list[dict[str, Any]] | None = None,
                as_of: dt.date = dt.date(2024, 3, 4), strategy: str = "rot") -> SignalRecord:
    return SignalRecord(
        signal_id=signal_id_of(strategy, account_id, as_of, weights),
        account_id=account_id, strategy=strategy, as_of=as_of, weights=weights,
        weights_hash=weights_hash(weights), status=status, reasons=reasons or [],
        data_version="dv-1", dagster_run_id="run-1",
    )


def make_order(signal: SignalRecord, symbol: str, side: Side, quantity: int, price: float,
               *, slice_index: int = 0, status: OrderStatus = OrderStatus.PLANNED,
               reason: str | None = None, session: dt.date = SESSION) -> OrderRecord:
    return OrderRecord(
        order_id=order_id_of(signal.signal_id, symbol, side, slice_index),
        signal_id=signal.signal_id, account_id=signal.account_id, symbol=symbol, side=side,
        quantity=quantity, reference_price=price, session=session, status=status,
        slice_index=slice_index, reason=reason,
    )


def make_fill(order: OrderRecord, quantity: int, price: float, commission: float,
              fill_id: str | None = None) -> Fill:
    return Fill(
        fill_id=fill_id or f"f-{uuid.uuid4().hex[:12]}", client_order_id=order.order_id,
        account_id=order.account_id, symbol=order.symbol, side=order.side, quantity=quantity,
        price=price, commission=commission, session=order.session, filled_at=AT,
    )


def stored_order(ledger: Ledger, order_id: str) -> OrderRecord:
    order = ledger.order(order_id)
    assert order is not None, order_id
    return order


@pytest.fixture
def approved(ledger: Ledger, account: str) -> SignalRecord:
    return ledger.record_signal(make_signal(account, {"510300": 0.6, "159915": 0.4}),
                                actor="test")


# ------------------------------------------------------------------------------ migrations


def alembic_state(url: str) -> tuple[set[str], set[str]]:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    heads = set(ScriptDirectory.from_config(config).get_heads())
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        current = set(MigrationContext.configure(
            conn, opts={"version_table": "etf_ledger_alembic_version"}).get_current_heads())
    engine.dispose()
    return current, heads


def test_migrate_is_idempotent_and_at_head() -> None:
    with scratch_database("etf_ledger") as name:
        url = sa_url(name)
        migrate(url)
        current, heads = alembic_state(url)
        assert "0001_ledger" in {r for h in heads for r in _ancestry(h)}
        assert current == heads
        migrate(url)                                   # already at head: no error, no change
        assert alembic_state(url)[0] == heads
        with raw(name) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"accounts", "signals", "executions", "orders", "fills", "positions", "cash",
                "valuations", "audit_log", "signal_parts", "fill_attributions",
                "strategy_crossings", "strategy_positions", "etf_ledger_alembic_version"} <= tables


def _ancestry(head: str) -> list[str]:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return [s.revision for s in ScriptDirectory.from_config(config).walk_revisions("base", head)]


def test_migrate_concurrently_from_two_threads() -> None:
    with scratch_database("etf_ledger") as name:
        url = sa_url(name)
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def run() -> None:
            try:
                barrier.wait()
                migrate(url)
            except BaseException as exc:   # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        current, heads = alembic_state(url)
        assert current == heads
        with raw(name) as conn:
            versions = conn.execute("SELECT version_num FROM etf_ledger_alembic_version").fetchall()
        assert {v[0] for v in versions} == heads


def test_table_definitions_match_the_migrated_schema(database: str) -> None:
    engine = sa.create_engine(sa_url(database))
    inspector = sa.inspect(engine)
    for table in ledger_metadata.sorted_tables:
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert list(columns) == [c.name for c in table.columns], table.name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, (table.name, column.name)
        primary_key = inspector.get_pk_constraint(table.name)["constrained_columns"]
        assert primary_key == [c.name for c in table.primary_key.columns], table.name
    engine.dispose()


def test_ledger_refuses_other_drivers() -> None:
    with pytest.raises(LedgerError, match=r"postgresql\+psycopg"):
        Ledger("postgresql+psycopg2://postgres@127.0.0.1:5432/x")
    with pytest.raises(LedgerError, match=r"psycopg 3"):
        Ledger("sqlite:///x.db")


# ------------------------------------------------------------------------------ accounts


def test_open_account_is_idempotent_with_one_audit_row(ledger: Ledger) -> None:
    account_id = f"acct-{uuid.uuid4().hex[:8]}"
    ledger.open_account(account_id, 250_000.5, actor="ops")
    ledger.open_account(account_id, 250_000.5, actor="ops")
    assert ledger.cash(account_id) == 250_000.5
    rows = ledger.audit_log(entity="account", entity_id=account_id)
    assert [(r["action"], r["actor"]) for r in rows] == [("account_opened", "ops")]
    assert rows[0]["details"] == {"initial_cash": 250_000.5}
    assert ledger.positions(account_id) == {}
    with pytest.raises(LedgerError, match="nope"):
        ledger.cash("nope")


def test_kill_switch_set_and_release_are_audited(ledger: Ledger, account: str) -> None:
    assert not ledger.kill_switch(account).engaged
    ledger.set_kill_switch(account, True, actor="alice", reason="broker outage")
    ledger.set_kill_switch(account, True, actor="alice", reason="broker outage")   # no-op
    ks = ledger.kill_switch(account)
    assert (ks.engaged, ks.reason, ks.actor) == (True, "broker outage", "alice")
    assert ks.at is not None
    ledger.set_kill_switch(account, False, actor="bob", reason="resolved")
    ks = ledger.kill_switch(account)
    assert (ks.engaged, ks.reason, ks.actor) == (False, "resolved", "bob")
    rows = ledger.audit_log(entity="kill_switch", entity_id=account)
    assert [(r["action"], r["actor"], r["reason"]) for r in rows] == [
        ("kill_switch_engaged", "alice", "broker outage"),
        ("kill_switch_released", "bob", "resolved"),
    ]
    with pytest.raises(LedgerError, match="ghost"):
        ledger.set_kill_switch("ghost", True, actor="x", reason="y")


def test_audit_page_is_newest_first_filtered_and_counted(ledger: Ledger, account: str) -> None:
    for n in range(3):
        ledger.set_kill_switch(account, n % 2 == 0, actor=f"op{n % 2}", reason=f"step {n}")
    rows, total = ledger.audit_page(entity="kill_switch", entity_id=account, limit=2)
    assert total == 3
    assert [r["reason"] for r in rows] == ["step 2", "step 1"]
    rows, total = ledger.audit_page(entity="kill_switch", entity_id=account, limit=2, offset=2)
    assert (total, [r["reason"] for r in rows]) == (3, ["step 0"])
    rows, total = ledger.audit_page(actor="op1", entity_id=account)
    assert (total, [r["action"] for r in rows]) == (1, ["kill_switch_released"])
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert ledger.audit_page(entity_id=account, since=later) == ([], 0)


# ------------------------------------------------------------------------------ signals


def test_signal_insert_is_idempotent_and_approved_is_immutable(ledger: Ledger,
                                                               account: str) -> None:
    sig = make_signal(account, {"510300": 0.5, "510500": 0.5})
    first = ledger.record_signal(sig, actor="gate")
    again = ledger.record_signal(sig, actor="gate")
    assert first == again
    assert first.status is SignalStatus.APPROVED and first.weights == sig.weights
    assert first.decided_at is not None and first.as_of == sig.as_of
    assert ledger.signal(sig.signal_id) == first
    assert ledger.signal("missing") is None

    rejected = SignalRecord(**{**sig.__dict__, "status": SignalStatus.REJECTED,
                               "reasons": [{"layer": "risk", "rule": "max_weight",
                                            "subject": "510300", "message": "too big"}]})
    with pytest.raises(ImmutableSignalError, match="approved and immutable"):
        ledger.record_signal(rejected, actor="gate")
    changed = SignalRecord(**{**sig.__dict__, "weights": {"510300": 0.4, "510500": 0.6}})
    with pytest.raises(ImmutableSignalError, match="weights"):
        ledger.record_signal(changed, actor="gate")
    other_day = SignalRecord(**{**sig.__dict__, "as_of": dt.date(2024, 3, 1)})
    with pytest.raises(ImmutableSignalError, match="as_of"):
        ledger.record_signal(other_day, actor="gate")

    stored = ledger.signal(sig.signal_id)
    assert stored == first
    audit = ledger.audit_log(entity="signal", entity_id=sig.signal_id)
    assert [r["action"] for r in audit] == ["signal_approved"]


def test_trigger_refuses_raw_changes_of_an_approved_signal(ledger: Ledger, database: str,
                                                           approved: SignalRecord) -> None:
    with raw(database) as conn:
        for sql in ("UPDATE signals SET status = 'rejected' WHERE signal_id = %s",
                    "UPDATE signals SET reasons = '[]'::jsonb WHERE signal_id = %s",
                    "DELETE FROM signals WHERE signal_id = %s"):
            with pytest.raises(psycopg.errors.RestrictViolation, match="immutable"):
                conn.execute(sql, (approved.signal_id,))
        with pytest.raises(psycopg.errors.RestrictViolation, match="immutable"):
            conn.execute("TRUNCATE signals CASCADE")
    assert ledger.signal(approved.signal_id) == approved


def test_rejected_signal_can_be_redecided_and_is_audited(ledger: Ledger, account: str,
                                                         database: str) -> None:
    reasons = [{"layer": "data", "rule": "freshness", "subject": "510300",
                "message": "stale close"}]
    sig = make_signal(account, {"510300": 1.0}, status=SignalStatus.REJECTED, reasons=reasons)
    stored = ledger.record_signal(sig, actor="gate")
    assert stored.status is SignalStatus.REJECTED and stored.reasons == reasons
    assert ledger.record_signal(sig, actor="gate") == stored          # same decision: no-op

    # the content of a rejected signal is immutable in the database too
    with raw(database) as conn, pytest.raises(psycopg.errors.RestrictViolation, match="content"):
        conn.execute("UPDATE signals SET strategy = 'x' WHERE signal_id = %s", (sig.signal_id,))

    approved = ledger.record_signal(
        SignalRecord(**{**sig.__dict__, "status": SignalStatus.APPROVED, "reasons": [],
                        "dagster_run_id": "run-2"}), actor="gate")
    assert approved.status is SignalStatus.APPROVED and approved.reasons == []
    assert approved.dagster_run_id == "run-2"
    assert ledger.signals(account, SignalStatus.APPROVED) == [approved]
    assert ledger.signals(account, SignalStatus.REJECTED) == []

    audit = ledger.audit_log(entity="signal", entity_id=sig.signal_id)
    assert [r["action"] for r in audit] == ["signal_rejected", "signal_approved"]
    assert audit[0]["reason"] == "data/freshness 510300: stale close"
    assert audit[1]["details"]["previous_status"] == "rejected"


def test_signals_are_listed_by_date(ledger: Ledger, account: str) -> None:
    late = ledger.record_signal(make_signal(account, {"a": 1.0}, as_of=dt.date(2024, 3, 8)),
                                actor="t")
    early = ledger.record_signal(make_signal(account, {"b": 1.0}, as_of=dt.date(2024, 3, 1)),
                                 actor="t")
    assert [s.signal_id for s in ledger.signals(account)] == [early.signal_id, late.signal_id]


# ------------------------------------------------------------------------------ audit log


def test_audit_log_is_append_only(ledger: Ledger, database: str) -> None:
    entity_id = uuid.uuid4().hex
    ledger.audit(AuditEntry(actor="ops", action="note", entity="risk", entity_id=entity_id,
                            reason="checked", details={"x": 1}))
    rows = ledger.audit_log(entity="risk", entity_id=entity_id)
    assert len(rows) == 1 and rows[0]["details"] == {"x": 1} and rows[0]["reason"] == "checked"
    with raw(database) as conn:
        for sql in ("UPDATE audit_log SET reason = 'forged' WHERE entity_id = %s",
                    "DELETE FROM audit_log WHERE entity_id = %s"):
            with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
                conn.execute(sql, (entity_id,))
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            conn.execute("TRUNCATE audit_log")
    assert ledger.audit_log(entity="risk", entity_id=entity_id) == rows


# ------------------------------------------------------------------------------ executions


def test_execution_lifecycle(ledger: Ledger, approved: SignalRecord) -> None:
    sid, acct = approved.signal_id, approved.account_id
    assert ledger.execution(sid) is None
    first = ledger.start_execution(sid, acct, dagster_run_id="r1", actor="job")
    assert (first.status, first.dagster_run_id) == ("running", "r1")
    assert ledger.start_execution(sid, acct, dagster_run_id="r1", actor="job") == first
    ledger.finish_execution(sid, "failed", actor="job", reason="venue down")
    failed = ledger.execution(sid)
    assert failed is not None and failed.status == "failed"
    retried = ledger.start_execution(sid, acct, dagster_run_id="r2", actor="job")
    assert (retried.status, retried.dagster_run_id, retried.reason) == ("running", "r2", None)
    ledger.finish_execution(sid, "completed", actor="job")
    ledger.finish_execution(sid, "completed", actor="job")            # repeat: no-op
    done = ledger.start_execution(sid, acct, dagster_run_id="r3", actor="job")
    assert (done.status, done.dagster_run_id) == ("completed", "r2")
    assert done.finished_at is not None
    with pytest.raises(LedgerError, match="already completed"):
        ledger.finish_execution(sid, "halted", actor="job")
    actions = [r["action"] for r in ledger.audit_log(entity="execution", entity_id=sid)]
    assert actions == ["execution_started", "execution_failed", "execution_started",
                       "execution_completed"]


def test_rejected_signal_cannot_be_executed(ledger: Ledger, account: str) -> None:
    sig = ledger.record_signal(make_signal(account, {"x": 1.0}, status=SignalStatus.REJECTED,
                                           reasons=[{"message": "no"}]), actor="t")
    with pytest.raises(LedgerError, match="only an approved signal"):
        ledger.start_execution(sig.signal_id, account, dagster_run_id=None, actor="t")


# ------------------------------------------------------------------------------ orders


def test_record_orders_is_idempotent(ledger: Ledger, approved: SignalRecord) -> None:
    orders = [make_order(approved, "159915", Side.SELL, 200, 2.5),
              make_order(approved, "510300", Side.BUY, 1000, 3.9),
              make_order(approved, "510500", Side.BUY, 100, 6.0, status=OrderStatus.REJECTED,
                         reason="order_notional")]
    first = ledger.record_orders(orders, actor="executor")
    assert [o.order_id for o in first] == [o.order_id for o in orders]
    assert first[0] == orders[0]
    assert first[2].status is OrderStatus.REJECTED and first[2].reason == "order_notional"
    # a retried run: same ids, even with recomputed quantities, keep the stored rows
    changed = [orders[1].__class__(**{**orders[1].__dict__, "quantity": 900}), orders[0]]
    second = ledger.record_orders(changed, actor="executor")
    assert [o.order_id for o in second] == [orders[1].order_id, orders[0].order_id]
    assert second[0].quantity == 1000
    assert ledger.orders(signal_id=approved.signal_id) == first       # insertion order kept
    assert ledger.orders(account_id=approved.account_id, status=OrderStatus.REJECTED) == \
        [first[2]]
    assert ledger.order(orders[1].order_id) == first[1]
    actions = {}
    for o in orders:
        rows = ledger.audit_log(entity="order", entity_id=o.order_id)
        actions[o.symbol] = [(r["action"], r["reason"]) for r in rows]
    assert actions == {"159915": [("order_planned", None)], "510300": [("order_planned", None)],
                       "510500": [("order_rejected", "order_notional")]}


def test_unique_signal_symbol_side_slice(ledger: Ledger, approved: SignalRecord) -> None:
    order = make_order(approved, "510300", Side.BUY, 100, 3.9)
    ledger.record_orders([order], actor="t")
    clash = OrderRecord(**{**order.__dict__, "order_id": "o-different-id"})
    with pytest.raises(LedgerError, match="orders_signal_symbol_side_slice_key"):
        ledger.record_orders([clash], actor="t")
    assert ledger.order("o-different-id") is None
    # another TWAP slice of the same fund is a different order
    other_slice = make_order(approved, "510300", Side.BUY, 100, 3.9, slice_index=1)
    assert ledger.record_orders([other_slice], actor="t")[0].slice_index == 1


def test_update_order_never_leaves_a_final_status(ledger: Ledger,
                                                  approved: SignalRecord) -> None:
    order = ledger.record_orders([make_order(approved, "510300", Side.BUY, 100, 3.9)],
                                 actor="t")[0]
    oid = order.order_id
    sent = ledger.update_order(oid, status=OrderStatus.SUBMITTED, actor="t",
                               venue_order_id="v-1")
    assert (sent.status, sent.venue_order_id) == (OrderStatus.SUBMITTED, "v-1")
    assert ledger.update_order(oid, status=OrderStatus.SUBMITTED, actor="t",
                               venue_order_id="v-1") == sent                      # no-op
    assert ledger.update_order(oid, status=OrderStatus.PLANNED, actor="t").status is \
        OrderStatus.SUBMITTED                                                   # no regress
    cancelled = ledger.update_order(oid, status=OrderStatus.CANCELLED, actor="ops",
                                    reason="kill switch")
    assert cancelled.status is OrderStatus.CANCELLED and cancelled.reason == "kill switch"
    for status in (OrderStatus.SUBMITTED, OrderStatus.FILLED, OrderStatus.EXPIRED):
        assert ledger.update_order(oid, status=status, actor="t") == cancelled
    assert [(r["action"], r["reason"]) for r in ledger.audit_log(entity="order", entity_id=oid)
            ] == [("order_planned", None), ("order_submitted", None),
                  ("order_cancelled", "kill switch")]
    with pytest.raises(LedgerError, match="o-unknown"):
        ledger.update_order("o-unknown", status=OrderStatus.SUBMITTED, actor="t")


# ------------------------------------------------------------------------------ fills


def test_fill_arithmetic_on_a_hand_computed_example(ledger: Ledger,
                                                    approved: SignalRecord) -> None:
    acct = approved.account_id
    buy = ledger.record_orders([make_order(approved, "510300", Side.BUY, 1000, 3.9)],
                               actor="t")[0]
    ledger.update_order(buy.order_id, status=OrderStatus.SUBMITTED, actor="t")
    # two partial fills: 600 @ 3.90 (commission 5.00), 400 @ 3.95 (commission 5.00)
    assert ledger.record_fill(make_fill(buy, 600, 3.90, 5.0, "f1"), actor="venue")
    mid = stored_order(ledger, buy.order_id)
    assert (mid.status, mid.filled_quantity, mid.average_price) == (
        OrderStatus.PARTIALLY_FILLED, 600, pytest.approx(3.90))
    assert ledger.record_fill(make_fill(buy, 400, 3.95, 5.0, "f2"), actor="venue")
    done = stored_order(ledger, buy.order_id)
    assert (done.status, done.filled_quantity) == (OrderStatus.FILLED, 1000)
    assert done.average_price == pytest.approx((600 * 3.90 + 400 * 3.95) / 1000)   # 3.92
    # cash: 1_000_000 - 2340 - 5 - 1580 - 5 = 996_070; cost = 2340 + 1580 + 10 = 3930
    assert ledger.cash(acct) == pytest.approx(996_070.0, abs=1e-9)
    pos = ledger.positions(acct)
    assert list(pos) == ["510300"]
    assert (pos["510300"].quantity, pos["510300"].cost) == (1000, pytest.approx(3930.0))

    # sell 250 @ 4.10 with commission 5: cash += 1025 - 5; cost reduced by 1/4
    later = make_signal(acct, {"510300": 0.3}, as_of=dt.date(2024, 3, 6))
    ledger.record_signal(later, actor="t")
    sell = ledger.record_orders([make_order(later, "510300", Side.SELL, 250, 4.1,
                                            session=dt.date(2024, 3, 7))], actor="t")[0]
    assert ledger.record_fill(make_fill(sell, 250, 4.10, 5.0, "f3"), actor="venue")
    assert ledger.cash(acct) == pytest.approx(996_070.0 + 1025.0 - 5.0, abs=1e-9)
    left = ledger.positions(acct)["510300"]
    assert (left.quantity, left.cost) == (750, pytest.approx(3930.0 * 0.75))
    # close the position: cost goes to zero and the fund disappears from positions()
    close = ledger.record_orders([make_order(later, "510300", Side.SELL, 750, 4.1,
                                             slice_index=1, session=dt.date(2024, 3, 7))],
                                 actor="t")[0]
    assert ledger.record_fill(make_fill(close, 750, 4.0, 5.0, "f4"), actor="venue")
    assert ledger.positions(acct) == {}
    assert ledger.cash(acct) == pytest.approx(996_070.0 + 1020.0 + 3000.0 - 5.0, abs=1e-9)

    fills = ledger.fills(acct)
    assert [f.fill_id for f in fills] == ["f1", "f2", "f3", "f4"]
    assert fills[0].price == 3.90 and fills[0].commission == 5.0 and fills[0].side is Side.BUY
    assert [f.fill_id for f in ledger.fills(acct, signal_id=later.signal_id)] == ["f3", "f4"]
    audit = ledger.audit_log(action="filled", entity_id="f2")
    assert audit[0]["details"]["order_id"] == buy.order_id
    assert audit[0]["details"]["order_status"] == "filled"


def test_record_fill_is_idempotent(ledger: Ledger, approved: SignalRecord) -> None:
    acct = approved.account_id
    order = ledger.record_orders([make_order(approved, "510300", Side.BUY, 1000, 3.9)],
                                 actor="t")[0]
    fill = make_fill(order, 500, 4.0, 5.0)
    assert ledger.record_fill(fill, actor="venue") is True
    assert ledger.record_fill(fill, actor="venue") is False
    assert ledger.cash(acct) == pytest.approx(1_000_000 - 2000 - 5)
    assert ledger.positions(acct)["510300"].quantity == 500
    assert stored_order(ledger, order.order_id).filled_quantity == 500
    assert len(ledger.fills(acct)) == 1
    assert len(ledger.audit_log(action="filled", entity_id=fill.fill_id)) == 1
    forged = Fill(**{**fill.__dict__, "quantity": 400})
    with pytest.raises(LedgerError, match="different content"):
        ledger.record_fill(forged, actor="venue")


def test_the_same_fill_booked_concurrently_counts_once(ledger: Ledger,
                                                     approved: SignalRecord) -> None:
    acct = approved.account_id
    order = ledger.record_orders([make_order(approved, "510300", Side.BUY, 1000, 3.9)],
                                 actor="t")[0]
    fill = make_fill(order, 1000, 4.0, 8.0)
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def book() -> None:
        barrier.wait()
        results.append(ledger.record_fill(fill, actor="venue"))

    threads = [threading.Thread(target=book) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False, False, False, True]
    assert ledger.cash(acct) == pytest.approx(1_000_000 - 4008)
    assert ledger.positions(acct)["510300"].quantity == 1000
    assert stored_order(ledger, order.order_id).status is OrderStatus.FILLED


def test_sell_beyond_position_is_refused_and_rolled_back(ledger: Ledger,
                                                         approved: SignalRecord) -> None:
    acct = approved.account_id
    buy, sell = ledger.record_orders([make_order(approved, "510300", Side.BUY, 300, 3.9),
                                      make_order(approved, "510300", Side.SELL, 500, 3.9)],
                                     actor="t")
    ledger.record_fill(make_fill(buy, 300, 3.9, 5.0), actor="venue")
    cash_before, positions_before = ledger.cash(acct), ledger.positions(acct)
    bad = make_fill(sell, 400, 4.0, 5.0)
    with pytest.raises(LedgerError, match="holds only 300"):
        ledger.record_fill(bad, actor="venue")
    assert ledger.cash(acct) == cash_before
    assert ledger.positions(acct) == positions_before
    assert stored_order(ledger, sell.order_id).filled_quantity == 0
    assert stored_order(ledger, sell.order_id).status is OrderStatus.PLANNED
    assert [f.fill_id for f in ledger.fills(acct)] != [] and \
        bad.fill_id not in {f.fill_id for f in ledger.fills(acct)}
    assert ledger.audit_log(entity_id=bad.fill_id) == []


def test_fill_beyond_order_quantity_is_refused(ledger: Ledger, approved: SignalRecord) -> None:
    acct = approved.account_id
    order = ledger.record_orders([make_order(approved, "510300", Side.BUY, 300, 3.9)],
                                 actor="t")[0]
    ledger.record_fill(make_fill(order, 200, 3.9, 5.0), actor="venue")
    with pytest.raises(LedgerError, match="would be filled 400"):
        ledger.record_fill(make_fill(order, 200, 3.9, 5.0), actor="venue")
    assert stored_order(ledger, order.order_id).filled_quantity == 200
    assert ledger.positions(acct)["510300"].quantity == 200
    wrong_side = Fill(**{**make_fill(order, 100, 3.9, 5.0).__dict__, "side": Side.SELL})
    with pytest.raises(LedgerError, match="does not match order"):
        ledger.record_fill(wrong_side, actor="venue")


def test_late_fill_on_cancelled_order_counts_but_keeps_status(
        ledger: Ledger, approved: SignalRecord) -> None:
    order = ledger.record_orders([make_order(approved, "510300", Side.BUY, 300, 3.9)],
                                 actor="t")[0]
    ledger.update_order(order.order_id, status=OrderStatus.SUBMITTED, actor="t")
    ledger.update_order(order.order_id, status=OrderStatus.CANCELLED, actor="t")
    assert ledger.record_fill(make_fill(order, 100, 3.9, 5.0), actor="venue")
    stored = stored_order(ledger, order.order_id)
    assert (stored.status, stored.filled_quantity) == (OrderStatus.CANCELLED, 100)
    assert ledger.positions(approved.account_id)["510300"].quantity == 100


def test_committed_notional(ledger: Ledger, approved: SignalRecord) -> None:
    acct = approved.account_id
    a, b, c, d, e = ledger.record_orders([
        make_order(approved, "A", Side.BUY, 1000, 2.0),    # submitted: 2000
        make_order(approved, "B", Side.BUY, 500, 4.0),     # filled: 2000
        make_order(approved, "C", Side.BUY, 300, 10.0),    # cancelled after 100 @ 9.5: 950
        make_order(approved, "D", Side.BUY, 100, 50.0),    # planned: 0
        make_order(approved, "E", Side.BUY, 100, 70.0, status=OrderStatus.REJECTED,
                   reason="price_band"),                   # rejected: 0
    ], actor="t")
    other_day = make_order(approved, "F", Side.BUY, 100, 1.0, session=dt.date(2024, 3, 6))
    f = ledger.record_orders([other_day], actor="t")[0]
    for o in (a, b, c, f):
        ledger.update_order(o.order_id, status=OrderStatus.SUBMITTED, actor="t")
    assert ledger.committed_notional(acct, SESSION) == pytest.approx(2000 + 2000 + 3000)
    ledger.record_fill(make_fill(b, 500, 4.1, 5.0), actor="venue")
    ledger.record_fill(make_fill(c, 100, 9.5, 5.0), actor="venue")
    ledger.update_order(c.order_id, status=OrderStatus.CANCELLED, actor="t")
    assert ledger.committed_notional(acct, SESSION) == pytest.approx(2000 + 2000 + 950)
    assert ledger.committed_notional(acct, dt.date(2024, 3, 6)) == pytest.approx(100)
    assert ledger.committed_notional(acct, dt.date(2024, 1, 2)) == 0.0
    assert d.status is OrderStatus.PLANNED and e.status is OrderStatus.REJECTED


# ------------------------------------------------------------------------------ valuations


def test_valuations_upsert(ledger: Ledger, account: str) -> None:
    assert list(ledger.valuations(account).columns) == ["session", "cash", "positions_value",
                                                        "equity"]
    ledger.record_valuation(account, dt.date(2024, 3, 6), cash=1000.0, positions_value=500.0,
                            actor="t")
    ledger.record_valuation(account, dt.date(2024, 3, 5), cash=900.0, positions_value=0.0,
                            actor="t")
    ledger.record_valuation(account, dt.date(2024, 3, 6), cash=1000.0, positions_value=650.25,
                            actor="t")
    ledger.record_valuation(account, dt.date(2024, 3, 6), cash=1000.0, positions_value=650.25,
                            actor="t")                                         # unchanged
    frame = ledger.valuations(account)
    assert frame["session"].dt.date.tolist() == [dt.date(2024, 3, 5), dt.date(2024, 3, 6)]
    assert frame["equity"].tolist() == [900.0, 1650.25]
    assert frame["positions_value"].tolist() == [0.0, 650.25]
    assert len(ledger.audit_log(action="valuation_recorded",
                                entity_id=f"{account}:2024-03-06")) == 2


# ------------------------------------------------------------------------------ locks


def test_account_lock_excludes_a_second_holder(ledger: Ledger, account: str) -> None:
    holding, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def holder() -> None:
        with ledger.account_lock(account, timeout_seconds=5):
            holding.set()
            release.wait(30)

    def contender() -> None:
        started = time.monotonic()
        try:
            with ledger.account_lock(account, timeout_seconds=0.6):
                outcome["acquired"] = True
        except LedgerError as exc:
            outcome["error"] = str(exc)
            outcome["waited"] = time.monotonic() - started

    first = threading.Thread(target=holder)
    first.start()
    assert holding.wait(10)
    second = threading.Thread(target=contender)
    second.start()
    second.join(10)
    assert "acquired" not in outcome
    assert account in str(outcome["error"]) and "locked" in str(outcome["error"])
    assert 0.5 <= float(outcome["waited"]) < 5           # type: ignore[arg-type]
    # another account is not blocked by this one
    with ledger.account_lock(f"{account}-other", timeout_seconds=1):
        pass
    release.set()
    first.join(10)
    with ledger.account_lock(account, timeout_seconds=1):   # released
        pass


# ------------------------------------------------------------------------------ reconnection


def terminate_backends(database: str) -> int:
    with raw(database) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchall()
    return len(rows)


def test_calls_survive_terminated_connections(ledger: Ledger, database: str,
                                              approved: SignalRecord) -> None:
    acct = approved.account_id
    order = ledger.record_orders([make_order(approved, "510300", Side.BUY, 100, 3.9)],
                                 actor="t")[0]
    assert ledger.cash(acct) == 1_000_000.0
    assert terminate_backends(database) >= 1
    assert ledger.record_fill(make_fill(order, 100, 4.0, 5.0), actor="venue")
    assert terminate_backends(database) >= 1
    assert ledger.cash(acct) == pytest.approx(1_000_000 - 405)


def test_transaction_is_retried_after_losing_its_connection(ledger: Ledger) -> None:
    """A connection dropped in the middle of a transaction: the whole transaction runs again."""
    attempts: list[int] = []

    def work(conn: sa.Connection) -> int:
        attempts.append(conn.execute(sa.select(sa.func.pg_backend_pid())).scalar_one())
        if len(attempts) == 1:
            conn.execute(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))
        return len(attempts)

    assert ledger._run("test", work) == 2
    assert attempts[0] != attempts[1]


class Proxy:
    """A TCP forwarder in front of PostgreSQL that can go down and come back, as a server
    restart looks to a client (connections dropped, new connections refused)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                with suppress(OSError):   # wakes the accept() blocked in the other thread
                    self._server.shutdown(socket.SHUT_RDWR)
                self._server.close()
                self._server = None
            for s in self._sockets:
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_calls_wait_for_the_server_to_come_back(database: str) -> None:
    host, port = PG_SERVER.split("@")[-1].split(":")
    proxy = Proxy((host, int(port)))
    proxy.start()
    led = Ledger(sa_url(database, f"postgres@127.0.0.1:{proxy.port}"), retry_seconds=20)
    try:
        account_id = f"acct-{uuid.uuid4().hex[:8]}"
        led.open_account(account_id, 1000.0, actor="t")
        proxy.stop()                                       # the "server" goes away
        restart: Callable[[], None] = proxy.start
        timer = threading.Timer(1.5, restart)
        timer.start()
        started = time.monotonic()
        led.set_kill_switch(account_id, True, actor="ops", reason="restart drill")
        assert time.monotonic() - started >= 1.0           # it waited for the restart
        timer.join()
        assert led.kill_switch(account_id).engaged
        assert len(led.audit_log(entity="kill_switch", entity_id=account_id)) == 1
    finally:
        led.dispose()
        proxy.stop()


def test_gives_up_after_retry_seconds(database: str) -> None:
    proxy = Proxy(("127.0.0.1", 1))
    led = Ledger(sa_url(database, f"postgres@127.0.0.1:{proxy.port}"), retry_seconds=1)
    started = time.monotonic()
    with pytest.raises(LedgerError, match="unreachable for 1s"):
        led.cash("anything")
    assert time.monotonic() - started < 10
    led.dispose()


# ------------------------------------------------------------------------------ pages


def _pages(read: Callable[..., tuple[list[Any], int]], size: int) -> tuple[list[Any], int]:
    """Every page of a paged read (``read(limit=, offset=)``), concatenated, and the total
    each page reported."""
    items, totals, offset = [], set(), 0
    while True:
        page, total = read(limit=size, offset=offset)
        items += page
        totals.add(total)
        offset += size
        if offset >= total:
            break
    assert len(totals) == 1
    return items, totals.pop()


def _seed_sessions(ledger: Ledger, account: str, days: list[dt.date]) -> None:
    """A signal a day (the third rejected, two strategies), two orders per approved signal
    and a fill per buy."""
    for i, day in enumerate(days):
        status = SignalStatus.REJECTED if i == 2 else SignalStatus.APPROVED
        signal = ledger.record_signal(make_signal(account, {"510300": 0.5, "159915": 0.5},
                                                  as_of=day, status=status,
                                                  strategy="rot" if i % 2 else "mom"),
                                      actor="t")
        if status is SignalStatus.REJECTED:
            continue
        session = day + dt.timedelta(days=1)
        orders = ledger.record_orders(
            [make_order(signal, "510300", Side.BUY, 100 * (i + 1), 3.9, session=session),
             make_order(signal, "159915", Side.SELL if i else Side.BUY, 100, 2.1,
                        session=session)], actor="t")
        for order in orders:
            ledger.update_order(order.order_id, status=OrderStatus.SUBMITTED, actor="t")
            if order.side is Side.BUY:
                ledger.record_fill(make_fill(order, order.quantity, 3.9, 5.0), actor="venue")


def test_pages_cut_in_the_database_match_the_whole_lists(ledger: Ledger, account: str) -> None:
    days = [dt.date(2024, 3, 4) + dt.timedelta(days=i) for i in range(4)]
    _seed_sessions(ledger, account, days)
    signals = list(reversed(ledger.signals(account)))
    assert _pages(functools.partial(ledger.signals_page, account_id=account), 3) == (signals, 4)
    for strategy, status, since in [("rot", None, None), (None, SignalStatus.APPROVED, days[1]),
                                    ("mom", SignalStatus.REJECTED, None)]:
        wanted = [s for s in signals if (strategy is None or s.strategy == strategy)
                  and (status is None or s.status is status)
                  and (since is None or s.as_of >= since)]
        read = functools.partial(ledger.signals_page, account_id=account, strategy=strategy,
                                 status=status, since=since, until=days[-1])
        assert _pages(read, 2) == (wanted, len(wanted))
    orders = list(reversed(ledger.orders(account_id=account)))
    assert len(orders) == 6
    for symbol, side, session in [(None, None, None), ("510300", None, None),
                                  (None, Side.SELL, None), ("159915", Side.BUY, days[1])]:
        chosen = [o for o in orders if (symbol is None or o.symbol == symbol)
                  and (side is None or o.side is side)
                  and (session is None or o.session == session)]
        read = functools.partial(ledger.orders_page, account_id=account, symbol=symbol,
                                 side=side, session=session)
        assert _pages(read, 4) == (chosen, len(chosen))
    fills = list(reversed(ledger.fills(account)))
    assert len(fills) == 4
    assert _pages(functools.partial(ledger.fills_page, account), 3) == (fills, 4)
    last = signals[0]
    assert ledger.fills_page(account, signal_id=last.signal_id)[0] == list(
        reversed(ledger.fills(account, signal_id=last.signal_id)))
    assert ledger.fills_page(account, symbol="159915", side=Side.SELL) == ([], 0)

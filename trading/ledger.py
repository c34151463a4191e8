"""The execution ledger in PostgreSQL (SPEC §9): accounts, signals, executions, orders, fills,
positions, cash, valuations and the append-only audit log.

Rules every write keeps:

* one public write method = one database transaction, and its audit rows are written in that
  same transaction (a decision is never recorded without its audit entry, nor vice versa);
* every write is idempotent (``ON CONFLICT`` or an existence check under a row lock), so a
  transaction that lost its connection - even while committing - is simply run again until
  ``retry_seconds`` have passed;
* what the database can guarantee on its own it does (schema in
  ``trading/migrations/versions/0001_ledger.py``): an approved signal is immutable, the audit
  log is append-only, filled quantities and positions never go negative or beyond the order;
* signals (``0003_signal_discipline.py``): one approved signal per account and session; a
  decision is written only by the database functions ``ledger_decide_signal`` and
  ``ledger_supersede_signal`` (the application's role ``etf_ledger_writer`` may not write the
  table), and a trigger audits every insert and decision change, whoever makes it.

Numeric columns are exact ``numeric`` in the database (cash and cost arithmetic happens there)
and come back as ``float``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from rotation.derived_store import load_derived, save_derived, source_key
from trading.attribution import (
    AttributionError,
    Crossing,
    Holding,
    SignalParts,
    StrategyBook,
    StrategyFill,
    crossing_pairs,
    market_wishes,
    share_fill,
    strategies_of,
)
from trading.conduct import OrderPace
from trading.models import AuditEntry, Fill, OrderStatus, Side, SignalStatus, VenueOrder

log = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
DRIVER = "postgresql+psycopg"
# pg_advisory_lock keys. The migration lock lives in the one-bigint key space, account locks in
# the (int4, int4) space under their own namespace, so they never collide.
MIGRATION_LOCK_KEY = 0x6574665F6C656467          # "etf_ledg"
ACCOUNT_LOCK_NAMESPACE = 0x4C656467              # "Ledg"

EXECUTION_STATUSES = ("running", "completed", "halted", "failed")
EXECUTION_FINAL = ("completed", "halted", "failed")

# ---------------------------------------------------------------------------------------------
# Tables (must match migration 0001_ledger)
# ---------------------------------------------------------------------------------------------

metadata = sa.MetaData()
NUM = sa.Numeric(asdecimal=False)
TS = sa.DateTime(timezone=True)

ACCOUNTS = sa.Table(
    "accounts", metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("initial_cash", NUM, nullable=False),
    sa.Column("currency", sa.Text, nullable=False, server_default="CNY"),
    sa.Column("kill_switch", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("kill_reason", sa.Text),
    sa.Column("kill_actor", sa.Text),
    sa.Column("kill_at", TS),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
)
SIGNALS = sa.Table(
    "signals", metadata,
    sa.Column("signal_id", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"), nullable=False),
    sa.Column("strategy", sa.Text, nullable=False),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("weights", postgresql.JSONB, nullable=False),
    sa.Column("weights_hash", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reasons", postgresql.JSONB, nullable=False),
    sa.Column("data_version", sa.Text),
    sa.Column("dagster_run_id", sa.Text),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    sa.Column("decided_at", TS, nullable=False, server_default=sa.func.now()),
)
EXECUTIONS = sa.Table(
    "executions", metadata,
    sa.Column("signal_id", sa.Text, sa.ForeignKey("signals.signal_id"), primary_key=True),
    sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"), nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("dagster_run_id", sa.Text),
    sa.Column("started_at", TS, nullable=False, server_default=sa.func.now()),
    sa.Column("finished_at", TS),
    sa.Column("reason", sa.Text),
)
ORDERS = sa.Table(
    "orders", metadata,
    sa.Column("order_id", sa.Text, primary_key=True),
    sa.Column("signal_id", sa.Text, sa.ForeignKey("signals.signal_id"), nullable=False),
    sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"), nullable=False),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("side", sa.Text, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("reference_price", NUM, nullable=False),
    sa.Column("session", sa.Date, nullable=False),
    sa.Column("parent_order_id", sa.Text),
    sa.Column("slice_index", sa.Integer, nullable=False, server_default="0"),
    sa.Column("slices", sa.Integer, nullable=False, server_default="1"),
    sa.Column("status", sa.Text, nullable=False, server_default="planned"),
    sa.Column("venue_order_id", sa.Text),
    sa.Column("filled_quantity", sa.Integer, nullable=False, server_default="0"),
    sa.Column("average_price", NUM),
    sa.Column("reason", sa.Text),
    sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    # The child order whose unfilled remainder this one carries into the next slice (0009).
    sa.Column("replaces", sa.Text, sa.ForeignKey("orders.order_id"), unique=True),
    sa.Index("orders_signal_symbol_side_slice_key", "signal_id", "symbol", "side",
             "slice_index", unique=True, postgresql_where=sa.text("replaces IS NULL")),
)
# When a venue first answered for an order (0007): the conduct rules count sends from it.
ORDER_SENDS = sa.Table(
    "order_sends", metadata,
    sa.Column("order_id", sa.Text, sa.ForeignKey("orders.order_id"), primary_key=True),
    sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"), nullable=False),
    sa.Column("session", sa.Date, nullable=False),
    sa.Column("sent_at", TS, nullable=False, server_default=sa.func.clock_timestamp()),
)
FILLS = sa.Table(
    "fills", metadata,
    sa.Column("fill_id", sa.Text, primary_key=True),
    sa.Column("order_id", sa.Text, sa.ForeignKey("orders.order_id"), nullable=False),
    sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"), nullable=False),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("side", sa.Text, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("price", NUM, nullable=False),
    sa.Column("commission", NUM, nullable=False, server_default="0"),
    sa.Column("session", sa.Date, nullable=False),
    sa.Column("filled_at", TS, nullable=False),
    sa.Column("recorded_at", TS, nullable=False, server_default=sa.func.now()),
)
POSITIONS = sa.Table(
    "positions", metadata,
    sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"), primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("cost", NUM, nullable=False, server_default="0"),
    sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
)
CASH = sa.Table(
    "cash", metadata,
    sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"), primary_key=True),
    sa.Column("balance", NUM, nullable=False),
    sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
)
VALUATIONS = sa.Table(
    "valuations", metadata,
    sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"), primary_key=True),
    sa.Column("session", sa.Date, primary_key=True),
    sa.Column("cash", NUM, nullable=False),
    sa.Column("positions_value", NUM, nullable=False),
    sa.Column("equity", NUM, nullable=False),
    sa.Column("recorded_at", TS, nullable=False, server_default=sa.func.now()),
)
AUDIT_LOG = sa.Table(
    "audit_log", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("at", TS, nullable=False, server_default=sa.func.clock_timestamp()),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("entity", sa.Text, nullable=False),
    sa.Column("entity_id", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("details", postgresql.JSONB, nullable=False),
)
# Per-strategy attribution (0008; the rules are trading/attribution.py's). Exact numerics
# (Decimal, not float): the strategies' shares must add up to the account's figures exactly.
EXACT = sa.Numeric()
SIGNAL_PARTS = sa.Table(
    "signal_parts", metadata,
    sa.Column("signal_id", sa.Text, sa.ForeignKey("signals.signal_id"), primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("strategy", sa.Text, primary_key=True),
    sa.Column("wanted_units", sa.Integer, nullable=False),
    sa.Column("reference_price", EXACT, nullable=False),
    sa.Column("recorded_at", TS, nullable=False, server_default=sa.func.now()),
)
FILL_ATTRIBUTIONS = sa.Table(
    "fill_attributions", metadata,
    sa.Column("fill_id", sa.Text, sa.ForeignKey("fills.fill_id"), primary_key=True),
    sa.Column("strategy", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"), nullable=False),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("units", sa.Integer, nullable=False),
    sa.Column("commission", EXACT, nullable=False),
    sa.Column("cash", EXACT, nullable=False),
)
STRATEGY_CROSSINGS = sa.Table(
    "strategy_crossings", metadata,
    sa.Column("signal_id", sa.Text, sa.ForeignKey("signals.signal_id"), primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("seller", sa.Text, primary_key=True),
    sa.Column("buyer", sa.Text, primary_key=True),
    sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"), nullable=False),
    sa.Column("units", sa.Integer, nullable=False),
    sa.Column("price", EXACT, nullable=False),
    sa.Column("cash", EXACT, nullable=False),
    sa.Column("session", sa.Date, nullable=False),
    sa.Column("recorded_at", TS, nullable=False, server_default=sa.func.now()),
)
STRATEGY_POSITIONS = sa.Table(
    "strategy_positions", metadata,
    sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.account_id"), primary_key=True),
    sa.Column("strategy", sa.Text, primary_key=True),
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("cost", EXACT, nullable=False),
    sa.Column("realised", EXACT, nullable=False),
    sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
)

# ---------------------------------------------------------------------------------------------
# Records and errors
# ---------------------------------------------------------------------------------------------


class LedgerError(RuntimeError):
    """The ledger refused or could not do something; the message names the entity and why."""


class ImmutableSignalError(LedgerError):
    """An approved signal (or any signal's content) cannot change."""


class SignalSessionConflict(LedgerError):
    """The account already has an approved signal for the session (one_signal_per_session):
    supersede it first."""


@dataclass(frozen=True)
class SignalRecord:
    signal_id: str
    account_id: str
    strategy: str
    as_of: dt.date
    weights: dict[str, float]                 # symbol -> target weight
    weights_hash: str
    status: SignalStatus
    reasons: list[dict[str, Any]]             # [{layer, rule, subject, message}]
    data_version: str | None
    dagster_run_id: str | None
    decided_at: dt.datetime | None = None


@dataclass(frozen=True)
class OrderRecord:
    order_id: str                             # the client order id
    signal_id: str
    account_id: str
    symbol: str
    side: Side
    quantity: int
    reference_price: float
    session: dt.date
    status: OrderStatus = OrderStatus.PLANNED
    parent_order_id: str | None = None
    slice_index: int = 0
    slices: int = 1
    venue_order_id: str | None = None
    filled_quantity: int = 0
    average_price: float | None = None
    reason: str | None = None
    replaces: str | None = None               # slice-end replacement: the order it carries on


@dataclass(frozen=True)
class Position:
    symbol: str
    quantity: int
    cost: float                               # cost basis including buy commissions


@dataclass(frozen=True)
class KillSwitch:
    engaged: bool
    reason: str | None
    actor: str | None
    at: dt.datetime | None


@dataclass(frozen=True)
class ExecutionRecord:
    signal_id: str
    account_id: str
    status: str                               # running, completed, halted, failed
    dagster_run_id: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    reason: str | None


# ---------------------------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------------------------


def _check_url(url: str) -> sa.URL:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise LedgerError(f"ledger URL {url!r} is not a database URL: {exc}") from exc
    if parsed.drivername != DRIVER:
        raise LedgerError(
            f"ledger URL must use the psycopg 3 driver ({DRIVER}://user@host:port/db), "
            f"got {parsed.drivername}://"
        )
    return parsed


def _dec(value: float) -> Decimal:
    """A float as the exact decimal it prints as (0.1 -> Decimal('0.1'))."""
    number = float(value)
    if not math.isfinite(number):
        raise LedgerError(f"non-finite amount {value!r}")
    return Decimal(repr(number))


# The column a page's rows carry with the number of all matching rows.
MATCHING = "matching_rows"


def _equal(table: sa.Table, **values: object) -> list[sa.ColumnElement[bool]]:
    """``column = value`` for each value given (None: no filter on that column)."""
    return [table.c[column] == value for column, value in values.items() if value is not None]


def _as_date(value: dt.date) -> dt.date:
    return value.date() if isinstance(value, dt.datetime) else value


def _is_transient(exc: sa.exc.DBAPIError) -> bool:
    """A lost connection (server restart, network, terminated backend), a server not yet
    accepting connections, or a deadlock/serialization failure: running again is safe."""
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if not isinstance(orig, psycopg.Error):
        return False
    state = orig.sqlstate
    if state is None:
        return isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError)
    return state.startswith("08") or state in {"57P01", "57P02", "57P03", "40001", "40P01"}


def _reason_text(reasons: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for r in reasons:
        head = "/".join(str(r[k]) for k in ("layer", "rule") if r.get(k))
        subject = f" {r['subject']}" if r.get("subject") else ""
        message = str(r.get("message") or "")
        parts.append(f"{head}{subject}: {message}" if head or subject else message)
    return "; ".join(parts)


def _same_weights(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=1e-12, abs_tol=1e-15)
        or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


def _json_weight(value: float) -> float | str:
    """JSON has no NaN/inf: a non-finite weight (a rejected signal) is stored as its text."""
    return value if math.isfinite(value) else str(value)


def _signal_of(row: sa.Row[Any]) -> SignalRecord:
    return SignalRecord(
        signal_id=row.signal_id, account_id=row.account_id, strategy=row.strategy,
        as_of=row.as_of, weights={str(k): float(v) for k, v in row.weights.items()},
        weights_hash=row.weights_hash, status=SignalStatus(row.status),
        reasons=list(row.reasons), data_version=row.data_version,
        dagster_run_id=row.dagster_run_id, decided_at=row.decided_at,
    )


# Signals are written only through these functions of migration 0003 (the application's role
# has no INSERT or UPDATE on the table); their trigger writes the audit row.
_DECIDE_SIGNAL = sa.text(
    "SELECT * FROM ledger_decide_signal(CAST(:signal_id AS text), CAST(:account_id AS text), "
    "CAST(:strategy AS text), CAST(:as_of AS date), CAST(:weights AS jsonb), "
    "CAST(:weights_hash AS text), CAST(:status AS text), CAST(:reasons AS jsonb), "
    "CAST(:data_version AS text), CAST(:dagster_run_id AS text), "
    "CAST(:decided_at AS timestamptz), CAST(:actor AS text), CAST(:reason AS text))"
).bindparams(sa.bindparam("weights", type_=postgresql.JSONB),
             sa.bindparam("reasons", type_=postgresql.JSONB))
_SUPERSEDE_SIGNAL = sa.text(
    "SELECT * FROM ledger_supersede_signal(CAST(:signal_id AS text), CAST(:actor AS text), "
    "CAST(:reason AS text), CAST(:lock_wait AS double precision))")
SESSION_INDEX = "signals_one_signal_per_session"
# SQLSTATEs the decision functions and the signal triggers refuse with.
_RESTRICT, _UNIQUE = "23001", "23505"
_REFUSALS = {_RESTRICT, _UNIQUE, "23502", "23514", "P0002", "55P03"}


def _refusal(exc: sa.exc.DBAPIError, immutable: type[LedgerError]) -> LedgerError | None:
    """The ledger error for a refusal by the database's signal rules (``immutable`` for a
    restrict violation), or None when ``exc`` is something else (the caller re-raises it)."""
    orig = exc.orig
    if not isinstance(orig, psycopg.Error) or orig.sqlstate not in _REFUSALS:
        return None
    message = orig.diag.message_primary or str(orig)
    if orig.sqlstate == _UNIQUE:
        return SignalSessionConflict(message) if orig.diag.constraint_name == SESSION_INDEX \
            else None
    return immutable(message) if orig.sqlstate == _RESTRICT else LedgerError(message)


def _settled(stored: SignalRecord, status: SignalStatus, reasons: list[dict[str, Any]]
             ) -> bool:
    """True when ``stored`` already is this decision; raises when it may not become it."""
    sid = stored.signal_id
    if stored.status is SignalStatus.SUPERSEDED:
        raise ImmutableSignalError(f"signal {sid} was superseded: it cannot be decided again")
    if stored.status is SignalStatus.APPROVED:
        if status is SignalStatus.REJECTED:
            raise ImmutableSignalError(f"signal {sid} is approved and immutable: refusing to "
                                       f"reject it ({_reason_text(reasons)})")
        return True
    return status is SignalStatus.REJECTED and stored.reasons == reasons


def _require_same_content(stored: SignalRecord, signal: SignalRecord,
                          weights: Mapping[str, float], as_of: dt.date) -> None:
    changed = [name for name, same in (
        ("account_id", stored.account_id == signal.account_id),
        ("strategy", stored.strategy == signal.strategy),
        ("as_of", stored.as_of == as_of),
        ("weights", _same_weights(stored.weights, weights)),
        ("weights_hash", stored.weights_hash == signal.weights_hash),
    ) if not same]
    if changed:
        raise ImmutableSignalError(f"signal {signal.signal_id} already exists with different "
                                   f"{', '.join(changed)}: a signal's content is immutable")


def _order_of(row: sa.Row[Any]) -> OrderRecord:
    return OrderRecord(
        order_id=row.order_id, signal_id=row.signal_id, account_id=row.account_id,
        symbol=row.symbol, side=Side(row.side), quantity=row.quantity,
        reference_price=row.reference_price, session=row.session,
        status=OrderStatus(row.status), parent_order_id=row.parent_order_id,
        slice_index=row.slice_index, slices=row.slices, venue_order_id=row.venue_order_id,
        filled_quantity=row.filled_quantity, average_price=row.average_price, reason=row.reason,
        replaces=row.replaces,
    )


def _child_state(order: OrderRecord) -> VenueOrder:
    """A TWAP child as its parent's aggregate sees it: still planned counts as open."""
    status = OrderStatus.SUBMITTED if order.status is OrderStatus.PLANNED else order.status
    return VenueOrder(client_order_id=order.order_id, venue_order_id=order.venue_order_id or "",
                      status=status, quantity=order.quantity,
                      filled_quantity=order.filled_quantity,
                      average_price=order.average_price, reason=order.reason)


def _fill_of(row: sa.Row[Any]) -> Fill:
    return Fill(
        fill_id=row.fill_id, client_order_id=row.order_id, account_id=row.account_id,
        symbol=row.symbol, side=Side(row.side), quantity=row.quantity, price=row.price,
        commission=row.commission, session=row.session, filled_at=row.filled_at,
    )


def _execution_of(row: sa.Row[Any]) -> ExecutionRecord:
    return ExecutionRecord(
        signal_id=row.signal_id, account_id=row.account_id, status=row.status,
        dagster_run_id=row.dagster_run_id, started_at=row.started_at,
        finished_at=row.finished_at, reason=row.reason,
    )


def _order_values(order: OrderRecord) -> dict[str, Any]:
    if not isinstance(order.quantity, int) or order.quantity <= 0:
        raise LedgerError(f"order {order.order_id}: quantity must be a positive integer, "
                          f"got {order.quantity!r}")
    return {
        "order_id": order.order_id, "signal_id": order.signal_id,
        "account_id": order.account_id, "symbol": order.symbol,
        "side": Side(order.side).value, "quantity": order.quantity,
        "reference_price": _dec(order.reference_price), "session": _as_date(order.session),
        "parent_order_id": order.parent_order_id, "slice_index": order.slice_index,
        "slices": order.slices, "status": OrderStatus(order.status).value,
        "venue_order_id": order.venue_order_id, "filled_quantity": order.filled_quantity,
        "average_price": None if order.average_price is None else _dec(order.average_price),
        "reason": order.reason, "replaces": order.replaces,
        # clock_timestamp keeps the insertion order of one transaction (sells before buys)
        "created_at": sa.func.clock_timestamp(),
    }


def _audit(conn: Connection, *, actor: str, action: str, entity: str, entity_id: str,
           reason: str | None = None, details: Mapping[str, Any] | None = None) -> None:
    conn.execute(sa.insert(AUDIT_LOG).values(
        actor=actor, action=action, entity=entity, entity_id=entity_id, reason=reason,
        details=dict(details or {}),
    ))


# Order statuses only move forward: planned -> submitted -> partially_filled -> final.
_ORDER_RANK = {OrderStatus.PLANNED: 0, OrderStatus.SUBMITTED: 1,
               OrderStatus.PARTIALLY_FILLED: 2}


def _rank(status: OrderStatus) -> int:
    return _ORDER_RANK.get(status, 3)


def _retry(attempt: Callable[[], T], *, what: str, retry_seconds: float) -> T:
    """Run ``attempt`` again on a transient database error with exponential backoff until
    ``retry_seconds`` have passed; integrity errors become :class:`LedgerError`."""
    deadline = time.monotonic() + retry_seconds
    delay = 0.1
    while True:
        try:
            return attempt()
        except sa.exc.DBAPIError as exc:
            if isinstance(exc, sa.exc.IntegrityError):
                raise LedgerError(f"{what} refused by the database: {exc.orig}") from exc
            if not _is_transient(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise LedgerError(
                    f"{what}: the ledger database stayed unreachable for {retry_seconds:g}s "
                    f"({exc.orig})"
                ) from exc
            log.warning("%s: database connection lost (%s); retrying in %.1fs",
                        what, str(exc.orig).strip(), delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _migration_tables() -> frozenset[str]:
    """Every table the ledger's migrations create (the paper broker's and Alembic's version
    table included), read from the SQL they would run, so no list is kept by hand. Kept beside
    the migrations' bytecode for their text: deriving it costs every fresh process (each run
    worker opening the ledger) about half a second."""
    return _migration_tables_of(_migration_sources())


def _migration_sources() -> tuple[str, ...]:
    files = [MIGRATIONS_DIR / "env.py", *sorted((MIGRATIONS_DIR / "versions").glob("*.py"))]
    return tuple(f"{path.name}\n{path.read_text(encoding='utf-8')}" for path in files)


@functools.cache
def _migration_tables_of(sources: tuple[str, ...]) -> frozenset[str]:
    path = MIGRATIONS_DIR / "__pycache__" / "ledger-tables.json"
    key = source_key(sources)
    stored = load_derived(path, key)
    if isinstance(stored, list) and stored and all(isinstance(t, str) for t in stored):
        return frozenset(stored)
    tables = _tables_created_by_migrations()
    save_derived(path, key, sorted(tables))
    return tables


def _tables_created_by_migrations() -> frozenset[str]:
    import io
    import re

    sql = io.StringIO()
    config = Config(output_buffer=sql)
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", f"{DRIVER}://")      # the dialect only
    command.upgrade(config, "heads", sql=True)
    return frozenset(re.findall(r'CREATE TABLE (?:IF NOT EXISTS )?"?(\w+)"?', sql.getvalue()))


# Listed first when found: the Dagster storage is the database most easily taken for the
# ledger's (same server; compose creates both), and these two tables say whose it is.
_TELLING_FOREIGN_TABLES = ("runs", "event_logs")

_FOREIGN_RELATIONS = sa.text(r"""
    SELECT n.nspname AS schema, c.relname AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
    UNION ALL
    SELECT s.nspname, NULL FROM pg_namespace s
    WHERE s.nspname NOT IN ('pg_catalog', 'information_schema', 'public')
      AND s.nspname NOT LIKE 'pg\_%' AND s.nspname <> current_schema()
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass
                      AND d.objid = s.oid AND d.deptype = 'e')
      AND NOT EXISTS (SELECT 1 FROM pg_class t WHERE t.relnamespace = s.oid
                      AND t.relkind IN ('r', 'p', 'v', 'm', 'f'))   -- named by its tables
""")


def _refuse_foreign_database(conn: Connection, sa_url: sa.URL) -> None:
    """Raise :class:`LedgerError` unless the database is empty or holds only the ledger's
    tables (in the schema it migrates into). Objects of extensions are not counted; functions
    and roles are not looked at. Ends the (read-only) transaction it opens."""
    schema = conn.execute(sa.text("SELECT current_schema()")).scalar() or "public"
    rows = conn.execute(_FOREIGN_RELATIONS).all()
    conn.commit()
    ours = _migration_tables()
    foreign = sorted(
        f"schema {s}" if name is None else name if s == schema else f"{s}.{name}"
        for s, name in rows if not (s == schema and name in ours))
    if not foreign:
        return
    foreign.sort(key=lambda t: t not in _TELLING_FOREIGN_TABLES)    # stable: the rest sorted
    shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
    raise LedgerError(
        f"ledger database {sa_url.database!r} on {sa_url.host or 'localhost'}:"
        f"{sa_url.port or 5432} holds {len(foreign)} table(s) or schema(s) that are not the "
        f"ledger's: {shown}. The ledger needs a database of its own (its migrations must not "
        "mix with another application's schema, such as Dagster's storage): create one, e.g. "
        "CREATE DATABASE ledger, and point the ledger URL (ETF_POSTGRES_URL) at it")


def migrate(url: str, *, retry_seconds: float = 30.0) -> None:
    """Upgrade the ledger schema to the Alembic heads. Serialised by a PostgreSQL advisory
    lock, so concurrent callers (several processes starting at once) are safe; a database
    already at head is left unchanged. A database holding anything but the ledger's tables
    (another application's, e.g. Dagster's) is refused with :class:`LedgerError`."""
    sa_url = _check_url(url)

    def attempt() -> None:
        engine = sa.create_engine(sa_url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.select(sa.func.pg_advisory_lock(MIGRATION_LOCK_KEY)))
                conn.commit()      # the session-level lock outlives the transaction
                try:
                    _refuse_foreign_database(conn, sa_url)
                    config = Config()
                    config.set_main_option("script_location", str(MIGRATIONS_DIR))
                    config.attributes["connection"] = conn
                    command.upgrade(config, "heads")
                finally:
                    if not conn.invalidated:
                        conn.rollback()
                        conn.execute(sa.select(sa.func.pg_advisory_unlock(MIGRATION_LOCK_KEY)))
                        conn.commit()
        finally:
            engine.dispose()

    _retry(attempt, what=f"migrating the ledger at {sa_url!r}", retry_seconds=retry_seconds)


VERSION_TABLE = "etf_ledger_alembic_version"           # migrations/env.py's
# Who may migrate (migration 0003): a superuser, the owner role of the ledger or a member of it;
# on a database without a ledger yet, a role that may create tables in its schema.
_MIGRATE_RIGHTS = sa.text("""
    SELECT current_user AS role, to_regclass(:version_table) IS NOT NULL AS has_schema,
           CASE WHEN to_regclass(:version_table) IS NULL
                THEN has_schema_privilege(current_schema(), 'CREATE')
                ELSE pg_has_role(current_user, (SELECT relowner FROM pg_class
                                                WHERE oid = to_regclass(:version_table)),
                                 'USAGE')
           END AS may_migrate
""")


@functools.cache
def _schema_heads() -> frozenset[str]:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return frozenset(ScriptDirectory.from_config(config).get_heads())


def ensure_schema(url: str, *, retry_seconds: float = 30.0) -> None:
    """The ledger schema at head before first use. A role that may migrate (a superuser, the
    owner role or a member of it: tests, ``make demo``, one all-powerful local URL) runs
    :func:`migrate` as before; a role that may not (deploy's application role, a member of
    ``etf_ledger_writer``) only checks the schema is at head, and otherwise gets
    :class:`LedgerError` saying that the migrate step has not run."""
    sa_url = _check_url(url)
    heads = _schema_heads()

    def inspect() -> tuple[frozenset[str], str, bool]:
        engine = sa.create_engine(sa_url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                rights = conn.execute(_MIGRATE_RIGHTS, {"version_table": VERSION_TABLE}).one()
                current = frozenset(MigrationContext.configure(
                    conn, opts={"version_table": VERSION_TABLE}).get_current_heads()
                ) if rights.has_schema else frozenset()
        finally:
            engine.dispose()
        return current, str(rights.role), bool(rights.may_migrate)

    current, role, may_migrate = _retry(
        inspect, what=f"checking the ledger schema at {sa_url!r}", retry_seconds=retry_seconds)
    if may_migrate:
        # Every time, as before 0003: at head it changes nothing but still checks the database.
        migrate(sa_url.render_as_string(hide_password=False), retry_seconds=retry_seconds)
        return
    if current == heads:
        return
    found = ", ".join(sorted(current)) or "no ledger schema"
    raise LedgerError(
        f"ledger database {sa_url.database!r}: the schema is at {found}, this code needs "
        f"{', '.join(sorted(heads))}, and role {role} may not migrate it: the migrate step has "
        "not run. Run it with the owner's URL (ETF_LEDGER_ADMIN_URL=postgresql+psycopg://"
        "<owner login>@host/db python -m orchestration.migrate_ledger; compose: the "
        "ledger-migrate service; Kubernetes: deploy/helm/ledger-migrate-job.yaml)")


# ---------------------------------------------------------------------------------------------
# Booking a fill (the steps of Ledger.record_fill, all on the caller's transaction)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CheckedFill:
    """A fill whose quantity, price and commission were checked, amounts exact."""

    fill: Fill
    side: Side
    price: Decimal
    commission: Decimal

    @property
    def notional(self) -> Decimal:
        return self.price * self.fill.quantity


def _checked_fill(fill: Fill) -> _CheckedFill:
    fid, qty = fill.fill_id, fill.quantity
    if not isinstance(qty, int) or qty <= 0:
        raise LedgerError(f"fill {fid}: quantity must be a positive integer, got {qty!r}")
    price, commission = _dec(fill.price), _dec(fill.commission)
    if price <= 0 or commission < 0:
        raise LedgerError(f"fill {fid}: price must be > 0 and commission >= 0, "
                          f"got {price} and {commission}")
    return _CheckedFill(fill, Side(fill.side), price, commission)


def _locked_order(conn: Connection, checked: _CheckedFill) -> sa.Row[Any]:
    """The fill's order, locked, after checking the fill matches it."""
    fill, fid, oid = checked.fill, checked.fill.fill_id, checked.fill.client_order_id
    order = conn.execute(sa.select(ORDERS).where(ORDERS.c.order_id == oid)
                         .with_for_update()).first()
    if order is None:
        raise LedgerError(f"fill {fid}: order {oid} is not in the ledger")
    mismatch = [f"{name} {mine!r} != {theirs!r}" for name, mine, theirs in (
        ("account", fill.account_id, order.account_id),
        ("symbol", fill.symbol, order.symbol), ("side", checked.side.value, order.side),
    ) if mine != theirs]
    if mismatch:
        raise LedgerError(f"fill {fid} does not match order {oid}: {'; '.join(mismatch)}")
    return order


def _insert_fill(conn: Connection, checked: _CheckedFill) -> bool:
    """Insert the fill; False when its id is already booked with the same content."""
    fill, fid = checked.fill, checked.fill.fill_id
    inserted = conn.execute(
        pg_insert(FILLS).values(
            fill_id=fid, order_id=fill.client_order_id, account_id=fill.account_id,
            symbol=fill.symbol, side=checked.side.value, quantity=fill.quantity,
            price=checked.price, commission=checked.commission,
            session=_as_date(fill.session), filled_at=fill.filled_at,
        ).on_conflict_do_nothing(index_elements=["fill_id"]).returning(FILLS.c.fill_id)
    ).first()
    if inserted is not None:
        return True
    stored = conn.execute(sa.select(FILLS).where(FILLS.c.fill_id == fid)).one()
    if (stored.order_id, stored.quantity) != (fill.client_order_id, fill.quantity) or \
            not math.isclose(stored.price, float(checked.price), rel_tol=1e-12):
        raise LedgerError(f"fill {fid} is already booked with different content "
                          f"(order {stored.order_id}, {stored.quantity} @ {stored.price})")
    return False


def _advance_order(conn: Connection, order: sa.Row[Any], checked: _CheckedFill
                   ) -> tuple[int, OrderStatus]:
    """The order's filled quantity, average price and status after the fill."""
    fid, qty, oid = checked.fill.fill_id, checked.fill.quantity, order.order_id
    filled = order.filled_quantity + qty
    if filled > order.quantity:
        raise LedgerError(
            f"fill {fid}: order {oid} ({order.side} {order.quantity} {order.symbol}) "
            f"would be filled {filled} > its quantity (already {order.filled_quantity})")
    current = OrderStatus(order.status)
    if current.is_final:       # late fill on a cancelled/expired order: keep its status
        new_status = current
    else:
        new_status = (OrderStatus.FILLED if filled == order.quantity
                      else OrderStatus.PARTIALLY_FILLED)
    average = (sa.func.coalesce(ORDERS.c.average_price, 0) * ORDERS.c.filled_quantity
               + sa.literal(checked.notional, sa.Numeric())) / filled
    conn.execute(sa.update(ORDERS).where(ORDERS.c.order_id == oid).values(
        filled_quantity=filled, average_price=average, status=new_status.value,
        updated_at=sa.func.now(),
    ))
    return filled, new_status


def _move_position(conn: Connection, checked: _CheckedFill) -> Decimal:
    """The account's position after the fill; returns the fill's cash (− paid, + received)."""
    fill, qty, held = checked.fill, checked.fill.quantity, POSITIONS.c.quantity
    if checked.side is Side.BUY:
        insert = pg_insert(POSITIONS).values(
            account_id=fill.account_id, symbol=fill.symbol, quantity=qty,
            cost=checked.notional + checked.commission)
        conn.execute(insert.on_conflict_do_update(
            index_elements=["account_id", "symbol"],
            set_={"quantity": held + insert.excluded.quantity,
                  "cost": POSITIONS.c.cost + insert.excluded.cost,
                  "updated_at": sa.func.now()},
        ))
        return -(checked.notional + checked.commission)
    where = sa.and_(POSITIONS.c.account_id == fill.account_id,
                    POSITIONS.c.symbol == fill.symbol)
    position = conn.execute(sa.select(POSITIONS).where(where).with_for_update()).first()
    have = 0 if position is None else position.quantity
    if qty > have:
        raise LedgerError(f"fill {fill.fill_id}: selling {qty} {fill.symbol} but account "
                          f"{fill.account_id} holds only {have}")
    conn.execute(sa.update(POSITIONS).where(where).values(
        quantity=held - qty,
        cost=sa.case((held == qty, sa.literal(Decimal(0), sa.Numeric())),
                     else_=POSITIONS.c.cost * (held - qty) / held),
        updated_at=sa.func.now(),
    ))
    return checked.notional - checked.commission


def _move_cash(conn: Connection, checked: _CheckedFill, cash_delta: Decimal) -> None:
    account_id = checked.fill.account_id
    booked = conn.execute(
        sa.update(CASH).where(CASH.c.account_id == account_id).values(
            balance=CASH.c.balance + sa.literal(cash_delta, sa.Numeric()),
            updated_at=sa.func.now())
    ).rowcount
    if booked != 1:
        raise LedgerError(f"fill {checked.fill.fill_id}: account {account_id} has no cash row")


# ---------------------------------------------------------------------------------------------
# Per-strategy attribution (trading/attribution.py decides, these store; caller's transaction)
# ---------------------------------------------------------------------------------------------

# Serialises an account's attributions (what a strategy still wants depends on the fills
# attributed before), and a fill's look for its signal's parts against their recording (else a
# fill committing beside the parts would stay unattributed). Its own namespace: an execution
# holds the account lock (session level) while the fills it reconciles take this one.
ATTRIBUTION_LOCK_NAMESPACE = 0x41747472          # "Attr"


def _lock_attribution(conn: Connection, account_id: str) -> None:
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(
        sa.literal(ATTRIBUTION_LOCK_NAMESPACE, sa.Integer()), sa.func.hashtext(account_id))))


def _parts_rows(conn: Connection, signal_id: str, symbol: str | None = None
                ) -> list[sa.Row[Any]]:
    query = sa.select(SIGNAL_PARTS).where(SIGNAL_PARTS.c.signal_id == signal_id).order_by(
        SIGNAL_PARTS.c.symbol, SIGNAL_PARTS.c.strategy)
    if symbol is not None:
        query = query.where(SIGNAL_PARTS.c.symbol == symbol)
    return list(conn.execute(query))


def _has_parts(conn: Connection, signal_id: str) -> bool:
    return bool(conn.execute(sa.select(sa.exists().where(
        SIGNAL_PARTS.c.signal_id == signal_id))).scalar())


def _holdings(conn: Connection, account_id: str, symbol: str) -> dict[str, Holding]:
    """Each strategy's holding of ``symbol`` in the account, locked."""
    rows = conn.execute(sa.select(STRATEGY_POSITIONS).where(
        STRATEGY_POSITIONS.c.account_id == account_id, STRATEGY_POSITIONS.c.symbol == symbol,
    ).with_for_update())
    return {r.strategy: Holding(r.quantity, r.cost, r.realised) for r in rows}


def _store_holding(conn: Connection, account_id: str, strategy: str, symbol: str,
                   holding: Holding) -> None:
    insert = pg_insert(STRATEGY_POSITIONS).values(
        account_id=account_id, strategy=strategy, symbol=symbol, quantity=holding.quantity,
        cost=holding.cost, realised=holding.realised)
    conn.execute(insert.on_conflict_do_update(
        index_elements=["account_id", "strategy", "symbol"],
        set_={"quantity": insert.excluded.quantity, "cost": insert.excluded.cost,
              "realised": insert.excluded.realised, "updated_at": sa.func.now()}))


def _attributed_units(conn: Connection, signal_id: str, symbol: str, side: Side
                      ) -> dict[str, int]:
    """Units of the signal's fills of ``symbol`` on ``side`` already attributed, per strategy."""
    query = (sa.select(FILL_ATTRIBUTIONS.c.strategy,
                       sa.func.sum(sa.func.abs(FILL_ATTRIBUTIONS.c.units)))
             .select_from(FILL_ATTRIBUTIONS.join(FILLS).join(ORDERS))
             .where(ORDERS.c.signal_id == signal_id, FILLS.c.symbol == symbol,
                    FILLS.c.side == side.value)
             .group_by(FILL_ATTRIBUTIONS.c.strategy))
    return {strategy: int(units) for strategy, units in conn.execute(query)}


def _is_netted(conn: Connection, signal_id: str) -> bool:
    named = conn.execute(sa.select(SIGNALS.c.strategy)
                         .where(SIGNALS.c.signal_id == signal_id)).scalar_one()
    return len(strategies_of(named)) > 1


def _only_strategy(conn: Connection, signal_id: str, fill_id: str) -> str:
    """The signal's strategy when it names exactly one (a fill of a signal without parts)."""
    named = conn.execute(sa.select(SIGNALS.c.strategy)
                         .where(SIGNALS.c.signal_id == signal_id)).scalar_one()
    strategies = strategies_of(named)
    if len(strategies) != 1:
        raise LedgerError(f"signal {signal_id} nets {len(strategies)} strategies ({named}) "
                          f"but has no recorded parts: fill {fill_id} cannot be attributed "
                          "(record the signal's parts before its fills)")
    return strategies[0]


def _wanted_on_side(conn: Connection, checked: _CheckedFill, signal_id: str, required: bool
                    ) -> tuple[dict[str, int], dict[str, int]] | None:
    """(what each strategy still wants on the fill's side, its whole wish on that side), or
    None when the fill is not to be attributed (no parts, not required)."""
    fill = checked.fill
    rows = _parts_rows(conn, signal_id, fill.symbol)
    if not rows and not _has_parts(conn, signal_id):
        # A netted signal's fill is always attributed: without parts it is refused (loudly),
        # never booked to the account alone.
        if not required and not _is_netted(conn, signal_id):
            return None
        strategy = _only_strategy(conn, signal_id, fill.fill_id)
        return {strategy: fill.quantity}, {strategy: fill.quantity}
    sign = 1 if checked.side is Side.BUY else -1
    remaining = market_wishes({r.strategy: r.wanted_units for r in rows})
    side_wishes = {s: abs(u) for s, u in remaining.items() if u * sign > 0}
    done = _attributed_units(conn, signal_id, fill.symbol, checked.side)
    return {s: w - done.get(s, 0) for s, w in side_wishes.items()}, side_wishes


def _attribute_fill(conn: Connection, checked: _CheckedFill, signal_id: str, *,
                    required: bool) -> dict[str, StrategyFill] | None:
    """Book each strategy's share of a just-inserted fill; None when it is not attributed."""
    fill = checked.fill
    _lock_attribution(conn, fill.account_id)
    wanted = _wanted_on_side(conn, checked, signal_id, required)
    if wanted is None:
        return None
    still_wanted, side_wishes = wanted
    holdings = _holdings(conn, fill.account_id, fill.symbol)
    try:
        shares = share_fill(
            fill_id=fill.fill_id, side=checked.side, quantity=fill.quantity,
            price=checked.price, commission=checked.commission, still_wanted=still_wanted,
            side_wishes=side_wishes, held={s: h.quantity for s, h in holdings.items()})
        after = {s: _after_fill(holdings.get(s, Holding()), share,
                                what=f"fill {fill.fill_id} strategy {s} fund {fill.symbol}")
                 for s, share in shares.items()}
    except AttributionError as exc:
        raise LedgerError(f"signal {signal_id}: {exc}") from exc
    for strategy, share in shares.items():
        conn.execute(sa.insert(FILL_ATTRIBUTIONS).values(
            fill_id=fill.fill_id, strategy=strategy, account_id=fill.account_id,
            symbol=fill.symbol, units=share.units, commission=share.commission,
            cash=share.cash))
        _store_holding(conn, fill.account_id, strategy, fill.symbol, after[strategy])
    return shares


def _signal_owner(conn: Connection, signal_id: str) -> tuple[str, str]:
    """(account, strategy) of a signal in the ledger."""
    row = conn.execute(sa.select(SIGNALS.c.account_id, SIGNALS.c.strategy)
                       .where(SIGNALS.c.signal_id == signal_id)).first()
    if row is None:
        raise LedgerError(f"signal {signal_id} is not in the ledger")
    return row.account_id, row.strategy


def _approved_signal_account(conn: Connection, signal_id: str) -> str:
    row = conn.execute(sa.select(SIGNALS.c.account_id, SIGNALS.c.status)
                       .where(SIGNALS.c.signal_id == signal_id)).first()
    if row is None:
        raise LedgerError(f"signal {signal_id} is not in the ledger")
    if row.status != SignalStatus.APPROVED.value:
        raise LedgerError(f"signal {signal_id} is {row.status}: only an approved signal's "
                          "wishes cross")
    return str(row.account_id)


def _same_parts(signal_id: str, stored: list[tuple[str, str, int, float]],
                given: list[tuple[str, str, int, float]]) -> bool:
    """False (nothing to write) when ``given`` are the stored parts; raises otherwise."""
    same = len(stored) == len(given) and all(
        a[:3] == b[:3] and math.isclose(a[3], b[3], rel_tol=1e-12)
        for a, b in zip(stored, given, strict=True))
    if not same:
        raise LedgerError(f"signal {signal_id} already has different parts recorded: a "
                          f"signal's parts are immutable (stored {stored}, given {given})")
    return False


def _by_fund(rows: Sequence[sa.Row[Any]]) -> dict[str, list[sa.Row[Any]]]:
    grouped: dict[str, list[sa.Row[Any]]] = {}
    for r in rows:
        grouped.setdefault(r.symbol, []).append(r)
    return grouped


def _cross_fund(conn: Connection, signal_id: str, account_id: str, fund: str,
                rows: Sequence[sa.Row[Any]], session: dt.date) -> list[Crossing]:
    """Book the crossings of one fund: rows, holdings; returns what was booked."""
    price: Decimal = rows[0].reference_price
    pairs = crossing_pairs({r.strategy: r.wanted_units for r in rows})
    holdings = _holdings(conn, account_id, fund) if pairs else {}
    booked = []
    for seller, buyer, units in pairs:
        cash = price * units
        what = f"crossing of signal {signal_id}: strategy {seller} fund {fund}"
        try:
            holdings[seller] = holdings.get(seller, Holding()).sold(units, cash, what=what)
        except AttributionError as exc:
            raise LedgerError(str(exc)) from exc
        holdings[buyer] = holdings.get(buyer, Holding()).bought(units, cash)
        conn.execute(sa.insert(STRATEGY_CROSSINGS).values(
            signal_id=signal_id, symbol=fund, seller=seller, buyer=buyer,
            account_id=account_id, units=units, price=price, cash=cash, session=session))
        booked.append(Crossing(signal_id, fund, seller, buyer, units, float(price), float(cash)))
    for strategy in {s for pair in pairs for s in pair[:2]}:
        _store_holding(conn, account_id, strategy, fund, holdings[strategy])
    return booked


def _crossings(conn: Connection, signal_id: str) -> list[Crossing]:
    rows = conn.execute(sa.select(STRATEGY_CROSSINGS)
                        .where(STRATEGY_CROSSINGS.c.signal_id == signal_id)
                        .order_by(STRATEGY_CROSSINGS.c.symbol, STRATEGY_CROSSINGS.c.seller,
                                  STRATEGY_CROSSINGS.c.buyer))
    return [Crossing(r.signal_id, r.symbol, r.seller, r.buyer, r.units, float(r.price),
                     float(r.cash)) for r in rows]


def _strategy_holdings(conn: Connection, account_id: str) -> dict[str, dict[str, Holding]]:
    held: dict[str, dict[str, Holding]] = {}
    for r in conn.execute(sa.select(STRATEGY_POSITIONS)
                          .where(STRATEGY_POSITIONS.c.account_id == account_id)
                          .order_by(STRATEGY_POSITIONS.c.strategy, STRATEGY_POSITIONS.c.symbol)):
        held.setdefault(r.strategy, {})[r.symbol] = Holding(r.quantity, r.cost, r.realised)
    return held


def _strategy_cash(conn: Connection, account_id: str) -> dict[str, Decimal]:
    """The cash each strategy's fills and crossings moved (− paid, + received)."""
    fa, sc = FILL_ATTRIBUTIONS, STRATEGY_CROSSINGS
    moves = sa.union_all(
        sa.select(fa.c.strategy.label("strategy"), fa.c.cash.label("cash"))
        .where(fa.c.account_id == account_id),
        sa.select(sc.c.buyer, -sc.c.cash).where(sc.c.account_id == account_id),
        sa.select(sc.c.seller, sc.c.cash).where(sc.c.account_id == account_id),
    ).subquery()
    query = sa.select(moves.c.strategy, sa.func.sum(moves.c.cash)).group_by(moves.c.strategy)
    return {strategy: Decimal(total) for strategy, total in conn.execute(query)}


def _book(account_id: str, strategy: str, holdings: Mapping[str, Holding], cash: Decimal,
          prices: Mapping[str, float]) -> StrategyBook:
    held = {fund: h for fund, h in holdings.items() if h.quantity}
    unpriced = sorted(fund for fund in held if fund not in prices)
    if unpriced:
        raise LedgerError(f"account {account_id} strategy {strategy}: no price to mark "
                          f"{unpriced}")
    value = sum((_dec(prices[fund]) * h.quantity for fund, h in held.items()), Decimal(0))
    return StrategyBook(
        strategy=strategy, positions={fund: h.quantity for fund, h in held.items()},
        cost=float(sum((h.cost for h in held.values()), Decimal(0))), cash=float(cash),
        realised=float(sum((h.realised for h in holdings.values()), Decimal(0))),
        market_value=float(value))


def _after_fill(holding: Holding, share: StrategyFill, *, what: str) -> Holding:
    if share.units > 0:
        return holding.bought(share.units, -share.cash)
    return holding.sold(-share.units, share.cash, what=what)


# ---------------------------------------------------------------------------------------------
# The ledger
# ---------------------------------------------------------------------------------------------


class AccountLock:
    """A held account lock (see :meth:`Ledger.account_lock`) on its own connection."""

    def __init__(self, ledger: Ledger, account_id: str) -> None:
        self.account_id = account_id
        self._ledger = ledger
        self._key = (sa.literal(ACCOUNT_LOCK_NAMESPACE, sa.Integer()),
                     sa.func.hashtext(account_id))
        self._conn = self._connect()

    def _connect(self) -> Connection:
        def connect() -> Connection:
            conn = self._ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(sa.select(1))
            return conn

        return _retry(connect, what=f"locking account {self.account_id}",
                      retry_seconds=self._ledger.retry_seconds)

    def try_take(self) -> bool:
        return bool(self._conn.execute(sa.select(sa.func.pg_try_advisory_lock(*self._key)))
                    .scalar())

    def ensure(self) -> None:
        """Raise :class:`LedgerError` unless the lock is still held. When the server dropped
        the connection (a restart), the lock went with it: it is taken again without waiting,
        or, if another execution took it meanwhile, the holder must stop."""
        try:
            self._conn.execute(sa.select(1))
            return
        except sa.exc.DBAPIError:
            self._conn.invalidate()
            self._conn.close()
        self._conn = self._connect()
        if not self.try_take():
            raise LedgerError(f"account {self.account_id}: the execution lock was lost (its "
                              "connection dropped) and another execution holds it now; "
                              "stopping before the next order")
        log.warning("account %s: lock connection dropped; lock taken again", self.account_id)

    def release(self) -> None:
        try:
            self._conn.execute(sa.select(sa.func.pg_advisory_unlock(*self._key)))
        except sa.exc.DBAPIError as exc:   # connection gone: so is the lock
            log.warning("account %s: unlocking failed (%s)", self.account_id, exc.orig)
            self._conn.invalidate()
        finally:
            self._conn.close()


class Ledger:
    """The execution ledger. Thread-safe (one SQLAlchemy engine with a connection pool)."""

    def __init__(self, url: str, *, retry_seconds: float = 30.0, pool_size: int = 5) -> None:
        self._url = _check_url(url)
        self.retry_seconds = retry_seconds
        connect_args = {} if "connect_timeout" in self._url.query else {"connect_timeout": 10}
        self.engine = sa.create_engine(self._url, pool_pre_ping=True, connect_args=connect_args,
                                       pool_size=pool_size, max_overflow=pool_size)
        # One-statement reads need no transaction: no BEGIN and COMMIT round trips (the
        # statement is its own snapshot). Same pool.
        self.reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    def __repr__(self) -> str:
        return f"Ledger({self._url!r})"

    def dispose(self) -> None:
        self.engine.dispose()

    def migrate(self) -> None:
        """Migrate to head, or - for a role that may not migrate - require the schema at
        head (:func:`ensure_schema`)."""
        ensure_schema(self._url.render_as_string(hide_password=False),
                      retry_seconds=self.retry_seconds)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A raw transaction for callers composing their own statements (no retry: a block
        cannot be re-run by a context manager)."""
        with self.engine.begin() as conn:
            yield conn

    def _run(self, what: str, work: Callable[[Connection], T]) -> T:
        """``work`` in one transaction, re-run from the start when the connection is lost."""

        def attempt() -> T:
            with self.engine.begin() as conn:
                return work(conn)

        return _retry(attempt, what=what, retry_seconds=self.retry_seconds)

    def _read(self, what: str, work: Callable[[Connection], T]) -> T:
        """A read of one statement, outside a transaction, re-run when the connection is
        lost."""

        def attempt() -> T:
            with self.reader.connect() as conn:
                return work(conn)

        return _retry(attempt, what=what, retry_seconds=self.retry_seconds)

    def _page(self, what: str, table: sa.Table, where: list[sa.ColumnElement[bool]],
              order: tuple[sa.UnaryExpression[Any], ...], convert: Callable[[sa.Row[Any]], T],
              limit: int, offset: int) -> tuple[list[T], int]:
        """A page of ``table`` and the count of all matching rows, in one statement (the
        desk API's lists grow with every session: they are paged in the database)."""
        page = (sa.select(table, sa.func.count().over().label(MATCHING)).where(*where)
                .order_by(*order).limit(limit).offset(offset))
        total = sa.select(sa.func.count()).select_from(table).where(*where)

        def work(conn: Connection) -> tuple[list[T], int]:
            rows = conn.execute(page).all()
            if rows:
                return [convert(r) for r in rows], int(getattr(rows[0], MATCHING))
            return [], int(conn.execute(total).scalar_one())    # past the last page

        return self._read(what, work)

    # ------------------------------------------------------------------ accounts, kill switch

    def open_account(self, account_id: str, initial_cash: float, *, actor: str) -> None:
        cash = _dec(initial_cash)
        if cash < 0:
            raise LedgerError(f"account {account_id}: initial cash must be >= 0, got {cash}")

        def work(conn: Connection) -> None:
            new = conn.execute(
                pg_insert(ACCOUNTS).values(account_id=account_id, initial_cash=cash)
                .on_conflict_do_nothing(index_elements=["account_id"])
                .returning(ACCOUNTS.c.account_id)
            ).first()
            if new is None:
                return
            conn.execute(pg_insert(CASH).values(account_id=account_id, balance=cash)
                         .on_conflict_do_nothing(index_elements=["account_id"]))
            _audit(conn, actor=actor, action="account_opened", entity="account",
                   entity_id=account_id, details={"initial_cash": float(cash)})

        self._run(f"opening account {account_id}", work)

    def initial_cash(self, account_id: str) -> float:
        """The cash the account was opened with: the ledger's, whatever the settings say now."""
        return self._account_amount(ACCOUNTS.c.initial_cash, account_id, "initial cash")

    def _account_amount(self, column: sa.Column[Any], account_id: str, what: str) -> float:
        def work(conn: Connection) -> float:
            value = conn.execute(sa.select(column).where(
                column.table.c.account_id == account_id)).scalar()
            if value is None:
                raise LedgerError(f"account {account_id} is not open in the ledger")
            return float(value)

        return self._read(f"reading the {what} of {account_id}", work)

    def kill_switch(self, account_id: str) -> KillSwitch:
        def work(conn: Connection) -> KillSwitch:
            row = conn.execute(sa.select(ACCOUNTS).where(ACCOUNTS.c.account_id == account_id)
                               ).first()
            if row is None:
                raise LedgerError(f"account {account_id} is not open in the ledger")
            return KillSwitch(engaged=row.kill_switch, reason=row.kill_reason,
                              actor=row.kill_actor, at=row.kill_at)

        return self._read(f"reading the kill switch of {account_id}", work)

    def set_kill_switch(self, account_id: str, engaged: bool, *, actor: str,
                        reason: str) -> None:
        """Engage or release the kill switch; a call repeating the current state and reason
        changes nothing."""

        def work(conn: Connection) -> None:
            row = conn.execute(sa.select(ACCOUNTS).where(ACCOUNTS.c.account_id == account_id)
                               .with_for_update()).first()
            if row is None:
                raise LedgerError(f"kill switch: account {account_id} is not open in the ledger")
            if row.kill_switch == engaged and row.kill_reason == reason:
                return
            conn.execute(sa.update(ACCOUNTS).where(ACCOUNTS.c.account_id == account_id).values(
                kill_switch=engaged, kill_reason=reason, kill_actor=actor, kill_at=sa.func.now(),
            ))
            _audit(conn, actor=actor,
                   action="kill_switch_engaged" if engaged else "kill_switch_released",
                   entity="kill_switch", entity_id=account_id, reason=reason,
                   details={"previously_engaged": row.kill_switch})

        self._run(f"setting the kill switch of {account_id}", work)

    # ------------------------------------------------------------------ signals

    def record_signal(self, signal: SignalRecord, *, actor: str) -> SignalRecord:
        """Store a decided (approved or rejected) signal, or return the stored one. A rejected
        signal may be decided again (approved, or rejected for other reasons); an approved one
        never changes except to superseded (:meth:`supersede_signal`). Written through the
        database function ``ledger_decide_signal``, whose trigger writes the audit row. A
        second approved signal for the account and session raises
        :class:`SignalSessionConflict`."""
        status = SignalStatus(signal.status)
        sid = signal.signal_id
        if status is SignalStatus.SUPERSEDED:
            raise LedgerError(f"signal {sid}: record_signal records approvals and rejections; "
                              "an approved signal is superseded with supersede_signal")
        weights = {str(k): float(v) for k, v in signal.weights.items()}
        reasons = [dict(r) for r in signal.reasons]
        as_of = _as_date(signal.as_of)
        params = {
            "signal_id": sid, "account_id": signal.account_id, "strategy": signal.strategy,
            "as_of": as_of, "weights": {k: _json_weight(v) for k, v in weights.items()},
            "weights_hash": signal.weights_hash, "status": status.value, "reasons": reasons,
            "data_version": signal.data_version, "dagster_run_id": signal.dagster_run_id,
            "decided_at": signal.decided_at, "actor": actor, "reason": _reason_text(reasons),
        }

        def work(conn: Connection) -> SignalRecord:
            row = conn.execute(sa.select(SIGNALS).where(SIGNALS.c.signal_id == sid)).first()
            if row is not None:
                stored = _signal_of(row)
                # Content never changes, so this unlocked read is safe to compare against.
                _require_same_content(stored, signal, weights, as_of)
                if _settled(stored, status, reasons):
                    return stored
            try:
                return _signal_of(conn.execute(_DECIDE_SIGNAL, params).one())
            except sa.exc.DBAPIError as exc:
                refusal = _refusal(exc, ImmutableSignalError)
                if refusal is None:
                    raise
                raise refusal from exc

        return self._run(f"recording signal {sid}", work)

    def signal(self, signal_id: str) -> SignalRecord | None:
        def work(conn: Connection) -> SignalRecord | None:
            row = conn.execute(sa.select(SIGNALS).where(SIGNALS.c.signal_id == signal_id)
                               ).first()
            return None if row is None else _signal_of(row)

        return self._read(f"reading signal {signal_id}", work)

    def signals(self, account_id: str | None = None,
                status: SignalStatus | None = None) -> list[SignalRecord]:
        query = sa.select(SIGNALS).order_by(SIGNALS.c.as_of, SIGNALS.c.created_at,
                                            SIGNALS.c.signal_id)
        if account_id is not None:
            query = query.where(SIGNALS.c.account_id == account_id)
        if status is not None:
            query = query.where(SIGNALS.c.status == SignalStatus(status).value)
        return self._run("reading signals",
                         lambda conn: [_signal_of(r) for r in conn.execute(query)])

    def signals_page(self, *, account_id: str | None = None, status: SignalStatus | None = None,
                     strategy: str | None = None, since: dt.date | None = None,
                     until: dt.date | None = None, limit: int = 50, offset: int = 0
                     ) -> tuple[list[SignalRecord], int]:
        """One page of signals, newest session first, and how many match in all."""
        where = _equal(SIGNALS, account_id=account_id, strategy=strategy,
                       status=None if status is None else SignalStatus(status).value)
        if since is not None:
            where.append(SIGNALS.c.as_of >= _as_date(since))
        if until is not None:
            where.append(SIGNALS.c.as_of <= _as_date(until))
        order = (SIGNALS.c.as_of.desc(), SIGNALS.c.created_at.desc(), SIGNALS.c.signal_id.desc())
        return self._page("reading a page of signals", SIGNALS, where, order, _signal_of,
                          limit, offset)

    def approved_signal_for(self, account_id: str, as_of: dt.date) -> SignalRecord | None:
        """The account's approved signal for a session, if any (at most one: the database's
        ``signals_one_signal_per_session`` index)."""
        query = sa.select(SIGNALS).where(SIGNALS.c.account_id == account_id,
                                         SIGNALS.c.as_of == _as_date(as_of),
                                         SIGNALS.c.status == SignalStatus.APPROVED.value)

        def work(conn: Connection) -> SignalRecord | None:
            row = conn.execute(query).first()
            return None if row is None else _signal_of(row)

        return self._run(f"reading the approved signal of {account_id} for {as_of}", work)

    def supersede_signal(self, signal_id: str, *, actor: str, reason: str,
                         lock_wait_seconds: float = 30.0) -> SignalRecord:
        """Set an approved signal aside (approved -> superseded), audited with ``actor`` and
        ``reason``, so that another signal may be approved for its account and session.
        Refused (:class:`LedgerError` naming why) once any of its orders went to a venue or its
        execution is running, completed or halted: that is the kill switch's or a later
        session's business. Waits up to ``lock_wait_seconds`` for a running execution of the
        account to release the account lock. A superseded signal is returned unchanged."""
        if not actor.strip() or not reason.strip():
            raise LedgerError(f"superseding signal {signal_id}: an actor and a reason are "
                              "required (they go to the audit log)")
        params = {"signal_id": signal_id, "actor": actor, "reason": reason,
                  "lock_wait": float(lock_wait_seconds)}

        def work(conn: Connection) -> SignalRecord:
            try:
                return _signal_of(conn.execute(_SUPERSEDE_SIGNAL, params).one())
            except sa.exc.DBAPIError as exc:
                refusal = _refusal(exc, LedgerError)
                if refusal is None:
                    raise
                raise refusal from exc

        return self._run(f"superseding signal {signal_id}", work)

    # ------------------------------------------------------------------ executions

    def start_execution(self, signal_id: str, account_id: str, *, dagster_run_id: str | None,
                        actor: str) -> ExecutionRecord:
        """Start (or return) the execution of an approved signal. A completed or halted
        execution is returned as it is; a failed or running one is taken over by this run."""

        def work(conn: Connection) -> ExecutionRecord:
            sig = conn.execute(sa.select(SIGNALS.c.status, SIGNALS.c.account_id)
                               .where(SIGNALS.c.signal_id == signal_id)).first()
            if sig is None:
                raise LedgerError(f"execution of signal {signal_id}: signal is not in the ledger")
            if sig.status != SignalStatus.APPROVED.value:
                raise LedgerError(f"execution of signal {signal_id}: signal is {sig.status}, "
                                  "only an approved signal can be executed")
            if sig.account_id != account_id:
                raise LedgerError(f"execution of signal {signal_id}: signal belongs to account "
                                  f"{sig.account_id}, not {account_id}")
            inserted = conn.execute(
                pg_insert(EXECUTIONS).values(signal_id=signal_id, account_id=account_id,
                                             status="running", dagster_run_id=dagster_run_id)
                .on_conflict_do_nothing(index_elements=["signal_id"]).returning(*EXECUTIONS.c)
            ).first()
            if inserted is not None:
                _audit(conn, actor=actor, action="execution_started", entity="execution",
                       entity_id=signal_id,
                       details={"account_id": account_id, "dagster_run_id": dagster_run_id})
                return _execution_of(inserted)
            row = conn.execute(sa.select(EXECUTIONS).where(EXECUTIONS.c.signal_id == signal_id)
                               .with_for_update()).one()
            if row.status not in ("failed", "running") or (
                    row.status == "running" and row.dagster_run_id == dagster_run_id):
                return _execution_of(row)
            restarted = conn.execute(
                sa.update(EXECUTIONS).where(EXECUTIONS.c.signal_id == signal_id).values(
                    status="running", dagster_run_id=dagster_run_id, started_at=sa.func.now(),
                    finished_at=None, reason=None,
                ).returning(*EXECUTIONS.c)
            ).one()
            _audit(conn, actor=actor, action="execution_started", entity="execution",
                   entity_id=signal_id,
                   details={"account_id": account_id, "dagster_run_id": dagster_run_id,
                            "previous_status": row.status,
                            "previous_dagster_run_id": row.dagster_run_id})
            return _execution_of(restarted)

        return self._run(f"starting the execution of signal {signal_id}", work)

    def finish_execution(self, signal_id: str, status: str, *, actor: str,
                         reason: str | None = None) -> None:
        """Mark a running execution completed, halted or failed (repeating the current final
        status is a no-op; changing a finished execution is refused)."""
        if status not in EXECUTION_FINAL:
            raise LedgerError(f"execution of signal {signal_id}: status must be one of "
                              f"{', '.join(EXECUTION_FINAL)}, got {status!r}")

        def work(conn: Connection) -> None:
            row = conn.execute(sa.select(EXECUTIONS).where(EXECUTIONS.c.signal_id == signal_id)
                               .with_for_update()).first()
            if row is None:
                raise LedgerError(f"execution of signal {signal_id} was never started")
            if row.status == status:
                return
            if row.status != "running":
                raise LedgerError(f"execution of signal {signal_id} is already {row.status}; "
                                  f"cannot mark it {status}")
            conn.execute(sa.update(EXECUTIONS).where(EXECUTIONS.c.signal_id == signal_id)
                         .values(status=status, finished_at=sa.func.now(), reason=reason))
            _audit(conn, actor=actor, action=f"execution_{status}", entity="execution",
                   entity_id=signal_id, reason=reason,
                   details={"account_id": row.account_id, "dagster_run_id": row.dagster_run_id})

        self._run(f"finishing the execution of signal {signal_id}", work)

    def execution(self, signal_id: str) -> ExecutionRecord | None:
        def work(conn: Connection) -> ExecutionRecord | None:
            row = conn.execute(sa.select(EXECUTIONS).where(EXECUTIONS.c.signal_id == signal_id)
                               ).first()
            return None if row is None else _execution_of(row)

        return self._run(f"reading the execution of signal {signal_id}", work)

    def executions(self, *, status: str | None = None,
                   account_id: str | None = None) -> list[ExecutionRecord]:
        """Executions by start time (``status`` running: the ones a stall watch looks at)."""
        query = sa.select(EXECUTIONS).order_by(EXECUTIONS.c.started_at, EXECUTIONS.c.signal_id)
        if status is not None:
            query = query.where(EXECUTIONS.c.status == status)
        if account_id is not None:
            query = query.where(EXECUTIONS.c.account_id == account_id)
        return self._run("reading executions",
                         lambda conn: [_execution_of(r) for r in conn.execute(query)])

    # ------------------------------------------------------------------ orders

    def record_orders(self, orders: Sequence[OrderRecord], *, actor: str,
                      audits: Sequence[AuditEntry] = ()) -> list[OrderRecord]:
        """Insert the planned (or risk-rejected) orders that are not stored yet and return the
        stored rows in the given order; an existing order id keeps its stored content.
        ``audits`` (the plan's conduct breaches) are written in the same transaction when
        any order is new, so a plan is never stored without them nor they twice."""
        values = [_order_values(o) for o in orders]
        if not values:
            return []

        def work(conn: Connection) -> list[OrderRecord]:
            inserted = 0
            for order, row in zip(orders, values, strict=True):
                new = conn.execute(
                    pg_insert(ORDERS).values(**row)
                    .on_conflict_do_nothing(index_elements=["order_id"])
                    .returning(ORDERS.c.order_id)
                ).first()
                if new is None:
                    continue
                inserted += 1
                rejected = row["status"] == OrderStatus.REJECTED.value
                _audit(conn, actor=actor,
                       action="order_rejected" if rejected else "order_planned",
                       entity="order", entity_id=order.order_id,
                       reason=order.reason if rejected else None,
                       details={"signal_id": order.signal_id, "account_id": order.account_id,
                                "symbol": order.symbol, "side": row["side"],
                                "quantity": order.quantity,
                                "reference_price": float(order.reference_price),
                                "session": row["session"].isoformat(),
                                "slice_index": order.slice_index, "slices": order.slices,
                                "parent_order_id": order.parent_order_id})
            for entry in audits if inserted else ():
                _audit(conn, actor=entry.actor, action=entry.action, entity=entry.entity,
                       entity_id=entry.entity_id, reason=entry.reason, details=entry.details)
            ids = [o.order_id for o in orders]
            stored = {r.order_id: _order_of(r) for r in conn.execute(
                sa.select(ORDERS).where(ORDERS.c.order_id.in_(ids)))}
            return [stored[i] for i in ids]

        signals = ", ".join(sorted({o.signal_id for o in orders}))
        return self._run(f"recording orders of signal {signals}", work)

    def orders(self, *, signal_id: str | None = None, account_id: str | None = None,
               status: OrderStatus | None = None,
               statuses: Collection[OrderStatus] | None = None) -> list[OrderRecord]:
        """Orders in the order they were recorded (``statuses``: any of them)."""
        query = sa.select(ORDERS).order_by(ORDERS.c.created_at, ORDERS.c.order_id)
        if signal_id is not None:
            query = query.where(ORDERS.c.signal_id == signal_id)
        if account_id is not None:
            query = query.where(ORDERS.c.account_id == account_id)
        if status is not None:
            query = query.where(ORDERS.c.status == OrderStatus(status).value)
        if statuses is not None:
            query = query.where(ORDERS.c.status.in_([OrderStatus(s).value for s in statuses]))
        return self._run("reading orders", lambda conn: [_order_of(r) for r in conn.execute(query)])

    def orders_page(self, *, signal_id: str | None = None, account_id: str | None = None,
                    status: OrderStatus | None = None, symbol: str | None = None,
                    side: Side | None = None, session: dt.date | None = None, limit: int = 50,
                    offset: int = 0) -> tuple[list[OrderRecord], int]:
        """One page of orders, most recently recorded first, and how many match in all."""
        where = _equal(ORDERS, signal_id=signal_id, account_id=account_id, symbol=symbol,
                       status=None if status is None else OrderStatus(status).value,
                       side=None if side is None else Side(side).value,
                       session=None if session is None else _as_date(session))
        order = (ORDERS.c.created_at.desc(), ORDERS.c.order_id.desc())
        return self._page("reading a page of orders", ORDERS, where, order, _order_of,
                          limit, offset)

    def order(self, order_id: str) -> OrderRecord | None:
        def work(conn: Connection) -> OrderRecord | None:
            row = conn.execute(sa.select(ORDERS).where(ORDERS.c.order_id == order_id)).first()
            return None if row is None else _order_of(row)

        return self._read(f"reading order {order_id}", work)

    def update_order(self, order_id: str, *, status: OrderStatus, actor: str,
                     venue_order_id: str | None = None, reason: str | None = None
                     ) -> OrderRecord:
        """Move an order to ``status``. A final order is returned unchanged, and a status never
        moves backwards (submitted after partially_filled keeps partially_filled, though a new
        venue order id or reason is still stored). Nothing changed: no write, no audit."""
        target = OrderStatus(status)

        def work(conn: Connection) -> OrderRecord:
            row = conn.execute(sa.select(ORDERS).where(ORDERS.c.order_id == order_id)
                               .with_for_update()).first()
            if row is None:
                raise LedgerError(f"order {order_id} is not in the ledger")
            current = OrderStatus(row.status)
            if current.is_final:
                return _order_of(row)
            new_status = target if _rank(target) >= _rank(current) else current
            new_venue_id = venue_order_id if venue_order_id is not None else row.venue_order_id
            new_reason = reason if reason is not None else row.reason
            if (new_status, new_venue_id, new_reason) == (current, row.venue_order_id,
                                                           row.reason):
                return _order_of(row)
            updated = conn.execute(
                sa.update(ORDERS).where(ORDERS.c.order_id == order_id).values(
                    status=new_status.value, venue_order_id=new_venue_id, reason=new_reason,
                    updated_at=sa.func.now(),
                ).returning(*ORDERS.c)
            ).one()
            if row.venue_order_id is None and new_venue_id is not None:
                # Sent: the first time a venue answers for it, whatever its state.
                conn.execute(pg_insert(ORDER_SENDS).values(
                    order_id=order_id, account_id=row.account_id, session=row.session,
                ).on_conflict_do_nothing())
            _audit(conn, actor=actor, action=f"order_{new_status.value}", entity="order",
                   entity_id=order_id, reason=reason,
                   details={"previous_status": current.value, "venue_order_id": new_venue_id,
                            "symbol": row.symbol, "side": row.side, "quantity": row.quantity,
                            "filled_quantity": row.filled_quantity})
            return _order_of(updated)

        return self._run(f"updating order {order_id}", work)

    def sync_parent(self, parent_id: str, *, actor: str) -> OrderRecord:
        """Bring a TWAP parent in line with its children in one transaction: the aggregated
        status (:func:`trading.twap.aggregate`; forward only), the summed filled quantity and
        the average fill price. A parent whose children are all still planned is unchanged."""
        from trading.twap import aggregate

        def work(conn: Connection) -> OrderRecord:
            row = conn.execute(sa.select(ORDERS).where(ORDERS.c.order_id == parent_id)
                               .with_for_update()).first()
            if row is None:
                raise LedgerError(f"order {parent_id} is not in the ledger")
            kids = [_order_of(r) for r in conn.execute(
                sa.select(ORDERS).where(ORDERS.c.parent_order_id == parent_id)
                .order_by(ORDERS.c.slice_index))]
            if not kids or all(k.status is OrderStatus.PLANNED for k in kids):
                return _order_of(row)
            state = aggregate(parent_id, [_child_state(k) for k in kids],
                              replaced={k.replaces for k in kids if k.replaces})
            current = OrderStatus(row.status)
            status = current if current.is_final or _rank(state.status) < _rank(current) \
                else state.status
            values = {"status": status.value, "filled_quantity": state.filled_quantity,
                      "average_price": None if state.average_price is None
                      else _dec(state.average_price), "reason": state.reason or row.reason}
            if (status.value, state.filled_quantity, values["reason"]) == (
                    row.status, row.filled_quantity, row.reason):
                return _order_of(row)
            updated = conn.execute(sa.update(ORDERS).where(ORDERS.c.order_id == parent_id)
                                   .values(**values, updated_at=sa.func.now())
                                   .returning(*ORDERS.c)).one()
            _audit(conn, actor=actor, action=f"order_{status.value}", entity="order",
                   entity_id=parent_id, reason=state.reason,
                   details={"previous_status": current.value, "symbol": row.symbol,
                            "side": row.side, "quantity": row.quantity,
                            "filled_quantity": state.filled_quantity, "children": len(kids)})
            return _order_of(updated)

        return self._run(f"aggregating TWAP parent {parent_id}", work)

    # ------------------------------------------------------------------ fills, positions, cash

    def record_fill(self, fill: Fill, *, actor: str) -> bool:
        """Book one execution report: the fill, the order's filled quantity, average price and
        status, the position and the cash, all in one transaction. When the fill's signal has
        recorded parts (:meth:`record_signal_parts`), each strategy's share of the fill is
        booked in that same transaction (:meth:`record_attributed_fill`). Returns False (and
        changes nothing, attribution included) when the fill id is already booked."""
        return self._book_fill(fill, actor=actor, attribution_required=False)

    def record_attributed_fill(self, fill: Fill, *, actor: str) -> bool:
        """:meth:`record_fill` with each strategy's share of the fill (units, commission,
        cash; :func:`trading.attribution.share_fill`) always booked: by the signal's recorded
        parts, or - without parts - wholly to the signal's strategy when it names exactly one;
        a signal netting several strategies without parts raises :class:`LedgerError` naming
        the signal and the fill, and nothing is booked. A re-delivered fill id changes nothing:
        a fill is attributed once, in the transaction that books it."""
        return self._book_fill(fill, actor=actor, attribution_required=True)

    def _book_fill(self, fill: Fill, *, actor: str, attribution_required: bool) -> bool:
        checked = _checked_fill(fill)

        def work(conn: Connection) -> bool:
            order = _locked_order(conn, checked)
            if not _insert_fill(conn, checked):
                return False
            filled, status = _advance_order(conn, order, checked)
            _move_cash(conn, checked, _move_position(conn, checked))
            shares = _attribute_fill(conn, checked, order.signal_id,
                                     required=attribution_required)
            _audit(conn, actor=actor, action="filled", entity="fill", entity_id=fill.fill_id,
                   details={"order_id": order.order_id, "signal_id": order.signal_id,
                            "account_id": fill.account_id, "symbol": fill.symbol,
                            "side": checked.side.value, "quantity": fill.quantity,
                            "price": float(checked.price),
                            "commission": float(checked.commission),
                            "session": _as_date(fill.session).isoformat(),
                            "order_filled_quantity": filled, "order_status": status.value,
                            **({} if shares is None else {"strategies": {
                                s: share.units for s, share in shares.items()}})})
            return True

        return self._run(f"recording fill {fill.fill_id} of order {fill.client_order_id}",
                         work)

    def fills(self, account_id: str, *, signal_id: str | None = None) -> list[Fill]:
        query = (sa.select(FILLS).where(FILLS.c.account_id == account_id)
                 .order_by(FILLS.c.filled_at, FILLS.c.recorded_at, FILLS.c.fill_id))
        if signal_id is not None:
            query = query.join(ORDERS, ORDERS.c.order_id == FILLS.c.order_id).where(
                ORDERS.c.signal_id == signal_id)
        return self._run(f"reading fills of {account_id}",
                         lambda conn: [_fill_of(r) for r in conn.execute(query)])

    def fills_page(self, account_id: str, *, signal_id: str | None = None,
                   symbol: str | None = None, side: Side | None = None,
                   session: dt.date | None = None, limit: int = 50, offset: int = 0
                   ) -> tuple[list[Fill], int]:
        """One page of the account's fills, most recent first, and how many match in all."""
        where = _equal(FILLS, account_id=account_id, symbol=symbol,
                       side=None if side is None else Side(side).value,
                       session=None if session is None else _as_date(session))
        if signal_id is not None:
            where.append(FILLS.c.order_id.in_(
                sa.select(ORDERS.c.order_id).where(ORDERS.c.signal_id == signal_id)))
        order = (FILLS.c.filled_at.desc(), FILLS.c.recorded_at.desc(), FILLS.c.fill_id.desc())
        return self._page(f"reading a page of fills of {account_id}", FILLS, where, order,
                          _fill_of, limit, offset)

    def positions(self, account_id: str) -> dict[str, Position]:
        query = (sa.select(POSITIONS).where(POSITIONS.c.account_id == account_id,
                                            POSITIONS.c.quantity > 0)
                 .order_by(POSITIONS.c.symbol))
        return self._read(f"reading positions of {account_id}", lambda conn: {
            r.symbol: Position(symbol=r.symbol, quantity=r.quantity, cost=r.cost)
            for r in conn.execute(query)
        })

    def cash(self, account_id: str) -> float:
        return self._account_amount(CASH.c.balance, account_id, "cash")

    def committed_notional(self, account_id: str, session: dt.date) -> float:
        """What was sent to the market for ``session``: quantity x reference price of every
        order that left the ledger (not planned, not rejected), counting cancelled and expired
        orders only with what they filled. A TWAP parent counts through its children only."""
        final_unfilled = ORDERS.c.status.in_([OrderStatus.CANCELLED.value,
                                              OrderStatus.EXPIRED.value])
        amount = sa.case(
            (final_unfilled, ORDERS.c.filled_quantity
             * sa.func.coalesce(ORDERS.c.average_price, ORDERS.c.reference_price)),
            else_=ORDERS.c.quantity * ORDERS.c.reference_price,
        )
        children = ORDERS.alias("children")
        query = sa.select(sa.func.coalesce(sa.func.sum(amount), 0)).where(
            ORDERS.c.account_id == account_id, ORDERS.c.session == _as_date(session),
            ORDERS.c.status.not_in([OrderStatus.PLANNED.value, OrderStatus.REJECTED.value]),
            ~sa.exists().where(children.c.parent_order_id == ORDERS.c.order_id),
        )
        return self._run(f"reading the committed notional of {account_id}",
                         lambda conn: float(conn.execute(query).scalar_one()))

    def order_pace(self, account_id: str, session: dt.date) -> OrderPace:
        """Orders of the account sent to a venue in the last minute (by the database's
        clock) and for ``session``, and how many of the latter were cancelled at the venue
        (the conduct rules, ``trading.conduct``)."""
        sends = ORDER_SENDS
        this_session = sends.c.session == _as_date(session)
        a_minute_ago = sa.func.clock_timestamp() - sa.text("interval '1 minute'")
        query = sa.select(
            sa.func.count().filter(sends.c.sent_at > a_minute_ago),
            sa.func.count().filter(this_session),
            sa.func.count().filter(this_session,
                                   ORDERS.c.status == OrderStatus.CANCELLED.value),
        ).select_from(sends.join(ORDERS, ORDERS.c.order_id == sends.c.order_id)).where(
            sends.c.account_id == account_id,
            sa.or_(this_session, sends.c.sent_at > a_minute_ago))
        return self._run(f"reading the order pace of {account_id}",
                         lambda conn: OrderPace(*conn.execute(query).one()))

    def open_sides_elsewhere(self, account_id: str, session: dt.date
                             ) -> dict[tuple[str, str], set[str]]:
        """(fund, side) -> the other accounts with an order of that side for ``session`` that
        is not final (sent or about to be): self-trade prevention across our accounts."""
        query = sa.select(ORDERS.c.symbol, ORDERS.c.side, ORDERS.c.account_id).where(
            ORDERS.c.account_id != account_id, ORDERS.c.session == _as_date(session),
            ORDERS.c.status.in_([s.value for s in OrderStatus if not s.is_final]))
        found: dict[tuple[str, str], set[str]] = {}
        for symbol, side, other in self._run("reading other accounts' open orders",
                                             lambda conn: list(conn.execute(query))):
            found.setdefault((symbol, side), set()).add(other)
        return found

    def units_held_by_all(self) -> dict[str, int]:
        """Units of each fund held by every account of the ledger together."""
        query = (sa.select(POSITIONS.c.symbol, sa.func.sum(POSITIONS.c.quantity))
                 .where(POSITIONS.c.quantity > 0).group_by(POSITIONS.c.symbol))
        return self._read("reading our holdings", lambda conn: {
            symbol: int(units) for symbol, units in conn.execute(query)})

    # ------------------------------------------------------------------ per-strategy attribution

    def record_signal_parts(self, parts: SignalParts, *, actor: str) -> bool:
        """Store each strategy's wish for a signal (units per fund and strategy) with the funds'
        reference prices, audited, in one transaction. Returns False when these parts are
        already stored. Raises :class:`LedgerError` for a signal not in the ledger, no parts,
        a strategy the signal does not name (``strategies_of(signal.strategy)``), different
        parts already stored (parts are immutable), or a signal with fills already booked (they
        would stay unattributed: the parts must come first)."""
        sid, rows = parts.signal_id, parts.rows()
        if not rows:
            raise LedgerError(f"signal {sid}: no parts to record")

        def work(conn: Connection) -> bool:
            account_id, named = _signal_owner(conn, sid)
            _lock_attribution(conn, account_id)
            strangers = sorted(parts.strategies - set(strategies_of(named)))
            if strangers:
                raise LedgerError(f"signal {sid} is for strategy {named}: its parts may not "
                                  f"name {strangers}")
            stored = [(r.symbol, r.strategy, r.wanted_units, float(r.reference_price))
                      for r in _parts_rows(conn, sid)]
            if stored:
                return _same_parts(sid, stored, rows)
            if conn.execute(sa.select(sa.exists().where(
                    FILLS.c.order_id == ORDERS.c.order_id, ORDERS.c.signal_id == sid))).scalar():
                raise LedgerError(f"signal {sid} already has fills: its parts must be recorded "
                                  "before its first fill")
            conn.execute(sa.insert(SIGNAL_PARTS), [
                {"signal_id": sid, "symbol": fund, "strategy": strategy, "wanted_units": units,
                 "reference_price": _dec(price)} for fund, strategy, units, price in rows])
            _audit(conn, actor=actor, action="signal_parts_recorded", entity="signal",
                   entity_id=sid, details={
                       "wishes": {f: dict(by) for f, by in parts.wishes.items()},
                       "reference_prices": {f: float(p) for f, p in
                                            parts.reference_prices.items()}})
            return True

        return self._run(f"recording the strategies' parts of signal {sid}", work)

    def signal_parts(self, signal_id: str) -> SignalParts | None:
        """The recorded parts of a signal, or None."""
        rows = self._read(f"reading the parts of signal {signal_id}",
                          lambda conn: _parts_rows(conn, signal_id))
        if not rows:
            return None
        wishes: dict[str, dict[str, int]] = {}
        for r in rows:
            wishes.setdefault(r.symbol, {})[r.strategy] = r.wanted_units
        return SignalParts(signal_id, wishes, {r.symbol: float(r.reference_price) for r in rows})

    def book_crossings(self, signal_id: str, *, session: dt.date, actor: str
                       ) -> list[Crossing]:
        """Settle the approved signal's opposite wishes inside the account, in one audited
        transaction: per fund, units pass from the strategies that want to sell to those that
        want to buy (:func:`trading.attribution.crossing_pairs`) at the fund's **reference
        price recorded with the parts** (the raw close of the signal's date; why, see
        :mod:`trading.attribution`), on ``session``. The account's position and cash do not
        change. Idempotent: once booked, the stored crossings are returned."""

        def work(conn: Connection) -> list[Crossing]:
            account_id = _approved_signal_account(conn, signal_id)
            _lock_attribution(conn, account_id)
            stored = _crossings(conn, signal_id)
            if stored:
                return stored
            rows = _parts_rows(conn, signal_id)
            if not rows:
                raise LedgerError(f"signal {signal_id} has no recorded parts: nothing to cross")
            booked = [c for fund, fund_rows in _by_fund(rows).items()
                      for c in _cross_fund(conn, signal_id, account_id, fund, fund_rows,
                                           _as_date(session))]
            if booked:
                _audit(conn, actor=actor, action="units_crossed", entity="signal",
                       entity_id=signal_id, details={
                           "session": _as_date(session).isoformat(),
                           "crossings": [[c.symbol, c.seller, c.buyer, c.units, c.price]
                                         for c in booked]})
            return booked

        return self._run(f"crossing the strategies' wishes of signal {signal_id}", work)

    def crossings(self, signal_id: str) -> list[Crossing]:
        return self._read(f"reading the crossings of signal {signal_id}",
                          lambda conn: _crossings(conn, signal_id))

    def fill_attribution(self, fill_id: str) -> dict[str, StrategyFill]:
        """Each strategy's share of a booked fill ({} when it was not attributed)."""
        query = sa.select(FILL_ATTRIBUTIONS).where(FILL_ATTRIBUTIONS.c.fill_id == fill_id)
        return self._read(f"reading the attribution of fill {fill_id}", lambda conn: {
            r.strategy: StrategyFill(r.units, r.commission, r.cash)
            for r in conn.execute(query)})

    def strategy_holdings(self, account_id: str) -> dict[str, dict[str, Holding]]:
        """strategy -> fund -> its holding (a sold-out holding stays for its realised P&L)."""
        return self._read(f"reading the strategies' holdings of {account_id}",
                          lambda conn: _strategy_holdings(conn, account_id))

    def strategy_books(self, account_id: str, prices: Mapping[str, float]
                       ) -> dict[str, StrategyBook]:
        """Each strategy's positions, cash moved, realised P&L and market value at ``prices``
        (fund -> raw price; every fund a strategy holds needs one), read from one snapshot.
        They sum to the account's: units per fund to its positions, cash to its cash minus
        the initial cash, P&L to its equity minus the initial cash."""

        def work(conn: Connection) -> dict[str, StrategyBook]:
            conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            holdings = _strategy_holdings(conn, account_id)
            cash = _strategy_cash(conn, account_id)
            return {s: _book(account_id, s, holdings.get(s, {}), cash.get(s, Decimal(0)),
                             prices) for s in sorted(set(holdings) | set(cash))}

        return self._run(f"reading the strategies' books of {account_id}", work)

    # ------------------------------------------------------------------ valuations

    def record_valuation(self, account_id: str, session: dt.date, *, cash: float,
                         positions_value: float, actor: str) -> None:
        """Upsert the end-of-session valuation (equity = cash + positions value)."""
        day = _as_date(session)
        cash_d, positions_d = _dec(cash), _dec(positions_value)
        equity = cash_d + positions_d

        def work(conn: Connection) -> None:
            key = sa.and_(VALUATIONS.c.account_id == account_id, VALUATIONS.c.session == day)
            old = conn.execute(sa.select(VALUATIONS).where(key).with_for_update()).first()
            if old is not None and math.isclose(old.cash, float(cash_d), abs_tol=1e-9) and \
                    math.isclose(old.positions_value, float(positions_d), abs_tol=1e-9):
                return
            insert = pg_insert(VALUATIONS).values(
                account_id=account_id, session=day, cash=cash_d, positions_value=positions_d,
                equity=equity)
            conn.execute(insert.on_conflict_do_update(
                index_elements=["account_id", "session"],
                set_={"cash": insert.excluded.cash,
                      "positions_value": insert.excluded.positions_value,
                      "equity": insert.excluded.equity, "recorded_at": sa.func.now()},
            ))
            _audit(conn, actor=actor, action="valuation_recorded", entity="valuation",
                   entity_id=f"{account_id}:{day.isoformat()}",
                   details={"account_id": account_id, "session": day.isoformat(),
                            "cash": float(cash_d), "positions_value": float(positions_d),
                            "equity": float(equity),
                            "previous_equity": None if old is None else old.equity})

        self._run(f"recording the valuation of {account_id} on {day}", work)

    def valuations(self, account_id: str) -> pd.DataFrame:
        """Columns session (datetime64), cash, positions_value, equity; sorted by session."""
        query = (sa.select(VALUATIONS.c.session, VALUATIONS.c.cash,
                           VALUATIONS.c.positions_value, VALUATIONS.c.equity)
                 .where(VALUATIONS.c.account_id == account_id).order_by(VALUATIONS.c.session))
        rows = self._run(f"reading valuations of {account_id}",
                         lambda conn: [tuple(r) for r in conn.execute(query)])
        frame = pd.DataFrame(rows, columns=["session", "cash", "positions_value", "equity"])
        frame["session"] = pd.to_datetime(frame["session"])
        return frame.astype({"cash": float, "positions_value": float, "equity": float})

    # ------------------------------------------------------------------ audit

    def audit(self, entry: AuditEntry) -> None:
        """Append one entry (for decisions made outside the ledger's own write methods)."""
        self._run(f"auditing {entry.action} of {entry.entity} {entry.entity_id}",
                  lambda conn: _audit(conn, actor=entry.actor, action=entry.action,
                                      entity=entry.entity, entity_id=entry.entity_id,
                                      reason=entry.reason, details=entry.details))

    def audit_log(self, *, entity: str | None = None, entity_id: str | None = None,
                  action: str | None = None) -> list[dict[str, Any]]:
        """Entries as dicts (id, at, actor, action, entity, entity_id, reason, details)."""
        query = sa.select(AUDIT_LOG).order_by(AUDIT_LOG.c.id)
        for column, value in (("entity", entity), ("entity_id", entity_id), ("action", action)):
            if value is not None:
                query = query.where(AUDIT_LOG.c[column] == value)
        return self._run("reading the audit log",
                         lambda conn: [dict(r._mapping) for r in conn.execute(query)])

    def audit_page(self, *, entity: str | None = None, entity_id: str | None = None,
                   action: str | None = None, actor: str | None = None,
                   since: dt.datetime | None = None, limit: int = 50, offset: int = 0
                   ) -> tuple[list[dict[str, Any]], int]:
        """One page of entries, newest first, and how many match in all (the desk API's
        audit list: the log only grows, so it is paged in the database)."""
        where = _equal(AUDIT_LOG, entity=entity, entity_id=entity_id, action=action,
                       actor=actor)
        if since is not None:
            where.append(AUDIT_LOG.c.at >= since)
        return self._page("reading a page of the audit log", AUDIT_LOG, where,
                          (AUDIT_LOG.c.id.desc(),),
                          lambda r: {c.name: r._mapping[c.name] for c in AUDIT_LOG.columns},
                          limit, offset)

    # ------------------------------------------------------------------ locks

    @contextmanager
    def account_lock(self, account_id: str, timeout_seconds: float = 30.0
                     ) -> Iterator[AccountLock]:
        """Hold the account's PostgreSQL session advisory lock: the one execution lock.
        Raises :class:`LedgerError` after ``timeout_seconds``. The lock lives as long as its
        connection; :meth:`AccountLock.ensure` tells a holder whether it still has it."""
        lock = AccountLock(self, account_id)
        try:
            deadline = time.monotonic() + timeout_seconds
            while not lock.try_take():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LedgerError(f"account {account_id} is locked by another execution "
                                      f"(waited {timeout_seconds:g}s)")
                time.sleep(min(0.1, remaining))
            yield lock
        finally:
            lock.release()

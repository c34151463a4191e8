"""Prometheus exporter for the platform: ``python -m observability.exporter``.

A custom collector computes every value at scrape time (no background thread, no cache) from

* the Dagster instance (``DAGSTER_HOME``):

  - ``etf_asset_last_materialization_timestamp_seconds{asset}`` and
    ``etf_asset_freshness_seconds{asset}`` (now - last materialization, any partition);
  - ``etf_asset_check_failed{asset,check}``: 1 when the latest *completed* evaluation failed
    (an evaluation still in progress, or whose run crashed, does not count);
  - ``etf_asset_check_failures_total{asset,check}``: failed evaluations in the whole history;
  - ``etf_runs_total{job,status}`` and the histogram ``etf_run_duration_seconds{job,status}``
    over finished runs (SUCCESS, FAILURE, CANCELED; runs that never started have no duration
    and only count in ``etf_runs_total``);

* the PostgreSQL ledger (only with ``ETF_POSTGRES_URL`` / ``--ledger-url``):

  - ``etf_signals_total{status}``: signals ever approved / ever rejected (distinct signal ids
    in the append-only audit log, so a rejected signal approved later counts once in each and
    the counter never decreases);
  - ``etf_orders_total{status}``: orders that reached a final status (filled, cancelled,
    expired, rejected - final statuses never change, so the counter never decreases) and the
    gauge ``etf_orders_open{status}`` for planned / submitted / partially_filled orders;
  - ``etf_fills_total`` and ``etf_fill_notional_cny_total`` (price x quantity, commissions
    excluded);
  - per account ``etf_ledger_cash_cny``, ``etf_ledger_positions_value_cny``,
    ``etf_ledger_equity_cny`` (cash + positions value), ``etf_ledger_gross_exposure_ratio``
    (positions value / equity; absent when equity <= 0) and ``etf_kill_switch_engaged`` (0/1).

  Positions value: the latest recorded valuation (``positions_report``, marked at the
  session's raw close) when it covers every fill of the account (its session is not before
  the last fill's session and it was recorded after that fill was booked); otherwise the
  current positions marked at the latest fill price of each fund in any account (the ledger
  holds no other price), i.e. right after an execution and before the next valuation.

* the exporter itself: ``etf_exporter_scrape_errors_total{source}`` and
  ``etf_exporter_scrape_duration_seconds{source}``. A source that fails (database down,
  schema missing) is logged, counted and left out of that scrape; the others are still served.

Counters are exact and monotonic, as ``increase()``/``rate()`` need: they are aggregated in SQL
rather than over a bounded window of records (a window would make them fall as old records
leave it, which Prometheus reads as counter resets). For the run and check aggregates that means
one query each on Dagster's run and event-log tables (``runs``, ``asset_check_executions``),
which both SQL storages (dagster-postgres, SQLite) share; these tables are Dagster internals,
pinned by ``dagster==1.13.*``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import FrameType
from typing import Any

import dagster as dg
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from orchestration.logging_json import configure_json_logging
from trading.ledger import (
    ACCOUNTS,
    AUDIT_LOG,
    CASH,
    FILLS,
    ORDERS,
    POSITIONS,
    VALUATIONS,
    Ledger,
)
from trading.models import OrderStatus, SignalStatus

log = logging.getLogger(__name__)

DEFAULT_PORT = 9464
PORT_ENV = "ETF_EXPORTER_PORT"
ADDRESS_ENV = "ETF_EXPORTER_ADDRESS"
LOG_LEVEL_ENV = "ETF_EXPORTER_LOG_LEVEL"
LEDGER_URL_ENV = "ETF_POSTGRES_URL"

RUN_DURATION_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600)
FINISHED_RUN_STATUSES: tuple[dg.DagsterRunStatus, ...] = (
    dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
CHECK_COMPLETED = ("SUCCEEDED", "FAILED")      # AssetCheckExecutionRecordStatus values
CHECK_FAILED = "FAILED"
FINAL_ORDER_STATUSES = tuple(s.value for s in OrderStatus if s.is_final)
OPEN_ORDER_STATUSES = tuple(s.value for s in OrderStatus if not s.is_final)
SIGNAL_STATUSES = tuple(s.value for s in SignalStatus)

SOURCE_ASSETS = "dagster_assets"
SOURCE_CHECKS = "dagster_checks"
SOURCE_RUNS = "dagster_runs"
SOURCE_LEDGER = "ledger"


# ---------------------------------------------------------------------------------------------
# Dagster instance
# ---------------------------------------------------------------------------------------------


def asset_metrics(instance: dg.DagsterInstance, now: float) -> list[Metric]:
    last = GaugeMetricFamily(
        "etf_asset_last_materialization_timestamp_seconds",
        "Unix time of the asset's latest materialization (any partition).", labels=["asset"])
    fresh = GaugeMetricFamily(
        "etf_asset_freshness_seconds",
        "Seconds since the asset's latest materialization (any partition).", labels=["asset"])
    for record in instance.get_asset_records():
        entry = record.asset_entry
        event = entry.last_materialization
        if event is None:
            continue
        asset = entry.asset_key.to_user_string()
        last.add_metric([asset], event.timestamp)
        fresh.add_metric([asset], max(0.0, now - event.timestamp))
    return [last, fresh]


def _sql_event_log(instance: dg.DagsterInstance) -> Any:
    from orchestration.dagster_private import SqlEventLogStorage

    storage = instance.event_log_storage
    if not isinstance(storage, SqlEventLogStorage):
        raise TypeError(f"event log storage {type(storage).__name__} is not SQL-backed: asset "
                        "check metrics need dagster-postgres or SQLite storage")
    return storage


def _sql_run_storage(instance: dg.DagsterInstance) -> Any:
    from orchestration.dagster_private import SqlRunStorage

    storage = instance.run_storage
    if not isinstance(storage, SqlRunStorage):
        raise TypeError(f"run storage {type(storage).__name__} is not SQL-backed: run metrics "
                        "need dagster-postgres or SQLite storage")
    return storage


def check_metrics(instance: dg.DagsterInstance) -> list[Metric]:
    from orchestration.dagster_private import AssetCheckExecutionsTable as checks

    storage = _sql_event_log(instance)
    key = (checks.c.asset_key, checks.c.check_name)
    counts = sa.select(*key, sa.func.sum(sa.case(
        (checks.c.execution_status == CHECK_FAILED, 1), else_=0)).label("failures")
    ).group_by(*key)
    latest_ids = (sa.select(sa.func.max(checks.c.id))
                  .where(checks.c.execution_status.in_(CHECK_COMPLETED)).group_by(*key))
    latest = sa.select(*key, checks.c.execution_status).where(checks.c.id.in_(latest_ids))
    with storage.index_connection() as conn:
        count_rows = conn.execute(counts).all()
        latest_rows = conn.execute(latest).all()

    def labels(asset_key: str, check_name: str) -> list[str]:
        parsed = dg.AssetKey.from_db_string(asset_key)
        return [parsed.to_user_string() if parsed else asset_key, check_name]

    failed = GaugeMetricFamily(
        "etf_asset_check_failed",
        "1 when the latest completed evaluation of the asset check failed, else 0.",
        labels=["asset", "check"])
    for asset_key, check_name, status in sorted(latest_rows):
        failed.add_metric(labels(asset_key, check_name), 1.0 if status == CHECK_FAILED else 0.0)
    failures = CounterMetricFamily(
        "etf_asset_check_failures_total", "Failed evaluations of the asset check (all history).",
        labels=["asset", "check"])
    for asset_key, check_name, count in sorted(count_rows):
        failures.add_metric(labels(asset_key, check_name), float(count or 0))
    return [failed, failures]


def run_metrics(instance: dg.DagsterInstance,
                buckets: Sequence[float] = RUN_DURATION_BUCKETS) -> list[Metric]:
    from orchestration.dagster_private import RunsTable as runs

    storage = _sql_run_storage(instance)
    duration = runs.c.end_time - runs.c.start_time
    query = (
        sa.select(
            runs.c.pipeline_name, runs.c.status,
            sa.func.count().label("runs"),
            sa.func.count(duration).label("timed"),
            sa.func.coalesce(sa.func.sum(duration), 0.0).label("seconds"),
            *(sa.func.sum(sa.case((duration <= bound, 1), else_=0)) for bound in buckets),
        )
        .where(runs.c.status.in_([s.value for s in FINISHED_RUN_STATUSES]))
        .group_by(runs.c.pipeline_name, runs.c.status)
        .order_by(runs.c.pipeline_name, runs.c.status)
    )
    with storage.connect() as conn:
        rows = conn.execute(query).all()

    total = CounterMetricFamily("etf_runs_total", "Finished Dagster runs by job and status.",
                                labels=["job", "status"])
    hist = HistogramMetricFamily(
        "etf_run_duration_seconds",
        "Wall-clock duration (start to end) of finished Dagster runs by job and status.",
        labels=["job", "status"])
    for job, status, count, timed, seconds, *cumulative in rows:
        labels = [str(job), str(status)]
        total.add_metric(labels, float(count))
        if timed:
            hist.add_metric(
                labels,
                [(floatToGoString(b), float(c or 0)) for b, c in zip(buckets, cumulative,
                                                                      strict=True)]
                + [("+Inf", float(timed))],
                sum_value=float(seconds or 0.0))
    return [total, hist]


# ---------------------------------------------------------------------------------------------
# Ledger
# ---------------------------------------------------------------------------------------------


def _ledger_reader(ledger: Ledger) -> sa.Engine:
    """The ledger's engine for consistent read-only snapshots (one per scrape)."""
    return ledger.engine.execution_options(isolation_level="REPEATABLE READ",
                                           postgresql_readonly=True)


def _latest(query: sa.Select[Any], *, partition: sa.ColumnElement[Any],
            order: Sequence[sa.ColumnElement[Any]], name: str) -> sa.Subquery:
    """The first row of ``query`` per ``partition`` in ``order`` (DISTINCT ON, portably)."""
    rank = sa.func.row_number().over(partition_by=partition, order_by=list(order))
    ranked = query.add_columns(rank.label("rank")).subquery(f"{name}_ranked")
    columns = [c for c in ranked.c if c.key != "rank"]
    return sa.select(*columns).where(ranked.c.rank == 1).subquery(name)


def ledger_metrics(engine: sa.Engine) -> list[Metric]:
    last_price = _latest(
        sa.select(FILLS.c.symbol, FILLS.c.price), partition=FILLS.c.symbol,
        order=(FILLS.c.filled_at.desc(), FILLS.c.recorded_at.desc(), FILLS.c.fill_id.desc()),
        name="last_price")
    marked = (
        sa.select(POSITIONS.c.account_id, sa.func.sum(
            POSITIONS.c.quantity
            * sa.func.coalesce(last_price.c.price, POSITIONS.c.cost / POSITIONS.c.quantity)
        ).label("value"))
        .select_from(POSITIONS.outerjoin(last_price, last_price.c.symbol == POSITIONS.c.symbol))
        .where(POSITIONS.c.quantity > 0)
        .group_by(POSITIONS.c.account_id)
    )
    valuation = sa.select(_latest(
        sa.select(VALUATIONS.c.account_id, VALUATIONS.c.session, VALUATIONS.c.positions_value,
                  VALUATIONS.c.recorded_at),
        partition=VALUATIONS.c.account_id, order=(VALUATIONS.c.session.desc(),),
        name="last_valuation"))
    fills_by_account = (
        sa.select(FILLS.c.account_id, sa.func.max(FILLS.c.session).label("session"),
                  sa.func.max(FILLS.c.recorded_at).label("recorded_at"))
        .group_by(FILLS.c.account_id)
    )
    accounts = (
        sa.select(ACCOUNTS.c.account_id, ACCOUNTS.c.kill_switch, CASH.c.balance)
        .select_from(ACCOUNTS.outerjoin(CASH, CASH.c.account_id == ACCOUNTS.c.account_id))
        .order_by(ACCOUNTS.c.account_id)
    )
    signal_decisions = (
        sa.select(AUDIT_LOG.c.action, sa.func.count(sa.distinct(AUDIT_LOG.c.entity_id)))
        .where(AUDIT_LOG.c.entity == "signal",
               AUDIT_LOG.c.action.in_([f"signal_{s}" for s in SIGNAL_STATUSES]))
        .group_by(AUDIT_LOG.c.action)
    )
    orders = sa.select(ORDERS.c.status, sa.func.count()).group_by(ORDERS.c.status)
    fills = sa.select(sa.func.count(), sa.func.coalesce(
        sa.func.sum(FILLS.c.price * FILLS.c.quantity), 0))

    with engine.begin() as conn:
        marked_value = {a: float(v or 0.0) for a, v in conn.execute(marked)}
        valuations = {r.account_id: r for r in conn.execute(valuation)}
        last_fills = {r.account_id: r for r in conn.execute(fills_by_account)}
        account_rows = conn.execute(accounts).all()
        decided = {str(action).removeprefix("signal_"): int(n)
                   for action, n in conn.execute(signal_decisions)}
        order_counts = {str(status): int(n) for status, n in conn.execute(orders)}
        fill_count, fill_notional = conn.execute(fills).one()

    signals = CounterMetricFamily(
        "etf_signals_total", "Signals ever decided with this status (distinct signal ids).",
        labels=["status"])
    for status in SIGNAL_STATUSES:
        signals.add_metric([status], float(decided.get(status, 0)))
    final_orders = CounterMetricFamily(
        "etf_orders_total", "Orders that reached this final status.", labels=["status"])
    for status in FINAL_ORDER_STATUSES:
        final_orders.add_metric([status], float(order_counts.get(status, 0)))
    open_orders = GaugeMetricFamily(
        "etf_orders_open", "Orders currently in this non-final status.", labels=["status"])
    for status in OPEN_ORDER_STATUSES:
        open_orders.add_metric([status], float(order_counts.get(status, 0)))
    fills_total = CounterMetricFamily("etf_fills_total", "Fills booked in the ledger.",
                                      value=float(fill_count))
    notional_total = CounterMetricFamily(
        "etf_fill_notional_cny_total", "Filled notional (price x quantity, CNY, commissions "
        "excluded).", value=float(fill_notional or 0.0))

    cash_g = GaugeMetricFamily("etf_ledger_cash_cny", "Cash balance of the account (CNY).",
                               labels=["account"])
    positions_g = GaugeMetricFamily(
        "etf_ledger_positions_value_cny", "Positions value (CNY): the latest valuation when it "
        "covers every fill, else positions at the latest fill price.", labels=["account"])
    equity_g = GaugeMetricFamily("etf_ledger_equity_cny", "Cash + positions value (CNY).",
                                 labels=["account"])
    exposure_g = GaugeMetricFamily("etf_ledger_gross_exposure_ratio",
                                   "Positions value / equity.", labels=["account"])
    kill_g = GaugeMetricFamily("etf_kill_switch_engaged",
                               "1 when the account's kill switch is engaged in the ledger.",
                               labels=["account"])
    for account, kill_switch, balance in account_rows:
        labels = [str(account)]
        kill_g.add_metric(labels, 1.0 if kill_switch else 0.0)
        if balance is None:           # an account row without cash: nothing to value
            continue
        cash = float(balance)
        value = positions_value(valuations.get(account), last_fills.get(account),
                                marked_value.get(account, 0.0))
        equity = cash + value
        cash_g.add_metric(labels, cash)
        positions_g.add_metric(labels, value)
        equity_g.add_metric(labels, equity)
        if equity > 0:
            exposure_g.add_metric(labels, abs(value) / equity)
    return [signals, final_orders, open_orders, fills_total, notional_total,
            cash_g, positions_g, equity_g, exposure_g, kill_g]


def positions_value(valuation: Any, last_fill: Any, marked: float) -> float:
    """The valuation's positions value when it covers the account's last fill, else
    ``marked`` (positions at the latest fill prices)."""
    if valuation is None:
        return marked
    if last_fill is None:
        return float(valuation.positions_value)
    covers = (valuation.session >= last_fill.session
              and valuation.recorded_at >= last_fill.recorded_at)
    return float(valuation.positions_value) if covers else marked


# ---------------------------------------------------------------------------------------------
# Collector
# ---------------------------------------------------------------------------------------------


class EtfCollector(Collector):
    """Reads every source at scrape time; a failing source is logged, counted in
    ``etf_exporter_scrape_errors_total{source}`` and skipped."""

    def __init__(self, instance: dg.DagsterInstance, ledger_url: str | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._instance = instance
        self._ledger = Ledger(ledger_url) if ledger_url else None
        self._ledger_engine = _ledger_reader(self._ledger) if self._ledger else None
        self._clock = clock
        self._lock = threading.Lock()
        self._errors: dict[str, int] = dict.fromkeys(self.sources, 0)
        self._durations: dict[str, float] = {}

    @property
    def sources(self) -> tuple[str, ...]:
        base = (SOURCE_ASSETS, SOURCE_CHECKS, SOURCE_RUNS)
        return (*base, SOURCE_LEDGER) if self._ledger is not None else base

    def _read(self, source: str) -> list[Metric]:
        if source == SOURCE_ASSETS:
            return asset_metrics(self._instance, self._clock())
        if source == SOURCE_CHECKS:
            return check_metrics(self._instance)
        if source == SOURCE_RUNS:
            return run_metrics(self._instance)
        assert self._ledger_engine is not None
        return ledger_metrics(self._ledger_engine)

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            started = time.perf_counter()
            try:
                families = self._read(source)
            except Exception as exc:
                with self._lock:
                    self._errors[source] += 1
                log.error("scraping %s failed: %s: %s", source, type(exc).__name__, exc,
                          exc_info=True, extra={"source": source})
                families = []
            with self._lock:
                self._durations[source] = time.perf_counter() - started
            yield from families
        errors = CounterMetricFamily(
            "etf_exporter_scrape_errors_total",
            "Scrapes in which reading the source failed (its series were left out).",
            labels=["source"])
        durations = GaugeMetricFamily(
            "etf_exporter_scrape_duration_seconds",
            "Time the last scrape spent reading the source.", labels=["source"])
        with self._lock:
            for source in self.sources:
                errors.add_metric([source], float(self._errors[source]))
                if source in self._durations:
                    durations.add_metric([source], self._durations[source])
        yield errors
        yield durations

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.dispose()


def build_registry(instance: dg.DagsterInstance, ledger_url: str | None = None,
                   ) -> CollectorRegistry:
    """A registry holding only the platform collector (nothing is read until a scrape)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EtfCollector(instance, ledger_url))
    return registry


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _port(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {value}")
    return port


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m observability.exporter",
        description="Prometheus exporter for the Dagster instance (DAGSTER_HOME) and the ledger.")
    parser.add_argument("--port", type=_port,
                        default=_port(os.environ.get(PORT_ENV) or str(DEFAULT_PORT)),
                        help=f"listen port (env {PORT_ENV}, default {DEFAULT_PORT})")
    parser.add_argument("--address", default=os.environ.get(ADDRESS_ENV) or "0.0.0.0",
                        help=f"listen address (env {ADDRESS_ENV}, default 0.0.0.0)")
    parser.add_argument("--ledger-url", default=os.environ.get(LEDGER_URL_ENV) or None,
                        help=f"ledger database URL (env {LEDGER_URL_ENV}); unset: no ledger "
                        "metrics")
    parser.add_argument("--log-level", default=os.environ.get(LOG_LEVEL_ENV) or "INFO",
                        help=f"log level (env {LOG_LEVEL_ENV}, default INFO)")
    parser.add_argument("--once", action="store_true",
                        help="print one scrape to stdout and exit")
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> None:
    args = parse_args(argv)
    configure_json_logging(args.log_level)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s received: stopping", signal.Signals(signum).name)
        stop.set()

    with dg.DagsterInstance.get() as instance:
        registry = build_registry(instance, args.ledger_url)
        if args.once:
            sys.stdout.write(generate_latest(registry).decode("utf-8"))
            return
        server, thread = start_http_server(args.port, addr=args.address, registry=registry)
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        log.info("serving /metrics on %s:%d (ledger: %s)", args.address, args.port,
                 "on" if args.ledger_url else "off")
        stop.wait()
        server.shutdown()
        thread.join(timeout=5)


if __name__ == "__main__":
    main()

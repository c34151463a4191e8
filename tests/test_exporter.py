"""The Prometheus exporter over HTTP, on a real dagster-postgres instance and a real ledger
database: runs, asset materialisations and checks, signals, orders, fills, balances, the kill
switch, and a failing source that does not take the others down."""

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from conftest import PG_SERVER, scratch_database
from prometheus_client import generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from observability.exporter import RUN_DURATION_BUCKETS, build_registry, positions_value
from trading.ledger import Ledger, OrderRecord, SignalRecord
from trading.models import Fill, OrderStatus, Side, SignalStatus, order_id_of, weights_hash

ROOT = Path(__file__).resolve().parents[1]
D0 = dt.date(2024, 3, 4)
D0_PREVIOUS = dt.date(2024, 3, 1)
D1 = dt.date(2024, 3, 5)
AT = dt.datetime(2024, 3, 5, 9, 30, tzinfo=dt.UTC)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}; have " + ", ".join(
        sorted(f"{n}{dict(ls)}" for n, ls in samples if n == name))
    return samples[key]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        assert response.status == 200
        return response.read().decode("utf-8")


# ---------------------------------------------------------------------------------------------
# Dagster: a job that succeeds, one that fails, an asset with a check evaluated three times
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DagsterWork:
    ok_job: str
    fail_job: str
    asset_job: str
    asset: str
    check: str
    started: float
    finished: float


class CheckConfig(dg.Config):
    passed: bool


@pytest.fixture(scope="module")
def dagster_work(pg_instance: dg.DagsterInstance) -> DagsterWork:
    """Runs in the shared session instance under names unique to this module."""
    tag = uuid.uuid4().hex[:8]
    asset_name, check_name = f"exporter_asset_{tag}", "values_positive"

    @dg.op(name=f"ok_op_{tag}")
    def ok_op() -> int:
        return 1

    @dg.op(name=f"fail_op_{tag}")
    def fail_op() -> None:
        raise RuntimeError("deliberate failure")

    ok_job = dg.GraphDefinition(name=f"exporter_ok_{tag}", node_defs=[ok_op]).to_job()
    fail_job = dg.GraphDefinition(name=f"exporter_fail_{tag}", node_defs=[fail_op]).to_job()

    @dg.asset(name=asset_name, check_specs=[dg.AssetCheckSpec(check_name, asset=asset_name)])
    def checked(config: CheckConfig) -> Iterator[Any]:
        yield dg.Output(1)
        yield dg.AssetCheckResult(check_name=check_name, passed=config.passed)

    asset_job_name = f"exporter_assets_{tag}"
    defs = dg.Definitions(assets=[checked],
                          jobs=[dg.define_asset_job(asset_job_name, selection=[checked])])
    asset_job = defs.resolve_job_def(asset_job_name)

    started = time.time()
    assert ok_job.execute_in_process(instance=pg_instance).success
    assert not fail_job.execute_in_process(instance=pg_instance, raise_on_error=False).success
    for passed in (False, True, False):      # latest evaluation failed, 2 failures in all
        result = asset_job.execute_in_process(
            instance=pg_instance,
            run_config={"ops": {asset_name: {"config": {"passed": passed}}}})
        assert result.success             # a failed (non-blocking) check does not fail the run
    return DagsterWork(ok_job.name, fail_job.name, asset_job_name, asset_name, check_name,
                       started, time.time())


# ---------------------------------------------------------------------------------------------
# Ledger: two accounts, signals, orders in every state, fills, a valuation, a kill switch
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ledger_url() -> Iterator[str]:
    with scratch_database("etf_exporter") as name:
        yield f"postgresql+psycopg://{PG_SERVER}/{name}"


def signal_record(signal_id: str, account: str, weights: dict[str, float],
                  status: SignalStatus, as_of: dt.date = D0) -> SignalRecord:
    reasons = [] if status is SignalStatus.APPROVED else [
        {"layer": "risk", "rule": "max_weight", "subject": "510300", "message": "too big"}]
    return SignalRecord(signal_id=signal_id, account_id=account, strategy="test",
                        as_of=as_of, weights=weights, weights_hash=weights_hash(weights),
                        status=status, reasons=reasons, data_version=None,
                        dagster_run_id=None)


def order(signal_id: str, account: str, symbol: str, quantity: int, price: float,
          status: OrderStatus = OrderStatus.PLANNED, reason: str | None = None) -> OrderRecord:
    return OrderRecord(order_id=order_id_of(signal_id, symbol, Side.BUY), signal_id=signal_id,
                       account_id=account, symbol=symbol, side=Side.BUY, quantity=quantity,
                       reference_price=price, session=D1, status=status, reason=reason)


def fill(fill_id: str, o: OrderRecord, quantity: int, price: float,
         session: dt.date = D1) -> Fill:
    return Fill(fill_id=fill_id, client_order_id=o.order_id, account_id=o.account_id,
                symbol=o.symbol, side=Side.BUY, quantity=quantity, price=price, commission=5.0,
                session=session, filled_at=AT)


@pytest.fixture(scope="module")
def ledger_book(ledger_url: str) -> Iterator[Ledger]:
    """Account A: fills after its last valuation (marked at fill prices). Account B: a
    valuation covering its fill (marked at that valuation), kill switch engaged."""
    book = Ledger(ledger_url, retry_seconds=10)
    book.migrate()
    actor = "test"
    book.open_account("acct-a", 1_000_000.0, actor=actor)
    book.open_account("acct-b", 500_000.0, actor=actor)
    # A stale valuation of A (before any fill): must not be used.
    book.record_valuation("acct-a", D0, cash=1_000_000.0, positions_value=0.0, actor=actor)

    book.record_signal(signal_record("sig-a", "acct-a", {"510300": 0.5, "159915": 0.5},
                                     SignalStatus.APPROVED), actor=actor)
    # Rejected, then approved after the fix: counted once in each status. Another session
    # than sig-a's: an account has one approved signal per session.
    book.record_signal(signal_record("sig-a2", "acct-a", {"510500": 1.0},
                                     SignalStatus.REJECTED, D0_PREVIOUS), actor=actor)
    book.record_signal(signal_record("sig-a2", "acct-a", {"510500": 1.0},
                                     SignalStatus.APPROVED, D0_PREVIOUS), actor=actor)
    book.record_signal(signal_record("sig-rej", "acct-a", {"512880": 1.0},
                                     SignalStatus.REJECTED), actor=actor)
    book.record_signal(signal_record("sig-b", "acct-b", {"588000": 1.0},
                                     SignalStatus.APPROVED), actor=actor)

    a1 = order("sig-a", "acct-a", "510300", 1000, 4.0)
    a2 = order("sig-a", "acct-a", "159915", 500, 2.0)
    a3 = order("sig-a", "acct-a", "512000", 300, 1.0, OrderStatus.REJECTED, "price band")
    a4 = order("sig-a2", "acct-a", "510500", 100, 6.0)
    b1 = order("sig-b", "acct-b", "588000", 100, 10.0)
    book.record_orders([a1, a2, a3], actor=actor)
    book.record_orders([a4, b1], actor=actor)
    for o in (a1, a2, b1):
        book.update_order(o.order_id, status=OrderStatus.SUBMITTED, actor=actor)
    book.record_fill(fill("f-a1", a1, 1000, 4.0), actor=actor)          # a1 filled
    book.record_fill(fill("f-a2", a2, 200, 2.1), actor=actor)           # a2 partially filled
    book.record_fill(fill("f-b1", b1, 100, 10.0), actor=actor)          # b1 filled
    book.record_valuation("acct-b", D1, cash=498_995.0, positions_value=1_050.0, actor=actor)
    book.set_kill_switch("acct-b", True, actor=actor, reason="test halt")
    yield book
    book.dispose()


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(pg_instance: dg.DagsterInstance, ledger_url: str, ledger_book: Ledger,
           dagster_work: DagsterWork) -> Iterator[int]:
    """The exporter's HTTP server on a free port, in a thread of this process."""
    registry = build_registry(pg_instance, ledger_url)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield server.server_port
    server.shutdown()
    thread.join(timeout=10)


def test_dagster_series(served: int, dagster_work: DagsterWork) -> None:
    text = scrape(served)
    samples = parse(text)
    w = dagster_work

    # runs, literally as Prometheus reads them
    assert f'etf_runs_total{{job="{w.fail_job}",status="FAILURE"}} 1.0' in text
    assert f'etf_runs_total{{job="{w.ok_job}",status="SUCCESS"}} 1.0' in text
    assert value(samples, "etf_runs_total", job=w.asset_job, status="SUCCESS") == 3.0
    assert ("etf_runs_total", frozenset({("job", w.ok_job), ("status", "FAILURE")})) \
        not in samples
    # the duration histogram: cumulative buckets ending in +Inf = count
    hist = {"job": w.ok_job, "status": "SUCCESS"}
    assert value(samples, "etf_run_duration_seconds_count", **hist) == 1.0
    assert value(samples, "etf_run_duration_seconds_bucket", le="+Inf", **hist) == 1.0
    assert value(samples, "etf_run_duration_seconds_bucket", le="3600.0", **hist) == 1.0
    buckets = [value(samples, "etf_run_duration_seconds_bucket", le=f"{float(b)}", **hist)
               for b in RUN_DURATION_BUCKETS]
    assert buckets == sorted(buckets)
    elapsed = w.finished - w.started
    assert 0.0 < value(samples, "etf_run_duration_seconds_sum", **hist) <= elapsed
    assert value(samples, "etf_run_duration_seconds_count",
                 job=w.fail_job, status="FAILURE") == 1.0

    # the asset: last materialisation inside the fixture's window, fresh
    last = value(samples, "etf_asset_last_materialization_timestamp_seconds", asset=w.asset)
    assert w.started <= last <= w.finished
    freshness = value(samples, "etf_asset_freshness_seconds", asset=w.asset)
    assert 0.0 <= freshness <= time.time() - w.started + 1.0

    # the check: evaluated failed, passed, failed
    assert value(samples, "etf_asset_check_failed", asset=w.asset, check=w.check) == 1.0
    assert value(samples, "etf_asset_check_failures_total", asset=w.asset, check=w.check) == 2.0

    for source in ("dagster_assets", "dagster_checks", "dagster_runs", "ledger"):
        assert value(samples, "etf_exporter_scrape_errors_total", source=source) == 0.0
        assert value(samples, "etf_exporter_scrape_duration_seconds", source=source) >= 0.0


def test_ledger_series(served: int) -> None:
    text = scrape(served)
    samples = parse(text)

    assert value(samples, "etf_signals_total", status="approved") == 3.0    # a, a2, b
    assert value(samples, "etf_signals_total", status="rejected") == 2.0    # a2 (before), rej
    assert value(samples, "etf_orders_total", status="filled") == 2.0       # a1, b1
    assert value(samples, "etf_orders_total", status="rejected") == 1.0     # a3
    assert value(samples, "etf_orders_total", status="cancelled") == 0.0
    assert value(samples, "etf_orders_total", status="expired") == 0.0
    assert value(samples, "etf_orders_open", status="partially_filled") == 1.0   # a2
    assert value(samples, "etf_orders_open", status="planned") == 1.0            # a4
    assert value(samples, "etf_orders_open", status="submitted") == 0.0
    assert "etf_fills_total 3.0" in text
    assert value(samples, "etf_fill_notional_cny_total") == pytest.approx(4000 + 420 + 1000)

    # A: 1,000,000 - (4,000 + 5) - (420 + 5); positions at fill prices (the valuation is stale)
    cash_a = 1_000_000 - 4_005 - 425
    assert 'etf_ledger_cash_cny{account="acct-a"} 995570.0' in text
    assert value(samples, "etf_ledger_positions_value_cny", account="acct-a") == \
        pytest.approx(1000 * 4.0 + 200 * 2.1)
    assert value(samples, "etf_ledger_equity_cny", account="acct-a") == \
        pytest.approx(cash_a + 4420)
    assert value(samples, "etf_ledger_gross_exposure_ratio", account="acct-a") == \
        pytest.approx(4420 / (cash_a + 4420))
    assert value(samples, "etf_kill_switch_engaged", account="acct-a") == 0.0

    # B: its valuation covers its only fill: marked at the valuation's close (1,050)
    assert value(samples, "etf_ledger_cash_cny", account="acct-b") == pytest.approx(498_995)
    assert value(samples, "etf_ledger_positions_value_cny", account="acct-b") == \
        pytest.approx(1_050)
    assert value(samples, "etf_ledger_equity_cny", account="acct-b") == pytest.approx(500_045)
    assert value(samples, "etf_ledger_gross_exposure_ratio", account="acct-b") == \
        pytest.approx(1_050 / 500_045)
    assert value(samples, "etf_kill_switch_engaged", account="acct-b") == 1.0


def test_values_are_computed_at_scrape_time(served: int, ledger_book: Ledger) -> None:
    before = parse(scrape(served))
    ledger_book.set_kill_switch("acct-a", True, actor="test", reason="scrape-time test")
    try:
        after = parse(scrape(served))
    finally:
        ledger_book.set_kill_switch("acct-a", False, actor="test", reason="scrape-time test")
    assert value(before, "etf_kill_switch_engaged", account="acct-a") == 0.0
    assert value(after, "etf_kill_switch_engaged", account="acct-a") == 1.0
    assert value(parse(scrape(served)), "etf_kill_switch_engaged", account="acct-a") == 0.0


def test_a_failing_source_is_counted_and_the_others_still_served(
        pg_instance: dg.DagsterInstance, dagster_work: DagsterWork,
        caplog: pytest.LogCaptureFixture) -> None:
    missing = f"postgresql+psycopg://{PG_SERVER}/etf_no_such_db_{uuid.uuid4().hex[:8]}"
    registry = build_registry(pg_instance, missing)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        first = parse(scrape(server.server_port))
        second = parse(scrape(server.server_port))
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert value(first, "etf_exporter_scrape_errors_total", source="ledger") == 1.0
    assert value(second, "etf_exporter_scrape_errors_total", source="ledger") == 2.0
    assert value(second, "etf_exporter_scrape_errors_total", source="dagster_runs") == 0.0
    assert not any(name.startswith(("etf_ledger_", "etf_fills", "etf_signals"))
                   for name, _ in second)
    assert value(second, "etf_runs_total", job=dagster_work.fail_job, status="FAILURE") == 1.0
    assert any(r.levelname == "ERROR" and "scraping ledger failed" in r.getMessage()
               for r in caplog.records)


def test_without_a_ledger_only_dagster_series(pg_instance: dg.DagsterInstance,
                                              dagster_work: DagsterWork) -> None:
    samples = parse(generate_latest(build_registry(pg_instance, None)).decode())
    assert value(samples, "etf_runs_total", job=dagster_work.ok_job, status="SUCCESS") == 1.0
    assert not any(name.startswith("etf_ledger_") for name, _ in samples)
    assert ("etf_exporter_scrape_errors_total", frozenset({("source", "ledger")})) \
        not in samples


def test_positions_value_choice() -> None:
    @dataclass
    class Valuation:
        session: dt.date
        recorded_at: dt.datetime
        positions_value: float

    @dataclass
    class LastFill:
        session: dt.date
        recorded_at: dt.datetime

    t = dt.datetime(2024, 3, 5, 16, tzinfo=dt.UTC)
    val = Valuation(D1, t, 1_050.0)
    assert positions_value(None, None, 7.0) == 7.0
    assert positions_value(val, None, 7.0) == 1_050.0
    assert positions_value(val, LastFill(D1, t - dt.timedelta(hours=1)), 7.0) == 1_050.0
    assert positions_value(val, LastFill(D1, t + dt.timedelta(minutes=1)), 7.0) == 7.0
    assert positions_value(val, LastFill(D1 + dt.timedelta(days=1), t), 7.0) == 7.0


def test_command_line_serves_and_stops_on_sigterm(
        pg_instance: dg.DagsterInstance, ledger_url: str, ledger_book: Ledger,
        dagster_work: DagsterWork) -> None:
    """``python -m observability.exporter`` against the same instance (DAGSTER_HOME) and ledger
    (ETF_POSTGRES_URL), port from ETF_EXPORTER_PORT; JSON logs; clean exit on SIGTERM."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DAGSTER_HOME": str(pg_instance.root_directory),
           "ETF_POSTGRES_URL": ledger_url, "ETF_EXPORTER_PORT": str(port),
           "ETF_EXPORTER_ADDRESS": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "observability.exporter"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        text = None
        while text is None:
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"exporter exited with {proc.returncode}: {err}")
            try:
                text = scrape(port)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        samples = parse(text)
        assert value(samples, "etf_runs_total", job=dagster_work.fail_job,
                     status="FAILURE") == 1.0
        assert value(samples, "etf_kill_switch_engaged", account="acct-b") == 1.0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    logs = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert any("serving /metrics" in r["message"] for r in logs)
    assert any("SIGTERM" in r["message"] for r in logs)

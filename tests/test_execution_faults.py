"""Faults on the execution path, on the real PostgreSQL and Redis: a run killed mid-way and
retried, PostgreSQL restarted during execution, Redis stopped, the kill switch pulled while a
signal is in flight, and bad signals. In every case: no duplicate order, no lost fill, a
consistent ledger, and the reason in the audit log."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import httpx
import pytest
from api_desk import JWT_SECRET, PASSWORD
from test_api_live import free_port, serve_api
from test_execution_pipeline import (
    NoQuotes,
    evaluate_sensor,
    materialization,
    materialize,
    run_request,
    step_metadata,
)

from api import security
from api.permissions import Role
from api.store import Audit, UserStore
from orchestration.definitions import account_of, build_definitions, resources_for, strategy_for
from resources.cache import CacheStats
from resources.deployment import deployed
from resources.execution import ExecutionResource
from resources.ledger import LedgerResource
from rotation.risk import RiskLimits
from trading import approval
from trading.executor import ExecutionRefused, execute_signal
from trading.ledger import Ledger, OrderRecord
from trading.models import OrderRequest, OrderStatus, SignalStatus, VenueOrder
from trading.venue import ExecutionVenue

ROOT = Path(__file__).resolve().parents[1]
REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
               "--save", "", "--appendonly", "no"]


class HookVenue:
    """A venue decorator that calls ``after_submit(n)`` after the n-th submission."""

    def __init__(self, inner: ExecutionVenue, after_submit: Callable[[int], None]) -> None:
        self.inner, self.after_submit, self.submits = inner, after_submit, 0
        self.name = inner.name

    def submit(self, order: OrderRequest) -> VenueOrder:
        result = self.inner.submit(order)
        self.submits += 1
        self.after_submit(self.submits)
        return result

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def approve(market, ledger_url: str, **execution) -> tuple[dg.Definitions, str]:
    defs = build(market, ledger_url, **execution)
    result = materialize(defs, market.instance, "approved_signal")
    meta = materialization(result, "approved_signal")
    assert meta["status"] == "approved", meta["reasons"]
    return defs, str(meta["signal_id"])


def run_direct(defs: dg.Definitions, signal_id: str,
               wrap: Callable[[ExecutionVenue], ExecutionVenue] | None = None):
    """What execute_signal_op runs, with a decorated venue."""
    from jobs.execution import run_signal

    settings = defs_settings(defs)
    resources = resources_for(settings)
    return run_signal(
        signal_id, ledger=resources["ledger"], execution=resources["execution"],
        market_data=resources["market_data"], cache=resources["cache"],
        clock=resources["clock"], account=account_of(settings, strategy_for(settings)),
        actor="test", dagster_run_id=None, warn=lambda m: None, cache_stats=CacheStats(),
        wrap_venue=wrap)


_SETTINGS: dict[int, object] = {}


def defs_settings(defs: dg.Definitions):
    return _SETTINGS[id(defs)]


def build(market, ledger_url: str, **execution) -> dg.Definitions:
    settings = market.settings(ledger_url, **execution)
    defs = build_definitions(settings)
    _SETTINGS[id(defs)] = settings
    return defs


def fill_next_day(market, ledger_url: str) -> dg.ExecuteInProcessResult:
    result = materialize(build(market, ledger_url, as_of=market.fill_day), market.instance,
                         "positions_report")
    assert result.success
    return result


def assert_consistent(ledger: Ledger, defs: dg.Definitions, signal_id: str, venue_url: str
                      ) -> None:
    """One venue order per ledger order, fills once each, positions and cash of the account
    of ``defs`` equal to the venue's book."""
    from trading.paper import PaperBroker

    account = ledger_account(defs)
    venue = PaperBroker(venue_url, NoQuotes(), strategy_for(defs_settings(defs)).cost_model)
    orders = ledger.orders(signal_id=signal_id)
    ids = [o.order_id for o in orders]
    assert len(ids) == len(set(ids))
    fills = ledger.fills(account)
    assert len({f.fill_id for f in fills}) == len(fills)
    children: dict[str, list[OrderRecord]] = {}
    for o in orders:
        if o.parent_order_id is not None:
            children.setdefault(o.parent_order_id, []).append(o)
    for order in orders:
        if order.order_id in children:    # a TWAP parent is sent as its children
            kids = children[order.order_id]
            assert sum(k.quantity for k in kids) == order.quantity
            assert order.filled_quantity == sum(k.filled_quantity for k in kids)
            if all(k.status.is_final for k in kids):
                assert order.status.is_final, (order.status, [k.status for k in kids])
            continue
        remote = venue.order(order.order_id)
        if order.venue_order_id is None:  # never sent: kill switch, or its session closed
            assert remote is None
            assert order.status in {OrderStatus.CANCELLED, OrderStatus.EXPIRED}
            continue
        assert remote is not None, f"{order.order_id} never reached the venue"
        assert remote.filled_quantity == sum(f.quantity for f in fills
                                             if f.client_order_id == order.order_id)
    assert venue.positions(account) == {s: p.quantity
                                        for s, p in ledger.positions(account).items()}
    assert venue.cash(account) == pytest.approx(ledger.cash(account), abs=1e-6)


def test_killed_run_is_retried_without_duplicates(execution_market, ledger_url) -> None:
    market = execution_market
    defs, signal_id = approve(market, ledger_url)
    # A separate process submits the first order and then hangs; it is killed with SIGKILL.
    kill_after_submits(market, ledger_url, signal_id, 1)
    ledger = Ledger(ledger_url)
    try:
        orders = ledger.orders(signal_id=signal_id)
        assert len(orders) >= 2
        # Killed between the venue's acknowledgement and the ledger's update of the first
        # order: the ledger still says planned.
        assert ledger.execution(signal_id).status == "running"  # type: ignore[union-attr]
        # The retry (a new run of the same request) resubmits: the venue de-duplicates.
        request = evaluate_sensor(defs, market.instance, None).run_requests[0]
        retried = run_request(defs, market.instance, request)
        assert retried.success
        assert all(o.status is OrderStatus.SUBMITTED for o in ledger.orders(signal_id=signal_id))
        assert ledger.execution(signal_id).status == "completed"  # type: ignore[union-attr]
        fill_next_day(market, ledger_url)
        assert len(ledger.fills(ledger_account(defs))) == len(orders)
        assert_consistent(ledger, defs, signal_id, ledger_url)
    finally:
        ledger.dispose()


def kill_after_submits(market, ledger_url: str, signal_id: str, submits: int,
                       **execution: object) -> None:
    """A worker process that executes ``signal_id`` (settings ``execution``), hangs after its
    ``submits``-th venue submission and is killed there with SIGKILL, as a lost run worker."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from pathlib import Path
        from conftest import ExecutionMarket
        import test_execution_faults as t
        market = ExecutionMarket(Path({str(market.home)!r}), Path({str(market.dataset)!r}),
                                 None, Path({str(market.shared)!r}))
        defs = t.build(market, {ledger_url!r}, **{execution!r})
        def hang(n):
            if n == {submits}:
                print("submitted", flush=True)
                time.sleep(600)
        t.run_direct(defs, {signal_id!r}, lambda v: t.HookVenue(v, hang))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            cwd=ROOT, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "submitted", "the worker never submitted"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)


def ledger_account(defs: dg.Definitions) -> str:
    return deployed(defs, "ledger", LedgerResource).account_id


def _pg_restart() -> None:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main",
                    "restart"], check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(shutil.which("pg_ctlcluster") is None or not os.path.isdir(
    "/etc/postgresql"), reason="needs pg_ctlcluster to restart the local PostgreSQL")
def test_postgres_restart_during_execution(execution_market, ledger_url) -> None:
    market = execution_market
    defs, signal_id = approve(market, ledger_url)

    def restart(n: int) -> None:
        if n == 1:
            _pg_restart()

    report, _ = run_direct(defs, signal_id, lambda v: HookVenue(v, restart))
    assert report.status == "completed"
    ledger = Ledger(ledger_url)
    try:
        orders = ledger.orders(signal_id=signal_id)
        assert len(orders) >= 2
        assert all(o.status is OrderStatus.SUBMITTED for o in orders)
        # Running it again after the restart changes nothing.
        again, _ = run_direct(defs, signal_id)
        assert again.submitted == 0
        fill_next_day(market, ledger_url)
        assert len(ledger.fills(ledger_account(defs))) == len(orders)
        assert_consistent(ledger, defs, signal_id, ledger_url)
    finally:
        ledger.dispose()


@pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                    reason="needs redis-server and redis-cli to stop and restart Redis")
def test_redis_stopped_runs_uncached_and_locks_in_postgres(execution_market,
                                                           ledger_url) -> None:
    market = execution_market
    defs, signal_id = approve(market, ledger_url)
    warm = materialize(defs, market.instance, "target_portfolio")
    assert materialization(warm, "target_portfolio")["cache_hits"] == 1
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True,
                   timeout=30)
    try:
        cold = materialize(defs, market.instance, "target_portfolio")
        assert cold.success
        meta = materialization(cold, "target_portfolio")
        assert (meta["cache_hits"], meta["cache_misses"]) == (0, 1)
        assert str(meta["cache"]).startswith("unavailable")
        request = evaluate_sensor(defs, market.instance, None).run_requests
        request = [r for r in request if r.run_key == signal_id]
        executed = run_request(defs, market.instance, request[0])
        assert executed.success
        assert step_metadata(executed)["lock"] == "postgres"
    finally:
        subprocess.run(REDIS_START, check=True, capture_output=True, timeout=30)
        for _ in range(50):
            if subprocess.run(["redis-cli", "ping"], capture_output=True,
                              text=True).stdout.strip() == "PONG":
                break
            time.sleep(0.1)
    ledger = Ledger(ledger_url)
    try:
        fill_next_day(market, ledger_url)
        assert_consistent(ledger, defs, signal_id, ledger_url)
        assert len(ledger.fills(ledger_account(defs))) == len(ledger.orders(
            signal_id=signal_id))
    finally:
        ledger.dispose()


def test_kill_switch_stops_a_signal_in_flight(execution_market, ledger_url) -> None:
    market = execution_market
    defs, signal_id = approve(market, ledger_url)

    def pull(n: int) -> None:
        if n == 1:  # the operator launches kill_switch_job while the first order is out
            result = defs.resolve_job_def("kill_switch_job").execute_in_process(
                instance=market.instance, run_config={"ops": {"set_kill_switch": {"config": {
                    "engaged": True, "reason": "desk: halt all trading"}}}})
            assert result.success

    report, _ = run_direct(defs, signal_id, lambda v: HookVenue(v, pull))
    assert report.status == "halted"
    ledger = Ledger(ledger_url)
    try:
        orders = ledger.orders(signal_id=signal_id)
        assert orders[0].status is OrderStatus.CANCELLED  # cancelled at the venue
        assert all(o.status is OrderStatus.CANCELLED for o in orders[1:])
        assert all("halt all trading" in (o.reason or "") for o in orders[1:])
        assert ledger.execution(signal_id).status == "halted"  # type: ignore[union-attr]
        actions = [r["action"] for r in ledger.audit_log()]
        assert "kill_switch_engaged" in actions
        assert actions.count("order_submitted") == 1
        # Nothing fills the next day, and a retry submits nothing while the switch is on.
        again, _ = run_direct(defs, signal_id)
        assert again.status == "halted" and again.submitted == 0
        fill_next_day(market, ledger_url)
        assert ledger.fills(ledger_account(defs)) == []
        assert_consistent(ledger, defs, signal_id, ledger_url)
    finally:
        ledger.dispose()


def test_kill_switch_by_environment_submits_nothing(execution_market, ledger_url) -> None:
    market = execution_market
    _, signal_id = approve(market, ledger_url)
    halted = build(market, ledger_url, kill_switch=True)
    request = next(r for r in evaluate_sensor(halted, market.instance, None).run_requests
                   if r.run_key == signal_id)
    result = run_request(halted, market.instance, request)
    assert result.success
    meta = step_metadata(result)
    assert (meta["status"], meta["submitted"]) == ("halted", 0)
    ledger = Ledger(ledger_url)
    try:
        assert ledger.orders(signal_id=signal_id) == []
        rows = ledger.audit_log(entity_id=signal_id)
        assert rows[-1]["action"] == "execution_halted"
        assert "ETF_EXECUTION__KILL_SWITCH" in str(rows[-1]["reason"])
    finally:
        ledger.dispose()


BAD = {
    "weights_sum": {"510300": 0.6, "510500": 0.6},
    "nan_weight": {"510300": float("nan"), "510500": 0.5},
    "unknown_fund": {"510300": 0.5, "999999": 0.5},
    "negative_weight": {"510300": 0.7, "510500": -0.2},
}


@pytest.mark.parametrize("rule", [*BAD, "stale_signal", "failed_check"])
def test_bad_signals_are_rejected_and_never_executed(ledger_url, rule: str) -> None:
    ledger = Ledger(ledger_url)
    ledger.migrate()
    ledger.open_account("paper-main", 1_000_000.0, actor="test")
    day = dt.date(2023, 12, 29)
    facts = approval.SignalFacts(
        strategy="etf_rotation_default", account_id="paper-main", as_of=day,
        weights=BAD.get(rule, {"510300": 0.5, "510500": 0.5}), latest_session=day,
        sessions_between=0, data_as_of=day, universe={"510300", "510500", "518880"},
        halted=[], failed_checks=[])
    if rule == "stale_signal":
        facts = approval.SignalFacts(**{**facts.__dict__, "latest_session": dt.date(2024, 1, 3),
                                        "sessions_between": 2})
    if rule == "failed_check":
        facts = approval.SignalFacts(**{**facts.__dict__, "failed_checks": [
            "raw_bars:prices_positive (2023-12-29: failed)"]})
    try:
        record = approval.decide(facts, ledger, RiskLimits(), actor="test")
        assert record.status is SignalStatus.REJECTED
        assert rule in {r["rule"] for r in record.reasons}
        rows = ledger.audit_log(entity_id=record.signal_id)
        assert [r["action"] for r in rows] == ["signal_rejected"]
        assert rule in str(rows[0]["details"]) + str(rows[0]["reason"])
        with pytest.raises(ExecutionRefused, match="rejected"):
            execute_signal(ledger=ledger, venue=_Unreachable(), signal_id=record.signal_id,
                           account_id="paper-main", market=None,  # type: ignore[arg-type]
                           limits=RiskLimits(), costs=None,  # type: ignore[arg-type]
                           actor="test")
        assert ledger.orders(signal_id=record.signal_id) == []
    finally:
        ledger.dispose()


class _Unreachable:
    """A venue that must never be reached."""

    name = "unreachable"

    def __getattr__(self, name: str):
        raise AssertionError(f"venue.{name} called for a rejected signal")


def evaluate_replay_check(instance: dg.DagsterInstance, passed: bool) -> None:
    """An evaluation of oos_backtest's blocking replay check, made by a run (the gate ignores
    evaluations reported without one)."""

    @dg.asset_check(asset="oos_backtest", name="engine_matches_vectorbt", blocking=True)
    def replay() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=passed)

    dg.materialize([dg.AssetSpec("oos_backtest"), replay], instance=instance,
                   selection=dg.AssetSelection.all_asset_checks(), raise_on_error=False)


def test_failed_upstream_check_rejects_through_dagster(execution_market, ledger_url) -> None:
    market = execution_market
    defs = build(market, ledger_url)
    instance = market.instance
    evaluate_replay_check(instance, passed=False)
    try:
        result = materialize(defs, instance, "approved_signal")
        meta = materialization(result, "approved_signal")
        assert meta["status"] == "rejected"
        assert meta["rejected_rules"] == ["failed_check"]
        assert "engine_matches_vectorbt" in str(meta["reasons"])
        ledger = Ledger(ledger_url)
        assert ledger.orders(account_id="paper-main") == []
        ledger.dispose()
    finally:
        evaluate_replay_check(instance, passed=True)


def test_execution_resource_is_the_interface() -> None:
    from resources.execution import PaperExecution

    assert issubclass(PaperExecution, ExecutionResource)
    with pytest.raises(NotImplementedError):
        ExecutionResource().venue(None, None)  # type: ignore[arg-type]


@contextmanager
def desk_api(ledger_url: str, home: Path) -> Iterator[str]:
    """``python -m api`` on the execution's ledger with a trader and a viewer (password
    PASSWORD): the desk's front door as deployed, in its own process."""
    ledger = Ledger(ledger_url)
    try:
        ledger.migrate()
        users = UserStore(ledger)
        for role in (Role.TRADER, Role.VIEWER):
            users.create_user(f"desk-{role.value}", security.hash_password(PASSWORD), role,
                              Audit(actor="test", action="user_created", entity="api_user",
                                    entity_id=f"desk-{role.value}", reason="kill switch e2e",
                                    details={}))
    finally:
        ledger.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETF_")}
    env |= {"ETF_HOME": str(home), "ETF_POSTGRES_URL": ledger_url,
            "API_PORT": str(free_port()), "ETF_API__JWT_SECRET": JWT_SECRET}
    with serve_api(env, home / "api.log") as url:
        yield url


def signed_in(url: str, role: Role) -> dict[str, str]:
    token = httpx.post(f"{url}/api/v1/auth/token", data={
        "username": f"desk-{role.value}", "password": PASSWORD}).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def test_a_trader_halts_an_execution_in_flight_through_the_api(
        execution_market, ledger_url, tmp_path: Path) -> None:
    market = execution_market
    defs, signal_id = approve(market, ledger_url)
    account = ledger_account(defs)
    engage = f"/api/v1/accounts/{account}/kill-switch/engage"
    with desk_api(ledger_url, tmp_path) as url:
        trader, viewer = signed_in(url, Role.TRADER), signed_in(url, Role.VIEWER)
        answers: dict[str, httpx.Response] = {}

        def pull(n: int) -> None:
            if n == 1:  # the first order is out: the viewer tries, then the trader halts
                answers["viewer"] = httpx.post(f"{url}{engage}", headers=viewer,
                                               json={"reason": "viewer pressing the button"})
                answers["trader"] = httpx.post(f"{url}{engage}", headers=trader,
                                               json={"reason": "desk: halt from the console"})

        report, _ = run_direct(defs, signal_id, lambda v: HookVenue(v, pull))
    assert answers["viewer"].status_code == 403, answers["viewer"].text
    assert answers["trader"].status_code == 200 and answers["trader"].json()["engaged"]
    assert report.status == "halted"
    ledger = Ledger(ledger_url)
    try:
        orders = ledger.orders(signal_id=signal_id)
        assert orders[0].status is OrderStatus.CANCELLED          # cancelled at the venue
        assert all(o.status is OrderStatus.CANCELLED for o in orders[1:])
        assert all("halt from the console" in (o.reason or "") for o in orders[1:])
        audit = ledger.audit_log()
        assert [r["action"] for r in audit].count("order_submitted") == 1
        engaged = [r for r in audit if r["action"] == "kill_switch_engaged"]
        assert [r["actor"] for r in engaged] == ["api:desk-trader"]
        denied = [r for r in audit if r["action"] == "access_denied"]
        assert [(r["actor"], r["entity_id"]) for r in denied] == [
            ("api:desk-viewer", "POST /api/v1/accounts/{account_id}/kill-switch/engage")]
        assert ledger.kill_switch(account).engaged
        assert_consistent(ledger, defs, signal_id, ledger_url)
    finally:
        ledger.dispose()

"""The intraday slice-end driver (issue 18 item 4): ``slice_end_sensor`` → ``slice_end_job`` →
``trading.slice_end.close_slice`` on the real vn.py venue process, the real PostgreSQL ledger
and a dagster-postgres instance, with the real stored bars as the job's market data (through
the Redis cache).

The venue's market is the test venue's, left resting the evening before the session: nothing
fills until the test replays the session, so each slice ends with its child unfilled. The
deployment's clock is set to instants of the session (the sensor's ticks).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from conftest import PG_SERVER, TEST_CACHE_SECRET, drop_database, new_database
from test_venue_contract import CASH, COSTS, PREVIOUS, SESSION, RealMarket
from test_venue_contract import market as market
from test_vnpy_venue import ReplayMarket, VenueProcess, VenueProcesses, _orders_with
from test_vnpy_venue import processes as processes
from test_vnpy_venue import replay_market as replay_market
from test_vwap import LIMITS, _book_matches, _executed, _signal, _view
from test_vwap import ledger as ledger

from jobs.execution import ACCOUNT_TAG
from jobs.slice_end import PARENT_TAG, SLICE_END_TAG, SLICE_TAG, slice_end_job
from orchestration.dagster_storage import instance_yaml
from orchestration.deployment import market_data_resource
from orchestration.settings import load_settings
from resources.cache import RedisCache
from resources.clock import ClockResource
from resources.execution import VnpyExecution
from resources.ledger import LedgerResource
from rotation.risk import RiskLimits
from sensors.slice_ends import slice_end_sensor
from trading.account import Account
from trading.executor import execute_signal
from trading.ledger import Ledger, OrderRecord
from trading.models import OrderStatus
from trading.session_clock import slice_end
from trading.slice_end import REASON_SLICE_END, closes_slices, replacement_id, slices_due
from trading.vnpy_venue import VnpyVenue
from trading.volume_profile import profile_from_curve

REDIS_URL = os.environ.get("ETF_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")
SLICES = 3


class At(ClockResource):
    """The deployment's clock at one instant of the session (a sensor tick)."""

    instant: str

    def now(self) -> pd.Timestamp:
        return pd.Timestamp(self.instant).tz_convert(self.timezone)


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    name = new_database("etf_slice_dagster")
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text(
        instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{name}"), encoding="utf-8")
    try:
        with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as made:
            yield made
    finally:
        drop_database(name)


def account_of(account_id: str, venue: str) -> Account:
    return Account(account_id=account_id, initial_cash=CASH, venue=venue, costs=COSTS,
                   limits=RiskLimits(lot_size=COSTS.lot_size), quote_lookback_sessions=5)


class Driver:
    """The sensor and the job of one vn.py account, resourced as the deployment resources
    them, at the clock's instant of each tick."""

    def __init__(self, account: Account, proc: VenueProcess, ledger_url: str,
                 shared_data: Path, instance: dg.DagsterInstance, home: Path,
                 replay_clock: bool = False) -> None:
        self.account, self.instance = account, instance
        self.job = slice_end_job(account)
        self.sensor = slice_end_sensor(self.job, account)
        endpoint = proc.endpoint
        settings = load_settings(
            home=home, redis_url=REDIS_URL,
            cache_secret=TEST_CACHE_SECRET,
            market_data={"source": "files", "dataset": "cn_etf_morphkyan_raw",
                         "files_root": str(shared_data / "cn_etf_morphkyan_raw")})
        self.resources: dict[str, Any] = {
            "ledger": LedgerResource(url=ledger_url, account_id=account.account_id,
                                     initial_cash=CASH),
            "execution": VnpyExecution(account_id=account.account_id,
                                       rep_address=endpoint.rep_address,
                                       pub_address=endpoint.pub_address,
                                       replay_clock=replay_clock, twap_slices=SLICES),
            "market_data": market_data_resource(settings),
            "cache": RedisCache.for_settings(REDIS_URL, settings.cache_secret),
        }
        self.cursor: str | None = None

    def tick(self, at: dt.datetime) -> dg.SensorResult | dg.SkipReason:
        resources = {**self.resources, "clock": At(instant=at.isoformat())}
        with dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                     resources=resources) as context:
            result = self.sensor(context)
        assert isinstance(result, dg.SensorResult | dg.SkipReason), result
        if isinstance(result, dg.SensorResult) and result.cursor is not None:
            self.cursor = result.cursor
        return result

    def requests(self, at: dt.datetime) -> list[dg.RunRequest]:
        result = self.tick(at)
        return list(result.run_requests or []) if isinstance(result, dg.SensorResult) else []

    def run(self, request: dg.RunRequest, at: dt.datetime) -> dict[str, Any]:
        """The launched run (as the daemon launches it), its step output's metadata."""
        resources = {**self.resources, "clock": At(instant=at.isoformat())}
        result = self.job.execute_in_process(
            instance=self.instance, run_config=request.run_config, tags=request.tags,
            resources=resources, raise_on_error=False)
        assert result.success, result.get_step_failure_events()
        outputs = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        return {k: v.value for k, v in outputs[-1].event_specific_data.metadata.items()}


def resting_execution(ledger: Ledger, proc: VenueProcess, replay_market: ReplayMarket,
                      account: str) -> tuple[OrderRecord, list[OrderRecord]]:
    """A TWAP execution in SLICES slices sent the evening before the session: the children
    rest at the venue. Returns the parent and its children."""
    resting = VnpyVenue([proc.endpoint], COSTS, rpc_timeout=5.0, ack_timeout=5.0,
                        replay_clock=True, replay_through=PREVIOUS)
    weights = {"510300": 0.5}
    sid = _signal(ledger, account, weights)
    try:
        report = execute_signal(ledger=ledger, venue=resting, signal_id=sid, account_id=account,
                                market=_view(replay_market.real.quotes, weights), limits=LIMITS,
                                costs=COSTS, actor="test", twap_slices=SLICES,
                                profile=profile_from_curve())
    finally:
        resting.close()
    assert report.status == "completed", report.summary()
    orders = ledger.orders(signal_id=sid)
    parent = next(o for o in orders if o.parent_order_id is None)
    children = [o for o in orders if o.parent_order_id == parent.order_id]
    assert [c.status for c in children] == [OrderStatus.SUBMITTED] * SLICES
    return parent, children


def test_the_driver_closes_each_slice_once_on_the_vnpy_venue(
        processes: VenueProcesses, replay_market: ReplayMarket, ledger: Ledger,
        ledger_url: str, shared_data: Path, instance: dg.DagsterInstance,
        market: RealMarket, tmp_path: Path) -> None:
    account_id = f"sd-{uuid.uuid4().hex[:8]}"
    ledger.open_account(account_id, CASH, actor="test")
    proc = processes.start(account_id, CASH)
    parent, (c1, c2, c3) = resting_execution(ledger, proc, replay_market, account_id)
    # A paper account in the same ledger with a slice past its end: not this driver's.
    paper, _, _ = _executed(ledger, ledger_url, market, {"510300": 0.5}, 2)
    driver = Driver(account_of(account_id, "vnpy"), proc, ledger_url, shared_data, instance,
                    tmp_path)
    end1, end2, end3 = (slice_end(SESSION, k, SLICES) for k in (1, 2, 3))

    # Before slice 1 ends: nothing.
    skipped = driver.tick(end1 - dt.timedelta(seconds=1))
    assert isinstance(skipped, dg.SkipReason)
    # At its end: one run for (parent, 1), named by its run key and tags.
    (request,) = driver.requests(end1)
    assert request.run_key == f"slice_end:{parent.order_id}:1"
    assert request.tags == {ACCOUNT_TAG: account_id, PARENT_TAG: parent.order_id,
                            SLICE_TAG: "1", SLICE_END_TAG: f"{parent.order_id}:1"}
    # A second tick before the daemon launched it asks for the same key (launched once) ...
    (again,) = driver.requests(end1 + dt.timedelta(seconds=30))
    assert again.run_key == request.run_key
    # ... and once its run is queued, nothing more.
    queued = driver.instance.create_run_for_job(driver.job, run_config=request.run_config,
                                                tags=request.tags)
    assert driver.requests(end1 + dt.timedelta(seconds=60)) == []
    # Nor for a later slice of the parent while it is being closed: its slices close in order.
    assert driver.requests(end2) == []
    driver.instance.delete_run(queued.run_id)
    # Slice 2 has ended too, slice 1 still open: slice 1 first, slice 2 once it is closed.
    (first,) = driver.requests(end2)
    assert first.run_key == request.run_key
    # A run that failed with the slice still due is not launched again: an operator
    # re-executes it (said once, the key kept in the cursor).
    failed = driver.instance.create_run_for_job(driver.job, run_config=request.run_config,
                                                tags=request.tags,
                                                status=dg.DagsterRunStatus.FAILURE)
    assert driver.requests(end1 + dt.timedelta(seconds=60)) == []
    assert driver.cursor == f'["{parent.order_id}:1"]'
    driver.instance.delete_run(failed.run_id)

    meta = driver.run(request, end1 + dt.timedelta(seconds=60))
    r1 = ledger.order(replacement_id(c1, 2))
    assert r1 is not None and (r1.replaces, r1.slice_index, r1.quantity, r1.status) == \
        (c1.order_id, 2, c1.quantity, OrderStatus.SUBMITTED)
    assert meta["cancelled"] == [c1.order_id] and meta["sent"] == [r1.order_id]
    assert meta["not_sent"] == [] and meta["kill_switch"] == "released"
    assert meta["new_fills"] == 0
    stored = ledger.order(c1.order_id)
    assert stored is not None and stored.status is OrderStatus.CANCELLED
    assert stored.reason is not None and stored.reason.startswith(REASON_SLICE_END)
    # Who acted: the run.
    (run,) = driver.instance.get_runs(dg.RunsFilter(job_name=driver.job.name,
                                                    tags={SLICE_END_TAG: f"{parent.order_id}:1"}))
    trail = ledger.audit_log(entity="order", entity_id=r1.order_id)
    assert {row["actor"] for row in trail} == {f"dagster:{run.run_id}"}
    # The next tick: slice 1 is closed, slice 2 has not ended.
    assert driver.requests(end1 + dt.timedelta(seconds=90)) == []
    assert driver.requests(end2 - dt.timedelta(seconds=1)) == []
    assert len(_orders_with(proc.state_dir, r1.order_id)) == 1

    # Slice 2 ends with the kill switch engaged: c2 and r1 are cancelled, nothing is sent.
    ledger.set_kill_switch(account_id, True, actor="desk:risk", reason="drill")
    (request,) = driver.requests(end2)
    meta = driver.run(request, end2)
    assert sorted(meta["cancelled"]) == sorted([c2.order_id, r1.order_id])
    carried = sorted([replacement_id(c2, 3), replacement_id(r1, 3)])
    assert sorted(meta["replacements"]) == sorted(meta["not_sent"]) == carried
    assert meta["sent"] == []
    assert meta["kill_switch"] == "kill switch engaged by desk:risk: drill"
    for order_id in carried:
        held = ledger.order(order_id)
        assert held is not None and held.status is OrderStatus.CANCELLED
        assert held.reason == "kill switch engaged by desk:risk: drill"
        assert _orders_with(proc.state_dir, order_id) == []
    assert driver.requests(end2 + dt.timedelta(seconds=30)) == []
    ledger.set_kill_switch(account_id, False, actor="desk:risk", reason="drill over")

    # The session trades: c3 fills at the venue; slice 3's end records the fill, carries none.
    live = VnpyVenue([proc.endpoint], COSTS, rpc_timeout=5.0, ack_timeout=5.0,
                     replay_clock=True)
    try:
        live.fills(account_id, SESSION)
        # The paper account's two slices are due too: not this driver's, nor any driver's.
        assert len(slices_due(ledger, paper, end3)) == 2
        (request,) = driver.requests(end3)
        assert request.tags[PARENT_TAG] == parent.order_id and request.tags[SLICE_TAG] == "3"
        meta = driver.run(request, end3)
        assert meta["cancelled"] == [c3.order_id] and meta["replacements"] == []
        assert meta["new_fills"] >= 1 and meta["dropped_units"] == 0
        assert driver.requests(end3 + dt.timedelta(minutes=5)) == []
        orders = ledger.orders(signal_id=parent.signal_id)
        stored_c3 = next(o for o in orders if o.order_id == c3.order_id)
        assert stored_c3.status is OrderStatus.FILLED
        stored_parent = next(o for o in orders if o.order_id == parent.order_id)
        assert stored_parent.filled_quantity == c3.quantity
        assert sum(f.quantity for f in ledger.fills(account_id)) == c3.quantity
        # The ledger is the venue's: every order's state and fills, positions and cash.
        # (the replacements the kill switch held never reached it.)
        _book_matches(ledger, live, account_id,
                      [o for o in orders if o.order_id not in carried])
    finally:
        live.close()


def test_no_driver_for_a_paper_account_nor_on_the_replay_clock(
        processes: VenueProcesses, replay_market: ReplayMarket, ledger: Ledger,
        ledger_url: str, shared_data: Path, instance: dg.DagsterInstance,
        tmp_path: Path) -> None:
    """The paper broker fills each child at its scheduled time: a paper account has neither
    the job nor the sensor. The test venue on its replay clock moves when an execution replays
    a session, not by the clock: the sensor closes nothing there."""
    assert not closes_slices("paper") and closes_slices("vnpy")
    paper = account_of("paper-x", "paper")
    with pytest.raises(ValueError, match="account paper-x trades on venue 'paper'"):
        slice_end_job(paper)
    with pytest.raises(ValueError, match="account paper-x trades on venue 'paper'"):
        slice_end_sensor(slice_end_job(account_of("vnpy-x", "vnpy")), paper)

    account_id = f"sr-{uuid.uuid4().hex[:8]}"
    ledger.open_account(account_id, CASH, actor="test")
    proc = processes.start(account_id, CASH)
    resting_execution(ledger, proc, replay_market, account_id)
    replayed = Driver(account_of(account_id, "vnpy"), proc, ledger_url, shared_data, instance,
                      tmp_path, replay_clock=True)
    skipped = replayed.tick(slice_end(SESSION, SLICES, SLICES))
    assert isinstance(skipped, dg.SkipReason) and "replay clock" in str(skipped.skip_message)

"""The daily schedule over real sessions with exchange holidays between them (issue 12).

``daily_after_close`` is evaluated at each of its ticks over two stretches of real XSHG sessions
of cn_etf_morphkyan_raw: around New Year 2024 (2024-01-01, a weekday holiday) and around the
2024 Spring Festival (closed 2024-02-09 .. 2024-02-16). Every run request it makes is executed
as the daemon would launch it, then ``approved_signal_sensor`` and the execution runs it asks
for. At the end every partition is materialised (holidays empty), every session has its signal
decided and executed, and the ledger agrees with the paper venue unit for unit. A session that
was never run, or that the source never published, fails naming the session.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd
import pytest
import yaml
from conftest import PG_SERVER, ROOT, TEST_CACHE_SECRET, scratch_database
from dagster._core.definitions.schedule_definition import ScheduleExecutionData
from dagster._utils.schedules import cron_string_iterator
from test_execution_pipeline import NoQuotes, evaluate_sensor, run_request

from assets.partitions import session_partitions
from assets.signals import BOOK_CHECK
from jobs.market import after_close_schedule, market_data_job
from orchestration.dagster_storage import instance_yaml
from orchestration.definitions import build_definitions, strategy_for
from orchestration.runs import RANGE_END_TAG, RANGE_START_TAG, rebuild_research, run_range
from orchestration.settings import Settings, load_settings
from resources.parquet_io import PartitionedParquetIOManager
from rotation.calendar import TradingCalendar, get_calendar
from trading.ledger import Ledger
from trading.models import SignalStatus
from trading.paper import PaperBroker

SHANGHAI = "Asia/Shanghai"
CRON = "30 16 * * 1-5"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

START = "2021-01-04"
BACKFILLED_TO = "2023-12-26"
# Two stretches of evenings (the schedule's ticks, Monday..Friday): 7 sessions around New Year
# 2024 and 8 around the Spring Festival; the market data between them is one backfill run.
NEW_YEAR = ("2023-12-27", "2024-01-05")
CAUGHT_UP = ("2024-01-08", "2024-02-02")
SPRING_FESTIVAL = ("2024-02-05", "2024-02-22")
NEXT_MORNING = "2024-02-23"
AFTER_A_MISSED_SESSION = "2024-02-26"
HOLIDAYS = ["2024-01-01", "2024-02-09", "2024-02-12", "2024-02-13", "2024-02-14", "2024-02-15",
            "2024-02-16"]
SESSION_ASSETS = ("raw_bars", "adjusted_bars", "cross_sections")


# -- the schedule's run requests (no services) ------------------------------------------------
@pytest.fixture(scope="module")
def xshg() -> TradingCalendar:
    return get_calendar("XSHG", "2005-01-01")


def evening(day: str) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(16, 30),
                               tzinfo=ZoneInfo(SHANGHAI))


def requested_keys(request: dg.RunRequest, partitions: dg.PartitionsDefinition) -> list[str]:
    """The partitions a run request targets: its partition key or its partition range."""
    if request.partition_key is not None:
        return [request.partition_key]
    assert RANGE_START_TAG in request.tags and RANGE_END_TAG in request.tags, request.tags
    span = dg.PartitionKeyRange(request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG])
    return list(partitions.get_partition_keys_in_range(span))


@pytest.mark.parametrize(("day", "keys"), [
    ("2024-01-03", ["2024-01-03"]),
    ("2024-01-08", ["2024-01-08"]),  # a Monday after a plain weekend
    ("2024-01-02", ["2024-01-01", "2024-01-02"]),
    ("2024-02-19", ["2024-02-09", "2024-02-12", "2024-02-13", "2024-02-14", "2024-02-15",
                    "2024-02-16", "2024-02-19"]),
    ("2024-10-08", ["2024-10-01", "2024-10-02", "2024-10-03", "2024-10-04", "2024-10-07",
                    "2024-10-08"]),
])
def test_a_session_run_covers_the_holidays_before_it(xshg: TradingCalendar, day: str,
                                                     keys: list[str]) -> None:
    partitions = session_partitions(xshg, START, SHANGHAI)
    schedule = after_close_schedule(market_data_job(), xshg, partitions, CRON, SHANGHAI)
    request = schedule(dg.build_schedule_context(scheduled_execution_time=evening(day)))
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == f"market_data_job:{day}"
    assert requested_keys(request, partitions) == keys


def test_no_holiday_before_the_first_partition(xshg: TradingCalendar) -> None:
    partitions = session_partitions(xshg, "2024-01-01", SHANGHAI)  # first key 2024-01-02
    schedule = after_close_schedule(market_data_job(), xshg, partitions, CRON, SHANGHAI)
    request = schedule(dg.build_schedule_context(scheduled_execution_time=evening("2024-01-02")))
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "2024-01-02"
    before = schedule(dg.build_schedule_context(scheduled_execution_time=evening("2023-12-29")))
    assert isinstance(before, dg.SkipReason)
    assert "before the first partition (2024-01-02)" in str(before.skip_message)


# -- end to end on real data ------------------------------------------------------------------
class DailyMarket:
    """cn_etf_morphkyan_raw backfilled from START to BACKFILLED_TO and researched (walk-forward
    winners) on a dagster-postgres instance of its own.

    ``definitions(day)`` is the code location on the evening of ``day``: the source has
    published through ``day``, so the session partitions end there, as they end at today in
    production; the clock is pinned to that day."""

    def __init__(self, home: Path, instance: dg.DagsterInstance, shared: Path,
                 execution: dict[str, Any] | None = None) -> None:
        self.home, self.instance, self.shared = home, instance, shared
        # Further execution settings of every evening (e.g. the venue).
        self.execution = execution or {}
        self.dataset = yaml.safe_load(
            (ROOT / "config/datasets/cn_etf_morphkyan_raw.yaml").read_text(encoding="utf-8"))

    def settings(self, day: str, ledger_url: str | None = None, start: str = START) -> Settings:
        path = self.home / f"cn_etf_morphkyan_raw_to_{day}.yaml"
        path.write_text(yaml.safe_dump({**self.dataset, "history_end": day}), encoding="utf-8")
        return load_settings(
            home=self.home, partitions_start=start, postgres_url=ledger_url,
            redis_url=os.environ.get("ETF_TEST_REDIS_URL", "redis://127.0.0.1:6379/3"),
            cache_secret=TEST_CACHE_SECRET,
            market_data={"source": "files", "dataset": str(path),
                         "files_root": str(self.shared / "cn_etf_morphkyan_raw")},
            execution={"as_of": day, **self.execution})

    def definitions(self, day: str, ledger_url: str | None = None, start: str = START
                    ) -> dg.Definitions:
        return build_definitions(self.settings(day, ledger_url, start))

    def stored(self, asset: str, key: str) -> pd.DataFrame:
        io = PartitionedParquetIOManager(
            base_path=str(self.settings(BACKFILLED_TO).resolved_storage_root))
        assert key in io.stored_partitions(dg.AssetKey(asset)), (asset, key)
        return io.load_partitions(dg.AssetKey(asset), [key])


@contextmanager
def researched_market(home: Path, shared: Path, execution: dict[str, Any] | None = None
                      ) -> Iterator[DailyMarket]:
    """A :class:`DailyMarket` backfilled and researched through BACKFILLED_TO on a scratch
    dagster-postgres instance in ``home``."""
    with scratch_database("etf_daily_dagster") as name:
        (home / "dagster").mkdir()
        (home / "dagster" / "dagster.yaml").write_text(
            instance_yaml(f"postgresql+psycopg2://{PG_SERVER}/{name}"), encoding="utf-8")
        with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
            market = DailyMarket(home, instance, shared, execution)
            defs = market.definitions(BACKFILLED_TO)
            assert run_range(defs, instance, START, BACKFILLED_TO, log_level="WARNING").success
            assert all(r.success for r in rebuild_research(defs, instance))
            yield market


@pytest.fixture(scope="module")
def daily_market(tmp_path_factory: pytest.TempPathFactory, shared_data: Path
                 ) -> Iterator[DailyMarket]:
    with researched_market(tmp_path_factory.mktemp("daily_home"), shared_data) as market:
        yield market


def schedule_ticks(first: str, last: str) -> list[str]:
    """The days ``daily_after_close`` fires on from ``first`` through ``last``."""
    start = evening(first).timestamp() - 60
    out = []
    for when in cron_string_iterator(start, CRON, SHANGHAI):
        if when.date() > dt.date.fromisoformat(last):
            return out
        out.append(when.date().isoformat())
    raise AssertionError("unreachable: the cron iterator is endless")


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, day: str
         ) -> ScheduleExecutionData:
    schedule = defs.resolve_schedule_def("daily_after_close")
    assert schedule.cron_schedule == CRON and schedule.execution_timezone == SHANGHAI
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=evening(day),
                                   repository_def=defs.get_repository_def()) as context:
        return schedule.evaluate_tick(context)


def launch(defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest
           ) -> dg.ExecuteInProcessResult:
    """What the daemon launches for a run request of daily_job: its partition or range tags."""
    return defs.resolve_job_def("daily_job").execute_in_process(
        instance=instance, tags=request.tags, partition_key=request.partition_key,
        run_config=QUIET, raise_on_error=False)


def failures(result: dg.ExecuteInProcessResult) -> str:
    """Each failed step with its error and the errors that caused it (e.g. the IO manager's
    under Dagster's load-input error)."""
    lines = []
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        error = event.event_specific_data.error
        while error is not None:
            lines.append(f"{event.step_key}: {error.message.strip()}")
            error = error.cause
    return "\n".join(lines)


def materialization(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    events = result.asset_materializations_for_node(asset)
    assert events, f"{asset} was not materialised"
    return {k: v.value for k, v in events[-1].metadata.items()}


class Evenings:
    """The daemon's evening, day after day: the schedule's tick, the daily run it requests,
    then the sensor's tick and the execution runs it requests."""

    def __init__(self, market: DailyMarket, ledger_url: str) -> None:
        self.market, self.ledger_url = market, ledger_url
        self.cursor: str | None = None
        self.signals: dict[str, dict[str, Any]] = {}
        self.skipped: list[str] = []

    def run(self, day: str) -> None:
        instance = self.market.instance
        defs = self.market.definitions(day, self.ledger_url)
        data = tick(defs, instance, day)
        if not data.run_requests:
            assert data.skip_message == f"{day} is not a XSHG session"
            self.skipped.append(day)
            return
        [request] = data.run_requests
        assert request.run_key == f"daily_job:{day}"
        result = launch(defs, instance, request)
        assert result.success, f"daily_job for {day}:\n{failures(result)}"
        for asset in ("target_portfolio", "approved_signal"):
            assert materialization(result, asset)["as_of"] == day
        signal = materialization(result, "approved_signal")
        self.signals[day] = signal
        found = evaluate_sensor(defs, instance, self.cursor)
        self.cursor = found.cursor
        expected = [signal["signal_id"]] if signal["status"] == "approved" else []
        assert [r.run_key for r in found.run_requests] == expected, signal["reasons"]
        for execution in found.run_requests:
            executed = run_request(defs, instance, execution)
            assert executed.success, f"execution_job for {day}:\n{failures(executed)}"


def test_daily_schedule_over_holidays_end_to_end(daily_market: DailyMarket, xshg: TradingCalendar,
                                                 ledger_url: str) -> None:
    market, instance = daily_market, daily_market.instance
    evenings = Evenings(market, ledger_url)
    began = time.monotonic()
    for day in schedule_ticks(*NEW_YEAR):
        evenings.run(day)
    # No positions report between the stretches: the first execution after the gap must
    # reconcile the New Year stretch's last orders at their own session's open.
    # Between the stretches the market data is caught up as one backfill run (no signals).
    gap = market.definitions(CAUGHT_UP[1])
    assert run_range(gap, instance, *CAUGHT_UP, log_level="WARNING").success
    for day in schedule_ticks(*SPRING_FESTIVAL):
        evenings.run(day)
    elapsed = time.monotonic() - began

    sessions = [f"{d:%Y-%m-%d}" for s in (NEW_YEAR, SPRING_FESTIVAL) for d in xshg.sessions(*s)]
    assert len(sessions) == 15
    assert list(evenings.signals) == sessions
    assert evenings.skipped == HOLIDAYS
    assert_every_partition_materialised(market, SPRING_FESTIVAL[1])
    assert_consistent_ledger(market, ledger_url, NEXT_MORNING, evenings.signals)
    statuses = [s["status"] for s in evenings.signals.values()]
    print(f"\n15 evenings of daily_job + sensor + execution: {elapsed:.0f} s; signals "
          f"{statuses.count('approved')} approved, {statuses.count('rejected')} rejected")

    # A session the schedule never ran (the daemon was down on the evening of 2024-02-23)
    # fails the next evening's run, naming that session; nothing is approved.
    late = market.definitions(AFTER_A_MISSED_SESSION)
    [request] = tick(late, instance, AFTER_A_MISSED_SESSION).run_requests
    result = launch(late, instance, request)
    assert not result.success
    message = failures(result)
    assert "cross_sections" in message and NEXT_MORNING in message, message


def assert_every_partition_materialised(market: DailyMarket, last: str) -> None:
    """Every weekday partition from the first through ``last`` is materialised for each
    session-partitioned asset; holidays are empty, sessions hold bars."""
    defs = market.definitions(last)
    keys = list(defs.resolve_job_def("daily_job").partitions_def.get_partition_keys())  # type: ignore[union-attr]
    assert keys[0] == START and keys[-1] == last
    for asset in SESSION_ASSETS:
        done = market.instance.get_materialized_partitions(dg.AssetKey(asset))
        assert not set(keys) - done, f"{asset}: {sorted(set(keys) - done)[:5]} missing"
        for key in (*HOLIDAYS, "2024-01-02", "2024-02-19", last):
            rows = len(market.stored(asset, key))
            assert (rows == 0) if key in HOLIDAYS else (rows > 0), (asset, key, rows)


def assert_consistent_ledger(market: DailyMarket, ledger_url: str, last: str,
                             signals: dict[str, dict[str, Any]]) -> None:
    """Each approved signal executed once; the ledger's book equals the paper venue's, as
    positions_report's blocking check ``ledger_matches_venue`` and read directly.

    Its other blocking check, ``paper_matches_backtest``, is not asserted: from 2024-02-05 the
    pre-trade limit max_order_notional (500,000 CNY) refuses a 522k sell of 513500 that the
    backtest makes, and the paper account drifts 1.6 % from it (not a calendar matter)."""
    defs = market.definitions(last, ledger_url)
    settings = market.settings(last, ledger_url)
    account = settings.execution.account_id
    report = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=market.instance, run_config=QUIET, raise_on_error=False,
        asset_selection=[dg.AssetKey("positions_report")])
    checks = {c.check_name: c for c in report.get_asset_check_evaluations()}
    assert checks[BOOK_CHECK].passed, checks[BOOK_CHECK].metadata
    ledger = Ledger(ledger_url)
    try:
        executed_signals(ledger, signals)
        orders = ledger.orders(account_id=account)
        assert len({o.order_id for o in orders}) == len(orders)
        # No order lost to the venue not seeing its session's bar (a gap between runs).
        unseen = [o.order_id for o in orders if "no_bar" in (o.reason or "")]
        assert not unseen, unseen
        fills = ledger.fills(account)
        assert fills and len({f.fill_id for f in fills}) == len(fills)
        venue = PaperBroker(ledger_url, NoQuotes(), strategy_for(settings).cost_model)
        assert venue.positions(account) == {s: p.quantity
                                            for s, p in ledger.positions(account).items()}
        assert venue.cash(account) == pytest.approx(ledger.cash(account), abs=1e-6)
    finally:
        ledger.dispose()


def executed_signals(ledger: Ledger, signals: dict[str, dict[str, Any]]) -> list[str]:
    """The ids of the approved ``signals`` (approved_signal's metadata by day), each checked
    approved in the ledger and executed to completion."""
    approved = [s["signal_id"] for s in signals.values() if s["status"] == "approved"]
    assert approved, f"no signal was approved over {len(signals)} sessions"
    for signal_id in approved:
        stored = ledger.signal(signal_id)
        assert stored is not None and stored.status is SignalStatus.APPROVED
        execution = ledger.execution(signal_id)
        assert execution is not None and execution.status == "completed", signal_id
    return approved


def test_a_session_the_source_lacks_fails_naming_it(daily_market: DailyMarket) -> None:
    """2026-08-04 is an XSHG session the stored source never published (its files end on
    2026-08-03): the daily run fails in raw_bars' quality gate, naming the session."""
    defs = daily_market.definitions("2026-08-04", start="2026-06-01")
    [request] = tick(defs, daily_market.instance, "2026-08-04").run_requests
    result = launch(defs, daily_market.instance, request)
    assert not result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["sessions_have_bars"].passed
    assert "2026-08-04" in str(checks["sessions_have_bars"].metadata["failures"].value)
    assert "raw_bars" in failures(result) and not result.asset_materializations_for_node(
        "adjusted_bars")

"""Trading calendars, session partitions and the after-close schedule.

Holiday expectations are written out from the exchanges' published closures (SSE 2024/2025 holiday
notices, NYSE 2024 holidays), not read back from ``exchange_calendars``.
"""

from __future__ import annotations

import datetime as dt
import os
import warnings
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pandas as pd
import pytest

from assets.partitions import session_partitions
from jobs.market import after_close_schedule, market_data_job
from rotation.calendar import TradingCalendar, get_calendar

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")

# Weekdays the Shanghai Stock Exchange was closed in 2024 (SSE holiday notice for 2024).
XSHG_2024_WEEKDAY_HOLIDAYS = pd.to_datetime(
    [
        "2024-01-01",  # New Year
        "2024-02-09", "2024-02-12", "2024-02-13", "2024-02-14", "2024-02-15", "2024-02-16",
        "2024-04-04", "2024-04-05",  # Qingming
        "2024-05-01", "2024-05-02", "2024-05-03",  # Labour Day
        "2024-06-10",  # Dragon Boat
        "2024-09-16", "2024-09-17",  # Mid-Autumn
        "2024-10-01", "2024-10-02", "2024-10-03", "2024-10-04", "2024-10-07",  # National Day
    ]
)
# Spring Festival 2025: closed 28 January .. 4 February.
XSHG_2025_SPRING_FESTIVAL = pd.to_datetime(
    ["2025-01-28", "2025-01-29", "2025-01-30", "2025-01-31", "2025-02-03", "2025-02-04"]
)
# NYSE 2024 full-day closures on weekdays.
XNYS_2024_HOLIDAYS = pd.to_datetime(
    ["2024-01-01", "2024-01-15", "2024-02-19", "2024-03-29", "2024-05-27", "2024-06-19",
     "2024-07-04", "2024-09-02", "2024-11-28", "2024-12-25"]
)


def _data_root() -> Path:
    env = os.environ.get("ETF_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def xshg() -> TradingCalendar:
    return TradingCalendar("XSHG", "2005-01-01")


@pytest.fixture(scope="module")
def xnys() -> TradingCalendar:
    return TradingCalendar("XNYS", "2005-01-01")


def _keys(days: pd.DatetimeIndex) -> list[str]:
    return [d.strftime("%Y-%m-%d") for d in days]


# -- calendar ---------------------------------------------------------------------------------
def test_xshg_2024_sessions_are_weekdays_minus_published_holidays(xshg: TradingCalendar) -> None:
    weekdays = pd.bdate_range("2024-01-01", "2024-12-31")
    expected = weekdays.difference(XSHG_2024_WEEKDAY_HOLIDAYS)
    sessions = xshg.sessions("2024-01-01", "2024-12-31")
    assert len(weekdays) == 262
    assert len(sessions) == 242  # the SSE traded 242 days in 2024
    assert sessions.equals(expected)
    assert xshg.weekday_holidays("2024-01-01", "2024-12-31").equals(XSHG_2024_WEEKDAY_HOLIDAYS)


@pytest.mark.parametrize(
    "day",
    [*XSHG_2024_WEEKDAY_HOLIDAYS.strftime("%Y-%m-%d"),
     *XSHG_2025_SPRING_FESTIVAL.strftime("%Y-%m-%d"),
     "2024-10-12",  # a Saturday make-up working day in China: the exchange stays closed
     "2024-10-05", "2024-10-06"],
)
def test_holidays_and_weekends_are_not_sessions(xshg: TradingCalendar, day: str) -> None:
    assert not xshg.is_session(day)
    assert not xshg.is_session(pd.Timestamp(day) + pd.Timedelta(hours=16))


@pytest.mark.parametrize("day", ["2024-02-08", "2024-02-19", "2024-09-30", "2024-10-08",
                                 "2025-01-27", "2025-02-05"])
def test_days_around_holidays_are_sessions(xshg: TradingCalendar, day: str) -> None:
    assert xshg.is_session(day)
    assert xshg.is_session(dt.date.fromisoformat(day))


def test_sessions_are_naive_midnights(xshg: TradingCalendar) -> None:
    sessions = xshg.sessions("2024-01-01", "2024-03-31")
    assert sessions.tz is None
    assert (sessions == sessions.normalize()).all()
    assert sessions.is_monotonic_increasing and sessions.is_unique
    assert xshg.timezone == "Asia/Shanghai"
    assert xshg.first_session == pd.Timestamp("2005-01-04")  # 2005-01-03 was a holiday Monday
    assert xshg.last_session >= pd.Timestamp("2025-12-31")


def test_session_navigation(xshg: TradingCalendar) -> None:
    assert xshg.offset("2024-09-30", 1) == pd.Timestamp("2024-10-08")
    assert xshg.offset("2024-10-08", -1) == pd.Timestamp("2024-09-30")
    assert xshg.offset("2024-10-08", -5) == pd.Timestamp("2024-09-24")
    assert xshg.previous_session("2024-10-08") == pd.Timestamp("2024-09-30")
    assert xshg.previous_session("2024-10-03") == pd.Timestamp("2024-09-30")
    assert xshg.next_session_on_or_after("2024-10-01") == pd.Timestamp("2024-10-08")
    assert xshg.next_session_on_or_after("2024-10-08") == pd.Timestamp("2024-10-08")
    days = pd.to_datetime(["2024-09-30", "2024-10-01", "2024-10-06", "2024-10-08"])
    assert xshg.session_mask(days).tolist() == [True, False, False, True]
    idx = xshg.session_index(pd.to_datetime(["2024-09-30", "2024-10-08"]))
    assert idx[1] - idx[0] == 1
    # SSE closes at 15:00 Shanghai time = 07:00 UTC.
    assert xshg.session_close("2024-10-08") == pd.Timestamp("2024-10-08 07:00", tz="UTC")


def test_get_calendar_is_shared() -> None:
    assert get_calendar("XSHG", "2005-01-01") is get_calendar("XSHG", "2005-01-01")
    assert get_calendar("XNYS", "2005-01-01").name == "XNYS"


def test_real_fund_trades_exactly_on_calendar_sessions(xshg: TradingCalendar) -> None:
    """510300 never missed a session in 2024 (PROVENANCE.md: 0 missing vs calendar)."""
    path = _data_root() / "cn_etf_morphkyan_raw" / "prices" / "510300.csv.gz"
    if not path.is_file():
        pytest.skip(f"real data not found at {path}")
    dates = pd.to_datetime(pd.read_csv(path, usecols=["trade_date"])["trade_date"])
    in_2024 = pd.DatetimeIndex(dates[(dates >= "2024-01-01") & (dates <= "2024-12-31")])
    assert in_2024.sort_values().equals(xshg.sessions("2024-01-01", "2024-12-31"))


def test_xnys_calendar(xnys: TradingCalendar) -> None:
    assert xnys.timezone == "America/New_York"
    assert not xnys.is_session("2024-07-04")
    assert xnys.is_session("2024-07-03") and xnys.is_session("2024-07-05")
    sessions = xnys.sessions("2024-01-01", "2024-12-31")
    assert len(sessions) == 252
    assert sessions.equals(pd.bdate_range("2024-01-01", "2024-12-31").difference(
        XNYS_2024_HOLIDAYS))
    # 16:00 New York in July (EDT, UTC-4) = 20:00 UTC.
    assert xnys.session_close("2024-07-05") == pd.Timestamp("2024-07-05 20:00", tz="UTC")


# -- session partitions -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def xshg_partitions(xshg: TradingCalendar) -> dg.TimeWindowPartitionsDefinition:
    return session_partitions(xshg, "2024-01-01", "Asia/Shanghai")


def test_partition_keys_are_weekdays_from_the_first_session_up_to_today(
    xshg: TradingCalendar, xshg_partitions: dg.TimeWindowPartitionsDefinition
) -> None:
    today = pd.Timestamp(dt.datetime.now(SHANGHAI).date())
    keys = xshg_partitions.get_partition_keys()
    end = min(today, xshg.last_session)
    assert keys == _keys(pd.bdate_range("2024-01-02", end))
    # Every session has its partition; the only other keys are weekday holidays.
    assert set(_keys(xshg.sessions("2024-01-02", end))) <= set(keys)
    extra = set(keys) - set(_keys(xshg.sessions("2024-01-02", end)))
    assert {k for k in extra if k < "2025-01-01"} == set(_keys(XSHG_2024_WEEKDAY_HOLIDAYS)) - {
        "2024-01-01"
    }
    assert keys[0] == "2024-01-02"  # 2024-01-01 was a holiday: partitions start at a session


def test_partition_keys_at_a_fixed_time(
    xshg: TradingCalendar, xshg_partitions: dg.TimeWindowPartitionsDefinition
) -> None:
    # end_offset=1: a day's partition exists on the day itself (for the after-close run).
    after_close = dt.datetime(2024, 10, 8, 16, 30, tzinfo=SHANGHAI)
    keys = xshg_partitions.get_partition_keys(current_time=after_close)
    assert keys[-1] == "2024-10-08"
    assert keys == _keys(pd.bdate_range("2024-01-02", "2024-10-08"))
    # On a plain weekend the newest partition is Friday's, not Monday's.
    saturday = dt.datetime(2024, 9, 28, 12, 0, tzinfo=SHANGHAI)
    assert xshg_partitions.get_partition_keys(current_time=saturday)[-1] == "2024-09-27"
    # On a session morning the partition of that session already exists.
    morning = dt.datetime(2024, 9, 30, 9, 0, tzinfo=SHANGHAI)
    assert xshg_partitions.get_partition_keys(current_time=morning)[-1] == "2024-09-30"


@pytest.mark.parametrize(
    ("now", "last_key"),
    [
        (dt.datetime(2024, 10, 1, 17, 0, tzinfo=SHANGHAI), "2024-10-01"),
        (dt.datetime(2024, 10, 5, 12, 0, tzinfo=SHANGHAI), "2024-10-04"),
        (dt.datetime(2024, 2, 10, 12, 0, tzinfo=SHANGHAI), "2024-02-09"),
    ],
)
def test_no_partition_ahead_of_today_during_a_holiday(
    xshg_partitions: dg.TimeWindowPartitionsDefinition, now: dt.datetime, last_key: str
) -> None:
    keys = xshg_partitions.get_partition_keys(current_time=now)
    assert keys[-1] == last_key


def test_partitions_starting_on_a_holiday(xshg: TradingCalendar) -> None:
    parts = session_partitions(xshg, "2024-10-01", "Asia/Shanghai")
    keys = parts.get_partition_keys(current_time=dt.datetime(2024, 10, 18, 17, tzinfo=SHANGHAI))
    assert keys == ["2024-10-08", "2024-10-09", "2024-10-10", "2024-10-11", "2024-10-14",
                    "2024-10-15", "2024-10-16", "2024-10-17", "2024-10-18"]


def test_partitions_never_pass_the_calendar_end(xshg: TradingCalendar) -> None:
    """No partition on days whose holidays the calendar has not published yet."""
    parts = session_partitions(xshg, "2026-01-01", "Asia/Shanghai")
    far_future = dt.datetime(2030, 1, 1, tzinfo=SHANGHAI)
    keys = parts.get_partition_keys(current_time=far_future)
    assert pd.Timestamp(keys[-1]) <= xshg.last_session
    assert keys == _keys(pd.bdate_range(xshg.next_session_on_or_after("2026-01-01"),
                                        xshg.last_session))


def test_xnys_partitions(xnys: TradingCalendar) -> None:
    parts = session_partitions(xnys, "2024-06-01", "America/New_York")
    now = dt.datetime(2024, 7, 10, 18, 0, tzinfo=NEW_YORK)
    keys = parts.get_partition_keys(current_time=now)
    assert keys == _keys(pd.bdate_range("2024-06-03", "2024-07-10"))
    assert set(_keys(xnys.sessions("2024-06-01", "2024-07-10"))) <= set(keys)
    assert keys[0] == "2024-06-03"
    assert "2024-07-03" in keys and "2024-07-05" in keys
    assert keys[-1] == "2024-07-10"


# -- after-close schedule ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def schedule(
    xshg: TradingCalendar, xshg_partitions: dg.TimeWindowPartitionsDefinition
) -> dg.ScheduleDefinition:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dagster-pandera beta warnings on import
        job = market_data_job()
    return after_close_schedule(job, xshg, xshg_partitions, "30 16 * * 1-5", "Asia/Shanghai")


@pytest.fixture(scope="module")
def repository(
    tmp_path_factory: pytest.TempPathFactory,
    xshg_partitions: dg.TimeWindowPartitionsDefinition,
    schedule: dg.ScheduleDefinition,
) -> dg.RepositoryDefinition:
    """A repository holding the schedule's job and its assets, for ``evaluate_tick``."""
    from assets.market import market_assets
    from orchestration.definitions import resources_for
    from orchestration.settings import load_settings

    home = tmp_path_factory.mktemp("etf_home")
    settings = load_settings(home=home, partitions_start="2024-01-01")
    defs = dg.Definitions(
        assets=market_assets(xshg_partitions, settings.quality, settings.cross_section),
        jobs=[schedule.job],
        schedules=[schedule],
        resources=resources_for(settings),
    )
    return defs.get_repository_def()


def test_schedule_definition(schedule: dg.ScheduleDefinition) -> None:
    assert schedule.name == "market_data_after_close"
    assert schedule.cron_schedule == "30 16 * * 1-5"
    assert schedule.execution_timezone == "Asia/Shanghai"
    assert schedule.job_name == "market_data_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


# A session after weekday holidays requests them too (tests/test_daily_schedule.py).
@pytest.mark.parametrize("day", ["2024-10-09", "2024-02-20", "2024-12-31"])
def test_schedule_on_a_session_requests_that_partition(schedule: dg.ScheduleDefinition,
                                                       day: str) -> None:
    when = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(16, 30), tzinfo=SHANGHAI)
    result = schedule(dg.build_schedule_context(scheduled_execution_time=when))
    assert isinstance(result, dg.RunRequest)
    assert result.partition_key == day
    assert day in result.run_key
    assert result.run_key == f"market_data_job:{day}"


@pytest.mark.parametrize("day", ["2024-10-01", "2024-10-07", "2024-02-12", "2025-01-28",
                                 "2024-10-12"])
def test_schedule_skips_non_sessions(schedule: dg.ScheduleDefinition, day: str) -> None:
    when = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(16, 30), tzinfo=SHANGHAI)
    result = schedule(dg.build_schedule_context(scheduled_execution_time=when))
    assert isinstance(result, dg.SkipReason)
    assert day in result.skip_message
    assert "XSHG" in result.skip_message


def test_evaluate_tick_on_a_session(schedule: dg.ScheduleDefinition,
                                    repository: dg.RepositoryDefinition) -> None:
    when = dt.datetime(2024, 10, 9, 16, 30, tzinfo=SHANGHAI)
    ctx = dg.build_schedule_context(scheduled_execution_time=when, repository_def=repository)
    data = schedule.evaluate_tick(ctx)
    assert data.skip_message is None
    assert len(data.run_requests) == 1
    request = data.run_requests[0]
    assert request.partition_key == "2024-10-09"
    assert request.run_key == "market_data_job:2024-10-09"
    assert request.tags["dagster/partition"] == "2024-10-09"
    assert request.tags["dagster/schedule_name"] == "market_data_after_close"


def test_evaluate_tick_on_a_weekday_holiday(schedule: dg.ScheduleDefinition,
                                            repository: dg.RepositoryDefinition) -> None:
    when = dt.datetime(2024, 10, 1, 16, 30, tzinfo=SHANGHAI)
    ctx = dg.build_schedule_context(scheduled_execution_time=when, repository_def=repository)
    data = schedule.evaluate_tick(ctx)
    assert data.run_requests == []
    assert data.skip_message == "2024-10-01 is not a XSHG session"


def test_every_cron_tick_of_a_month_matches_the_calendar(
    xshg: TradingCalendar, schedule: dg.ScheduleDefinition
) -> None:
    """Over October 2024 the schedule requests exactly the sessions and skips the rest."""
    requested, skipped = [], []
    for day in pd.bdate_range("2024-10-01", "2024-10-31"):  # the cron fires Monday..Friday
        when = dt.datetime.combine(day.date(), dt.time(16, 30), tzinfo=SHANGHAI)
        result = schedule(dg.build_schedule_context(scheduled_execution_time=when))
        (requested if isinstance(result, dg.RunRequest) else skipped).append(day)
    assert pd.DatetimeIndex(requested).equals(xshg.sessions("2024-10-01", "2024-10-31"))
    assert pd.DatetimeIndex(skipped).equals(pd.to_datetime(
        ["2024-10-01", "2024-10-02", "2024-10-03", "2024-10-04", "2024-10-07"]))

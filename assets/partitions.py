"""Session partitions: one partition per trading day of the exchange calendar, all funds of the
universe inside one partition.

Partition keys are the weekdays from the first session on (``0 0 * * 1-5`` in the exchange's
timezone). Weekdays that the calendar marks as holidays are partitions too, but hold no bars:
``raw_bars`` materialises them empty. A backfill covers them as part of its range; the daily run
of a session covers every holiday since the previous session (:func:`session_run_partitions`),
so every partition up to the newest session is materialised and a reader of a lookback range (or
of the whole history) never meets a holiday that was skipped. A partition that is not
materialised is therefore always an error, and the IO manager needs no calendar to tell a
holiday from a missing session.
We do not encode the holidays as Dagster partition *exclusions*: Dagster 1.13 serialises the
whole exclusion list into every per-partition check record of a run, so a single-run backfill of
20 years × 17 checks would write gigabytes of event log (measured: planning alone did not finish
in 10 minutes for cn_etf_morphkyan_raw).
"""

from __future__ import annotations

import dagster as dg
import pandas as pd

from rotation.calendar import TradingCalendar


def session_partitions(
    calendar: TradingCalendar, start: str, timezone: str, end: str | None = None
) -> dg.TimeWindowPartitionsDefinition:
    """Weekday windows from the first session on ``start`` to ``end`` (the last day the source
    can have data for), bounded by the sessions the calendar knows (no partition on a day whose
    holidays are not published yet).

    ``end_offset=1`` makes a day's partition available from the start of that day, so the
    after-close schedule can materialise it; ``raw_bars`` refuses a session that has not closed.
    """
    first = calendar.next_session_on_or_after(start)
    last = calendar.last_session if end is None else min(pd.Timestamp(end),
                                                          calendar.last_session)
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule="0 0 * * 1-5",
        start=first.to_pydatetime(),
        # The next weekday: the window of ``last`` must be complete (a Friday ends on Monday).
        end=(last + pd.offsets.BDay(1)).to_pydatetime(),
        fmt="%Y-%m-%d",
        timezone=timezone,
        end_offset=1,
    )


def partition_sessions(context: dg.AssetExecutionContext) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last day of the run's partition range (one day on a daily run)."""
    keys = context.partition_keys
    return pd.Timestamp(keys[0]), pd.Timestamp(keys[-1])


def session_run_partitions(partitions: dg.TimeWindowPartitionsDefinition,
                           calendar: TradingCalendar, session: object) -> list[str]:
    """The partition keys the daily run of ``session`` materialises: the weekday holidays since
    the previous session (empty partitions; none before the first partition) and the session.

    One key on an ordinary day; after New Year 2024 ``2024-01-01..2024-01-02``; after the 2024
    Spring Festival ``2024-02-09..2024-02-19`` (seven keys)."""
    day = pd.Timestamp(session).normalize()
    previous = calendar.previous_session(day)
    first = previous + pd.Timedelta(days=1) if previous < day else day
    first = max(first, pd.Timestamp(partitions.start.date()))
    # Dagster's own key arithmetic on the partitions' cron: no second notion of "weekday".
    window = dg.TimeWindow(first.tz_localize(partitions.timezone).to_pydatetime(),
                           (day + pd.Timedelta(days=1)).tz_localize(partitions.timezone)
                           .to_pydatetime())
    return list(partitions.get_partition_keys_in_time_window(window))

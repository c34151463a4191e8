"""The market-data job and its after-close schedule (sessions only)."""


import dagster as dg

from assets.market import CROSS_SECTION_GROUP, MARKET_GROUP
from assets.partitions import session_run_partitions
from orchestration.dagster_private import UnresolvedAssetJobDefinition
from orchestration.runs import RANGE_END_TAG, RANGE_START_TAG
from rotation.calendar import TradingCalendar


def market_data_job() -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        "market_data_job",
        selection=dg.AssetSelection.groups(MARKET_GROUP, CROSS_SECTION_GROUP),
        # One process: the daily path must not pay heavy imports once per step.
        executor_def=dg.in_process_executor,
        description="Raw bars → quality gates → adjusted bars → cross-sections for one session "
        "(or a range, as one run, when backfilled).",
    )


def after_close_schedule(
    job: UnresolvedAssetJobDefinition,
    calendar: TradingCalendar,
    partitions: dg.TimeWindowPartitionsDefinition,
    cron: str,
    timezone: str,
    name: str = "market_data_after_close",
    what: str = "Materialise the day's session",
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone=timezone,
        description=f"{what} after the close ({cron}, {timezone}), with the weekday "
        f"holidays since the previous session (empty partitions); days that are not "
        f"{calendar.name} sessions are skipped.",
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        day = context.scheduled_execution_time.date()
        if not calendar.is_session(day):
            return dg.SkipReason(f"{day} is not a {calendar.name} session")
        key = day.isoformat()
        keys = session_run_partitions(partitions, calendar, day)
        if not keys:
            return dg.SkipReason(f"{day} is before the first partition ({partitions.start:%F})")
        if keys == [key]:
            return dg.RunRequest(run_key=f"{job.name}:{key}", partition_key=key)
        # The holidays before the session are stored (empty) in the same run: readers of a
        # lookback range or of the whole history find every partition up to the session.
        return dg.RunRequest(run_key=f"{job.name}:{key}",
                             tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]})

    return _schedule

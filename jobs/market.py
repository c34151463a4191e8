"""The market-data job and its after-close schedule (sessions only)."""


import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.market import CROSS_SECTION_GROUP, MARKET_GROUP
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
        description=f"{what} after the close ({cron}, {timezone}); days that are not "
        f"{calendar.name} sessions are skipped.",
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        day = context.scheduled_execution_time.date()
        if not calendar.is_session(day):
            return dg.SkipReason(f"{day} is not a {calendar.name} session")
        key = day.isoformat()
        return dg.RunRequest(run_key=f"{job.name}:{key}", partition_key=key)

    return _schedule

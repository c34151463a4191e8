"""The two schedules the desk relies on: ``daily_job`` after each close (new session → approved
signal → the sensor hands it to execution) and the weekly full research rebuild."""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from orchestration.runs import RANGE_END_TAG, RANGE_START_TAG

# The assets a new session has to refresh, in lineage order; the walk-forward winners are
# reused until the weekly rebuild.
DAILY_ASSETS = ("raw_bars", "adjusted_bars", "cross_sections", "factors", "target_portfolio",
                "approved_signal")


def daily_job(defined: set[str]) -> UnresolvedAssetJobDefinition:
    selected = [a for a in DAILY_ASSETS if a in defined]
    return dg.define_asset_job(
        "daily_job",
        selection=dg.AssetSelection.assets(*selected),
        # One process: the daily path must not pay the heavy imports once per step.
        executor_def=dg.in_process_executor,
        description="After the close of a session: its raw bars through the quality gates, "
        "adjusted bars and cross-sections, the factors, the target portfolio of the current "
        "walk-forward winner and the approval gate. An approved signal is handed to "
        "execution_job by approved_signal_sensor. Assets: " + " → ".join(selected) + ".",
    )


def weekly_research(research: UnresolvedAssetJobDefinition,
                    walk_forward: UnresolvedAssetJobDefinition | None,
                    portfolio: UnresolvedAssetJobDefinition | None, window_keys: list[str],
                    cron: str, timezone: str) -> list[dg.ScheduleDefinition | dg.SensorDefinition]:
    """The weekly rebuild: research_job on the schedule, then every walk-forward window as one
    run, then the portfolio, each launched when the previous job succeeds."""
    schedule = dg.ScheduleDefinition(
        name="weekly_research", job=research, cron_schedule=cron,
        execution_timezone=timezone, default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Full research rebuild ({cron}, {timezone}): factors and IC screening, "
        "then every walk-forward window (one run), then the out-of-sample backtest and the "
        "target portfolio.")
    out: list[dg.ScheduleDefinition | dg.SensorDefinition] = [schedule]
    if walk_forward is None or portfolio is None or not window_keys:
        return out

    @dg.run_status_sensor(
        name="research_to_walk_forward", run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[research], request_job=walk_forward,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After research_job succeeds: every walk-forward window as one run.")
    def research_to_walk_forward(context: dg.RunStatusSensorContext) -> dg.RunRequest:
        return dg.RunRequest(run_key=f"wfo:{context.dagster_run.run_id}",
                             tags={RANGE_START_TAG: window_keys[0],
                                   RANGE_END_TAG: window_keys[-1]})

    @dg.run_status_sensor(
        name="walk_forward_to_portfolio", run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[walk_forward], request_job=portfolio,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After the walk-forward windows succeed: the backtest and the portfolio.")
    def walk_forward_to_portfolio(context: dg.RunStatusSensorContext) -> dg.RunRequest:
        return dg.RunRequest(run_key=f"portfolio:{context.dagster_run.run_id}")

    return [*out, research_to_walk_forward, walk_forward_to_portfolio]

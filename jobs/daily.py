"""The two schedules the desk relies on: ``daily_job`` after each close (new session → approved
signal → the sensor hands it to execution) and the weekly full research rebuild."""

from collections.abc import Sequence

import dagster as dg

from orchestration.dagster_private import UnresolvedAssetJobDefinition
from orchestration.runs import PARTITION_TAG, RANGE_END_TAG, RANGE_START_TAG
from rotation.calendar import TradingCalendar

# Every walk-forward run of one weekly rebuild carries the id of the research run that began it.
REBUILD_TAG = "etf/rebuild"

# The assets a new session has to refresh, in lineage order; the walk-forward winners are
# reused until the weekly rebuild.
DAILY_ASSETS = ("raw_bars", "adjusted_bars", "cross_sections", "factors", "target_portfolio",
                "approved_signal")
GATE_ASSET = "approved_signal"
# The research run whose success an approval run follows (split code locations).
DAILY_RUN_TAG = "etf/daily_run"
# Dagster's tag on runs a schedule launched.
SCHEDULE_TAG = "dagster/schedule_name"


def daily_job(defined: set[str], netted: Sequence[str] = ()) -> UnresolvedAssetJobDefinition:
    """``netted``: what a netting account adds before its gate (the other strategies' target
    portfolios, its allocation and its target; user strings, ``<strategy>/target_portfolio``)."""
    selected = [a for a in DAILY_ASSETS if a in defined]
    if netted:
        gate = selected.index(GATE_ASSET) if GATE_ASSET in selected else len(selected)
        selected[gate:gate] = [a for a in netted if a in defined and a not in selected]
    handoff = ("An approved signal is handed to execution_job by approved_signal_sensor."
               if GATE_ASSET in defined else "Its success launches approval_job (the approval "
               "gate) in the execution code location.")
    return dg.define_asset_job(
        "daily_job",
        selection=dg.AssetSelection.assets(*map(dg.AssetKey.from_user_string, selected)),
        # One process: the daily path must not pay the heavy imports once per step.
        executor_def=dg.in_process_executor,
        description="After the close of a session: its raw bars through the quality gates, "
        "adjusted bars and cross-sections, the factors, the target portfolio of the current "
        "walk-forward winner" + (" and the approval gate. " if GATE_ASSET in defined else ". ")
        + handoff + " Assets: " + " → ".join(selected) + ".",
    )


def approval_job(netting: Sequence[str] = ()) -> UnresolvedAssetJobDefinition:
    """The approval gate on its own, in the execution code location (``ETF_CODE_LOCATION``);
    ``netting``: a netting account's allocation and target, decided before its gate."""
    return dg.define_asset_job(
        "approval_job", selection=dg.AssetSelection.assets(*netting, GATE_ASSET),
        executor_def=dg.in_process_executor,
        description="The approval gate for the latest target portfolio: approved_signal. "
        "Launched by approval_after_daily when daily_job of the research location succeeds; "
        "an approved signal is handed to execution_job by approved_signal_sensor.")


# After the session's fills: the book marked and reconciled, its risk, the day's report.
END_OF_DAY_ASSETS = ("positions_report", "portfolio_risk", "risk_compliance_report")


def end_of_day_job(prefix: str = "", key_prefix: str | None = None
                   ) -> UnresolvedAssetJobDefinition:
    """``prefix``: of a further account's job name; ``key_prefix``: of its asset keys."""
    keys = [dg.AssetKey([key_prefix, a] if key_prefix else [a]) for a in END_OF_DAY_ASSETS]
    return dg.define_asset_job(
        f"{prefix}end_of_day_job", selection=dg.AssetSelection.assets(*keys),
        executor_def=dg.in_process_executor,
        description="The account's end of day: " + " → ".join(END_OF_DAY_ASSETS) + " (fills "
        "reconciled and the book valued, its risk measured, the HTML/PDF risk and compliance "
        "report written and logged to MLflow).")


def end_of_day_schedule(job: UnresolvedAssetJobDefinition, calendar: TradingCalendar,
                        cron: str, timezone: str, prefix: str = "") -> dg.ScheduleDefinition:
    @dg.schedule(
        name=f"{prefix}end_of_day_report", job=job, cron_schedule=cron, execution_timezone=timezone,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Run {job.name} on each {calendar.name} session ({cron}, {timezone}), "
        "after the daily path has decided and executed the day's signal.")
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        day = context.scheduled_execution_time.date()
        if not calendar.is_session(day):
            return dg.SkipReason(f"{day} is not a {calendar.name} session")
        return dg.RunRequest(run_key=f"{job.name}:{day.isoformat()}")

    return _schedule


def approval_after_daily(approval: UnresolvedAssetJobDefinition,
                         daily_job_name: str = "daily_job",
                         schedule_name: str = "daily_after_close") -> dg.SensorDefinition:
    """With research and execution in separate code locations, daily_job ends at the target
    portfolio; the success of a run the after-close schedule launched launches the gate here,
    once per daily run (run key). A daily_job launched by hand (a researcher can, from the
    research webserver) decides nothing: the desk launches approval_job itself."""

    @dg.run_status_sensor(
        name="approval_after_daily", run_status=dg.DagsterRunStatus.SUCCESS,
        monitor_all_code_locations=True, request_job=approval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"After a {daily_job_name} run of the {schedule_name} schedule succeeds "
        f"(any code location): {approval.name}, the approval gate for the new target "
        "portfolio, once per daily run. Runs launched by hand are not approved.")
    def _approve(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
        run = context.dagster_run
        if run.job_name != daily_job_name:
            return dg.SkipReason(f"run {run.run_id} is of {run.job_name}, not {daily_job_name}")
        if run.tags.get(SCHEDULE_TAG) != schedule_name:
            return dg.SkipReason(f"{daily_job_name} run {run.run_id} was not launched by "
                                 f"{schedule_name}: the desk launches {approval.name} itself")
        return dg.RunRequest(run_key=f"approve:{run.run_id}", tags={DAILY_RUN_TAG: run.run_id})

    return _approve


def weekly_research(research: UnresolvedAssetJobDefinition | None,
                    walk_forward: UnresolvedAssetJobDefinition | None,
                    portfolio: UnresolvedAssetJobDefinition | None, window_keys: list[str],
                    cron: str, timezone: str, fan_out: bool = False, prefix: str = ""
                    ) -> list[dg.ScheduleDefinition | dg.SensorDefinition]:
    """The weekly rebuild: research_job on the schedule, then the walk-forward windows, then
    the portfolio, each launched when the previous stage succeeds.

    The windows run as one run, or with ``fan_out`` as one run per window (separate pods on
    Kubernetes); the portfolio then starts once every window run of the rebuild succeeded.
    ``prefix``: the names of another strategy's schedule and sensors (the jobs are its own);
    without ``research`` (a classic strategy: no factor screening) the schedule launches the
    windows."""
    what = (f"then every walk-forward window ({'a run each' if fan_out else 'one run'}), then "
            "the out-of-sample backtest and the target portfolio.")
    if research is None:
        assert walk_forward is not None and portfolio is not None and window_keys
        return [_windows_schedule(walk_forward, window_keys, cron, timezone, fan_out, prefix,
                                  what), _walk_forward_to_portfolio(walk_forward, portfolio,
                                                                    window_keys, fan_out,
                                                                    prefix)]
    schedule = dg.ScheduleDefinition(
        name=f"{prefix}weekly_research", job=research, cron_schedule=cron,
        execution_timezone=timezone, default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Full research rebuild ({cron}, {timezone}): factors and IC screening, "
        + what)
    out: list[dg.ScheduleDefinition | dg.SensorDefinition] = [schedule]
    if walk_forward is None or portfolio is None or not window_keys:
        return out

    @dg.run_status_sensor(
        name=f"{prefix}research_to_walk_forward", run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[research], request_job=walk_forward,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"After {research.name} succeeds: every walk-forward window, "
        + ("a run each." if fan_out else "as one run."))
    def research_to_walk_forward(context: dg.RunStatusSensorContext) -> list[dg.RunRequest]:
        return _window_requests(context.dagster_run.run_id, window_keys, fan_out)

    return [*out, research_to_walk_forward,
            _walk_forward_to_portfolio(walk_forward, portfolio, window_keys, fan_out, prefix)]


def _window_requests(rebuild: str, window_keys: list[str], fan_out: bool
                     ) -> list[dg.RunRequest]:
    """The walk-forward runs of one rebuild: a run per window, or one run over all."""
    if fan_out:
        return [dg.RunRequest(run_key=f"wfo:{rebuild}:{key}", partition_key=key,
                              tags={REBUILD_TAG: rebuild}) for key in window_keys]
    return [dg.RunRequest(run_key=f"wfo:{rebuild}",
                          tags={REBUILD_TAG: rebuild, RANGE_START_TAG: window_keys[0],
                                RANGE_END_TAG: window_keys[-1]})]


def _windows_schedule(walk_forward: UnresolvedAssetJobDefinition, window_keys: list[str],
                      cron: str, timezone: str, fan_out: bool, prefix: str, what: str
                      ) -> dg.ScheduleDefinition:
    @dg.schedule(name=f"{prefix}weekly_research", job=walk_forward, cron_schedule=cron,
                 execution_timezone=timezone, default_status=dg.DefaultScheduleStatus.STOPPED,
                 description=f"Full research rebuild ({cron}, {timezone}): " + what)
    def _schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        rebuild = f"{walk_forward.name}:{context.scheduled_execution_time.isoformat()}"
        return _window_requests(rebuild, window_keys, fan_out)

    return _schedule


def _walk_forward_to_portfolio(walk_forward: UnresolvedAssetJobDefinition,
                               portfolio: UnresolvedAssetJobDefinition, window_keys: list[str],
                               fan_out: bool, prefix: str) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name=f"{prefix}walk_forward_to_portfolio", run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[walk_forward], request_job=portfolio,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After the walk-forward windows of a rebuild succeed: the backtest and "
        "the portfolio.")
    def walk_forward_to_portfolio(context: dg.RunStatusSensorContext
                                  ) -> dg.RunRequest | dg.SkipReason:
        run = context.dagster_run
        if not fan_out:  # one run held every window
            return dg.RunRequest(run_key=f"portfolio:{run.run_id}")
        rebuild = run.tags.get(REBUILD_TAG)
        if rebuild is None:
            return dg.SkipReason(f"run {run.run_id} of {walk_forward.name} is not part of a "
                                 f"weekly rebuild: launch {portfolio.name} once its windows are "
                                 "done")
        runs = context.instance.get_runs(dg.RunsFilter(job_name=walk_forward.name,
                                                       tags={REBUILD_TAG: rebuild}))
        done = {r.tags.get(PARTITION_TAG) for r in runs
                if r.status == dg.DagsterRunStatus.SUCCESS}
        # The run whose success woke the sensor counts even if its stored status lags the
        # event (the run row is updated after the event is written).
        done.add(run.tags.get(PARTITION_TAG))
        waiting = [k for k in window_keys if k not in done]
        if waiting:
            return dg.SkipReason(f"rebuild {rebuild}: {len(window_keys) - len(waiting)} of "
                                 f"{len(window_keys)} windows done; waiting for {waiting[:3]}")
        # The last window to finish requests it; the run key makes it once per rebuild.
        return dg.RunRequest(run_key=f"portfolio:{rebuild}", tags={REBUILD_TAG: rebuild})

    return walk_forward_to_portfolio

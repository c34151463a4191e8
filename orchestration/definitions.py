"""The composition root: settings → resources → one ``Definitions`` for the code location."""

from __future__ import annotations

import warnings
from typing import Any

import dagster as dg
import pandas as pd

from assets.comparison import comparison_assets
from assets.market import market_assets
from assets.partitions import session_partitions
from assets.research import factor_assets, union_of_factors
from assets.signals import GuardingCheck, guarding_checks
from assets.strategy_research import research_partitions
from jobs.daily import (
    approval_after_daily,
    approval_job,
    daily_job,
)
from jobs.market import after_close_schedule, market_data_job
from orchestration.account_stage import (
    AccountStage,
    account_definitions,
    account_of,
    account_stages,
)
from orchestration.deployment import (
    Deployed,
    deployment_strategies,
    market_data_resource,
    strategy_for,
)
from orchestration.settings import Settings, SettingsError, load_settings
from orchestration.strategy_stage import (
    StrategyStage,
    catalogue_spec,
    strategy_stage,
)
from resources.cache import RedisCache
from resources.clock import ClockResource
from resources.deployment import fixed
from resources.execution import ExecutionResource, PaperExecution, VnpyExecution
from resources.ledger import LedgerResource
from resources.live_quotes import LiveQuotesResource
from resources.market_data import MarketDataResource
from resources.parquet_io import PartitionedParquetIOManager
from resources.tracking import MlflowTracking
from rotation.config_paths import STRATEGY_CONFIG_DIR
from sensors.alerts import run_failure_alert_sensor
from trading.account import Account


def resources_for(settings: Settings, account: Account | None = None
                  ) -> dict[str, dg.ConfigurableResource]:
    """Everything that differs between profiles is decided here and nowhere else (the ledger
    opens ``account``, by default the one of the deployment's strategy)."""
    ex = settings.execution
    resources: dict[str, dg.ConfigurableResource] = {
        "market_data": market_data_resource(settings),
        "io_manager": PartitionedParquetIOManager(
            base_path=str(settings.resolved_storage_root.resolve())
        ),
        "tracking": MlflowTracking(tracking_uri=settings.resolved_mlflow_uri,
                                   ui_url=settings.resolved_mlflow_ui_url,
                                   dagster_url=settings.resolved_dagster_url),
        "cache": RedisCache.for_settings(settings.redis_url, settings.cache_secret),
        "clock": ClockResource(as_of=ex.as_of, timezone=settings.schedule_timezone),
        "live_quotes": LiveQuotesResource(url=settings.redis_url),
    }
    if settings.postgres_url:
        account = account or account_of(settings, strategy_for(settings))
        resources["ledger"] = LedgerResource(
            url=settings.postgres_url, account_id=account.account_id,
            initial_cash=account.initial_cash,
            further_accounts={a.account_id: a.initial_cash for a in ex.accounts})
        resources["execution"] = execution_resource(settings, account, settings.postgres_url)
    return resources


def execution_resource(settings: Settings, account: Account, ledger_url: str
                       ) -> ExecutionResource:
    """``account``'s venue (``execution.venue``): the paper broker beside the ledger at
    ``ledger_url``, or the vn.py venue process of ``execution.vnpy``."""
    ex = settings.execution
    slicing = _slicing_config(settings)
    if account.venue == "vnpy":
        v = ex.vnpy
        return VnpyExecution(account_id=account.account_id,
                             rep_address=f"tcp://{v.host}:{v.rep_port}",
                             pub_address=f"tcp://{v.host}:{v.pub_port}",
                             broker_account=v.broker_account,
                             rpc_timeout_seconds=v.rpc_timeout_seconds,
                             ack_timeout_seconds=v.ack_timeout_seconds,
                             replay_clock=v.replay_clock, kill_switch=ex.kill_switch,
                             **slicing)
    return PaperExecution(url=ledger_url, kill_switch=ex.kill_switch, **slicing)


def _slicing_config(settings: Settings) -> dict[str, Any]:
    """The execution resource's slicing fields from ``execution`` (slices, the algorithm and
    the VWAP profile's source)."""
    ex = settings.execution
    return {"twap_slices": ex.twap_slices, "algorithm": ex.algorithm,
            "vwap_source": ex.vwap.source, "vwap_curve": list(ex.vwap.curve),
            "vwap_sessions": ex.vwap.sessions, "vwap_min_sessions": ex.vwap.min_sessions,
            "vwap_min_coverage": ex.vwap.min_coverage,
            "quotes_namespace": ex.vwap.quotes_namespace, "redis_url": settings.redis_url}


def walk_forward_executor(settings: Settings) -> dg.ExecutorDefinition:
    """One process locally and in compose; on Kubernetes, a pod per step of a window's run."""
    wf = settings.walk_forward
    if wf.executor == "in_process":
        return dg.in_process_executor
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError:
        raise SettingsError(
            "setting walk_forward.executor [env ETF_WALK_FORWARD__EXECUTOR]='k8s' needs "
            "dagster-k8s: install the k8s extra (pip install '.[k8s]'; the image: docker build "
            "--build-arg EXTRAS=k8s)") from None
    resources = {"requests": {"cpu": wf.step_cpu, "memory": wf.step_memory},
                 "limits": {"memory": wf.step_memory_limit}}
    # Namespace, image, env, secrets and volumes come from the K8sRunLauncher of the instance.
    return k8s_job_executor.configured(
        {"step_k8s_config": {"container_config": {"resources": resources}}},
        name="k8s_walk_forward")


def build_definitions(settings: Settings) -> dg.Definitions:
    deployed = deployment_strategies(settings)
    strategy = deployed.strategy
    accounts = account_stages(settings, strategy, [strategy, *deployed.others])
    resources = resources_for(settings, accounts[0].account)
    market_data = resources["market_data"]
    assert isinstance(market_data, MarketDataResource)
    calendar = market_data.calendar
    sessions = session_partitions(
        calendar,
        settings.partitions_start or market_data.history_start,
        settings.schedule_timezone,
        end=market_data.history_end,
    )
    market = dg.Definitions(
        assets=market_assets(sessions, settings.quality, settings.cross_section),
        jobs=[market_data_job()],
    )
    sessions_of_data = calendar.sessions(settings.partitions_start or market_data.history_start,
                                         market_data.history_end)
    windows = research_partitions(sessions_of_data, strategy)
    research, beside = research_definitions(settings, deployed, sessions_of_data)
    stages = [market, research, *beside]
    execution: dg.Definitions | None = None
    researched = {a.key.to_user_string() for d in stages for a in d.assets or []
                  if isinstance(a, dg.AssetsDefinition)}
    before_gates = [k for stage in accounts for k in stage.before_gate(researched)]
    if windows is not None and settings.postgres_url:
        execution = dg.Definitions.merge(*(
            account_definitions(settings, stage, _guards(stage, stages, market), calendar)
            for stage in accounts))
    elif windows is not None:
        warnings.warn("postgres_url [env ETF_POSTGRES_URL] is not set: the execution stage "
                      "(approved_signal, execution_job, positions_report) needs the PostgreSQL "
                      "ledger and is not defined", stacklevel=2)
    # No resource is launch-configurable: the controls are the deployment's (resources/deployment).
    deployment = dg.Definitions(resources={k: fixed(v) for k, v in resources.items()})
    alerts = run_failure_alert_sensor(settings.alert_webhook_url or None,
                                      settings.alert_webhook_timeout_seconds,
                                      dagster_url=settings.dagster_webserver_url)
    if settings.code_location == "execution":
        return execution_location(execution, stages, alerts, deployment, accounts)
    if execution is not None and settings.code_location == "all":
        stages.append(execution)
    defined = {a.key.to_user_string() for d in stages for a in d.assets or []
               if isinstance(a, dg.AssetsDefinition)}
    daily = daily_job(defined, before_gates)
    operations = dg.Definitions(
        jobs=[daily],
        schedules=[after_close_schedule(
            daily, calendar, sessions, settings.schedule_cron, settings.schedule_timezone,
            name="daily_after_close", what="Run daily_job for the day's session")],
        sensors=[alerts])
    return dg.Definitions.merge(*stages, operations, deployment)


def research_definitions(settings: Settings, deployed: Deployed, sessions: pd.DatetimeIndex
                         ) -> tuple[dg.Definitions, list[dg.Definitions]]:
    """The strategy files and the factor panel of every strategy (computed once) with the
    deployment's strategy's research stage; the other strategies' stages and their
    comparison, each on its own."""
    strategy, others = deployed.strategy, deployed.others
    try:
        # A classic strategy beside the deployment's reads no factor.
        specs = union_of_factors([s.factor_specs for s in (strategy, *others)
                                  if s is strategy or s.classic is None])
    except ValueError as exc:
        raise SettingsError(f"setting strategies [env ETF_STRATEGIES]: {exc}") from None
    executor = walk_forward_executor(settings)
    fan_out = settings.walk_forward.executor == "k8s"
    stages = [StrategyStage(of, of is strategy, settings.cross_section, sessions, executor,
                            fan_out, settings.research_cron, settings.schedule_timezone,
                            workers=1 if fan_out else settings.walk_forward.workers)
              for of in (strategy, *others)]
    built = [strategy_stage(s) for s in stages]
    files = catalogue_spec(deployed.catalogue, [strategy, *others],
                           str(settings.strategy_dir or STRATEGY_CONFIG_DIR))
    shared = dg.Definitions(assets=[files, *factor_assets(settings.cross_section, specs)])
    return (dg.Definitions.merge(shared, built[0]),
            built[1:] + strategies_compared(stages, built))


def strategies_compared(stages: list[StrategyStage], built: list[dg.Definitions]
                        ) -> list[dg.Definitions]:
    """The comparison of the strategies that have an out-of-sample backtest (two or more)."""
    defined = {key for d in built for a in d.assets or [] if isinstance(a, dg.AssetsDefinition)
               for key in a.keys}
    backtests = {s.strategy.name: s.key("oos_backtest") for s in stages
                 if s.key("oos_backtest") in defined}
    if len(backtests) < 2:
        return []
    assets = comparison_assets(backtests)
    return [dg.Definitions(assets=assets, jobs=[dg.define_asset_job(
        "strategy_comparison_job", selection=dg.AssetSelection.assets(*assets),
        executor_def=dg.in_process_executor,
        description="The strategies side by side (strategy_comparison), after their "
        "out-of-sample backtests.")])]


def _guards(stage: AccountStage, stages: list[dg.Definitions], market: dg.Definitions
            ) -> list[GuardingCheck]:
    """The checks guarding ``stage``'s gate: the market's, the factor panel's and those of the
    strategies it trades (not the others')."""
    traded = {s.name for s in stage.traded}

    def guards(asset: dg.AssetsDefinition, of_market: bool) -> bool:
        if of_market or asset.key == dg.AssetKey("factors"):
            return True
        owner = asset.key.path[0] if len(asset.key.path) > 1 else stage.primary
        return owner in traded

    return guarding_checks([a for d in stages for a in d.assets or []
                            if isinstance(a, dg.AssetsDefinition) and guards(a, d is market)])


def execution_location(execution: dg.Definitions | None, research: list[dg.Definitions],
                       alerts: dg.SensorDefinition, deployment: dg.Definitions,
                       accounts: list[AccountStage]) -> dg.Definitions:
    """The execution code location (etf_execution): the gate, orders and the kill switch.

    The research assets the gate reads are the research location's; here they are specs with
    the same partitions, so their stored values load and the lineage crosses locations."""
    if execution is None:
        raise SettingsError(
            "setting code_location [env ETF_CODE_LOCATION]='execution' serves the approval "
            "gate and execution, which need the PostgreSQL ledger (ETF_POSTGRES_URL) and market "
            "data holding at least one complete walk-forward window")
    gate = [a for a in execution.assets or [] if isinstance(a, dg.AssetsDefinition)]
    inputs = {key for a in gate for key in a.dependency_keys} - {k for a in gate for k in a.keys}
    upstream = [dg.AssetSpec(spec.key, partitions_def=a.partitions_def,
                             group_name=spec.group_name, kinds=spec.kinds,
                             description="In the research code location (etf_rotation). "
                             + (spec.description or ""))
                for d in research for a in d.assets or [] if isinstance(a, dg.AssetsDefinition)
                for spec in a.specs if spec.key in inputs]
    # Every account's gate (the deployment's: approval_job's own) and what it decides first.
    approval = approval_job([k for stage in accounts for k in stage.decided(gate=not stage.main)])
    return dg.Definitions.merge(
        execution,
        dg.Definitions(assets=upstream, jobs=[approval],
                       sensors=[approval_after_daily(approval), alerts]),
        deployment)


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_settings())

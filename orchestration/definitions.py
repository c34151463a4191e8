"""The composition root: settings → resources → one ``Definitions`` for the code location."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
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
from resources.market_data import (
    AkshareMarketData,
    FileMarketData,
    MarketDataResource,
    SampleMarketData,
)
from resources.parquet_io import PartitionedParquetIOManager
from resources.tracking import MlflowTracking
from rotation.catalogue import Catalogue, read_catalogue
from rotation.config_paths import STRATEGY_CONFIG_DIR
from rotation.sources.files import load_dataset_spec
from rotation.strategy import (
    SAMPLE_DATASET,
    StrategyConfig,
    StrategyConfigError,
    StrategyWarning,
    load_strategy,
)
from sensors.alerts import run_failure_alert_sensor
from trading.account import Account


def market_data_resource(settings: Settings) -> MarketDataResource:
    md = settings.market_data
    common = {"calendar_name": settings.calendar, "calendar_start": settings.calendar_start}
    if md.source == "files":
        assert md.files_root is not None
        return FileMarketData(
            root=str(md.files_root.resolve()),
            dataset_config=str(md.dataset_config_path().resolve()),
            **common,
        )
    if md.source == "akshare":
        return AkshareMarketData(
            symbols=md.akshare_symbols, adjust=md.akshare_adjust, start=md.akshare_start,
            retries=md.akshare_retries, **common,
        )
    return SampleMarketData(
        seed=md.sample_seed, n_funds=md.sample_funds, start=md.sample_start,
        end=md.sample_end, **common,
    )


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


DEFAULT_STRATEGY = "etf_rotation_default"


def _source_name(settings: Settings) -> str | None:
    """The name of the configured data (a dataset config's own ``name``: a copy of a config
    under another path, e.g. one ending earlier, is still that data)."""
    md = settings.market_data
    if md.source == "sample":
        return SAMPLE_DATASET
    if md.source != "files":
        return None
    return load_dataset_spec(md.dataset_config_path()).name


def _data_strategy(settings: Settings, catalogue: Catalogue, source: str | None) -> str:
    """With ETF_STRATEGY unset: the strategy this data's deployment chose when it first loaded
    (kept in ``<home>/<data>/deployment_strategy``) while its file is in force and still trades
    the data, so a new file sorting before it cannot take its place on a reload; else the
    strategy of the data (:func:`_strategy_of_dataset`), then kept."""
    record = settings.data_home / "deployment_strategy"
    kept = record.read_text(encoding="utf-8").strip() if record.is_file() else ""
    running = catalogue.files.get(kept)
    if running is not None and source is not None and running.universe.dataset == source:
        return kept
    file = _strategy_of_dataset(catalogue, source)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(file + "\n", encoding="utf-8")
    except OSError as exc:   # a read-only home still loads: the choice is just not kept
        warnings.warn(f"cannot keep the deployment's strategy in {record}: {exc}",
                      StrategyWarning, stacklevel=2)
    return file


def _strategy_of_dataset(catalogue: Catalogue, dataset: str | None) -> str:
    """The file of the strategy in force whose universe trades ``dataset``; when none does,
    the default strategy (its universe is then checked against the data when it runs). Never
    a classic strategy: the data's strategy is its rotation, a classic one runs only when
    ETF_STRATEGY names it (or beside it). Not while a refused file without a valid version in
    force names the dataset and comes before that file (so it would have been chosen, had it
    validated): the deployment must not switch strategies because a file broke. A broken file
    after it could never be the deployment's strategy: it is refused and the deployment loads
    (a new file added beside it)."""
    if dataset is None:
        return DEFAULT_STRATEGY
    chosen = next((file for file, s in catalogue.files.items()
                   if s.universe.dataset == dataset and s.classic is None), None)
    broken = [r for r in catalogue.refused if r.may_trade(dataset)
              and (chosen is None or r.path.name < f"{chosen}.yaml")]
    if broken:
        raise SettingsError(
            f"setting strategy [env ETF_STRATEGY] is unset and a refused strategy file trades "
            f"{dataset!r}: " + "; ".join(r.why for r in broken))
    return chosen or DEFAULT_STRATEGY


def strategy_for(settings: Settings) -> StrategyConfig:
    """The deployment's strategy (:func:`deployment_strategies`)."""
    return deployment_strategies(settings).strategy


@dataclass(frozen=True)
class Deployed:
    strategy: StrategyConfig            # the deployment's: the daily path and the account's
    others: list[StrategyConfig]        # run beside it
    catalogue: Catalogue                # the strategy files as read


def deployment_strategies(settings: Settings) -> Deployed:
    """The deployment's strategy and the others run beside it.

    The deployment's strategy is the configured one (``ETF_STRATEGY``: a file of the strategy
    folder, or a path), or the one that trades the configured data; an explicitly chosen
    strategy must name the configured market data. The others: ``ETF_STRATEGIES``, or every
    strategy in force that trades the configured data.

    The strategy files are read once, as a catalogue (rotation.catalogue): a broken file is
    refused with a warning naming file, field and why; a strategy whose file broke after it
    last validated keeps running that version (kept in ``<home>/<data>/strategies``)."""
    source = _source_name(settings)
    chosen = settings.strategy
    catalogue = read_catalogue(settings.strategy_dir, kept=settings.data_home / "strategies")
    for refused in catalogue.refused:
        warnings.warn(refused.describe(), StrategyWarning, stacklevel=2)
    if chosen is not None and not _in_catalogue(chosen, settings.strategy_dir):
        try:
            strategy = load_strategy(chosen)
        except StrategyConfigError as exc:
            raise SettingsError(f"setting strategy [env ETF_STRATEGY]={chosen!r}: {exc}"
                                ) from None
    else:
        file = Path(chosen).stem if chosen else _data_strategy(settings, catalogue, source)
        strategy = _in_force(catalogue, file, settings, "strategy [env ETF_STRATEGY]")
    wanted = strategy.universe.dataset
    if chosen and source is not None and wanted is not None and wanted != source:
        raise SettingsError(
            f"setting strategy [env ETF_STRATEGY]={chosen!r} trades the dataset "
            f"{wanted!r} but market_data is {source!r}: pick the strategy of that data (e.g. "
            f"etf_rotation_sample, etf_rotation_akshare) or point market_data at {wanted!r}")
    return Deployed(strategy, _others(settings, catalogue, strategy, source), catalogue)


def _in_force(catalogue: Catalogue, file: str, settings: Settings, setting: str
              ) -> StrategyConfig:
    if file not in catalogue.files:
        folder = settings.strategy_dir or STRATEGY_CONFIG_DIR
        why = catalogue.why_not(file) or (f"no strategy file {file}.yaml in {folder} (known: "
                                          f"{sorted(catalogue.files)})")
        raise SettingsError(f"setting {setting}={file!r}: {why}")
    return catalogue.files[file]


def _others(settings: Settings, catalogue: Catalogue, primary: StrategyConfig,
            source: str | None) -> list[StrategyConfig]:
    """The strategies beside ``primary``: the listed ones (a listed file that was refused is
    left out: the warning names it), or every one in force that trades ``source``."""
    if settings.strategies is None:
        return [s for s in catalogue.files.values()
                if source is not None and s.universe.dataset == source and s.name != primary.name]
    setting = "strategies [env ETF_STRATEGIES]"
    listed = [f for f in settings.strategies
              if f in catalogue.files or catalogue.why_not(f) is None]
    others = [_in_force(catalogue, f, settings, setting) for f in listed]
    for other in others:
        if source is not None and other.universe.dataset not in {None, source}:
            raise SettingsError(f"setting {setting}: strategy {other.name} trades "
                                f"{other.universe.dataset!r} but market_data is {source!r}")
    return [s for s in others if s.name != primary.name]


def _in_catalogue(chosen: str, folder: Path | None) -> bool:
    """Whether ``chosen`` (a name, or a path) is a file of the strategy folder."""
    path = Path(chosen)
    if path.suffix not in {".yaml", ".yml"} and path.name == chosen:
        return True
    return path.resolve().parent == (folder or STRATEGY_CONFIG_DIR).resolve()


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

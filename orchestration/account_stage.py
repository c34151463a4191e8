"""The execution stage of each account (issue 15): its gate, risk, book and report, its
execution, kill-switch and supersede jobs, its end-of-day schedule and its sensors (on a vn.py
venue, also the slice-end job and sensor: cancel/replace at each slice's end).

The deployment's account (``execution.account_id``) keeps the plain names (``approved_signal``,
``execution_job``), so the daily path, the API and the demo read what they always read. A further
account (``execution.accounts``) is one asset group named after its stage (its id with ``-`` as
``_``), its keys under that name (``paper_two/approved_signal``) and its jobs, schedule and
sensors prefixed (``paper_two_execution_job``). Every account reads the same research assets:
the target portfolios and backtests of the strategies it trades.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import dagster as dg

from assets.allocation import allocation_assets
from assets.compliance import compliance_assets
from assets.signals import GuardingCheck, signal_assets
from jobs.daily import end_of_day_job, end_of_day_schedule
from jobs.execution import execution_jobs
from jobs.signal_decisions import supersede_signal_job
from jobs.slice_end import slice_end_job
from orchestration.dagster_private import with_key_prefix
from orchestration.settings import AccountSettings, Settings, SettingsError
from orchestration.strategy_stage import STAGE_GROUPS, strategy_asset_key
from resources.execution import quote_lookback
from rotation.allocation import allocate
from rotation.calendar import TradingCalendar
from rotation.strategy import StrategyConfig
from sensors.breaches import risk_breach_alert_sensor
from sensors.executions import stalled_execution_sensor
from sensors.risk_monitor import intraday_risk_sensor
from sensors.signals import approved_signal_sensor
from sensors.slice_ends import slice_end_sensor
from trading.account import Account, Allocation, stage_of
from trading.slice_end import closes_slices

# What an account decides up to its gate (user strings without the account's prefix).
DECIDED = ("account_allocation", "account_target", "approved_signal")


@dataclass(frozen=True)
class AccountStage:
    account: Account
    traded: list[StrategyConfig]        # the strategies it trades (several: netted)
    primary: str                        # the deployment's strategy (plain research keys)
    main: bool                          # the deployment's account (plain names)

    @property
    def stage(self) -> str:
        return stage_of(self.account.account_id)

    @property
    def prefix(self) -> str:
        """Of the names of its jobs, schedule and sensors."""
        return "" if self.main else f"{self.stage}_"

    def key(self, asset: str) -> str:
        """The user string of one of its own assets."""
        return asset if self.main else f"{self.stage}/{asset}"

    def research(self, strategy: StrategyConfig, asset: str) -> str:
        """The user string of a traded strategy's research asset."""
        return strategy_asset_key(strategy.name, asset, strategy.name == self.primary
                                  ).to_user_string()

    def before_gate(self, defined: set[str]) -> list[str]:
        """What the daily path refreshes for this account besides the deployment's own gate:
        its strategies' targets, a netting account's allocation and target, a further account's
        gate. Every traded strategy must have its backtest and target (a strategy without a
        walk-forward window in the data cannot be traded). The deployment's account trading its
        strategy alone adds nothing (daily_job holds its path)."""
        if self.main and not self.account.allocation.netted:
            return []
        needed = [self.research(s, a) for s in self.traded
                  for a in ("oos_backtest", "target_portfolio")]
        missing = [k for k in needed if k not in defined]
        if missing:
            raise SettingsError(f"setting {self.setting}: {missing} are not defined (a "
                                "strategy without a complete walk-forward window in the data "
                                "cannot be traded)")
        return ([k for k in needed if k.endswith("target_portfolio")]
                + self.decided(gate=not self.main))

    def decided(self, gate: bool = True) -> list[str]:
        """Its own assets up to its gate (user strings)."""
        own = list(DECIDED[:2]) if self.account.allocation.netted else []
        return [self.key(a) for a in own + (["approved_signal"] if gate else [])]

    @property
    def setting(self) -> str:
        return ("execution.allocation [env ETF_EXECUTION__ALLOCATION]" if self.main else
                f"execution.accounts[{self.account.account_id}] [env ETF_EXECUTION__ACCOUNTS]")


def account_of(settings: Settings, strategy: StrategyConfig) -> Account:
    """The deployment's account: the settings' id, cash, limits and conduct with the
    strategy's cost model (the paper venue charges what the backtest charges) and its market's
    lot; unset strategies: the deployment's strategy alone."""
    ex = settings.execution
    allocation = ex.allocation
    if not allocation.strategies:
        allocation = allocation.model_copy(update={"strategies": (strategy.name,)})
    # Validated as execution's fields already (its id may be any non-empty text).
    spec = AccountSettings.model_construct(
        account_id=ex.account_id, initial_cash=ex.initial_cash, venue=ex.venue, risk=ex.risk,
        conduct=ex.conduct, allocation=allocation)
    return _account(settings, spec, strategy, "execution.risk.lot_size")


def _account(settings: Settings, spec: AccountSettings, strategy: StrategyConfig,
             lot_setting: str) -> Account:
    """``spec`` as an account trading through ``strategy``'s market (its costs and lot)."""
    lot = strategy.market.lot_size
    if "lot_size" in spec.risk.model_fields_set and spec.risk.lot_size != lot:
        raise SettingsError(f"setting {lot_setting}: {spec.risk.lot_size} differs from "
                            f"market {strategy.market.name}'s lot of {lot} units; lots come "
                            "from the market profile (remove the setting)")
    ex = settings.execution
    return Account(account_id=spec.account_id, initial_cash=spec.initial_cash, venue=spec.venue,
                   costs=strategy.cost_model, allocation=spec.allocation,
                   limits=spec.risk.model_copy(update={"lot_size": lot}), conduct=spec.conduct,
                   lock_timeout_seconds=ex.lock_timeout_seconds,
                   quote_lookback_sessions=quote_lookback(settings.quality.lookback_sessions,
                                                           spec.risk.liquidity_sessions),
                   parity_tolerance=ex.parity_tolerance)


def account_stages(settings: Settings, strategy: StrategyConfig,
                   running: list[StrategyConfig]) -> list[AccountStage]:
    """The deployment's account, then the further ones; ``running``: every strategy the
    deployment runs (``strategy`` first)."""
    by_name = {s.name: s for s in running}
    taken = set(by_name) | STAGE_GROUPS
    stages = [AccountStage(account_of(settings, strategy), [], strategy.name, main=True)]
    for i, spec in enumerate(settings.execution.accounts):
        first = by_name.get(spec.allocation.strategies[0], strategy)
        account = _account(settings, spec, first,
                           f"execution.accounts[{i}].risk.lot_size [env ETF_EXECUTION__ACCOUNTS]")
        stage = AccountStage(account, [], strategy.name, main=False)
        if stage.stage in taken:
            raise SettingsError(f"setting {stage.setting}: account {account.account_id} names "
                                f"stage {stage.stage!r}, which is a strategy or a stage group "
                                "of this deployment (its assets' group and prefix)")
        stages.append(stage)
    # The strategies are checked once each stage can name its setting in the message.
    return [replace(s, traded=_traded(s, by_name)) for s in stages]


def _traded(stage: AccountStage, running: dict[str, StrategyConfig]) -> list[StrategyConfig]:
    """The account's strategies, of those the deployment runs, in one market."""
    spec: Allocation = stage.account.allocation
    unknown = [n for n in spec.strategies if n not in running]
    if unknown:
        raise SettingsError(f"setting {stage.setting}: strategies {unknown} are not run by this "
                            f"deployment (it runs {sorted(running)}; see ETF_STRATEGIES)")
    if stage.main and not spec.netted and spec.strategies != (stage.primary,):
        raise SettingsError(f"setting {stage.setting}: an account trading one strategy trades "
                            f"the deployment's ({stage.primary}); to trade {spec.strategies[0]} "
                            "alone, make it the deployment's strategy (ETF_STRATEGY) or give it "
                            "an account of its own (execution.accounts)")
    if spec.method == "fixed" and spec.weights:
        try:
            allocate("fixed", list(spec.strategies), fixed=spec.weights)
        except ValueError as exc:
            raise SettingsError(f"setting {stage.setting}: {exc}") from None
    traded = [running[n] for n in spec.strategies]
    markets = {s.market.name for s in traded}
    if len(markets) > 1:
        raise SettingsError(f"setting {stage.setting}: its strategies trade {sorted(markets)}; "
                            "an account trades one market")
    return traded


def account_definitions(settings: Settings, stage: AccountStage,
                        guards: list[GuardingCheck], calendar: TradingCalendar
                        ) -> dg.Definitions:
    """approved_signal → sensor → execution_job → positions_report, and the kill switch; the
    account's risk and compliance report and its breach alerts; a netting account's
    allocation and target before its gate."""
    account, traded, prefix = stage.account, stage.traded, stage.prefix
    webhook = settings.alert_webhook_url or None
    timeout = settings.alert_webhook_timeout_seconds
    execution_job, kill_switch_job = execution_jobs(account, prefix, traded[0].market.name)
    assets = signal_assets(traded, account, guards,
                           target_portfolio=stage.research(traded[0], "target_portfolio"),
                           oos_backtests={s.name: stage.research(s, "oos_backtest")
                                          for s in traded})
    assets += compliance_assets(account, storage_root=settings.resolved_storage_root.resolve())
    if account.allocation.netted:
        def keys(asset: str) -> dict[str, dg.AssetKey]:
            return {s.name: dg.AssetKey.from_user_string(stage.research(s, asset))
                    for s in traded}

        assets += allocation_assets(account, keys("oos_backtest"), keys("target_portfolio"))
    if not stage.main:
        assets = list(dg.map_asset_specs(
            lambda spec: spec.replace_attributes(group_name=stage.stage),
            with_key_prefix(assets, stage.stage)))
    end_of_day = end_of_day_job(prefix, None if stage.main else stage.stage)
    ex = settings.execution
    jobs = [execution_job, kill_switch_job, end_of_day, supersede_signal_job(account, prefix)]
    sensors = [approved_signal_sensor(execution_job, account, prefix,
                                      gate=stage.key("approved_signal")),
               stalled_execution_sensor(execution_job, account, webhook, timeout,
                                        prefix=prefix),
               intraday_risk_sensor(account, traded[0].market.name, prefix=prefix),
               risk_breach_alert_sensor(account, webhook, timeout, prefix=prefix)]
    if closes_slices(account.venue):
        # The vn.py venue's children rest past their slice end; the paper broker's do not.
        slice_job = slice_end_job(account, prefix)
        jobs.append(slice_job)
        sensors.append(slice_end_sensor(slice_job, account, prefix))
    return dg.Definitions(
        assets=assets, jobs=jobs,
        schedules=[end_of_day_schedule(end_of_day, calendar, ex.end_of_day_cron,
                                       settings.schedule_timezone, prefix)],
        sensors=sensors)

"""One strategy's research stage from one factory (issue 15 item 1): its factor screening,
walk-forward windows, out-of-sample backtest and target portfolio, with its jobs and its weekly
rebuild. Every strategy of the deployment is built here; the market data and the factor panel
are shared stages computed once for all of them (orchestration.definitions).

The deployment's own strategy (``primary``: the one the daily path, the approval gate and the
account trade) keeps the plain keys and the stage groups. Every other strategy is one asset
group named after it, its keys under its name (``<strategy>/oos_backtest``), its jobs and its
schedule prefixed with it (``<strategy>_research_job``, ``<strategy>_weekly_research``), and
one MLflow experiment of its own, as every strategy has (``StrategyConfig.experiment_name``).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import dagster as dg
import pandas as pd

from assets.allocation import ALLOCATION_GROUP
from assets.comparison import COMPARISON_GROUP
from assets.compliance import COMPLIANCE_GROUP
from assets.market import CROSS_SECTION_GROUP, MARKET_GROUP
from assets.metadata import table
from assets.research import FACTORS_GROUP, SCREENING_GROUP, screening_assets
from assets.signals import EXECUTION_GROUP, SIGNALS_GROUP
from assets.strategy_research import research_partitions, strategy_research_assets
from assets.walk_forward import BACKTEST_GROUP, PORTFOLIO_GROUP, WFO_GROUP
from jobs.daily import weekly_research
from jobs.research import portfolio_job, research_job, walk_forward_job
from orchestration.dagster_private import with_key_prefix
from rotation.catalogue import Catalogue
from rotation.cross_section import CrossSectionConfig
from rotation.strategy import StrategyConfig

CATALOGUE_ASSET = "strategy_files"
CATALOGUE_GROUP = "strategies"
WALK_FORWARD_ASSETS = ("wfo_windows", "wfo_results")
PORTFOLIO_ASSETS = ("oos_backtest", "oos_positions", "target_portfolio")
# The groups of the deployment's stages (their jobs select by group).
STAGE_GROUPS = frozenset({MARKET_GROUP, CROSS_SECTION_GROUP, FACTORS_GROUP, SCREENING_GROUP,
                          WFO_GROUP, BACKTEST_GROUP, PORTFOLIO_GROUP, SIGNALS_GROUP,
                          EXECUTION_GROUP, COMPLIANCE_GROUP, COMPARISON_GROUP,
                          ALLOCATION_GROUP, CATALOGUE_GROUP})
# A strategy's name becomes a group, an asset key prefix and job names (Dagster's name rule).
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class StrategyStage:
    strategy: StrategyConfig
    primary: bool
    cross_section: CrossSectionConfig
    sessions: pd.DatetimeIndex          # the calendar sessions of the market data
    executor: dg.ExecutorDefinition     # of the walk-forward job
    fan_out: bool
    cron: str
    timezone: str
    workers: int = 1                    # local processes the windows of a run are spread over

    @property
    def prefix(self) -> str:
        """Of the names of this strategy's jobs, schedule and sensors."""
        return "" if self.primary else f"{self.strategy.name}_"

    def key(self, asset: str) -> dg.AssetKey:
        return strategy_asset_key(self.strategy.name, asset, self.primary)


def strategy_asset_key(strategy: str, asset: str, primary: bool) -> dg.AssetKey:
    """The key of ``strategy``'s ``asset``: plain for the deployment's strategy, else under
    the strategy's name."""
    return dg.AssetKey(asset) if primary else dg.AssetKey([strategy, asset])


def check_name(strategy: StrategyConfig) -> None:
    if not _NAME.match(strategy.name):
        raise ValueError(f"strategy name {strategy.name!r}: only letters, digits and _ (it names "
                         "the strategy's asset group, key prefix and jobs)")
    if strategy.name in STAGE_GROUPS:
        raise ValueError(f"strategy name {strategy.name!r} is the name of a stage's asset group "
                         f"({sorted(STAGE_GROUPS)}): the stage's jobs would select its assets")


def strategy_stage(stage: StrategyStage) -> dg.Definitions:
    """The strategy's research assets, jobs, schedule and sensors (module docstring); without
    a complete walk-forward window in the data, its screening only (with a warning). A classic
    strategy beside the deployment's has no factor screening: its week starts with its
    windows."""
    s = stage.strategy
    check_name(s)
    screening = ([] if s.classic is not None and not stage.primary else
                 screening_assets(s.factor_specs, s.horizons, s.screening_horizon,
                                  s.select_kwargs(), experiment=s.experiment_name))
    windows = research_partitions(stage.sessions, s)
    walk_forward = ([] if windows is None else strategy_research_assets(
        s, stage.cross_section, windows, fan_out=stage.fan_out, workers=stage.workers))
    assets = _placed(stage, [*screening, *walk_forward])
    research = (research_job(stage.prefix, None if stage.primary else
                             dg.AssetSelection.assets(*[a.key for a in assets[:len(screening)]]))
                if screening else None)
    if windows is None:
        warnings.warn(f"strategy {s.name}: the {len(stage.sessions)} sessions of the market "
                      "data hold no complete walk-forward window; its walk-forward, backtest "
                      "and portfolio assets are not defined", stacklevel=2)
        return dg.Definitions(assets=assets, jobs=[research] if research else [],
                              schedules=weekly_research(research, None, None, [], stage.cron,
                                                        stage.timezone, prefix=stage.prefix)
                              if research else [])
    windows_job = walk_forward_job(stage.executor, fan_out=stage.fan_out, prefix=stage.prefix,
                                   selection=_selection(stage, WALK_FORWARD_ASSETS))
    portfolio = portfolio_job(stage.prefix, _selection(stage, PORTFOLIO_ASSETS))
    automation = weekly_research(research, windows_job, portfolio,
                                 list(windows.get_partition_keys()), stage.cron,
                                 stage.timezone, fan_out=stage.fan_out, prefix=stage.prefix)
    return dg.Definitions(
        assets=assets, jobs=[j for j in (research, windows_job, portfolio) if j is not None],
        schedules=[a for a in automation if isinstance(a, dg.ScheduleDefinition)],
        sensors=[a for a in automation if isinstance(a, dg.SensorDefinition)])


def _placed(stage: StrategyStage, assets: list[dg.AssetsDefinition]
            ) -> list[dg.AssetsDefinition]:
    """The primary strategy's assets as built; another's under its name, in its own group."""
    if stage.primary:
        return assets
    name = stage.strategy.name
    return list(dg.map_asset_specs(lambda spec: spec.replace_attributes(group_name=name),
                                   with_key_prefix(assets, name)))


def _selection(stage: StrategyStage, names: tuple[str, ...]) -> dg.AssetSelection | None:
    """None for the primary strategy (its jobs select the stage groups)."""
    return None if stage.primary else dg.AssetSelection.assets(*map(stage.key, names))


def catalogue_spec(catalogue: Catalogue, running: list[StrategyConfig], folder: str
                   ) -> dg.AssetSpec:
    """The strategy files as the last code-location reload read them (issue 15 item 5): which
    strategy each file is and whether it runs here, and every refused file with its file, field
    and why, in the Dagster UI beside the assets they define."""
    names = [s.name for s in running]
    rows = [{"file": file, "strategy": s.name, "dataset": s.universe.dataset or "",
             "state": _state(s.name, names)} for file, s in catalogue.files.items()]
    for refused in catalogue.refused:
        rows.append({"file": refused.path.stem,
                     "strategy": refused.kept.name if refused.kept else "",
                     "dataset": refused.dataset or "",
                     "state": ("refused: its last valid version runs" if refused.kept
                               else "refused: not loaded")})
    why = "\n\n".join(f"```\n{r.describe()}\n```" for r in catalogue.refused)
    head = (f"{len(catalogue.refused)} strategy file(s) REFUSED at the last reload (see "
            "refusals); the others run. " if catalogue.refused else "")
    return dg.AssetSpec(
        CATALOGUE_ASSET, group_name=CATALOGUE_GROUP, kinds={"yaml"},
        description=head + f"The strategy files of {folder}, read at each code-location reload "
        "(a new or changed file takes effect on reload; a broken one is refused with file, "
        "field and why, and a strategy whose file broke keeps running its last valid version).",
        # The state beside the file: what the reader looks for first (a narrow column shows it).
        metadata={"files": table(pd.DataFrame(rows, columns=["file", "state", "strategy",
                                                             "dataset"]), 200),
                  "running": dg.MetadataValue.json(names),
                  "refused": dg.MetadataValue.int(len(catalogue.refused)),
                  "refusals": dg.MetadataValue.md(why or "none")})


def _state(name: str, running: list[str]) -> str:
    if name not in running:
        return "valid, not run here (another dataset or not listed)"
    return "runs: the deployment's strategy" if name == running[0] else "runs beside it"

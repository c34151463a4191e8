"""The research assets of one strategy, by its kind: a classic strategy (``classic:`` section)
gets :func:`assets.classic_walk_forward.classic_walk_forward_assets`, a rotation
:func:`assets.walk_forward.walk_forward_assets`. Both make the same asset keys, partitions and
groups, so whatever composes the definitions (one strategy or several, each under its own key
prefix) calls these two functions and nothing else."""

import dagster as dg
import pandas as pd

from assets.classic_walk_forward import classic_walk_forward_assets
from assets.walk_forward import walk_forward_assets, warmup_sessions
from rotation import classic_search
from rotation import walkforward as wf
from rotation.cross_section import CrossSectionConfig
from rotation.strategy import StrategyConfig


def strategy_warmup(strategy: StrategyConfig) -> int:
    """Sessions before the first in-sample start: the classic generator's longest look-back,
    or the rotation's longest factor window."""
    if strategy.classic is not None:
        return classic_search.warmup_sessions(strategy.classic)
    return warmup_sessions(strategy)


def research_partitions(sessions: pd.DatetimeIndex, strategy: StrategyConfig
                        ) -> dg.StaticPartitionsDefinition | None:
    """One partition per walk-forward window of ``strategy`` over the sessions of the data
    (None when the history holds no complete window)."""
    windows = wf.wfo_windows(sessions[strategy_warmup(strategy):], strategy.wfo_config)
    if not windows:
        return None
    return dg.StaticPartitionsDefinition([w.key for w in windows])


def strategy_research_assets(strategy: StrategyConfig, cross_section: CrossSectionConfig,
                             partitions: dg.StaticPartitionsDefinition, fan_out: bool = False,
                             workers: int = 1) -> list[dg.AssetsDefinition]:
    """wfo_windows, wfo_results, oos_backtest, oos_positions and target_portfolio of
    ``strategy`` (``partitions``: :func:`research_partitions`; ``workers``: the local
    processes a rotation's windows are searched in)."""
    if strategy.classic is not None:
        return classic_walk_forward_assets(strategy, cross_section, partitions, fan_out=fan_out)
    return walk_forward_assets(strategy, cross_section, partitions, fan_out=fan_out,
                               workers=workers)

"""Strategies side by side (issue 15 item 4), pure computation: each strategy's stitched
out-of-sample equity on the sessions all of them cover, rebased to 1, their metrics over that
common span (so they compare like for like) and the correlation of their daily returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from rotation.backtest.metrics import performance_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Comparison", "compare", "comparison_figure"]


@dataclass(frozen=True)
class Comparison:
    curves: pd.DataFrame        # common sessions × strategies, each rebased to 1
    metrics: pd.DataFrame       # strategy × metric, over the common sessions
    correlation: pd.DataFrame   # strategy × strategy, of the daily returns
    spans: pd.DataFrame         # strategy × (first, last, sessions) of its own curve


def compare(equity: Mapping[str, pd.Series]) -> Comparison:
    """Compare the strategies' out-of-sample equity curves (a date index each); raises
    :class:`ValueError` naming a strategy without a curve or a span shared by too few."""
    if len(equity) < 1:
        raise ValueError("compare: no strategy to compare")
    empty = sorted(name for name, curve in equity.items() if curve.dropna().empty)
    if empty:
        raise ValueError(f"compare: strategies {empty} have no out-of-sample equity yet")
    joined = pd.DataFrame({name: curve.astype(float) for name, curve in equity.items()})
    common = joined.dropna()
    if len(common) < 2:
        raise ValueError(f"compare: the strategies share {len(common)} out-of-sample "
                         "session(s); a comparison needs at least 2")
    curves = common / common.iloc[0]
    metrics = pd.DataFrame({name: performance_metrics(curves[name]) for name in curves}).T
    spans = pd.DataFrame({name: {"first": curve.dropna().index.min(),
                                 "last": curve.dropna().index.max(),
                                 "sessions": int(curve.notna().sum())}
                          for name, curve in equity.items()}).T
    return Comparison(curves=curves, metrics=metrics,
                      correlation=curves.pct_change().iloc[1:].corr(), spans=spans)


def comparison_figure(comparison: Comparison) -> Figure:
    """Every strategy's rebased out-of-sample equity on one chart."""
    from rotation.report import lines_figure

    first, last = comparison.curves.index[[0, -1]]
    return lines_figure(comparison.curves, ylabel="equity (rebased to 1)",
                        title=f"Out-of-sample equity, {first:%Y-%m-%d} to {last:%Y-%m-%d}")

"""What the research chain and the paper account stored, as the desk API reads it: each dataset
home's stitched out-of-sample backtest (``oos_backtest``) and target (``target_portfolio``),
and the paper account against its backtest (``positions_report``), from the Parquet files the
pipeline's IO manager wrote. A file is read again only when it changed (path, size, mtime).

A deployment runs several strategies side by side (orchestration.strategy_stage): its own
strategy's assets keep plain keys (``<storage>/oos_backtest.parquet``), every further strategy's
are keyed under its name (``<storage>/<strategy>/oos_backtest.parquet``, the IO manager's
``path_for``). The strategy is the one its target names. Metrics come from
:func:`rotation.backtest.metrics.performance_metrics`, the function the backtest reports use."""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from orchestration.settings import Settings
from rotation.backtest.metrics import performance_metrics
from trading.account import stage_of

OOS_FILE = "oos_backtest.parquet"
TARGET_FILE = "target_portfolio.parquet"
POSITIONS_FILE = "positions_report.parquet"
BENCHMARK_PREFIX = "benchmark_"


@dataclass(frozen=True)
class StrategyResults:
    strategy: str
    storage: Path
    daily: pd.DataFrame            # date-indexed: equity, cash, drawdown, benchmark_*, window
    # The asset key path before the asset's name: () for the deployment's own strategy,
    # (strategy,) for one beside it.
    key_prefix: tuple[str, ...] = ()

    @property
    def benchmarks(self) -> list[str]:
        return [c.removeprefix(BENCHMARK_PREFIX) for c in self.daily.columns
                if c.startswith(BENCHMARK_PREFIX)]

    @property
    def folder(self) -> Path:
        """Where the IO manager wrote this strategy's assets."""
        return self.storage.joinpath(*self.key_prefix)

    def asset_key(self, asset: str) -> tuple[str, ...]:
        return (*self.key_prefix, asset)


@functools.lru_cache(maxsize=64)
def _parquet(path: str, size: int, mtime_ns: int) -> pd.DataFrame:
    return pd.read_parquet(path)


def read_stored(path: Path) -> pd.DataFrame | None:
    """The file's frame (None when absent), from memory while the file is unchanged."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return _parquet(str(path), stat.st_size, stat.st_mtime_ns)


def storage_roots(settings: Settings) -> list[Path]:
    """The configured home's storage first, then every other dataset home's under ETF_HOME."""
    roots = [settings.resolved_storage_root]
    if settings.home.is_dir():
        roots += [d / "storage" for d in sorted(settings.home.iterdir())
                  if (d / "storage").is_dir() and d / "storage" not in roots]
    return roots


def results_in(storage: Path, key_prefix: tuple[str, ...] = ()) -> StrategyResults | None:
    folder = storage.joinpath(*key_prefix)
    target, daily = read_stored(folder / TARGET_FILE), read_stored(folder / OOS_FILE)
    if target is None or daily is None or target.empty or daily.empty:
        return None
    return StrategyResults(strategy=str(target["strategy"].iloc[0]), storage=storage,
                           daily=daily.assign(date=pd.to_datetime(daily["date"]))
                           .set_index("date").sort_index(), key_prefix=key_prefix)


def key_prefixes(storage: Path) -> list[tuple[str, ...]]:
    """The deployment's own strategy's (plain keys) first, then every strategy keyed under its
    name: a folder holding an ``oos_backtest`` file (account stages and partitioned assets
    are folders too, without one)."""
    beside = sorted(d.name for d in storage.iterdir() if (d / OOS_FILE).is_file()) \
        if storage.is_dir() else []
    return [(), *((name,) for name in beside)]


def all_results(settings: Settings) -> dict[str, StrategyResults]:
    """Every strategy with stored results, by name (the configured home wins a tie, and in
    a home the deployment's own strategy)."""
    found: dict[str, StrategyResults] = {}
    for root in storage_roots(settings):
        for prefix in key_prefixes(root):
            results = results_in(root, prefix)
            if results is not None and results.strategy not in found:
                found[results.strategy] = results
    return found


def deployment_accounts(settings: Settings) -> list[str]:
    """The accounts this deployment trades: its own first, then the further ones."""
    execution = settings.execution
    return [execution.account_id, *(a.account_id for a in execution.accounts)]


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def finite_values(values: Mapping[str, float]) -> dict[str, float | None]:
    """``values`` with NaN and infinities as None (JSON has neither)."""
    return {str(k): finite_or_none(v) for k, v in values.items()}


def metrics_of(equity: pd.Series, initial: float | None = None) -> dict[str, float | None]:
    """The backtest reports' metrics; with ``initial`` the first session's return is
    measured against it."""
    return finite_values(performance_metrics(equity, initial=initial))


# The days pandas can hold (a query may ask for any date).
FIRST_DAY, LAST_DAY = dt.date(1677, 9, 22), dt.date(2262, 4, 10)


def as_timestamp(day: dt.date | None) -> pd.Timestamp | None:
    """A query's date as a session stamp, clamped to what pandas can hold."""
    return None if day is None else pd.Timestamp(min(max(day, FIRST_DAY), LAST_DAY))


def between(frame: pd.DataFrame, since: pd.Timestamp | None,
            until: pd.Timestamp | None) -> pd.DataFrame:
    return frame.loc[(since or frame.index.min()):(until or frame.index.max())]


def thinned(frame: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """At most ``max_points`` evenly spaced rows, the first and the last always kept (a curve
    for a chart; the metrics are computed on every session)."""
    if len(frame) <= max_points:
        return frame
    step = math.ceil(len(frame) / max_points)
    keep = [*range(0, len(frame) - 1, step), len(frame) - 1]
    return frame.iloc[keep]


def paper_against_backtest(settings: Settings, account_id: str,
                           valuations: pd.DataFrame) -> pd.DataFrame:
    """The ledger's valuations of the account per session beside the backtest engine's equity
    for the same approved signals, as the account's ``positions_report`` computed and stored
    them (an account this deployment does not trade has none)."""
    frame = valuations.set_index("session")[["cash", "positions_value", "equity"]]
    frame["backtest_equity"] = math.nan
    root = settings.resolved_storage_root
    further = {a.account_id for a in settings.execution.accounts}
    report = (read_stored(root / POSITIONS_FILE) if account_id == settings.execution.account_id
              else read_stored(root / stage_of(account_id) / POSITIONS_FILE)
              if account_id in further else None)
    if report is not None and "backtest_equity" in report:
        stored = report.assign(date=pd.to_datetime(report["date"])).set_index("date")
        frame["backtest_equity"] = stored["backtest_equity"].reindex(frame.index)
    frame["difference"] = frame["equity"] / frame["backtest_equity"] - 1.0
    return frame

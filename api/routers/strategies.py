"""Strategies: their configuration (the deployment's strategy folder, ETF_STRATEGY_DIR, read as
its code location reads it; the refused files with why) and the latest stored target portfolio
with the reason each fund is in or out (the ``target_portfolio`` asset's Parquet file)."""

from __future__ import annotations

import datetime as dt
import functools
import math
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from api import results, windows
from api.deps import PageParams, State, authorize
from api.paging import page_of
from api.permissions import V1
from api.schemas import (
    SIGNED_IN_RESPONSES,
    CurvePoint,
    Page,
    RefusedStrategyFile,
    StrategyComparison,
    StrategyDetail,
    StrategyPerformance,
    StrategySummary,
    StrategyWindows,
    TargetPortfolio,
    TargetWeight,
    text_filter,
)
from orchestration.settings import Settings
from rotation.catalogue import Catalogue, RefusedFile, read_catalogue
from rotation.comparison import Comparison, compare
from rotation.config_paths import CONFIG_DIR, STRATEGY_CONFIG_DIR
from rotation.strategy import StrategyConfig, StrategyConfigError, load_strategy

router = APIRouter(prefix=f"{V1}/strategies", tags=["strategies"],
                   dependencies=[Depends(authorize)],
                   responses=SIGNED_IN_RESPONSES)

STRATEGY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$"


@dataclass(frozen=True)
class StrategyFolders:
    """Where the deployment reads its strategy files and keeps their last valid versions."""
    files: FilePath
    kept: FilePath

    @classmethod
    def of(cls, settings: Settings) -> StrategyFolders:
        return cls(settings.strategy_dir or STRATEGY_CONFIG_DIR,
                   settings.data_home / "strategies")


def _config_fingerprint(folders: StrategyFolders) -> tuple[tuple[str, int, int], ...]:
    """Name, size and modification time of every configuration file a strategy may read (the
    shipped configuration, the strategy folder and the kept versions): the catalogue is read
    again when one changes, so a new strategy file shows without a restart."""
    paths = {*CONFIG_DIR.rglob("*.yaml"), *folders.files.glob("*.yaml"),
             *folders.kept.glob("*.yaml")}
    return tuple((str(path), stat.st_mtime_ns, stat.st_size)
                 for path in sorted(paths) for stat in [path.stat()])


@functools.lru_cache(maxsize=4)
def _catalogue_of(folders: StrategyFolders,
                  fingerprint: tuple[tuple[str, int, int], ...]) -> Catalogue:
    """The deployment's catalogue as its code location reads it (a strategy whose file broke
    runs its kept version); validating every file takes tens of milliseconds, so it is done
    once per configuration. Read only: the deployment alone keeps valid versions."""
    return read_catalogue(folders.files, kept=folders.kept, keep=False)


def _catalogue(settings: Settings) -> Catalogue:
    folders = StrategyFolders.of(settings)
    return _catalogue_of(folders, _config_fingerprint(folders))


def _strategies(settings: Settings) -> tuple[StrategyConfig, ...]:
    return _catalogue(settings).strategies


def _summary(config: StrategyConfig) -> StrategySummary:
    return StrategySummary(name=config.name, market=config.universe.market,
                           dataset=config.universe.dataset,
                           description=config.description or None)


@router.get("", summary="The configured strategies, by name")
def list_strategies(state: State, paging: PageParams,
                    market: Annotated[str | None, text_filter(100)] = None,
                    dataset: Annotated[str | None, text_filter(200)] = None
                    ) -> Page[StrategySummary]:
    chosen = [s for s in _strategies(state.settings)
              if (market is None or s.universe.market == market)
              and (dataset is None or s.universe.dataset == dataset)]
    return page_of(chosen, paging, _summary)


def _refusal(refused: RefusedFile) -> RefusedStrategyFile:
    # The file's name, not the server's folder: the folder is the deployment's business.
    return RefusedStrategyFile(
        file=refused.path.name, dataset=refused.dataset,
        why=refused.why.replace(str(refused.path), refused.path.name),
        running=refused.kept.name if refused.kept else None,
        fingerprint=refused.kept.fingerprint if refused.kept else None)


@router.get("/refused", summary="The strategy files that do not validate, with file, field "
            "and why, and the last valid version that keeps running in their place")
def refused_strategy_files(state: State, paging: PageParams) -> Page[RefusedStrategyFile]:
    return page_of(list(_catalogue(state.settings).refused), paging, _refusal)


def _number_or_none(value: object) -> float | None:
    number = float(value) if isinstance(value, int | float) else math.nan
    return None if math.isnan(number) else number


def latest_target(storage_root: FilePath, strategy: str) -> TargetPortfolio | None:
    """The strategy's stored target: the deployment's own (plain key) or one keyed under the
    strategy's name beside it."""
    tables = (results.read_stored(storage_root.joinpath(*prefix, results.TARGET_FILE))
              for prefix in results.key_prefixes(storage_root))
    rows = next((t[t["strategy"] == strategy] for t in tables
                 if t is not None and (t["strategy"] == strategy).any()), None)
    if rows is None:
        return None
    weights = [TargetWeight(symbol=str(r["symbol"]), weight=float(r["weight"]),
                            rank=_number_or_none(r.get("rank")), reason=str(r["reason"]))
               for _, r in rows.iterrows()]
    return TargetPortfolio(as_of=pd.Timestamp(rows["date"].iloc[0]).date(),
                           window=str(rows["window"].iloc[0]), weights=weights)


MaxPoints = Annotated[int, Query(ge=2, le=5000, description="Most sessions in a curve")]
Since = Annotated[dt.date | None, Query(description="First session (default: the first)")]
Until = Annotated[dt.date | None, Query(description="Last session (default: the last)")]


@router.get("/compare", summary="Strategies side by side: metrics, growth curves on common "
            "sessions and the correlation of their daily returns",
            responses={404: {"description": "A named strategy has no stored results"}})
def compare_strategies(state: State,
                       names: Annotated[list[str] | None, Query(
                           max_length=50, description="Strategies (default: every one with "
                           "stored results)")] = None,
                       since: Since = None, until: Until = None,
                       max_points: MaxPoints = 500) -> StrategyComparison:
    stored = results.all_results(state.settings)
    chosen = sorted(stored) if not names else list(dict.fromkeys(names))
    missing = [n for n in chosen if n not in stored]
    if missing:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"no stored out-of-sample results for {missing} (stored: "
                            f"{sorted(stored) or 'none'})")
    first, last = results.as_timestamp(since), results.as_timestamp(until)
    try:
        side_by_side: Comparison | None = compare(
            {n: stored[n].daily["equity"].loc[first:last] for n in chosen})
    except ValueError:          # fewer than two common sessions in the range: nothing to show
        side_by_side = None
    if side_by_side is None:
        return StrategyComparison(strategies=chosen, start=None, end=None,
                                  metrics={n: {} for n in chosen}, dates=[],
                                  growth={n: [] for n in chosen}, correlation={})
    growth = side_by_side.curves
    shown = results.thinned(growth, max_points)
    return StrategyComparison(
        strategies=chosen, start=growth.index[0].date(), end=growth.index[-1].date(),
        metrics={n: results.finite_values(side_by_side.metrics.loc[n].to_dict())
                 for n in chosen},
        dates=[d.date() for d in shown.index],
        growth={n: [float(v) for v in shown[n]] for n in chosen},
        correlation=({a: results.finite_values(row) for a, row in
                      side_by_side.correlation.to_dict(orient="index").items()}
                     if len(growth) > 2 else {}))


def _equity_before(stored: results.StrategyResults, shown: pd.DataFrame,
                   name: str, settings: Settings) -> float | None:
    """What the first shown session's return is measured against: the previous session's
    equity, or the backtest's initial cash for the first session (as its reports do)."""
    earlier = stored.daily.loc[:shown.index[0], "equity"].iloc[:-1]
    if len(earlier):
        return float(earlier.iloc[-1])
    configs = {c.name: c for c in _strategies(settings)}
    return configs[name].backtest_config().initial_cash if name in configs else None


@router.get("/{name}/performance", summary="A strategy's stitched out-of-sample metrics and "
            "equity, drawdown and benchmark curves",
            responses={404: {"description": "No stored results for the strategy"}})
def strategy_performance(name: Annotated[str, Path(pattern=STRATEGY_NAME)], state: State,
                         since: Since = None, until: Until = None,
                         max_points: MaxPoints = 500) -> StrategyPerformance:
    stored = results.all_results(state.settings).get(name)
    if stored is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"no stored out-of-sample results for strategy {name!r} "
                            "(its oos_backtest and target_portfolio are not materialised)")
    daily = results.between(stored.daily, results.as_timestamp(since), results.as_timestamp(until))
    if len(daily) < 2:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"strategy {name!r} has fewer than 2 sessions in "
                            f"{since or 'start'}..{until or 'end'}")
    bench = {b: daily[f"{results.BENCHMARK_PREFIX}{b}"] for b in stored.benchmarks}
    bench = {b: curve / curve.dropna().iloc[0] for b, curve in bench.items()
             if curve.notna().sum() > 1}
    drawdown = daily["equity"] / daily["equity"].cummax() - 1.0
    curve = [CurvePoint(date=day.date(), equity=float(row["equity"]),
                        drawdown=float(drawdown.at[day]),
                        benchmarks={b: results.finite_or_none(float(c.at[day]))
                                    for b, c in bench.items()})
             for day, row in results.thinned(daily, max_points).iterrows()]
    return StrategyPerformance(
        strategy=name, start=daily.index[0].date(), end=daily.index[-1].date(),
        sessions=len(daily),
        metrics=results.metrics_of(daily["equity"],
                                   _equity_before(stored, daily, name, state.settings)),
        benchmark_metrics={b: results.metrics_of(c.dropna()) for b, c in bench.items()},
        curve=curve)


@router.get("/{name}/windows", summary="A strategy's walk-forward winners per window, each "
            "with its asset in the Dagster UI and its run in the MLflow UI (or why not)",
            responses={404: {"description": "No stored results for the strategy"}})
def strategy_windows(name: Annotated[str, Path(pattern=STRATEGY_NAME)], state: State
                     ) -> StrategyWindows:
    stored = results.all_results(state.settings).get(name)
    if stored is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"no stored out-of-sample results for strategy {name!r} "
                            "(its oos_backtest and target_portfolio are not materialised)")
    configs = {c.name: c for c in _strategies(state.settings)}
    experiment = configs[name].experiment_name if name in configs else name
    return windows.strategy_windows(stored, state.tracking, state.settings.resolved_dagster_url,
                                    experiment)


@router.get("/{name}", summary="A strategy's configuration and latest target portfolio",
            responses={404: {"description": "No such strategy"},
                       409: {"description": "The strategy file does not validate"}})
def get_strategy(name: Annotated[str, Path(pattern=STRATEGY_NAME)], state: State
                 ) -> StrategyDetail:
    path = StrategyFolders.of(state.settings).files / f"{name}.yaml"
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no strategy {name!r}")
    try:
        config = load_strategy(path, warn=False)
    except StrategyConfigError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"strategy {name!r} does not validate: {exc}") from None
    target = latest_target(state.settings.resolved_storage_root, config.name)
    return StrategyDetail(**_summary(config).model_dump(),
                          config=config.model_dump(mode="json"), target_portfolio=target)

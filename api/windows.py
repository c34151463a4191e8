"""A strategy's walk-forward winners per window, as its stored results hold them, with where
each number comes from: the asset (and window partition) in the Dagster UI and the run in the
MLflow UI, or plainly why a link cannot exist.

The winners are ``wfo_results``' rows (one Parquet file per window partition, each with its
frozen winner, out-of-sample figures and MLflow run id: assets/walk_forward.py); without them
the windows come from the stitched backtest's ``window`` column, their winners unknown."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import pandas as pd

from api.experiments import Tracking, TrackingUnavailableError
from api.results import StrategyResults, read_stored
from api.schemas import Link, ResultLinks, StrategyWindows, WindowWinner
from resources.tracking import TAG_DAGSTER_ASSET_KEY, dagster_url_of

WFO_RESULTS = "wfo_results"
OOS_BACKTEST = "oos_backtest"
OOS_RUN_NAME = "oos backtest"           # the MLflow run name of the stitched backtest
OOS_METRICS = ("total_return", "cagr", "sharpe", "max_drawdown")


def stored_winners(stored: StrategyResults) -> pd.DataFrame | None:
    """``wfo_results`` of every stored window, oldest first (None: none stored)."""
    folder = stored.folder / WFO_RESULTS
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    frames = [f for f in map(read_stored, files) if f is not None and not f.empty]
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True).sort_values("oos_start", ignore_index=True)


@dataclass(frozen=True)
class MlflowRuns:
    """The strategy's runs in the tracking store: each run id's UI link, and the newest
    stitched backtest's; ``missing`` says why a run has no link."""

    urls: dict[str, str | None]
    oos_run: str | None
    missing: str | None = None

    @classmethod
    def of(cls, tracking: Tracking, experiment: str, oos_key: str) -> MlflowRuns:
        if tracking.resource.ui_base is None:
            return cls({}, None, "no MLflow UI is configured (ETF_MLFLOW_UI_URL)")
        try:
            found = tracking.runs(strategy=experiment, kind=None)
        except TrackingUnavailableError as exc:
            return cls({}, None, str(exc))
        urls = {r.run.info.run_id: tracking.resource.run_url(
            r.run.info.run_id, r.run.info.experiment_id) for r in found}
        oos = next((r.run.info.run_id for r in found if r.run.info.run_name == OOS_RUN_NAME
                    and r.run.data.tags.get(TAG_DAGSTER_ASSET_KEY) == oos_key), None)
        return cls(urls, oos)

    def link(self, run_id: str | None, unknown: str) -> Link:
        if self.missing:
            return Link(url=None, missing=self.missing)
        if not run_id:
            return Link(url=None, missing=unknown)
        if run_id not in self.urls:     # one wording for all: the page groups the reasons
            return Link(url=None, missing="the MLflow run wfo_results names is not in this "
                        "deployment's tracking store")
        return Link(url=self.urls[run_id], missing=None)


def asset_link(dagster_ui: str | None, key: tuple[str, ...], partition: str | None = None
               ) -> Link:
    if dagster_ui is None:
        return Link(url=None, missing="no Dagster UI is configured (ETF_DAGSTER_WEBSERVER_URL)")
    return Link(url=dagster_url_of(dagster_ui, asset="/".join(key), partition=partition),
                missing=None)


def strategy_windows(stored: StrategyResults, tracking: Tracking, dagster_ui: str | None,
                     experiment: str) -> StrategyWindows:
    oos_key = stored.asset_key(OOS_BACKTEST)
    runs = MlflowRuns.of(tracking, experiment, "/".join(oos_key))
    sessions = stored.daily["window"].value_counts() if "window" in stored.daily \
        else pd.Series(dtype=int)
    winners = stored_winners(stored)
    if winners is not None:
        rows = [_winner(row, sessions, stored, runs, dagster_ui)
                for row in winners.to_dict("records")]
    else:
        rows = _windows_of_backtest(stored, dagster_ui)
    oos_links = ResultLinks(
        dagster_asset=asset_link(dagster_ui, oos_key),
        mlflow_run=runs.link(runs.oos_run, f"no '{OOS_RUN_NAME}' MLflow run of asset "
                             f"{'/'.join(oos_key)} in experiment {experiment!r}"))
    return StrategyWindows(strategy=stored.strategy, asset_key="/".join(oos_key),
                           oos_backtest=oos_links, winners_stored=winners is not None,
                           windows=rows)


def _winner(row: dict[str, object], sessions: pd.Series, stored: StrategyResults,
            runs: MlflowRuns, dagster_ui: str | None) -> WindowWinner:
    window = str(row["window"])
    run_id = _text(row.get("mlflow_run_id"))
    factors = _text(row.get("factors"))
    return WindowWinner(
        window=window, is_start=_day(row.get("is_start")), is_end=_day(row.get("is_end")),
        oos_start=_day(row["oos_start"]), oos_end=_day(row["oos_end"]),
        sessions=int(sessions.get(window, 0)), no_trade=bool(row.get("no_trade")),
        no_trade_reason=_text(row.get("no_trade_reason")),
        factors=factors.split(",") if factors else [], top_n=_whole(row.get("top_n")),
        rebalance_every=_whole(row.get("rebalance_every")),
        weighting=_text(row.get("weighting")),
        oos_metrics={m: _number(row.get(f"oos_{m}")) for m in OOS_METRICS},
        mlflow_run_id=run_id, links=ResultLinks(
            dagster_asset=asset_link(dagster_ui, stored.asset_key(WFO_RESULTS), window),
            mlflow_run=runs.link(run_id, "wfo_results stored no MLflow run id for the "
                                 "window")))


def _windows_of_backtest(stored: StrategyResults, dagster_ui: str | None
                         ) -> list[WindowWinner]:
    """The windows whose sessions the stitched backtest holds, without their winners."""
    if "window" not in stored.daily:
        return []
    dates = stored.daily["window"].dropna().reset_index().groupby("window")["date"]
    missing = Link(url=None, missing="wfo_results is not stored: the window's run is unknown")
    return [WindowWinner(
        window=str(window), is_start=None, is_end=None, oos_start=days.min().date(),
        oos_end=days.max().date(), sessions=len(days), no_trade=None, no_trade_reason=None,
        factors=[], top_n=None, rebalance_every=None, weighting=None, oos_metrics={},
        mlflow_run_id=None, links=ResultLinks(dagster_asset=asset_link(
            dagster_ui, stored.asset_key(WFO_RESULTS), str(window)), mlflow_run=missing))
        for window, days in dates]


def _text(value: object) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) \
        or str(value) == "" else str(value)


def _number(value: object) -> float | None:
    number = float(value) if isinstance(value, int | float) else math.nan
    return number if math.isfinite(number) else None


def _whole(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _day(value: object) -> dt.date:
    return pd.Timestamp(str(value)).date()

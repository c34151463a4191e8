"""Research stage, second half (SPEC §6–§8, §10): walk-forward windows → in-sample search and
out-of-sample result per window → the stitched out-of-sample backtest → the target portfolio.

Thin over :mod:`rotation.walkforward`. Each walk-forward window is one partition of
``wfo_windows`` and ``wfo_results``; a backfill of all windows runs as one step that prepares the
panels once. Every window and every backtest is an MLflow run in the strategy's experiment.
"""

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import pandas as pd

from assets.code_version import code_version, strategy_sections
from assets.metadata import data_fingerprint, frame_metadata, metric_metadata, run_level, table
from resources.cache import CacheStats, RedisCache
from resources.market_data import MarketDataResource
from resources.tracking import MlflowTracking, TrackedRun, experiment_of
from rotation import report
from rotation import walkforward as wf
from rotation.backtest import BacktestResult
from rotation.backtest.metrics import drawdown
from rotation.cross_section import CrossSectionConfig
from rotation.search import Candidate, SearchSpace, candidate_of
from rotation.strategy import StrategyConfig
from rotation.wfo import WfoWindow

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WFO_GROUP = "walk_forward"
BACKTEST_GROUP = "backtest"
PORTFOLIO_GROUP = "portfolio"
VBT_CHECK = "finalists_match_vectorbt"
REPLAY_CHECK = "engine_matches_vectorbt"
POSITIONS_CHECK = "positions_match_oos_backtest"
ALL_SESSIONS = dg.AssetIn(partition_mapping=dg.AllPartitionMapping())


def warmup_sessions(strategy: StrategyConfig) -> int:
    """Sessions before the first in-sample start: the longest factor window (a year at most
    partly NaN factors would screen on thin cross-sections)."""
    windows = [int(v) for s in strategy.factor_specs for k, v in s.params.items()
               if isinstance(v, int) and not isinstance(v, bool) and ("window" in k
                                                                        or k in {"slow", "long"})]
    return max(windows, default=0)


def window_partitions(sessions: pd.DatetimeIndex, strategy: StrategyConfig
                      ) -> dg.StaticPartitionsDefinition | None:
    """One partition per walk-forward window over the calendar sessions of the data (None
    when the history holds no complete window)."""
    windows = wf.wfo_windows(sessions[warmup_sessions(strategy):], strategy.wfo_config)
    if not windows:
        return None
    return dg.StaticPartitionsDefinition([w.key for w in windows])


def search_space(strategy: StrategyConfig) -> SearchSpace:
    s = strategy.search
    weights = s.score_weights
    return SearchSpace(min_factors=s.min_factors, max_factors=s.max_factors, top_n=s.top_n,
                       rebalance_every=s.rebalance_every, weightings=s.weightings,
                       complexity_penalty=s.complexity_penalty,
                       score_weights=(weights.annual_return, weights.sharpe,
                                      weights.max_drawdown),
                       finalists=s.finalists)


def walk_forward_assets(strategy: StrategyConfig, cross_section: CrossSectionConfig,
                        partitions: dg.StaticPartitionsDefinition, fan_out: bool = False,
                        workers: int = 1) -> list[dg.AssetsDefinition]:
    """``fan_out``: a backfill of the windows is one run per window (to run them on separate
    pods) instead of one run sharing the prepared panels. ``workers``: the windows of one run
    are searched in this many local processes (:func:`rotation.walkforward.evaluate_windows`)."""
    window_backfill = (dg.BackfillPolicy.multi_run(1) if fan_out
                       else dg.BackfillPolicy.single_run())
    warmup = warmup_sessions(strategy)
    pcfg = strategy.portfolio_config()
    bcfg = strategy.backtest_config()
    space = search_space(strategy)
    versions = _code_versions(strategy, cross_section)

    def prepare(adjusted_bars: pd.DataFrame, factors: pd.DataFrame,
                market_data: MarketDataResource, cache: RedisCache,
                context: dg.AssetExecutionContext) -> tuple[wf.ResearchData, CacheStats]:
        """The walk-forward panels, from Redis when these exact inputs were prepared before."""
        stats = CacheStats()
        version = f"{data_fingerprint(adjusted_bars)}-{data_fingerprint(factors)}"
        data = cache.cached("research_panels", (strategy.name, strategy.tracking_params(),
                                                cross_section, market_data.label),
                            version, lambda: _prepare(adjusted_bars, factors, market_data),
                            stats, warn=context.log.warning)
        return data, stats

    def _prepare(adjusted_bars: pd.DataFrame, factors: pd.DataFrame,
                 market_data: MarketDataResource) -> wf.ResearchData:
        u = strategy.universe
        universe = wf.resolve_universe(adjusted_bars["symbol"].unique(), exclude=u.exclude,
                                       benchmark=u.benchmark, defensive=u.defensive,
                                       explicit=u.symbols)
        std = {str(name): part.pivot(index="date", columns="symbol", values="value")
               for name, part in factors.groupby("factor", sort=True)}
        return wf.prepare(adjusted_bars, strategy.factor_specs, cross_section, universe,
                          market_data.instruments(), strategy.horizons, std_factors=std)

    def windows_of(data: wf.ResearchData, keys: Sequence[str]) -> list[WfoWindow]:
        by_key = {w.key: w for w in wf.windows_for(data, strategy.wfo_config, warmup)}
        missing = [k for k in keys if k not in by_key]
        if missing:
            raise dg.Failure(
                f"walk-forward windows {missing[:3]} are not complete in the stored data "
                f"({data.dates[0]:%Y-%m-%d}..{data.dates[-1]:%Y-%m-%d}); backfill the market "
                "data up to their out-of-sample end first")
        return [by_key[k] for k in keys]

    def tags(window: WfoWindow | None = None) -> dict[str, str]:
        out = strategy.tracking_tags()
        if window is not None:
            out["wfo.window"] = window.key
        return out

    def latest_target(data: wf.ResearchData, wfo_results: pd.DataFrame
                      ) -> tuple[pd.Timestamp, pd.DataFrame]:
        """The newest window's frozen winner applied up to the latest close: target_portfolio's
        rows (date, symbol, score, rank, …, weight, reason); oos_backtest reports the same."""
        window, winner = _winners(wfo_results)[-1]
        newest = wfo_results.sort_values("oos_start").iloc[-1]
        as_of, why = wf.latest_targets(data, pcfg, winner, window,
                                       str(newest.get("no_trade_reason", "") or ""))
        table = why.reset_index()
        table.insert(0, "date", as_of)
        return as_of, table

    @dg.asset(
        group_name=WFO_GROUP,
        kinds={"pandas", "numba"},
        partitions_def=partitions,
        backfill_policy=window_backfill,
        ins={"adjusted_bars": ALL_SESSIONS},
        metadata={"partition_column": "window"},
        code_version=versions["wfo_windows"],
        description="Walk-forward windows (SPEC §6: in-sample, purge, embargo, out-of-sample) "
        "and the SPEC §5 factor screen repeated on each window's in-sample sessions only, with "
        "the reason every factor is in or out.",
    )
    def wfo_windows(context: dg.AssetExecutionContext, adjusted_bars: pd.DataFrame,
                    factors: pd.DataFrame, market_data: MarketDataResource, cache: RedisCache
                    ) -> dg.Output[pd.DataFrame]:
        data, cache_stats = prepare(adjusted_bars, factors, market_data, cache, context)
        tables = wf.screen_windows(data, windows_of(data, context.partition_keys),
                                   strategy.screening_horizon, strategy.select_kwargs(),
                                   space.min_factors)
        table = pd.concat(tables, ignore_index=True)
        outcomes = screen_summary(table, space.min_factors)
        whole_run = run_level({
            "windows": dg.MetadataValue.int(table["window"].nunique()),
            "screens": metadata_table(outcomes, 100, SCREEN_COLUMNS),
            "horizon": dg.MetadataValue.int(strategy.screening_horizon),
            **cache_stats.metadata()})
        for key, part in table.groupby("window", sort=False):
            outcome = outcomes.set_index("window").loc[key]
            shown = part[["factor", "selected", "reason", "mean_ic", "icir", "hit_rate"]
                         ].sort_values(["selected", "factor"], ascending=[False, True])
            context.add_asset_metadata({
                "dagster/row_count": dg.MetadataValue.int(len(part)),
                "window": dg.MetadataValue.text(str(key)),
                "in_sample": dg.MetadataValue.text(
                    f"{part['is_start'].iloc[0]:%Y-%m-%d}..{part['is_end'].iloc[0]:%Y-%m-%d}"),
                "screen_outcome": dg.MetadataValue.text(str(outcome["outcome"])),
                "passed": dg.MetadataValue.int(int(outcome["passed"])),
                "filled_up": dg.MetadataValue.int(int(outcome["filled_up"])),
                "chosen_factors": dg.MetadataValue.text(str(outcome["chosen"]) or "none"),
                "screen": metadata_table(shown, 100),
            } | whole_run, partition_key=str(key))
        return dg.Output(table)

    @dg.asset(
        group_name=WFO_GROUP,
        kinds={"numba", "vectorbt", "mlflow"},
        partitions_def=partitions,
        backfill_policy=window_backfill,
        ins={"adjusted_bars": ALL_SESSIONS},
        metadata={"partition_column": "window"},
        code_version=versions["wfo_results"],
        check_specs=[dg.AssetCheckSpec(
            VBT_CHECK, asset="wfo_results", blocking=True,
            description="Every finalist's daily equity from the numba search engine equals "
            "vectorbt Portfolio.from_orders to 1e-9 relative")],
        description="Per window: every combination of the screened factors × top-N × "
        "rebalance × weighting scored in-sample (numba engine), the finalists re-run in "
        "vectorbt, the frozen winner and its out-of-sample backtest. IS figures rank "
        "candidates; only the out-of-sample figures are performance.",
    )
    def wfo_results(context: dg.AssetExecutionContext, adjusted_bars: pd.DataFrame,
                    factors: pd.DataFrame, wfo_windows: pd.DataFrame,
                    market_data: MarketDataResource, tracking: MlflowTracking,
                    cache: RedisCache):
        data, cache_stats = prepare(adjusted_bars, factors, market_data, cache, context)
        panel = data.search_panel(pcfg)
        version = data_fingerprint(adjusted_bars)
        names = fund_names(market_data)
        rows, worst = [], 0.0
        jobs = [(window, wfo_windows.loc[(wfo_windows["window"] == window.key)
                                         & wfo_windows["selected"], "factor"].tolist())
                for window in windows_of(data, context.partition_keys)]
        results = wf.evaluate_windows(data, panel, jobs, space, bcfg, workers=workers)
        for (window, chosen), result in zip(jobs, results, strict=True):
            screen = wfo_windows.loc[wfo_windows["window"] == window.key]
            with tracking.run(context, experiment=strategy.experiment_name,
                              run_name=f"wfo {window.key}", params=strategy.tracking_params(),
                              tags=tags(window), data_version=version) as run:
                summary = result.summary()
                if result.winner is None:
                    context.log.warning(result.no_trade_reason)
                    run.set_tags({"no_trade": "true", "no_trade_reason": result.no_trade_reason})
                winner = result.winner.as_dict() if result.winner else {"no_trade": True}
                run.log_params({f"winner.{k}": v for k, v in winner.items()}
                               | {"screened_factors": chosen})
                run.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)
                                 and k.startswith(("in_sample_", "oos_", "vbt_"))})
                side_by_side = in_and_out_of_sample(pd.DataFrame([summary]))
                outcome = screen_summary(screen, space.min_factors).iloc[0]
                images = _log_backtest(
                    run, result.oos, wf.benchmark_curves(data, result.oos),
                    f"out-of-sample {window.key}", names=names,
                    notes=[f"in-sample {window.is_start:%Y-%m-%d}..{window.is_end:%Y-%m-%d}, "
                           f"out-of-sample {window.oos_start:%Y-%m-%d}.."
                           f"{window.oos_end:%Y-%m-%d}; " + _winner_text(result),
                           f"screen: {outcome['outcome']}"],
                    tables={"in-sample against out-of-sample": side_by_side,
                            "factor screen (in-sample sessions only)": screen[
                                ["factor", "selected", "reason"]]})
                run.log_frame(result.candidates.head(200), "search/candidates.csv")
                run.log_frame(result.finalists, "search/finalists.csv")
                summary["mlflow_run_id"] = run.run_id
                # The link of target_portfolio without opening the tracking store.
                summary["mlflow_experiment_id"] = run.experiment_id
                context.add_asset_metadata(_window_metadata(
                    summary, side_by_side, outcome, run.url, images),
                    partition_key=window.key)
            worst = max(worst, float(result.finalists["max_rel_diff"].max()))
            rows.append(summary)
        table = pd.DataFrame(rows)
        table["screened_factors"] = table["window"].map(
            wfo_windows.loc[wfo_windows["selected"]].groupby("window")["factor"]
            .agg(",".join))
        whole_run = run_level({
            "windows": dg.MetadataValue.int(len(table)),
            "winners": metadata_table(in_and_out_of_sample(table), 100, WINDOW_COLUMNS),
            "factor_stability": metadata_table(
                factor_stability(table, wfo_windows), 100, STABILITY_COLUMNS),
            "experiment": dg.MetadataValue.text(strategy.experiment_name),
            "data_version": dg.MetadataValue.text(version),
            **cache_stats.metadata()})
        for key in table["window"]:
            context.add_asset_metadata(whole_run, partition_key=str(key))
        yield dg.Output(table)
        yield dg.AssetCheckResult(check_name=VBT_CHECK, passed=worst <= wf.VBT_TOLERANCE,
                                  metadata={"max_rel_diff": dg.MetadataValue.float(worst),
                                            "tolerance": dg.MetadataValue.float(
                                                wf.VBT_TOLERANCE)})

    @dg.asset(
        group_name=BACKTEST_GROUP,
        kinds={"numba", "vectorbt", "mlflow"},
        ins={"adjusted_bars": ALL_SESSIONS,
             "wfo_results": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
        code_version=versions["oos_backtest"],
        check_specs=[dg.AssetCheckSpec(
            REPLAY_CHECK, asset="oos_backtest", blocking=True,
            description="The backtest engine's executed orders replayed in vectorbt give the "
            "same daily equity to 1e-9 relative")],
        description="The honest performance (SPEC §6): each window's frozen winner trades its "
        "out-of-sample sessions, stitched into one backtest under the SPEC §7 rules (T1_OPEN, "
        "lots, minimum commission, limits), with the equal-weight universe and the benchmark "
        "fund.",
    )
    def oos_backtest(context: dg.AssetExecutionContext, adjusted_bars: pd.DataFrame,
                     factors: pd.DataFrame, wfo_results: pd.DataFrame,
                     market_data: MarketDataResource, tracking: MlflowTracking,
                     cache: RedisCache):
        from rotation.backtest import vbt as vbt_replay

        data, cache_stats = prepare(adjusted_bars, factors, market_data, cache, context)
        winners = through_latest(data, _winners(wfo_results))
        targets = wf.stitched_targets(data, pcfg, winners)
        names = fund_names(market_data)
        windows = in_and_out_of_sample(wfo_results)
        stability = factor_stability(wfo_results)
        as_of, latest = latest_target(data, wfo_results)
        span = backtest_span(data, _winners(wfo_results))
        with tracking.run(context, experiment=strategy.experiment_name,
                          run_name="oos backtest", params=strategy.tracking_params(),
                          tags=tags(), data_version=data_fingerprint(adjusted_bars)) as run:
            result = wf.oos_backtest(data, targets, bcfg)
            replay_diff = vbt_replay.compare(result, vbt_replay.replay(result))
            benchmarks = wf.benchmark_curves(data, result)
            run.log_metrics({"vbt_replay_max_rel_diff": replay_diff})
            images = _log_backtest(
                run, result, benchmarks, f"{strategy.name}: stitched out-of-sample",
                names=names, notes=[span, f"{len(winners)} walk-forward windows"],
                tables={"walk-forward windows: in-sample against out-of-sample": windows,
                        "factor stability across windows": stability},
                figures=window_figures(windows),
                latest=(as_of, latest))
            run.log_frame(result.orders, "orders.csv")
            url = run.url
        segments = [w.oos_start for w, _ in winners]
        frame = _daily_frame(result, benchmarks, winners)

        def equity_png() -> str:   # only drawn when no MLflow UI serves the logged plots
            return report.markdown_image(report.png_base64(report.equity_figure(
                result.equity, benchmarks, title="Out-of-sample equity", segments=segments)),
                "equity")

        meta = oos_backtest_metadata(
            strategy, result, frame, span=span, url=url, images=images,
            tables={"windows": metadata_table(windows, 100, WINDOW_COLUMNS),
                    "factor_stability": metadata_table(stability, 100, STABILITY_COLUMNS)},
            latest=(as_of, _named(latest.loc[latest["weight"] > 0, ["symbol", "weight"]],
                                  names)),
            equity_png=equity_png)
        yield dg.Output(frame, metadata=meta | cache_stats.metadata())
        yield dg.AssetCheckResult(check_name=REPLAY_CHECK, passed=replay_diff <= 1e-9,
                                  metadata={"max_rel_diff": dg.MetadataValue.float(replay_diff)})

    @dg.asset(
        group_name=PORTFOLIO_GROUP,
        kinds={"pandas"},
        ins={"adjusted_bars": ALL_SESSIONS,
             "wfo_results": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
        code_version=versions["target_portfolio"],
        description="Target weights for the latest session: the newest window's frozen winner "
        "applied to data up to that close (traded at the next open), with the reason each "
        "fund is in or out.",
    )
    def target_portfolio(context: dg.AssetExecutionContext, adjusted_bars: pd.DataFrame,
                         factors: pd.DataFrame, wfo_results: pd.DataFrame,
                         market_data: MarketDataResource, cache: RedisCache,
                         tracking: MlflowTracking) -> dg.Output[pd.DataFrame]:
        data, cache_stats = prepare(adjusted_bars, factors, market_data, cache, context)
        window, winner = _winners(wfo_results)[-1]
        newest = wfo_results.sort_values("oos_start").iloc[-1]
        as_of, table = latest_target(data, wfo_results)
        table.insert(1, "strategy", strategy.name)
        table.insert(2, "window", window.key)
        names = fund_names(market_data)
        held = table.loc[table["weight"] > 0, ["symbol", "weight", "reason"]]
        meta: dict[str, object] = {
            "as_of": dg.MetadataValue.text(f"{as_of:%Y-%m-%d}"),
            "window": dg.MetadataValue.text(window.key),
            "winner": dg.MetadataValue.text(_describe_winner(winner, newest)),
            "invested_pct": dg.MetadataValue.float(round(float(table["weight"].sum()) * 100, 2)),
            "holdings": metadata_table(_named(held, names), 60),
            "reasons": metadata_table(_named(
                table[["symbol", "rank", "weight", "reason"]], names), 100),
            "backtest_span": dg.MetadataValue.text(
                backtest_span(data, _winners(wfo_results))),
        }
        run_id = str(newest.get("mlflow_run_id", "") or "")
        link = tracking.run_url(run_id, experiment_of(newest)) if run_id else None
        if link:
            meta["window_mlflow_run"] = dg.MetadataValue.url(link)
        return dg.Output(table, metadata=meta | cache_stats.metadata())

    @dg.asset(
        group_name=BACKTEST_GROUP,
        kinds={"pandas", "numba"},
        ins={"adjusted_bars": ALL_SESSIONS,
             "wfo_results": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
        code_version=versions["oos_positions"],
        check_specs=[dg.AssetCheckSpec(
            POSITIONS_CHECK, asset="oos_positions",
            description="The backtest behind these rows is oos_backtest's (the same daily "
            "equity to 1e-9 relative) and the positions' value plus the cash is that equity")],
        description="The stitched out-of-sample backtest of oos_backtest per session and fund: "
        "the target weight decided at the close (empty: no decision that session; traded at "
        "the next open), the order filled at the open (side, units, price, commission, or "
        "blocked and why) and the position held after the close (raw units, value at the "
        "close, weight of the equity); window is the walk-forward window whose out-of-sample "
        "session it is. Funds neither held, targeted nor traded are left out.",
    )
    def oos_positions(context: dg.AssetExecutionContext, adjusted_bars: pd.DataFrame,
                      factors: pd.DataFrame, wfo_results: pd.DataFrame,
                      oos_backtest: pd.DataFrame, market_data: MarketDataResource,
                      cache: RedisCache
                      ) -> Iterator[dg.Output[pd.DataFrame] | dg.AssetCheckResult]:
        data, cache_stats = prepare(adjusted_bars, factors, market_data, cache, context)
        winners = through_latest(data, _winners(wfo_results))
        result = wf.oos_backtest(data, wf.stitched_targets(data, pcfg, winners), bcfg)
        frame = position_rows(result, winners)
        stored = oos_backtest.set_index("date")["equity"]
        marked = frame.groupby("date")["value"].sum().reindex(result.equity.index, fill_value=0.0)
        worst = max(_rel_diff(result.equity, stored),
                    _rel_diff(marked + result.cash, result.equity))
        blocked = result.orders["blocked"]
        yield dg.Output(frame, metadata={
            **frame_metadata(frame),
            "orders_filled": dg.MetadataValue.int(int((~blocked).sum())),
            "orders_blocked": dg.MetadataValue.int(int(blocked.sum())),
            "sessions_invested": dg.MetadataValue.int(int((marked > 0).sum())),
            **cache_stats.metadata(),
        })
        yield dg.AssetCheckResult(check_name=POSITIONS_CHECK, passed=worst <= 1e-9,
                                  metadata={"max_rel_diff": dg.MetadataValue.float(worst)})

    return [wfo_windows, wfo_results, oos_backtest, oos_positions, target_portfolio]


def _code_versions(strategy: StrategyConfig, cross_section: CrossSectionConfig
                   ) -> dict[str, str]:
    """Each asset's code version with the strategy sections it reads (``prepare`` reads the
    universe, the factors, the horizons and the windows)."""
    base = ("universe", "factors", "horizons", "wfo")
    trading = ("costs", "portfolio", "execution")

    def version(asset: str, *sections: str) -> str:
        return code_version(asset, strategy_sections(strategy, *base, *sections), cross_section)

    return {"wfo_windows": version("wfo_windows", "screening", "search"),
            "wfo_results": version("wfo_results", "screening", "search", *trading),
            "oos_backtest": version("oos_backtest", *trading),
            "oos_positions": version("oos_positions", *trading),
            "target_portfolio": version("target_portfolio", "name", "portfolio")}


def _rel_diff(a: pd.Series, b: pd.Series) -> float:
    """The largest relative difference of two curves on ``a``'s dates (inf if any is missing)."""
    ratio = a / b.reindex(a.index)
    return float(np.abs(ratio.to_numpy() - 1.0).max()) if ratio.notna().all() else np.inf


def position_rows(result: BacktestResult, winners: Sequence[tuple[WfoWindow, Candidate]]
                  ) -> pd.DataFrame:
    """One row per (session, fund) that is held, targeted above zero or traded: the target
    decided at the close, the order filled at the open and the position after the close."""
    columns = pd.Index(result.positions.columns, name="symbol")
    held = {
        "target_weight": result.target_weights.reindex(index=result.equity.index,
                                                       columns=columns),
        "units": result.positions,
        "value": result.positions_adj * result.panels.close_marked.fillna(0.0),
    }
    frame = pd.concat({k: v.set_axis(columns, axis=1).stack(future_stack=True)
                       for k, v in held.items()}, axis=1)
    frame.index.names = ["date", "symbol"]
    frame = frame.reset_index()
    frame["weight"] = frame["value"] / frame["date"].map(result.equity)
    orders = result.orders[["date", "symbol", "side", "requested_units", "units", "price",
                            "commission", "blocked", "reason"]]
    frame = frame.merge(orders.add_prefix("order_").rename(
        columns={"order_date": "date", "order_symbol": "symbol"}), on=["date", "symbol"],
        how="left", validate="one_to_one")
    frame["order_blocked"] = frame["order_blocked"].astype("boolean")
    keep = frame["units"].ne(0) | frame["target_weight"].gt(0) | frame["order_side"].notna()
    frame = frame.loc[keep].reset_index(drop=True)
    starts = pd.Series([w.key for w, _ in winners], index=[w.oos_start for w, _ in winners])
    frame.insert(1, "window", frame["date"].map(
        starts.reindex(result.equity.index, method="ffill")))
    frame["symbol"] = frame["symbol"].astype(str)
    return frame


def _winner_text(result: wf.WindowResult) -> str:
    w = result.winner
    if w is None:
        return result.no_trade_reason
    return (f"winner {', '.join(w.factors)} top {w.top_n} every {w.rebalance_every} "
            f"({w.weighting})")


def _winners(results: pd.DataFrame) -> list[tuple[WfoWindow, Candidate | None]]:
    """Each window and its frozen winner (None for a no-trade window)."""
    ordered = results.sort_values("oos_start")
    out: list[tuple[WfoWindow, Candidate | None]] = []
    for i, row in enumerate(ordered.to_dict("records")):
        window = WfoWindow(index=i, is_start=pd.Timestamp(row["is_start"]),
                           is_end=pd.Timestamp(row["is_end"]),
                           oos_start=pd.Timestamp(row["oos_start"]),
                           oos_end=pd.Timestamp(row["oos_end"]))
        out.append((window, None if row.get("no_trade") else candidate_of(row)))
    if not out:
        raise dg.Failure("no walk-forward results: materialise wfo_results first")
    return out


def _daily_frame(result: BacktestResult, benchmarks: dict[str, pd.Series],
                 winners: Sequence[tuple[WfoWindow, Candidate]]) -> pd.DataFrame:
    frame = pd.DataFrame({"date": result.equity.index, "equity": result.equity.to_numpy(),
                          "cash": result.cash.to_numpy(),
                          "drawdown": drawdown(result.equity).to_numpy()})
    for name, curve in benchmarks.items():
        aligned = curve.reindex(result.equity.index).ffill()
        frame[f"benchmark_{name}"] = (aligned / aligned.dropna().iloc[0]).to_numpy()
    starts = pd.Series([w.key for w, _ in winners], index=[w.oos_start for w, _ in winners])
    frame["window"] = starts.reindex(result.equity.index, method="ffill").to_numpy()
    frame["invested"] = ((result.positions_adj * result.panels.close_marked.fillna(0.0))
                         .sum(axis=1) / result.equity).to_numpy()
    return frame


def _log_backtest(run: TrackedRun, result: BacktestResult, benchmarks: dict[str, pd.Series],
                  title: str, *, notes: Sequence[str] = (),
                  tables: dict[str, pd.DataFrame] | None = None,
                  names: Mapping[str, str] | None = None,
                  figures: Mapping[str, Callable[[], "Figure"]] | None = None,
                  latest: tuple[pd.Timestamp, pd.DataFrame] | None = None
                  ) -> dict[str, str | None]:
    """Equity and drawdown PNG, the weights, the metrics, the daily equity and drawdown as
    stepped series and an HTML report (fund names beside the weights) of a backtest; the URLs
    the MLflow UI serves the plots at (None without a UI). ``latest``: the target portfolio
    (its date and rows) shown as the report's latest weights instead of the backtest's last
    decision, so the report and target_portfolio show the same weights."""
    # dpi 70: the PNGs are shown inline in Dagster's metadata column (about 700 px wide).
    paths = {"equity": run.log_figure(report.equity_figure(result.equity, benchmarks,
                                                           title=title), "plots/equity.png",
                                      dpi=PLOT_DPI),
             "drawdown": run.log_figure(report.drawdown_figure(result.equity, benchmarks),
                                        "plots/drawdown.png", dpi=PLOT_DPI)}
    for name, make in (figures or {}).items():
        paths[name] = run.log_figure(make(), f"plots/{name}.png", dpi=PLOT_DPI)
    run.log_frame(result.target_weights, "weights.csv")
    run.log_metrics({k: v for k, v in result.metrics.items() if np.isfinite(v)})
    run.log_series({"equity": result.equity, "drawdown": drawdown(result.equity)})
    weights, weights_title = result.target_weights, "Latest weights decided in the backtest"
    if latest is not None:
        as_of, rows = latest
        weights = pd.DataFrame([rows.set_index("symbol")["weight"]], index=[as_of])
        weights_title = "Target portfolio for the next open (target_portfolio)"
    run.log_html(report.html_report(
        title, metrics=result.metrics, equity=result.equity, benchmarks=benchmarks,
        weights=weights, weights_title=weights_title, tables=tables, notes=notes, names=names,
        figures={name.replace("_", " "): make() for name, make in (figures or {}).items()}),
        "report.html")
    return {name: run.artifact_url(path) for name, path in paths.items()}


# -- what the researcher reads ------------------------------------------------------------------

metadata_table = table
PLOT_DPI = 70

WINDOW_COLUMNS = {
    "is_sharpe": "in-sample Sharpe of the winner (search engine, fractional units)",
    "oos_sharpe": "out-of-sample Sharpe (full backtest: lots, minimum commission, limits)",
    "is_annual_return_pct": "in-sample annualised return, %",
    "oos_cagr_pct": "out-of-sample annualised return (CAGR), %",
    "oos_total_return_pct": "out-of-sample total return, %",
    "oos_max_drawdown_pct": "out-of-sample maximum drawdown, %",
}
STABILITY_COLUMNS = {
    "screened": "windows whose in-sample screen chose the factor (passed or filled up)",
    "in_winner": "windows whose frozen winner trades the factor",
    "in_winner_pct": "share of the windows, %",
    "longest_streak": "most consecutive windows with the factor in the winner",
}
SCREEN_COLUMNS = {
    "passed": "factors that passed the SPEC §5 screen on the window's in-sample sessions",
    "filled_up": "factors added because fewer than the search's minimum passed",
}


def fund_names(market_data: MarketDataResource) -> dict[str, str]:
    """Fund name by symbol, from the source (empty where it has none)."""
    return {i.symbol: i.name for i in market_data.instruments()}


def _named(frame: pd.DataFrame, names: Mapping[str, str]) -> pd.DataFrame:
    """``frame`` with the fund's name after its symbol and weights in percent."""
    out = frame.copy()
    if "weight" in out:
        out.insert(out.columns.get_loc("symbol") + 1, "weight_pct",
                   (out.pop("weight").astype(float) * 100).round(2))
    out.insert(out.columns.get_loc("symbol") + 1 + ("weight_pct" in out), "name",
               out["symbol"].astype(str).map(names).fillna(""))
    return out


def screen_summary(screens: pd.DataFrame, min_factors: int) -> pd.DataFrame:
    """Per window: how many factors passed the in-sample screen, how many were filled up and
    which were chosen, in a sentence."""
    rows = []
    for key, part in screens.groupby("window", sort=True):
        chosen = part.loc[part["selected"]]
        filled = chosen["reason"].astype(str).str.startswith("filled up")
        passed, added = int((~filled).sum()), int(filled.sum())
        if added:
            outcome = (f"{passed} of {len(part)} factors passed the in-sample screen, fewer "
                       f"than the {min_factors} the search needs: {added} filled up with the "
                       "best remaining in-sample ICIR in the declared direction")
        elif passed:
            outcome = f"{passed} of {len(part)} factors passed the in-sample screen"
        else:
            outcome = f"none of {len(part)} factors passed or could fill up: no trade"
        rows.append({"window": key, "passed": passed, "filled_up": added,
                     "chosen": ", ".join(chosen["factor"]), "outcome": outcome})
    return pd.DataFrame(rows, columns=["window", "passed", "filled_up", "chosen", "outcome"])


def in_and_out_of_sample(results: pd.DataFrame) -> pd.DataFrame:
    """Per window the winner and its in-sample and out-of-sample figures side by side (Sharpe
    and annualised return in percent); a no-trade window says so."""
    ordered = results.sort_values("oos_start")

    def pct(column: str) -> pd.Series:
        return (ordered[column].astype(float) * 100).round(2) if column in ordered \
            else pd.Series(np.nan, index=ordered.index)

    def num(column: str) -> pd.Series:
        return ordered[column].astype(float).round(3) if column in ordered \
            else pd.Series(np.nan, index=ordered.index)

    # A classic strategy's rows say their winner in words (``winner``).
    winner = [("no trade" if row.get("no_trade") else row.get("winner") or
               f"{row['factors']} top {int(row['top_n'])} every {int(row['rebalance_every'])} "
               f"({row['weighting']})") for row in ordered.to_dict("records")]
    return pd.DataFrame({
        "window": ordered["window"].astype(str),
        "out_of_sample": [f"{a:%Y-%m-%d}..{b:%Y-%m-%d}" for a, b in
                          zip(ordered["oos_start"], ordered["oos_end"], strict=True)],
        "winner": winner,
        "is_sharpe": num("in_sample_sharpe"), "oos_sharpe": num("oos_sharpe"),
        "is_annual_return_pct": pct("in_sample_annual_return"),
        "oos_cagr_pct": pct("oos_cagr"),
        "oos_total_return_pct": pct("oos_total_return"),
        "oos_max_drawdown_pct": pct("oos_max_drawdown"),
    }).reset_index(drop=True)


def factor_stability(results: pd.DataFrame, screens: pd.DataFrame | None = None
                     ) -> pd.DataFrame:
    """How stable the chosen factors are across windows: per factor, the windows whose screen
    chose it, the windows whose winner trades it and its longest run of consecutive windows."""
    ordered = results.sort_values("oos_start")
    winners = [set(str(f).split(",")) - {""} if not row.get("no_trade") else set()
               for f, row in zip(ordered["factors"], ordered.to_dict("records"), strict=True)]
    if screens is not None:
        chosen = screens.loc[screens["selected"]].groupby("window")["factor"].agg(set)
    elif "screened_factors" in ordered:
        chosen = ordered.set_index("window")["screened_factors"].fillna("").map(
            lambda s: set(str(s).split(",")) - {""})
    else:
        chosen = pd.Series(dtype=object)
    names = sorted(set().union(*winners, *chosen.tolist()) if len(ordered) else set())
    rows = []
    for name in names:
        flags = [name in w for w in winners]
        streak = best = 0
        for flag in flags:
            streak = streak + 1 if flag else 0
            best = max(best, streak)
        rows.append({"factor": name,
                     "screened": int(sum(name in c for c in chosen.tolist())),
                     "in_winner": int(sum(flags)),
                     "in_winner_pct": round(100.0 * sum(flags) / max(len(flags), 1), 1),
                     "longest_streak": best})
    out = pd.DataFrame(rows, columns=["factor", "screened", "in_winner", "in_winner_pct",
                                      "longest_streak"])
    return out.sort_values(["in_winner", "screened", "factor"], ascending=[False, False, True],
                           ignore_index=True)


def window_figures(windows: pd.DataFrame) -> dict[str, Callable[[], "Figure"]]:
    """The per-window bars: Sharpe and annualised return, in-sample beside out-of-sample."""
    sharpe = pd.DataFrame({"window": windows["window"], "in_sample": windows["is_sharpe"],
                           "out_of_sample": windows["oos_sharpe"]})
    annual = pd.DataFrame({"window": windows["window"],
                           "in_sample": windows["is_annual_return_pct"],
                           "out_of_sample": windows["oos_cagr_pct"]})
    return {
        "sharpe_by_window": lambda: report.window_bars_figure(
            sharpe, title="Sharpe per walk-forward window: in-sample beside out-of-sample"),
        "return_by_window": lambda: report.window_bars_figure(
            annual, title="Annualised return per window (%): in-sample beside out-of-sample"),
    }


def through_latest(data: wf.ResearchData, winners: list[tuple[WfoWindow, Candidate | None]]
                   ) -> list[tuple[WfoWindow, Candidate | None]]:
    """The windows with the newest one's frozen winner trading on to the latest session (the
    session target_portfolio decides on), so the stitched backtest and the target cover the
    same dates: the newest winner is what trades until a newer window completes."""
    window, winner = winners[-1]
    last = data.dates[-1]
    if last <= window.oos_end:
        return winners
    return [*winners[:-1], (dataclasses.replace(window, oos_end=last), winner)]


def backtest_span(data: wf.ResearchData,
                  winners: list[tuple[WfoWindow, Candidate | None]]) -> str:
    """The stitched backtest's dates in words: the windows' out-of-sample sessions, then the
    newest winner live up to the latest session (the target's)."""
    first, newest = winners[0][0], winners[-1][0]
    last = data.dates[-1]
    text = (f"out-of-sample {first.oos_start:%Y-%m-%d}..{newest.oos_end:%Y-%m-%d} "
            f"({len(winners)} windows)")
    if last > newest.oos_end:
        text += (f", then window {newest.key}'s frozen winner live through {last:%Y-%m-%d} "
                 "(the session of the target portfolio)")
    return text


def _describe_winner(winner: Candidate | None, row: pd.Series) -> str:
    if winner is None:
        return f"no trade: {row.get('no_trade_reason', '')}"
    return (f"{', '.join(winner.factors)}; top {winner.top_n}, rebalance every "
            f"{winner.rebalance_every} sessions, {winner.weighting} weights")


def _window_metadata(summary: Mapping[str, object], side_by_side: pd.DataFrame,
                     outcome: pd.Series, url: str | None, images: Mapping[str, str | None]
                     ) -> dict[str, object]:
    """One window's own metadata (its partition of wfo_results)."""
    row = side_by_side.iloc[0]
    meta: dict[str, object] = {
        "window": dg.MetadataValue.text(str(summary["window"])),
        "out_of_sample": dg.MetadataValue.text(str(row["out_of_sample"])),
        "winner": dg.MetadataValue.text(str(row["winner"])),
        "screen_outcome": dg.MetadataValue.text(str(outcome["outcome"])),
        "candidates": dg.MetadataValue.int(int(summary.get("candidates") or 0)),
        "in_and_out_of_sample": metadata_table(side_by_side.drop(columns=["window"]), 5,
                                               WINDOW_COLUMNS),
    }
    for key in WINDOW_COLUMNS:
        value = float(row[key])
        if np.isfinite(value):
            meta[key] = dg.MetadataValue.float(value)
    if url:
        meta["mlflow_run"] = dg.MetadataValue.url(url)
    if images.get("equity"):
        meta["plot_equity"] = dg.MetadataValue.md(f"![equity]({images['equity']})")
    return meta


def oos_backtest_metadata(strategy: StrategyConfig, result: BacktestResult, frame: pd.DataFrame,
                          *, span: str, url: str | None, images: Mapping[str, str | None],
                          tables: Mapping[str, object],
                          latest: tuple[pd.Timestamp, pd.DataFrame],
                          header: Mapping[str, object] | None = None,
                          equity_png: Callable[[], str] | None = None) -> dict[str, object]:
    """The stitched backtest's metadata in the order a researcher reads it: the figures, the
    span, the MLflow link and the plots (``equity_png`` when no MLflow UI serves them), the
    window tables, the latest target; the frame's own description (rows, preview) last."""
    meta: dict[str, object] = {
        **metric_metadata(result.metrics),
        "span": dg.MetadataValue.text(span),
        **(header or {}),
        "currency": dg.MetadataValue.text(strategy.market.currency),
        "benchmark": dg.MetadataValue.text(str(strategy.universe.benchmark)),
    }
    if url:
        meta["mlflow_run"] = dg.MetadataValue.url(url)
    meta |= {f"plot_{name}": dg.MetadataValue.md(f"![{name}]({link})")
             for name, link in images.items() if link}
    if equity_png is not None and not any(images.values()):
        meta["plot_equity"] = dg.MetadataValue.md(equity_png())
    as_of, held = latest
    return meta | dict(tables) | {
        "latest_target": metadata_table(held, 60),
        "latest_target_as_of": dg.MetadataValue.text(f"{as_of:%Y-%m-%d}"),
        "orders": dg.MetadataValue.int(len(result.orders)),
        **frame_metadata(frame),
    }

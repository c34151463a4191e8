"""Research stage, second half (SPEC §6–§8, §10): walk-forward windows → in-sample search and
out-of-sample result per window → the stitched out-of-sample backtest → the target portfolio.

Thin over :mod:`rotation.walkforward`. Each walk-forward window is one partition of
``wfo_windows`` and ``wfo_results``; a backfill of all windows runs as one step that prepares the
panels once. Every window and every backtest is an MLflow run in the strategy's experiment.
"""

from collections.abc import Iterator, Sequence

import dagster as dg
import numpy as np
import pandas as pd

from assets.code_version import code_version, strategy_sections
from assets.metadata import data_fingerprint, frame_metadata, markdown
from resources.cache import CacheStats, RedisCache
from resources.market_data import MarketDataResource
from resources.tracking import MlflowTracking, TrackedRun
from rotation import report
from rotation import walkforward as wf
from rotation.backtest import BacktestResult
from rotation.backtest.metrics import drawdown
from rotation.cross_section import CrossSectionConfig
from rotation.search import Candidate, SearchSpace, candidate_of
from rotation.strategy import StrategyConfig
from rotation.wfo import WfoWindow

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
                        partitions: dg.StaticPartitionsDefinition, fan_out: bool = False
                        ) -> list[dg.AssetsDefinition]:
    """``fan_out``: a backfill of the windows is one run per window (to run them on separate
    pods) instead of one run sharing the prepared panels."""
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
        tables = []
        for window in windows_of(data, context.partition_keys):
            tables.append(wf.screen_window(data, window, strategy.screening_horizon,
                                           strategy.select_kwargs(), space.min_factors))
        table = pd.concat(tables, ignore_index=True)
        chosen = (table.loc[table["selected"]].groupby("window")["factor"]
                  .agg(lambda s: ", ".join(s)).reset_index(name="screened_factors"))
        return dg.Output(table, metadata={
            "dagster/row_count": dg.MetadataValue.int(len(table)),
            "windows": dg.MetadataValue.int(table["window"].nunique()),
            "screened_factors": dg.MetadataValue.md(markdown(chosen, 100)),
            "horizon": dg.MetadataValue.int(strategy.screening_horizon),
            **cache_stats.metadata(),
        })

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
        rows, worst = [], 0.0
        for window in windows_of(data, context.partition_keys):
            screen = wfo_windows.loc[wfo_windows["window"] == window.key]
            chosen = screen.loc[screen["selected"], "factor"].tolist()
            with tracking.run(context, experiment=strategy.experiment_name,
                              run_name=f"wfo {window.key}", params=strategy.tracking_params(),
                              tags=tags(window), data_version=version) as run:
                result = wf.evaluate_window(data, panel, window, chosen, space, bcfg)
                summary = result.summary()
                if result.winner is None:
                    context.log.warning(result.no_trade_reason)
                    run.set_tags({"no_trade": "true", "no_trade_reason": result.no_trade_reason})
                winner = result.winner.as_dict() if result.winner else {"no_trade": True}
                run.log_params({f"winner.{k}": v for k, v in winner.items()}
                               | {"screened_factors": chosen})
                run.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)
                                 and k.startswith(("in_sample_", "oos_", "vbt_"))})
                _log_backtest(run, result.oos, wf.benchmark_curves(data, result.oos),
                              f"out-of-sample {window.key}",
                              notes=[f"in-sample {window.is_start:%Y-%m-%d}.."
                                     f"{window.is_end:%Y-%m-%d}, " + _winner_text(result)])
                run.log_frame(result.candidates.head(200), "search/candidates.csv")
                run.log_frame(result.finalists, "search/finalists.csv")
                summary["mlflow_run_id"] = run.run_id
            worst = max(worst, float(result.finalists["max_rel_diff"].max()))
            rows.append(summary)
        table = pd.DataFrame(rows)
        table["screened_factors"] = table["window"].map(
            wfo_windows.loc[wfo_windows["selected"]].groupby("window")["factor"]
            .agg(",".join))
        shown = table[["window", "factors", "top_n", "rebalance_every", "weighting",
                       "in_sample_score", "oos_total_return", "oos_sharpe", "oos_max_drawdown"]]
        yield dg.Output(table, metadata={
            "dagster/row_count": dg.MetadataValue.int(len(table)),
            "winners": dg.MetadataValue.md(markdown(shown.round(4), 100)),
            "candidates_per_window": dg.MetadataValue.json(
                dict(zip(table["window"], table["candidates"].astype(int), strict=True))),
            "experiment": dg.MetadataValue.text(strategy.experiment_name),
            "data_version": dg.MetadataValue.text(version),
            **cache_stats.metadata(),
        })
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
        winners = _winners(wfo_results)
        targets = wf.stitched_targets(data, pcfg, winners)
        with tracking.run(context, experiment=strategy.experiment_name,
                          run_name="oos backtest", params=strategy.tracking_params(),
                          tags=tags(), data_version=data_fingerprint(adjusted_bars)) as run:
            result = wf.oos_backtest(data, targets, bcfg)
            replay_diff = vbt_replay.compare(result, vbt_replay.replay(result))
            benchmarks = wf.benchmark_curves(data, result)
            run.log_metrics({"vbt_replay_max_rel_diff": replay_diff})
            _log_backtest(run, result, benchmarks, f"{strategy.name}: stitched out-of-sample",
                          notes=[f"{len(winners)} walk-forward windows"],
                          tables={"windows": wfo_results[["window", "factors", "top_n",
                                                          "rebalance_every", "weighting"]]})
            run.log_frame(result.orders, "orders.csv")
            run_id = run.run_id
        segments = [w.oos_start for w, _ in winners]
        frame = _daily_frame(result, benchmarks, winners)
        equity_png = report.png_base64(report.equity_figure(
            result.equity, benchmarks, title="Out-of-sample equity", segments=segments))
        drawdown_png = report.png_base64(report.drawdown_figure(result.equity, benchmarks))
        metrics = {k: round(float(v), 6) for k, v in result.metrics.items()}
        yield dg.Output(frame, metadata={
            **frame_metadata(frame),
            "metrics": dg.MetadataValue.json(metrics),
            "total_return": dg.MetadataValue.float(metrics.get("total_return", np.nan)),
            "sharpe": dg.MetadataValue.float(metrics.get("sharpe", np.nan)),
            "max_drawdown": dg.MetadataValue.float(metrics.get("max_drawdown", np.nan)),
            "equity": dg.MetadataValue.md(report.markdown_image(equity_png, "equity")),
            "drawdown": dg.MetadataValue.md(report.markdown_image(drawdown_png, "drawdown")),
            "orders": dg.MetadataValue.int(len(result.orders)),
            "currency": dg.MetadataValue.text(strategy.market.currency),
            "benchmark": dg.MetadataValue.text(str(strategy.universe.benchmark)),
            "mlflow_run_id": dg.MetadataValue.text(run_id),
            **cache_stats.metadata(),
        })
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
                         market_data: MarketDataResource, cache: RedisCache
                         ) -> dg.Output[pd.DataFrame]:
        data, cache_stats = prepare(adjusted_bars, factors, market_data, cache, context)
        window, winner = _winners(wfo_results)[-1]
        newest = wfo_results.sort_values("oos_start").iloc[-1]
        as_of, why = wf.latest_targets(data, pcfg, winner, window,
                                       str(newest.get("no_trade_reason", "") or ""))
        table = why.reset_index()
        table.insert(0, "date", as_of)
        table.insert(1, "strategy", strategy.name)
        table.insert(2, "window", window.key)
        held = table.loc[table["weight"] > 0, ["symbol", "weight", "reason"]]
        return dg.Output(table, metadata={
            "as_of": dg.MetadataValue.text(f"{as_of:%Y-%m-%d}"),
            "window": dg.MetadataValue.text(window.key),
            "winner": dg.MetadataValue.json(winner.as_dict() if winner else {"no_trade": True}),
            "invested": dg.MetadataValue.float(float(table["weight"].sum())),
            "holdings": dg.MetadataValue.md(markdown(held.round(4), 50)),
            "reasons": dg.MetadataValue.md(markdown(
                table[["symbol", "rank", "weight", "reason"]].round(4), 100)),
            **cache_stats.metadata(),
        })

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
        winners = _winners(wfo_results)
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
                  tables: dict[str, pd.DataFrame] | None = None) -> None:
    """Equity and drawdown PNG, the weights, the metrics and an HTML report of a backtest."""
    run.log_figure(report.equity_figure(result.equity, benchmarks, title=title),
                   "plots/equity.png")
    run.log_figure(report.drawdown_figure(result.equity, benchmarks), "plots/drawdown.png")
    run.log_frame(result.target_weights, "weights.csv")
    run.log_metrics({k: v for k, v in result.metrics.items() if np.isfinite(v)})
    run.log_html(report.html_report(title, metrics=result.metrics, equity=result.equity,
                                    benchmarks=benchmarks, weights=result.target_weights,
                                    tables=tables, notes=notes), "report.html")


"""Research stage of a classic strategy (issue 15 item 2): the same assets, keys, partitions and
groups as :func:`assets.walk_forward.walk_forward_assets` — ``wfo_windows``, ``wfo_results``,
``oos_backtest``, ``target_portfolio``, ``oos_positions`` — so the approval gate, the positions
report and the API read a classic strategy like a rotation.

Thin over :mod:`rotation.classic_search`. No factor screening: the walk-forward reads the
adjusted bars only (not ``factors`` or ``selected_factors``); each window searches the
generator's parameters on its in-sample sessions, and every window and the stitched backtest
are MLflow runs in the strategy's experiment.
"""

import json
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
import pandas as pd

from assets.code_version import code_version, strategy_sections
from assets.metadata import data_fingerprint, frame_metadata, run_level
from assets.walk_forward import (
    ALL_SESSIONS,
    BACKTEST_GROUP,
    PORTFOLIO_GROUP,
    POSITIONS_CHECK,
    REPLAY_CHECK,
    WFO_GROUP,
    WINDOW_COLUMNS,
    _daily_frame,
    _log_backtest,
    _named,
    _rel_diff,
    backtest_span,
    fund_names,
    in_and_out_of_sample,
    metadata_table,
    oos_backtest_metadata,
    position_rows,
    through_latest,
    window_figures,
)
from resources.cache import CacheStats, RedisCache
from resources.market_data import MarketDataResource
from resources.tracking import MlflowTracking, experiment_of
from rotation import classic_search as cs
from rotation import walkforward as wf
from rotation.cross_section import CrossSectionConfig
from rotation.strategy import ClassicSection, StrategyConfig
from rotation.wfo import WfoWindow

# The winners' out-of-sample backtests replayed in vectorbt (the classic search has no numba
# search engine to check: it scores with the full backtest engine itself).
WINNER_REPLAY_CHECK = "winners_match_vectorbt"

Winners = list[tuple[WfoWindow, dict[str, Any]]]
# The in-sample figures of a classic winner come from the full engine, not a search engine.
CLASSIC_WINDOW_COLUMNS = WINDOW_COLUMNS | {
    "is_sharpe": "in-sample Sharpe of the winner (full backtest: lots, minimum commission)",
    "is_annual_return_pct": "in-sample annualised return of the winner (full backtest), %"}


def classic_walk_forward_assets(strategy: StrategyConfig, cross_section: CrossSectionConfig,
                                partitions: dg.StaticPartitionsDefinition, fan_out: bool = False
                                ) -> list[dg.AssetsDefinition]:
    """The walk-forward assets of ``strategy`` (which has a ``classic:`` section);
    ``fan_out`` as in :func:`assets.walk_forward.walk_forward_assets`."""
    section = strategy.classic
    if section is None:
        raise ValueError(f"strategy {strategy.name!r} has no classic: section; its research "
                         "assets are assets.walk_forward.walk_forward_assets'")
    window_backfill = (dg.BackfillPolicy.multi_run(1) if fan_out
                       else dg.BackfillPolicy.single_run())
    warmup = cs.warmup_sessions(section)
    bcfg = strategy.backtest_config()
    versions = _code_versions(strategy, cross_section)

    def prepare(adjusted_bars: pd.DataFrame, market_data: MarketDataResource,
                cache: RedisCache, context: dg.AssetExecutionContext
                ) -> tuple[wf.ResearchData, CacheStats]:
        """The market panels of the walk-forward (no factors), from Redis when these exact
        bars were prepared before."""
        stats = CacheStats()
        data = cache.cached("classic_panels", (strategy.name, strategy.tracking_params(),
                                               cross_section, market_data.label),
                            data_fingerprint(adjusted_bars),
                            lambda: _prepare(adjusted_bars, market_data), stats,
                            warn=context.log.warning)
        return data, stats

    def _prepare(adjusted_bars: pd.DataFrame, market_data: MarketDataResource
                 ) -> wf.ResearchData:
        u = strategy.universe
        universe = wf.resolve_universe(adjusted_bars["symbol"].unique(), exclude=u.exclude,
                                       benchmark=u.benchmark, defensive=u.defensive,
                                       explicit=u.symbols)
        return wf.prepare(adjusted_bars, (), cross_section, universe,
                          market_data.instruments(), strategy.horizons, std_factors={})

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
        out = strategy.tracking_tags() | {"classic.generator": section.generator}
        if window is not None:
            out["wfo.window"] = window.key
        return out

    def latest_target(data: wf.ResearchData, wfo_results: pd.DataFrame
                      ) -> tuple[pd.Timestamp, pd.DataFrame]:
        _, params = _winners(wfo_results)[-1]
        as_of, why = cs.latest_targets(data, section, params)
        table = why.reset_index()
        table.insert(0, "date", as_of)
        return as_of, table

    @dg.asset(
        group_name=WFO_GROUP,
        kinds={"pandas"},
        partitions_def=partitions,
        backfill_policy=window_backfill,
        ins={"adjusted_bars": ALL_SESSIONS},
        metadata={"partition_column": "window"},
        code_version=versions["wfo_windows"],
        description="Walk-forward windows (SPEC §6: in-sample, purge, embargo, out-of-sample) "
        "of a classic strategy and the parameter space each window searches (no factor "
        "screen).",
    )
    def wfo_windows(context: dg.AssetExecutionContext, adjusted_bars: pd.DataFrame,
                    market_data: MarketDataResource, cache: RedisCache
                    ) -> dg.Output[pd.DataFrame]:
        data, cache_stats = prepare(adjusted_bars, market_data, cache, context)
        table = pd.DataFrame([_window_row(w, section)
                              for w in windows_of(data, context.partition_keys)])
        for row in table.to_dict("records"):
            context.add_asset_metadata({
                "window": dg.MetadataValue.text(str(row["window"])),
                "in_sample": dg.MetadataValue.text(
                    f"{row['is_start']:%Y-%m-%d}..{row['is_end']:%Y-%m-%d}"),
                "generator": dg.MetadataValue.text(section.generator),
                "search_method": dg.MetadataValue.text(str(row["search_method"])),
                "candidates": dg.MetadataValue.int(int(row["candidates"])),
                "space": dg.MetadataValue.json(json.loads(str(row["space"]))),
            } | run_level({"windows": dg.MetadataValue.int(len(table)),
                           **cache_stats.metadata()}), partition_key=str(row["window"]))
        return dg.Output(table)

    @dg.asset(
        group_name=WFO_GROUP,
        kinds={"pandas", "optuna", "mlflow"},
        partitions_def=partitions,
        backfill_policy=window_backfill,
        ins={"adjusted_bars": ALL_SESSIONS},
        metadata={"partition_column": "window"},
        code_version=versions["wfo_results"],
        check_specs=[dg.AssetCheckSpec(
            WINNER_REPLAY_CHECK, asset="wfo_results", blocking=True,
            description="Every window's out-of-sample backtest of its frozen winner, replayed "
            "in vectorbt, gives the same daily equity to 1e-9 relative")],
        description="Per window: every candidate parameter set (grid) or a seeded Optuna TPE "
        "sample of them backtested on the in-sample sessions only (full engine: lots, "
        "minimum commission, T+1, limits) and ranked by the rotation's in-sample score; the "
        "frozen winner and its out-of-sample backtest. IS figures rank candidates; only the "
        "out-of-sample figures are performance.",
    )
    def wfo_results(context: dg.AssetExecutionContext, adjusted_bars: pd.DataFrame,
                    wfo_windows: pd.DataFrame, market_data: MarketDataResource,
                    tracking: MlflowTracking, cache: RedisCache
                    ) -> Iterator[dg.Output[pd.DataFrame] | dg.AssetCheckResult]:
        from rotation.backtest import vbt as vbt_replay

        data, cache_stats = prepare(adjusted_bars, market_data, cache, context)
        version = data_fingerprint(adjusted_bars)
        names = fund_names(market_data)
        rows, worst = [], 0.0
        for window in windows_of(data, context.partition_keys):
            with tracking.run(context, experiment=strategy.experiment_name,
                              run_name=f"wfo {window.key}", params=strategy.tracking_params(),
                              tags=tags(window), data_version=version) as run:
                result = cs.evaluate_window(data, section, window, bcfg)
                summary = result.summary()
                replay = vbt_replay.compare(result.oos, vbt_replay.replay(result.oos))
                worst = max(worst, replay)
                run.log_params({f"winner.{k}": v for k, v in result.winner.items()}
                               | {"search_method": summary["search_method"]})
                run.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)
                                 and k.startswith(("in_sample_", "oos_"))}
                                | {"vbt_replay_max_rel_diff": replay})
                side_by_side = in_and_out_of_sample(pd.DataFrame([summary]))
                images = _log_backtest(
                    run, result.oos, wf.benchmark_curves(data, result.oos),
                    f"out-of-sample {window.key}", names=names,
                    notes=[f"in-sample {window.is_start:%Y-%m-%d}..{window.is_end:%Y-%m-%d}, "
                           f"out-of-sample {window.oos_start:%Y-%m-%d}.."
                           f"{window.oos_end:%Y-%m-%d}; winner {summary['winner']} "
                           f"({summary['search_method']}, {summary['candidates']} candidates)"],
                    tables={"in-sample against out-of-sample": side_by_side,
                            "candidates (in-sample score, best first)":
                                result.candidates.head(20)})
                run.log_frame(result.candidates, "search/candidates.csv")
                summary["mlflow_run_id"] = run.run_id
                # The link of target_portfolio without opening the tracking store.
                summary["mlflow_experiment_id"] = run.experiment_id
                context.add_asset_metadata(
                    _window_metadata(result, side_by_side, run.url, images.get("equity")),
                    partition_key=window.key)
            rows.append(summary)
        table = pd.DataFrame(rows)
        table["screened_factors"] = ""
        whole_run = run_level({
            "windows": dg.MetadataValue.int(len(table)),
            "winners": metadata_table(in_and_out_of_sample(table), 100, CLASSIC_WINDOW_COLUMNS),
            "winner_params": metadata_table(_params_table(table), 100),
            "experiment": dg.MetadataValue.text(strategy.experiment_name),
            "data_version": dg.MetadataValue.text(version),
            **cache_stats.metadata()})
        for key in table["window"]:
            context.add_asset_metadata(whole_run, partition_key=str(key))
        yield dg.Output(table)
        yield dg.AssetCheckResult(check_name=WINNER_REPLAY_CHECK, passed=worst <= 1e-9,
                                  metadata={"max_rel_diff": dg.MetadataValue.float(worst)})

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
        description="The honest performance (SPEC §6): each window's frozen parameters trade "
        "its out-of-sample sessions, stitched into one backtest under the SPEC §7 rules, with "
        "the equal-weight universe and the benchmark fund.",
    )
    def oos_backtest(context: dg.AssetExecutionContext, adjusted_bars: pd.DataFrame,
                     wfo_results: pd.DataFrame, market_data: MarketDataResource,
                     tracking: MlflowTracking, cache: RedisCache
                     ) -> Iterator[dg.Output[pd.DataFrame] | dg.AssetCheckResult]:
        from rotation.backtest import vbt as vbt_replay

        data, cache_stats = prepare(adjusted_bars, market_data, cache, context)
        winners = through_latest(data, _winners(wfo_results))  # type: ignore[arg-type]
        windows = in_and_out_of_sample(wfo_results)
        as_of, latest = latest_target(data, wfo_results)
        span = backtest_span(data, _winners(wfo_results))  # type: ignore[arg-type]
        names = fund_names(market_data)
        with tracking.run(context, experiment=strategy.experiment_name,
                          run_name="oos backtest", params=strategy.tracking_params(),
                          tags=tags(), data_version=data_fingerprint(adjusted_bars)) as run:
            result = wf.oos_backtest(data, cs.stitched_targets(data, section, winners), bcfg)
            replay_diff = vbt_replay.compare(result, vbt_replay.replay(result))
            benchmarks = wf.benchmark_curves(data, result)
            run.log_metrics({"vbt_replay_max_rel_diff": replay_diff})
            images = _log_backtest(
                run, result, benchmarks, f"{strategy.name}: stitched out-of-sample",
                names=names, notes=[span, f"{len(winners)} walk-forward windows"],
                tables={"walk-forward windows: in-sample against out-of-sample": windows,
                        "winner parameters per window": _params_table(wfo_results)},
                figures=window_figures(windows), latest=(as_of, latest))
            run.log_frame(result.orders, "orders.csv")
            url = run.url
        frame = _daily_frame(result, benchmarks, winners)  # type: ignore[arg-type]
        meta = oos_backtest_metadata(
            strategy, result, frame, span=span, url=url, images=images,
            header={"generator": dg.MetadataValue.text(section.generator)},
            tables={"windows": metadata_table(windows, 100, CLASSIC_WINDOW_COLUMNS),
                    "winner_params": metadata_table(_params_table(wfo_results), 100)},
            latest=(as_of, _named(latest.loc[latest["weight"] > 0, ["symbol", "weight"]],
                                  names)))
        yield dg.Output(frame, metadata=meta | cache_stats.metadata())
        yield dg.AssetCheckResult(check_name=REPLAY_CHECK, passed=replay_diff <= 1e-9,
                                  metadata={"max_rel_diff": dg.MetadataValue.float(replay_diff)})

    @dg.asset(
        group_name=PORTFOLIO_GROUP,
        kinds={"pandas"},
        ins={"adjusted_bars": ALL_SESSIONS,
             "wfo_results": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
        code_version=versions["target_portfolio"],
        description="Target weights for the latest session: the newest window's frozen "
        "parameters applied to data up to that close (traded at the next open), with the "
        "reason each fund is in or out.",
    )
    def target_portfolio(context: dg.AssetExecutionContext, adjusted_bars: pd.DataFrame,
                         wfo_results: pd.DataFrame, market_data: MarketDataResource,
                         cache: RedisCache, tracking: MlflowTracking
                         ) -> dg.Output[pd.DataFrame]:
        data, cache_stats = prepare(adjusted_bars, market_data, cache, context)
        window, _ = _winners(wfo_results)[-1]
        newest = wfo_results.sort_values("oos_start").iloc[-1]
        as_of, table = latest_target(data, wfo_results)
        table.insert(1, "strategy", strategy.name)
        table.insert(2, "window", window.key)
        names = fund_names(market_data)
        held = table.loc[table["weight"] > 0, ["symbol", "weight", "reason"]]
        meta: dict[str, object] = {
            "as_of": dg.MetadataValue.text(f"{as_of:%Y-%m-%d}"),
            "window": dg.MetadataValue.text(window.key),
            "winner": dg.MetadataValue.text(str(newest["winner"])),
            "invested_pct": dg.MetadataValue.float(round(float(table["weight"].sum()) * 100, 2)),
            "holdings": metadata_table(_named(held, names), 60),
            "reasons": metadata_table(_named(
                table[["symbol", "rank", "weight", "reason"]], names), 100),
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
        "target weight, order and position (as for a rotation strategy).",
    )
    def oos_positions(context: dg.AssetExecutionContext, adjusted_bars: pd.DataFrame,
                      wfo_results: pd.DataFrame, oos_backtest: pd.DataFrame,
                      market_data: MarketDataResource, cache: RedisCache
                      ) -> Iterator[dg.Output[pd.DataFrame] | dg.AssetCheckResult]:
        data, cache_stats = prepare(adjusted_bars, market_data, cache, context)
        winners = through_latest(data, _winners(wfo_results))  # type: ignore[arg-type]
        result = wf.oos_backtest(data, cs.stitched_targets(data, section, winners), bcfg)
        frame = position_rows(result, winners)  # type: ignore[arg-type]
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
    """Each asset's code version: the classic code it runs (assets.code_version's
    ``classic_*`` entries) with the strategy sections it reads."""
    base = ("universe", "horizons", "wfo", "classic")
    trading = ("costs", "execution")

    def version(asset: str, *sections: str) -> str:
        return code_version(f"classic_{asset}",
                            strategy_sections(strategy, *base, *sections), cross_section)

    return {"wfo_windows": version("wfo_windows"),
            "wfo_results": version("wfo_results", *trading),
            "oos_backtest": version("oos_backtest", *trading),
            "oos_positions": version("oos_positions", *trading),
            "target_portfolio": version("target_portfolio", "name")}


def _window_row(window: WfoWindow, section: ClassicSection) -> dict[str, object]:
    return {**window.as_dict(), "generator": section.generator,
            "search_method": section.method, "candidates": len(section.candidates()),
            "trials": section.trials if section.method == "optuna" else None,
            "space": json.dumps({k: list(v) for k, v in sorted(section.params.items())})}


def _winners(results: pd.DataFrame) -> Winners:
    """Each window and its frozen parameters, oldest first."""
    ordered = results.sort_values("oos_start")
    out: Winners = []
    for i, row in enumerate(ordered.to_dict("records")):
        window = WfoWindow(index=i, is_start=pd.Timestamp(row["is_start"]),
                           is_end=pd.Timestamp(row["is_end"]),
                           oos_start=pd.Timestamp(row["oos_start"]),
                           oos_end=pd.Timestamp(row["oos_end"]))
        out.append((window, json.loads(str(row["params"]))))
    if not out:
        raise dg.Failure("no walk-forward results: materialise wfo_results first")
    return out


def _params_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per window its winner's parameters (one column each) and how it was searched."""
    ordered = results.sort_values("oos_start")
    params = pd.DataFrame([json.loads(str(p)) for p in ordered["params"]])
    head = pd.DataFrame({"window": ordered["window"].astype(str).to_numpy(),
                         "search_method": ordered["search_method"].astype(str).to_numpy(),
                         "candidates": ordered["candidates"].astype(int).to_numpy()})
    return pd.concat([head, params], axis=1)


def _window_metadata(result: cs.ClassicWindowResult, side_by_side: pd.DataFrame,
                     url: str | None, equity_image: str | None) -> dict[str, object]:
    """One window's own metadata (its partition of wfo_results)."""
    row = side_by_side.iloc[0]
    meta: dict[str, object] = {
        "window": dg.MetadataValue.text(result.window.key),
        "out_of_sample": dg.MetadataValue.text(str(row["out_of_sample"])),
        "winner": dg.MetadataValue.text(str(row["winner"])),
        "winner_params": dg.MetadataValue.json(result.winner),
        "candidates": dg.MetadataValue.int(len(result.candidates)),
        "candidates_top": metadata_table(result.candidates.head(20), 20),
        "in_and_out_of_sample": metadata_table(side_by_side.drop(columns=["window"]), 5,
                                               CLASSIC_WINDOW_COLUMNS),
    }
    for key in CLASSIC_WINDOW_COLUMNS:
        value = float(row[key])
        if pd.notna(value):
            meta[key] = dg.MetadataValue.float(value)
    if url:
        meta["mlflow_run"] = dg.MetadataValue.url(url)
    if equity_image:
        meta["plot_equity"] = dg.MetadataValue.md(f"![equity]({equity_image})")
    return meta

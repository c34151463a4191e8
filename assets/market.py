"""Market-data stage: raw_bars → adjusted_bars → cross_sections, with their quality gates.

The SPEC §2 rules run as one Great Expectations suite inside ``raw_bars`` *before* its output is
stored: each rule is a named blocking check, every failing row is in the check's metadata, and a
failure stops the step, so nothing downstream runs and the last good partition files stay
untouched.
"""


import dataclasses
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pandas as pd
from dagster_pandera import pandera_schema_to_dagster_type

from assets.metadata import frame_metadata, markdown
from assets.partitions import partition_sessions
from resources.cache import CacheStats, RedisCache
from resources.market_data import MarketDataResource
from rotation import quality, schemas
from rotation.adjust import adjust_bars
from rotation.cross_section import BASE_FIELDS, CrossSectionConfig, build_cross_sections

MARKET_GROUP = "market_data"
CROSS_SECTION_GROUP = "cross_sections"
RawBarsType = pandera_schema_to_dagster_type(schemas.RawBars)
AdjustedBarsType = pandera_schema_to_dagster_type(schemas.AdjustedBars)
CrossSectionsType = pandera_schema_to_dagster_type(schemas.CrossSections)

STANDARDIZED_CHECK = "cross_sections_standardized"
# Longest rolling window of the cross-section fields (ret_20d, vol_20d) plus slack.
FIELD_WINDOW = 25


def _check_metadata(outcome: quality.RuleOutcome) -> dict[str, object]:
    meta: dict[str, object] = {
        "rule": dg.MetadataValue.text(outcome.rule.description),
        "checked": dg.MetadataValue.int(outcome.checked_rows),
        "failing_rows": dg.MetadataValue.int(len(outcome.failures)),
    }
    if not outcome.passed:
        meta["failures"] = dg.MetadataValue.md(markdown(outcome.failures))
        meta["first_failure"] = dg.MetadataValue.text(outcome.failures["message"].iloc[0])
    if not outcome.accepted.empty:
        meta["accepted_anomalies"] = dg.MetadataValue.md(markdown(outcome.accepted))
    return meta


def market_assets(
    sessions: dg.TimeWindowPartitionsDefinition,
    quality_config: quality.QualityConfig,
    cross_section_config: CrossSectionConfig,
) -> list[dg.AssetsDefinition]:
    """The stage's assets over the given session partitions, with the configured tolerances
    (SPEC §2) and cross-section parameters (SPEC §3)."""
    # Days of adjusted bars before each partition that feed the coverage filter and the
    # rolling fields: min_history plus the longest window.
    cross_section_lookback = cross_section_config.min_history + FIELD_WINDOW

    @dg.asset(
        partitions_def=sessions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=MARKET_GROUP,
        kinds={"pandas", "parquet"},
        dagster_type=RawBarsType,
        check_specs=[
            dg.AssetCheckSpec(rule.name, asset="raw_bars", blocking=True,
                              description=rule.description)
            for rule in quality.RULES
        ],
        description="Daily bars of every fund of the universe for one session, raw prices, "
        "units normalised; gated by the SPEC §2 quality suite before it is stored.",
        code_version="1",
    )
    def raw_bars(
        context: dg.AssetExecutionContext,
        market_data: MarketDataResource,
        cache: RedisCache,
    ) -> Iterator[dg.AssetCheckResult | dg.Output[pd.DataFrame]]:
        first, last = partition_sessions(context)
        calendar = market_data.calendar
        sessions = calendar.sessions(first, last)
        if len(sessions) and calendar.session_close(sessions[-1]) > pd.Timestamp.now(tz="UTC"):
            # A partition exists from the start of its day; its data only after the close.
            raise dg.Failure(
                description=f"raw_bars {sessions[-1].date()}: the session closes at "
                f"{calendar.session_close(sessions[-1])} and has no final bars yet; "
                "materialise it after the close",
                allow_retries=False,
            )
        history_from = calendar.offset(first, -quality_config.lookback_sessions)
        cache_stats = CacheStats()
        loaded = market_data.load_cached(cache, history_from, last, cache_stats,
                                         warn=context.log.warning)
        context.log.info(
            f"{market_data.label}: {len(loaded.bars)} rows {history_from.date()}..{last.date()} "
            f"(history from {history_from.date()} for context), {len(loaded.issues)} issue(s)"
        )
        checks = quality.QualityContext(
            calendar=calendar,
            instruments=market_data.instruments(),
            config=quality_config,
            accepted=market_data.accepted_anomalies(),
        )
        outcomes = quality.evaluate(
            loaded.bars,
            loaded.issues,
            checks,
            evaluate_from=first,
            expected_sessions=list(sessions),
            source_label=market_data.label,
        )
        for outcome in outcomes:
            yield dg.AssetCheckResult(
                check_name=outcome.rule.name,
                passed=outcome.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata=_check_metadata(outcome),
            )
        failures = quality.failed(outcomes)
        if failures:
            raise dg.Failure(
                description=(
                    f"raw_bars {first.date()}..{last.date()}: {len(failures)} quality rule(s) "
                    "failed; nothing was stored (the last good partitions stay) and downstream "
                    "assets are blocked.\n" + "\n".join(o.summary() for o in failures)
                ),
                metadata={"failed_rules": dg.MetadataValue.json([o.rule.name for o in failures])},
                allow_retries=False,
            )
        bars = loaded.bars.loc[loaded.bars["date"] >= first].reset_index(drop=True)
        accepted = sum(len(o.accepted) for o in outcomes)
        yield dg.Output(
            bars,
            metadata=frame_metadata(
                bars,
                source=market_data.label,
                files_read=len(loaded.sources),
                accepted_anomalies=accepted,
                sessions_in_range=len(sessions),
            ) | cache_stats.metadata(),
        )

    @dg.asset(
        partitions_def=sessions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=MARKET_GROUP,
        kinds={"pandas", "parquet"},
        dagster_type=AdjustedBarsType,
        description="Backward-adjusted OHLC for research (raw × cumulative factor) with the raw "
        "open/close kept for order sizing.",
        code_version="1",
    )
    def adjusted_bars(raw_bars: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        adjusted = adjust_bars(raw_bars)
        events = int((raw_bars.groupby("symbol")["adj_factor"].nunique() > 1).sum())
        return dg.Output(
            adjusted, metadata=frame_metadata(adjusted, funds_with_adjustment_events=events)
        )

    @dg.asset(
        partitions_def=sessions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=CROSS_SECTION_GROUP,
        kinds={"pandas", "parquet"},
        dagster_type=CrossSectionsType,
        ins={
            "adjusted_bars": dg.AssetIn(
                partition_mapping=dg.TimeWindowPartitionMapping(
                    start_offset=-cross_section_lookback,
                    allow_nonexistent_upstream_partitions=True,
                )
            )
        },
        check_specs=[
            dg.AssetCheckSpec(
                STANDARDIZED_CHECK, asset="cross_sections", blocking=True,
                description="every processed field has mean 0 and std 1 (z-score) or lies in "
                "[-1, 1] (rank) on every date with enough funds",
            )
        ],
        description="Per-session panels of eligible funds (coverage filter), winsorised and "
        "standardised per SPEC §3; missing values stay missing.",
        code_version="1",
    )
    def cross_sections(
        context: dg.AssetExecutionContext,
        adjusted_bars: pd.DataFrame,
    ) -> Iterator[dg.AssetCheckResult | dg.Output[pd.DataFrame]]:
        first, _ = partition_sessions(context)
        cfg = cross_section_config
        panel = build_cross_sections(adjusted_bars, cfg, start=first)
        problems = standardization_problems(panel, cfg.standardize, cfg.min_funds)
        yield dg.AssetCheckResult(
            check_name=STANDARDIZED_CHECK,
            passed=problems.empty,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"failing_dates": dg.MetadataValue.md(markdown(problems))},
        )
        if not problems.empty:
            raise dg.Failure(
                description=f"cross_sections: {len(problems)} (date, field) pairs are not "
                "standardised; nothing stored",
                allow_retries=False,
            )
        per_date = panel.groupby("date")["symbol"].count()
        yield dg.Output(
            panel,
            metadata=frame_metadata(
                panel,
                funds_per_session_min=int(per_date.min()) if len(per_date) else 0,
                funds_per_session_max=int(per_date.max()) if len(per_date) else 0,
                config=dataclasses.asdict(cfg),
            ),
        )

    return [raw_bars, adjusted_bars, cross_sections]


def standardization_problems(
    panel: pd.DataFrame, method: str, min_funds: int, tol: float = 1e-9
) -> pd.DataFrame:
    """(date, field) pairs whose processed values are not standardised."""
    rows = []
    for name in BASE_FIELDS:
        col = f"{name}_std"
        grouped = panel.groupby("date")[col]
        stats = pd.DataFrame(
            {"n": grouped.count(), "mean": grouped.mean(), "std": grouped.std(ddof=1),
             "min": grouped.min(), "max": grouped.max()}
        )
        stats = stats.loc[stats["n"] >= min_funds]
        if method == "zscore":
            bad = (stats["mean"].abs() > tol) | ((stats["std"] - 1).abs() > 1e-6)
            # A constant cross-section has no z-score: all values missing, n == 0.
        else:
            bad = (stats["min"] < -1 - tol) | (stats["max"] > 1 + tol)
        for day, rec in stats.loc[bad].iterrows():
            rows.append({"date": day, "field": col, "n": int(rec["n"]),
                         "mean": rec["mean"], "std": rec["std"]})
    return pd.DataFrame(rows, columns=["date", "field", "n", "mean", "std"]).astype(
        {"n": np.int64}
    )

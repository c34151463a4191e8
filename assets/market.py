"""Market-data stage: raw_bars → adjusted_bars → cross_sections, with their quality gates.

The SPEC §2 rules run as one Great Expectations suite inside ``raw_bars`` *before* its output is
stored: each rule is a named blocking check, every failing row is in the check's metadata, and a
failure stops the step, so nothing downstream runs and the last good partition files stay
untouched.

A range (a backfill) stores what is good: when the failing rows fall in some of its partitions,
the others are stored with their adjusted bars and the cross-sections outside the failures'
reach (:class:`PartialBackfill`), and the run fails naming every failed partition. Dagster
stores a step's output for all of its partitions or none, so ``raw_bars`` stores them itself;
the steps of ``adjusted_bars`` and ``cross_sections`` do not run.
"""


import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import dagster as dg
import numpy as np
import pandas as pd
from dagster_pandera import pandera_schema_to_dagster_type

from assets.code_version import code_version
from assets.metadata import (
    column_schema,
    frame_metadata,
    markdown,
    partition_metadata,
    rows_by_partition,
)
from assets.partitions import partition_sessions
from orchestration.dagster_private import (
    CODE_VERSION_TAG,
    AssetMaterializationPlannedData,
    DagsterEvent,
    DagsterEventBatchMetadata,
    PartitionsSubset,
    generate_event_batch_id,
)
from resources.cache import CacheStats, RedisCache
from resources.market_data import MarketDataResource
from rotation import quality, schemas
from rotation.adjust import adjust_bars
from rotation.calendar import TradingCalendar
from rotation.cross_section import BASE_FIELDS, CrossSectionConfig, build_cross_sections

MARKET_GROUP = "market_data"
CROSS_SECTION_GROUP = "cross_sections"
RawBarsType = pandera_schema_to_dagster_type(schemas.RawBars)
AdjustedBarsType = pandera_schema_to_dagster_type(schemas.AdjustedBars)
CrossSectionsType = pandera_schema_to_dagster_type(schemas.CrossSections)

STANDARDIZED_CHECK = "cross_sections_standardized"
# Longest rolling window of the cross-section fields (ret_20d, vol_20d) plus slack.
FIELD_WINDOW = 25


def _check_metadata(outcome: quality.RuleOutcome, keys: Sequence[str]) -> dict[str, object]:
    meta: dict[str, object] = {
        "rule": dg.MetadataValue.text(outcome.rule.description),
        "checked": dg.MetadataValue.int(outcome.checked_rows),
        "failing_rows": dg.MetadataValue.int(len(outcome.failures)),
        **checked_partitions(keys, [] if outcome.passed else failed_partitions([outcome], keys)),
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
    versions = {"raw_bars": code_version("raw_bars", quality_config),
                "adjusted_bars": code_version("adjusted_bars"),
                "cross_sections": code_version("cross_sections", cross_section_config)}

    @dg.asset(
        partitions_def=sessions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=MARKET_GROUP,
        kinds={"pandas", "parquet"},
        dagster_type=RawBarsType,
        check_specs=[
            dg.AssetCheckSpec(rule.name, asset="raw_bars", blocking=rule.blocking,
                              description=rule.description)
            for rule in quality.RULES
        ],
        description="Daily bars of every fund of the universe for one session, raw prices, "
        "units normalised; gated by the SPEC §2 quality suite before it is stored.",
        code_version=versions["raw_bars"],
    )
    def raw_bars(
        context: dg.AssetExecutionContext,
        market_data: MarketDataResource,
        cache: RedisCache,
    ) -> Iterator[dg.AssetCheckResult | DagsterEvent | dg.Output[pd.DataFrame]]:
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
            pd.concat([previous_bars(market_data, loaded.bars, first), loaded.bars],
                      ignore_index=True),
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
                severity=(dg.AssetCheckSeverity.ERROR if outcome.rule.blocking
                          else dg.AssetCheckSeverity.WARN),
                metadata=_check_metadata(outcome, context.partition_keys),
            )
        bars = loaded.bars.loc[loaded.bars["date"] >= first].reset_index(drop=True)
        failures = quality.failed(outcomes)
        if failures:
            keys = list(context.partition_keys)
            bad = failed_partitions(failures, keys)
            failed = {asset: keys for asset in versions}
            # Worth storing when the partitions that passed hold bars (not only holidays).
            stored = bool((~partition_keys_of(bars).isin(bad)).any())
            if stored:
                partial = PartialBackfill(context, versions, cross_section_config,
                                          cross_sections)
                failed = partial.store_good(bars, bad)
                yield from partial.events()
            if len(keys) > 1:
                report_failed(context, failed)
            raise dg.Failure(
                description=failure_text(first, last, failures, failed, keys, stored),
                metadata={"failed_rules": dg.MetadataValue.json([o.rule.name for o in failures]),
                          "failed_partitions": dg.MetadataValue.json(failed)},
                allow_retries=False,
            )
        accepted = sum(len(o.accepted) for o in outcomes)
        yield dg.Output(
            bars,
            metadata=partition_metadata(
                context, bars, no_session=no_session_text(calendar),
                run={"source": market_data.label, "files_read": len(loaded.sources),
                     "accepted_anomalies": accepted, "sessions": len(sessions),
                     **cache_stats.metadata()},
            ),
        )

    @dg.asset(
        partitions_def=sessions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=MARKET_GROUP,
        kinds={"pandas", "parquet"},
        dagster_type=AdjustedBarsType,
        description="Backward-adjusted OHLC for research (raw × cumulative factor) with the raw "
        "open/close kept for order sizing.",
        code_version=versions["adjusted_bars"],
    )
    def adjusted_bars(context: dg.AssetExecutionContext, raw_bars: pd.DataFrame
                      ) -> dg.Output[pd.DataFrame]:
        adjusted = adjust_bars(raw_bars)
        events = int((raw_bars.groupby("symbol")["adj_factor"].nunique() > 1).sum())
        return dg.Output(adjusted, metadata=partition_metadata(
            context, adjusted, no_session=no_bars_text,
            run={"funds_with_adjustment_events": events}))

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
        code_version=versions["cross_sections"],
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
            metadata={"failing_dates": dg.MetadataValue.md(markdown(problems)),
                      **checked_partitions(context.partition_keys,
                                           sorted(set(partition_keys_of(problems))))},
        )
        if not problems.empty:
            raise dg.Failure(
                description=f"cross_sections: {len(problems)} (date, field) pairs are not "
                "standardised; nothing stored",
                allow_retries=False,
            )
        per_date = panel.groupby("date")["symbol"].count()
        yield dg.Output(panel, metadata=partition_metadata(
            context, panel, no_session=no_bars_text,
            run={"funds_per_session_min": int(per_date.min()) if len(per_date) else 0,
                 "funds_per_session_max": int(per_date.max()) if len(per_date) else 0,
                 "config": dataclasses.asdict(cfg)}))

    return [raw_bars, adjusted_bars, cross_sections]


def previous_bars(market_data: MarketDataResource, bars: pd.DataFrame, first: pd.Timestamp
                  ) -> pd.DataFrame:
    """Each fund's last bar before ``bars`` begin, for the funds with bars from ``first`` on but
    none in the lookback before it (back from a suspension longer than the lookback): their
    first bar of the partition is then checked against its previous close (returns, open, gap)
    on a daily run as in a backfill, not passed for want of one and blamed on the next day."""
    before = bars["date"] < first
    wanted = set(bars.loc[~before, "symbol"].dropna()) - set(bars.loc[before, "symbol"].dropna())
    start = pd.Timestamp(market_data.history_start)
    loaded_from = bars["date"].min() if len(bars) else first
    if not wanted or loaded_from <= start:
        return bars.iloc[0:0]
    earlier = market_data.load(start, loaded_from - pd.Timedelta(days=1)).bars
    earlier = earlier.loc[earlier["symbol"].isin(wanted)]
    return earlier.sort_values("date").groupby("symbol", sort=False).tail(1)


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


def checked_partitions(keys: Sequence[str], failed: Sequence[str]) -> dict[str, object]:
    """A check's result per partition: it reports once per run (one record per check and run,
    orchestration/dagster_storage.py), covering the run's partitions; those it failed are
    listed (every other one passed)."""
    return {
        "partitions_checked": dg.MetadataValue.int(len(keys)),
        "partition_range": dg.MetadataValue.text(f"{keys[0]}..{keys[-1]}" if keys else ""),
        "failed_partitions": dg.MetadataValue.json(list(failed)),
    }


def no_session_text(calendar: TradingCalendar) -> Callable[[str], str | None]:
    """What a partition says when its day is not a session of ``calendar`` (None: a session)."""
    def text(key: str) -> str | None:
        if calendar.is_session(pd.Timestamp(key)):
            return None
        return (f"no session: {key} is not a trading session of the {calendar.name} calendar "
                "(exchange holiday); no bars")
    return text


def no_bars_text(key: str) -> str:
    """An empty partition downstream of raw_bars: a day without a session (raw_bars refuses
    a session without bars)."""
    return f"no session: {key} holds no bars (not a trading session)"


# -- a range stores what is good ----------------------------------------------------------------

ADJUSTED_KEY = dg.AssetKey("adjusted_bars")


def partition_keys_of(frame: pd.DataFrame) -> pd.Series:
    """The session partition of each row (partition keys are the rows' dates)."""
    return pd.to_datetime(frame["date"]).dt.strftime("%Y-%m-%d")


def failed_partitions(failures: Sequence[quality.RuleOutcome], keys: Sequence[str]
                      ) -> list[str]:
    """The partitions of ``keys`` (in order) that hold a failing row: the partition of its date,
    or the one before it (a Saturday bar is in Friday's window). A failure without a date (a
    missing column, an empty file) fails every partition."""
    dates = pd.to_datetime(pd.concat([o.failures["date"] for o in failures]), errors="coerce")
    if dates.isna().any():
        return list(keys)
    starts = pd.DatetimeIndex(pd.to_datetime(list(keys)))
    positions = starts.searchsorted(pd.DatetimeIndex(dates).normalize(), side="right") - 1
    return [keys[p] for p in sorted({int(p) for p in positions if p >= 0})]


def contiguous(keys: Sequence[str], order: Sequence[str]) -> list[tuple[str, str]]:
    """``keys`` as (first, last) runs of consecutive keys of ``order``."""
    position = {k: i for i, k in enumerate(order)}
    runs: list[list[str]] = []
    for key in sorted(keys, key=position.__getitem__):
        if runs and position[key] == position[runs[-1][-1]] + 1:
            runs[-1].append(key)
        else:
            runs.append([key])
    return [(run[0], run[-1]) for run in runs]


def _describe(keys: Sequence[str], order: Sequence[str]) -> str:
    parts = [a if a == b else f"{a}..{b}" for a, b in contiguous(keys, order)]
    return f"{len(keys)} partition(s): {', '.join(parts)}"


def failure_text(first: pd.Timestamp, last: pd.Timestamp,
                 failures: Sequence[quality.RuleOutcome], failed: dict[str, list[str]],
                 keys: Sequence[str], stored: bool) -> str:
    """The run's failure: the failed rules and, for each asset, the partitions that failed."""
    head = f"raw_bars {first.date()}..{last.date()}: {len(failures)} quality rule(s) failed"
    if not stored:
        head += ("; nothing was stored (the last good partitions stay) and downstream assets "
                 "are blocked.")
    else:
        order = sorted(set(keys) | {k for v in failed.values() for k in v})
        head += (f" in {len(failed['raw_bars'])} of {len(keys)} partition(s); every other "
                 "partition was stored, the failed ones keep their last good files and block "
                 "what depends on them. Failed: " + "; ".join(
                     f"{asset} {_describe(names, order)}" for asset, names in failed.items()
                     if names) + ".")
    return head + "\n" + "\n".join(o.summary() for o in failures)


def report_failed(context: dg.AssetExecutionContext, failed: dict[str, list[str]]) -> None:
    """Shows the failed partitions of a range as failed, not missing. With one planned event
    per range (``DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS``, orchestration/instance.py)
    Dagster cannot tell which partitions of a failed run failed; a partition planned in a run
    that failed without materialising it is failed, so each failed one is planned by itself."""
    step = context.get_step_execution_context()
    planned = [(asset, key) for asset, keys in failed.items() for key in keys]
    batch = generate_event_batch_id()
    for i, (asset, key) in enumerate(planned):
        event = DagsterEvent.build_asset_materialization_planned_event(
            context.job_name, step.step.key,
            AssetMaterializationPlannedData(dg.AssetKey(asset), partition=key))
        context.instance.report_dagster_event(
            event, context.run.run_id,
            batch_metadata=DagsterEventBatchMetadata(batch, i == len(planned) - 1))


@dataclass
class PartialBackfill:
    """Stores the partitions of a failed range that passed: the raw bars, their adjusted bars
    and the cross-sections whose inputs are all good (outside the failures' reach through the
    cross-sections' partition mapping), each computed as the asset's own step computes it.

    Dagster stores a step's output for every partition of its range or for none, so this
    writes through the IO manager and records a materialisation per stored partition itself,
    tagged with the asset's code version (:meth:`events`, for the step to yield). A failed
    partition keeps its last good file and, planned but not materialised in a failed run, shows
    as failed."""

    context: dg.AssetExecutionContext
    versions: dict[str, str]
    config: CrossSectionConfig
    cross_sections: dg.AssetsDefinition
    materializations: list[dg.AssetMaterialization] = field(default_factory=list)

    def store_good(self, bars: pd.DataFrame, bad: Sequence[str]) -> dict[str, list[str]]:
        """Store what passed; the failed partitions per asset."""
        keys = list(self.context.partition_keys)
        good = [k for k in keys if k not in set(bad)]
        self.store("raw_bars", bars.loc[partition_keys_of(bars).isin(good)], good)
        # Read back as the adjusted_bars step reads its input: the same frame, the same files.
        self.store("adjusted_bars", adjust_bars(self.load("raw_bars", good)), good)
        return {"raw_bars": list(bad), "adjusted_bars": list(bad),
                "cross_sections": self.store_cross_sections(bad)}

    def store_cross_sections(self, bad: Sequence[str]) -> list[str]:
        keys = list(self.context.partition_keys)
        mapping = (self.cross_sections.get_partition_mapping(ADJUSTED_KEY)
                   or dg.IdentityPartitionMapping())
        reach = set(mapping.get_downstream_partitions_for_partitions(
            self._subset(bad), self.partitions, self.partitions).get_partition_keys())
        wanted = [k for k in keys if k not in reach]
        if not wanted:
            return [k for k in keys if k in reach]
        inputs = mapping.get_upstream_mapped_partitions_result_for_partitions(
            self._subset(wanted), self.partitions, self.partitions).partitions_subset
        try:
            adjusted = self.load("adjusted_bars", list(inputs.get_partition_keys()))
        except FileNotFoundError as exc:  # history before the range: as the step would fail
            self.context.log.error(f"cross_sections: none stored, {exc}")
            return keys
        panel = build_cross_sections(adjusted, self.config, start=pd.Timestamp(keys[0]))
        panel = panel.loc[partition_keys_of(panel).isin(wanted)]
        problems = standardization_problems(panel, self.config.standardize,
                                            self.config.min_funds)
        unstandardised = set(partition_keys_of(problems))
        good = [k for k in wanted if k not in unstandardised]
        self.store("cross_sections", panel.loc[partition_keys_of(panel).isin(good)], good)
        return [k for k in keys if k in reach or k in unstandardised]

    @property
    def partitions(self) -> dg.PartitionsDefinition:
        partitions = self.context.assets_def.partitions_def
        assert partitions is not None
        return partitions

    @cached_property
    def order(self) -> Sequence[str]:
        return self.partitions.get_partition_keys()

    def _subset(self, keys: Sequence[str]) -> PartitionsSubset:
        return self.partitions.empty_subset().with_partition_keys(keys)

    def store(self, asset: str, frame: pd.DataFrame, keys: Sequence[str]) -> None:
        io: dg.IOManager = self.context.resources.io_manager
        key = dg.AssetKey(asset)
        rows = partition_keys_of(frame)
        for start, end in contiguous(keys, self.order):
            within = (rows >= start) & (rows <= end)
            io.handle_output(dg.build_output_context(
                asset_key=key, asset_partitions_def=self.partitions,
                asset_partition_key_range=dg.PartitionKeyRange(start, end)), frame.loc[within])
        stored_by = "raw_bars: the partitions of a failed range that passed"
        tags = {CODE_VERSION_TAG: self.versions[asset]}
        parts = rows_by_partition(frame, list(keys))
        schema = column_schema(frame)   # shared by every partition's slice
        self.materializations += [
            dg.AssetMaterialization(
                asset_key=key, partition=partition, tags=tags,
                metadata=frame_metadata(parts[partition], schema=schema, stored_by=stored_by,
                                        partition=partition))
            for partition in keys]

    def events(self) -> list[DagsterEvent]:
        """The materialisations as step events, written in one batch as Dagster writes those of
        a ranged output (one write per partition took minutes for a whole history)."""
        step = self.context.get_step_execution_context()
        batch, last = generate_event_batch_id(), len(self.materializations) - 1
        return [DagsterEvent.asset_materialization(step, m, DagsterEventBatchMetadata(
            batch, i == last)) for i, m in enumerate(self.materializations)]

    def load(self, asset: str, keys: Sequence[str]) -> pd.DataFrame:
        io: dg.IOManager = self.context.resources.io_manager
        frames = [io.load_input(dg.build_input_context(
            asset_key=dg.AssetKey(asset), asset_partitions_def=self.partitions,
            asset_partition_key_range=dg.PartitionKeyRange(start, end)))
            for start, end in contiguous(keys, self.order)]
        frames = [f for f in frames if len(f)] or frames[:1]
        return pd.concat(frames, ignore_index=True)

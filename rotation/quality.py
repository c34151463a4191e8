"""Market-data quality rules (SPEC §2): one table of expectations (:func:`rule_checks`),
evaluated by a Great Expectations 1.x suite, or by pandera where GX's import would cost the
daily run more than its evaluation (``QualityConfig.engine``; both give the same verdicts).

Each rule has a name (the Dagster check name), a description and one or more expectations.
Rules that need history (returns, gaps, stale runs, turnover consistency) are expressed as
expectations over derived columns computed here in plain pandas, so GX reports the offending
rows and every failure names the source file, symbol, date and rule.

Structural problems met while reading a source (missing column, a string in a numeric column, an
empty file) never reach GX as rows; they arrive as load issues and fail their own named rule.

Every rule blocks (a failure stops ``raw_bars`` and everything downstream) except the few marked
``blocking=False``: those report something a reviewer should look at on data that is still
well defined (a split recorded on a non-session: its ex-date is the first session after it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from rotation.bars import PRICE_COLUMNS, Instrument, empty_issues
from rotation.calendar import TradingCalendar

if TYPE_CHECKING:  # GX takes seconds to import: only where a validation runs
    from great_expectations.expectations import Expectation

TICK = 0.001  # exchange tick for funds (CNY)


@dataclass(frozen=True)
class QualityRule:
    name: str
    description: str
    # Where the rule is evaluated: "source" (load issues) or "bars" (GX over the bar frame).
    kind: str = "bars"
    # A failing non-blocking rule is reported (a WARN check) but stores and runs downstream.
    blocking: bool = True


RULES: tuple[QualityRule, ...] = (
    QualityRule("source_not_empty", "every source file or feed holds rows", "source"),
    QualityRule("source_columns", "every source has the configured columns", "source"),
    QualityRule("source_values_numeric", "price and volume cells parse as numbers", "source"),
    QualityRule("source_dates", "date cells parse as dates, without a timezone", "source"),
    QualityRule("source_symbols", "every row's symbol reads in the market's symbol scheme",
                "source"),
    QualityRule("symbols_file_encoding",
                "the universe's symbols file is UTF-8 (with or without BOM) or GBK/GB18030 text",
                "source"),
    QualityRule("symbol_exchange", "a code's exchange suffix is the exchange the code trades on",
                "source"),
    QualityRule("volume_units",
                "volume is in the unit the dataset configures (units or lots)", "source"),
    QualityRule("source_adj_close", "an adjusted close gives a positive adjustment factor",
                "source"),
    QualityRule("factor_dates_valid",
                "adjustment-factor files: dates parse and are unique per fund", "source"),
    QualityRule("factor_values_valid",
                "adjustment-factor files: factors are finite numbers > 0", "source"),
    QualityRule("split_events_valid",
                "split table: every event has a fund's code, a date and a ratio > 0", "source"),
    QualityRule("split_record_date_is_session",
                "a split's record date is a session (otherwise its ex-date, the first session "
                "after it, is reported for review; a warning, not blocking)", "source",
                blocking=False),
    QualityRule(
        "sessions_have_bars",
        "every session of the range has bars (the source has published it)",
        "coverage",
    ),
    QualityRule("prices_present", "open, high, low and close are present"),
    QualityRule("prices_positive", "open, high, low and close are > 0"),
    QualityRule("ohlc_consistent", "low <= min(open, close) and max(open, close) <= high"),
    QualityRule("volume_non_negative", "volume >= 0"),
    QualityRule("unique_date_symbol", "one bar per (date, symbol)"),
    QualityRule("dates_are_sessions", "every date is a session of the exchange calendar"),
    QualityRule("known_symbols", "every symbol belongs to the configured universe"),
    QualityRule(
        "returns_within_price_limit",
        "|adjusted daily return| within the fund's price limit (+1 tick) unless an adjustment "
        "event explains it",
    ),
    QualityRule(
        "open_within_price_limit",
        "the open lies within the fund's price limit of the previous close (an open beyond it "
        "with the close inside means open and close were swapped, or the open is wrong)",
    ),
    QualityRule(
        "range_within_price_limit",
        "high / low within what the fund's price limit L allows in one session, (1+L)/(1-L) "
        "plus a tick each way (needs no previous bar: checks a fund's first day too)",
    ),
    QualityRule("no_long_gaps", "no run of missing sessions longer than the suspension tolerance"),
    QualityRule(
        "no_stale_closes",
        "no run of identical closes with non-zero volume longer than max_stale_days",
    ),
    QualityRule(
        "amount_matches_prices",
        "amount / volume (the VWAP) lies within [low, high] (catches unit and scale errors)",
    ),
)
RULES_BY_NAME = {rule.name: rule for rule in RULES}


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class QualityConfig:
    """Tolerances of the rules (validated; also the ``quality`` settings section)."""

    max_stale_days: int = Field(default=5, ge=1)
    max_gap_sessions: int = Field(default=5, ge=0)
    # Slack on the price limit beyond one tick: noisy vendor adjustment factors.
    limit_slack: float = Field(default=0.002, ge=0, le=0.05)
    # Relative slack of the VWAP band (bond funds quote with accrued interest).
    vwap_slack: float = Field(default=0.05, ge=0, le=0.5)
    # Funds without an exchange limit (cross-border) still cannot move this much unexplained.
    unlimited_move_bound: float = Field(default=0.25, gt=0, le=1)
    # Sessions of history read before a partition so history-based rules see context; as many
    # as the participation limit's default window, so that the execution that evening reads
    # the range raw_bars read (resources.execution.quote_lookback): one read of the source.
    lookback_sessions: int = Field(default=20, ge=1)
    # Which library evaluates the bar rules' expectations (the same table, rule_checks; the
    # same verdicts, tests/test_quality_engines.py): "gx" (Great Expectations), "pandera", or
    # "auto": pandera for a run of one session (the evening's daily run: GX's import alone
    # costs seconds of a fresh run worker), GX for ranges (backfills, where it is paid once).
    engine: Literal["auto", "gx", "pandera"] = "auto"


@dataclass
class QualityContext:
    calendar: TradingCalendar
    instruments: Sequence[Instrument]
    config: QualityConfig = field(default_factory=QualityConfig)
    # (symbol, YYYY-MM-DD, rule) -> reason: reviewed exceptions, reported but not failing.
    accepted: dict[tuple[str, str, str], str] = field(default_factory=dict)


@dataclass
class RuleOutcome:
    rule: QualityRule
    failures: pd.DataFrame
    accepted: pd.DataFrame
    checked_rows: int

    @property
    def passed(self) -> bool:
        return self.failures.empty

    def summary(self, limit: int = 5) -> str:
        if self.passed:
            return f"{self.rule.name}: passed on {self.checked_rows} rows"
        head = "; ".join(self.failures["message"].head(limit))
        more = len(self.failures) - limit
        return f"{self.rule.name}: {len(self.failures)} failing row(s): {head}" + (
            f"; and {more} more" if more > 0 else ""
        )


def derive_rule_columns(bars: pd.DataFrame, ctx: QualityContext) -> pd.DataFrame:
    """The bar frame plus the derived columns the history-dependent rules test."""
    cfg = ctx.config
    frame = bars.reset_index(drop=True).copy()
    frame["row_id"] = np.arange(len(frame), dtype=np.int64)
    order = frame.sort_values(["symbol", "date"], kind="stable").index
    f = frame.loc[order]
    by = f.groupby("symbol", sort=False)

    is_session = ctx.calendar.session_mask(f["date"])
    session_pos = np.where(is_session, ctx.calendar.session_index(f["date"]), np.nan)
    prev_pos = pd.Series(session_pos, index=f.index).groupby(f["symbol"], sort=False).shift()
    gap = session_pos - prev_pos.to_numpy() - 1

    adj_close = f["close"] * f["adj_factor"]
    prev_adj = adj_close.groupby(f["symbol"], sort=False).shift()
    prev_raw = by["close"].shift()
    ret = adj_close / prev_adj - 1.0
    limits = f["symbol"].map({i.symbol: i.price_limit for i in ctx.instruments}).astype("float64")
    exchange_limit = limits.notna()
    limits = limits.fillna(cfg.unlimited_move_bound)
    tolerance = limits + TICK / prev_raw + cfg.limit_slack
    limit_excess = ret.abs() - tolerance
    # An open beyond the band while the close is inside: open and close swapped (or a bad open).
    open_ret = f["open"] * f["adj_factor"] / prev_adj - 1.0
    open_excess = (open_ret.abs() - tolerance).where(exchange_limit & (limit_excess <= 0), -1.0)
    # Both high and low lie within the band around one reference close, whatever it was.
    range_bound = (1 + limits) / (1 - limits) * (1 + cfg.limit_slack) + 2 * TICK / f["low"]
    range_excess = (f["high"] / f["low"] - range_bound).where(exchange_limit, -1.0)
    prev_date = by["date"].shift()

    same_close = (f["close"] == prev_raw) & (f["volume"] > 0)
    run_break = (~same_close).astype(np.int64).groupby(f["symbol"], sort=False).cumsum()
    stale_run = same_close.groupby([f["symbol"], run_break], sort=False).cumsum() + 1
    # A class may allow longer rests (T-bill funds' prices sit still for weeks at zero rates).
    stale_bound = f["symbol"].map({i.symbol: i.max_stale_days for i in ctx.instruments}
                                  ).astype("float64").fillna(cfg.max_stale_days)

    vwap = f["amount"] / f["volume"].where(f["volume"] > 0)
    band_low = f["low"] * (1 - cfg.vwap_slack)
    band_high = f["high"] * (1 + cfg.vwap_slack)
    vwap_excess = np.maximum(band_low - vwap, vwap - band_high) / f["close"]

    known = f["symbol"].isin({i.symbol for i in ctx.instruments}) & f["symbol"].notna()
    derived = pd.DataFrame(
        {
            "is_session": is_session,
            "symbol_known": known,
            "missing_sessions_before": gap,
            "adj_return": ret,
            "price_limit": limits,
            "exchange_limit": exchange_limit,
            "limit_excess": limit_excess,
            "open_return": open_ret,
            "open_excess": open_excess.fillna(-1.0),
            "range_ratio": f["high"] / f["low"],
            "range_bound": range_bound,
            "range_excess": range_excess.fillna(-1.0),
            "previous_date": prev_date,
            "stale_run": stale_run.astype("float64"),
            "stale_bound": stale_bound,
            "stale_excess": stale_run - stale_bound,
            "vwap": vwap,
            "vwap_excess": vwap_excess,
        },
        index=f.index,
    )
    return frame.join(derived)


@dataclass(frozen=True)
class RuleCheck:
    """One expectation of a bar rule over the derived frame, in terms both evaluators share:
    ``not_null``, ``between`` (``min_value`` / ``max_value``, ``strict_min``), ``a_ge_b``
    (``columns[0] >= columns[1]``, rows missing either skipped), ``unique`` (the columns
    together) and ``in_set``. Like GX's column expectations, a null is not judged except by
    ``not_null``."""

    rule: str
    kind: Literal["not_null", "between", "a_ge_b", "unique", "in_set"]
    columns: tuple[str, ...]
    min_value: float | None = None
    max_value: float | None = None
    strict_min: bool = False
    value_set: tuple[object, ...] = ()


def rule_checks(ctx: QualityContext) -> list[RuleCheck]:
    """The suite: every expectation of every bar rule (the one table both evaluators read)."""
    cfg = ctx.config
    out: list[RuleCheck] = []
    for col in PRICE_COLUMNS:
        out.append(RuleCheck("prices_present", "not_null", (col,)))
        out.append(RuleCheck("prices_positive", "between", (col,), min_value=0,
                             strict_min=True))
    for a, b in (("high", "low"), ("high", "open"), ("high", "close"), ("open", "low"),
                 ("close", "low")):
        out.append(RuleCheck("ohlc_consistent", "a_ge_b", (a, b)))
    out += [
        RuleCheck("volume_non_negative", "between", ("volume",), min_value=0),
        RuleCheck("unique_date_symbol", "unique", ("date", "symbol")),
        RuleCheck("dates_are_sessions", "in_set", ("is_session",), value_set=(True,)),
        # On a derived flag: a set expectation skips nulls, and a row without a readable
        # symbol belongs to no universe.
        RuleCheck("known_symbols", "in_set", ("symbol_known",), value_set=(True,)),
        RuleCheck("returns_within_price_limit", "between", ("limit_excess",), max_value=0),
        RuleCheck("open_within_price_limit", "between", ("open_excess",), max_value=0),
        RuleCheck("range_within_price_limit", "between", ("range_excess",), max_value=0),
        RuleCheck("no_long_gaps", "between", ("missing_sessions_before",),
                  max_value=cfg.max_gap_sessions),
        RuleCheck("no_stale_closes", "between", ("stale_excess",), max_value=0),
        RuleCheck("amount_matches_prices", "between", ("vwap_excess",), max_value=0),
    ]
    return out


def offending_rows(frame: pd.DataFrame, ctx: QualityContext, engine: str
                   ) -> dict[str, set[int]]:
    """Offending ``row_id`` values per rule, by ``engine`` ("gx" or "pandera")."""
    if engine == "gx":
        return _run_gx(frame, ctx)
    if engine == "pandera":
        return _run_pandera(frame, rule_checks(ctx))
    raise ValueError(f"quality engine {engine!r}: expected 'gx' or 'pandera'")


def _gx_expectation(check: RuleCheck) -> Expectation:
    import great_expectations as gx

    e = gx.expectations
    if check.kind == "not_null":
        return e.ExpectColumnValuesToNotBeNull(column=check.columns[0])
    if check.kind == "between":
        return e.ExpectColumnValuesToBeBetween(column=check.columns[0],
                                               min_value=check.min_value,
                                               max_value=check.max_value,
                                               strict_min=check.strict_min)
    if check.kind == "a_ge_b":
        return e.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A=check.columns[0], column_B=check.columns[1], or_equal=True,
            ignore_row_if="either_value_is_missing")
    if check.kind == "unique":
        return e.ExpectCompoundColumnsToBeUnique(column_list=list(check.columns))
    return e.ExpectColumnValuesToBeInSet(column=check.columns[0],
                                         value_set=list(check.value_set))


def _run_gx(frame: pd.DataFrame, ctx: QualityContext) -> dict[str, set[int]]:
    """Offending ``row_id`` values per rule, from one GX validation of the whole suite."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("market_data")
    asset = source.add_dataframe_asset("bars")
    batch_def = asset.add_batch_definition_whole_dataframe("frame")
    suite = gx.ExpectationSuite(name="market_data_quality")
    for check in rule_checks(ctx):
        expectation = _gx_expectation(check)
        expectation.meta = {"rule": check.rule}
        suite.add_expectation(expectation)
    # GX compares values: give it plain numpy types, not pandas extension arrays.
    plain = frame.astype({"symbol": object, "source": object})
    batch = batch_def.get_batch(batch_parameters={"dataframe": plain})
    result = batch.validate(
        suite,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["row_id"]},
    )
    offending: dict[str, set[int]] = {}
    for res in result.results:
        config = res.expectation_config
        if config is None or not config.meta:
            raise RuntimeError("GX returned a validation result without its expectation")
        rule = config.meta["rule"]
        rows = offending.setdefault(rule, set())
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise RuntimeError(
                f"quality rule {rule}: expectation {config.type} raised "
                f"{res.exception_info.get('exception_message')}"
            )
        for item in res.result.get("unexpected_index_list") or []:
            rows.add(int(item["row_id"]))
    return offending


def _run_pandera(frame: pd.DataFrame, checks: Sequence[RuleCheck]) -> dict[str, set[int]]:
    """Offending ``row_id`` values per rule, from one lazy pandera validation of the suite.
    A failure case names its column and the check's position among that column's (or the
    frame's) checks, which maps it back to its rule; ``not_null`` and ``unique`` are pandera's
    own column and frame properties."""
    import pandera.pandas as pa
    from pandera.errors import SchemaErrors

    columns: dict[str, list[tuple[str, pa.Check]]] = {}
    frame_checks: list[tuple[str, pa.Check]] = []
    not_null: dict[str, str] = {}
    unique: tuple[str, list[str]] | None = None
    for check in checks:
        if check.kind == "not_null":
            not_null[check.columns[0]] = check.rule
        elif check.kind == "unique":
            unique = (check.rule, list(check.columns))
        elif check.kind == "a_ge_b":
            a, b = check.columns
            frame_checks.append((check.rule, pa.Check(
                lambda df, a=a, b=b: (df[a] >= df[b]) | df[a].isna() | df[b].isna())))
        else:
            columns.setdefault(check.columns[0], []).append(
                (check.rule, _pandera_column_check(check)))
    schema = pa.DataFrameSchema(
        {col: pa.Column(checks=[c for _, c in columns.get(col, [])],
                        nullable=col not in not_null, required=True)
         for col in {*columns, *not_null}},
        checks=[c for _, c in frame_checks], unique=unique[1] if unique else None,
        report_duplicates="all")
    offending: dict[str, set[int]] = {c.rule: set() for c in checks}
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as errors:
        failures = errors.failure_cases
        for case in failures.itertuples(index=False):
            if case.check == "not_nullable":
                rule = not_null[case.column]
            elif unique is not None and "uniqueness" in str(case.check):
                rule = unique[0]
            elif case.column in columns and case.schema_context == "Column":
                rule = columns[case.column][int(case.check_number)][0]
            elif case.schema_context == "DataFrameSchema" and not pd.isna(case.check_number):
                rule = frame_checks[int(case.check_number)][0]
            else:
                raise RuntimeError(f"pandera reported {case.check!r} on {case.column!r}, "
                                   "which no quality rule asked for") from errors
            if case.index is None or pd.isna(case.index):
                # A check that raised (GX raises too): no verdict, not a pass.
                raise RuntimeError(f"quality rule {rule}: pandera's check {case.check!r} on "
                                   f"{case.column!r} failed without a row: "
                                   f"{case.failure_case!r}") from errors
            offending[rule].add(int(frame.at[case.index, "row_id"]))
    return offending


def _pandera_column_check(check: RuleCheck) -> Any:
    import pandera.pandas as pa

    if check.kind == "in_set":
        return pa.Check.isin(list(check.value_set))
    low, high, strict = check.min_value, check.max_value, check.strict_min
    if low is not None and high is not None:
        return pa.Check.in_range(low, high, include_min=not strict)
    if low is not None:
        return pa.Check.gt(low) if strict else pa.Check.ge(low)
    return pa.Check.le(high)


def _message(rule: str, row: pd.Series) -> str:
    day = "?" if pd.isna(row["date"]) else pd.Timestamp(row["date"]).strftime("%Y-%m-%d")
    where = f"{row['source']}: {row['symbol']} on {day}"
    if rule == "prices_present":
        missing = [c for c in PRICE_COLUMNS if pd.isna(row[c])]
        return f"{where}: missing {', '.join(missing)}"
    if rule == "prices_positive":
        bad = {c: row[c] for c in PRICE_COLUMNS if row[c] <= 0}
        return f"{where}: non-positive price(s) {bad}"
    if rule == "ohlc_consistent":
        return (f"{where}: open {row['open']}, high {row['high']}, low {row['low']}, "
                f"close {row['close']} are inconsistent")
    if rule == "volume_non_negative":
        return f"{where}: volume {row['volume']} < 0"
    if rule == "unique_date_symbol":
        return f"{where}: duplicate bar"
    if rule == "dates_are_sessions":
        return f"{where}: {day} is not a session of the exchange calendar"
    if rule == "known_symbols":
        if pd.isna(row["symbol"]):
            return f"{where}: the row has no readable symbol, so it belongs to no fund"
        return f"{where}: symbol {row['symbol']} is not in the configured universe"
    if rule == "returns_within_price_limit":
        bound = (f"{row['price_limit']:.0%} price limit" if row["exchange_limit"] else
                 f"{row['price_limit']:.0%} bound for a fund without a price limit")
        return (f"{where}: adjusted return {row['adj_return']:+.2%}{_since(row)} beyond the "
                f"{bound} with no adjustment event to explain it "
                f"(adj_factor {row['adj_factor']:g})")
    if rule == "open_within_price_limit":
        return (f"{where}: open {row['open']} is {row['open_return']:+.2%} from the previous "
                f"close{_since(row)}, beyond the {row['price_limit']:.0%} price limit, while "
                "the close is inside it (open and close swapped?)")
    if rule == "range_within_price_limit":
        return (f"{where}: high {row['high']} / low {row['low']} = {row['range_ratio']:.4f}, "
                f"more than the {row['price_limit']:.0%} price limit allows in one session "
                f"(at most {row['range_bound']:.4f}; a wrong high, low or close)")
    if rule == "no_long_gaps":
        return (f"{where}: {int(row['missing_sessions_before'])} sessions without a bar "
                "before this one (beyond the suspension tolerance)")
    if rule == "no_stale_closes":
        return (f"{where}: close {row['close']} unchanged for {int(row['stale_run'])} "
                f"sessions with non-zero volume (at most {int(row['stale_bound'])})")
    if rule == "amount_matches_prices":
        return (f"{where}: amount/volume = {row['vwap']:.4g} outside [low {row['low']}, "
                f"high {row['high']}] (unit or scale error?)")
    return f"{where}: fails {rule}"


def _since(row: pd.Series) -> str:
    """The day of the close a day-over-day move is measured from (a bad bar on that day, e.g.
    a fund's first, shows as a move on this one)."""
    if pd.isna(row["previous_date"]):
        return ""
    return f" (previous close {pd.Timestamp(row['previous_date']):%Y-%m-%d})"


FAILURE_COLUMNS = ["rule", "source", "symbol", "date", "message"]


def evaluate(
    bars: pd.DataFrame,
    issues: pd.DataFrame | None,
    ctx: QualityContext,
    *,
    evaluate_from: object = None,
    expected_sessions: Sequence[pd.Timestamp] = (),
    source_label: str = "source",
    rules: Iterable[QualityRule] = RULES,
) -> list[RuleOutcome]:
    """Evaluate every rule. Rows before ``evaluate_from`` are context (history) only;
    ``expected_sessions`` are the sessions that must each hold at least one bar (one: the
    evening's run, which the ``auto`` engine evaluates with pandera)."""
    issues = empty_issues() if issues is None else issues
    frame = derive_rule_columns(bars, ctx)
    in_scope = (
        np.ones(len(frame), dtype=bool)
        if evaluate_from is None
        else (frame["date"] >= pd.Timestamp(evaluate_from)).to_numpy()
    )
    engine = ctx.config.engine
    if engine == "auto":
        engine = "pandera" if len(expected_sessions) == 1 else "gx"
    offending = offending_rows(frame, ctx, engine) if len(frame) else {}
    accepted_keys = ctx.accepted
    outcomes: list[RuleOutcome] = []
    for rule in rules:
        if rule.kind == "coverage":
            present = set(pd.DatetimeIndex(frame["date"]).normalize().asi8.tolist())
            absent = [d for d in expected_sessions if pd.Timestamp(d).value not in present]
            failures = pd.DataFrame(
                {
                    "rule": rule.name,
                    "source": source_label,
                    "symbol": None,
                    "date": pd.DatetimeIndex(absent),
                    "message": [
                        f"{source_label}: no bars at all for session {d:%Y-%m-%d} "
                        "(not published yet, or outside the source's history)"
                        for d in absent
                    ],
                }
            ) if absent else _empty_failures()
            outcomes.append(RuleOutcome(rule, failures, _empty_failures(),
                                        len(expected_sessions)))
            continue
        if rule.kind == "source":
            found = issues.loc[issues["rule"] == rule.name]
            if evaluate_from is not None:
                when = pd.to_datetime(found["date"])
                found = found.loc[when.isna() | (when >= pd.Timestamp(evaluate_from))]
            failures = found.loc[:, ["rule", "source", "symbol", "date", "message"]]
            outcomes.append(RuleOutcome(rule, failures.reset_index(drop=True),
                                        _empty_failures(), len(issues)))
            continue
        ids = sorted(offending.get(rule.name, set()))
        rows = frame.iloc[ids]
        rows = rows.loc[in_scope[ids]] if ids else rows
        if rows.empty:
            failures = _empty_failures()
        else:
            failures = rows.assign(rule=rule.name)
            failures["message"] = [_message(rule.name, r) for _, r in rows.iterrows()]
            keep = [c for c in FAILURE_COLUMNS if c in failures] + [
                c for c in ("open", "high", "low", "close", "volume", "amount", "adj_factor",
                            "adj_return", "open_return", "range_ratio", "previous_date",
                            "missing_sessions_before", "stale_run", "vwap")
                if c in failures
            ]
            failures = failures.loc[:, keep].sort_values(["date", "symbol"]).reset_index(drop=True)
        accepted = _empty_failures()
        if not failures.empty and accepted_keys:
            keys = [
                (s, pd.Timestamp(d).strftime("%Y-%m-%d"), rule.name)
                for s, d in zip(failures["symbol"], failures["date"], strict=True)
            ]
            mask = np.array([k in accepted_keys for k in keys])
            accepted = failures.loc[mask].assign(
                reason=[accepted_keys[k] for k in keys if k in accepted_keys]
            )
            failures = failures.loc[~mask].reset_index(drop=True)
        outcomes.append(RuleOutcome(rule, failures, accepted.reset_index(drop=True),
                                    int(in_scope.sum())))
    return outcomes


def _empty_failures() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in FAILURE_COLUMNS})


def failed(outcomes: Sequence[RuleOutcome]) -> list[RuleOutcome]:
    """The failed blocking rules (a failed non-blocking rule is a warning)."""
    return [o for o in outcomes if not o.passed and o.rule.blocking]


def warned(outcomes: Sequence[RuleOutcome]) -> list[RuleOutcome]:
    """The failed non-blocking rules."""
    return [o for o in outcomes if not o.passed and not o.rule.blocking]

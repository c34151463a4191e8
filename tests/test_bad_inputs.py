"""Issue 13, "every bad file a named check": inputs that used to crash or pass silently, each made
here in tmp_path from the real files of shared/data, fail a named check whose message names the
file, symbol, date and rule, never a traceback.

Cases 1, 3, 5 and 8 also run the Dagster path on the four-fund copy of cn_etf_morphkyan_raw of
tests/test_quality_gates.py (its fixtures and its assertion ``assert_blocked``): the blocking
check failed, nothing downstream ran and the last good stored output is unchanged.
"""

# ruff: noqa: F811  (the fixtures pristine and baseline of test_quality_gates are parameters)
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from conftest import copy_dataset
from test_quality_gates import (  # noqa: F401  (pristine, baseline: fixtures)
    END,
    START,
    Baseline,
    Corruption,
    _settings,
    assert_blocked,
    baseline,
    edit_factors,
    edit_prices,
    on,
    pristine,
    read_prices,
)

from orchestration.definitions import build_definitions
from orchestration.runs import run_range
from orchestration.settings import DATASET_CONFIG_DIR
from resources.market_data import FileMarketData
from rotation import quality
from rotation.market import load_market

AKSHARE = "cn_etf_akshare_qfq_2020"
MORPH = "cn_etf_morphkyan_raw"


# -- helpers ------------------------------------------------------------------------------------
def _akshare(shared: Path, root: Path, symbols: tuple[str, ...]) -> Path:
    """A copy of a few funds of cn_etf_akshare_qfq_2020 with the shipped dataset config."""
    return copy_dataset(shared, AKSHARE, root, symbols)


def _copy(pristine: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    return root


def _edit_parquet(root: Path, symbol: str, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    path = root / "parquet" / f"{symbol}.parquet"
    edit(pd.read_parquet(path)).to_parquet(path, index=False)


def _accept(root: Path, symbol: str, day: str, rule: str) -> None:
    """A reviewed exception in the copy's dataset config."""
    spec = yaml.safe_load((root / "dataset.yaml").read_text(encoding="utf-8"))
    spec.setdefault("accepted_anomalies", []).append(
        {"symbol": symbol, "date": day, "rule": rule, "reason": "reviewed in this test"})
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), "utf-8")


def _market(root: Path) -> FileMarketData:
    return FileMarketData(root=str(root), dataset_config=str(root / "dataset.yaml"))


def _outcomes(root: Path, start: str, end: str) -> dict[str, quality.RuleOutcome]:
    """The quality suite over ``start..end`` as ``raw_bars`` runs it (with its lookback)."""
    market = _market(root)
    cal = market.calendar
    lookback = quality.QualityConfig().lookback_sessions
    loaded = market.load(cal.offset(start, -lookback), pd.Timestamp(end))
    ctx = quality.QualityContext(calendar=cal, instruments=market.instruments(),
                                 accepted=market.accepted_anomalies())
    outcomes = quality.evaluate(loaded.bars, loaded.issues, ctx, evaluate_from=start,
                                expected_sessions=list(cal.sessions(start, end)),
                                source_label=market.label)
    return {o.rule.name: o for o in outcomes}


def _named(outcome: quality.RuleOutcome, *parts: str) -> str:
    """The failure message of ``outcome`` that names every one of ``parts``."""
    assert not outcome.passed, f"{outcome.rule.name} passed"
    messages = list(outcome.failures["message"])
    hits = [m for m in messages if all(p in m for p in parts)]
    assert hits, f"{outcome.rule.name}: no failure names {parts}: {messages}"
    return hits[0]


def _failed(outcomes: dict[str, quality.RuleOutcome]) -> set[str]:
    return {o.rule.name for o in quality.failed(list(outcomes.values()))}


def _run(root: Path, baseline: Baseline, tmp_path: Path, instance: dg.DagsterInstance,
         start: str = START, end: str = END) -> tuple[dg.ExecuteInProcessResult, Path]:
    """``market_data_job`` over ``start..end`` on the copy, over a copy of the good storage."""
    storage = tmp_path / "storage"
    shutil.copytree(baseline.storage, storage)
    defs = build_definitions(_settings(root, storage, tmp_path / "home"))
    return run_range(defs, instance, start, end), storage


def _failure_message(result: dg.ExecuteInProcessResult, rule: str) -> str:
    evaluation = next(e.asset_check_evaluation_data for e in result.all_events
                      if e.event_type_value == "ASSET_CHECK_EVALUATION"
                      and e.asset_check_evaluation_data.check_name == rule)
    return str(evaluation.metadata["first_failure"].value)


# -- 1. timezone-aware dates --------------------------------------------------------------------
def _zoned(frame: pd.DataFrame) -> pd.DataFrame:
    frame["trade_date"] = frame["trade_date"] + "T00:00:00+08:00"
    return frame


def test_1_timezone_aware_dates_fail_source_dates_and_block(
    pristine: Path, baseline: Baseline, pg_instance: dg.DagsterInstance, tmp_path: Path,
) -> None:
    """Every date of a CSV carries +08:00: one named issue for the file (never converted or
    stripped), every partition blocked, the last good files kept."""
    root = _copy(pristine, tmp_path)
    first_day = read_prices(root, "510300")["trade_date"].iloc[0]
    edit_prices("510300", _zoned)(root)
    result, storage = _run(root, baseline, tmp_path, pg_instance)
    corruption = Corruption("source_dates", lambda _: None, "prices/510300.csv.gz", "510300",
                            None)
    assert_blocked(result, corruption, storage, baseline, pg_instance, "timezone_csv")
    message = _failure_message(result, "source_dates")
    assert f"'{first_day}T00:00:00+08:00'" in message and "carries a timezone on all" in message


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "UTC"])
def test_1_timezone_aware_parquet_dates_are_a_named_issue(shared_data: Path, tmp_path: Path,
                                                         zone: str) -> None:
    """A tz-aware datetime column in Parquet used to crash in conform_bars."""
    root = _akshare(shared_data, tmp_path, ("510300", "510500"))

    def _localise(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(date=frame["date"].dt.tz_localize(zone))

    _edit_parquet(root, "510300", _localise)
    outcomes = _outcomes(root, "2024-03-04", "2024-03-08")
    assert _failed(outcomes) == {"source_dates"}
    _named(outcomes["source_dates"], "parquet/510300.parquet", "510300", "2020-01-02")
    bars = _market(root).load("2024-03-04", "2024-03-08").bars
    assert set(bars["symbol"]) == {"510500"}  # no guessed dates for 510300


@pytest.mark.parametrize("text", ["2022-01-13T00:00:00+08", "2022-01-13 00:00:00 GMT",
                                  "2022-01-13 15:00 CST", "2022-01-13T07:00:00Z"])
def test_1_a_zone_in_any_spelling_is_a_named_issue(pristine: Path, tmp_path: Path,
                                                   text: str) -> None:
    root = _copy(pristine, tmp_path)
    edit_prices("510300", lambda f: f.assign(
        trade_date=f["trade_date"].where(f["trade_date"] != "2022-01-13", text)))(root)
    outcomes = _outcomes(root, "2022-01-10", "2022-01-14")
    assert _failed(outcomes) == {"source_dates"}
    _named(outcomes["source_dates"], "prices/510300.csv.gz", "510300", repr(text))


# -- 2. a GBK symbols file ----------------------------------------------------------------------
def test_2_gbk_symbols_file_reads_its_names_and_bad_bytes_fail_a_named_check(
    shared_data: Path, tmp_path: Path,
) -> None:
    symbols = ("510300", "159915", "518880")
    root = _akshare(shared_data, tmp_path, symbols)
    table = pd.read_csv(root / "symbols.csv", dtype=str)
    text = table.to_csv(index=False)
    (root / "symbols.csv").write_bytes(text.encode("gbk"))
    instruments = _market(root).instruments()
    assert {i.symbol: i.name for i in instruments} == dict(zip(table["code"], table["name"],
                                                              strict=True))
    assert "黄金" in {i.symbol: i.name for i in instruments}["518880"]
    assert _market(root).load("2024-03-04", "2024-03-08").issues.empty

    # One undecodable byte in 159915's line: codes still read, the file fails its check.
    line = text.splitlines().index(next(r for r in text.splitlines() if r.startswith("159915")))
    rows = text.encode("gbk").split(b"\n")
    rows[line] = rows[line] + b"\xff"
    (root / "symbols.csv").write_bytes(b"\n".join(rows))
    assert {i.symbol for i in _market(root).instruments()} == set(symbols)
    outcomes = _outcomes(root, "2024-03-04", "2024-03-08")
    assert _failed(outcomes) == {"symbols_file_encoding"}
    message = _named(outcomes["symbols_file_encoding"], f"{AKSHARE}/symbols.csv",
                     f"line {line + 1} (159915)")
    assert "every session" in message  # a universe file has no date: it blocks every partition
    assert outcomes["symbols_file_encoding"].failures["date"].isna().all()


# -- 3. an unparsable date in a factor file -----------------------------------------------------
def test_3_unparsable_factor_date_fails_factor_dates_valid_and_blocks(
    pristine: Path, baseline: Baseline, pg_instance: dg.DagsterInstance, tmp_path: Path,
) -> None:
    """513100's factor row of its 1:5 split day, 2022-01-14, with a date that does not parse."""
    root = _copy(pristine, tmp_path)
    edit_factors("513100", "2022-01-14", trade_date="2022-01-1x")(root)
    result, storage = _run(root, baseline, tmp_path, pg_instance)
    corruption = Corruption("factor_dates_valid", lambda _: None,
                            "hfq_factor/513100_hfq_factor.csv.gz", "513100", None)
    assert_blocked(result, corruption, storage, baseline, pg_instance, "factor_date")
    assert "unparsable date '2022-01-1x'" in _failure_message(result, "factor_dates_valid")


# -- 4. a split recorded on a non-session -------------------------------------------------------
def _split_on(root: Path, symbol: str, day: str, ratio: str | None = None,
              keep_factors: bool = False) -> None:
    """The split table's event of ``symbol`` recorded on ``day``; its factor file removed
    (unless ``keep_factors``), so the table is what adjusts it."""
    path = root / "meta" / "platform_splits.csv"
    table = pd.read_csv(path, dtype=str)
    rows = table["code"] == symbol
    table.loc[rows, "split_date"] = day
    if ratio is not None:
        table.loc[rows, "split_ratio"] = ratio
    table.to_csv(path, index=False)
    if not keep_factors:
        (root / "hfq_factor" / f"{symbol}_hfq_factor.csv.gz").unlink()


@pytest.mark.parametrize(("record", "ex_date"), [
    ("2022-01-13", "2022-01-14"),   # a session (the table's own date): the next session
    ("2022-01-15", "2022-01-17"),   # a Saturday: Monday, not Tuesday
    ("2022-01-31", "2022-02-07"),   # Spring Festival holiday: the first session after it
])
def test_4_split_applies_from_the_first_session_after_its_record_date(
    pristine: Path, tmp_path: Path, record: str, ex_date: str,
) -> None:
    root = _copy(pristine, tmp_path)
    _split_on(root, "513100", record)
    loaded = _market(root).load("2021-12-01", "2022-02-28")
    factor = loaded.bars.loc[loaded.bars["symbol"] == "513100"].set_index("date")["adj_factor"]
    assert (factor[factor.index < ex_date] == 1.0).all()
    assert (factor[factor.index >= ex_date] == 5.0).all()
    warned = loaded.issues.loc[loaded.issues["rule"] == "split_record_date_is_session"]
    if record == "2022-01-13":
        assert warned.empty
        return
    # Reported, dated on the ex-date, naming the table, fund and record date: a warning.
    assert list(warned["date"]) == [pd.Timestamp(ex_date)]
    message = warned["message"].iloc[0]
    assert all(p in message for p in (f"{MORPH}/meta/platform_splits.csv", "513100", record,
                                      f"applied from {ex_date}"))
    outcomes = _outcomes(root, ex_date, ex_date)
    rule = outcomes["split_record_date_is_session"]
    assert not rule.passed and not rule.rule.blocking
    assert rule in quality.warned(list(outcomes.values()))
    assert "split_record_date_is_session" not in _failed(outcomes)


def test_4_a_non_session_record_date_warns_without_blocking(
    pristine: Path, baseline: Baseline, pg_instance: dg.DagsterInstance, tmp_path: Path,
) -> None:
    """The table says Saturday 2022-01-15 (513100's factor file carries the split, so prices
    are right): a WARN check naming the table, the run stores everything downstream."""
    root = _copy(pristine, tmp_path)
    _split_on(root, "513100", "2022-01-15", keep_factors=True)
    result, _ = _run(root, baseline, tmp_path, pg_instance)
    assert result.success
    evaluations = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
                   for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    failed = {name for name, evaluation in evaluations.items() if not evaluation.passed}
    assert failed == {"split_record_date_is_session"}
    assert evaluations["split_record_date_is_session"].severity == dg.AssetCheckSeverity.WARN
    message = _failure_message(result, "split_record_date_is_session")
    assert all(p in message for p in ("meta/platform_splits.csv", "513100", "2022-01-15"))
    succeeded = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert {"raw_bars", "adjusted_bars", "cross_sections"} <= succeeded


def test_4_an_unreadable_split_row_is_a_named_check_not_a_crash(pristine: Path,
                                                                tmp_path: Path) -> None:
    root = _copy(pristine, tmp_path)
    _split_on(root, "513100", "2022-01-13", ratio="1:5")
    outcomes = _outcomes(root, "2022-01-10", "2022-01-14")
    assert "split_events_valid" in _failed(outcomes)
    _named(outcomes["split_events_valid"], f"{MORPH}/meta/platform_splits.csv", "513100",
           "'2022-01-13'", "'1:5'")


# -- 5. NaN / non-numeric adjustment factors ----------------------------------------------------
def test_5_non_numeric_factor_fails_factor_values_valid_and_blocks(
    pristine: Path, baseline: Baseline, pg_instance: dg.DagsterInstance, tmp_path: Path,
) -> None:
    """The split day's factor unreadable: the check names the factor file, not only the price
    jump the missing factor would otherwise show in the price file."""
    root = _copy(pristine, tmp_path)
    edit_factors("513100", "2022-01-14", hfq_factor="five")(root)
    result, storage = _run(root, baseline, tmp_path, pg_instance)
    corruption = Corruption("factor_values_valid", lambda _: None,
                            "hfq_factor/513100_hfq_factor.csv.gz", "513100", "2022-01-14")
    assert_blocked(result, corruption, storage, baseline, pg_instance, "factor_value")


@pytest.mark.parametrize(("value", "rule"), [
    ("", "factor_values_valid"), ("nan", "factor_values_valid"), ("inf", "factor_values_valid"),
    ("0", "factor_values_valid"), ("-5.0", "factor_values_valid"),
    ("2022-01-12", "factor_dates_valid"),  # a repeated date (in the date column)
])
def test_5_every_bad_factor_row_is_named(pristine: Path, tmp_path: Path, value: str,
                                         rule: str) -> None:
    root = _copy(pristine, tmp_path)
    column = "trade_date" if rule == "factor_dates_valid" else "hfq_factor"
    edit_factors("513100", "2022-01-14", **{column: value})(root)
    outcomes = _outcomes(root, "2022-01-10", "2022-01-18")
    assert rule in _failed(outcomes)
    _named(outcomes[rule], "hfq_factor/513100_hfq_factor.csv.gz", "513100",
           "2022-01-12" if rule == "factor_dates_valid" else "2022-01-14")


# -- 6. a row whose symbol could not be read ----------------------------------------------------
@pytest.mark.parametrize(("code", "shown"), [
    ("", "holds nan"), ("nan", "holds nan"),  # blank and "nan" cells read as missing
    ("51OO5O.SH", "holds '51OO5O.SH'"),        # letters O, not zeros
])
def test_6_a_row_without_a_readable_symbol_fails_known_symbols(pristine: Path, tmp_path: Path,
                                                               code: str, shown: str) -> None:
    root = _copy(pristine, tmp_path)
    edit_prices("510050", lambda f: f.assign(
        code=f["code"].where(f["trade_date"] != "2022-01-12", code)))(root)
    outcomes = _outcomes(root, "2022-01-10", "2022-01-14")
    assert {"known_symbols", "source_symbols"} <= _failed(outcomes)
    message = _named(outcomes["known_symbols"], "prices/510050.csv.gz", "2022-01-12")
    assert "no readable symbol" in message
    _named(outcomes["source_symbols"], "prices/510050.csv.gz", "2022-01-12", shown)


# -- 7. volume in units (shares) where the dataset says lots ------------------------------------
@pytest.mark.parametrize("dataset", [AKSHARE, MORPH])
def test_7_volume_units_is_quiet_on_the_clean_real_data(shared_data: Path, dataset: str) -> None:
    spec = DATASET_CONFIG_DIR / f"{dataset}.yaml"
    issues = FileMarketData(root=str(shared_data / dataset), dataset_config=str(spec)
                            ).load("2005-01-01", "2026-12-31").issues
    assert "volume_units" not in set(issues["rule"])


def _times_100_from(day: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def _edit(frame: pd.DataFrame) -> pd.DataFrame:
        later = frame["date"] >= pd.Timestamp(day)
        frame.loc[later, "volume"] = frame.loc[later, "volume"] * 100
        return frame

    return _edit


def test_7_a_file_that_switches_to_shares_fails_from_its_first_day_in_shares(
    shared_data: Path, tmp_path: Path,
) -> None:
    """No amount column (cn_etf_akshare_qfq_2020): from 2024-03-04 on the vendor counts units;
    each such day fails on its own date, the days before pass."""
    root = _akshare(shared_data, tmp_path, ("510300", "510500", "159915"))
    _edit_parquet(root, "510300", _times_100_from("2024-03-04"))
    before = _outcomes(root, "2024-02-26", "2024-03-01")
    assert "volume_units" not in _failed(before)
    for day in ("2024-03-04", "2024-03-11", "2024-06-03"):
        outcomes = _outcomes(root, day, day)
        assert _failed(outcomes) == {"volume_units"}, day
        message = _named(outcomes["volume_units"], "parquet/510300.parquet", "510300", day)
        assert "counted in units (shares)" in message and "volume_multiplier 100" in message


def test_7_a_file_all_in_shares_fails_for_every_partition(shared_data: Path,
                                                          tmp_path: Path) -> None:
    root = _akshare(shared_data, tmp_path, ("510300", "510500"))
    _edit_parquet(root, "510300", _times_100_from("2020-01-01"))
    outcomes = _outcomes(root, "2024-03-04", "2024-03-08")
    assert _failed(outcomes) == {"volume_units"}
    _named(outcomes["volume_units"], "parquet/510300.parquet", "510300",
           "2020-01-02..2026-05-07", "the file counts units (shares)")
    assert outcomes["volume_units"].failures["date"].isna().all()


# -- 8. a bad bar on a fund's first day of a daily run -----------------------------------------
def test_8_bad_bar_back_from_a_long_suspension_fails_on_its_own_day(
    pristine: Path, baseline: Baseline, pg_instance: dg.DagsterInstance, tmp_path: Path,
) -> None:
    """510300 suspended 2022-01-04..2022-01-21 (14 sessions, more than the 10-session lookback;
    the gap itself is a reviewed anomaly), back on 2022-01-24 with every price 30 % too high.
    The daily run of 2022-01-24 used to find no previous bar, pass it, and blame the next day;
    it now checks it against the close of 2021-12-31."""
    root = _copy(pristine, tmp_path)

    def _suspend_and_scale(frame: pd.DataFrame) -> pd.DataFrame:
        gone = (frame["trade_date"] >= "2022-01-04") & (frame["trade_date"] <= "2022-01-21")
        frame = frame.loc[~gone].copy()
        rows = on(frame, "2022-01-24")
        for column in ("open", "high", "low", "close", "amount"):
            frame.loc[rows, column] = f"{float(frame.loc[rows, column].iloc[0]) * 1.3:.3f}"
        return frame

    edit_prices("510300", _suspend_and_scale)(root)
    _accept(root, "510300", "2022-01-24", "no_long_gaps")
    result, storage = _run(root, baseline, tmp_path, pg_instance, "2022-01-24", "2022-01-24")
    corruption = Corruption("returns_within_price_limit", lambda _: None,
                            "prices/510300.csv.gz", "510300", "2022-01-24")
    assert_blocked(result, corruption, storage, baseline, pg_instance, "suspension",
                   "2022-01-24", "2022-01-24")
    assert "(previous close 2021-12-31)" in _failure_message(result, "returns_within_price_limit")


def test_8_bad_first_bar_of_a_new_fund_fails_on_its_own_day(
    pristine: Path, baseline: Baseline, pg_instance: dg.DagsterInstance, tmp_path: Path,
) -> None:
    """159920's history cut to start on 2022-01-10 (a listing), its first close (and high) 25 %
    too high: no previous close exists, but no session of a fund with a 10 % band can range
    that far (high / low > 1.1 / 0.9). It used to be stored and blamed on 2022-01-11."""
    root = _copy(pristine, tmp_path)

    def _list_with_a_bad_close(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.loc[frame["trade_date"] >= "2022-01-10"].copy()
        rows = on(frame, "2022-01-10")
        bad = f"{float(frame.loc[rows, 'close'].iloc[0]) * 1.25:.3f}"
        frame.loc[rows, ["close", "high"]] = bad
        return frame

    edit_prices("159920", _list_with_a_bad_close)(root)
    result, storage = _run(root, baseline, tmp_path, pg_instance, "2022-01-10", "2022-01-10")
    corruption = Corruption("range_within_price_limit", lambda _: None,
                            "prices/159920.csv.gz", "159920", "2022-01-10")
    assert_blocked(result, corruption, storage, baseline, pg_instance, "listing",
                   "2022-01-10", "2022-01-10")


# -- 9. a code with the wrong exchange suffix ---------------------------------------------------
def test_9_expected_exchange_of_a_code() -> None:
    scheme = load_market("cn_funds").symbol_scheme
    assert scheme.expected_exchange("510050") == "SH"
    assert scheme.expected_exchange("159915") == "SZ"
    assert scheme.suffix_problem("510050.SH") is None
    assert "trades on SH, not SZ" in str(scheme.suffix_problem("510050.SZ"))


def test_9_wrong_suffix_in_a_code_column_fails_symbol_exchange(pristine: Path,
                                                                tmp_path: Path) -> None:
    root = _copy(pristine, tmp_path)
    edit_prices("510050", lambda f: f.assign(code=f["code"].str.replace(".SH", ".SZ")))(root)
    first_day = read_prices(root, "510050")["trade_date"].iloc[0]
    outcomes = _outcomes(root, "2022-01-10", "2022-01-14")
    assert _failed(outcomes) == {"symbol_exchange"}
    _named(outcomes["symbol_exchange"], "prices/510050.csv.gz", "510050.SZ", first_day,
           "trades on SH, not SZ")


def test_9_wrong_exchange_in_the_symbols_file_fails_symbol_exchange(pristine: Path,
                                                                     tmp_path: Path) -> None:
    root = _copy(pristine, tmp_path)
    table = pd.read_csv(root / "symbols.csv", dtype=str)
    table.loc[table["code"] == "510300", "exchange"] = "SZ"
    table.to_csv(root / "symbols.csv", index=False)
    line = int(table.index[table["code"] == "510300"][0]) + 2
    outcomes = _outcomes(root, "2022-01-10", "2022-01-14")
    assert _failed(outcomes) == {"symbol_exchange"}
    _named(outcomes["symbol_exchange"], f"{MORPH}/symbols.csv", f"line {line}", "510300.SZ",
           "trades on SH, not SZ")


def test_9_wrong_suffix_in_a_file_name_fails_symbol_exchange(pristine: Path,
                                                              tmp_path: Path) -> None:
    root = _copy(pristine, tmp_path)
    prices = root / "prices"
    (prices / "510300.csv.gz").rename(prices / "510300.SZ.csv.gz")
    outcomes = _outcomes(root, "2022-01-10", "2022-01-14")
    assert _failed(outcomes) == {"symbol_exchange"}
    _named(outcomes["symbol_exchange"], "prices/510300.SZ.csv.gz", "510300",
           "trades on SH, not SZ")


# -- 10. open and close swapped -----------------------------------------------------------------
def _open_up_15_percent(day: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The open 15 % above the previous close (as when open and close are swapped on a day
    the fund closed far up), the close as it was."""
    def _edit(frame: pd.DataFrame) -> pd.DataFrame:
        rows = frame.index[frame["date"] == pd.Timestamp(day)]
        before = frame.index[frame["date"] < pd.Timestamp(day)][-1]
        frame.loc[rows, "open"] = round(float(frame.at[before, "close"]) * 1.15, 3)
        frame.loc[rows, "high"] = frame.loc[rows, ["open", "high"]].max(axis=1)
        return frame

    return _edit


def test_10_open_beyond_the_funds_own_limit_fails_open_within_price_limit(
    shared_data: Path, tmp_path: Path,
) -> None:
    """+15 % at the open is beyond 510300's 10 % band but inside 159915's 20 % (ChiNext)."""
    day = "2024-03-06"
    root = _akshare(shared_data, tmp_path, ("510300", "159915", "510500"))
    for symbol in ("510300", "159915"):
        _edit_parquet(root, symbol, _open_up_15_percent(day))
    outcomes = _outcomes(root, day, day)
    assert _failed(outcomes) == {"open_within_price_limit"}
    rule = outcomes["open_within_price_limit"]
    assert list(rule.failures["symbol"]) == ["510300"]
    message = _named(rule, "parquet/510300.parquet", "510300", day, "10% price limit")
    assert "+15.0" in message and "open and close swapped" in message

    # A reviewed exception is reported as accepted, not failing.
    _accept(root, "510300", day, "open_within_price_limit")
    accepted = _outcomes(root, day, day)["open_within_price_limit"]
    assert accepted.passed and list(accepted.accepted["symbol"]) == ["510300"]


# -- the clean copies still pass ------------------------------------------------------------------
def test_the_clean_copies_pass_every_rule(pristine: Path, shared_data: Path,
                                          tmp_path: Path) -> None:
    assert _failed(_outcomes(pristine, START, END)) == set()
    root = _akshare(shared_data, tmp_path, ("510300", "159915", "510500"))
    assert _failed(_outcomes(root, "2024-01-02", "2024-03-29")) == set()


"""Corrupted inputs, made here from the real files of cn_etf_morphkyan_raw: each fails its named
blocking check with a message naming the file, symbol, date and rule, blocks everything
downstream of the partitions it fails, and leaves their last good files untouched (a range
stores its other partitions: tests/test_partial_backfill.py)."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from conftest import session_digests

from orchestration.definitions import build_definitions
from orchestration.runs import run_range
from orchestration.settings import DATASET_CONFIG_DIR, load_settings
from resources.parquet_io import PartitionedParquetIOManager
from rotation.calendar import get_calendar

DATASET = "cn_etf_morphkyan_raw"
# 510300 (schema A, noisy hfq factor), 513100 (split 2022-01-14, cross-border),
# 159920 (no factor file), 510050 (schema B: code column with exchange suffix).
SYMBOLS = ("510300", "513100", "159920", "510050")
START, END = "2021-12-01", "2022-02-28"
DOWNSTREAM = {"adjusted_bars", "cross_sections"}


def _price_file(root: Path, symbol: str) -> Path:
    return root / "prices" / f"{symbol}.csv.gz"


def read_prices(root: Path, symbol: str) -> pd.DataFrame:
    return pd.read_csv(_price_file(root, symbol), dtype=str, keep_default_na=False)


def write_prices(root: Path, symbol: str, frame: pd.DataFrame) -> None:
    with gzip.open(_price_file(root, symbol), "wt", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False)


def edit_prices(symbol: str, edit: Callable[[pd.DataFrame], pd.DataFrame]
                ) -> Callable[[Path], None]:
    def _apply(root: Path) -> None:
        write_prices(root, symbol, edit(read_prices(root, symbol)))

    return _apply


def on(frame: pd.DataFrame, day: str) -> pd.Index:
    rows = frame.index[frame["trade_date"] == day]
    assert len(rows) == 1, f"expected one row on {day}"
    return rows


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A small copy of the real dataset (four funds) with a dataset config of its own."""
    src = shared_data / DATASET
    root = tmp_path_factory.mktemp("pristine")
    (root / "prices").mkdir()
    (root / "hfq_factor").mkdir()
    (root / "meta").mkdir()
    for symbol in SYMBOLS:
        shutil.copy(src / "prices" / f"{symbol}.csv.gz", root / "prices")
        factor = src / "hfq_factor" / f"{symbol}_hfq_factor.csv.gz"
        if factor.exists():
            shutil.copy(factor, root / "hfq_factor")
    shutil.copy(src / "meta" / "platform_splits.csv", root / "meta")
    symbols = pd.read_csv(src / "symbols.csv", dtype=str)
    symbols.loc[symbols["code"].isin(SYMBOLS)].to_csv(root / "symbols.csv", index=False)
    spec = yaml.safe_load((DATASET_CONFIG_DIR / f"{DATASET}.yaml").read_text(encoding="utf-8"))
    spec.update(history_start=START, history_end=END)
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), "utf-8")
    return root


@dataclass
class Baseline:
    storage: Path
    hashes: dict[str, str]


def _settings(root: Path, storage: Path, home: Path):
    return load_settings(
        home=home,
        storage_root=storage,
        market_data={"source": "files", "dataset": str(root / "dataset.yaml"),
                     "files_root": str(root)},
        cross_section={"min_history": 20},
    )


def _hashes(storage: Path) -> dict[str, str]:
    return session_digests(storage, ("raw_bars", *sorted(DOWNSTREAM)))


@pytest.fixture(scope="module")
def baseline(pristine: Path, pg_instance: dg.DagsterInstance,
             tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    """A good single-run materialisation of the whole range: the last good output."""
    storage = tmp_path_factory.mktemp("good_storage")
    settings = _settings(pristine, storage, tmp_path_factory.mktemp("home"))
    result = run_range(build_definitions(settings), pg_instance, START, END)
    assert result.success
    hashes = _hashes(storage)
    # Every weekday partition stored; the sessions hold bars, the weekday holidays none.
    assert sum(1 for k in hashes if k.startswith("raw_bars/")) == len(pd.bdate_range(START, END))
    sessions = get_calendar("XSHG").sessions(START, END)
    raw = dg.AssetKey("raw_bars")
    io = PartitionedParquetIOManager(base_path=str(storage))
    held = set(io.load_partitions(raw, io.stored_partitions(raw))["date"].dt.strftime("%Y-%m-%d"))
    assert held == {d.strftime("%Y-%m-%d") for d in sessions}
    return Baseline(storage, hashes)


@dataclass(frozen=True)
class Corruption:
    rule: str
    mutate: Callable[[Path], None]
    file: str
    symbol: str
    date: str | None


def _set(day: str, **values: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def _edit(frame: pd.DataFrame) -> pd.DataFrame:
        rows = on(frame, day)
        for column, value in values.items():
            frame.loc[rows, column] = value
        return frame

    return _edit


def _duplicate(day: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def _edit(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([frame, frame.loc[on(frame, day)]]).sort_values("trade_date")

    return _edit


def _non_session(frame: pd.DataFrame) -> pd.DataFrame:
    # 2022-01-03 is a Monday but an exchange holiday (New Year) in Shanghai.
    extra = frame.loc[on(frame, "2021-12-31")].assign(trade_date="2022-01-03")
    return pd.concat([frame, extra]).sort_values("trade_date")


def _scaled(frame: pd.DataFrame) -> pd.DataFrame:
    later = frame["trade_date"] >= "2022-01-10"
    for column in ("open", "high", "low", "close"):
        frame.loc[later, column] = (frame.loc[later, column].astype(float) * 100).round(3)
    return frame


def _stale(frame: pd.DataFrame) -> pd.DataFrame:
    window = (frame["trade_date"] >= "2022-01-04") & (frame["trade_date"] <= "2022-01-14")
    for column in ("open", "high", "low", "close"):
        frame.loc[window, column] = "4.900"
    frame.loc[window, "amount"] = (frame.loc[window, "volume"].astype(float) * 490).astype(str)
    return frame


def _gap(frame: pd.DataFrame) -> pd.DataFrame:
    window = (frame["trade_date"] >= "2022-01-04") & (frame["trade_date"] <= "2022-01-14")
    return frame.loc[~window]


def _drop_column(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["volume"])


def _empty_file(root: Path) -> None:
    _price_file(root, "159920").write_bytes(gzip.compress(b""))


def _unknown_symbol(root: Path) -> None:
    shutil.copy(_price_file(root, "510300"), _price_file(root, "600000"))


def _unexplained_split(root: Path) -> None:
    (root / "hfq_factor" / "513100_hfq_factor.csv.gz").unlink()
    splits = pd.read_csv(root / "meta" / "platform_splits.csv", dtype=str)
    splits.loc[splits["code"] != "513100"].to_csv(root / "meta" / "platform_splits.csv",
                                                  index=False)


def _factor_file(root: Path, symbol: str) -> Path:
    return root / "hfq_factor" / f"{symbol}_hfq_factor.csv.gz"


def edit_factors(symbol: str, day: str, **values: str) -> Callable[[Path], None]:
    def _apply(root: Path) -> None:
        path = _factor_file(root, symbol)
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        rows = frame.index[frame["trade_date"] == day]
        assert len(rows) == 1
        for column, value in values.items():
            frame.loc[rows, column] = value
        with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
            frame.to_csv(fh, index=False)

    return _apply


def _timezone(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[on(frame, "2022-01-13"), "trade_date"] = "2022-01-13T00:00:00+08:00"
    return frame


def _wrong_exchange(frame: pd.DataFrame) -> pd.DataFrame:
    frame["code"] = "510050.SZ"  # 5xxxxx trades in Shanghai
    return frame


def _shares_not_lots(frame: pd.DataFrame) -> pd.DataFrame:
    volume = pd.to_numeric(frame["volume"])
    frame["volume"] = (volume * 100).map("{:.1f}".format)
    frame["amount"] = ""  # no amount column to catch the scale
    return frame


def _open_swapped(frame: pd.DataFrame) -> pd.DataFrame:
    rows = on(frame, "2022-01-10")
    before = frame.index[frame["trade_date"] < "2022-01-10"][-1]
    jumped = f"{float(frame.loc[before, 'close']) * 1.12:.3f}"  # 12 % above the last close
    frame.loc[rows, "open"] = jumped
    frame.loc[rows, "high"] = jumped
    return frame


def _unreadable_code(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[on(frame, "2022-01-12"), "code"] = "51OO5O.SH"  # letters O, not zeros
    return frame


CORRUPTIONS = {
    "timezone_aware_date": Corruption("source_dates", edit_prices("510300", _timezone),
                                      "prices/510300.csv.gz", "510300", None),
    "factor_unparsable_date": Corruption(
        "factor_dates_valid", edit_factors("510300", "2022-01-11", trade_date="2022-01-3x"),
        "hfq_factor/510300_hfq_factor.csv.gz", "510300", None),
    "factor_not_a_number": Corruption(
        "factor_values_valid", edit_factors("510300", "2022-01-10", hfq_factor="nan"),
        "hfq_factor/510300_hfq_factor.csv.gz", "510300", "2022-01-10"),
    "factor_not_positive": Corruption(
        "factor_values_valid", edit_factors("510300", "2022-01-12", hfq_factor="-1.09"),
        "hfq_factor/510300_hfq_factor.csv.gz", "510300", "2022-01-12"),
    "wrong_exchange_suffix": Corruption("symbol_exchange", edit_prices("510050",
                                                                       _wrong_exchange),
                                        "prices/510050.csv.gz", "510050.SZ", None),
    "unreadable_symbol": Corruption("source_symbols", edit_prices("510050", _unreadable_code),
                                    "prices/510050.csv.gz", "51OO5O.SH", "2022-01-12"),
    "volume_in_shares_not_lots": Corruption(
        "volume_units", edit_prices("510050", _shares_not_lots), "prices/510050.csv.gz",
        "510050", None),
    "open_close_swapped": Corruption(
        "open_within_price_limit", edit_prices("510300", _open_swapped),
        "prices/510300.csv.gz", "510300", "2022-01-10"),
    "nan_price": Corruption("prices_present", edit_prices("510300", _set("2022-01-05", close="")),
                            "prices/510300.csv.gz", "510300", "2022-01-05"),
    "negative_price": Corruption(
        "prices_positive", edit_prices("510300", _set("2022-01-05", low="-4.861")),
        "prices/510300.csv.gz", "510300", "2022-01-05"),
    "high_below_low": Corruption(
        "ohlc_consistent", edit_prices("510300", _set("2022-01-06", high="4.700", low="4.900")),
        "prices/510300.csv.gz", "510300", "2022-01-06"),
    "duplicate_bar": Corruption("unique_date_symbol", edit_prices("510050",
                                                                  _duplicate("2022-01-07")),
                                "prices/510050.csv.gz", "510050", "2022-01-07"),
    "non_session_date": Corruption("dates_are_sessions", edit_prices("510300", _non_session),
                                   "prices/510300.csv.gz", "510300", "2022-01-03"),
    "missing_column": Corruption("source_columns", edit_prices("510300", _drop_column),
                                 "prices/510300.csv.gz", "510300", None),
    "string_in_numeric": Corruption(
        "source_values_numeric", edit_prices("510300", _set("2022-01-11", close="4,9x")),
        "prices/510300.csv.gz", "510300", "2022-01-11"),
    "scaled_x100": Corruption("returns_within_price_limit", edit_prices("510300", _scaled),
                              "prices/510300.csv.gz", "510300", "2022-01-10"),
    "unexplained_split_jump": Corruption("returns_within_price_limit", _unexplained_split,
                                         "prices/513100.csv.gz", "513100", "2022-01-14"),
    "stale_closes": Corruption("no_stale_closes", edit_prices("510300", _stale),
                               "prices/510300.csv.gz", "510300", "2022-01-12"),
    "gap_beyond_tolerance": Corruption("no_long_gaps", edit_prices("510300", _gap),
                                       "prices/510300.csv.gz", "510300", "2022-01-17"),
    "empty_file": Corruption("source_not_empty", _empty_file, "prices/159920.csv.gz", "159920",
                             None),
    "unknown_symbol": Corruption("known_symbols", _unknown_symbol, "prices/600000.csv.gz",
                                 "600000", "2021-12-01"),
    "negative_volume": Corruption(
        "volume_non_negative", edit_prices("510050", _set("2022-01-12", volume="-100")),
        "prices/510050.csv.gz", "510050", "2022-01-12"),
    "unparsable_date": Corruption(
        "source_dates", edit_prices("510300", _set("2022-01-13", trade_date="2022-13-45")),
        "prices/510300.csv.gz", "510300", None),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corruption_fails_its_check_blocks_downstream_and_keeps_last_good(
    case: str, pristine: Path, baseline: Baseline, pg_instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    corruption = CORRUPTIONS[case]
    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    corruption.mutate(root)
    storage = tmp_path / "storage"
    shutil.copytree(baseline.storage, storage)

    settings = _settings(root, storage, tmp_path / "home")
    result = run_range(build_definitions(settings), pg_instance, START, END)
    assert_blocked(result, corruption, storage, baseline, pg_instance, case)


def assert_blocked(result: dg.ExecuteInProcessResult, corruption: Corruption, storage: Path,
                   baseline: Baseline, pg_instance: dg.DagsterInstance, case: str,
                   start: str = START, end: str = END) -> None:
    """The run of ``start..end`` failed ``corruption.rule`` naming its file, symbol and date,
    ran nothing downstream, and left the failed partitions' last good files untouched."""
    assert not result.success
    evaluations = {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    failed = {name for name, ev in evaluations.items() if not ev.passed}
    assert corruption.rule in failed, f"{case}: failed checks were {sorted(failed)}"
    evaluation = evaluations[corruption.rule]
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    table = evaluation.metadata["failures"].value
    assert corruption.file in table and corruption.symbol in table
    if corruption.date:
        assert corruption.date in table

    # The step failure names the rule, file, symbol and date as well.
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.event_specific_data.error.message
    assert corruption.rule in message and corruption.file in message
    assert corruption.symbol in message
    if corruption.date:
        assert corruption.date in message

    # The check result is stored on the PostgreSQL-backed instance.
    record = pg_instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("raw_bars"), corruption.rule), limit=1
    )[0]
    assert record.run_id == result.run_id
    assert record.status.value == "FAILED"

    # No downstream step ran. The failed partitions (all of them without a date) were not
    # materialised and keep their last good files; only the others may have been stored.
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert started == {"raw_bars"}
    failed = failure.event_specific_data.user_failure_data.metadata["failed_partitions"].value
    if corruption.date:
        assert corruption.date in failed["raw_bars"]
    else:
        assert len(failed["raw_bars"]) == len(pd.bdate_range(start, end))
    stored = {(e.asset_key.to_user_string(), e.partition) for e in result.all_events
              if e.event_type_value == "ASSET_MATERIALIZATION"}
    assert not stored & {(asset, key) for asset, keys in failed.items() for key in keys}
    hashes = _hashes(storage)
    assert hashes.keys() == baseline.hashes.keys()
    for asset, keys in failed.items():
        for key in keys:
            name = f"{asset}/{key}"
            assert hashes[name] == baseline.hashes[name], name


def test_good_copy_passes_every_check(baseline: Baseline, pg_instance: dg.DagsterInstance
                                      ) -> None:
    records = pg_instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("raw_bars"), "returns_within_price_limit"), limit=50
    )
    assert any(r.status.value == "SUCCEEDED" for r in records)
    # The 513100 split of 2022-01-14 is explained by its factor: adjusted prices continuous.
    io = PartitionedParquetIOManager(base_path=str(baseline.storage))
    adjusted, before, prev = (io.load_partitions(dg.AssetKey("adjusted_bars"), [day])
                              for day in ("2022-01-14", "2022-01-13", "2022-01-12"))
    assert "513100" not in set(before["symbol"])  # suspended on the record date
    a = adjusted.set_index("symbol").loc["513100"]
    b = prev.set_index("symbol").loc["513100"]
    assert a["raw_close"] / b["raw_close"] < 0.25
    assert abs(a["close"] / b["close"] - 1) < 0.10


def test_a_bad_cell_belongs_to_its_own_partition(pristine: Path, tmp_path: Path) -> None:
    """An unparsable value on one date fails that date's partitions, not later ones."""
    from rotation.sources.files import FileMarketSource, load_dataset_spec

    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    edit_prices("510300", _set("2021-12-02", close="4.9x"))(root)
    source = FileMarketSource(root, load_dataset_spec(root / "dataset.yaml"))
    early = source.load("2021-12-01", "2021-12-31").issues
    assert list(early["rule"]) == ["source_values_numeric"]
    assert "510300 on 2021-12-02" in early["message"].iloc[0]
    assert source.load("2022-02-01", "2022-02-28").issues.empty

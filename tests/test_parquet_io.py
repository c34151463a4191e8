"""The IO manager's session storage: one Parquet file per calendar year of sessions, read and
written through the IO manager only, equal to the per-session layout it replaces."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest

from benchmarks.storage import load, market_frames, per_session, sessions_of, store
from resources.parquet_io import PartitionedParquetIOManager

KEY = dg.AssetKey("bars")
SESSIONS = dg.TimeWindowPartitionsDefinition(cron_schedule="0 0 * * 1-5", start="2023-12-01",
                                             end="2024-02-01", fmt="%Y-%m-%d")
WINDOWS = dg.StaticPartitionsDefinition(["w0", "w1"])


def _bars(days: list[str], symbols: tuple[str, ...] = ("510300", "159915"),
          close: float = 1.0) -> pd.DataFrame:
    rows = [(pd.Timestamp(d), s, close + i) for d in days for i, s in enumerate(symbols)]
    return pd.DataFrame(rows, columns=["date", "symbol", "close"])


def _write(io: PartitionedParquetIOManager, frame: pd.DataFrame, first: str, last: str,
           partitions: dg.PartitionsDefinition = SESSIONS) -> None:
    store(io, KEY, frame, partitions, [first, last])


def _read(io: PartitionedParquetIOManager, first: str, last: str,
          partitions: dg.PartitionsDefinition = SESSIONS) -> pd.DataFrame:
    return load(io, KEY, partitions, [first, last])


def _files(io: PartitionedParquetIOManager) -> list[str]:
    return sorted(p.name for p in (Path(io.base_path) / "bars").glob("*.parquet"))


@pytest.fixture
def io(tmp_path: Path) -> PartitionedParquetIOManager:
    return PartitionedParquetIOManager(base_path=str(tmp_path))


def test_a_range_is_stored_one_file_per_year_in_session_order(
        io: PartitionedParquetIOManager) -> None:
    # Rows out of session order; 2023-12-28 and 2024-01-01 written without rows.
    frame = _bars(["2024-01-03", "2023-12-27", "2024-01-02", "2023-12-29"])
    _write(io, frame, "2023-12-27", "2024-01-03")
    assert _files(io) == ["2023.parquet", "2024.parquet"]
    keys = ["2023-12-27", "2023-12-28", "2023-12-29", "2024-01-01", "2024-01-02", "2024-01-03"]
    assert io.stored_partitions(KEY) == keys
    expected = frame.sort_values("date", kind="stable", ignore_index=True)
    pd.testing.assert_frame_equal(_read(io, "2023-12-27", "2024-01-03"), expected)
    pd.testing.assert_frame_equal(_read(io, "2023-12-29", "2024-01-02"),
                                  expected.iloc[2:6].reset_index(drop=True))
    # A session written without rows is stored empty, with the asset's columns.
    empty = _read(io, "2024-01-01", "2024-01-01")
    assert empty.empty and list(empty.columns) == ["date", "symbol", "close"]
    assert io.load_partitions(KEY, ["2023-12-28"]).empty


def test_a_write_replaces_exactly_its_sessions(io: PartitionedParquetIOManager) -> None:
    _write(io, _bars(["2024-01-02", "2024-01-03", "2024-01-04"]), "2024-01-02", "2024-01-04")
    _write(io, _bars(["2024-01-03"], symbols=("518880",), close=9.0), "2024-01-03", "2024-01-03")
    # The daily run of the session after the holiday, one row fewer.
    _write(io, _bars(["2024-01-05"], symbols=("510300",)), "2024-01-05", "2024-01-05")
    got = _read(io, "2024-01-02", "2024-01-05")
    expected = pd.concat([_bars(["2024-01-02"]), _bars(["2024-01-03"], ("518880",), 9.0),
                          _bars(["2024-01-04"]), _bars(["2024-01-05"], ("510300",))],
                         ignore_index=True)
    pd.testing.assert_frame_equal(got, expected)
    # Written again without rows: stored empty, not forgotten.
    _write(io, _bars([]), "2024-01-03", "2024-01-03")
    assert "2024-01-03" in io.stored_partitions(KEY)
    assert _read(io, "2024-01-03", "2024-01-03").empty
    assert len(_read(io, "2024-01-02", "2024-01-05")) == 5


def test_a_session_never_stored_is_an_error_naming_it(io: PartitionedParquetIOManager) -> None:
    _write(io, _bars(["2024-01-02"]), "2024-01-02", "2024-01-02")
    with pytest.raises(FileNotFoundError, match=r"bars: 3 partition\(s\) not materialised, "
                       r"e.g. \['2023-12-29', '2024-01-01', '2024-01-03'\]"):
        _read(io, "2023-12-29", "2024-01-03")


def test_rows_outside_the_partitions_being_written_are_an_error(
        io: PartitionedParquetIOManager) -> None:
    with pytest.raises(ValueError, match=r"rows dated \['2024-01-04'\] fall outside"):
        _write(io, _bars(["2024-01-02", "2024-01-04"]), "2024-01-02", "2024-01-03")
    assert _files(io) == []


def test_a_failed_write_leaves_the_last_good_year(io: PartitionedParquetIOManager,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _write(io, _bars(["2024-01-02"]), "2024-01-02", "2024-01-02")
    before = (Path(io.base_path) / "bars" / "2024.parquet").read_bytes()

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", fail)
    with pytest.raises(OSError, match="disk full"):
        _write(io, _bars(["2024-01-03"]), "2024-01-03", "2024-01-03")
    folder = Path(io.base_path) / "bars"
    assert (folder / "2024.parquet").read_bytes() == before
    assert not list(folder.glob("*.tmp"))
    assert io.stored_partitions(KEY) == ["2024-01-02"]


def test_session_files_of_an_existing_deployment_are_read_and_taken_in(
        io: PartitionedParquetIOManager) -> None:
    days = ["2023-12-28", "2023-12-29", "2024-01-02", "2024-01-03"]
    old = _bars(days)
    # The layout before year files: one file per session.
    _write(io, old, days[0], days[-1], per_session(SESSIONS))
    assert _files(io) == [f"{d}.parquet" for d in ["2023-12-28", "2023-12-29", "2024-01-01",
                                                    "2024-01-02", "2024-01-03"]]
    pd.testing.assert_frame_equal(_read(io, days[0], days[-1]), old)
    # A daily run of 2024-01-04 writes the 2024 year: it takes in 2024's session files.
    new = _bars(["2024-01-04"], close=5.0)
    _write(io, new, "2024-01-04", "2024-01-04")
    assert _files(io) == ["2023-12-28.parquet", "2023-12-29.parquet", "2024.parquet"]
    assert io.stored_partitions(KEY) == ["2023-12-28", "2023-12-29", "2024-01-01",
                                         "2024-01-02", "2024-01-03", "2024-01-04"]
    pd.testing.assert_frame_equal(_read(io, days[0], "2024-01-04"),
                                  pd.concat([old, new], ignore_index=True))
    pd.testing.assert_frame_equal(io.load_partitions(KEY, days), old)


def test_window_partitions_keep_one_file_each(io: PartitionedParquetIOManager) -> None:
    frame = pd.DataFrame({"window": ["w1", "w0"], "winner": ["b", "a"]})
    context = dg.build_output_context(asset_key=KEY, asset_partitions_def=WINDOWS,
                                      asset_partition_key_range=dg.PartitionKeyRange("w0", "w1"),
                                      definition_metadata={"partition_column": "window"})
    io.handle_output(context, frame)
    assert _files(io) == ["w0.parquet", "w1.parquet"]
    assert io.stored_partitions(KEY) == ["w0", "w1"]
    pd.testing.assert_frame_equal(io.load_partitions(KEY, ["w0", "w1"]),
                                  frame.iloc[[1, 0]].reset_index(drop=True))


def _write_often(base: str, day: str, times: int) -> None:
    io = PartitionedParquetIOManager(base_path=base)
    for i in range(times):
        _write(io, _bars([day], close=float(i)), day, day)


def test_concurrent_writers_of_one_year_lose_no_session(io: PartitionedParquetIOManager) -> None:
    days = ["2024-01-02", "2024-01-03", "2024-01-04"]
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_often, args=(io.base_path, d, 15)) for d in days]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert [w.exitcode for w in writers] == [0, 0, 0]
    assert io.stored_partitions(KEY) == days
    pd.testing.assert_frame_equal(_read(io, days[0], days[-1]), _bars(days, close=14.0))


@pytest.mark.parametrize("dataset", ["cn_etf_akshare_qfq_2020"])
def test_year_files_read_as_the_per_session_layout_on_real_data(
        io: PartitionedParquetIOManager, dataset: str, shared_data: Path) -> None:
    """raw_bars, adjusted_bars and cross_sections of a real dataset: the whole history, a
    lookback of a daily run across a year end, one session and a holiday read the same frames,
    dtypes included, from year files as from one file per session (read as before: each file,
    the empty ones left out, concatenated)."""
    for name, frame in market_frames(dataset).items():
        sessions = sessions_of(frame)
        keys = list(sessions.get_partition_keys())
        year_files = PartitionedParquetIOManager(base_path=str(Path(io.base_path) / "years"))
        session_files = PartitionedParquetIOManager(base_path=str(Path(io.base_path) / "days"))
        store(year_files, dg.AssetKey(name), frame, sessions, keys)
        store(session_files, dg.AssetKey(name), frame, per_session(sessions), keys)
        january = [k for k in keys if k.endswith("-01-02")][-1]
        holiday = next(k for k in keys if k.endswith("-01-01"))
        ranges = [keys, keys[keys.index(january) - 85:keys.index(january) + 1], [january],
                  [holiday], keys[-300:]]
        for wanted in ranges:
            pd.testing.assert_frame_equal(
                load(year_files, dg.AssetKey(name), sessions, wanted),
                load(session_files, dg.AssetKey(name), sessions, wanted))
        assert year_files.stored_partitions(dg.AssetKey(name)) == keys

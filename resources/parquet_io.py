"""Partition-aware Parquet IO manager.

Session-partitioned assets (a time-window partitions definition) are stored one file per
calendar year of sessions (``<root>/<asset>/<YYYY>.parquet``): a read of the whole history opens
some twenty files rather than thousands, and a full-history backfill writes as few. A year file
holds its sessions' rows in session order; its key-value metadata lists the sessions it stores
and where each one's rows end, so a session written without rows (a weekday holiday) is stored
as written-and-empty, and a read slices exactly the sessions it asks for.

A write of a partition range rewrites each year it touches under an exclusive lock (a daily run
and a backfill may write the same year at once): it reads the stored year, replaces exactly the
sessions being written, writes a temporary file and renames it into place, so a failed run never
leaves a half-written year and a run that fails before its output is stored leaves the last good
file. Sessions stored one file each (``<asset>/<YYYY-MM-DD>.parquet``, the layout before year
files) are still read where the year file lacks them; writing a year takes them in and removes
their files (one truth per session).

Other partitioned assets (walk-forward windows) are one file per partition, unpartitioned assets
one file.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

_THREADS = 4
# Key-value metadata of a year file: {"sessions": [...], "stops": [...]}, in session order; the
# rows of sessions[i] are stops[i-1]:stops[i].
_SESSIONS = b"etf_rotation.sessions"


@dataclass(frozen=True)
class _Rows:
    """Rows ``start:stop`` of one stored table (a session of a year file, or a whole file)."""

    table: pa.Table
    start: int
    stop: int


@dataclass(frozen=True)
class _Year:
    table: pa.Table
    rows: dict[str, _Rows]


class PartitionedParquetIOManager(dg.ConfigurableIOManager):
    base_path: str
    # Column that assigns rows of a multi-partition output to their partition (session date);
    # an asset overrides it with ``metadata={"partition_column": ...}``.
    partition_column: str = "date"

    def _asset_dir(self, key: dg.AssetKey) -> Path:
        return Path(self.base_path).joinpath(*key.path)

    def path_for(self, key: dg.AssetKey, partition: str | None = None) -> Path:
        """The file of an unpartitioned asset, or of a partition stored one file each (a
        walk-forward window; a session stored before year files)."""
        if partition is None:
            return Path(self.base_path).joinpath(*key.path).with_suffix(".parquet")
        return self._asset_dir(key) / f"{partition}.parquet"

    def year_path(self, key: dg.AssetKey, year: int) -> Path:
        """The file holding a session-partitioned asset's sessions of ``year``."""
        return self._asset_dir(key) / f"{year:04d}.parquet"

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame | None) -> None:
        if obj is None:
            return
        key = context.asset_key
        if not context.has_asset_partitions:
            _write(obj, self.path_for(key))
            return
        partitions = list(context.asset_partition_keys)
        # An asset may name its own partition column (e.g. "window" for walk-forward windows).
        name = (context.definition_metadata or {}).get("partition_column", self.partition_column)
        keys = _row_keys(obj[str(name)]) if len(obj) else pd.Series([], dtype=str)
        stray = sorted(set(keys) - set(partitions))
        if stray:
            raise ValueError(
                f"{key.to_user_string()}: rows dated {stray[:5]} fall outside the partitions "
                f"being written ({partitions[0]}..{partitions[-1]})"
            )
        fmt = _session_format(context.asset_partitions_def)
        if fmt is None:
            self._write_each(key, partitions, obj, keys)
        else:
            self._write_years(key, fmt, partitions, obj, keys)

    def _write_each(self, key: dg.AssetKey, partitions: list[str], obj: pd.DataFrame,
                    keys: pd.Series) -> None:
        groups = dict(tuple(obj.groupby(keys, sort=False))) if len(obj) else {}
        empty = obj.iloc[0:0]
        with ThreadPoolExecutor(_THREADS) as pool:
            list(pool.map(lambda p: _write(groups.get(p, empty), self.path_for(key, p)),
                          partitions))

    def _write_years(self, key: dg.AssetKey, fmt: str, partitions: list[str],
                     obj: pd.DataFrame, keys: pd.Series) -> None:
        position = keys.map({p: i for i, p in enumerate(partitions)}).to_numpy(dtype=np.int64)
        table = pa.Table.from_pandas(obj.reset_index(drop=True), preserve_index=False)
        if not bool(np.all(position[1:] >= position[:-1])):
            order = np.argsort(position, kind="stable")   # session order, rows' order within
            table, position = table.take(order), position[order]
        bounds = np.searchsorted(position, np.arange(len(partitions) + 1))
        written = {p: _Rows(table, int(bounds[i]), int(bounds[i + 1]))
                   for i, p in enumerate(partitions)}
        years: dict[int, dict[str, _Rows]] = {}
        for p, year in zip(partitions, _years(partitions, fmt), strict=True):
            years.setdefault(year, {})[p] = written[p]
        session_files = self._session_files(key, fmt)
        with ThreadPoolExecutor(_THREADS) as pool:
            list(pool.map(lambda item: self._store_year(
                key, fmt, item[0], item[1], session_files.get(item[0], {})), years.items()))

    def _store_year(self, key: dg.AssetKey, fmt: str, year: int, written: dict[str, _Rows],
                    session_files: dict[str, Path]) -> None:
        """``session_files``: the year's files of single sessions (the layout before year
        files), taken in."""
        path = self.year_path(key, year)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.with_name(f".{path.name}.lock")):
            stored = _read_year(path)
            kept = {s: r for s, r in (stored.rows.items() if stored else ()) if s not in written}
            legacy = {s: p for s, p in session_files.items()
                      if s not in kept and s not in written}
            kept |= _read_whole(legacy)
            rows = {**kept, **written}
            days = pd.to_datetime(pd.Index(list(rows)), format=fmt)
            _write_year([s for _, s in sorted(zip(days, rows, strict=True))], rows, path)
            for session in rows:
                self.path_for(key, session).unlink(missing_ok=True)

    def _session_files(self, key: dg.AssetKey, fmt: str) -> dict[int, dict[str, Path]]:
        """The per-session files (the layout before year files) by year, listed once per
        write."""
        out: dict[int, dict[str, Path]] = {}
        for path in _parquet_files(self._asset_dir(key)):
            try:
                day = dt.datetime.strptime(path.stem, fmt)
            except ValueError:
                continue
            out.setdefault(day.year, {})[path.stem] = path
        return out

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        key = context.asset_key
        if not context.has_asset_partitions:
            return _read(self.path_for(key), key.to_user_string())
        partitions = list(context.asset_partition_keys)
        fmt = _session_format(context.asset_partitions_def)
        # Other partitionings have no year files.
        years = [] if fmt is None else sorted(set(_years(partitions, fmt)))
        found = self._find(key, partitions, years)
        missing = [p for p in partitions if p not in found]
        if missing:
            raise FileNotFoundError(
                f"{key.to_user_string()}: {len(missing)} partition(s) not materialised, e.g. "
                f"{missing[:3]} (materialise or backfill them first)"
            )
        tables = _slices(found[p] for p in partitions)
        tables = [t for t in tables if t.num_rows] or tables[:1]
        frame = pa.concat_tables(tables, promote_options="default").to_pandas()
        return frame.reset_index(drop=True)

    def _find(self, key: dg.AssetKey, partitions: list[str],
              years: list[int] | None) -> dict[str, _Rows]:
        """The stored rows of each of ``partitions`` that is stored. ``years``: those of the
        year files that can hold them (None: not known outside a run — every file that is not
        one of ``partitions``' own files is opened to see whether it is a year file).

        Files of single partitions are read before year files: a writer renames a year file into
        place before it removes the session files it took in, so a session is found in one or
        the other however the two interleave; the year file's copy wins."""
        wanted = set(partitions)
        names = {p.stem: p for p in _parquet_files(self._asset_dir(key))}
        found = _read_whole({p: names[p] for p in partitions if p in names})
        if years is None:
            candidates = [path for stem, path in names.items() if stem not in wanted]
        else:
            candidates = [self.year_path(key, y) for y in years]
        with ThreadPoolExecutor(_THREADS) as pool:
            stored = pool.map(lambda path: _read_year(path, wanted.isdisjoint), candidates)
            for year in stored:
                if year is not None:
                    found |= {s: r for s, r in year.rows.items() if s in wanted}
        return found

    def load_partitions(self, key: dg.AssetKey, partitions: list[str]) -> pd.DataFrame:
        """Read stored partitions outside a run (demo, notebooks, tests); those not stored are
        left out (an empty frame when none is)."""
        found = self._find(key, partitions, None)
        tables = _slices(found[p] for p in partitions if p in found)
        if not tables:
            return pd.DataFrame()
        return pa.concat_tables(tables, promote_options="default").to_pandas()

    def stored_partitions(self, key: dg.AssetKey) -> list[str]:
        """Every stored partition key of ``key`` (sessions stored empty included), sorted."""
        out: set[str] = set()
        for path in _parquet_files(self._asset_dir(key)):
            with pq.ParquetFile(path) as file:
                sessions = _index(file.metadata.metadata)
            out |= {path.stem} if sessions is None else set(sessions[0])
        return sorted(out)


def _session_format(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    """The key format of session (time-window) partitions, stored in year files; None for any
    other partitioning."""
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return partitions_def.fmt
    return None


def _years(partitions: list[str], fmt: str) -> list[int]:
    return pd.to_datetime(pd.Index(partitions), format=fmt).year.tolist()


def _row_keys(column: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(column):
        return column.dt.strftime("%Y-%m-%d")
    return column.astype(str)


def _parquet_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix == ".parquet" and not p.name.startswith("."))


def _index(metadata: dict[bytes, bytes] | None) -> tuple[list[str], list[int]] | None:
    """A year file's sessions and row stops; None for any other file."""
    if not metadata or _SESSIONS not in metadata:
        return None
    index = json.loads(metadata[_SESSIONS])
    return list(index["sessions"]), list(index["stops"])


def _read_year(path: Path, skip: Callable[[set[str]], bool] | None = None) -> _Year | None:
    """A year file's rows per session; None when ``path`` is missing or not a year file, or its
    sessions are ones ``skip`` says are not needed. Index and rows come from one open file, so a
    year renamed into place meanwhile cannot mix them."""
    try:
        file = pq.ParquetFile(path)
    except FileNotFoundError:
        return None
    with file:
        index = _index(file.metadata.metadata)
        if index is None or (skip is not None and skip(set(index[0]))):
            return None
        table = file.read()
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != _SESSIONS}
    table = table.replace_schema_metadata(metadata)
    sessions, stops = index
    starts = [0, *stops[:-1]]
    return _Year(table, {s: _Rows(table, a, b)
                         for s, a, b in zip(sessions, starts, stops, strict=True)})


def _read_whole(files: dict[str, Path]) -> dict[str, _Rows]:
    """Files of single partitions as rows; one that vanished meanwhile is left out (a writer
    took it into its year file)."""
    def read(path: Path) -> pa.Table | None:
        try:
            return _read_table(path)
        except FileNotFoundError:
            return None

    with ThreadPoolExecutor(_THREADS) as pool:
        tables = list(pool.map(read, files.values()))
    return {s: _Rows(t, 0, t.num_rows) for s, t in zip(files, tables, strict=True)
            if t is not None}


def _slices(rows: Iterable[_Rows]) -> list[pa.Table]:
    """The rows in order as tables, neighbouring rows of one table as one slice (a whole year's
    sessions are the year's table itself)."""
    spans: list[_Rows] = []
    for r in rows:
        last = spans[-1] if spans else None
        if last is not None and last.table is r.table and last.stop == r.start:
            spans[-1] = _Rows(r.table, last.start, r.stop)
        else:
            spans.append(r)
    return [s.table if (s.start, s.stop) == (0, s.table.num_rows)
            else s.table.slice(s.start, s.stop - s.start) for s in spans]


def _write_year(sessions: list[str], rows: dict[str, _Rows], path: Path) -> None:
    tables = _slices(rows[s] for s in sessions)
    stops = np.cumsum([rows[s].stop - rows[s].start for s in sessions]).tolist()
    # The pandas metadata of the first rows, as a reader of per-session files got it.
    first = next((t for t in tables if t.num_rows), tables[0])
    table = pa.concat_tables(tables, promote_options="default")
    index = json.dumps({"sessions": sessions, "stops": stops}).encode()
    table = table.replace_schema_metadata({**(first.schema.metadata or {}), _SESSIONS: index})
    _replace(path, lambda tmp: pq.write_table(table, tmp))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_table(path: Path) -> pa.Table:
    # One plain file: ParquetFile skips the dataset layer of pq.read_table, about 2-3x faster
    # on many small files.
    with pq.ParquetFile(path) as file:
        return file.read()


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file renamed into place: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write(frame: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    _replace(path, lambda tmp: pq.write_table(table, tmp))


def _read(path: Path, label: str) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{label}: not materialised yet (no {path})")
    return _read_table(path).to_pandas()

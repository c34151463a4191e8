"""Partition-aware Parquet IO manager.

Session-partitioned assets are stored one file per session (``<root>/<asset>/<YYYY-MM-DD>.parquet``)
so a daily run rewrites one file, a single-run backfill writes its whole range in one step, and a
downstream asset reads exactly the sessions it maps to. Unpartitioned assets are one file.
Writes go to a temporary file and are renamed into place, so a failed run never leaves a
half-written partition; a run that fails before its output is stored leaves the last good file.
"""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

_THREADS = 4


class PartitionedParquetIOManager(dg.ConfigurableIOManager):
    base_path: str
    # Column that assigns rows of a multi-partition output to their partition (session date);
    # an asset overrides it with ``metadata={"partition_column": ...}``.
    partition_column: str = "date"

    def _asset_dir(self, key: dg.AssetKey) -> Path:
        return Path(self.base_path).joinpath(*key.path)

    def path_for(self, key: dg.AssetKey, partition: str | None = None) -> Path:
        if partition is None:
            return Path(self.base_path).joinpath(*key.path).with_suffix(".parquet")
        return self._asset_dir(key) / f"{partition}.parquet"

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
        column = obj[str(name)]
        if not len(obj):
            keys = pd.Series([], dtype=str)
        elif pd.api.types.is_datetime64_any_dtype(column):
            keys = column.dt.strftime("%Y-%m-%d")
        else:
            keys = column.astype(str)
        stray = sorted(set(keys) - set(partitions))
        if stray:
            raise ValueError(
                f"{key.to_user_string()}: rows dated {stray[:5]} fall outside the partitions "
                f"being written ({partitions[0]}..{partitions[-1]})"
            )
        groups = dict(tuple(obj.groupby(keys, sort=False))) if len(obj) else {}
        empty = obj.iloc[0:0]
        with ThreadPoolExecutor(_THREADS) as pool:
            list(
                pool.map(
                    lambda p: _write(groups.get(p, empty), self.path_for(key, p)), partitions
                )
            )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        key = context.asset_key
        if not context.has_asset_partitions:
            return _read(self.path_for(key), key.to_user_string())
        partitions = list(context.asset_partition_keys)
        paths = [self.path_for(key, p) for p in partitions]
        missing = [p for p, path in zip(partitions, paths, strict=True) if not path.exists()]
        if missing:
            raise FileNotFoundError(
                f"{key.to_user_string()}: {len(missing)} partition(s) not materialised, e.g. "
                f"{missing[:3]} (materialise or backfill them first)"
            )
        with ThreadPoolExecutor(_THREADS) as pool:
            tables = list(pool.map(_read_table, paths))
        tables = [t for t in tables if t.num_rows] or tables[:1]
        frame = pa.concat_tables(tables, promote_options="default").to_pandas()
        return frame.reset_index(drop=True)

    def load_partitions(self, key: dg.AssetKey, partitions: list[str]) -> pd.DataFrame:
        """Read stored partitions outside a run (demo, notebooks, tests)."""
        paths = [self.path_for(key, p) for p in partitions]
        tables = [_read_table(p) for p in paths if p.exists()]
        if not tables:
            return pd.DataFrame()
        return pa.concat_tables(tables, promote_options="default").to_pandas()


def _read_table(path: Path) -> pa.Table:
    # One plain file: ParquetFile skips the dataset layer of pq.read_table, about 2-3x faster
    # on the hundreds of small session files a history load reads.
    with pq.ParquetFile(path) as file:
        return file.read()


def _write(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _read(path: Path, label: str) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{label}: not materialised yet (no {path})")
    return _read_table(path).to_pandas()

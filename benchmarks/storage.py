"""Session storage: one Parquet file per session against one per calendar year of sessions.

On a real dataset's bars (adjusted as ``adjusted_bars`` stores them) the IO manager writes the
whole history both ways — one file per session as a non-date partitioning stores it (the layout
session partitions had before year files), and year files as session partitions are stored now —
then reads the whole history back (what ``factors`` and ``target_portfolio`` load every evening)
from each, best of ``REPEAT``, and checks both reads give the same frame.

    python -m benchmarks.storage [dataset]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pandas as pd

from resources.parquet_io import PartitionedParquetIOManager

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ETF_SHARED_DATA", ROOT.parent / "shared" / "data"))
REPEAT = 5
KEY = dg.AssetKey("adjusted_bars")


def market_frames(dataset: str) -> dict[str, pd.DataFrame]:
    """The dataset's raw bars, adjusted bars and cross-sections, computed as the assets do."""
    from rotation.adjust import adjust_bars
    from rotation.cross_section import CrossSectionConfig, build_cross_sections
    from rotation.sources.files import FileMarketSource, load_dataset_spec

    spec = load_dataset_spec(ROOT / "config" / "datasets" / f"{dataset}.yaml")
    raw = FileMarketSource(SHARED / dataset, spec).load().bars
    adjusted = adjust_bars(raw)
    return {"raw_bars": raw, "adjusted_bars": adjusted,
            "cross_sections": build_cross_sections(adjusted, CrossSectionConfig())}


def sessions_of(frame: pd.DataFrame) -> dg.TimeWindowPartitionsDefinition:
    """Weekday session partitions over the frame's dates (holidays stored empty)."""
    first, last = frame["date"].min(), frame["date"].max()
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule="0 0 * * 1-5", start=first.to_pydatetime(),
        end=(last + pd.offsets.BDay(1)).to_pydatetime(), fmt="%Y-%m-%d")


def per_session(sessions: dg.TimeWindowPartitionsDefinition) -> dg.StaticPartitionsDefinition:
    """The same keys as a non-date partitioning: stored one file per session."""
    return dg.StaticPartitionsDefinition(list(sessions.get_partition_keys()))


def store(io: PartitionedParquetIOManager, key: dg.AssetKey, frame: pd.DataFrame,
          partitions: dg.PartitionsDefinition, keys: list[str]) -> None:
    io.handle_output(dg.build_output_context(
        asset_key=key, asset_partitions_def=partitions,
        asset_partition_key_range=dg.PartitionKeyRange(keys[0], keys[-1])), frame)


def reading(key: dg.AssetKey, partitions: dg.PartitionsDefinition,
            keys: list[str]) -> dg.InputContext:
    return dg.build_input_context(
        asset_key=key, asset_partitions_def=partitions,
        asset_partition_key_range=dg.PartitionKeyRange(keys[0], keys[-1]))


def load(io: PartitionedParquetIOManager, key: dg.AssetKey,
         partitions: dg.PartitionsDefinition, keys: list[str]) -> pd.DataFrame:
    return io.load_input(reading(key, partitions, keys))


def _best(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str]) -> int:
    dataset = argv[0] if argv else "cn_etf_morphkyan_raw"
    bars = market_frames(dataset)["adjusted_bars"]
    sessions = sessions_of(bars)
    keys = list(sessions.get_partition_keys())
    # Written one file per session, read back as session partitions: the reader before year
    # files (each file, the empty ones left out, concatenated), as for an existing deployment.
    layouts = {"one file per session": per_session(sessions), "one file per year": sessions}
    with tempfile.TemporaryDirectory() as tmp:
        frames = {}
        print(f"{dataset}: adjusted_bars, {len(bars)} rows, {len(keys)} session partitions "
              f"{keys[0]}..{keys[-1]}; load: {os.getloadavg()}")
        for name, partitions in layouts.items():
            io = PartitionedParquetIOManager(base_path=str(Path(tmp) / name.replace(" ", "_")))
            write = _best(lambda io=io, p=partitions: store(io, KEY, bars, p, keys), 1)
            context = reading(KEY, sessions, keys)   # Dagster's context: not timed
            read = _best(lambda io=io, c=context: io.load_input(c), REPEAT)
            frames[name] = io.load_input(context)
            files = len(list((Path(io.base_path) / "adjusted_bars").glob("*.parquet")))
            print(f"  {name:<21}: {files:>5} files; write the history {write:6.2f} s, "
                  f"read the history {read:6.3f} s (best of {REPEAT})")
        pd.testing.assert_frame_equal(*frames.values())
    print("  both reads give the same frame (pd.testing.assert_frame_equal)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Walk-forward windows (SPEC §6): in-sample, purge, embargo, out-of-sample.

A window's in-sample labels look ``horizon`` sessions ahead (``label(D, H)`` needs
``open(D+1+H)``), so the last in-sample date is purged until its label is observable before the
first out-of-sample session; an optional embargo adds more distance. Windows are expressed in
sessions of the trading calendar and each becomes one Dagster partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class WfoConfig:
    in_sample: int = Field(default=252, ge=20)
    out_of_sample: int = Field(default=60, ge=1)
    step: int = Field(default=60, ge=1)
    mode: Literal["rolling", "anchored"] = "rolling"
    # Longest label horizon used in-sample: purge = horizon + 1 sessions (T1_OPEN labels).
    horizon: int = Field(default=20, ge=0)
    embargo: int = Field(default=0, ge=0)

    @property
    def purge(self) -> int:
        return self.horizon + 1


@dataclass(frozen=True)
class WfoWindow:
    index: int
    is_start: pd.Timestamp
    is_end: pd.Timestamp
    oos_start: pd.Timestamp
    oos_end: pd.Timestamp

    @property
    def key(self) -> str:
        """Partition key: window number and first out-of-sample session (sortable, readable)."""
        return f"w{self.index:03d}_{self.oos_start:%Y-%m-%d}"

    def as_dict(self) -> dict[str, object]:
        return {"window": self.key, "is_start": self.is_start, "is_end": self.is_end,
                "oos_start": self.oos_start, "oos_end": self.oos_end}


def wfo_windows(sessions: pd.DatetimeIndex, cfg: WfoConfig) -> list[WfoWindow]:
    """All complete windows over ``sessions`` (ascending, unique).

    Out-of-sample blocks start after the first in-sample span plus the purge and embargo, move
    by ``step`` sessions, and must fit entirely inside ``sessions``.
    """
    days = pd.DatetimeIndex(sessions)
    if not days.is_monotonic_increasing or not days.is_unique:
        raise ValueError("wfo_windows: sessions must be ascending and unique")
    gap = cfg.purge + cfg.embargo
    windows: list[WfoWindow] = []
    oos_first = cfg.in_sample + gap
    while oos_first + cfg.out_of_sample <= len(days):
        is_last = oos_first - gap - 1
        is_first = 0 if cfg.mode == "anchored" else is_last - cfg.in_sample + 1
        windows.append(
            WfoWindow(
                index=len(windows),
                is_start=days[is_first],
                is_end=days[is_last],
                oos_start=days[oos_first],
                oos_end=days[oos_first + cfg.out_of_sample - 1],
            )
        )
        oos_first += cfg.step
    return windows


def windows_frame(windows: list[WfoWindow]) -> pd.DataFrame:
    return pd.DataFrame([w.as_dict() for w in windows])

"""Thin pandas wrappers: wide panels in, factor panels (dates × symbols) out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numba
import numpy as np
import pandas as pd

from rotation.cross_section import wide_many
from rotation.factors.registry import FactorSpec


@dataclass(frozen=True)
class Panels:
    """Aligned (dates × symbols) panels of adjusted bars; NaN where a fund has no bar.

    All six frames share one sorted, unique date index and one symbol column index.
    """

    open: pd.DataFrame
    high: pd.DataFrame
    low: pd.DataFrame
    close: pd.DataFrame
    volume: pd.DataFrame
    turnover: pd.DataFrame

    def __post_init__(self) -> None:
        ref = self.close
        if not ref.index.is_monotonic_increasing or not ref.index.is_unique:
            raise ValueError("Panels: the date index must be sorted and unique")
        for f in fields(self):
            frame = getattr(self, f.name)
            if not (frame.index.equals(ref.index) and frame.columns.equals(ref.columns)):
                raise ValueError(f"Panels: {f.name!r} is not aligned with 'close'")

    @classmethod
    def from_bars(cls, bars: pd.DataFrame) -> Panels:
        """Panels from a long frame of adjusted bars (``rotation.adjust.adjust_bars``).

        ``turnover`` (traded value) falls back to ``amount`` and then ``volume × close`` when
        the frame lacks it, as in ``adjust_bars``.
        """
        missing = [c for c in ("date", "symbol", "open", "high", "low", "close", "volume")
                   if c not in bars.columns]
        if missing:
            raise ValueError(f"Panels.from_bars: missing columns {missing}")
        if "turnover" not in bars.columns:
            fallback = bars["volume"] * bars["close"]
            if "amount" in bars.columns:
                fallback = bars["amount"].fillna(fallback)
            bars = bars.assign(turnover=fallback)
        return cls(**wide_many(bars, [f.name for f in fields(cls)]))

    @property
    def index(self) -> pd.Index:
        return self.close.index

    @property
    def columns(self) -> pd.Index:
        return self.close.columns

    def array(self, name: str) -> np.ndarray:
        """C-contiguous float64 values of one panel (what the kernels take)."""
        return np.ascontiguousarray(getattr(self, name).to_numpy(dtype=np.float64))


def _inputs(spec: FactorSpec, panels: Panels, cache: dict[str, np.ndarray]
            ) -> list[np.ndarray]:
    for name in spec.info.inputs:
        if name not in cache:
            cache[name] = panels.array(name)
    return [cache[name] for name in spec.info.inputs]


def _run(spec: FactorSpec, panels: Panels, arrays: list[np.ndarray]) -> pd.DataFrame:
    values = spec.info.func(*arrays, *(spec.params[p.name] for p in spec.info.params))
    out = pd.DataFrame(values, index=panels.index, columns=panels.columns)
    out.columns.name = panels.columns.name
    return out


def compute_factor(spec: FactorSpec, panels: Panels) -> pd.DataFrame:
    """One factor as a (dates × symbols) frame aligned with ``panels``."""
    return _run(spec, panels, _inputs(spec, panels, {}))


def compute_factors(specs: Iterable[FactorSpec], panels: Panels) -> dict[str, pd.DataFrame]:
    """Factors by name (insertion order = ``specs`` order); names must be unique.

    The factors run on numba's configured number of threads (read from its configuration:
    asking numba launches its threading layer): the kernels are serial and release the GIL.
    Parallel within a kernel (``prange``) would launch numba's threading layer wherever one is
    loaded, and the code server's forkserver loads them before forking run workers, which a
    launched GNU OpenMP layer does not survive (orchestration/run_worker_preload.py)."""
    specs = list(specs)
    names = [spec.name for spec in specs]
    duplicated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if duplicated is not None:
        raise ValueError(f"compute_factors: duplicate factor name {duplicated!r}")
    cache: dict[str, np.ndarray] = {}
    arrays = [_inputs(spec, panels, cache) for spec in specs]
    threads = min(numba.config.NUMBA_NUM_THREADS, len(specs))  # type: ignore[attr-defined]
    if threads <= 1:
        return {spec.name: _run(spec, panels, a) for spec, a in zip(specs, arrays, strict=True)}
    with ThreadPoolExecutor(threads) as pool:
        frames = pool.map(lambda job: _run(panels=panels, spec=job[0], arrays=job[1]),
                          zip(specs, arrays, strict=True))
        return dict(zip(names, frames, strict=True))


def factors_long(factors: Mapping[str, pd.DataFrame], *, dropna: bool = True) -> pd.DataFrame:
    """Long frame ``date, symbol, factor, value`` (ordered by factor, date, symbol).

    With ``dropna`` (default) rows without a value are left out; missing stays missing.
    """
    dates, symbols, codes, values = [], [], [], []
    for code, frame in enumerate(factors.values()):
        vals = frame.to_numpy(dtype=np.float64)
        n, m = vals.shape
        rows = np.repeat(np.arange(n), m)
        cols = np.tile(np.arange(m), n)
        flat = vals.reshape(-1)
        if dropna:
            keep = ~np.isnan(flat)
            rows, cols, flat = rows[keep], cols[keep], flat[keep]
        dates.append(frame.index.take(rows))
        symbols.append(frame.columns.astype("string").take(cols))
        codes.append(np.full(len(flat), code, dtype=np.int64))
        values.append(flat)
    if not values:
        return pd.DataFrame({"date": pd.Series(dtype="datetime64[ns]"),
                             "symbol": pd.Series(dtype="string"),
                             "factor": pd.Series(dtype="string"),
                             "value": pd.Series(dtype=np.float64)})
    names = pd.Index(list(factors), dtype="string")
    return pd.DataFrame({
        "date": dates[0].append(dates[1:]) if len(dates) > 1 else dates[0],
        "symbol": symbols[0].append(symbols[1:]) if len(symbols) > 1 else symbols[0],
        "factor": names.take(np.concatenate(codes)),
        "value": np.concatenate(values),
    }).reset_index(drop=True)

"""Forward-return labels under the execution model (SPEC §1).

A signal decided after close(D) fills at open(D+1) under the default ``T1_OPEN`` model, so the
return a factor at D can earn over H sessions is::

    label(D, H) = open(D+1+H) / open(D+1) - 1          (T1_OPEN, the default)
    label(D, H) = close(D+H) / close(D) - 1            (CLOSE, comparison only)

Inputs are wide panels (dates × symbols) of *adjusted* prices whose rows are consecutive
sessions: H counts rows, so the panel must not skip sessions (``rotation.cross_section.wide``
over a full calendar gives one row per session; a missing bar is a NaN cell, not a missing row).

Labels are the only frames in the project allowed to look forward. Consequences:

- the last ``H + 1`` rows (``T1_OPEN``) or ``H`` rows (``CLOSE``) are NaN: their outcome is not
  known yet, and they must not be filled;
- a label at D is realised only at ``D + 1 + H`` (``label_end_dates``), so a training window
  ending at D_train must be purged of every row whose label ends after the first test date,
  i.e. the last H (+1 under ``T1_OPEN``) rows before the test window (plus any embargo).

A label is NaN when either price is missing (no bar, suspension): no forward filling, since a
fund with no bar at D+1 could not have been bought there.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

import numpy as np
import pandas as pd

DEFAULT_HORIZONS: tuple[int, ...] = (1, 5, 10, 20)


class ExecutionModel(StrEnum):
    """When an order decided on D's data fills."""

    T1_OPEN = "T1_OPEN"  # at open(D+1): the default and the only one used for trading
    CLOSE = "CLOSE"  # at close(D): optimistic, for comparison only


def _entry_offset(model: ExecutionModel | str) -> int:
    """Rows between the signal date and the entry price (1 for T1_OPEN, 0 for CLOSE)."""
    return 1 if ExecutionModel(model) is ExecutionModel.T1_OPEN else 0


def forward_return_values(prices: np.ndarray, horizon: int, offset: int) -> np.ndarray:
    """``out[t] = prices[t+offset+horizon] / prices[t+offset] - 1``; NaN past the end.

    Plain vectorised numpy (two shifted views): no loop worth a numba kernel here.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    values = np.asarray(prices, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    n = values.shape[0]
    end = n - offset - horizon  # rows with both prices inside the panel
    if end > 0:
        entry = values[offset:offset + end]
        exit_ = values[offset + horizon:offset + horizon + end]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:end] = exit_ / entry - 1.0
    # NaN where either price is missing (NaN / x and x / NaN are NaN already); a zero entry
    # price is a data error the quality gates block, never an infinite return.
    out[~np.isfinite(out)] = np.nan
    return out


def forward_return(prices: pd.DataFrame, horizon: int,
                   model: ExecutionModel | str = ExecutionModel.T1_OPEN) -> pd.DataFrame:
    """One horizon's label panel (same index and columns as ``prices``).

    ``prices`` are adjusted opens for ``T1_OPEN`` and adjusted closes for ``CLOSE``.
    """
    out = forward_return_values(prices.to_numpy(dtype=np.float64), int(horizon),
                                _entry_offset(model))
    return pd.DataFrame(out, index=prices.index, columns=prices.columns)


def forward_returns(prices: pd.DataFrame, horizons: Iterable[int] = DEFAULT_HORIZONS,
                    model: ExecutionModel | str = ExecutionModel.T1_OPEN
                    ) -> dict[int, pd.DataFrame]:
    """Label panels by horizon: ``{H: label(·, H)}`` (see the module docstring for timing)."""
    return {int(h): forward_return(prices, int(h), model) for h in horizons}


def label_end_dates(index: pd.Index, horizon: int,
                    model: ExecutionModel | str = ExecutionModel.T1_OPEN) -> pd.Series:
    """The session at which each row's label is realised (NaT when beyond the panel).

    Purging uses it: a training row at D may feed a test window starting at S only if
    ``label_end_dates(...)[D] < S``.
    """
    step = _entry_offset(model) + int(horizon)
    ends = pd.Series(index, index=index).shift(-step)
    ends.name = "label_end"
    return ends

"""Walk-forward windows: lengths, purge and embargo, rolling versus anchored, no overlap."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
from pydantic import ValidationError

from rotation.calendar import get_calendar
from rotation.wfo import WfoConfig, wfo_windows, windows_frame

SESSIONS = get_calendar("XSHG").sessions("2019-01-02", "2025-12-31")


def _pos(day: pd.Timestamp) -> int:
    return int(SESSIONS.get_loc(day))


@pytest.mark.parametrize("mode", ["rolling", "anchored"])
@pytest.mark.parametrize(("horizon", "embargo"), [(0, 0), (5, 0), (20, 3)])
def test_windows_respect_lengths_purge_and_embargo(mode: str, horizon: int, embargo: int
                                                   ) -> None:
    cfg = WfoConfig(in_sample=252, out_of_sample=60, step=60, mode=mode, horizon=horizon,
                    embargo=embargo)
    windows = wfo_windows(SESSIONS, cfg)
    assert windows
    for w in windows:
        assert _pos(w.oos_end) - _pos(w.oos_start) + 1 == 60
        # The last in-sample label, open(is_end + 1 + H), is observed before the OOS starts.
        assert _pos(w.oos_start) - _pos(w.is_end) - 1 == horizon + 1 + embargo
        assert _pos(w.is_end) + 1 + horizon < _pos(w.oos_start)
        if mode == "rolling":
            assert _pos(w.is_end) - _pos(w.is_start) + 1 == 252
        else:
            assert w.is_start == SESSIONS[0]
    # OOS blocks step by 60 sessions without overlapping; the last one fits in the data.
    starts = [_pos(w.oos_start) for w in windows]
    assert all(b - a == 60 for a, b in itertools.pairwise(starts))
    assert _pos(windows[-1].oos_end) <= len(SESSIONS) - 1
    assert _pos(windows[-1].oos_end) + 60 > len(SESSIONS) - 1
    # Count: every complete OOS block after the first in-sample span and the gap.
    first = 252 + horizon + 1 + embargo
    assert len(windows) == (len(SESSIONS) - first - 60) // 60 + 1


def test_keys_are_unique_sortable_partition_keys() -> None:
    windows = wfo_windows(SESSIONS, WfoConfig())
    keys = [w.key for w in windows]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert keys[0] == f"w000_{windows[0].oos_start:%Y-%m-%d}"
    frame = windows_frame(windows)
    assert list(frame.columns) == ["window", "is_start", "is_end", "oos_start", "oos_end"]


def test_too_short_history_gives_no_window() -> None:
    assert wfo_windows(SESSIONS[:300], WfoConfig()) == []


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValidationError, match="in_sample"):
        WfoConfig(in_sample=5)
    with pytest.raises(ValidationError, match="mode"):
        WfoConfig(mode="expanding")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ascending"):
        wfo_windows(SESSIONS[::-1], WfoConfig())

"""The A-share continuous-trading clock (Shanghai and Shenzhen): 09:30–11:30 and 13:00–15:00
Asia/Shanghai, 240 minutes. The one place the paper broker's slice schedule
(``trading.paper.child_schedule``) and the VWAP volume profile (``trading.volume_profile``)
take the session's minutes from."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")
# Continuous trading (minutes after midnight, Shanghai): the morning and afternoon halves.
MORNING = (9 * 60 + 30, 11 * 60 + 30)
AFTERNOON = (13 * 60, 15 * 60)
SESSION_MINUTES = (MORNING[1] - MORNING[0]) + (AFTERNOON[1] - AFTERNOON[0])


def clock_at(minutes: float) -> dt.time:
    """The wall time (Shanghai, to the second) ``minutes`` of continuous trading after 09:30
    (0..240; the midday break skipped: 120 is 11:30)."""
    minutes = min(max(minutes, 0.0), float(SESSION_MINUTES))
    morning = MORNING[1] - MORNING[0]
    clock = MORNING[0] + minutes if minutes <= morning else AFTERNOON[0] + minutes - morning
    seconds = round(clock * 60)
    return dt.time(seconds // 3600, seconds % 3600 // 60, seconds % 60)


def minutes_at(clock: dt.time) -> float:
    """Minutes of continuous trading from 09:30 to ``clock`` (Shanghai wall time): the inverse
    of :func:`clock_at`, 0 before the open, 120 over the midday break, 240 from the close."""
    at = clock.hour * 60 + clock.minute + clock.second / 60
    morning = min(max(at, MORNING[0]), MORNING[1]) - MORNING[0]
    afternoon = min(max(at, AFTERNOON[0]), AFTERNOON[1]) - AFTERNOON[0]
    return morning + afternoon


def slice_bounds(slices: int) -> list[float]:
    """Minutes after 09:30 where each of ``slices`` slices begins and ends (n + 1 edges). Slice
    k (1..n) is scheduled at fraction (k−1)/(n−1) of the session (``trading.paper.
    child_schedule``) and covers the minutes nearest to it: it ends halfway to slice k+1's
    time, the first begins at the open and the last ends at the close."""
    if slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")
    if slices == 1:
        return [0.0, float(SESSION_MINUTES)]
    inner = [(k + 0.5) / (slices - 1) * SESSION_MINUTES for k in range(slices - 1)]
    return [0.0, *inner, float(SESSION_MINUTES)]


def slice_end(session: dt.date, slice_index: int, slices: int) -> dt.datetime:
    """When slice ``slice_index`` (1..n) of ``session`` ends (Shanghai time)."""
    if not 1 <= slice_index <= slices:
        raise ValueError(f"slice {slice_index} is not one of 1..{slices}")
    return dt.datetime.combine(session, clock_at(slice_bounds(slices)[slice_index]), SHANGHAI)


def minute_of_session(at: dt.datetime) -> int | None:
    """0..239 for a minute of continuous trading (Shanghai wall time; 11:30 and 15:00, the
    halves' closing minutes, belong to the minute before), None outside it."""
    clock = at.hour * 60 + at.minute
    morning = MORNING[1] - MORNING[0]
    if MORNING[0] <= clock <= MORNING[1]:
        return min(clock - MORNING[0], morning - 1)
    if AFTERNOON[0] <= clock <= AFTERNOON[1]:
        return morning + min(clock - AFTERNOON[0], AFTERNOON[1] - AFTERNOON[0] - 1)
    return None

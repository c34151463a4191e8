"""Trading calendar backed by ``exchange_calendars`` (XSHG by default, XNYS for a US universe)."""

from __future__ import annotations

from functools import lru_cache

import exchange_calendars as xcals
import numpy as np
import pandas as pd


class TradingCalendar:
    """Sessions of one exchange, as naive midnight timestamps (the convention of every frame)."""

    def __init__(self, name: str = "XSHG", start: str = "2005-01-01") -> None:
        self.name = name
        self.start = start
        self._cal = _exchange_calendar(name, start)
        self._sessions = pd.DatetimeIndex(self._cal.sessions.tz_localize(None)).normalize()
        self._session_set = set(self._sessions.asi8.tolist())

    @property
    def timezone(self) -> str:
        return str(self._cal.tz)

    @property
    def first_session(self) -> pd.Timestamp:
        return self._sessions[0]

    @property
    def last_session(self) -> pd.Timestamp:
        return self._sessions[-1]

    def sessions(self, start: object = None, end: object = None) -> pd.DatetimeIndex:
        lo = self._sessions[0] if start is None else pd.Timestamp(start)
        hi = self._sessions[-1] if end is None else pd.Timestamp(end)
        return self._sessions[(self._sessions >= lo) & (self._sessions <= hi)]

    def is_session(self, day: object) -> bool:
        return pd.Timestamp(day).normalize().value in self._session_set

    def session_mask(self, dates: pd.Series | pd.DatetimeIndex) -> np.ndarray:
        values = pd.DatetimeIndex(dates).normalize().asi8
        return np.isin(values, self._sessions.asi8)

    def session_index(self, dates: pd.Series | pd.DatetimeIndex) -> np.ndarray:
        """Ordinal of each date in the session list (for dates that are sessions)."""
        return self._sessions.searchsorted(pd.DatetimeIndex(dates).normalize())

    def offset(self, day: object, sessions: int) -> pd.Timestamp:
        """The session ``sessions`` away from ``day`` (which must be a session)."""
        pos = int(self._sessions.searchsorted(pd.Timestamp(day).normalize()))
        pos = min(max(pos + sessions, 0), len(self._sessions) - 1)
        return self._sessions[pos]

    def previous_session(self, day: object) -> pd.Timestamp:
        pos = int(self._sessions.searchsorted(pd.Timestamp(day).normalize())) - 1
        return self._sessions[max(pos, 0)]

    def next_session_on_or_after(self, day: object) -> pd.Timestamp:
        pos = int(self._sessions.searchsorted(pd.Timestamp(day).normalize()))
        return self._sessions[min(pos, len(self._sessions) - 1)]

    def weekday_holidays(self, start: object = None, end: object = None) -> pd.DatetimeIndex:
        """Monday–Friday dates that are not sessions: the exclusions of a session partitioning."""
        lo = self._sessions[0] if start is None else pd.Timestamp(start)
        hi = self._sessions[-1] if end is None else pd.Timestamp(end)
        weekdays = pd.bdate_range(lo, hi)
        return weekdays[~np.isin(weekdays.asi8, self._sessions.asi8)]

    def session_close(self, day: object) -> pd.Timestamp:
        """Close of a session, timezone-aware (UTC)."""
        return self._cal.session_close(pd.Timestamp(day).normalize())

    def latest_closed_session(self, now: pd.Timestamp) -> pd.Timestamp:
        """The newest session whose close is at or before ``now`` (timezone-aware)."""
        local = now.tz_convert(self.timezone)
        session = self.previous_session(pd.Timestamp(local.date()) + pd.Timedelta(days=1))
        if self.session_close(session) > now:
            session = self.previous_session(session)
        return session


@lru_cache(maxsize=16)
def _exchange_calendar(name: str, start: str) -> xcals.ExchangeCalendar:
    return xcals.get_calendar(name, start=start)


@lru_cache(maxsize=16)
def get_calendar(name: str = "XSHG", start: str = "2005-01-01") -> TradingCalendar:
    return TradingCalendar(name, start)

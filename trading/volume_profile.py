"""The intraday volume profile VWAP slicing follows (issue 18 item 4, requirement 002 §2.4).

A :class:`VolumeProfile` is the expected share of a session's volume traded in each of the 240
minutes of A-share continuous trading (:mod:`trading.session_clock`: minute 0 is 09:30, minute
120 is 13:00). It comes from one of two places:

* a configured curve (:func:`profile_from_curve`): weights over equal-length buckets of the
  session (any number from 1 to 240), spread evenly over each bucket's minutes.
  :data:`DEFAULT_CURVE` is a *typical* A-share U shape over the eight half hours (heavy at the
  open, light at midday, rising into the close) — an illustrative default, not measured from
  our data;
* stored 1-minute bars (:func:`profile_from_bars`; ``resources.execution.learn_profile`` reads
  them): the quote relay's Redis stream ``<ns>:quotes:bars`` (:mod:`trading.quotes`, vn.py
  BarGenerator bars, :func:`bars_of_stream`). Each
  (fund, session) with enough minutes gives each minute's share of that session's volume; the
  profile is the average share over the newest ``sessions`` sessions.

:meth:`VolumeProfile.slice_weights` maps the profile onto ``n`` slices: slice k (1..n)
executes at its scheduled time (``trading.paper.child_schedule``: fraction (k−1)/(n−1) of the
day) and covers the minutes nearest to it (``trading.session_clock.slice_bounds``), so the first
and last slices cover half-width buckets; a slice ends (``slice_end``: its cancel/replace time)
halfway to the next one's time.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trading.session_clock import SESSION_MINUTES, SHANGHAI, minute_of_session, slice_bounds

# A typical A-share U shape over the eight half hours of the session (share of the day's
# volume, 09:30–10:00 first); illustrative, not measured from our data.
DEFAULT_CURVE: tuple[float, ...] = (0.18, 0.13, 0.11, 0.10, 0.10, 0.10, 0.12, 0.16)


class ProfileError(ValueError):
    """A volume profile cannot be built; the message names what is wrong and where."""


@dataclass(frozen=True)
class VolumeProfile:
    """Share of the session's volume per minute (240 non-negative weights summing to 1)."""

    minutes: tuple[float, ...]
    source: str                      # where it came from (the curve, or the stream and count)

    def __post_init__(self) -> None:
        if len(self.minutes) != SESSION_MINUTES:
            raise ProfileError(f"volume profile ({self.source}): {len(self.minutes)} minute "
                               f"weights, expected {SESSION_MINUTES}")
        if not math.isclose(sum(self.minutes), 1.0, abs_tol=1e-9):
            raise ProfileError(f"volume profile ({self.source}): weights sum to "
                               f"{sum(self.minutes)}, not 1")

    def slice_weights(self, slices: int) -> list[float]:
        """The profile's volume in each of ``slices`` slices (sums to 1): slice k covers the
        minutes nearest its scheduled time (``trading.session_clock.slice_bounds``)."""
        if slices < 1:
            raise ProfileError(f"slices must be >= 1, got {slices}")
        edges = slice_bounds(slices)
        return [_volume_between(self.minutes, edges[k], edges[k + 1]) for k in range(slices)]

    def as_dict(self) -> dict[str, Any]:
        """Half-hour shares, for a ledger audit or run metadata."""
        return {"source": self.source,
                "half_hours": [round(sum(self.minutes[i:i + 30]), 6)
                               for i in range(0, SESSION_MINUTES, 30)]}


def _volume_between(minutes: Sequence[float], start: float, end: float) -> float:
    """Volume of the minutes in [start, end) (fractional minutes pro rata)."""
    total = 0.0
    for i in range(math.floor(start), min(math.ceil(end), len(minutes))):
        overlap = min(end, i + 1) - max(start, i)
        if overlap > 0:
            total += minutes[i] * overlap
    return total


def _normalised(weights: Sequence[float], where: str) -> list[float]:
    if not weights:
        raise ProfileError(f"{where}: no weights")
    bad = [(i, w) for i, w in enumerate(weights)
           if not isinstance(w, int | float) or isinstance(w, bool) or not math.isfinite(w)
           or w < 0]
    if bad:
        i, w = bad[0]
        raise ProfileError(f"{where}: weight {i} is {w!r}; weights must be finite and >= 0")
    total = float(sum(weights))
    if total <= 0:
        raise ProfileError(f"{where}: the weights sum to 0; nothing to normalise")
    return [float(w) / total for w in weights]


def profile_from_curve(curve: Sequence[float] = DEFAULT_CURVE, *,
                       where: str = "execution.vwap.curve") -> VolumeProfile:
    """A profile from bucket weights over equal parts of the session (1 to 240 buckets; the
    bucket of minute i is ``i * len(curve) // 240``)."""
    if len(curve) > SESSION_MINUTES:
        raise ProfileError(f"{where}: {len(curve)} buckets, at most {SESSION_MINUTES} (one "
                           "per minute)")
    shares = _normalised(list(curve), where)
    m = len(shares)
    bucket_of = [i * m // SESSION_MINUTES for i in range(SESSION_MINUTES)]
    size = [bucket_of.count(b) for b in range(m)]
    minutes = tuple(shares[b] / size[b] for b in bucket_of)
    return VolumeProfile(_renormalised(minutes), source=f"curve ({m} buckets)")


def _renormalised(minutes: Sequence[float]) -> tuple[float, ...]:
    total = sum(minutes)
    return tuple(w / total for w in minutes)


@dataclass(frozen=True)
class MinuteBar:
    symbol: str
    minute: dt.datetime              # aware; its Shanghai date is the session
    volume: float


def profile_from_bars(bars: Iterable[MinuteBar], *, sessions: int = 20, min_sessions: int = 5,
                      min_coverage: float = 0.9, where: str = "1-minute bars",
                      symbols: Iterable[str] | None = None) -> VolumeProfile:
    """The average minute share of a session's volume over the newest ``sessions`` sessions
    (each (fund, session) with bars on at least ``min_coverage`` of the 240 minutes and some
    volume counts once); fewer than ``min_sessions`` of them is an error naming ``where``."""
    if sessions < 1 or min_sessions < 1 or not 0 < min_coverage <= 1:
        raise ProfileError(f"{where}: sessions ({sessions}) and min_sessions ({min_sessions}) "
                           f"must be >= 1 and min_coverage ({min_coverage}) in (0, 1]")
    wanted = set(symbols) if symbols is not None else None
    days: dict[tuple[str, dt.date], dict[int, float]] = {}
    seen = 0
    for bar in bars:
        if wanted is not None and bar.symbol not in wanted:
            continue
        seen += 1
        local = bar.minute.astimezone(SHANGHAI)
        minute = minute_of_session(local)
        if minute is None or not math.isfinite(bar.volume) or bar.volume < 0:
            continue
        day = days.setdefault((bar.symbol, local.date()), {})
        day[minute] = day.get(minute, 0.0) + bar.volume
    usable = {key: vols for key, vols in days.items()
              if len(vols) >= min_coverage * SESSION_MINUTES and sum(vols.values()) > 0}
    newest = sorted({d for _, d in usable}, reverse=True)[:sessions]
    chosen = [vols for (_, d), vols in usable.items() if d in set(newest)]
    if len({d for (_, d) in usable if d in set(newest)}) < min_sessions:
        raise ProfileError(
            f"{where}: {len(set(d for _, d in usable))} usable session(s) (bars on >= "
            f"{min_coverage:.0%} of the {SESSION_MINUTES} minutes) among {seen} bar(s) of "
            f"{len(days)} fund-session(s); at least {min_sessions} needed to learn a profile")
    shares = [0.0] * SESSION_MINUTES
    for vols in chosen:
        total = sum(vols.values())
        for minute, volume in vols.items():
            shares[minute] += volume / total / len(chosen)
    return VolumeProfile(_renormalised(shares),
                         source=f"{where}: {len(newest)} session(s), {len(chosen)} "
                                f"fund-session(s), newest {newest[0]}")


def bars_of_stream(entries: Iterable[tuple[Any, Mapping[Any, Any]]], where: str
                   ) -> list[MinuteBar]:
    """Minute bars from Redis stream entries as the relay writes them
    (``trading.live_prices.bar_fields``); an entry that does not parse is an error naming
    its id."""
    out = []
    for entry_id, raw in entries:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        try:
            minute = dt.datetime.fromisoformat(fields["minute"])
            if minute.tzinfo is None:
                raise ValueError("minute without its offset")
            out.append(MinuteBar(symbol=fields["symbol"], minute=minute,
                                 volume=float(fields["volume"])))
        except (KeyError, ValueError) as exc:
            raise ProfileError(f"{where}: entry {_text(entry_id)} is not a 1-minute bar "
                               f"({type(exc).__name__}: {exc})") from exc
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

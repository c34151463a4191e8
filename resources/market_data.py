"""Market data: one resource interface, three implementations (sample, files, akshare)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import pandas as pd

from rotation.bars import Instrument, LoadResult
from rotation.calendar import TradingCalendar, get_calendar
from rotation.market import DEFAULT_MARKET, MarketProfile, load_market

if TYPE_CHECKING:
    from resources.cache import CacheStats, RedisCache


class MarketDataResource(dg.ConfigurableResource):
    """Daily bars for a universe of funds, in the canonical frame of :mod:`rotation.bars`.

    Implementations differ only in where bars come from; assets depend on this interface.
    """

    calendar_name: str = "XSHG"
    calendar_start: str = "2005-01-01"

    @property
    def calendar(self) -> TradingCalendar:
        return get_calendar(self.calendar_name, self.calendar_start)

    @property
    def label(self) -> str:
        raise NotImplementedError

    @property
    def history_start(self) -> str:
        """First session the source has data for (where session partitions start)."""
        raise NotImplementedError

    @property
    def history_end(self) -> str:
        """Last session the source has data for (the natural end of a full backfill)."""
        raise NotImplementedError

    def load(self, start: object, end: object) -> LoadResult:
        raise NotImplementedError

    def source_version(self) -> str:
        """Changes whenever what ``load`` returns may change: the cache key's data version."""
        raise NotImplementedError

    def load_cached(self, cache: RedisCache, start: pd.Timestamp, end: pd.Timestamp,
                    stats: CacheStats, warn: Callable[[str], None] | None = None) -> LoadResult:
        """:meth:`load` through the Redis cache, keyed by this source, the range and
        :meth:`source_version` (what ``raw_bars`` fetched for a session, the execution that
        evening reads back instead of parsing the source again)."""
        days = (pd.Timestamp(start).date().isoformat(), pd.Timestamp(end).date().isoformat())
        return cache.cached("bars", (self.label, *days), self.source_version(),
                            lambda: self.load(start, end), stats, warn=warn)

    def instruments(self) -> list[Instrument]:
        raise NotImplementedError

    def accepted_anomalies(self) -> dict[tuple[str, str, str], str]:
        """Reviewed exceptions to quality rules: (symbol, YYYY-MM-DD, rule) -> reason."""
        return {}

    def market(self) -> MarketProfile:
        """The market profile of this source (currency, symbols, lots, fees, classes)."""
        return load_market(DEFAULT_MARKET)


class SampleMarketData(MarketDataResource):
    """The built-in generated market (the embedded default): deterministic, no network."""

    seed: int = 20240601
    n_funds: int = 20
    start: str = "2019-01-02"
    end: str = "2025-12-31"

    @property
    def _spec(self):
        from rotation.sources.sample import SampleMarketSpec

        return SampleMarketSpec(
            seed=self.seed, n_funds=self.n_funds, start=self.start, end=self.end,
            calendar=self.calendar_name,
        )

    @property
    def label(self) -> str:
        return f"sample market (generated, seed {self.seed}, {self.n_funds} funds)"

    @property
    def history_start(self) -> str:
        return str(self.calendar.next_session_on_or_after(self.start).date())

    @property
    def history_end(self) -> str:
        return str(self.calendar.previous_session(pd.Timestamp(self.end) + pd.Timedelta(days=1))
                   .date())

    def load(self, start: object, end: object) -> LoadResult:
        from rotation.sources.sample import load_sample_bars

        return load_sample_bars(self._spec, start, end)

    def source_version(self) -> str:
        # Generated deterministically from the spec (and the generator's code).
        from rotation.sources import sample

        code = Path(sample.__file__).stat().st_mtime_ns
        return _digest(repr(self._spec), code)

    def instruments(self) -> list[Instrument]:
        from rotation.sources.sample import sample_instruments

        return sample_instruments(self._spec)


class FileMarketData(MarketDataResource):
    """A directory of CSV/Parquet files described by a dataset config (config/datasets/*.yaml)."""

    root: str
    dataset_config: str

    @cached_property
    def _files(self):
        from rotation.sources.files import FileMarketSource, load_dataset_spec

        return FileMarketSource(self.root, load_dataset_spec(self.dataset_config))

    @property
    def label(self) -> str:
        return f"files: {self._files.spec.name} at {self.root}"

    @property
    def history_start(self) -> str:
        return self._files.spec.history_start

    @property
    def history_end(self) -> str:
        return self._files.spec.history_end

    @property
    def calendar(self) -> TradingCalendar:
        spec = self._files.spec
        return get_calendar(spec.calendar_name, spec.calendar_start)

    def load(self, start: object, end: object) -> LoadResult:
        return self._files.load(start, end)

    def source_version(self) -> str:
        """Every file under the root (name, size, modification time) and the dataset config."""
        files = sorted(p for p in Path(self.root).rglob("*") if p.is_file())
        stats = [(str(p.relative_to(self.root)), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in files]
        return _digest(stats, Path(self.dataset_config).read_bytes())

    def instruments(self) -> list[Instrument]:
        return self._files.instruments()

    def market(self) -> MarketProfile:
        return self._files.profile

    def accepted_anomalies(self) -> dict[tuple[str, str, str], str]:
        return {
            (a.symbol, a.date.isoformat(), a.rule): a.reason
            for a in self._files.spec.accepted_anomalies
        }


class AkshareMarketData(MarketDataResource):
    """AKShare's fund history (eastmoney): the real network client, retried with backoff."""

    symbols: list[str]
    adjust: str = ""
    start: str = "2020-01-02"
    retries: int = 4
    backoff_seconds: float = 1.0

    @property
    def label(self) -> str:
        return f"akshare fund_etf_hist_em ({len(self.symbols)} funds, adjust={self.adjust!r})"

    @property
    def history_start(self) -> str:
        return str(self.calendar.next_session_on_or_after(self.start).date())

    @property
    def history_end(self) -> str:
        # A live feed: today's session is the newest that can exist.
        return str(self.calendar.last_session.date())

    def _feed(self):
        from rotation.sources.akshare_feed import AkshareFeed, AkshareFeedSpec

        return AkshareFeed(
            AkshareFeedSpec(
                symbols=self.symbols, adjust=self.adjust, retries=self.retries,
                backoff_seconds=self.backoff_seconds,
            )
        )

    def load(self, start: object, end: object) -> LoadResult:
        return self._feed().load(pd.Timestamp(start), pd.Timestamp(end))

    def source_version(self) -> str:
        # The vendor may revise history (adjustments): a fetch is reused within the day only.
        return _digest(self.symbols, self.adjust, dt.date.today().isoformat())

    def instruments(self) -> list[Instrument]:
        return self._feed().instruments()


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]

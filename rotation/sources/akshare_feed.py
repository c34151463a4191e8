"""AKShare (eastmoney) ETF daily history, fetched live and normalised to canonical bars.

This is the client behind the platform's ``akshare`` market-data resource. The network call is
the only thing it adds to the file sources: column names and units come from configuration
(:class:`AkshareFeedSpec.columns`, defaulting to what ``akshare.fund_etf_hist_em`` returns) and
go through :func:`rotation.sources.mapping.normalise`, so structural problems in a response
become issues exactly as they do for files.

``akshare`` is an optional extra (``pip install -e '.[akshare]'``) and is imported only when no
fetch function is injected, so tests and file-only deployments never need it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rotation.bars import (
    Instrument,
    LoadResult,
    PriceBasis,
    conform_bars,
    empty_bars,
    empty_issues,
)
from rotation.market import DEFAULT_MARKET, ClassAssignment, load_market, resolve
from rotation.sources.mapping import ColumnMap, SourceSchema, normalise

_PRICE_BASIS: dict[str, PriceBasis] = {"": "raw", "qfq": "forward_adjusted",
                                       "hfq": "backward_adjusted"}

try:  # requests is what akshare uses underneath; its errors are network errors too.
    import requests

    _REQUEST_ERRORS: tuple[type[BaseException], ...] = (requests.exceptions.RequestException,)
except ImportError:  # pragma: no cover - requests ships with akshare and most environments
    _REQUEST_ERRORS = ()

logger = logging.getLogger(__name__)

FEED_NAME = "fund_etf_hist_em"
# Network-type failures are worth retrying; anything else (ValueError, KeyError from a changed
# response, TypeError from a bad call) will fail the same way again, so it is raised at once.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    OSError,
    *_REQUEST_ERRORS,
)
# The open-ended range akshare itself uses when no dates are given.
_EARLIEST = pd.Timestamp("1970-01-01")
_LATEST = pd.Timestamp("2050-01-01")
_SYMBOL = re.compile(r"^\d{6}$")


def default_columns() -> SourceSchema:
    """The schema of ``akshare.fund_etf_hist_em``: Chinese headers, volume in lots of 100 units,
    amount (成交额) in CNY. 振幅/涨跌幅/涨跌额/换手率 are derived fields and are not read."""
    return SourceSchema(
        schemas=[
            ColumnMap(
                date="日期",
                open="开盘",
                high="最高",
                low="最低",
                close="收盘",
                volume="成交量",
                amount="成交额",
            )
        ],
        volume_multiplier=100.0,
        amount_multiplier=1.0,
    )


class AkshareFeedSpec(BaseModel):
    """What to fetch and how hard to try.

    ``adjust`` defaults to raw (``""``): research applies its own adjustment, and eastmoney's
    adjusted series are unsuitable as stored history. Forward-adjusted (qfq) levels depend on
    the download date, so two downloads cannot be mixed; both qfq and hfq are rounded to three
    decimals, which distorts returns of low-priced funds; and execution needs the raw prices
    that actually trade (lot sizes, price limits). ``qfq``/``hfq`` remain available for ad-hoc
    comparison; :attr:`price_basis` tells consumers which one they got.
    """

    model_config = ConfigDict(extra="forbid")

    symbols: list[str] = Field(min_length=1, description="6-digit fund codes, e.g. 510300")
    adjust: Literal["", "qfq", "hfq"] = ""
    period: Literal["daily"] = "daily"
    retries: int = Field(default=4, ge=0,
                         description="retries after the first attempt, per symbol")
    backoff_seconds: float = Field(default=1.0, gt=0,
                                   description="first retry delay; doubles each time")
    max_backoff_seconds: float = Field(default=30.0, gt=0)
    timeout_seconds: float = Field(
        default=20.0, gt=0,
        description="wall-clock limit for one fetch call, then it counts as failed")
    columns: SourceSchema = Field(default_factory=default_columns)
    instrument_classes: ClassAssignment = Field(
        default_factory=ClassAssignment,
        description="classes of config/markets/cn_funds.yaml by symbol or code prefix")

    @field_validator("symbols")
    @classmethod
    def _six_digit_unique(cls, symbols: list[str]) -> list[str]:
        bad = [s for s in symbols if not _SYMBOL.match(s)]
        if bad:
            raise ValueError(f"symbols must be 6-digit codes such as '510300'; got {bad}")
        duplicated = sorted({s for s in symbols if symbols.count(s) > 1})
        if duplicated:
            raise ValueError(f"duplicate symbols {duplicated}")
        return symbols

    @property
    def price_basis(self) -> PriceBasis:
        """Same vocabulary as a file dataset's ``price_basis``."""
        return _PRICE_BASIS[self.adjust]


class AkshareUnavailableError(ImportError):
    """akshare is needed (no fetch function was injected) but not installed."""


class AkshareFetchError(RuntimeError):
    """Fetching one symbol failed for good: retries exhausted, or a non-network error."""

    def __init__(
        self,
        symbol: str,
        attempts: int,
        last_error: BaseException,
        *,
        start: str = "",
        end: str = "",
        retryable: bool = True,
    ) -> None:
        self.symbol = symbol
        self.attempts = attempts
        self.last_error = last_error
        self.start = start
        self.end = end
        self.retryable = retryable
        plural = "attempt" if attempts == 1 else "attempts"
        why = (
            "network error, retries exhausted"
            if retryable
            else "non-network error, not retried (has the akshare response format changed?)"
        )
        super().__init__(
            f"akshare {FEED_NAME} failed for {symbol} over {start}..{end} after {attempts} "
            f"{plural} ({why}): {type(last_error).__name__}: {last_error}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only state must survive pickling (Dagster ships errors across processes).
        return (
            _rebuild_fetch_error,
            (self.symbol, self.attempts, self.last_error, self.start, self.end, self.retryable),
        )


def _rebuild_fetch_error(
    symbol: str, attempts: int, last_error: BaseException, start: str, end: str, retryable: bool
) -> AkshareFetchError:
    return AkshareFetchError(
        symbol, attempts, last_error, start=start, end=end, retryable=retryable
    )


FetchFn = Callable[..., pd.DataFrame]


class AkshareFeed:
    """Fetches each configured symbol from AKShare and returns canonical bars plus issues.

    ``fetch`` stands in for ``akshare.fund_etf_hist_em`` (same keyword arguments) so tests can
    replay recorded responses; ``sleep`` is injectable so backoff can be checked without waiting.
    """

    def __init__(
        self,
        spec: AkshareFeedSpec,
        fetch: FetchFn | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self._fetch = fetch
        self._sleep = sleep

    # -- universe ---------------------------------------------------------------------------
    def instruments(self) -> list[Instrument]:
        """The configured symbols with the A-share fund profile's rules: exchange by code,
        STAR-market (588) funds in the 20 % class, the rest by ``instrument_classes``
        (default: domestic equity)."""
        rows = [{"symbol": s} for s in self.spec.symbols]
        return resolve(load_market(DEFAULT_MARKET), self.spec.instrument_classes, rows)

    # -- bars -------------------------------------------------------------------------------
    def load(self, start: object = None, end: object = None) -> LoadResult:
        """Bars with ``start <= date <= end`` for every configured symbol (None = open-ended).

        Raises :class:`AkshareFetchError` if a symbol cannot be fetched: a partial universe
        would silently change what the strategy can hold, so it is never returned.
        """
        lo = _EARLIEST if start is None else pd.Timestamp(start).normalize()
        hi = _LATEST if end is None else pd.Timestamp(end).normalize()
        if lo > hi:
            raise ValueError(f"start {lo.date()} is after end {hi.date()}")
        fetch = self._resolve_fetch()
        frames: list[pd.DataFrame] = []
        issue_rows: list[dict[str, object]] = []
        sources: list[str] = []
        for symbol in self.spec.symbols:
            label = f"akshare:{FEED_NAME}:{symbol}"
            raw = self._fetch_with_retry(fetch, symbol, lo, hi)
            bars, found = normalise(raw, self.spec.columns, source=label, symbol=symbol)
            issue_rows.extend(found)
            sources.append(label)
            if not bars.empty:
                frames.append(bars)
        bars = pd.concat(frames, ignore_index=True) if frames else empty_bars()
        # The API already limits the range; filter anyway so a loose server cannot leak rows.
        bars = bars.loc[(bars["date"] >= lo) & (bars["date"] <= hi)]
        issues = pd.DataFrame(issue_rows) if issue_rows else empty_issues()
        return LoadResult(bars=conform_bars(bars), issues=issues, sources=sources)

    def _resolve_fetch(self) -> FetchFn:
        """The injected fetch, else ``akshare.fund_etf_hist_em`` (imported only now)."""
        if self._fetch is not None:
            return self._fetch
        try:
            import akshare  # optional extra: imported on first use only
        except ImportError as exc:
            raise AkshareUnavailableError(
                "the akshare market-data source needs the optional 'akshare' package, which is "
                "not installed; install it with: pip install -e '.[akshare]' "
                f"(import failed: {exc})"
            ) from exc
        self._fetch = akshare.fund_etf_hist_em
        return self._fetch

    def _fetch_with_retry(
        self, fetch: FetchFn, symbol: str, lo: pd.Timestamp, hi: pd.Timestamp
    ) -> pd.DataFrame:
        """One symbol's raw frame; network errors retried with capped exponential backoff."""
        start, end = lo.strftime("%Y%m%d"), hi.strftime("%Y%m%d")
        kwargs = {
            "symbol": symbol,
            "period": self.spec.period,
            "start_date": start,
            "end_date": end,
            "adjust": self.spec.adjust,
        }
        attempts = self.spec.retries + 1
        for attempt in range(attempts):
            try:
                raw = self._call_with_timeout(fetch, kwargs)
            except RETRYABLE_ERRORS as exc:
                if attempt + 1 >= attempts:
                    raise AkshareFetchError(symbol, attempt + 1, exc, start=start, end=end) from exc
                delay = min(self.spec.backoff_seconds * 2**attempt, self.spec.max_backoff_seconds)
                logger.warning(
                    "akshare %s %s %s..%s: attempt %d of %d failed (%s: %s); retrying in %.1fs",
                    FEED_NAME,
                    symbol,
                    start,
                    end,
                    attempt + 1,
                    attempts,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                self._sleep(delay)
                continue
            except Exception as exc:
                raise AkshareFetchError(
                    symbol, attempt + 1, exc, start=start, end=end, retryable=False
                ) from exc
            return _as_frame(raw, symbol, attempt + 1, start, end)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def _call_with_timeout(self, fetch: FetchFn, kwargs: dict[str, str]) -> object:
        """Run ``fetch`` under a wall-clock limit. akshare takes no timeout argument (and retries
        pagination internally), so the call runs in a daemon thread that is abandoned, not
        killed, when the limit passes; the attempt then counts as a TimeoutError."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = fetch(**kwargs)
            except BaseException as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=target, name=f"akshare-{kwargs['symbol']}", daemon=True)
        worker.start()
        worker.join(self.spec.timeout_seconds)
        if worker.is_alive():
            raise TimeoutError(f"no response within {self.spec.timeout_seconds:g}s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")


def _as_frame(raw: object, symbol: str, attempts: int, start: str, end: str) -> pd.DataFrame:
    """akshare returns an empty frame (occasionally None) when there is no data: both are
    "no rows", reported by ``normalise`` as ``source_not_empty``. Anything else is a bug."""
    if raw is None:
        return pd.DataFrame()
    if not isinstance(raw, pd.DataFrame):
        error = TypeError(f"expected a pandas DataFrame, got {type(raw).__name__}")
        raise AkshareFetchError(symbol, attempts, error, start=start, end=end, retryable=False)
    return raw

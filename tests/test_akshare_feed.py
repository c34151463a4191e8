"""AkshareFeed against recorded ``akshare.fund_etf_hist_em`` responses (no network).

The recording is written by a fixture in the exact shape the real function returns: Chinese
headers in the real order, dates as ``YYYY-MM-DD`` strings, volume in lots, amount in CNY. A
replaying fetch with the real function's signature stands in for the network only; everything
after it (retries, normalisation, issues) is the production code path.
"""

from __future__ import annotations

import logging
import pickle
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import requests
from pydantic import ValidationError

from rotation.bars import BAR_COLUMNS
from rotation.sources.akshare_feed import (
    AkshareFeed,
    AkshareFeedSpec,
    AkshareFetchError,
    AkshareUnavailableError,
)

# The real column order of ``fund_etf_hist_em``; the last four are derived and not read.
AKSHARE_HEADER = "日期,开盘,收盘,最高,最低,成交量,成交额,振幅,涨跌幅,涨跌额,换手率"

# Raw (unadjusted) daily bars, 2024-01-02 .. 2024-01-08: five sessions per fund, as
# ``fund_etf_hist_em(symbol, period="daily", adjust="")`` returned them (volume in lots).
RECORDED: dict[str, str] = {
    "510300": """\
2024-01-02,3.506,3.457,3.506,3.455,9429306,3282341400.0,1.45,-1.57,-0.055,1.04
2024-01-03,3.45,3.447,3.464,3.432,10617503,3661180500.0,0.93,-0.29,-0.01,1.17
2024-01-04,3.446,3.416,3.446,3.39,16661525,5705739200.0,1.62,-0.9,-0.031,1.83
2024-01-05,3.407,3.399,3.444,3.377,16996697,5790349800.0,1.96,-0.5,-0.017,1.87
2024-01-08,3.392,3.347,3.406,3.344,17304244,5835423700.0,1.82,-1.53,-0.052,1.9
""",
    "159915": """\
2024-01-02,1.858,1.816,1.858,1.815,8034117,1475666400.0,2.31,-2.42,-0.045,0.62
2024-01-03,1.81,1.812,1.822,1.801,7702345,1395087200.0,1.16,-0.22,-0.004,0.59
2024-01-04,1.809,1.781,1.811,1.77,11245806,2016091900.0,2.26,-1.71,-0.031,0.87
2024-01-05,1.778,1.768,1.796,1.76,10512733,1866535700.0,2.02,-0.73,-0.013,0.81
2024-01-08,1.764,1.731,1.768,1.729,12398410,2167242100.0,2.21,-2.09,-0.037,0.95
""",
}

SESSIONS = pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"])
FULL_RANGE = ("2024-01-02", "2024-01-08")


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    """One UTF-8 CSV per symbol, as ``fund_etf_hist_em(symbol, adjust="")`` returned it."""
    folder = tmp_path / "fund_etf_hist_em"
    folder.mkdir()
    for symbol, rows in RECORDED.items():
        (folder / f"{symbol}.csv").write_text(f"{AKSHARE_HEADER}\n{rows}", encoding="utf-8")
    return folder


class Replay:
    """Replays the recording with ``fund_etf_hist_em``'s signature; records every call."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.calls: list[dict[str, str]] = []

    def __call__(
        self,
        symbol: str = "159707",
        period: str = "daily",
        start_date: str = "19700101",
        end_date: str = "20500101",
        adjust: str = "",
    ) -> pd.DataFrame:
        self.calls.append(
            {
                "symbol": symbol,
                "period": period,
                "start_date": start_date,
                "end_date": end_date,
                "adjust": adjust,
            }
        )
        assert period in {"daily", "weekly", "monthly"} and adjust in {"", "qfq", "hfq"}
        path = self.folder / f"{symbol}.csv"
        if not path.exists():  # eastmoney has no klines: akshare returns an empty frame
            return pd.DataFrame()
        frame = pd.read_csv(path, dtype={"日期": str}, encoding="utf-8")
        day = pd.to_datetime(frame["日期"])
        keep = (day >= pd.Timestamp(start_date)) & (day <= pd.Timestamp(end_date))
        return frame.loc[keep].reset_index(drop=True)


@pytest.fixture
def replay(recording: Path) -> Replay:
    return Replay(recording)


class SleepLog:
    def __init__(self) -> None:
        self.durations: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.durations.append(seconds)


def failing_then(
    replay: Replay, errors: list[BaseException], symbol: str = "510300"
) -> Callable[..., pd.DataFrame]:
    """A fetch that raises ``errors`` in turn for ``symbol``, then replays."""
    pending = list(errors)

    def fetch(**kwargs: str) -> pd.DataFrame:
        if kwargs["symbol"] == symbol and pending:
            replay.calls.append(kwargs)
            raise pending.pop(0)
        return replay(**kwargs)

    return fetch


def spec(**overrides: object) -> AkshareFeedSpec:
    return AkshareFeedSpec.model_validate({"symbols": ["510300", "159915"], **overrides})


def calls_for(replay: Replay, symbol: str) -> int:
    return sum(1 for c in replay.calls if c["symbol"] == symbol)


# -- normalisation -------------------------------------------------------------------------


def test_recorded_response_is_normalised_to_canonical_bars(replay: Replay) -> None:
    recorded = replay(symbol="510300")
    assert list(recorded.columns) == AKSHARE_HEADER.split(",")  # the real order
    assert recorded["日期"].tolist()[0] == "2024-01-02"  # dates are strings, as akshare's
    replay.calls.clear()

    result = AkshareFeed(spec(), fetch=replay).load(*FULL_RANGE)
    bars = result.bars

    assert list(bars.columns) == list(BAR_COLUMNS)
    assert result.issues.empty
    assert result.sources == ["akshare:fund_etf_hist_em:510300", "akshare:fund_etf_hist_em:159915"]
    assert len(bars) == 10
    # Sorted by (date, symbol): 159915 before 510300 on every session.
    assert list(bars["symbol"]) == ["159915", "510300"] * 5
    assert list(bars["date"].unique()) == list(SESSIONS)
    assert str(bars["date"].dtype) == "datetime64[ns]"

    row = bars.loc[(bars["symbol"] == "510300") & (bars["date"] == "2024-01-02")].iloc[0]
    assert (row["open"], row["high"], row["low"], row["close"]) == (3.506, 3.506, 3.455, 3.457)
    assert row["volume"] == 9429306 * 100  # lots → units
    assert row["amount"] == 3282341400.0  # already CNY
    assert row["adj_factor"] == 1.0
    assert row["source"] == "akshare:fund_etf_hist_em:510300"

    chinext = bars.loc[bars["symbol"] == "159915"]
    assert list(chinext["close"]) == [1.816, 1.812, 1.781, 1.768, 1.731]
    assert list(chinext["volume"]) == [
        v * 100.0 for v in (8034117, 7702345, 11245806, 10512733, 12398410)
    ]
    assert set(chinext["source"]) == {"akshare:fund_etf_hist_em:159915"}


def test_fetch_receives_the_akshare_arguments(replay: Replay) -> None:
    AkshareFeed(spec(), fetch=replay).load(pd.Timestamp("2024-01-03"), "2024-01-05")

    assert replay.calls == [
        {
            "symbol": s,
            "period": "daily",
            "start_date": "20240103",
            "end_date": "20240105",
            "adjust": "",
        }
        for s in ("510300", "159915")
    ]


def test_load_filters_to_the_date_range(replay: Replay) -> None:
    bars = AkshareFeed(spec(), fetch=replay).load("2024-01-03", "2024-01-05").bars

    assert sorted(bars["date"].unique()) == list(SESSIONS[1:4])
    assert bars.groupby("symbol").size().to_dict() == {"159915": 3, "510300": 3}


def test_rows_outside_the_range_are_dropped_even_if_the_server_sends_them(
    replay: Replay,
) -> None:
    def loose(**kwargs: str) -> pd.DataFrame:  # ignores the requested range
        return replay(**{**kwargs, "start_date": "19700101", "end_date": "20500101"})

    bars = AkshareFeed(spec(), fetch=loose).load("2024-01-04", "2024-01-08").bars

    assert bars["date"].min() == pd.Timestamp("2024-01-04")
    assert bars["date"].max() == pd.Timestamp("2024-01-08")
    assert len(bars) == 6


# -- retries -------------------------------------------------------------------------------


def test_transient_failures_are_retried_with_exponential_backoff(
    replay: Replay, caplog: pytest.LogCaptureFixture
) -> None:
    sleeps = SleepLog()
    fetch = failing_then(replay, [ConnectionError("reset by peer"), ConnectionError("reset")])

    with caplog.at_level(logging.WARNING, logger="rotation.sources.akshare_feed"):
        result = AkshareFeed(spec(), fetch=fetch, sleep=sleeps).load(*FULL_RANGE)

    assert sleeps.durations == [1.0, 2.0]
    assert calls_for(replay, "510300") == 3
    assert calls_for(replay, "159915") == 1
    assert len(result.bars) == 10 and result.issues.empty
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2
    assert all("510300" in m and "ConnectionError" in m for m in retries)
    assert "attempt 1 of 5" in retries[0] and "attempt 2 of 5" in retries[1]


def test_requests_errors_count_as_network_errors(replay: Replay) -> None:
    sleeps = SleepLog()
    fetch = failing_then(replay, [requests.exceptions.ReadTimeout("read timed out")])

    result = AkshareFeed(spec(backoff_seconds=0.5), fetch=fetch, sleep=sleeps).load(*FULL_RANGE)

    assert sleeps.durations == [0.5]
    assert len(result.bars) == 10


def test_persistent_failure_raises_after_retries_plus_one_attempts(replay: Replay) -> None:
    sleeps = SleepLog()
    fetch = failing_then(replay, [TimeoutError(f"timed out #{i}") for i in range(10)])

    with pytest.raises(AkshareFetchError) as caught:
        AkshareFeed(spec(retries=3), fetch=fetch, sleep=sleeps).load(*FULL_RANGE)

    err = caught.value
    assert calls_for(replay, "510300") == 4
    assert calls_for(replay, "159915") == 0  # the load stops: no partial universe
    assert sleeps.durations == [1.0, 2.0, 4.0]
    assert (err.symbol, err.attempts, err.retryable) == ("510300", 4, True)
    assert isinstance(err.last_error, TimeoutError)
    message = str(err)
    assert "510300" in message
    assert "4 attempts" in message
    assert "20240102..20240108" in message
    assert "TimeoutError: timed out #3" in message


def test_backoff_is_capped_by_max_backoff(replay: Replay) -> None:
    sleeps = SleepLog()
    fetch = failing_then(replay, [OSError("network unreachable")] * 10)

    with pytest.raises(AkshareFetchError):
        AkshareFeed(
            spec(retries=5, backoff_seconds=1.5, max_backoff_seconds=5.0), fetch=fetch, sleep=sleeps
        ).load(*FULL_RANGE)

    assert sleeps.durations == [1.5, 3.0, 5.0, 5.0, 5.0]


def test_zero_retries_means_a_single_attempt(replay: Replay) -> None:
    sleeps = SleepLog()
    fetch = failing_then(replay, [ConnectionError("refused")])

    with pytest.raises(AkshareFetchError, match="after 1 attempt "):
        AkshareFeed(spec(retries=0), fetch=fetch, sleep=sleeps).load(*FULL_RANGE)

    assert calls_for(replay, "510300") == 1
    assert sleeps.durations == []


@pytest.mark.parametrize("error", [KeyError("data"), ValueError("could not convert 'abc'")])
def test_non_network_error_is_not_retried(replay: Replay, error: Exception) -> None:
    sleeps = SleepLog()
    fetch = failing_then(replay, [error, error])

    with pytest.raises(AkshareFetchError) as caught:
        AkshareFeed(spec(), fetch=fetch, sleep=sleeps).load(*FULL_RANGE)

    assert calls_for(replay, "510300") == 1
    assert sleeps.durations == []
    assert caught.value.retryable is False
    assert caught.value.__cause__ is error
    assert "not retried" in str(caught.value)
    assert "510300" in str(caught.value) and type(error).__name__ in str(caught.value)


def test_a_non_frame_response_is_an_error_not_data(replay: Replay) -> None:
    with pytest.raises(AkshareFetchError, match="expected a pandas DataFrame, got dict"):
        AkshareFeed(spec(), fetch=lambda **_: {"data": None}).load(*FULL_RANGE)


def test_a_hung_call_times_out_and_is_retried(replay: Replay) -> None:
    release = threading.Event()
    sleeps = SleepLog()

    def hang(**kwargs: str) -> pd.DataFrame:
        replay.calls.append(kwargs)
        release.wait(5)
        return pd.DataFrame()

    try:
        with pytest.raises(AkshareFetchError) as caught:
            AkshareFeed(spec(retries=1, timeout_seconds=0.05), fetch=hang, sleep=sleeps).load(
                *FULL_RANGE
            )
    finally:
        release.set()

    assert calls_for(replay, "510300") == 2
    assert sleeps.durations == [1.0]
    assert isinstance(caught.value.last_error, TimeoutError)
    assert "no response within 0.05s" in str(caught.value)


def test_fetch_error_survives_pickling() -> None:
    err = AkshareFetchError("510300", 5, ConnectionError("reset"), start="20240102", end="20240108")

    copy = pickle.loads(pickle.dumps(err))

    assert (copy.symbol, copy.attempts, copy.start, copy.end) == (
        "510300",
        5,
        "20240102",
        "20240108",
    )
    assert str(copy) == str(err)


# -- structural problems become issues -------------------------------------------------------


@pytest.mark.parametrize("empty", [pd.DataFrame(), None])
def test_empty_response_becomes_a_source_not_empty_issue(
    replay: Replay, empty: pd.DataFrame | None
) -> None:
    def fetch(**kwargs: str) -> pd.DataFrame | None:
        return empty if kwargs["symbol"] == "159915" else replay(**kwargs)

    result = AkshareFeed(spec(), fetch=fetch).load(*FULL_RANGE)

    assert set(result.bars["symbol"]) == {"510300"}
    assert len(result.issues) == 1
    found = result.issues.iloc[0]
    assert found["rule"] == "source_not_empty"
    assert found["symbol"] == "159915"
    assert found["source"] == "akshare:fund_etf_hist_em:159915"
    assert "akshare:fund_etf_hist_em:159915" in result.sources


def test_unknown_symbol_returns_no_rows_and_an_issue(replay: Replay) -> None:
    result = AkshareFeed(spec(symbols=["510300", "512880"]), fetch=replay).load(*FULL_RANGE)

    assert list(result.issues["rule"]) == ["source_not_empty"]
    assert list(result.issues["symbol"]) == ["512880"]
    assert len(result.bars) == 5


def test_all_responses_empty_gives_empty_canonical_bars(replay: Replay) -> None:
    result = AkshareFeed(spec(), fetch=replay).load("2023-06-01", "2023-06-30")

    assert result.bars.empty
    assert list(result.bars.columns) == list(BAR_COLUMNS)
    assert list(result.issues["rule"]) == ["source_not_empty", "source_not_empty"]


def test_missing_column_becomes_a_source_columns_issue(replay: Replay) -> None:
    def fetch(**kwargs: str) -> pd.DataFrame:
        frame = replay(**kwargs)
        return frame.drop(columns=["成交量"]) if kwargs["symbol"] == "510300" else frame

    result = AkshareFeed(spec(), fetch=fetch).load(*FULL_RANGE)

    assert set(result.bars["symbol"]) == {"159915"}
    assert len(result.issues) == 1
    found = result.issues.iloc[0]
    assert (found["rule"], found["symbol"], found["column"]) == (
        "source_columns",
        "510300",
        "成交量",
    )
    assert "akshare:fund_etf_hist_em:510300" in found["message"]


# -- configuration ---------------------------------------------------------------------------


def test_custom_column_mapping_from_configuration(replay: Replay) -> None:
    english = {
        "日期": "trade_date",
        "开盘": "o",
        "收盘": "c",
        "最高": "h",
        "最低": "l",
        "成交量": "vol_units",
        "成交额": "turnover_10k",
    }

    def fetch(**kwargs: str) -> pd.DataFrame:
        frame = replay(**kwargs).rename(columns=english)
        frame["vol_units"] = frame["vol_units"] * 100  # this source reports units...
        frame["turnover_10k"] = frame["turnover_10k"] / 10_000  # ...and 万元
        return frame

    config = {
        "symbols": ["510300"],
        "columns": {
            "schemas": [
                {
                    "date": "trade_date",
                    "open": "o",
                    "high": "h",
                    "low": "l",
                    "close": "c",
                    "volume": "vol_units",
                    "amount": "turnover_10k",
                }
            ],
            "volume_multiplier": 1,
            "amount_multiplier": 10_000,
        },
    }
    result = AkshareFeed(AkshareFeedSpec.model_validate(config), fetch=fetch).load(*FULL_RANGE)

    assert result.issues.empty
    first = result.bars.iloc[0]
    assert (first["date"], first["open"], first["close"]) == (
        pd.Timestamp("2024-01-02"),
        3.506,
        3.457,
    )
    assert first["volume"] == 942930600.0
    assert first["amount"] == pytest.approx(3282341400.0)


def test_default_spec_maps_fund_etf_hist_em() -> None:
    s = AkshareFeedSpec(symbols=["510300"])

    mapping = s.columns.schemas[0]
    assert (mapping.date, mapping.open, mapping.high, mapping.low, mapping.close) == (
        "日期",
        "开盘",
        "最高",
        "最低",
        "收盘",
    )
    assert (mapping.volume, mapping.amount) == ("成交量", "成交额")
    assert (s.columns.volume_multiplier, s.columns.amount_multiplier) == (100.0, 1.0)
    assert (s.adjust, s.period, s.price_basis) == ("", "daily", "raw")
    assert AkshareFeedSpec(symbols=["510300"], adjust="qfq").price_basis == "forward_adjusted"


@pytest.mark.parametrize(
    "bad",
    [
        {"symbols": ["510300.SH"]},
        {"symbols": ["51030"]},
        {"symbols": []},
        {"symbols": ["510300", "510300"]},
        {"symbols": ["510300"], "retries": -1},
        {"symbols": ["510300"], "backoff_seconds": 0},
        {"symbols": ["510300"], "adjust": "forward"},
        {"symbols": ["510300"], "period": "weekly"},
        {"symbols": ["510300"], "proxy": "http://x"},
    ],
)
def test_invalid_configuration_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AkshareFeedSpec.model_validate(bad)


def test_instruments_follow_the_configured_symbols() -> None:
    feed = AkshareFeed(spec(symbols=["510300", "159915", "588000"]), fetch=lambda **_: None)

    got = [(i.symbol, i.exchange, i.price_limit) for i in feed.instruments()]

    assert got == [("510300", "SH", 0.10), ("159915", "SZ", 0.10), ("588000", "SH", 0.20)]


# -- the real akshare entry point ------------------------------------------------------------


@pytest.fixture
def fake_akshare(replay: Replay, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replay]:
    module = types.ModuleType("akshare")
    module.fund_etf_hist_em = replay  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "akshare", module)
    yield replay


def test_without_injected_fetch_akshare_fund_etf_hist_em_is_called(fake_akshare: Replay) -> None:
    result = AkshareFeed(spec(adjust="qfq")).load(*FULL_RANGE)

    assert len(result.bars) == 10
    assert fake_akshare.calls[0] == {
        "symbol": "510300",
        "period": "daily",
        "start_date": "20240102",
        "end_date": "20240108",
        "adjust": "qfq",
    }


def test_missing_akshare_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry makes ``import akshare`` fail whether or not it is installed.
    monkeypatch.setitem(sys.modules, "akshare", None)
    feed = AkshareFeed(spec())  # constructing is fine: the import happens on first load

    with pytest.raises(AkshareUnavailableError, match=r"pip install -e '\.\[akshare\]'") as caught:
        feed.load(*FULL_RANGE)

    assert isinstance(caught.value, ImportError)

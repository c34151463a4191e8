"""The Redis cache cannot execute code (issue 11): what is in Redis is data behind an HMAC tag.

Against the real Redis on 127.0.0.1:6379 (database 5, a namespace per test, its keys removed
afterwards) and the real market data: a planted pickle whose unpickling would run a command is a
miss that runs nothing; altered, truncated, moved, foreign-secret, unknown-format and legacy
entries are misses with a warning, recomputed and overwritten; the cached values (the bars of
``load_cached`` and the walk-forward panels) come back exactly; Redis down still works uncached.
"""

import dataclasses
import os
import pickle
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import redis
from conftest import TEST_CACHE_SECRET

from orchestration.definitions import market_data_resource, resources_for
from orchestration.settings import SettingsError, load_settings
from resources import cache_codec
from resources.cache import CacheStats, RedisCache
from resources.market_data import FileMarketData
from rotation import walkforward as wf
from rotation.adjust import adjust_bars
from rotation.bars import LoadResult
from rotation.cross_section import CrossSectionConfig
from rotation.strategy import load_strategy

REDIS_URL = "redis://127.0.0.1:6379/5"   # this file's own database
START, END = pd.Timestamp("2022-01-04"), pd.Timestamp("2023-12-29")
OTHER_SECRET = TEST_CACHE_SECRET[::-1]


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture
def cache() -> Iterator[RedisCache]:
    """A cache in a namespace of its own; every key under it is deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({exc}): deploy/ensure-services.sh")
    namespace = f"etf-test-{uuid.uuid4().hex[:12]}"
    yield RedisCache(url=REDIS_URL, secret=TEST_CACHE_SECRET, namespace=namespace)
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def market(shared_data: Path) -> FileMarketData:
    settings = load_settings(market_data={
        "source": "files", "dataset": "cn_etf_morphkyan_raw",
        "files_root": str(shared_data / "cn_etf_morphkyan_raw")})
    resource = market_data_resource(settings)
    assert isinstance(resource, FileMarketData)
    return resource


@pytest.fixture(scope="module")
def uncached_bars(market: FileMarketData) -> LoadResult:
    return market.load(START, END)


def _client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def _only_key(cache: RedisCache, kind: str) -> str:
    (key,) = _client().scan_iter(f"{cache.namespace}:{kind}:*")
    return key.decode()


def _load(cache: RedisCache, market: FileMarketData) -> tuple[LoadResult, CacheStats, list[str]]:
    stats, warnings = CacheStats(), []
    result = market.load_cached(cache, START, END, stats, warn=warnings.append)
    return result, stats, warnings


def assert_same(expected: Any, actual: Any, path: str = "value") -> None:
    """Equal values of the same types: frames and indexes exactly (dtypes, index types and
    names, column names, freq, NaN in the same places)."""
    assert type(actual) is type(expected), (path, type(expected), type(actual))
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(actual, expected, check_exact=True, check_index_type=True,
                                      check_column_type=True, check_freq=True, check_flags=True)
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(actual, expected, check_exact=True,
                                       check_index_type=True, check_freq=True)
    elif isinstance(expected, pd.Index):
        pd.testing.assert_index_equal(actual, expected, exact=True, check_exact=True)
        assert getattr(actual, "freq", None) == getattr(expected, "freq", None), path
    elif dataclasses.is_dataclass(expected):
        for f in dataclasses.fields(expected):
            assert_same(getattr(expected, f.name), getattr(actual, f.name), f"{path}.{f.name}")
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), path
        for k in expected:
            assert_same(expected[k], actual[k], f"{path}[{k!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), path
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same(e, a, f"{path}[{i}]")
    elif isinstance(expected, float) and np.isnan(expected):
        assert np.isnan(actual), path
    else:
        assert actual == expected, path


class _RunsCommand:
    """Unpickling this runs ``touch <marker>`` (what the planted entry did, as root)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


# -- a planted pickle runs nothing --------------------------------------------------------------
def test_planted_pickle_is_a_miss_and_never_runs(cache: RedisCache, market: FileMarketData,
                                                 uncached_bars: LoadResult,
                                                 tmp_path: Path) -> None:
    _load(cache, market)
    key = _only_key(cache, "bars")   # the real key load_cached reads
    marker, control = tmp_path / "pwned", tmp_path / "control"
    # The payload is live: unpickled, it runs its command (here on a control path).
    pickle.loads(pickle.dumps(_RunsCommand(control)))
    assert control.exists()
    _client().set(key, pickle.dumps(_RunsCommand(marker)))

    result, stats, warnings = _load(cache, market)

    assert not marker.exists(), "the planted pickle ran"
    assert (stats.hits, stats.misses, stats.rejected) == (0, 1, 1)
    assert stats.metadata()["cache_rejected"] == dg.MetadataValue.int(1)
    assert len(warnings) == 1 and key in warnings[0] and "pickle" in warnings[0]
    assert_same(uncached_bars, result)
    # Recomputed and overwritten: the next read verifies and hits.
    again, stats, warnings = _load(cache, market)
    assert (stats.hits, stats.rejected, warnings) == (1, 0, [])
    assert_same(uncached_bars, again)
    assert not marker.exists()


# -- anything that does not verify is a miss, and is never parsed --------------------------------
def _flip_last_byte(entry: bytes, key: str, value: object) -> bytes:
    return entry[:-1] + bytes([entry[-1] ^ 0x01])


def _flip_tag_byte(entry: bytes, key: str, value: object) -> bytes:
    at = len(cache_codec.MAGIC)
    return entry[:at] + bytes([entry[at] ^ 0x80]) + entry[at + 1:]


def _other_secret(entry: bytes, key: str, value: object) -> bytes:
    return cache_codec.seal(OTHER_SECRET.encode(), key, value)


def _moved_from_another_key(entry: bytes, key: str, value: object) -> bytes:
    return cache_codec.seal(TEST_CACHE_SECRET.encode(), key + "-elsewhere", value)


def _legacy_pickle(entry: bytes, key: str, value: object) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


CORRUPTIONS: dict[str, Callable[[bytes, str, object], bytes]] = {
    "payload altered": _flip_last_byte,
    "tag altered": _flip_tag_byte,
    "tag made with another secret": _other_secret,
    "moved from another key": _moved_from_another_key,
    "truncated payload": lambda entry, key, value: entry[:-100],
    "truncated tag": lambda entry, key, value: entry[:len(cache_codec.MAGIC) + 5],
    "empty": lambda entry, key, value: b"",
    "unknown format": lambda entry, key, value: b"etf-cache/9\n" + entry[12:],
    "legacy pickle of the real value": _legacy_pickle,
}


@pytest.mark.parametrize("corrupt", sorted(CORRUPTIONS))
def test_entry_that_does_not_verify_is_a_miss(corrupt: str, cache: RedisCache,
                                              market: FileMarketData, uncached_bars: LoadResult,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _load(cache, market)
    key = _only_key(cache, "bars")
    good = _client().get(key)
    assert good is not None and good.startswith(cache_codec.MAGIC)
    _client().set(key, CORRUPTIONS[corrupt](good, key, uncached_bars))
    parsed: list[bytes] = []
    real_decode = cache_codec.decode
    monkeypatch.setattr(cache_codec, "decode", lambda payload: parsed.append(payload)
                        or real_decode(payload))

    result, stats, warnings = _load(cache, market)

    assert parsed == [], "a payload was parsed before its tag verified"
    assert (stats.hits, stats.misses, stats.rejected) == (0, 1, 1)
    assert len(warnings) == 1 and "rejected" in warnings[0], warnings
    assert_same(uncached_bars, result)
    # Overwritten by the recomputed value's entry.
    stored = _client().get(key)
    assert stored is not None
    assert_same(uncached_bars, cache_codec.unseal(TEST_CACHE_SECRET.encode(), key, stored))


def test_verified_entry_that_does_not_decode_is_a_miss(cache: RedisCache, market: FileMarketData,
                                                       uncached_bars: LoadResult) -> None:
    """Signed with the right secret but not a value (another version of the code wrote it)."""
    _load(cache, market)
    key = _only_key(cache, "bars")
    payload = b"\x00\x00\x00\x02{}"
    secret = TEST_CACHE_SECRET.encode()
    _client().set(key, cache_codec.MAGIC + cache_codec.tag(secret, key, payload) + payload)

    result, stats, warnings = _load(cache, market)

    assert (stats.hits, stats.rejected) == (0, 1)
    assert "does not decode" in warnings[0]
    assert_same(uncached_bars, result)


# -- the cached values come back exactly --------------------------------------------------------
def test_bars_round_trip_exactly(cache: RedisCache, market: FileMarketData,
                                 uncached_bars: LoadResult) -> None:
    first, stats, _ = _load(cache, market)
    assert (stats.hits, stats.misses) == (0, 1)
    second, stats, warnings = _load(cache, market)
    assert (stats.hits, stats.misses, stats.rejected, warnings) == (1, 0, 0, [])
    assert_same(uncached_bars, first)
    assert_same(uncached_bars, second)
    assert not second.bars.empty and second.sources


def test_issues_with_values_round_trip_exactly() -> None:
    """The issues frame of a source that found problems (dates mixed with None)."""
    from rotation.bars import issue

    issues = pd.DataFrame([issue("a.csv", "510300", "2023-01-05", "close", "positive", "x"),
                           issue("b.csv", None, None, None, "source_not_empty", "no rows")])
    value = LoadResult(bars=pd.DataFrame({"close": [1.0, np.nan]}), issues=issues,
                       sources=["a.csv", "b.csv"])
    assert_same(value, cache_codec.decode(cache_codec.encode(value)))


@pytest.fixture(scope="module")
def research_data(uncached_bars: LoadResult, market: FileMarketData) -> wf.ResearchData:
    strategy = load_strategy("etf_rotation_default")
    u = strategy.universe
    bars = adjust_bars(uncached_bars.bars)
    universe = wf.resolve_universe(bars["symbol"].unique(), exclude=u.exclude,
                                   benchmark=u.benchmark, defensive=u.defensive,
                                   explicit=u.symbols)
    return wf.prepare(bars, strategy.factor_specs, CrossSectionConfig(), universe,
                      market.instruments(), strategy.horizons)


def test_research_panels_round_trip_exactly(cache: RedisCache,
                                            research_data: wf.ResearchData) -> None:
    def cached() -> tuple[wf.ResearchData, CacheStats]:
        stats = CacheStats()
        return cache.cached("research_panels", ("etf_rotation_default",), "v1",
                            lambda: research_data, stats), stats

    _, stats = cached()
    assert stats.misses == 1
    value, stats = cached()
    assert (stats.hits, stats.rejected) == (1, 0)
    assert value is not research_data
    assert_same(research_data, value)
    # The parts that make it a hard case: NaN factors, bool panels, int label keys, the funds'
    # market rules (Instrument dataclasses of several classes).
    assert value.std_factors and any(f.isna().any().any() for f in value.std_factors.values())
    assert value.market.has_bar.dtypes.eq(bool).all()
    assert set(value.labels) == set(research_data.labels)
    assert value.instruments == research_data.instruments
    assert {i.settlement for i in value.instruments} == {"T+0", "T+1"}


@pytest.mark.parametrize("value", [
    pd.Series([1.5, np.nan, -0.0], name="equity",
              index=pd.date_range("2024-01-01", periods=3, freq="B", name="date")),
    pd.date_range("2024-01-01", periods=4, freq="D", tz="Asia/Shanghai", name="session"),
    pd.DataFrame({"n": pd.array([1, None], dtype="Int64"), "s": ["a", None],
                  "t": pd.to_datetime(["2024-01-02", None])},
                 index=pd.Index([3, 1], name="row")),
    {1: (None, True, 2, 2.5, float("nan"), "x"), "k": [pd.DataFrame({5: [1.0]})]},
], ids=["series with freq", "tz index", "nullable and object columns", "nested scalars"])
def test_codec_round_trips_exactly(value: object) -> None:
    assert_same(value, cache_codec.decode(cache_codec.encode(value)))


@pytest.mark.parametrize(("value", "named"), [
    (np.float64(1.0), "numpy.float64"),
    ({"panel": np.zeros(3)}, "numpy.ndarray"),
    (pd.DataFrame({"a": pd.Series([1, 2], dtype=object)}), "object column 'a'"),
    (pd.Index([pd.Timestamp("2024-01-02")], dtype=object, name="d"), "object column 'd'"),
    (Path("x"), "pathlib"),
])
def test_values_it_cannot_encode_safely_are_refused(cache: RedisCache, value: object,
                                                     named: str) -> None:
    with pytest.raises(cache_codec.UncacheableValue, match=named.replace(".", r"\.")):
        cache.cached("bars", ("refused",), "v1", lambda: value, CacheStats())
    assert list(_client().scan_iter(f"{cache.namespace}:*")) == []


# -- Redis down, and the secret -----------------------------------------------------------------
def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_redis_down_still_works_uncached(market: FileMarketData,
                                         uncached_bars: LoadResult) -> None:
    password = "not-in-any-message"
    down = RedisCache(url=f"redis://:{password}@127.0.0.1:{_unused_port()}/0",
                      secret=TEST_CACHE_SECRET, socket_timeout_seconds=0.5)
    result, stats, warnings = _load(down, market)
    assert_same(uncached_bars, result)
    assert (stats.hits, stats.misses, stats.rejected) == (0, 1, 0)
    assert len(warnings) == 1 and "running uncached" in warnings[0]
    assert password not in warnings[0] and ":***@127.0.0.1" in warnings[0]
    assert stats.metadata()["cache"] == dg.MetadataValue.text("unavailable: ran uncached")


def test_cache_without_a_secret_refuses_to_run(market: FileMarketData) -> None:
    with pytest.raises(ValueError, match="ETF_CACHE_SECRET"):
        _load(RedisCache(url=REDIS_URL), market)


@pytest.mark.parametrize("profile", ["local", "prod"])
def test_settings_refuse_a_redis_url_without_a_secret(profile: str) -> None:
    services = {"postgres_url": "postgresql+psycopg://etf:pw@db/etf",
                "mlflow_tracking_uri": "http://mlflow:5000"}
    with pytest.raises(SettingsError, match="cache_secret \\(set ETF_CACHE_SECRET\\)"):
        load_settings(profile=profile, redis_url=REDIS_URL, **services)


def test_a_short_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(SettingsError, match="at least 32 characters") as info:
        load_settings(redis_url=REDIS_URL, cache_secret="tooshort-secret")
    assert "tooshort-secret" not in str(info.value)


def test_the_secret_is_never_printed_and_reaches_the_cache() -> None:
    settings = load_settings(redis_url=REDIS_URL, cache_secret=TEST_CACHE_SECRET)
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert TEST_CACHE_SECRET not in text
    cache = resources_for(settings)["cache"]
    assert isinstance(cache, RedisCache) and cache.secret == TEST_CACHE_SECRET
    assert TEST_CACHE_SECRET not in repr(cache)


def test_rejections_show_in_the_asset_metadata(cache: RedisCache) -> None:
    """Through Dagster: the resource with its secret, the warning and ``cache_rejected``."""
    key = cache.key("research_panels", "metadata", version="v1")
    _client().set(key, b"\x80\x04not really a pickle")

    @dg.asset
    def panels(context: dg.AssetExecutionContext, cache: RedisCache) -> dg.MaterializeResult:
        stats = CacheStats()
        value = cache.cached("research_panels", ("metadata",), "v1", lambda: [1.0, 2.0], stats,
                             warn=context.log.warning)
        assert value == [1.0, 2.0]
        return dg.MaterializeResult(metadata=stats.metadata())

    result = dg.materialize([panels], resources={"cache": cache})
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["cache_rejected"] == dg.MetadataValue.int(1)
    assert metadata["cache_misses"] == dg.MetadataValue.int(1)
    stored = _client().get(key)
    assert stored is not None
    assert cache_codec.unseal(TEST_CACHE_SECRET.encode(), key, stored) == [1.0, 2.0]

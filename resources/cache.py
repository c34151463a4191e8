"""Redis: a cache for market-data fetches and computed panels.

Cache entries are keyed by what was computed *and* the version of the data it was computed
from, so a changed input can never be served a stale result; they expire after ``ttl_seconds``.
Redis is an accelerator, not a dependency: when it is unreachable the pipeline computes
uncached and says so with a warning (and in the asset metadata).

Redis is not trusted: whoever can write to it could once plant a pickle that ran as the run
worker. Entries are now data only (Arrow and JSON, :mod:`resources.cache_codec`) behind an
HMAC-SHA256 tag under ``secret`` (``ETF_CACHE_SECRET``) over the key and the payload. An entry
that does not verify (planted, altered, truncated, moved, another secret, a legacy pickle) is a
miss with a warning, counted as ``cache_rejected``; the value is recomputed and overwrites it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field, PrivateAttr, SecretStr

from resources import cache_codec

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class CacheStats:
    """Hits, misses and rejected entries of one asset computation, for its metadata."""

    hits: int = 0
    misses: int = 0
    # Entries found but refused (not verified or not decodable); each is also a miss.
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    enabled: bool = True

    def metadata(self) -> dict[str, dg.MetadataValue]:
        state = "disabled (no redis_url)" if not self.enabled else (
            "unavailable: ran uncached" if self.errors else "ok")
        return {"cache_hits": dg.MetadataValue.int(self.hits),
                "cache_misses": dg.MetadataValue.int(self.misses),
                "cache_rejected": dg.MetadataValue.int(self.rejected),
                "cache": dg.MetadataValue.text(state)}


class RedisCache(dg.ConfigurableResource):
    """``url`` None disables the cache (the embedded local profile); with a ``url`` the
    ``secret`` is required (settings refuse a redis_url without ETF_CACHE_SECRET)."""

    url: str | None = None
    # Keys the HMAC tag of every entry; repr=False keeps it out of reprs and logs.
    secret: str | None = Field(default=None, repr=False)
    namespace: str = "etf"
    ttl_seconds: int = 7 * 24 * 3600
    socket_timeout_seconds: float = 2.0

    _client: Any = PrivateAttr(default=None)

    @classmethod
    def for_settings(cls, url: str | None, secret: SecretStr | None) -> RedisCache:
        return cls(url=url, secret=secret.get_secret_value() if secret is not None else None)

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            assert self.url is not None
            self._client = redis.Redis.from_url(
                self.url, socket_timeout=self.socket_timeout_seconds,
                socket_connect_timeout=self.socket_timeout_seconds)
        return self._client

    def _secret(self) -> bytes:
        if not self.secret:
            raise ValueError(f"the Redis cache at {self.location} has no secret to sign its "
                             "entries with: set ETF_CACHE_SECRET")
        return self.secret.encode()

    @property
    def location(self) -> str:
        """``url`` without its password, for messages."""
        parts = urlsplit(self.url or "")
        if parts.password is None:
            return self.url or "(none)"
        host = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()

    def key(self, kind: str, *parts: object, version: str) -> str:
        digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24]
        return f"{self.namespace}:{kind}:{digest}:{version}"

    def cached(self, kind: str, parts: tuple[object, ...], version: str,
               compute: Callable[[], T], stats: CacheStats,
               warn: Callable[[str], None] | None = None) -> T:
        """``compute()`` once per (kind, parts, data version); later calls read Redis.
        Raises :class:`~resources.cache_codec.UncacheableValue` for a value it cannot store
        safely (a programming error, not a cache failure)."""
        if self.url is None:
            stats.enabled = False
            return compute()
        import redis

        secret = self._secret()
        key = self.key(kind, *parts, version=version)
        try:
            raw = self._redis().get(key)
        except redis.RedisError as exc:
            return self._uncached(exc, compute, stats, warn)
        if raw is not None:
            try:
                value: T = cache_codec.unseal(secret, key, raw)
            except cache_codec.RejectedEntry as exc:
                self._reject(key, exc, stats, warn)
            else:
                stats.hits += 1
                return value
        stats.misses += 1
        value = compute()
        entry = cache_codec.seal(secret, key, value)
        try:
            self._redis().set(key, entry, ex=self.ttl_seconds)
        except redis.RedisError as exc:
            self._note(exc, stats, warn)
        return value

    def _uncached(self, exc: Exception, compute: Callable[[], T], stats: CacheStats,
                  warn: Callable[[str], None] | None) -> T:
        self._note(exc, stats, warn)
        stats.misses += 1
        return compute()

    def _reject(self, key: str, exc: cache_codec.RejectedEntry, stats: CacheStats,
                warn: Callable[[str], None] | None) -> None:
        stats.rejected += 1
        (warn or log.warning)(f"Redis cache entry {key} rejected ({exc}); recomputing and "
                              "overwriting it")

    def _note(self, exc: Exception, stats: CacheStats,
              warn: Callable[[str], None] | None) -> None:
        message = f"Redis cache at {self.location} unavailable ({type(exc).__name__}: {exc}); " \
                  "running uncached"
        if message not in stats.errors:
            stats.errors.append(message)
            (warn or log.warning)(message)

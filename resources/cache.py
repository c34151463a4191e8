"""Redis: a cache for market-data fetches and computed panels, and the per-account execution lock.

Cache entries are keyed by what was computed *and* the version of the data it was computed
from, so a changed input can never be served a stale result; they expire after ``ttl_seconds``.
Redis is an accelerator, not a dependency: when it is unreachable the pipeline computes
uncached and says so with a warning (and in the asset metadata). The execution lock is the
exception: it must hold, so :mod:`trading.executor` falls back to a PostgreSQL advisory lock.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dagster as dg
from pydantic import PrivateAttr

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class CacheStats:
    """Hits and misses of one asset computation, for its metadata."""

    hits: int = 0
    misses: int = 0
    errors: list[str] = field(default_factory=list)
    enabled: bool = True

    def metadata(self) -> dict[str, dg.MetadataValue]:
        state = "disabled (no redis_url)" if not self.enabled else (
            "unavailable: ran uncached" if self.errors else "ok")
        return {"cache_hits": dg.MetadataValue.int(self.hits),
                "cache_misses": dg.MetadataValue.int(self.misses),
                "cache": dg.MetadataValue.text(state)}


class LockUnavailable(RuntimeError):
    """Redis could not be asked for the lock (down or unreachable)."""


class LockTimeout(RuntimeError):
    """Another holder kept the lock for longer than the wait allowed."""


class RedisCache(dg.ConfigurableResource):
    """``url`` None disables the cache (the embedded local profile)."""

    url: str | None = None
    namespace: str = "etf"
    ttl_seconds: int = 7 * 24 * 3600
    socket_timeout_seconds: float = 2.0
    lock_ttl_seconds: float = 30.0

    _client: Any = PrivateAttr(default=None)

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            assert self.url is not None
            self._client = redis.Redis.from_url(
                self.url, socket_timeout=self.socket_timeout_seconds,
                socket_connect_timeout=self.socket_timeout_seconds)
        return self._client

    def key(self, kind: str, *parts: object, version: str) -> str:
        digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24]
        return f"{self.namespace}:{kind}:{digest}:{version}"

    def cached(self, kind: str, parts: tuple[object, ...], version: str,
               compute: Callable[[], T], stats: CacheStats,
               warn: Callable[[str], None] | None = None) -> T:
        """``compute()`` once per (kind, parts, data version); later calls read Redis."""
        if self.url is None:
            stats.enabled = False
            return compute()
        import redis

        key = self.key(kind, *parts, version=version)
        try:
            raw = self._redis().get(key)
        except redis.RedisError as exc:
            return self._uncached(exc, compute, stats, warn)
        if raw is not None:
            stats.hits += 1
            return pickle.loads(raw)
        stats.misses += 1
        value = compute()
        try:
            self._redis().set(key, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL),
                              ex=self.ttl_seconds)
        except redis.RedisError as exc:
            self._note(exc, stats, warn)
        return value

    def _uncached(self, exc: Exception, compute: Callable[[], T], stats: CacheStats,
                  warn: Callable[[str], None] | None) -> T:
        self._note(exc, stats, warn)
        stats.misses += 1
        return compute()

    def _note(self, exc: Exception, stats: CacheStats,
              warn: Callable[[str], None] | None) -> None:
        message = f"Redis cache at {self.url} unavailable ({type(exc).__name__}: {exc}); " \
                  "running uncached"
        if message not in stats.errors:
            stats.errors.append(message)
            (warn or log.warning)(message)

    @contextmanager
    def lock(self, name: str, *, timeout_seconds: float) -> Iterator[None]:
        """Exclusive lock ``name`` across processes. Raises :class:`LockUnavailable` when Redis
        cannot be reached (the caller picks a fallback) and :class:`LockTimeout` when another
        holder keeps it longer than ``timeout_seconds``.

        The lock lives ``lock_ttl_seconds`` and is renewed by a thread while held, so a holder
        that dies (a killed run) frees it within one TTL and its retry can proceed."""
        if self.url is None:
            raise LockUnavailable("no redis_url configured")
        import redis

        lock = self._redis().lock(f"{self.namespace}:lock:{name}",
                                  timeout=self.lock_ttl_seconds,
                                  blocking_timeout=timeout_seconds, thread_local=False)
        try:
            acquired = lock.acquire()
        except redis.RedisError as exc:
            raise LockUnavailable(f"Redis at {self.url}: {exc}") from exc
        if not acquired:
            raise LockTimeout(f"lock {name!r} is held by another execution (waited "
                              f"{timeout_seconds:g}s)")
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lock_ttl_seconds / 3):
                try:
                    lock.reacquire()
                except redis.RedisError as exc:
                    log.warning("renewing lock %s failed: %s", name, exc)

        renewer = threading.Thread(target=renew, name=f"lock-renew-{name}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            try:
                lock.release()
            except redis.RedisError as exc:  # expired or Redis gone: the TTL frees it
                log.warning("releasing lock %s failed: %s", name, exc)

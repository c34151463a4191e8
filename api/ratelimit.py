"""Login attempts per username and client address in a fixed window. Redis (``redis_url``)
shares the count across API processes; without Redis (the embedded local profile) the count is
the process's own."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Protocol

import redis


class LoginLimiter(Protocol):
    def hit(self, username: str, client: str) -> int | None:
        """Count an attempt; seconds to wait when over the limit, else None."""

    def close(self) -> None: ...


def _key(namespace: str, username: str, client: str) -> str:
    # Hashed: usernames and addresses stay out of Redis' key space in clear.
    ident = hashlib.sha256(f"{username.lower()}\x00{client}".encode()).hexdigest()
    return f"{namespace}:login:{ident}"


class RedisLoginLimiter:
    def __init__(self, url: str, attempts: int, window_seconds: int,
                 namespace: str = "etf:api") -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._attempts, self._window, self._namespace = attempts, window_seconds, namespace

    def hit(self, username: str, client: str) -> int | None:
        key = _key(self._namespace, username, client)
        pipe = self._redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, self._window, nx=True)     # the window starts at the first attempt
        pipe.ttl(key)
        count, _, ttl = pipe.execute()
        if int(count) <= self._attempts:
            return None
        return max(int(ttl), 1)

    def close(self) -> None:
        self._redis.close()


class MemoryLoginLimiter:
    # Beyond this many tracked (username, client) pairs, ended windows are dropped.
    MAX_KEYS = 10_000

    def __init__(self, attempts: int, window_seconds: int) -> None:
        self._attempts, self._window = attempts, window_seconds
        self._windows: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def hit(self, username: str, client: str) -> int | None:
        key = _key("memory", username, client)
        now = time.monotonic()
        with self._lock:
            if len(self._windows) > self.MAX_KEYS:
                self._forget_ended(now)
            started, count = self._windows.get(key, (now, 0))
            if now - started >= self._window:
                started, count = now, 0
            self._windows[key] = (started, count + 1)
        if count + 1 <= self._attempts:
            return None
        return max(int(started + self._window - now), 1)

    def _forget_ended(self, now: float) -> None:
        self._windows = {k: v for k, v in self._windows.items()
                         if now - v[0] < self._window}

    def close(self) -> None:
        self._windows.clear()

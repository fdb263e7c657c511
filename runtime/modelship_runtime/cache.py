"""Prediction cache behind a small interface: Redis in production, a dict in tests.

The key is the model name, the model version, the artifact's identity (its URI, run id
and the SHA-256 of its estimator file: a name and version deleted and registered again
names another artifact) and a hash of the canonical input (the validated float64 rows,
so ``1`` and ``1.0`` share an entry), so two artifacts never share an answer. A cache
must never fail a request: Redis errors and calls slower than the configured timeout are
counted, the request is served without the cache, and Redis is left alone for a short
while so a dead server costs nothing per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Protocol

import numpy as np
import orjson

logger = logging.getLogger(__name__)


def artifact_tag(uri: str | None, run_id: str | None, sha256: str | None) -> str:
    """A short tag naming one artifact: a hash of its URI, run id and file digest."""
    h = hashlib.blake2b(digest_size=8)
    for part in (uri, run_id, sha256):
        h.update((part or "").encode() + b"\x00")
    return h.hexdigest()


def cache_key(model: str, version: str, rows: np.ndarray, artifact: str = "") -> str:
    """Key of a prediction: model, version, artifact tag (:func:`artifact_tag`) and a
    BLAKE2 hash of the canonical rows."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(rows.shape).encode())
    if rows.dtype == object:  # typed rows (strings among numbers): their JSON
        h.update(b"object:" + orjson.dumps(rows.tolist()))
    else:
        h.update(np.ascontiguousarray(rows, dtype=np.float64).tobytes())
    return f"modelship:{model}:{version}:{artifact}:{h.hexdigest()}"


class CacheError(Exception):
    """The cache could not answer (down, slow, or in its back-off window)."""


class Cache(Protocol):
    """Where predictions are kept between requests."""

    async def get(self, key: str) -> bytes | None:
        """The stored value, or None on a miss; raises CacheError when unavailable."""

    async def set(self, key: str, value: bytes) -> None:
        """Store a value with the cache's TTL; raises CacheError when unavailable."""

    async def close(self) -> None:
        """Release connections."""


class InMemoryCache:
    """A process-local cache with TTL, for tests and single-pod use."""

    def __init__(self, ttl_seconds: float = 300.0) -> None:
        self.ttl = ttl_seconds
        self._data: dict[str, tuple[float, bytes]] = {}

    async def get(self, key: str) -> bytes | None:
        """The stored value if present and not expired."""
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.monotonic():
            del self._data[key]
            return None
        return value

    async def set(self, key: str, value: bytes) -> None:
        """Store a value until the TTL passes."""
        self._data[key] = (time.monotonic() + self.ttl, value)

    async def close(self) -> None:
        """Forget everything."""
        self._data.clear()


class RedisCache:
    """Redis with a bounded wait per call and a back-off window after errors."""

    def __init__(
        self, url: str, *, ttl_seconds: int, timeout_seconds: float, retry_seconds: float
    ) -> None:
        import redis.asyncio as aioredis  # imported only when a cache is configured

        self.ttl = ttl_seconds
        self.timeout = timeout_seconds
        self.retry_seconds = retry_seconds
        self._down_until = 0.0
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry_on_timeout=False,
            health_check_interval=0,
        )

    async def _call(self, coro_fn: str, *args: object) -> object:
        if time.monotonic() < self._down_until:
            raise CacheError("redis in back-off after an error")
        try:
            method = getattr(self._client, coro_fn)
            return await asyncio.wait_for(method(*args), self.timeout)
        except Exception as exc:  # any failure means: serve without the cache
            self._down_until = time.monotonic() + self.retry_seconds
            logger.warning(
                "prediction cache unavailable; serving without it",
                extra={"error": type(exc).__name__, "retry_in_s": self.retry_seconds},
            )
            raise CacheError(str(exc) or type(exc).__name__) from exc

    async def get(self, key: str) -> bytes | None:
        """The stored value, or None on a miss."""
        value = await self._call("get", key)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes) -> None:
        """Store a value with the TTL."""
        await self._call("set", key, value, self.ttl)

    async def close(self) -> None:
        """Close the connection pool."""
        try:
            await self._client.aclose()
        except Exception:  # closing a dead connection may fail; nothing to do
            logger.debug("closing redis failed", exc_info=True)

"""Per-API-key rate limits, shared by all replicas through the cache's Redis.

A fixed window per bucket: the first request of a window creates a Redis counter that
expires after the period, each request increments it, and a request that takes it over
the limit is answered 429 with ``Retry-After`` (the seconds until the counter expires).
One Lua script does the increment, the expiry and the read of the time left in one round
trip, atomically, bounded by ``cache_timeout_ms``. The window starts with its first
request, on Redis' clock, so the replicas' clocks do not matter.

A bucket is an API key (by a short digest of it, never the key). Without API keys every
client shares one bucket, ``anonymous``: the limit is then the model's total rate. The
client's IP address is not used: behind an Ingress or Gateway the socket's address is the
proxy's, and ``X-Forwarded-For`` is whatever the client writes; limit per client IP at
the Ingress instead (docs/security.md).

Without Redis, or while it fails (errors or slower than the timeout), each pod counts on
its own (the same windows, in memory), so the limit holds per pod instead of per
deployment; ``modelship_rate_limit_backend{backend="redis"|"local"}`` says which is in
use and the switch is logged once each way. Redis is tried again after
``cache_retry_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from .redact import redact

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"

# KEYS[1]: the bucket's counter; ARGV[1]: the period in ms. Returns {count, ms left}.
_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""

_LOCAL_MAX_BUCKETS = 100_000


class LocalWindows:
    """The same fixed windows, counted in this process."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._windows: dict[str, tuple[float, int]] = {}

    def hit(self, bucket: str, now: float | None = None) -> float | None:
        """Count one request; None when allowed, else the seconds until the window ends."""
        now = time.monotonic() if now is None else now
        end, count = self._windows.get(bucket, (0.0, 0))
        if end <= now:
            if len(self._windows) >= _LOCAL_MAX_BUCKETS:
                self._windows = {b: w for b, w in self._windows.items() if w[0] > now}
            end, count = now + self.period, 0
        count += 1
        self._windows[bucket] = (end, count)
        return None if count <= self.limit else end - now


class RateLimiter:
    """Decides whether a bucket's request may go ahead: Redis when it answers, else local."""

    def __init__(self, limit: int, period_seconds: int, *, prefix: str,
                 redis_url: str | None, timeout_seconds: float, retry_seconds: float,
                 on_backend: Any = None) -> None:
        """``on_backend(name)`` is called with "redis" or "local" whenever the backend in
        use changes (and once at start)."""
        self.limit = limit
        self.period = period_seconds
        self.prefix = prefix
        self.timeout = timeout_seconds
        self.retry_seconds = retry_seconds
        self.local = LocalWindows(limit, float(period_seconds))
        self._on_backend = on_backend
        self._down_until = 0.0
        self._client: Any = None
        self._script: Any = None
        self._where = redact(redis_url or "")
        self.backend = ""
        if redis_url:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                redis_url, socket_timeout=timeout_seconds,
                socket_connect_timeout=timeout_seconds, retry_on_timeout=False,
                health_check_interval=0)
            self._script = self._client.register_script(_SCRIPT)
            self._use("redis", None)
        else:
            self._use("local", "no Redis configured (MODELSHIP_REDIS_URL): rate limits "
                               "are counted per pod")

    def _use(self, backend: str, why: str | None) -> None:
        if backend == self.backend:
            return
        self.backend = backend
        if why is not None:
            logger.warning("rate limit: %s", why, extra={"backend": backend})
        elif backend == "redis" and self._down_until:
            logger.info("rate limit: Redis answers again; limits are shared by all replicas",
                        extra={"backend": backend})
        if self._on_backend is not None:
            self._on_backend(backend)

    async def check(self, bucket: str) -> float | None:
        """Count one request of ``bucket``; None when allowed, else seconds to wait."""
        if self._script is not None and time.monotonic() >= self._down_until:
            try:
                count, ttl_ms = await asyncio.wait_for(
                    self._script(keys=[f"{self.prefix}:{bucket}"],
                                 args=[self.period * 1000]), self.timeout)
            except Exception as exc:  # any failure: count locally for a while
                self._down_until = time.monotonic() + self.retry_seconds
                self._use("local", f"Redis at {self._where} unavailable (" + redact(
                    str(exc) or type(exc).__name__)[:200] + "); rate limits are counted "
                    f"per pod, Redis tried again in {self.retry_seconds:g}s")
            else:
                self._use("redis", None)
                if int(count) <= self.limit:
                    return None
                return max(int(ttl_ms), 0) / 1000.0
        return self.local.hit(bucket)

    @staticmethod
    def retry_after(seconds: float) -> str:
        """The Retry-After header value: whole seconds, at least 1."""
        return str(max(1, math.ceil(seconds)))

    async def close(self) -> None:
        """Close the Redis connections."""
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # closing a dead connection may fail; nothing to do
                logger.debug("closing redis failed", exc_info=True)

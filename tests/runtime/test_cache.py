"""The Redis prediction cache: hits, version-scoped keys, and Redis dying mid-test."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from modelship_runtime.cache import InMemoryCache, RedisCache, cache_key


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_key_depends_on_model_version_and_canonical_input() -> None:
    rows = np.array([[1.0, 2.0]])
    assert cache_key("m", "1", rows) == cache_key("m", "1", np.array([[1, 2]], dtype=np.int64))
    assert cache_key("m", "1", rows) != cache_key("m", "2", rows)
    assert cache_key("m", "1", rows) != cache_key("n", "1", rows)
    assert cache_key("m", "1", rows) != cache_key("m", "1", np.array([[1.0], [2.0]]))
    assert cache_key("m", "1", rows).startswith("modelship:m:1:")


async def test_in_memory_cache_expires() -> None:
    cache = InMemoryCache(ttl_seconds=0.05)
    await cache.set("k", b"v")
    assert await cache.get("k") == b"v"
    import asyncio

    await asyncio.sleep(0.08)
    assert await cache.get("k") is None


def test_cache_hits_then_survives_redis_being_killed(
        local_models: Any, serve: Any, redis_server: tuple[str, subprocess.Popen[bytes]]) -> None:
    from modelship_runtime import RuntimeSettings, create_app

    redis_url, redis_proc = redis_server
    settings = RuntimeSettings(model_dir=local_models.lr_dir, model_name="cached",
                               model_version="4", redis_url=redis_url, cache_timeout_ms=200,
                               cache_retry_seconds=0.2)
    url = serve(create_app(settings))
    row = local_models.X[5].tolist()
    expected = int(local_models.lr.predict(local_models.X[5:6])[0])

    first = httpx.post(f"{url}/predict", json={"features": row}).json()
    assert first["cache_hit"] is False and first["prediction"] == expected
    import time

    deadline = time.monotonic() + 5  # the cache write happens after the response
    while True:
        second = httpx.post(f"{url}/predict", json={"features": row}).json()
        if second["cache_hit"] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert second["cache_hit"] is True
    assert second["prediction"] == first["prediction"]
    assert second["probability"] == first["probability"]
    assert metric(url, "modelship_cache_hits_total") >= 1
    assert metric(url, "modelship_cache_errors_total") == 0

    # The entry is under the model's name and version in the real Redis.
    import redis

    keys = redis.Redis.from_url(redis_url).keys("modelship:cached:4:*")
    assert len(keys) == 1

    redis_proc.kill()
    redis_proc.wait(5)
    for _ in range(5):
        r = httpx.post(f"{url}/predict", json={"features": row})
        assert r.status_code == 200
        assert r.json() == {**r.json(), "prediction": expected, "cache_hit": False}
    assert metric(url, "modelship_cache_errors_total") >= 1
    batch = httpx.post(f"{url}/predict", json={"instances": local_models.X[:3].tolist()})
    assert batch.status_code == 200
    assert batch.json()["predictions"] == local_models.lr.predict(local_models.X[:3]).tolist()


async def test_unreachable_redis_is_a_cache_error_not_a_failure(tmp_path: Path) -> None:
    from modelship_runtime.cache import CacheError

    cache = RedisCache("redis://127.0.0.1:1/0", ttl_seconds=10, timeout_seconds=0.2,
                       retry_seconds=30)
    with pytest.raises(CacheError):
        await cache.get("k")
    with pytest.raises(CacheError, match="back-off"):  # no second connection attempt
        await cache.set("k", b"v")
    await cache.close()


def test_two_versions_never_share_an_answer(
        local_models: Any, serve: Any, redis_server: tuple[str, subprocess.Popen[bytes]]) -> None:
    from modelship_runtime import RuntimeSettings, create_app

    redis_url, _ = redis_server
    urls = [serve(create_app(RuntimeSettings(model_dir=local_models.lr_dir, model_name="same",
                                             model_version=v, redis_url=redis_url)))
            for v in ("1", "2")]
    row = {"features": local_models.X[9].tolist()}
    httpx.post(f"{urls[0]}/predict", json=row)
    import time

    time.sleep(0.2)
    assert httpx.post(f"{urls[0]}/predict", json=row).json()["cache_hit"] is True
    assert httpx.post(f"{urls[1]}/predict", json=row).json()["cache_hit"] is False


def test_a_frozen_redis_costs_at_most_the_timeout(
        local_models: Any, serve: Any, redis_server: tuple[str, subprocess.Popen[bytes]]) -> None:
    import signal
    import time

    from modelship_runtime import RuntimeSettings, create_app

    redis_url, redis_proc = redis_server
    settings = RuntimeSettings(model_dir=local_models.lr_dir, model_name="slow-cache",
                               redis_url=redis_url, cache_timeout_ms=100,
                               cache_retry_seconds=0.5)
    url = serve(create_app(settings))
    row = {"features": local_models.X[11].tolist()}
    assert httpx.post(f"{url}/predict", json=row).status_code == 200  # connection is open
    redis_proc.send_signal(signal.SIGSTOP)  # alive but answering nothing: slow Redis
    try:
        t0 = time.monotonic()
        r = httpx.post(f"{url}/predict", json=row, timeout=10)
        took = time.monotonic() - t0
        assert r.status_code == 200 and r.json()["cache_hit"] is False
        assert took < 2.0  # bounded by the 100 ms cache timeout, not by Redis
        assert metric(url, "modelship_cache_errors_total") >= 1
    finally:
        redis_proc.send_signal(signal.SIGCONT)
    time.sleep(0.6)  # the back-off window passes; the cache is used again
    deadline = time.monotonic() + 5
    while httpx.post(f"{url}/predict", json=row).json()["cache_hit"] is False:
        assert time.monotonic() < deadline, "the cache never came back after Redis did"
        time.sleep(0.1)

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
    assert cache_key("m", "1", rows, "a") != cache_key("m", "1", rows, "b")


def test_artifact_tag_names_uri_run_and_file() -> None:
    from modelship_runtime.cache import artifact_tag

    base = artifact_tag("models:/m/1", "run1", "sha")
    assert len({base, artifact_tag("models:/m/1", "run2", "sha"),
                artifact_tag("models:/m/1", "run1", "sha2"),
                artifact_tag("models:/m/2", "run1", "sha"),
                artifact_tag(None, "run1", "sha")}) == 5
    assert artifact_tag("models:/m/1", "run1", "sha") == base


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

    keys = redis.Redis.from_url(redis_url).keys("modelship:cached:4:*")  # and the artifact
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

    deadline = time.monotonic() + 30  # the entry is written after the answer is sent
    while httpx.post(f"{urls[0]}/predict", json=row).json()["cache_hit"] is False:
        assert time.monotonic() < deadline, "the first answer was never cached"
        time.sleep(0.05)
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


def test_two_artifacts_under_one_name_and_version_never_share_an_answer(
        local_models: Any, serve: Any, tmp_path: Path,
        redis_server: tuple[str, subprocess.Popen[bytes]]) -> None:
    """A name and version registered again (another run, another file) is another artifact:
    the same input is predicted afresh; the same artifact on another pod shares entries."""
    import shutil
    import time

    import yaml
    from modelship_runtime import RuntimeSettings, create_app

    redis_url, _ = redis_server
    dirs = []
    for name, src, run in (("a", local_models.lr_dir, "run-a"), ("b", local_models.rf_dir,
                                                               "run-b")):
        shutil.copytree(src, tmp_path / name)
        spec = yaml.safe_load((tmp_path / name / "MLmodel").read_text())
        spec["run_id"] = run
        (tmp_path / name / "MLmodel").write_text(yaml.safe_dump(spec))
        dirs.append(tmp_path / name)
    urls = [serve(create_app(RuntimeSettings(model_dir=d, model_name="iris", model_version="3",
                                             redis_url=redis_url)))
            for d in (dirs[0], dirs[1], dirs[0])]
    X = local_models.X[20:60]
    rows = [row for row, a, b in zip(X.tolist(), local_models.lr.predict(X),
                                     local_models.rf.predict(X), strict=True) if a != b]
    assert rows, "the two models must disagree somewhere for this test to mean anything"
    row = {"features": rows[0]}
    first = httpx.post(f"{urls[0]}/predict", json=row).json()
    deadline = time.monotonic() + 10  # the cache write happens after the response
    while not httpx.post(f"{urls[2]}/predict", json=row).json()["cache_hit"]:
        assert time.monotonic() < deadline, "the same artifact on another pod never hit"
        time.sleep(0.05)
    other = httpx.post(f"{urls[1]}/predict", json=row).json()
    assert other["cache_hit"] is False
    assert other["prediction"] != first["prediction"]
    assert other["prediction"] == int(local_models.rf.predict(np.array([rows[0]]))[0])

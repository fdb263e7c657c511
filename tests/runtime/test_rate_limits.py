"""Rate limits against real processes: two runtimes share one API key's budget through a
real redis-server; without Redis each pod counts alone and says so in a metric; over the
limit is a 429 with Retry-After; credentials in the Redis URL never reach a log line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import free_port, metric, wait_serving

RUNTIME = str(Path(sys.executable).parent / "modelship-runtime")
ROW = {"features": [0.1] * 8}
LIMIT = 10


class Runtimes:
    """``modelship-runtime serve`` processes started together, stopped by their pids."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, n: int, model_dir: Path, env: dict[str, str]) -> list[str]:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("MODELSHIP_", "MLFLOW_", "REDIS_"))}
        urls = []
        for _ in range(n):
            port = free_port()
            log = self.tmp / f"runtime-{port}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [RUNTIME, "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1",
                     "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                    env={**base, "MODELSHIP_GRPC_PORT": "0", **env})
            self.procs.append((proc, log))
            urls.append(f"http://127.0.0.1:{port}")
        for url, (proc, log) in zip(urls, self.procs[-n:], strict=True):
            wait_serving(url, proc, log)
        return urls

    def logs(self) -> str:
        return "".join(log.read_text() for _, log in self.procs)

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def runtimes(tmp_path: Path) -> Iterator[Runtimes]:
    r = Runtimes(tmp_path)
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LogisticRegression in a skops file: a model directory that needs no MLflow."""
    import numpy as np
    import skops.io
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 8))
    d = tmp_path_factory.mktemp("rl-model")
    skops.io.dump(LogisticRegression().fit(X, (X[:, 0] > 0).astype(int)), d / "model.skops")
    return d


def keys_file(tmp_path: Path) -> Path:
    (tmp_path / "keys").write_text("key-shared\nkey-other\n")
    return tmp_path / "keys"


def post(url: str, key: str) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=ROW, headers={"X-API-Key": key}, timeout=10)


def test_two_replicas_share_one_key_budget_through_redis(
        runtimes: Runtimes, model_dir: Path, tmp_path: Path,
        redis_server: tuple[str, subprocess.Popen[bytes]]) -> None:
    redis_url, _ = redis_server
    a, b = runtimes.start(2, model_dir, {
        "MODELSHIP_REDIS_URL": redis_url, "MODELSHIP_RATE_LIMIT_REQUESTS": str(LIMIT),
        "MODELSHIP_RATE_LIMIT_PERIOD_SECONDS": "60", "MODELSHIP_CACHE_TIMEOUT_MS": "2000",
        "MODELSHIP_API_KEYS_FILE": str(keys_file(tmp_path))})
    codes = [post((a, b)[i % 2], "key-shared").status_code for i in range(LIMIT)]
    assert codes == [200] * LIMIT
    over = [post(a, "key-shared"), post(b, "key-shared")]
    for r in over:
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "rate limit exceeded: 10 requests per 60 s for this API key" in r.json()["error"]
    assert post(b, "key-other").status_code == 200  # another key has its own budget
    assert httpx.post(f"{a}/predict", json=ROW).status_code == 401  # no key: no budget used
    for url in (a, b):
        assert metric(url, "modelship_rate_limit_backend", backend="redis") == 1
        assert metric(url, "modelship_rate_limit_backend", backend="local") == 0
        assert metric(url, "modelship_rate_limited_total") == 1
        assert httpx.get(f"{url}/readyz").status_code == 200  # open paths are not limited


def test_without_redis_each_pod_counts_alone_and_says_so(
        runtimes: Runtimes, model_dir: Path) -> None:
    dead = f"redis://default:hunter2-secret@127.0.0.1:{free_port()}/0"
    (url,) = runtimes.start(1, model_dir, {
        "MODELSHIP_REDIS_URL": dead, "MODELSHIP_RATE_LIMIT_REQUESTS": "3",
        "MODELSHIP_RATE_LIMIT_PERIOD_SECONDS": "120", "MODELSHIP_CACHE_RETRY_SECONDS": "300"})
    codes = [httpx.post(f"{url}/predict", json=ROW).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]  # no API keys: every client shares one bucket
    r = httpx.post(f"{url}/predict", json=ROW)
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 120
    assert "without API keys, all clients together" in r.json()["error"]
    assert metric(url, "modelship_rate_limit_backend", backend="local") == 1
    assert metric(url, "modelship_rate_limit_backend", backend="redis") == 0
    logs = runtimes.logs()
    assert logs.count("rate limit: Redis at redis://***@127.0.0.1:") == 1, logs  # once
    assert "hunter2-secret" not in logs


def test_local_windows_reset_after_the_period() -> None:
    from modelship_runtime.ratelimit import LocalWindows

    w = LocalWindows(limit=2, period=10.0)
    assert [w.hit("k", now=100.0), w.hit("k", now=101.0)] == [None, None]
    assert w.hit("k", now=102.5) == pytest.approx(7.5)
    assert w.hit("other", now=102.5) is None
    assert w.hit("k", now=110.0) is None  # a new window

"""Adaptive micro-batching: concurrent requests share predict calls, a lone one waits not."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
from modelship_runtime.dataplane import Batcher
from modelship_runtime.model import Prediction


class Recorder:
    """A model stand-in: labels are each row's first value; records every call."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.calls: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, rows: np.ndarray) -> Prediction:
        self.calls.append(rows.shape[0])
        self.threads.add(threading.current_thread().name)
        if (rows[:, 0] < 0).any():
            raise ValueError("negative first value")
        time.sleep(self.delay)
        return Prediction(rows[:, 0].tolist(), None)


def make(rec: Recorder, *, enabled: bool = True, max_rows: int = 64,
         max_wait_s: float = 0.0) -> Batcher:
    return Batcher(rec, enabled=enabled, max_rows=max_rows, max_wait_s=max_wait_s,
                   on_call=lambda n, s: None)


async def test_a_lone_request_is_predicted_at_once_off_the_loop() -> None:
    rec = Recorder(delay=0.0)
    b = make(rec, max_wait_s=30)
    await b.predict(np.array([[0.0, 0.0]]))  # starts the worker thread
    t0 = time.perf_counter()
    pred, _ = await b.predict(np.array([[7.0, 1.0]]))
    assert time.perf_counter() - t0 < 15  # did not wait out max_wait
    assert pred.labels == [7.0] and rec.calls == [1, 1]
    assert rec.threads == {"modelship-predict_0"}
    b.close()


async def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    rec = Recorder(delay=0.02)
    b = make(rec)
    reqs = [np.array([[float(i), 0.0]] * (1 + i % 3)) for i in range(30)]
    results = await asyncio.gather(*(b.predict(r) for r in reqs))
    for i, (pred, _) in enumerate(results):
        assert pred.labels == [float(i)] * (1 + i % 3)
    assert sum(rec.calls) == sum(r.shape[0] for r in reqs)
    assert len(rec.calls) <= 3  # one lone call, then the rest together (64-row cap)
    assert max(rec.calls) <= 64
    b.close()


async def test_batches_respect_the_row_cap() -> None:
    rec = Recorder(delay=0.01)
    b = make(rec, max_rows=4)
    results = await asyncio.gather(*(b.predict(np.array([[float(i)]])) for i in range(20)))
    assert [p.labels for p, _ in results] == [[float(i)] for i in range(20)]
    assert max(rec.calls) <= 4 and sum(rec.calls) == 20
    big, _ = await b.predict(np.zeros((9, 1)))  # larger than the cap: predicted on its own
    assert big.labels == [0.0] * 9 and rec.calls[-1] == 9
    b.close()


async def test_one_failing_request_does_not_fail_its_batch() -> None:
    rec = Recorder(delay=0.01)
    b = make(rec)
    values = [1.0, 2.0, -1.0, 3.0, 4.0]
    results = await asyncio.gather(*(b.predict(np.array([[v]])) for v in values),
                                   return_exceptions=True)
    for v, r in zip(values, results, strict=True):
        if v < 0:
            assert isinstance(r, ValueError)
        else:
            assert not isinstance(r, BaseException) and r[0].labels == [v]
    b.close()


async def test_disabled_means_one_call_per_request() -> None:
    rec = Recorder(delay=0.005)
    b = make(rec, enabled=False)
    await asyncio.gather(*(b.predict(np.array([[1.0]])) for _ in range(6)))
    assert rec.calls == [1] * 6
    b.close()


async def test_max_wait_lets_requests_still_being_read_join() -> None:
    rec = Recorder(delay=0.05)  # a heavy model: a call costs more than the wait
    b = make(rec, max_wait_s=0.03)
    await b.predict(np.array([[0.0]]))
    b.arriving = 1  # a request is being read while the first is submitted

    async def late() -> Prediction:
        await asyncio.sleep(0.005)
        b.arriving = 0
        return (await b.predict(np.array([[2.0]])))[0]

    first, second = await asyncio.gather(b.predict(np.array([[1.0]])), late())
    assert first[0].labels == [1.0] and second.labels == [2.0]
    assert rec.calls == [1, 2]  # waited for the second instead of predicting alone
    b.close()


async def test_a_light_model_never_waits() -> None:
    rec = Recorder(delay=0.0)
    b = make(rec, max_wait_s=30)
    await b.predict(np.array([[0.0]]))
    b.arriving = 3  # would be waited for, were predict calls expensive
    t0 = time.perf_counter()
    await b.predict(np.array([[1.0]]))
    assert time.perf_counter() - t0 < 15  # far from the 30 s it would have waited
    b.close()


@pytest.mark.parametrize("concurrency", [32])
async def test_concurrent_http_requests_share_predict_calls(
        rf_url: str, registry: Any, concurrency: int) -> None:
    def batch_metrics() -> tuple[float, float]:
        text = httpx.get(f"{rf_url}/metrics").text
        vals = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("model_batch_rows_")}
        return vals["model_batch_rows_count"], vals["model_batch_rows_sum"]

    calls0, rows0 = batch_metrics()
    rows = registry.X[:concurrency * 3]
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=rf_url, limits=limits) as client:
        responses = await asyncio.gather(*(client.post("/predict", json={"features": r.tolist()})
                                           for r in rows))
    assert [r.json()["prediction"] for r in responses] == registry.rf_v1.predict(rows).tolist()
    calls1, rows1 = batch_metrics()
    assert rows1 - rows0 == len(rows)
    assert calls1 - calls0 < len(rows)  # predict calls were shared


@pytest.mark.parametrize("enabled", [True, False], ids=["batched", "unbatched"])
async def test_busy_while_a_request_is_read_or_predicted(enabled: bool) -> None:
    """What the shadow mirror sheds copies by: requests being read or predicted."""
    rec = Recorder(delay=0.0)
    b = make(rec, enabled=enabled)
    assert not b.busy()
    b.arriving += 1
    assert b.busy()
    b.arriving -= 1
    started, release = threading.Event(), threading.Event()

    def held(rows: np.ndarray) -> Prediction:
        started.set()
        assert release.wait(60)
        return Prediction(rows[:, 0].tolist(), None)

    b._predict = held  # type: ignore[method-assign]
    call = asyncio.ensure_future(b.predict(np.array([[1.0]])))
    deadline = time.monotonic() + 60
    while not started.is_set():
        assert time.monotonic() < deadline, "the prediction never started"
        await asyncio.sleep(0.01)
    assert b.busy()
    release.set()
    assert (await call)[0].labels == [1.0]
    assert not b.busy()
    b.close()

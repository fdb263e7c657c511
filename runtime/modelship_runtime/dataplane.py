"""The work behind the routes: parse, validate, cache, (micro-)batch, predict, count.

Routes stay thin and every protocol (seed ``/predict``, KServe V1, Open Inference V2)
ends in :meth:`DataPlane.infer` with a validated float64 matrix. Validation happens here,
before anything reaches the estimator, so a bad request is a 400 naming the problem and
never a 500 from deep inside scikit-learn.

Predictions run on one worker thread, so the event loop keeps reading requests while
the estimator works. With micro-batching on, requests that arrive while a predict call
runs wait for it to end and then go together into the next call (up to
``microbatch_max_size`` rows): a lone request is predicted at once, and under load one
call serves many requests. A random forest costs about the same on one row as on 32,
so this is what multiplies its throughput.

Shadow traffic (:mod:`modelship_runtime.shadow`, :mod:`modelship_runtime.agreement`)
passes through :meth:`DataPlane.infer` as a :class:`ShadowContext`: a request this runtime
will mirror keeps its predictions; a mirrored request arriving here skips the cache and
has its predictions compared with the stable's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import orjson

from .bounds import Decoder, precheck
from .cache import Cache, CacheError, artifact_tag, cache_key
from .errors import BadRequest, ModelNotReady, NotJSON, OutputNotFinite
from .metrics import Metrics
from .model import Model, Prediction
from .typed import typed_rows

T = TypeVar("T")

SHADOW_SCOPE_KEY = "modelship.shadow"
"""ASGI scope key of a request's :class:`ShadowContext` (set by the serving middleware)."""


class ShadowContext(Protocol):
    """What a request's shadow traffic needs from its predictions."""

    @property
    def cacheable(self) -> bool:
        """False: neither read nor write the prediction cache for this request."""

    def observe(self, prediction: Prediction) -> None:
        """Called with the request's predictions once they are made (or read from cache)."""


def loads(body: bytes) -> Any:
    """Parse a JSON body (whatever its Content-Type); NaN/Infinity literals parse (to be
    refused by validation). NotJSON when it does not parse."""
    if not body:
        raise NotJSON("empty body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # the stdlib accepts NaN/Infinity, so validation can name them
            return json.loads(body)
        except (ValueError, RecursionError):
            raise NotJSON(f"malformed JSON: {exc}") from None


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _describe_nonfinite(rows: np.ndarray, where: str, single: bool) -> str:
    r, c = (int(i) for i in np.argwhere(~np.isfinite(rows))[0])
    v = float(rows[r, c])
    what = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    at = f"{where}[{c}]" if single else f"{where}[{r}][{c}]"
    return at + f" is {what}"


class Validator:
    """Turns JSON values into float64 matrices the model accepts, or raises BadRequest."""

    def __init__(self, n_features: int | None, allow_nan: bool, max_rows: int,
                 max_columns: int = 10_000, kinds: list[str] | None = None,
                 names: list[str] | None = None) -> None:
        self.n_features = n_features
        self.allow_nan = allow_nan
        self.max_rows = max_rows
        self.max_columns = max_columns
        self.kinds = kinds
        """Per column, the kind of value a typed model takes (:mod:`.typed`); None: numbers."""
        self.names = names
        """The model's input names (in its order), to name a typed model's bad cells."""

    def row(self, values: object, where: str = "features") -> np.ndarray:
        """One row (a JSON array of numbers) as a 1 x n matrix."""
        if not isinstance(values, list):
            raise BadRequest(f"{where} must be an array of numbers, got {_type_name(values)}")
        self._check_width(len(values), where)
        if self.kinds is not None:
            return typed_rows(values, self.kinds, self.allow_nan, where, True, self.names)
        for i, v in enumerate(values):
            t = type(v)
            if t is not float and t is not int:
                self._not_a_number(v, f"{where}[{i}]")
        return self._finish(values, where, single=True, n_rows=1)

    def _not_a_number(self, v: object, where: str) -> None:
        """A value that is not a number: null is a missing value (NaN, as pandas writes
        it) for a model that takes them; anything else is a 400."""
        if v is None and self.allow_nan:
            return
        raise BadRequest(f"{where} must be a number, got {_type_name(v)}")

    def rows(self, values: object, where: str = "instances") -> np.ndarray:
        """A batch (a JSON array of arrays of numbers) as a matrix."""
        if not isinstance(values, list):
            raise BadRequest(f"{where} must be an array of rows, got {_type_name(values)}")
        n = len(values)
        if n == 0:
            raise BadRequest(f"{where} is empty: send at least one row")
        if n > self.max_rows:
            raise BadRequest(f"{where} has {n} rows; the maximum is {self.max_rows} "
                             "(MODELSHIP_MAX_ROWS)")
        if self.kinds is not None:
            return self._typed(values, where)
        for r, row in enumerate(values):
            if not isinstance(row, list):
                raise BadRequest(f"{where}[{r}] must be an array of numbers, got "
                                 f"{_type_name(row)}")
            self._check_width(len(row), f"{where}[{r}]")
            for i, v in enumerate(row):
                t = type(v)
                if t is not float and t is not int:
                    self._not_a_number(v, f"{where}[{r}][{i}]")
        return self._finish(values, where, single=False, n_rows=n)

    def _typed(self, values: list[Any], where: str) -> np.ndarray:
        """Rows of a model of typed columns (:mod:`.typed`) as an object matrix. A model
        of one column (a text model) also takes one value per row, unwrapped
        (``{"instances": ["good", "bad"]}``)."""
        assert self.kinds is not None
        if len(self.kinds) == 1 and not any(type(row) is list for row in values):
            values = [[row] for row in values]
        for r, row in enumerate(values):
            if not isinstance(row, list):
                raise BadRequest(f"{where}[{r}] must be an array of values, got "
                                 f"{_type_name(row)}")
            self._check_width(len(row), f"{where}[{r}]")
        return typed_rows(values, self.kinds, self.allow_nan, where, False, self.names)

    def tensor_shape(self, shape: list[int], where: str) -> tuple[int, int]:
        """(rows, features) of a V2 input tensor's shape, checked against the model's width
        and the row and column limits (the JSON, binary and gRPC forms alike)."""
        width = shape[-1]
        n_rows = 1 if len(shape) == 1 else shape[0]
        if self.n_features is not None and width != self.n_features:
            raise BadRequest(f"{where}.shape {shape} has {width} features; the model takes "
                             f"{self.n_features}")
        if n_rows == 0 or width == 0:
            raise BadRequest(f"{where}.shape {shape} is empty: send at least one row")
        if width > self.max_columns:
            raise BadRequest(f"{where}.shape {shape} has {width} features; the maximum is "
                             f"{self.max_columns} (MODELSHIP_MAX_COLUMNS)")
        if n_rows > self.max_rows:
            raise BadRequest(f"{where} has {n_rows} rows; the maximum is {self.max_rows} "
                             "(MODELSHIP_MAX_ROWS)")
        return n_rows, width

    def _check_width(self, n: int, where: str) -> None:
        if self.n_features is not None and n != self.n_features:
            raise BadRequest(f"{where} has {n} values; the model takes {self.n_features} features")
        if n > self.max_columns:
            raise BadRequest(f"{where} has {n} values; the maximum is {self.max_columns} "
                             "(MODELSHIP_MAX_COLUMNS)")
        if n == 0:
            raise BadRequest(f"{where} is empty")

    def _finish(self, values: list[Any], where: str, *, single: bool, n_rows: int) -> np.ndarray:
        try:
            arr = np.array(values, dtype=np.float64)
        except (OverflowError, ValueError) as exc:
            raise BadRequest(f"{where}: a value is out of the float64 range ({exc})") from None
        if single:
            arr = arr.reshape(1, -1)
        self.check_finite(arr, where, single)
        return arr

    def check_finite(self, arr: np.ndarray, where: str, single: bool = False) -> None:
        """Refuse Infinity always and NaN unless the model accepts missing values."""
        if self.allow_nan:
            if np.isinf(arr).any():
                raise BadRequest(_describe_nonfinite(np.where(np.isnan(arr), 0, arr), where,
                                                     single) + "; values must be finite")
        elif not np.isfinite(arr).all():
            raise BadRequest(
                _describe_nonfinite(arr, where, single)
                + "; this model takes finite numbers only (no NaN/Infinity)"
            )


@dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future[tuple[Prediction, float]]


class Batcher:
    """Runs predict calls on one worker thread, sharing calls between concurrent requests."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], Prediction],
        *,
        enabled: bool,
        max_rows: int,
        max_wait_s: float,
        on_call: Callable[[int, float], None],
    ) -> None:
        self._predict = predict
        self.enabled = enabled
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self._on_call = on_call
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="modelship-predict", initializer=_worker_init
        )
        self._pending: list[_Pending] = []
        self._running = False
        self._drainer: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        self._want = 0  # queued requests the drain task is waiting for (0: not waiting)
        self.arriving = 0
        """Requests being read or validated; lets the batcher wait for them (max_wait)."""
        self.call_cost = 0.0
        """Moving average of one predict call's duration, in seconds."""
        self._inflight = 0
        self._direct = 0  # predictions outside the batcher (too large, or batching off)
        self._peak = 0
        self._last_peak = 0
        self._window_end = 0.0

    def busy(self) -> bool:
        """Whether requests are being read or predicted."""
        return self._running or self.arriving > 0 or self._inflight > 0 or self._direct > 0

    def expected(self) -> int:
        """Requests expected per batch: the most in flight at once in the last 1-2 s."""
        return max(self._peak, self._last_peak, len(self._pending) + self.arriving)

    def _track(self, now: float) -> None:
        if now > self._window_end:
            self._last_peak, self._peak = self._peak, 0
            self._window_end = now + 1.0
        if self._inflight > self._peak:
            self._peak = self._inflight

    def _timed(self, rows: np.ndarray) -> tuple[Prediction, float]:
        t0 = time.perf_counter()
        pred = self._predict(rows)
        elapsed = time.perf_counter() - t0
        self.call_cost = 0.8 * self.call_cost + 0.2 * elapsed if self.call_cost else elapsed
        self._on_call(rows.shape[0], elapsed)
        return pred, elapsed

    async def predict(self, rows: np.ndarray) -> tuple[Prediction, float]:
        """Predictions for ``rows`` and the duration of the estimator call that made them."""
        loop = asyncio.get_running_loop()
        if not self.enabled or rows.shape[0] >= self.max_rows:
            self._direct += 1
            try:
                return await loop.run_in_executor(self._executor, self._timed, rows)
            finally:
                self._direct -= 1
        if not self._running and not self._pending and not self._should_wait():
            return await self._alone(loop, rows)
        fut: asyncio.Future[tuple[Prediction, float]] = loop.create_future()
        self._pending.append(_Pending(rows, fut))
        self._inflight += 1
        self._track(loop.time())
        if self._want and (len(self._pending) >= self._want or
                           sum(p.rows.shape[0] for p in self._pending) >= self.max_rows):
            self._want = 0
            self._arrived.set()
        if not self._running:
            self._running = True
            self._drainer = loop.create_task(self._drain())
        try:
            return await fut
        finally:
            self._inflight -= 1

    def _should_wait(self) -> bool:
        # Waiting pays only when a call costs more than the wait (heavy models); for a
        # light model the next call comes round sooner than the wait would.
        return 0 < self.max_wait_s < self.call_cost and len(self._pending) < self.expected()

    async def _alone(self, loop: asyncio.AbstractEventLoop, rows: np.ndarray
                     ) -> tuple[Prediction, float]:
        """The idle fast path: no queue, no task; later arrivals queue behind this call."""
        self._running = True
        self._inflight += 1
        self._track(loop.time())
        try:
            return await loop.run_in_executor(self._executor, self._timed, rows)
        finally:
            self._inflight -= 1
            if self._pending:
                self._drainer = loop.create_task(self._drain())
            else:
                self._running = False

    async def _wait_for_more(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait (at most max_wait) while fewer requests are queued than recently were in
        flight at once; a lone client (one in flight) never waits."""
        self._arrived.clear()
        self._want = self.expected()
        try:
            await asyncio.wait_for(self._arrived.wait(), self.max_wait_s)
        except TimeoutError:
            pass
        finally:
            self._want = 0

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                if self._should_wait():
                    await self._wait_for_more(loop)
                batch: list[_Pending] = []
                total = 0
                while self._pending and (
                    not batch or total + self._pending[0].rows.shape[0] <= self.max_rows
                ):
                    item = self._pending.pop(0)
                    batch.append(item)
                    total += item.rows.shape[0]
                await self._run(loop, batch)
        finally:
            self._running = False

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        rows = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
        try:
            pred, elapsed = await loop.run_in_executor(self._executor, self._timed, rows)
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            for p in batch:  # one bad request must not fail the others
                await self._run(loop, [p])
            return
        start = 0
        for p in batch:
            n = p.rows.shape[0]
            if not p.future.done():
                p.future.set_result((pred.slice(start, start + n), elapsed))
            start += n

    def close(self) -> None:
        """Stop the worker thread after the calls already queued."""
        self._executor.shutdown(wait=True)


def _worker_init() -> None:
    # Validation has already refused non-finite values the model cannot take, so let
    # scikit-learn skip its own finiteness scan (its config is per thread).
    try:
        import sklearn

        sklearn.set_config(assume_finite=True)
    except ImportError:  # pragma: no cover - sklearn is a runtime dependency
        pass


@dataclass
class Result:
    """Predictions for one request's rows, and how they were made."""

    prediction: Prediction
    cache_hit: bool
    predict_seconds: float


class DataPlane:
    """Validation, cache, batching, prediction and model metrics for one model."""

    def __init__(
        self,
        model: Model,
        metrics: Metrics,
        *,
        cache: Cache | None = None,
        microbatch: bool = True,
        microbatch_max_size: int = 64,
        microbatch_max_wait_ms: float = 0.0,
        max_batch_size: int = 1000,
        max_columns: int = 10_000,
        max_body_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.model = model
        self.max_body_bytes = max_body_bytes  # what a compressed body may decompress to
        self.metrics = metrics
        self.cache = cache
        self.max_batch_size = max_batch_size
        self.max_columns = max_columns
        self.validator = Validator(None, False, max_batch_size, max_columns)
        self.decoder = Decoder()
        self._artifact = ""
        self._background: set[asyncio.Task[None]] = set()
        self.batcher = Batcher(
            model.predict,
            enabled=microbatch,
            max_rows=microbatch_max_size,
            max_wait_s=microbatch_max_wait_ms / 1000.0,
            on_call=self._on_call,
        )

    def model_loaded(self) -> None:
        """Read the loaded model's shape into the validator; call once after load."""
        info = self.model.info
        self.validator = Validator(info.n_features, info.allow_nan, self.max_batch_size,
                                   self.max_columns, info.input_kinds, info.input_columns)
        self._artifact = artifact_tag(info.uri, info.run_id, info.artifact_sha256)

    def _on_call(self, n_rows: int, elapsed: float) -> None:
        self.metrics.prediction_duration.observe(elapsed)
        self.metrics.batch_size.observe(n_rows)

    async def parse(self, raw: bytes, read: Callable[..., T], *args: Any) -> T:
        """``read(raw, *args)`` (a protocol's parse of a body into rows) once the body is
        bounded (:func:`.bounds.precheck`: BadRequest when it holds more rows or values
        than allowed); large bodies are parsed off the event loop."""
        return await self.decoder.run(raw, self._bounded, read, args)

    def _bounded(self, raw: bytes, read: Callable[..., T], args: tuple[Any, ...]) -> T:
        v = self.validator
        precheck(raw, v.max_rows, v.n_features or v.max_columns)
        return read(raw, *args)

    def busy(self) -> bool:
        """Whether prediction requests are being read or predicted (the shadow mirror
        sheds copies meanwhile)."""
        return self.batcher.busy()

    def check_ready(self) -> None:
        """Raise ModelNotReady (503) until the model is loaded."""
        if not self.model.ready:
            raise ModelNotReady(f"model {self.model.name} is not loaded yet")

    async def infer(self, rows: np.ndarray, shadow: ShadowContext | None = None) -> Result:
        """Predict validated rows, through the cache when one is configured (and
        ``shadow``, when given, lets it); ``shadow`` observes the predictions."""
        self.check_ready()
        key = None
        if self.cache is not None and (shadow is None or shadow.cacheable):
            key = cache_key(self.model.name, self.model.version, rows, self._artifact)
            hit = await self._cache_get(key)
            if hit is not None:
                self._count(hit)
                if shadow is not None:
                    shadow.observe(hit)
                return Result(hit, True, 0.0)
        pred, elapsed = await self.batcher.predict(rows)
        self._check_finite(pred)
        self._count(pred)
        if key is not None:
            self._spawn(self._cache_set(key, pred))
        if shadow is not None:
            shadow.observe(pred)
        return Result(pred, False, elapsed)

    def _check_finite(self, pred: Prediction) -> None:
        values: Any = ()
        if pred.probabilities is not None:
            values = itertools.chain.from_iterable(pred.probabilities)
        elif self.model.info.classes is None:
            values = pred.labels
            if values and isinstance(values[0], list):  # several outputs per row
                values = itertools.chain.from_iterable(values)
        for i, value in enumerate(values):
            if isinstance(value, float) and not math.isfinite(value):
                width = len(pred.probabilities[0]) if pred.probabilities else (
                    len(pred.labels[0]) if isinstance(pred.labels[0], list) else 1)
                raise OutputNotFinite(
                    f"the model's answer for row {i // width} is {value} (an input too large "
                    "for it?): not sent as a number")

    def _count(self, pred: Prediction) -> None:
        self.metrics.predictions.inc(len(pred.labels))
        if self.model.info.classes is not None:
            self.metrics.count_classes(pred.labels)

    async def _cache_get(self, key: str) -> Prediction | None:
        assert self.cache is not None
        try:
            raw = await self.cache.get(key)
        except CacheError:
            self.metrics.cache_errors.inc()
            return None
        if raw is None:
            self.metrics.cache_misses.inc()
            return None
        try:
            data = orjson.loads(raw)
            pred = Prediction(list(data["l"]), data["p"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.metrics.cache_errors.inc()
            return None
        self.metrics.cache_hits.inc()
        return pred

    async def _cache_set(self, key: str, pred: Prediction) -> None:
        assert self.cache is not None
        try:
            await self.cache.set(key, orjson.dumps({"l": pred.labels, "p": pred.probabilities}))
        except CacheError:
            self.metrics.cache_errors.inc()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Finish background cache writes, stop the worker, close the cache."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self.batcher.close()
        self.decoder.close()
        if self.cache is not None:
            await self.cache.close()

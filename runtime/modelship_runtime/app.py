"""The app factory: one FastAPI app serving one model, wrapped in one lean ASGI layer.

``create_app(settings)`` builds the model, metrics, cache and data plane; the lifespan
loads the model (in a thread) before the server accepts traffic and drains background
work at shutdown. Cross-cutting work (request ids, the model-version header, the body-size
limit, API keys (:mod:`modelship_runtime.auth`), rate limits
(:mod:`modelship_runtime.ratelimit`), request metrics, shadow traffic) lives in
:class:`ServingMiddleware`, a plain ASGI middleware: Starlette's ``BaseHTTPMiddleware``
costs several times more per request and the hot path is what this runtime is for.
``app.state.drain`` is the SIGTERM drain state (:mod:`modelship_runtime.drain`) that
readiness and the response headers follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from . import __version__, binary, codings, fastpath, protocols
from .agreement import Judge
from .auth import KeyRing
from .cache import Cache, RedisCache
from .dataplane import SHADOW_SCOPE_KEY, DataPlane, ShadowContext
from .drain import CONNECTION_CLOSE, Drain
from .endpoints import build_router
from .errors import ModelshipError, NotJSON, PayloadTooLarge
from .logging import model_version_var, request_id_var
from .metrics import Metrics
from .model import Model
from .pull import read_metadata
from .ratelimit import ANONYMOUS, RateLimiter
from .settings import RuntimeSettings
from .shadow import Busy, Mirror, MirrorSwitch, Outgoing, SenderProcess
from .shadow_sender import SHADOW_HEADER, STABLE_PREDICTION_HEADER, STABLE_VERSION_HEADER
from .sklearn import SKLearnModel

logger = logging.getLogger("modelship_runtime")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]


class _Unjudged:
    """A mirrored request where nothing compares predictions: still no cache, no mirror."""

    cacheable = False

    def observe(self, prediction: object) -> None:
        pass


_UNJUDGED = _Unjudged()

OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/v2/health/live",
                        "/v2/health/ready", "/ping", "/health", "/docs", "/openapi.json",
                        "/docs/oauth2-redirect"})
PROBE_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/v2/health/live",
                         "/v2/health/ready", "/ping", "/health"})
"""Answered whatever the load: a pod shedding load is alive and still to be scraped."""

CLIENT_CLOSED = 499
"""Status recorded (nginx's convention) for a request whose client went away before the
answer was sent: neither a success nor a server error."""


def error_body(message: str) -> bytes:
    """The error body of every route: ``{"error": "..."}``."""
    return orjson.dumps({"error": message})


_HOST = re.compile(rb"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


def explain_not_json(exc: NotJSON, scope: Scope, plane: DataPlane) -> ModelshipError:
    """The 400/415 for a body that is not JSON, with a curl line for this very route
    (only on that error path: the request's headers are looked at here, not before)."""
    content_type = host = None
    for k, v in scope["headers"]:
        if k == b"content-type":
            content_type = v
        elif k == b"host" and _HOST.fullmatch(v):
            host = v.decode()
    if host is None:
        server = scope.get("server") or ("localhost", 8080)
        host = f"{server[0]}:{server[1]}"
    url = f"{scope.get('scheme', 'http')}://{host}{scope['path']}"
    return protocols.not_json(exc, content_type, url, plane.validator.n_features)


class ServingMiddleware:
    """Request id, version header, limits, auth, request metrics and shadow traffic (which
    requests are mirrored, which arrive mirrored), in one ASGI layer.

    At most ``max_concurrency`` requests run at once; more are answered 503 with
    ``Retry-After`` (probes excepted). A request whose client disconnected before its
    answer was sent is counted with status 499 (:data:`CLIENT_CLOSED`). uvicorn's
    request cycle, whose bound ``receive`` the server passes, says so in ``disconnected``."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, version: str, max_body_bytes: int,
                 api_keys: KeyRing | None, access_log: bool,
                 plane: DataPlane | None = None, drain: Drain | None = None,
                 mirror: MirrorSwitch | None = None, judge: Judge | None = None,
                 limiter: RateLimiter | None = None,
                 max_concurrency: int | None = None, routes: list[Any] | None = None) -> None:
        self.app = app
        self.max_concurrency = max_concurrency
        self.routes = routes or []
        self.in_flight = 0
        self.plane = plane
        self.drain = drain
        self.mirror = mirror
        self.judge = judge
        self.metrics = metrics
        self.version_header = (b"x-model-version", version.encode())
        self.version = version
        self.max_body = max_body_bytes
        self.api_keys = api_keys
        self.limiter = limiter
        self.access_log = access_log
        self._children: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}
        self._shadow_children: dict[tuple[str, int], Any] = {}
        self._counter = 0
        self._prefix = os.urandom(4).hex()

    def _scan(self, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, ShadowContext | None]:
        """The request id (the client's, or a new one) and, for a mirrored request, its
        shadow context; in one pass over the headers."""
        rid = shadow = stable = stable_version = None
        for k, v in headers:
            if k == b"x-request-id":
                if rid is None and 0 < len(v) <= 128 and v.isascii() \
                        and v.decode().isprintable():
                    rid = v
            elif k.startswith(b"x-modelship-"):
                if k == SHADOW_HEADER:
                    shadow = v
                elif k == STABLE_PREDICTION_HEADER:
                    stable = v
                elif k == STABLE_VERSION_HEADER:
                    stable_version = v
        if rid is None:
            self._counter += 1
            rid = f"{self._prefix}-{self._counter:x}".encode()
        if shadow is None:
            return rid, None
        if self.judge is None:
            return rid, _UNJUDGED
        return rid, self.judge.incoming(shadow, stable, stable_version)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        cycle = getattr(receive, "__self__", None)
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        rid, shadow = self._scan(headers)
        outgoing: Outgoing | None = None
        if shadow is not None:  # mirrored here: answered, compared, never mirrored again
            scope[SHADOW_SCOPE_KEY] = shadow
        request_id_var.set(rid.decode())
        model_version_var.set(self.version)
        extra = [self.version_header, (b"x-request-id", rid)]
        if self.drain is not None and self.drain.draining:
            extra.append(CONNECTION_CLOSE)  # keep-alive clients reconnect elsewhere
        status = 500
        counted = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            if self.max_concurrency is not None and scope["path"] not in PROBE_PATHS:
                if self.in_flight >= self.max_concurrency:
                    self._shed(scope)
                    await self._send_error(send_wrapper, 503, "over the limit of "
                                           f"{self.max_concurrency} requests in flight "
                                           "(MODELSHIP_MAX_CONCURRENCY); retry later",
                                           [(b"retry-after", b"1")])
                    return
                self.in_flight += 1
                counted = True
            rejection, bucket = self._reject(scope, headers)
            if rejection is None and self.limiter is not None and bucket is not None:
                rejection = await self._limit(bucket)
            if rejection is not None:
                code, text, more = rejection
                await self._send_error(send_wrapper, code, text, more)
                return
            if shadow is None and self.mirror is not None and (
                    mirror := self.mirror.current) is not None:
                outgoing = mirror.choose(scope["method"], scope["path"], rid, headers)
                if outgoing is not None:
                    scope[SHADOW_SCOPE_KEY] = shadow = outgoing
            fast = fastpath.match(scope["path"], headers) \
                if self.plane is not None and scope["method"] == "POST" else None
            if fast is not None and self.plane is not None:
                await self._fast_predict(self.plane, fast, scope, start, receive,
                                         send_wrapper, shadow, outgoing)
                scope["route"] = fast
            else:
                if outgoing is not None:
                    receive = outgoing.capture(receive)
                await self.app(scope, self._limited(receive), send_wrapper)
        finally:
            if counted:
                self.in_flight -= 1
            if getattr(cycle, "disconnected", False):
                status = CLIENT_CLOSED
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self._observe(scope["method"], template, status, time.perf_counter() - start)
            if outgoing is not None:
                outgoing.mirror.submit(outgoing, status)
            elif shadow is not None:
                self._observe_shadow(template, status)
            if self.access_log:
                logger.info("request", extra={"method": scope["method"], "path": scope["path"],
                                              "route": template, "status": status,
                                              "duration_ms": round(
                                                  (time.perf_counter() - start) * 1000, 3)})

    async def _fast_predict(self, plane: DataPlane, route: fastpath.Match, scope: Scope,
                            start: float, receive: Receive, send: Send,
                            shadow: ShadowContext | None,
                            outgoing: Outgoing | None = None) -> None:
        """A prediction (``/predict``, V1, V2 JSON, ``/invocations``) without routing or
        per-request Request objects: the hot path."""
        status, headers = 200, _JSON_HEADERS
        try:
            applied = codings.of_request(scope["headers"])
            chunks: list[bytes] = []
            seen = 0
            plane.batcher.arriving += 1
            try:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    seen += len(chunk)
                    if seen > self.max_body:
                        raise PayloadTooLarge(f"body is over the {self.max_body} byte limit")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
            finally:
                plane.batcher.arriving -= 1
            raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if outgoing is not None:  # the body, kept for the mirror (as it came)
                outgoing.chunks = chunks
            if applied:
                raw = await plane.decoder.offload(codings.decode, raw, applied, self.max_body)
            answer = await fastpath.answer(plane, route, raw, start, scope["headers"], shadow)
            if isinstance(answer, binary.Answer):  # V2 binary outputs asked for
                body, headers = answer.body, answer.asgi_headers()
            else:
                body = answer
        except ModelshipError as exc:
            if isinstance(exc, NotJSON) and route.kind != fastpath.INVOCATIONS:
                exc = explain_not_json(exc, scope, plane)
            status = exc.status_code
            body = fastpath.error_body(route, exc) or error_body(exc.message)
        except Exception:
            logger.exception("unexpected error")
            status = 500
            body = fastpath.error_body(route, ModelshipError("internal error")) \
                or error_body("internal error")
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _shed(self, scope: Scope) -> None:
        """Name the route of a request refused before routing, for its metrics."""
        for route in self.routes:
            if route.matches(scope)[0] is Match.FULL:
                scope["route"] = route
                return

    def _reject(self, scope: Scope, headers: list[tuple[bytes, bytes]]
                ) -> tuple[tuple[int, str, list[tuple[bytes, bytes]]] | None, str | None]:
        """(The refusal, if any; the rate limit bucket: the API key's id, ``anonymous``
        without keys, None for the open paths)."""
        path: str = scope["path"]
        bucket = None
        if path not in OPEN_PATHS:
            if self.api_keys is None:
                bucket = ANONYMOUS
            else:
                bucket = self._authorized(headers)
                if bucket is None:
                    return (401, "missing or invalid API key: send Authorization: Bearer KEY "
                            "or X-API-Key: KEY",
                            [(b"www-authenticate", b'Bearer realm="modelship"')]), None
        if scope["method"] == "POST":
            for k, v in headers:
                if k == b"content-length":
                    try:
                        length = int(v)
                    except ValueError:
                        return (400, "invalid Content-Length", []), bucket
                    if length > self.max_body:
                        return (413, f"body of {length} bytes is over the {self.max_body} "
                                "byte limit", []), bucket
        return None, bucket

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        assert self.api_keys is not None
        given = b""
        for k, v in headers:
            if k == b"authorization" and v[:7].lower() == b"bearer ":
                given = v[7:].strip()
            elif k == b"x-api-key":
                given = v.strip()
        return self.api_keys.match(given)  # constant time over every key

    async def _limit(self, bucket: str) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        assert self.limiter is not None
        wait = await self.limiter.check(bucket)
        if wait is None:
            return None
        self.metrics.rate_limited.inc()
        retry = self.limiter.retry_after(wait)
        who = "without API keys, all clients together" if bucket == ANONYMOUS \
            else "this API key"
        return 429, (f"rate limit exceeded: {self.limiter.limit} requests per "
                     f"{self.limiter.period} s for {who}; retry in {retry} s"), \
            [(b"retry-after", retry.encode())]

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"body is over the {limit} byte limit")
            return message

        return wrapped

    async def _send_error(self, send: Send, code: int, text: str,
                          more: list[tuple[bytes, bytes]]) -> None:
        body = error_body(text)
        await send({"type": "http.response.start", "status": code, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()), *more]})
        await send({"type": "http.response.body", "body": body})

    def _observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.metrics.http_requests.labels(method, route,
                                                                          str(status))
        child.inc()
        dkey = (method, route)
        hist = self._durations.get(dkey)
        if hist is None:
            hist = self._durations[dkey] = self.metrics.http_duration.labels(method, route)
        hist.observe(seconds)

    def _observe_shadow(self, route: str, status: int) -> None:
        key = (route, status)
        child = self._shadow_children.get(key)
        if child is None:
            m = self.metrics
            child = self._shadow_children[key] = m.shadow_requests.labels(
                m.model, m.version, route, str(status))
        child.inc()


def make_model(settings: RuntimeSettings) -> Model:
    """The (not yet loaded) model of ``settings.model_dir``; ModelLoadError when that is
    no model directory."""
    if settings.model_dir is None:
        raise ValueError("settings.model_dir is not set (pull first, or pass a model)")
    model_dir = settings.model_dir
    meta = read_metadata(model_dir) if model_dir.is_dir() else None
    name = settings.model_name or (meta.name if meta else None) or model_dir.stem or "model"
    version = settings.model_version or (meta.version if meta else None) or "0"
    model = SKLearnModel(name, version, model_dir, allow_pickle=settings.allow_pickle,
                         trusted_types=settings.trusted_types)
    if meta is not None:
        model.info.uri, model.info.run_id = meta.uri, meta.run_id
    return model


async def load_model(model: Model) -> None:
    """Load ``model`` and log how long it took (raises ModelLoadError)."""
    t0 = time.perf_counter()
    await model.load()
    logger.info("model loaded", extra={
        "model": model.name, "version": model.version,
        "estimator": model.info.estimator, "n_features": model.info.n_features,
        "load_ms": round((time.perf_counter() - t0) * 1000, 1)})


def create_app(settings: RuntimeSettings | None = None, *, model: Model | None = None,
               cache: Cache | None = None) -> FastAPI:
    """Build the app for one model (from ``settings.model_dir`` unless ``model`` is given)."""
    settings = settings or RuntimeSettings()
    model = model or make_model(settings)
    metrics = Metrics(model.name, model.version)
    if cache is None and settings.redis_url:
        cache = RedisCache(settings.redis_url, ttl_seconds=settings.cache_ttl_seconds,
                           timeout_seconds=settings.cache_timeout_ms / 1000.0,
                           retry_seconds=settings.cache_retry_seconds)
    plane = DataPlane(model, metrics, cache=cache, microbatch=settings.microbatch,
                      microbatch_max_size=settings.microbatch_max_size,
                      microbatch_max_wait_ms=settings.microbatch_max_wait_ms,
                      max_batch_size=settings.max_rows, max_columns=settings.max_columns,
                      max_body_bytes=settings.max_body_bytes)
    token = settings.shadow_token.get_secret_value() if settings.shadow_token else None
    judge = Judge(model, metrics, token=token, log_per_minute=settings.shadow_log_per_minute,
                  log_rel_diff=settings.shadow_log_rel_diff)

    # Started only when mirroring first switches on: most pods never mirror.
    sender = SenderProcess(version=model.version, token=token,
                           concurrency=settings.shadow_concurrency,
                           queue_size=settings.shadow_queue,
                           timeout=settings.shadow_timeout_seconds,
                           log_level=settings.log_level, log_json=settings.log_json,
                           priority=settings.shadow_sender_priority)
    metrics.mirror_figures = sender.figures

    def make_mirror(url: str, fraction: float) -> Mirror:
        return Mirror(url, sender, fraction=fraction,
                      max_header=settings.shadow_max_prediction_bytes,
                      busy=Busy(plane.busy) if settings.shadow_when_busy == "shed" else None)

    mirror = MirrorSwitch(make_mirror, model.version)
    if settings.shadow_url and settings.shadow_fraction > 0:
        mirror.fixed(settings.shadow_url, settings.shadow_fraction)

    keys = None
    if settings.api_keys_file is not None:
        def reloaded(ok: bool, n: int) -> None:
            metrics.api_key_reloads.labels("ok" if ok else "error").inc()
            metrics.api_keys.set(n)

        keys = KeyRing(settings.api_keys_file, on_reload=reloaded)
        metrics.api_keys.set(len(keys))
        for result in ("ok", "error"):
            metrics.api_key_reloads.labels(result)
    limiter = None
    if settings.rate_limit_requests > 0:
        def backend(name: str) -> None:
            for b in ("redis", "local"):
                metrics.rate_limit_backend.labels(b).set(1 if b == name else 0)

        limiter = RateLimiter(settings.rate_limit_requests, settings.rate_limit_period_seconds,
                              prefix=f"modelship:ratelimit:{model.name}",
                              redis_url=settings.redis_url,
                              timeout_seconds=settings.cache_timeout_ms / 1000.0,
                              retry_seconds=settings.cache_retry_seconds, on_backend=backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = asyncio.get_running_loop().create_task(keys.watch()) if keys else None
        if not model.ready:
            await load_model(model)
        plane.model_loaded()
        # The model and the libraries are loaded for good: move them out of the garbage
        # collector's sight, so full collections under load walk only request garbage
        # (they walked ~150k long-lived objects and made the batch p99). No collection
        # first: it walks every one of those objects (80 ms of CPU before the first answer
        # on the benchmark's models) to free the start's few unreachable cycles (0.25 MB
        # for the logistic regression, 0.7 MB for the 100-tree forest, measured), which
        # stay frozen instead.
        gc.freeze()
        gc.enable()  # `modelship-runtime serve` starts with it off (__main__.main)
        metrics.model_info.labels(model.name, model.version, model.info.flavor,
                                  model.info.estimator).set(1)
        metrics.model_ready.set(1)
        mirror.start(settings.shadow_config_file, settings.shadow_config_poll_seconds)
        try:
            yield
        finally:
            metrics.model_ready.set(0)
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if limiter is not None:
                await limiter.close()
            await mirror.close()
            await sender.close()
            await plane.close()

    app = FastAPI(title="modelship runtime", version=__version__, lifespan=lifespan,
                  description=f"Serves model {model.name!r} version {model.version}.")
    drain = Drain(settings.drain_seconds)
    app.state.plane = plane
    app.state.settings = settings
    app.state.drain = drain
    app.state.api_keys = keys  # the gRPC server checks keys and rate limits with these too
    app.state.limiter = limiter
    app.state.mirror = mirror  # and mirrors its predictions with this
    router = build_router(plane, drain)
    app.include_router(router)

    @app.exception_handler(ModelshipError)
    async def modelship_error(request: Request, exc: ModelshipError) -> Response:
        if isinstance(exc, NotJSON):
            exc = explain_not_json(exc, request.scope, plane)
        return Response(error_body(exc.message), status_code=exc.status_code,
                        media_type="application/json")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return Response(error_body(str(exc.detail)), status_code=exc.status_code,
                        media_type="application/json", headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return Response(error_body(f"{where}: {first.get('msg', 'invalid request')}"),
                        status_code=400, media_type="application/json")

    @app.exception_handler(ClientDisconnect)
    async def client_closed(request: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=CLIENT_CLOSED)  # nobody to send it to; counted as such

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unexpected error")
        return Response(error_body("internal error"), status_code=500,
                        media_type="application/json")

    app.add_middleware(ServingMiddleware, metrics=metrics, version=model.version,
                       max_body_bytes=settings.max_body_bytes, api_keys=keys,
                       access_log=settings.access_log, plane=plane, drain=drain,
                       mirror=mirror, judge=judge, limiter=limiter,
                       max_concurrency=settings.max_concurrency, routes=router.routes)
    return app

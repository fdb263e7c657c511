"""The stable's side of shadow traffic: mirror prediction requests to the canary.

With ``MODELSHIP_SHADOW_URL`` set (the operator sets it on the stable pods during a
rollout's shadow phase), a share (``MODELSHIP_SHADOW_FRACTION``, sampled at random) of
the successful prediction requests is sent again, after the client has its answer, to the
same route of the canary's Service with:

- ``X-Modelship-Shadow``: ``1``, or the shared ``MODELSHIP_SHADOW_TOKEN``;
- ``X-Request-ID``: the request's id, so both pods' logs name the same request;
- ``X-Modelship-Stable-Prediction``: this runtime's predictions, a JSON array with one
  label (classifiers) or value (regressors) per row, at most
  ``MODELSHIP_SHADOW_MAX_PREDICTION_BYTES`` long (longer: not mirrored);
- ``X-Modelship-Stable-Version``, and the client's ``Authorization`` / ``X-API-Key``.

``/predict``, ``/v1/models/{name}:predict`` and ``/v2/models/{name}/infer`` are mirrored
(the versioned V2 route goes to the unversioned one: the canary serves another version).
A request that carries ``X-Modelship-Shadow`` is never mirrored, so two pods mirroring to
each other make no loop.

Nothing here can delay or fail a client's request: the request only goes into a bounded
queue (full: dropped), drained by ``MODELSHIP_SHADOW_CONCURRENCY`` tasks, each with one
kept-alive HTTP/1.1 connection (h11, which uvicorn already brings), each request bounded
by ``MODELSHIP_SHADOW_TIMEOUT_SECONDS``. After a failure the mirror stops trying for a
moment (doubling, up to a few seconds) and counts what comes meanwhile as failed, so a
canary that is down costs next to nothing. Every request chosen for mirroring ends in
exactly one outcome of ``modelship_shadow_mirrored_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import h11
import orjson

from .agreement import SHADOW_HEADER, STABLE_PREDICTION_HEADER, STABLE_VERSION_HEADER
from .metrics import Metrics
from .model import Prediction

logger = logging.getLogger("modelship_runtime.shadow")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

_V1 = re.compile(r"/v1/models/[^/]+:predict")
_V2 = re.compile(r"/v2/models/([^/]+)(?:/versions/[^/]+)?/infer")
_FORWARDED = (b"authorization", b"x-api-key")
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 5.0


def mirror_path(path: str) -> str | None:
    """The canary's route for a prediction route of this runtime; None: not mirrored."""
    if path == "/predict":
        return path
    if path.startswith("/v1/") and _V1.fullmatch(path):
        return path
    if path.startswith("/v2/") and (m := _V2.fullmatch(path)):
        return f"/v2/models/{m.group(1)}/infer"
    return None


def encode_predictions(labels: list[Any]) -> bytes | None:
    """The X-Modelship-Stable-Prediction value (ASCII JSON); None when not encodable."""
    try:
        raw = orjson.dumps(labels, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return None
    if not raw.isascii():  # header values must be ASCII: escape non-ASCII labels
        raw = json.dumps(orjson.loads(raw), ensure_ascii=True, separators=(",", ":")).encode()
    return raw


class Outgoing:
    """A request of this runtime chosen for mirroring: its body and its predictions."""

    cacheable = True
    __slots__ = ("chunks", "forwarded", "mirror", "path", "prediction", "request_id")

    def __init__(self, path: str, request_id: bytes,
                 forwarded: list[tuple[bytes, bytes]], mirror: Mirror) -> None:
        self.mirror = mirror  # the one that chose it: it sends it, even if switched off
        self.path = path
        self.request_id = request_id
        self.forwarded = forwarded
        self.chunks: list[bytes] = []
        self.prediction: Prediction | None = None

    def observe(self, prediction: Prediction) -> None:
        """Keep the predictions sent to the client (called by the data plane)."""
        self.prediction = prediction

    def capture(self, receive: Receive) -> Receive:
        """``receive`` that also keeps the body it reads."""
        chunks = self.chunks

        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        return wrapped


class _Connection:
    __slots__ = ("h11", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Link:
    """One sending task's connection to the canary (None between connections)."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: _Connection | None = None

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Mirror:
    """Sends sampled requests to the canary in the background; one per app."""

    def __init__(self, url: str, metrics: Metrics, *, version: str, fraction: float,
                 queue_size: int, timeout: float, concurrency: int, max_header: int,
                 token: str | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"shadow URL {url!r} is not an http(s) URL with a host")
        self.url = url
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = parts.port is None or parts.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = (host if default_port else f"{host}:{self.port}").encode()
        self.prefix = parts.path.rstrip("/")
        self.fraction = fraction
        self.timeout = timeout
        self.concurrency = concurrency
        self.max_header = max_header
        self.shadow_value = token.encode() if token else b"1"
        self.version = version.encode()
        self.counts = metrics.mirrored
        self.pending = metrics.shadow_pending
        self._in_flight = 0
        self.queue_size = queue_size
        self._queue: asyncio.Queue[Outgoing] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._paused_until = 0.0
        self._backoff = BACKOFF_FIRST
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self.tls else None

    # --- on the request path: cheap, never waits -----------------------------------

    def choose(self, method: str, path: str, request_id: bytes,
               headers: list[tuple[bytes, bytes]]) -> Outgoing | None:
        """An Outgoing when this request is to be mirrored, else None."""
        if method != "POST" or (target := mirror_path(path)) is None:
            return None
        if self.fraction < 1.0 and random.random() >= self.fraction:
            return None
        forwarded = [(k, v) for k, v in headers if k in _FORWARDED]
        return Outgoing(target, request_id, forwarded, self)

    def submit(self, outgoing: Outgoing, status: int) -> None:
        """Queue a chosen request once its answer is sent (counts skipped or dropped)."""
        if status != 200 or outgoing.prediction is None or self._queue is None:
            self.counts["skipped"].inc()
            return
        try:
            self._queue.put_nowait(outgoing)
        except asyncio.QueueFull:
            self.counts["dropped"].inc()

    # --- in the background -----------------------------------------------------------

    def start(self) -> None:
        """Start the sending tasks (on the running loop, from the app's lifespan)."""
        queue: asyncio.Queue[Outgoing] = asyncio.Queue(self.queue_size)
        self._queue = queue
        self.pending.set_function(lambda: queue.qsize() + self._in_flight)
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work()) for _ in range(self.concurrency)]
        logger.info("mirroring prediction requests", extra={
            "shadow_url": self.url, "fraction": self.fraction})

    async def close(self) -> None:
        """Stop sending; what is still queued counts as dropped."""
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        if self._queue is not None:
            left = self._queue.qsize()
            if left:
                self.counts["dropped"].inc(left)
            self._queue = None

    async def _work(self) -> None:
        assert self._queue is not None
        queue = self._queue
        link = _Link()
        try:
            while True:
                item = await queue.get()
                self._in_flight += 1
                try:
                    await self._mirror(link, item)
                finally:
                    self._in_flight -= 1
        finally:
            link.drop()

    async def _mirror(self, link: _Link, item: Outgoing) -> None:
        """Send one item and count its outcome."""
        assert item.prediction is not None
        header = encode_predictions(item.prediction.labels)
        if header is None or len(header) > self.max_header:
            self.counts["skipped"].inc()
            return
        if time.monotonic() < self._paused_until:
            self.counts["failed"].inc()
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self._send(link, item, header)
        except (OSError, TimeoutError, h11.ProtocolError, ssl.SSLError) as exc:
            link.drop()
            self.counts["failed"].inc()
            self._pause(exc)
            return
        self.counts["sent"].inc()
        self._backoff = BACKOFF_FIRST

    def _pause(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now < self._paused_until:  # another task paused already
            return
        self._paused_until = now + self._backoff
        logger.warning("mirroring to the canary failed; pausing", extra={
            "shadow_url": self.url, "error": repr(exc)[:200],
            "pause_seconds": round(self._backoff, 3)})
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    async def _connect(self, link: _Link) -> _Connection:
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self._ssl,
            server_hostname=self.host if self.tls else None)
        link.conn = _Connection(reader, writer)
        return link.conn

    async def _send(self, link: _Link, item: Outgoing, header: bytes) -> None:
        """POST one mirrored request on the link's connection (a new one if need be)."""
        body = item.chunks[0] if len(item.chunks) == 1 else b"".join(item.chunks)
        headers = [
            (b"host", self.authority),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (SHADOW_HEADER, self.shadow_value),
            (b"x-request-id", item.request_id),
            (STABLE_PREDICTION_HEADER, header),
            (STABLE_VERSION_HEADER, self.version),
            *item.forwarded,
        ]
        target = quote(self.prefix + item.path, safe="/:@!$&'()*+,;=").encode()
        conn = link.conn
        if conn is not None and conn.reader.at_eof():  # the canary closed it while idle
            link.drop()
            conn = None
        if conn is None:
            await self._exchange(link, await self._connect(link), target, headers, body)
            return
        try:
            await self._exchange(link, conn, target, headers, body)
        except (OSError, h11.ProtocolError):
            # A kept-alive connection may have been closed just as it was reused: once
            # more, on a new one.
            link.drop()
            await self._exchange(link, await self._connect(link), target, headers, body)

    async def _exchange(self, link: _Link, conn: _Connection, target: bytes,
                        headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        c = conn.h11
        data = c.send(h11.Request(method=b"POST", target=target, headers=headers))
        data = (data or b"") + (c.send(h11.Data(data=body)) or b"") + \
            (c.send(h11.EndOfMessage()) or b"")
        conn.writer.write(data)
        await conn.writer.drain()
        while True:
            event = c.next_event()
            if event is h11.NEED_DATA:
                c.receive_data(await conn.reader.read(65536))
                continue
            if isinstance(event, h11.EndOfMessage):
                break
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("the canary closed the connection mid-answer")
        if c.our_state is h11.DONE and c.their_state is h11.DONE:
            c.start_next_cycle()
        else:  # the canary will close it: do not reuse
            link.drop()


class MirrorSwitch:
    """The Mirror in force, if any, switched on and off without a restart.

    Fixed by ``MODELSHIP_SHADOW_URL``, or read from ``MODELSHIP_SHADOW_CONFIG_FILE`` (the
    operator's ConfigMap ``NAME--shadow``, mounted) every ``poll`` seconds: JSON
    ``{"mirrorFrom": VERSION, "url": URL, "fraction": F}`` mirrors when VERSION is the one
    this pod serves; ``{}``, a missing file, another version or a malformed file: off (a
    malformed one is logged once per change).
    """

    def __init__(self, make: Callable[[str, float], Mirror], version: str) -> None:
        self.current: Mirror | None = None
        self._make = make
        self._version = version
        self._fixed: tuple[str, float] | None = None
        self._config: tuple[str, float] | None = None
        self._seen: bytes | None = None
        self._task: asyncio.Task[None] | None = None

    def fixed(self, url: str, fraction: float) -> None:
        self._fixed = (url, fraction)

    def start(self, config_file: Path | None, poll: float) -> None:
        """Start the fixed mirror, or the watch of `config_file` (on the running loop)."""
        if self._fixed is not None:
            self._switch(self._fixed)
        elif config_file is not None:
            self._read(config_file)
            self._task = asyncio.get_running_loop().create_task(self._watch(config_file, poll))

    async def _watch(self, config_file: Path, poll: float) -> None:
        while True:
            await asyncio.sleep(poll)
            try:
                self._read(config_file)
            except Exception:  # never let the watch die: the next read may work
                logger.exception("shadow config: cannot apply %s", config_file)

    def _read(self, config_file: Path) -> None:
        try:
            raw = config_file.read_bytes()[:65536]
        except OSError:
            raw = b""
        if raw == self._seen:
            return
        self._seen = raw
        wanted: tuple[str, float] | None = None
        if raw.strip():
            try:
                data = json.loads(raw)
                if isinstance(data, dict) and data.get("mirrorFrom") == self._version:
                    url = str(data["url"])
                    fraction = float(data.get("fraction", 1.0))
                    if not 0.0 < fraction <= 1.0:
                        raise ValueError(f"fraction {fraction} not in (0, 1]")
                    wanted = (url, fraction)
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning("shadow config %s ignored: %s", config_file, exc)
                wanted = None
        self._switch(wanted)

    def _switch(self, wanted: tuple[str, float] | None) -> None:
        if wanted == self._config:
            return
        old, self.current = self.current, None
        if old is not None:
            asyncio.get_running_loop().create_task(old.close())
        self._config = wanted
        if wanted is not None:
            try:
                mirror = self._make(*wanted)
            except ValueError as exc:
                logger.warning("shadow config ignored: %s", exc)
                self._config = None
                return
            mirror.start()
            self.current = mirror
        else:
            logger.info("not mirroring prediction requests")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.current is not None:
            await self.current.close()
            self.current = None

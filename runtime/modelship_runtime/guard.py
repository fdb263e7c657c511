"""Connection-level defences against hostile clients, as a subclass of uvicorn's protocol.

uvicorn (0.54, httptools) leaves a pod open to a few cheap attacks:

* headers: llhttp has no size limit and httptools keeps a header value whole until it
  ends, so a request with 1 MB of headers is read and kept (twenty of them filled a
  512Mi pod);
* no deadline before the first request: ``timeout_keep_alive`` runs only between two
  requests and any byte cancels it, so a connection that sends nothing, or trickles its
  headers a byte at a time (slowloris), stays open for good;
* ``limit_concurrency`` counts open connections as well as running requests and answers
  503 to everything once reached, health probes included: idle connections alone make
  the pod fail its probes. Without it, 1,100 idle connections used up the process's
  file descriptors.

:class:`GuardedProtocol` (``guarded_protocol(limits)`` makes one for a server) closes
them, at the cost of a timer per request read:

1. headers over ``max_header_bytes`` (request line included) are answered 431 and the
   connection closed; they are counted while they stream in, so at most one socket read
   beyond the limit is ever held;
2. a request must arrive in time: its headers within ``header_timeout`` seconds of the
   connection opening (or of its first byte, on a kept-alive connection), then its body
   within ``header_timeout`` seconds more; otherwise the connection is closed. Each
   connection only notes its deadline; one timer per server sweeps them a few times per
   ``header_timeout`` (a timer per request cost ~8 us of the ~100 us a small request
   takes);
3. at most ``max_connections`` are open: a new connection past the cap closes the
   oldest one that serves no request (idle between requests, or still sending its
   headers), as nginx reuses its idle keep-alive connections; only when every
   connection is busy is the new one answered 503 and closed. A kubelet probe, which
   opens a fresh connection, therefore always gets in.

Each closing is counted through ``Limits.on_close`` (reason ``header_too_large``,
``read_timeout``, ``evicted`` or ``over_capacity``). Requests in flight (the concurrency
cap, 503 with ``Retry-After``) are limited in the serving middleware, where they are
counted in the request metrics.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("modelship_runtime")

FD_HEADROOM = 128
"""File descriptors kept free of client connections: model files, Redis, the shadow
mirror, logging."""


def _noop(reason: str) -> None:
    pass


@dataclass(frozen=True)
class Limits:
    """What one server's connections may do."""

    max_header_bytes: int
    header_timeout: float
    max_connections: int
    on_close: Callable[[str], None] = _noop


def _response(status: bytes, message: str, *extra: bytes) -> bytes:
    body = orjson.dumps({"error": message})
    return b"".join([b"HTTP/1.1 ", status, b"\r\ncontent-type: application/json\r\n",
                     *extra, b"connection: close\r\ncontent-length: ",
                     str(len(body)).encode(), b"\r\n\r\n", body])


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request whose headers are too large."""


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header limits, read deadlines and a connection cap
    (see the module docstring); the subclass ``guarded_protocol`` makes holds the limits."""

    limits: Limits
    _idle: OrderedDict[GuardedProtocol, None]  # connections serving no request, oldest first
    _sweeper: list[asyncio.TimerHandle]  # the server's one deadline timer, once started

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = 0.0  # when the request being read must be in (0: none is)
        if not self._sweeper:
            self._sweeper.append(self.loop.call_later(self._interval(), self._sweep))
        self._in_headers = False
        self._header_seen = 0
        if len(self.connections) > self.limits.max_connections and not self._evict():
            self.limits.on_close("over_capacity")
            transport.write(_response(b"503 Service Unavailable",
                                      "too many open connections; retry later",
                                      b"retry-after: 1\r\n"))
            transport.close()
            return
        self._begin()

    def _evict(self) -> bool:
        """Close the connection idle the longest; False when every one is busy."""
        while self._idle:
            other, _ = self._idle.popitem(last=False)
            if not other.transport.is_closing():
                self.limits.on_close("evicted")
                other.transport.close()
                return True
        return False

    def _begin(self) -> None:
        """A request is awaited: its headers must arrive within the timeout."""
        self._in_headers = True
        self._header_seen = 0
        self._idle[self] = None
        self._deadline = self.loop.time() + self.limits.header_timeout

    def _interval(self) -> float:
        return min(1.0, self.limits.header_timeout / 4)

    def _sweep(self) -> None:
        """Close the connections past their read deadline; runs every ``_interval()``."""
        now = self.loop.time()
        for conn in list(self.connections):
            if isinstance(conn, GuardedProtocol) and 0.0 < conn._deadline < now \
                    and not conn.transport.is_closing():
                conn._deadline = 0.0
                self.limits.on_close("read_timeout")
                conn.transport.close()
        self._sweeper[0] = self.loop.call_later(self._interval(), self._sweep)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._idle.pop(self, None)
        self._deadline = 0.0

    def data_received(self, data: bytes) -> None:
        if not self._deadline and (self.cycle is None or self.cycle.response_complete):
            self._begin()  # the first byte of the next request on a kept-alive connection
        if self._in_headers:
            self._header_seen += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadersTooLarge):
                self._refuse_headers()
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_headers and self._header_seen > self.limits.max_header_bytes:
            self._refuse_headers()

    def _refuse_headers(self) -> None:
        self.limits.on_close("header_too_large")
        limit = self.limits.max_header_bytes
        self.transport.write(_response(
            b"431 Request Header Fields Too Large",
            f"the request line and headers are over the {limit} byte limit "
            "(MODELSHIP_MAX_HEADER_BYTES)"))
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        if self._header_seen > self.limits.max_header_bytes and len(self.url) + sum(
                len(k) + len(v) for k, v in self.headers) > self.limits.max_header_bytes:
            raise _HeadersTooLarge
        self._idle.pop(self, None)
        if self._deadline:  # the body gets its own time
            self._deadline = self.loop.time() + self.limits.header_timeout
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._deadline = 0.0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._idle[self] = None


def guarded_protocol(limits: Limits) -> type[GuardedProtocol]:
    """A protocol class for one server (``uvicorn.Config(http=...)``) applying ``limits``."""
    attrs: dict[str, Any] = {"limits": limits, "_idle": OrderedDict(), "_sweeper": []}
    return cast(type[GuardedProtocol], type("GuardedProtocol", (GuardedProtocol,), attrs))


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # e.g. a hard limit above fs.nr_open
            logger.warning("cannot raise the open-file limit to %s: %s", target, exc)
    return soft


def connection_cap(wanted: int, fd_limit: int) -> int:
    """``wanted``, lowered to leave FD_HEADROOM descriptors under ``fd_limit``."""
    return max(1, min(wanted, fd_limit - FD_HEADROOM))

"""The process that sends a stable's mirrored requests to the canary.

The serving process (:mod:`modelship_runtime.shadow`) starts it as
``python -m modelship_runtime.shadow_sender`` when mirroring switches on, and hands it
each chosen request with one non-blocking write on a Unix ``SOCK_SEQPACKET`` socket
pair, after the client has its answer. Everything else happens here, on another core if
the pod has one: building the HTTP request, sending it on kept-alive connections
(:mod:`modelship_runtime.httpclient`), reading the answer, timeouts, the pause after a
failure. The serving process's event loop never sees the canary.

Messages from the serving process, one per packet:

- ``T``: a target: index, then JSON ``{"url", "shadow", "version"}`` (the canary's base
  URL, the ``X-Modelship-Shadow`` value, this stable's version);
- ``B``: a batch: how many requests follow, then each as an ``R`` record: target index,
  route, request id, the stable's predictions (ASCII JSON), the forwarded headers
  (``\\r\\nname: value`` each, ``Content-Type`` always among them) and the body.

Outcomes are counted in a small shared block (``SLOTS``, unsigned 64-bit, this process
the only writer), which the serving process adds to its ``/metrics``. The serving process
counts what it hands over, so what is neither sent, failed nor dropped here is pending.
The sender exits when its socket reaches end of file: the serving process closed it, or
died (the kernel closes its end either way), so it never outlives the server.

Only the standard library, httptools and (if installed) uvloop are imported here: the
process stays small.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import mmap
import os
import signal
import socket
import struct
import sys
import time
from typing import Any
from urllib.parse import quote, urlsplit

from .httpclient import Connection, Link

logger = logging.getLogger("modelship_runtime.shadow")

SHADOW_HEADER = b"x-modelship-shadow"
STABLE_PREDICTION_HEADER = b"x-modelship-stable-prediction"
STABLE_VERSION_HEADER = b"x-modelship-stable-version"

#: Counters of the shared block, in this order.
SLOTS = ("sent", "failed", "dropped")
SENT, FAILED, DROPPED = range(3)
BLOCK_BYTES = 64
#: ``R`` message: kind, target, then the lengths of route, request id, predictions,
#: forwarded headers and body.
REQUEST = struct.Struct("!cHHHIII")
TARGET = struct.Struct("!cH")
#: ``B`` message: kind, then how many ``R`` records follow in the same packet.
BATCH = struct.Struct("!cH")
PIPELINE_REQUESTS = 16
PIPELINE_BYTES = 256 * 1024
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 5.0
READS_PER_WAKE = 64


def quote_path(path: str) -> bytes:
    return quote(path, safe="/:@!$&'()*+,;=").encode()


class Target:
    """A canary to send to: where, and how it has been answering."""

    def __init__(self, url: str, shadow: str, version: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"shadow URL {url!r} is not an http(s) URL with a host")
        self.url = url
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = parts.port is None or parts.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = (host if default_port else f"{host}:{self.port}").encode()
        self.prefix = quote_path(parts.path.rstrip("/"))
        self.head = b"\r\nhost: " + authority
        self.tail = (b"\r\n" + SHADOW_HEADER + b": " + shadow.encode()
                     + b"\r\n" + STABLE_VERSION_HEADER + b": " + version.encode())
        self.paths: dict[bytes, bytes] = {}
        self.paused_until = 0.0
        self.backoff = BACKOFF_FIRST
        self.ssl: Any = None
        if self.tls:
            import ssl

            self.ssl = ssl.create_default_context()


class Sender:
    """Reads handed-over requests, queues them (bounded), sends them on ``concurrency``
    kept-alive connections, pipelining what queued up meanwhile."""

    def __init__(self, sock: socket.socket, counts: memoryview, *, concurrency: int,
                 queue_size: int, timeout: float, max_message: int) -> None:
        self.sock = sock
        self.counts = counts
        self.concurrency = concurrency
        self.timeout = timeout
        self.targets: dict[int, Target] = {}
        self.queue: asyncio.Queue[tuple[Target, bytes]] = asyncio.Queue(queue_size)
        self.buf = bytearray(max_message)
        self.view = memoryview(self.buf)
        self.done: asyncio.Future[None] | None = None

    def count(self, outcome: int, n: int = 1) -> None:
        self.counts[outcome] += n

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        workers = [loop.create_task(self._work()) for _ in range(self.concurrency)]
        loop.add_reader(self.sock.fileno(), self._readable)
        try:
            await self.done
        finally:
            loop.remove_reader(self.sock.fileno())
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _readable(self) -> None:
        for _ in range(READS_PER_WAKE):  # then let the sending tasks run
            try:
                n = self.sock.recv_into(self.buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                n = 0
            if n == 0:  # the serving process closed its end, or died
                if self.done is not None and not self.done.done():
                    self.done.set_result(None)
                return
            try:
                self._message(self.view[:n])
            except Exception:  # a message this version does not understand: not fatal
                logger.exception("shadow sender: message not understood")
                self.count(DROPPED)

    def _message(self, msg: memoryview) -> None:
        kind = msg[0]
        if kind == 0x42:  # b"B": a batch of requests, one after another
            _, n = BATCH.unpack_from(msg)
            o = BATCH.size
            for i in range(n):
                try:
                    o = self._request(msg, o)
                except Exception:  # the rest of the batch cannot be read: all dropped
                    logger.exception("shadow sender: request not understood")
                    self.count(DROPPED, n - i)
                    return
        elif kind == 0x54:  # b"T"
            _, index = TARGET.unpack_from(msg)
            data = json.loads(bytes(msg[TARGET.size:]))
            self.targets[index] = Target(data["url"], data["shadow"], data["version"])
        else:
            raise ValueError(f"unknown message kind {kind:#x}")

    def _request(self, msg: memoryview, o: int) -> int:
        """Queue the request at offset ``o`` of a packet (or count it dropped); the offset
        of the next."""
        kind, index, lp, lr, lh, lf, lb = REQUEST.unpack_from(msg, o)
        if kind != b"R":
            raise ValueError(f"unknown record kind {kind!r}")
        o += REQUEST.size
        end: int = o + lp + lr + lh + lf + lb
        if end > len(msg):
            raise ValueError("truncated request record")
        target = self.targets.get(index)
        if target is None:
            raise KeyError(f"unknown target {index}")
        if self.queue.full():
            self.count(DROPPED)
            return end
        path = msg[o:o + lp]
        o += lp
        route = target.paths.get(bytes(path))
        if route is None:
            route = target.prefix + quote_path(bytes(path).decode())
            if len(target.paths) < 64:  # routes of the served model: a handful
                target.paths[bytes(path)] = route
        rid = msg[o:o + lr]
        o += lr
        prediction = msg[o:o + lh]
        o += lh
        forwarded = msg[o:o + lf]
        o += lf
        body = msg[o:o + lb]
        # Every value is fit for a header: the request id and the forwarded headers
        # were parsed as headers, the prediction is ASCII JSON.
        request = b"".join((
            b"POST ", route, b" HTTP/1.1", target.head,
            b"\r\ncontent-length: ",
            str(lb).encode(), target.tail, b"\r\nx-request-id: ", rid,
            b"\r\n", STABLE_PREDICTION_HEADER, b": ", prediction, forwarded,
            b"\r\n\r\n", body))
        self.queue.put_nowait((target, request))
        return end

    async def _work(self) -> None:
        queue = self.queue
        link = Link()
        linked: Target | None = None
        carried: tuple[Target, bytes] | None = None
        try:
            while True:
                if carried is not None:
                    (target, first), carried = carried, None
                else:
                    target, first = await queue.get()
                batch = [first]
                size = len(first)
                # What queued up meanwhile for the same canary goes in the same write.
                while not queue.empty() and len(batch) < PIPELINE_REQUESTS \
                        and size < PIPELINE_BYTES:
                    other, request = queue.get_nowait()
                    if other is not target:  # switched canaries: the next batch
                        carried = (other, request)
                        break
                    batch.append(request)
                    size += len(request)
                if linked is not target:  # a new canary: a new connection
                    link.drop()
                    linked = target
                await self._mirror(target, link, batch)
        finally:
            link.drop()

    async def _mirror(self, target: Target, link: Link, batch: list[bytes]) -> None:
        """Send a batch and count the outcome of each request."""
        if time.monotonic() < target.paused_until:
            self.count(FAILED, len(batch))
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self._send(target, link, batch)
        except Exception as exc:  # OSError, TimeoutError, and anything unforeseen: a
            # sending task must outlive them all
            if not isinstance(exc, OSError | TimeoutError):
                logger.exception("mirroring requests failed unexpectedly")
            answered = link.conn.answered if link.conn is not None else 0
            link.drop()
            if answered:
                self.count(SENT, answered)
            self.count(FAILED, len(batch) - answered)
            self._pause(target, exc)
            return
        self.count(SENT, len(batch))
        target.backoff = BACKOFF_FIRST

    def _pause(self, target: Target, exc: BaseException) -> None:
        now = time.monotonic()
        if now < target.paused_until:  # another task paused already
            return
        target.paused_until = now + target.backoff
        logger.warning("mirroring to the canary failed; pausing", extra={
            "shadow_url": target.url, "error": repr(exc)[:200],
            "pause_seconds": round(target.backoff, 3)})
        target.backoff = min(target.backoff * 2, BACKOFF_MAX)

    async def _send(self, target: Target, link: Link, requests: list[bytes]) -> None:
        """POST requests on the link's connection (a new one if need be)."""
        conn = link.conn
        if conn is not None and not conn.open:  # the canary closed it while idle
            link.drop()
            conn = None
        if conn is not None:
            try:
                await conn.exchange(requests)
            except ConnectionError:
                if conn.answered:
                    raise
                # Closed just as it was reused, before any answer: once more, on a new one.
                link.drop()
                conn = None
        if conn is None:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(
                Connection, target.host, target.port, ssl=target.ssl,
                server_hostname=target.host if target.tls else None)
            link.conn = conn
            await conn.exchange(requests)
        if not conn.reusable:
            link.drop()


PRIORITIES = ("idle", "low", "normal")


def lower_priority(priority: str) -> str:
    """Put this process below the serving process on the CPU; the priority it got.

    ``idle`` is Linux's SCHED_IDLE: the scheduler runs it only when nothing of normal
    priority wants the core, and preempts it at once when the serving process wakes.
    Where that is refused (or absent), nice 19. Threads started later inherit it."""
    if priority == "normal":
        return "normal"
    if priority == "idle":
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    except OSError:
        return "normal"
    return "low"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m modelship_runtime.shadow_sender",
                                description="Send a stable's mirrored requests to the canary.")
    p.add_argument("--socket-fd", type=int, required=True)
    p.add_argument("--counts-fd", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--queue", type=int, default=256)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--max-message", type=int, required=True)
    p.add_argument("--priority", choices=PRIORITIES, default="idle")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    # A terminal's Ctrl-C reaches the whole process group: the server decides when this
    # process ends (by closing the socket), so it does not die half-way on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .logging import configure_logging

    configure_logging(args.log_level, json=args.log_json)
    got = lower_priority(args.priority)
    if got != args.priority:
        logger.info("shadow sender priority: %s asked, %s given", args.priority, got)
    sock = socket.socket(fileno=args.socket_fd)
    sock.setblocking(False)
    block = mmap.mmap(args.counts_fd, BLOCK_BYTES)
    os.close(args.counts_fd)
    counts = memoryview(block).cast("Q")
    sender = Sender(sock, counts, concurrency=args.concurrency, queue_size=args.queue,
                    timeout=args.timeout, max_message=args.max_message)
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(sender.run())
    counts.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())

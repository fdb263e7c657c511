"""The shadow mirror's HTTP/1.1 client: pipelined requests on one connection.

It runs in the shadow sender process (:mod:`modelship_runtime.shadow_sender`), whose CPU
the pod pays for too. A general client (h11 on asyncio streams) cost about 180 us of CPU
per request in a micro-benchmark on the development machine, this one 40-50 us: the
requests arrive as ready bytes (the sender writes them), a batch of them goes out in one
write, and the answers are parsed by httptools (the C parser uvicorn serves with) straight
from ``data_received`` on a plain asyncio protocol. Answers are counted, not kept.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to the canary: a batch of pipelined requests at a time,
    answers parsed by httptools (their bodies are read and dropped)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.expected = 0
        self.answered = 0
        self.open = True
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; both have write/close
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"the canary's answer does not parse: {exc}"))
            self.close()

    def on_message_complete(self) -> None:
        self.reusable = self.reusable and self.parser.should_keep_alive()
        self.answered += 1
        if self.answered >= self.expected and self.waiter is not None \
                and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(ConnectionResetError("the canary closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def exchange(self, requests: list[bytes]) -> None:
        """Send requests in one write (pipelined); return once every answer has arrived
        (``answered`` counts them meanwhile)."""
        assert self.transport is not None
        self.expected, self.answered = len(requests), 0
        if not self.open:
            raise ConnectionResetError("the canary closed the connection")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(requests[0] if len(requests) == 1 else b"".join(requests))
        await self.waiter

    def close(self) -> None:
        """Close the connection."""
        self.open = False
        if self.transport is not None:
            self.transport.close()


class Link:
    """One sending task's connection to the canary (None between connections)."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: Connection | None = None

    def drop(self) -> None:
        """Close the connection (if any); the next request opens a new one."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

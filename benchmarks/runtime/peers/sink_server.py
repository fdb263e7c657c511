"""A stand-in canary that answers every request at once and does nothing else.

    python sink_server.py PORT

For the shadow benchmark (``shadow.py --canary sink``): what mirroring costs the stable
without the canary's own work landing on the two-core machine's other core (in a cluster
the canary runs on another node). Reads HTTP/1.1 requests, pipelined or not, with
httptools, and answers each ``200`` with an empty JSON object, in order.
"""

from __future__ import annotations

import asyncio
import sys

import httptools

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class Sink(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.done = 0

    def on_message_complete(self) -> None:
        self.done += 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
            return
        if self.done:
            self.transport.write(ANSWER * self.done)
            self.done = 0


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))

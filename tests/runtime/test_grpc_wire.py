"""The runtime's gRPC transport (``modelship_runtime.grpc_wire``) driven by grpcio's own
client at its defaults: what the V2 service tests do not reach.

A handler of test methods is served on a uvloop loop of its own thread, as the runtime
serves it on uvicorn's: echo (metadata too), answers larger than the client's flow-control
window, gzip-compressed requests, a message over the limit, an error status whose
message needs percent-encoding, a deadline that cancels the call on the server, 64 calls
at once on one connection, and a graceful stop that lets the call in flight finish while
new connections are refused.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import uvloop
from helpers import free_port

grpc = pytest.importorskip("grpc")

from modelship_runtime.grpc_wire import Call, GrpcError, GrpcWireServer  # noqa: E402

LIMIT = 256 * 1024
MESSAGE = "bad: 100% wrong, ünïcode\nand a second line"


class Served:
    """A GrpcWireServer on its own loop and thread, and what its handler saw."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = free_port()
        self.server = GrpcWireServer(self.handle, LIMIT)
        self.cancelled = threading.Event()
        self.slow_started = threading.Event()
        self.release: asyncio.Event | None = None

    def start(self) -> None:
        self.thread.start()
        self.run(self.server.start("127.0.0.1", self.port))

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    async def handle(self, call: Call, message: bytes) -> bytes:
        method = call.path.rsplit("/", 1)[-1]
        if method == "Echo":
            return message
        if method == "Big":
            return message * 32
        if method == "Key":
            return call.header(b"x-api-key") or b""
        if method == "Fail":
            raise GrpcError(3, MESSAGE)
        if method == "Slow":
            self.release = asyncio.Event()
            self.slow_started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return b"done"
        raise GrpcError(12, f"no method {call.path}")


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    s = Served()
    s.start()
    yield s
    s.close()


def method(channel: grpc.Channel, name: str) -> Callable[..., Any]:
    return channel.unary_unary(f"/test.Wire/{name}")  # bytes in, bytes out


def test_echo_metadata_and_64_calls_at_once(served: Served) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        assert method(channel, "Echo")(b"hello", timeout=30) == b"hello"
        assert method(channel, "Echo")(b"", timeout=30) == b""
        assert method(channel, "Key")(b"", metadata=[("x-api-key", "k1")], timeout=30) == b"k1"
        echo = method(channel, "Echo")
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(lambda i: echo(b"%d" % i * (i + 1), timeout=60),
                                    range(64)))
        assert answers == [b"%d" % i * (i + 1) for i in range(64)]


def test_answers_beyond_the_flow_control_window(served: Served) -> None:
    request = bytes(range(256)) * 800  # 200 KiB; the answer, 6.4 MB, outgrows the client's
    # 4 MiB stream window, so it is sent in pieces as the client's WINDOW_UPDATEs come
    with grpc.insecure_channel(f"127.0.0.1:{served.port}", options=[
            ("grpc.max_receive_message_length", 16 << 20)]) as channel:
        assert method(channel, "Echo")(request, timeout=60) == request
        assert method(channel, "Big")(request, timeout=60) == request * 32


def test_gzip_compressed_requests(served: Served) -> None:
    request = b"compressible " * 10_000
    with grpc.insecure_channel(f"127.0.0.1:{served.port}",
                               compression=grpc.Compression.Gzip) as channel:
        assert method(channel, "Echo")(request, timeout=30) == request


def test_a_message_over_the_limit_is_resource_exhausted(served: Served) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            method(channel, "Echo")(b"x" * (LIMIT + 1), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(LIMIT) in err.value.details()
        assert method(channel, "Echo")(b"after", timeout=30) == b"after"  # same connection


def test_error_status_and_message(served: Served) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            method(channel, "Fail")(b"", timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == MESSAGE
        with pytest.raises(grpc.RpcError) as unknown:
            method(channel, "Nope")(b"", timeout=30)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_passed_deadline_cancels_the_call_on_the_server(served: Served) -> None:
    served.cancelled.clear()
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            method(channel, "Slow")(b"", timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert served.cancelled.wait(30), "the handler was not cancelled"
        assert method(channel, "Echo")(b"still", timeout=30) == b"still"


def test_stop_finishes_the_call_in_flight_and_refuses_new_ones() -> None:
    s = Served()
    s.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as channel, \
                ThreadPoolExecutor(1) as pool:
            slow = pool.submit(method(channel, "Slow"), b"", timeout=60)
            assert s.slow_started.wait(30)
            stopping = asyncio.run_coroutine_threadsafe(s.server.stop(60), s.loop)
            with grpc.insecure_channel(f"127.0.0.1:{s.port}") as fresh, \
                    pytest.raises(grpc.RpcError) as refused:
                method(fresh, "Echo")(b"", timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not stopping.done()  # waiting for the call in flight
            release = s.release
            assert release is not None
            s.loop.call_soon_threadsafe(release.set)
            assert slow.result(30) == b"done"
            stopping.result(30)
        assert not s.cancelled.is_set()
    finally:
        s.close()


def test_a_peer_that_does_not_read_cannot_make_the_server_buffer_without_bound(
        served: Served) -> None:
    """PINGs sent without reading the PING ACKs: once the server's write buffer is past
    its high-water mark it stops reading from that peer; other clients are served."""
    ping = struct.pack(">HBBBI", 0, 8, 6, 0, 0) + b"12345678"  # PING, 8 bytes, stream 0
    sock = socket.create_connection(("127.0.0.1", served.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(0.5)
    sent = 0
    try:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">HBBBI", 0, 0, 4, 0, 0))
        burst = ping * 4096  # 69 KB of PINGs, 4096 ACKs to answer
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                sock.sendall(burst)
            except TimeoutError:
                break  # the server stopped reading us: our send buffer filled
            sent += 4096
        assert time.monotonic() < deadline, "the server kept reading a peer that never reads"

        async def buffered() -> int:
            return sum(c.transport.get_write_buffer_size() for c in served.server.connections
                       if c.transport is not None)

        # Far less than the ACKs of what was sent (17 bytes each) is held.
        held = served.run(buffered())
        assert held < 1024 * 1024, (held, sent)
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            assert method(channel, "Echo")(b"others", timeout=30) == b"others"
    finally:
        sock.close()

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
        if method == "Long":
            raise GrpcError(5, "ü" * 20000)
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
            deadline = time.monotonic() + 60  # the stop runs on the server's loop: until
            while time.monotonic() < deadline:  # it has closed the listening socket
                try:
                    socket.create_connection(("127.0.0.1", s.port), timeout=5).close()
                except ConnectionRefusedError:
                    break
                except ConnectionResetError:  # in the backlog as the listener closed
                    pass
                time.sleep(0.05)
            else:
                raise AssertionError(f"still listening; stop: {stopping.done()} "
                                     f"{stopping.exception() if stopping.done() else ''}")
            # a channel of its own (grpcio would otherwise reuse the first channel's
            # connection for the same address): a new connection, which is refused
            with grpc.insecure_channel(f"127.0.0.1:{s.port}",
                                       options=[("grpc.use_local_subchannel_pool", 1)]
                                       ) as fresh, \
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


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">HBBBI", 0, 0, 4, 0, 0)


def raw_frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    n = len(payload)
    return struct.pack(">HBBBI", n >> 8, n & 0xFF, kind, flags, sid) + payload


def flood(port: int, chunk: Callable[[int], bytes], seconds: float = 30) -> str:
    """Send chunk(i) for i = 0, 1, ... without reading anything, until the server stops
    reading (our send times out) or closes; which of the two happened."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(0.5)
    deadline = time.monotonic() + seconds
    try:
        sock.sendall(PREFACE)
        i = 0
        while time.monotonic() < deadline:
            try:
                sock.sendall(chunk(i))
            except TimeoutError:
                return "not read"
            except OSError:
                return "closed"
            i += 1
        raise AssertionError("the server kept reading a peer that never reads")
    finally:
        sock.close()


def held(served: Served) -> int:
    async def buffered() -> int:
        return sum(c.transport.get_write_buffer_size() for c in served.server.connections
                   if c.transport is not None)

    return int(served.run(buffered()))


def test_a_peer_that_does_not_read_its_answers_is_not_read_from(served: Served) -> None:
    """Calls whose answers are never read: once the server's write buffer is past its
    high-water mark it stops reading from that peer, so answers cannot pile up."""
    import hpack

    encoder = hpack.Encoder()
    message = b"x" * 16000
    data = b"\0" + struct.pack(">I", len(message)) + message

    def call(i: int) -> bytes:
        sid = 2 * i + 1
        block = encoder.encode([(":method", "POST"), (":scheme", "http"),
                                (":path", "/test.Wire/Echo"), (":authority", "x"),
                                ("content-type", "application/grpc"), ("te", "trailers")])
        return raw_frame(1, 0x4, sid, block) + raw_frame(0, 0x1, sid, data)

    assert flood(served.port, call) == "not read"
    assert held(served) < 1024 * 1024
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        assert method(channel, "Echo")(b"others", timeout=30) == b"others"


def test_a_ping_flood_is_cut_short(served: Served) -> None:
    ping = raw_frame(6, 0, 0, b"12345678") * 512
    assert flood(served.port, lambda i: ping) in ("closed", "not read")
    assert held(served) < 1024 * 1024
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        assert method(channel, "Echo")(b"others", timeout=30) == b"others"


def test_a_long_status_message_is_cut_and_the_call_still_answered(served: Served) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            method(channel, "Long")(b"", timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        details = err.value.details() or ""
        assert details.startswith("ü") and details.endswith("...")
        assert len(details.encode()) <= 1024


def open_streams(port: int, n: int, each: int) -> socket.socket:
    """n calls whose request sends `each` bytes and never ends."""
    import hpack

    encoder = hpack.Encoder()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(PREFACE)
    head = b"\0" + struct.pack(">I", 1 << 20)  # a message longer than what follows
    for i in range(n):
        sid = 2 * i + 1
        block = encoder.encode([(":method", "POST"), (":scheme", "http"),
                                (":path", "/test.Wire/Echo"), (":authority", "x"),
                                ("content-type", "application/grpc")])
        out = [raw_frame(1, 0x4, sid, block), raw_frame(0, 0, sid, head)]
        for _ in range(each // 16000):
            out.append(raw_frame(0, 0, sid, b"y" * 16000))
        sock.sendall(b"".join(out))
    return sock


def test_request_bytes_held_are_bounded_and_unfinished_requests_time_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from modelship_runtime import grpc_wire

    monkeypatch.setattr(grpc_wire, "CONNECTION_BUFFER_MESSAGES", 1)
    monkeypatch.setattr(grpc_wire, "REQUEST_TIMEOUT", 1.0)
    monkeypatch.setattr(grpc_wire, "SWEEP_SECONDS", 0.2)
    s = Served()
    s.server = GrpcWireServer(s.handle, 16 << 20)  # 16 MiB held at most per connection
    s.start()
    socks = []
    try:
        # 40 calls of 1 MiB each that never end: only 16 MiB of them is kept.
        socks.append(open_streams(s.port, 40, 1 << 20))

        async def state() -> tuple[int, int]:
            return s.server.buffered, s.server.calls

        def wait(check: Callable[[tuple[int, int]], bool]) -> tuple[int, int]:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                now = s.run(state())
                if check(now):
                    return now
                time.sleep(0.05)
            raise AssertionError(f"not within 60 s: {s.run(state())}")

        buffered, _ = wait(lambda st: st[0] > 8 << 20)
        assert buffered <= 16 << 20
        # Their requests never finish: answered DEADLINE_EXCEEDED, and nothing is held.
        assert wait(lambda st: st == (0, 0)) == (0, 0)
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as channel:
            assert method(channel, "Echo")(b"after", timeout=30) == b"after"
        # A stop does not wait for a request that never finishes.
        socks.append(open_streams(s.port, 1, 16000))
        wait(lambda st: st[1] == 1)
        t0 = time.monotonic()
        s.run(s.server.stop(30))
        assert time.monotonic() - t0 < 10
    finally:
        for sock in socks:
            sock.close()
        s.close()

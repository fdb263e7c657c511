"""The runtime's gRPC transport (``modelship_runtime.grpc_wire``) driven by grpcio's own
client at its defaults: what the V2 service tests do not reach.

A handler of test methods is served on a uvloop loop of its own thread, as the runtime
serves it on uvicorn's: echo (metadata too), answers larger than the client's flow-control
window, gzip-compressed requests, a message over the limit, an error status whose
message needs percent-encoding, a deadline that cancels the call on the server, 64 calls
at once on one connection, and a graceful stop that lets the call in flight finish while
new connections are refused. Streaming calls (``Chat``: one answer per request message,
as gRPC Server Reflection's) through grpcio's stream-stream client: messages answered in
turn on one open stream, requests and answers beyond the flow-control windows, the limits
(message size, deadline, a request that stops coming, a peer past the stream window),
an error and a cancel mid-stream, and a stop with a stream open.
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
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
        self.server = GrpcWireServer(self.handle, LIMIT, streaming={
            "/test.Wire/Chat": self.chat, "/test.Wire/ChatBig": self.chat})
        self.cancelled = threading.Event()
        self.expired: list[bool] = []  # call.expired of each cancelled Slow call
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
                self.expired.append(call.expired)
                self.cancelled.set()
                raise
            return b"done"
        raise GrpcError(12, f"no method {call.path}")

    async def chat(self, call: Call, message: bytes) -> bytes:
        """A streaming call's answer to one of its messages."""
        if message == b"fail":
            raise GrpcError(3, MESSAGE)
        if message == b"slow":
            self.slow_started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return message * 32 if call.path.endswith("Big") else message


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

    # windows as large as they go, so the answers are sent, not held for flow control
    # (where the calls would stay open, and past 128 of them be refused)
    windows = raw_frame(4, 0, 0, struct.pack(">HI", 0x4, 2**31 - 1)) + raw_frame(
        8, 0, 0, struct.pack(">I", 2**31 - 1 - 65_535))

    def call(i: int) -> bytes:
        sid = 2 * i + 1
        block = encoder.encode([(":method", "POST"), (":scheme", "http"),
                                (":path", "/test.Wire/Echo"), (":authority", "x"),
                                ("content-type", "application/grpc"), ("te", "trailers")])
        return (windows if i == 0 else b"") + raw_frame(1, 0x4, sid, block) + raw_frame(
            0, 0x1, sid, data)

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


def test_a_ping_after_each_answer_is_not_a_flood(served: Served,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """grpc-go and grpc-java clients send a PING per round trip while answers arrive (BDP
    estimation): a PING after each answer is never cut short, where as many PINGs
    alone are (here with the limit lowered to 5 a second)."""
    from modelship_runtime import grpc_wire

    monkeypatch.setattr(grpc_wire, "CONTROL_PER_SECOND", 5)
    raw = Raw(served.port)
    try:
        for i in range(30):
            sid = 2 * i + 1
            raw.call(sid, payload=b"%d" % i)
            assert raw.end_of(sid)[1] == {"grpc-status": "0"}
            raw.send(raw_frame(H_PING, 0, 0, b"bdp-ping"))
            raw.until(lambda k, fl, s, p: k == H_PING and fl & 1)
    finally:
        raw.close()
    raw = Raw(served.port)
    try:
        raw.send(raw_frame(H_PING, 0, 0, b"12345678") * 30)
        assert raw.goaway() == (0, 0xB)  # ENHANCE_YOUR_CALM
    finally:
        raw.close()


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


# --- raw frames: the RFC 9113 and gRPC rules that clients do not exercise ---------------

H_DATA, H_HEADERS, H_PRIORITY, H_RST, H_SETTINGS, H_PING, H_GOAWAY, H_WINDOW = \
    0, 1, 2, 3, 4, 6, 7, 8
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, REFUSED_STREAM = 0x1, 0x3, 0x6, 0x7


class Raw:
    """An HTTP/2 client connection of raw frames: what it sends is exactly what a test
    writes, and every frame the server sends is read and decoded."""

    def __init__(self, port: int, settings: bytes = b"") -> None:
        import hpack

        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""
        self.sock.sendall(PREFACE[:24] + raw_frame(H_SETTINGS, 0, 0, settings))

    def close(self) -> None:
        self.sock.close()

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def headers(self, sid: int, name: str = "Echo", end: bool = False,
                extra: tuple[tuple[str, str], ...] = ()) -> bytes:
        block = self.encoder.encode([(":method", "POST"), (":scheme", "http"),
                                     (":path", f"/test.Wire/{name}"), (":authority", "x"),
                                     ("content-type", "application/grpc"), ("te", "trailers"),
                                     *extra])
        return raw_frame(H_HEADERS, 0x4 | (0x1 if end else 0), sid, block)

    @staticmethod
    def message(sid: int, payload: bytes, end: bool = True) -> bytes:
        return raw_frame(H_DATA, 0x1 if end else 0, sid,
                         b"\0" + struct.pack(">I", len(payload)) + payload)

    def call(self, sid: int, name: str = "Echo", payload: bytes = b"",
             extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send(self.headers(sid, name, extra=extra), self.message(sid, payload))

    def read(self) -> tuple[int, int, int, bytes] | None:
        """The next frame (type, flags, stream, payload; a header block decoded into
        headers as JSON), None once the server closed the connection."""
        while True:
            if len(self.buf) >= 9:
                hi, lo, kind, flags, sid = struct.unpack_from(">HBBBI", self.buf)
                n = (hi << 8) | lo
                if len(self.buf) >= 9 + n:
                    payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
                    if kind == H_HEADERS:
                        payload = json.dumps(dict(self.decoder.decode(payload))).encode()
                    return kind, flags, sid & 0x7FFFFFFF, payload
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.buf += data

    def until(self, wanted: Callable[[int, int, int, bytes], bool]
              ) -> tuple[int, int, int, bytes]:
        """Frames read until one is ``wanted``; AssertionError when the connection ends."""
        seen = []
        while (f := self.read()) is not None:
            if wanted(*f):
                return f
            seen.append(f[:3])
        raise AssertionError(f"the connection closed first; frames seen: {seen}")

    def end_of(self, sid: int) -> tuple[str, Any]:
        """How stream ``sid`` ended: ("status", headers) or ("reset", error code)."""
        kind, _, _, payload = self.until(
            lambda k, fl, s, p: s == sid and (k == H_RST or (k == H_HEADERS and fl & 1)))
        if kind == H_RST:
            return "reset", struct.unpack(">I", payload)[0]
        return "status", json.loads(payload)

    def goaway(self) -> tuple[int, int]:
        """(last stream id, error code) of the GOAWAY the server sends."""
        payload = self.until(lambda k, fl, s, p: k == H_GOAWAY)[3]
        last, code = struct.unpack_from(">II", payload)
        return last, code


def wait_for(check: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.02)


def test_grpc_timeout_values() -> None:
    from modelship_runtime.grpc_wire import parse_timeout

    assert parse_timeout(b"2H") == 7200
    assert parse_timeout(b"3M") == 180
    assert parse_timeout(b"5S") == 5
    assert parse_timeout(b"250m") == pytest.approx(0.25)
    assert parse_timeout(b"99999999u") == pytest.approx(99.999999)
    assert parse_timeout(b"1000000n") == pytest.approx(1e-3)
    for bad in (b"", b"S", b"5", b"5s", b"-5S", b"1.5S", b"123456789S", b" 5S", b"5 S"):
        assert parse_timeout(bad) is None, bad


def test_the_servers_own_deadline_answers_deadline_exceeded(served: Served) -> None:
    """The client's grpc-timeout is kept here too: a call still running when it passes
    is answered DEADLINE_EXCEEDED and its handler cancelled; one whose request never
    finishes arriving too; a malformed grpc-timeout is INTERNAL."""
    served.cancelled.clear()
    served.slow_started.clear()
    served.expired.clear()
    raw = Raw(served.port)
    try:
        raw.call(1, "Slow", extra=(("grpc-timeout", "300m"),))
        assert raw.end_of(1) == ("status", {":status": "200",
                                            "content-type": "application/grpc",
                                            "grpc-status": "4", "grpc-message":
                                            "deadline exceeded (grpc-timeout 300m)"})
        assert served.slow_started.is_set()
        assert served.cancelled.wait(30), "the handler was not cancelled"
        assert served.expired == [True]  # what the service counts DEADLINE_EXCEEDED by
        # a request that never ends: answered, then the stream reset (NO_ERROR) so the
        # client stops sending; its late DATA is dropped
        raw.send(raw.headers(3, extra=(("grpc-timeout", "200000u"),)))
        ended = raw.end_of(3)
        assert ended[0] == "status" and ended[1]["grpc-status"] == "4"
        assert raw.until(lambda k, fl, s, p: k == H_RST and s == 3)[3] == bytes(4)
        raw.send(raw.message(3, b"late"))
        raw.call(5, extra=(("grpc-timeout", "1x"),))
        ended = raw.end_of(5)
        assert ended[1]["grpc-status"] == "13"
        assert "malformed grpc-timeout '1x'" in ended[1]["grpc-message"]
        raw.call(7, payload=b"in time", extra=(("grpc-timeout", "1M"),))
        assert raw.end_of(7)[1]["grpc-status"] == "0"
        raw.call(9, payload=b"too late", extra=(("grpc-timeout", "0n"),))  # passed already
        assert raw.end_of(9)[1]["grpc-status"] == "4"
        wait_for(lambda: served.run(_open_calls(served)) == 0, "no call left open")
    finally:
        raw.close()


async def _open_calls(served: Served) -> int:
    return served.server.calls


def test_answers_wait_for_the_clients_stream_and_connection_windows(served: Served) -> None:
    """An answer larger than the windows the client gives is sent only as far as they
    reach, and the rest as WINDOW_UPDATEs come: never a byte more (the PING's ACK, sent
    after whatever the server could send, shows nothing followed)."""
    request = bytes(range(256)) * 16  # 4 KiB; Big answers it 32 times: 128 KiB + 5
    # stream windows of 100 KB; the connection's stays at 65,535
    raw = Raw(served.port, struct.pack(">HI", 0x4, 100_000))
    try:
        raw.call(1, "Big", request)
        got = 0

        def data_until(total: int) -> None:
            nonlocal got
            while got < total:
                _, _, sid, payload = raw.until(lambda k, fl, s, p: k == H_DATA)
                assert sid == 1
                got += len(payload)
            assert got == total, got
            raw.send(raw_frame(H_PING, 0, 0, b"windows!"))
            raw.until(lambda k, fl, s, p: k == H_PING and fl & 1)
            assert got == total  # nothing sent past the window before the PING's ACK

        data_until(65_535)  # the connection's window (the stream's is 100,000)
        raw.send(raw_frame(H_WINDOW, 0, 0, struct.pack(">I", 50_000)))
        data_until(100_000)  # now the stream's
        raw.send(raw_frame(H_WINDOW, 0, 1, struct.pack(">I", 1_000)))
        data_until(101_000)  # the stream's again
        raw.send(raw_frame(H_WINDOW, 0, 1, struct.pack(">I", 1 << 20)))
        data_until(115_535)  # the connection's: 65,535 + 50,000
        raw.send(raw_frame(H_WINDOW, 0, 0, struct.pack(">I", 1 << 20)))
        while (f := raw.read()) is not None and f[0] != H_HEADERS:  # the rest
            got += len(f[3]) if f[0] == H_DATA else 0
        assert f is not None and json.loads(f[3]) == {"grpc-status": "0"}
        assert got == 5 + len(request) * 32
    finally:
        raw.close()


def test_window_overflows_reused_stream_ids_and_bad_priority(served: Served) -> None:
    """RFC 9113: a stream window past 2^31-1 resets that stream (FLOW_CONTROL_ERROR); a
    PRIORITY frame of the wrong size resets its stream (FRAME_SIZE_ERROR); both leave
    the connection serving. A connection window past 2^31-1, or a new stream whose id is
    not above the last one, is a connection error: GOAWAY, and the connection closes."""
    served.cancelled.clear()
    served.slow_started.clear()
    raw = Raw(served.port)
    try:
        raw.call(1, "Slow")
        assert served.slow_started.wait(30)
        raw.send(raw_frame(H_WINDOW, 0, 1, struct.pack(">I", 2**31 - 1)))
        assert raw.end_of(1) == ("reset", FLOW_CONTROL_ERROR)
        assert served.cancelled.wait(30), "the call of the reset stream was not cancelled"
        raw.send(raw_frame(H_PRIORITY, 0, 3, b"\0\0\0\0"))
        assert raw.end_of(3) == ("reset", FRAME_SIZE_ERROR)
        raw.send(raw_frame(H_PRIORITY, 0, 5, b"\0\0\0\0\x10"))  # well formed: ignored
        raw.call(5, payload=b"still serving")
        assert raw.end_of(5)[1] == {"grpc-status": "0"}
        raw.call(3)  # 3 is below 5: not a new stream
        assert raw.goaway() == (5, PROTOCOL_ERROR)
        assert raw.read() is None
    finally:
        raw.close()
    raw = Raw(served.port)
    try:
        raw.call(1)
        assert raw.end_of(1)[1] == {"grpc-status": "0"}
        raw.send(raw_frame(H_WINDOW, 0, 0, struct.pack(">I", 2**31 - 1)))
        assert raw.goaway() == (1, FLOW_CONTROL_ERROR)
        assert raw.read() is None
    finally:
        raw.close()
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        assert method(channel, "Echo")(b"others", timeout=30) == b"others"


def test_after_goaway_a_new_stream_is_refused_and_the_one_in_flight_finishes() -> None:
    """A stop's GOAWAY names the last stream taken; a stream the client opens after it
    (its GOAWAY not yet read) is reset REFUSED_STREAM, so the client may retry it
    elsewhere, while the call in flight is answered and the connection then closes."""
    s = Served()
    s.start()
    raw = Raw(s.port)
    try:
        raw.call(1, "Echo", b"first")
        assert raw.end_of(1)[1] == {"grpc-status": "0"}
        raw.call(3, "Slow")
        assert s.slow_started.wait(30)
        stopping = asyncio.run_coroutine_threadsafe(s.server.stop(60), s.loop)
        assert raw.goaway() == (3, 0)
        raw.call(5, "Echo", b"after the goaway")
        assert raw.end_of(5) == ("reset", REFUSED_STREAM)
        release = s.release
        assert release is not None
        s.loop.call_soon_threadsafe(release.set)
        assert raw.end_of(3)[1] == {"grpc-status": "0"}
        assert raw.read() is None  # closed once its last call was answered
        stopping.result(30)
        assert not s.cancelled.is_set()
    finally:
        raw.close()
        s.close()


def test_compressed_flags_and_encodings(served: Served) -> None:
    """A message flagged compressed is read with its grpc-encoding (gzip, deflate); without
    one it is INTERNAL (the gRPC protocol), and an encoding not served is UNIMPLEMENTED."""
    import zlib

    raw = Raw(served.port)
    try:
        body = b"squeeze me " * 100
        for sid, encoding, payload, status in (
                (1, "deflate", zlib.compress(body), "0"),
                (3, "identity", zlib.compress(body), "13"),
                (5, None, zlib.compress(body), "13"),
                (7, "snappy", body, "12")):
            extra = (("grpc-encoding", encoding),) if encoding else ()
            raw.send(raw.headers(sid, extra=extra), raw_frame(
                H_DATA, 1, sid, b"\1" + struct.pack(">I", len(payload)) + payload))
            ended = raw.end_of(sid)
            assert ended[1]["grpc-status"] == status, (encoding, ended)
    finally:
        raw.close()


def test_streams_past_the_advertised_maximum_are_refused(served: Served) -> None:
    """A client that opens more than the 128 streams the server's SETTINGS allow has the
    extra ones reset REFUSED_STREAM (not processed: safe to retry), and the connection
    keeps serving; once a call ends, a new stream is taken."""
    raw = Raw(served.port)
    try:
        raw.send(*(raw.headers(2 * i + 1) for i in range(128)))  # requests left open
        raw.call(257, payload=b"one too many")
        assert raw.end_of(257) == ("reset", REFUSED_STREAM)
        raw.send(raw.message(1, b"first"))  # one of the 128 ends
        assert raw.end_of(1)[1] == {"grpc-status": "0"}
        raw.call(259, payload=b"room again")
        assert raw.end_of(259)[1] == {"grpc-status": "0"}
    finally:
        raw.close()


def test_a_cap_on_connections() -> None:
    """At the cap a new connection closes the one idle the longest (GOAWAY NO_ERROR);
    when every connection has a call open the new one is sent GOAWAY and closed."""
    s = Served()
    s.server = GrpcWireServer(s.handle, LIMIT, max_connections=2)
    s.start()

    async def count() -> int:
        return len(s.server.connections)

    busy: list[Raw] = []
    try:
        a = Raw(s.port)
        busy.append(a)
        a.send(a.headers(1))  # a request that has not all arrived: a call open
        wait_for(lambda: s.run(_open_calls(s)) == 1, "a's call open")
        idle = Raw(s.port)
        busy.append(idle)
        idle.call(1, payload=b"idle after this")
        assert idle.end_of(1)[1] == {"grpc-status": "0"}
        b = Raw(s.port)  # the third: the idle one makes way
        busy.append(b)
        assert idle.goaway() == (1, 0) and idle.read() is None
        b.send(b.headers(1))
        wait_for(lambda: s.run(_open_calls(s)) == 2, "b's call open")
        assert s.run(count()) == 2
        refused = Raw(s.port)  # every connection busy: refused
        busy.append(refused)
        assert refused.goaway() == (0, REFUSED_STREAM) and refused.read() is None
        # channels with subchannels of their own: grpcio would otherwise keep the refused
        # connection's backoff for the next channel to the same address
        own = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"127.0.0.1:{s.port}", options=own) as channel, \
                pytest.raises(grpc.RpcError) as err:
            method(channel, "Echo")(b"", timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert s.run(count()) == 2
        a.send(a.message(1, b"a, done"))
        assert a.end_of(1)[1] == {"grpc-status": "0"}
        with grpc.insecure_channel(f"127.0.0.1:{s.port}", options=own) as channel:  # a idles
            assert method(channel, "Echo")(b"in", timeout=30) == b"in"
    finally:
        for r in busy:
            r.close()
        s.close()


# --- streaming calls -------------------------------------------------------------------


class Talk:
    """A stream's request messages, each sent when the test says (as grpcurl's reflection
    client sends its next request once the last is answered); ``end`` half-closes."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | None] = queue.Queue()

    def __iter__(self) -> Iterator[bytes]:
        while (message := self.queue.get()) is not None:
            yield message

    def send(self, message: bytes) -> None:
        self.queue.put(message)

    def end(self) -> None:
        self.queue.put(None)


def chat(channel: grpc.Channel, talk: Iterable[bytes], name: str = "Chat",
         timeout: float = 60) -> Any:
    return channel.stream_stream(f"/test.Wire/{name}")(iter(talk), timeout=timeout)


def open_calls(served: Served) -> int:
    return int(served.run(_open_calls(served)))


def request_bytes(served: Served) -> int:
    """Request bytes the server holds."""
    async def buffered() -> int:
        return served.server.buffered

    return int(served.run(buffered()))


def test_a_stream_answers_each_message_in_turn_then_ends_ok(served: Served) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        talk = Talk()
        answers = chat(channel, talk)
        for message in (b"one", b"", b"x" * 100_000, b"four"):  # 100 KB: frames over 16 KiB
            talk.send(message)
            assert next(answers) == message
        other = chat(channel, [b"a", b"b", b"c"])  # a second stream at once, sent at once
        assert list(other) == [b"a", b"b", b"c"]
        assert other.code() == grpc.StatusCode.OK
        talk.end()
        assert list(answers) == []
        assert answers.code() == grpc.StatusCode.OK
        assert list(chat(channel, [])) == []  # no message at all: ended OK
        assert method(channel, "Echo")(b"unary", timeout=30) == b"unary"
    wait_for(lambda: open_calls(served) == 0 and request_bytes(served) == 0, "streams closed")


def test_stream_requests_and_answers_beyond_the_flow_control_windows(served: Served) -> None:
    """Three requests of 200 KiB (more than the stream window the server gives, which it
    gives back as messages are read) sent at once, each answered with 6.4 MB (beyond the
    client's windows: sent as its WINDOW_UPDATEs come)."""
    request = bytes(range(256)) * 800
    with grpc.insecure_channel(f"127.0.0.1:{served.port}", options=[
            ("grpc.max_receive_message_length", 16 << 20)]) as channel:
        answers = chat(channel, [request, request[::-1], request], name="ChatBig")
        assert [a == m * 32 for a, m in zip(answers, [request, request[::-1], request],
                                             strict=True)] == [True] * 3
        assert answers.code() == grpc.StatusCode.OK


def test_a_stream_message_over_the_limit_ends_the_stream_not_the_connection(
        served: Served) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        talk = Talk()
        answers = chat(channel, talk)
        talk.send(b"fits")
        assert next(answers) == b"fits"
        talk.send(b"x" * (LIMIT + 1))
        with pytest.raises(grpc.RpcError) as err:
            next(answers)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(LIMIT) in (err.value.details() or "")
        talk.end()
        assert method(channel, "Echo")(b"after", timeout=30) == b"after"
    wait_for(lambda: open_calls(served) == 0 and request_bytes(served) == 0, "nothing held")


def test_an_error_or_a_cancel_mid_stream_leaves_the_connection_serving(
        served: Served) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        answers = chat(channel, [b"ok", b"fail", b"never read"])
        assert next(answers) == b"ok"
        with pytest.raises(grpc.RpcError) as err:
            next(answers)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == MESSAGE
        served.cancelled.clear()
        served.slow_started.clear()
        talk = Talk()
        answers = chat(channel, talk)
        talk.send(b"first")
        assert next(answers) == b"first"
        talk.send(b"slow")
        assert served.slow_started.wait(30)
        answers.cancel()  # RST_STREAM CANCEL while the handler works on "slow"
        assert answers.code() == grpc.StatusCode.CANCELLED
        assert served.cancelled.wait(30), "the stream's handler was not cancelled"
        talk.end()
        assert method(channel, "Echo")(b"still", timeout=30) == b"still"
    wait_for(lambda: open_calls(served) == 0 and request_bytes(served) == 0, "streams closed")


def test_a_streams_deadline_ends_it_deadline_exceeded(served: Served) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        talk = Talk()
        answers = chat(channel, talk, timeout=1.0)
        talk.send(b"in time")
        assert next(answers) == b"in time"
        with pytest.raises(grpc.RpcError) as err:
            next(answers)  # no more messages: the deadline passes
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        talk.end()
    wait_for(lambda: open_calls(served) == 0, "the stream closed on the server too")


def test_a_stream_whose_requests_stop_coming_times_out_and_stop_ends_open_streams(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from modelship_runtime import grpc_wire

    monkeypatch.setattr(grpc_wire, "REQUEST_TIMEOUT", 1.0)
    monkeypatch.setattr(grpc_wire, "SWEEP_SECONDS", 0.2)
    s = Served()
    s.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as channel:
            talk = Talk()
            answers = chat(channel, talk)  # no client deadline
            talk.send(b"hello")
            assert next(answers) == b"hello"
            with pytest.raises(grpc.RpcError) as err:
                next(answers)  # nothing more is sent: the server's own bound ends it
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no request message" in (err.value.details() or "")
            talk.end()
            monkeypatch.setattr(grpc_wire, "REQUEST_TIMEOUT", 600.0)
            talk = Talk()
            answers = chat(channel, talk)
            talk.send(b"open")
            assert next(answers) == b"open"
            t0 = time.monotonic()
            s.run(s.server.stop(30))  # an open stream does not hold the stop up
            assert time.monotonic() - t0 < 10
            with pytest.raises(grpc.RpcError) as stopped:
                next(answers)
            assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE
            talk.end()
    finally:
        s.close()


def test_a_peer_sending_past_a_streams_window_is_reset(served: Served) -> None:
    """The stream's window is given back only for messages read: while its handler works
    on one, a peer that sends on past the window gets RST_STREAM FLOW_CONTROL_ERROR, and
    what it sent is not kept."""
    served.slow_started.clear()
    raw = Raw(served.port)
    try:
        raw.send(raw.headers(1, "Chat"), raw.message(1, b"slow", end=False))
        assert served.slow_started.wait(30)
        chunk = b"y" * 16_000
        raw.send(*[raw.message(1, chunk, end=False) for _ in range(LIMIT // 16_000 + 2)])
        assert raw.end_of(1) == ("reset", FLOW_CONTROL_ERROR)
        raw.call(3, "Echo", b"next")
        assert raw.end_of(3)[1]["grpc-status"] == "0"
    finally:
        raw.close()
    wait_for(lambda: open_calls(served) == 0 and request_bytes(served) == 0, "nothing held")


def test_a_later_message_over_the_limit_on_a_stream_is_refused_and_nothing_kept(
        served: Served) -> None:
    """A message over the limit whose length comes after a smaller one in the same DATA
    frame: the first is answered, then the stream ends RESOURCE_EXHAUSTED (trailers after
    the answer) and the bytes held for it are let go."""
    raw = Raw(served.port)
    try:
        first = b"\0" + struct.pack(">I", 5) + b"first"
        huge = b"\0" + struct.pack(">I", LIMIT + 1) + b"zz"
        raw.send(raw.headers(1, "Chat"), raw_frame(H_DATA, 0, 1, first + huge))
        _, _, _, answer = raw.until(lambda k, fl, s, p: k == H_DATA and s == 1)
        assert answer == first
        how, trailers = raw.end_of(1)
        assert how == "status" and trailers["grpc-status"] == "8", trailers
        assert ":status" not in trailers  # trailers, after the response headers
        assert str(LIMIT) in trailers["grpc-message"]
    finally:
        raw.close()
    wait_for(lambda: open_calls(served) == 0 and request_bytes(served) == 0, "nothing held")


def test_a_stream_gives_back_the_window_of_each_message_read_and_of_padding(
        served: Served) -> None:
    raw = Raw(served.port)
    try:
        message = b"\0" + struct.pack(">I", 2) + b"hi"
        padded = bytes([100]) + message + b"\0" * 100  # Pad Length, data, padding
        raw.send(raw.headers(1, "Chat"), raw_frame(H_DATA, 0x8, 1, padded))
        given = 0
        while True:
            kind, _, _, payload = raw.until(lambda k, fl, s, p: s == 1)
            if kind == H_WINDOW:
                given += struct.unpack(">I", payload)[0]
            elif kind == H_DATA:
                assert payload == message
                break
        assert given == len(padded)  # the message's 7 bytes, the padding and its length
        raw.send(raw_frame(H_DATA, 0x1, 1, b""))  # the client's end: trailers, status 0
        assert raw.end_of(1)[1] == {"grpc-status": "0"}
    finally:
        raw.close()

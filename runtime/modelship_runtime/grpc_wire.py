"""gRPC over cleartext HTTP/2 (h2c), as an asyncio protocol on the running loop.

:mod:`.grpc_server` serves the Open Inference Protocol's gRPC service with this instead of
``grpc.aio``: grpc.aio hands each call from its own poller thread to the event loop and
back, which cost about 140 us of CPU per call before any work (a constant-answer
grpc.aio server); the HTTP V2 route's whole path, prediction included, costs less. Here a
call is read and answered on the loop that serves HTTP, like an HTTP/1.1 request under
uvicorn: the frames of a call usually arrive in one read and its answer leaves in one
write.

What it implements is what unary calls need (RFC 9113, the gRPC HTTP/2 protocol),
and message-by-message streaming calls for the paths the server is given as streaming
(gRPC Server Reflection's):
the connection preface and SETTINGS, PING, WINDOW_UPDATE and flow control both ways,
HEADERS with CONTINUATION (header blocks decoded by ``hpack``, the HTTP/2 project's HPACK
codec), DATA (padding allowed), RST_STREAM (the call's task is cancelled), GOAWAY both
ways; PRIORITY (once checked) and unknown frames are ignored. A request is one
length-prefixed message (identity, or gzip/deflate compressed); the answer is response
headers, one message and ``grpc-status`` trailers, or a trailers-only error. Answers are
not compressed. On a streaming call each request message is answered by one response
message as it arrives, in order, while the stream stays open (response headers with the
first); the call ends with ``grpc-status`` 0 once the client has ended its side and every
answer is sent, or with the status of the first error. Such a call reads its next message
only once the previous answer is written out, and the stream's flow-control window is
given back to the client only for the messages read, so a stream holds at most one
window of request bytes and one unsent answer; it is ended DEADLINE_EXCEEDED when no
message arrives within :data:`REQUEST_TIMEOUT`. The
client's deadline (``grpc-timeout``, any unit H M S m u n) is kept here too: once it has
passed (checked every :data:`DEADLINE_TICK`) the call's task is cancelled and the call
answered DEADLINE_EXCEEDED (a malformed value is answered INTERNAL, as grpc-go does); a
client that resets the stream cancels the call too.

Limits: at most ``max_connections`` connections (:data:`MAX_CONNECTIONS` unless given): a
new one past it closes the connection idle the longest (no call open) with GOAWAY
NO_ERROR, or, when every one is busy, is sent GOAWAY REFUSED_STREAM in place of the
server's SETTINGS and closed (clients then fail its calls UNAVAILABLE at once and back
off: grpcio, refused after SETTINGS, reconnected until the call's deadline); at most
:data:`MAX_STREAMS` calls at once per connection (more are refused with
REFUSED_STREAM, which clients retry), a request message of at most ``max_message`` bytes
(RESOURCE_EXHAUSTED), request bytes held per connection and in all (RESOURCE_EXHAUSTED
over :data:`CONNECTION_BUFFER_MESSAGES` / :data:`SERVER_BUFFER_MESSAGES` messages), a
header list of at most :data:`MAX_HEADER_LIST` bytes, a grpc-message of at most
:data:`MAX_STATUS_MESSAGE`, :data:`CONTROL_PER_SECOND` control frames a second; a preface
within :data:`HANDSHAKE_TIMEOUT`, a request's data within :data:`REQUEST_TIMEOUT`
(DEADLINE_EXCEEDED), and an idle connection closed after :data:`IDLE_TIMEOUT`. A peer
that breaks the protocol gets GOAWAY and the connection is closed (a stream's own error,
such as a stream window grown past 2^31-1 or a PRIORITY frame of the wrong size, resets
only that stream). After GOAWAY (a stop) a new stream is refused with RST_STREAM
REFUSED_STREAM: it was not processed, and the client may retry it elsewhere. A peer
that does not read what it is sent is not read from either, once the transport's write
buffer is past its high-water mark, so its answers cannot pile up here.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import hpack

logger = logging.getLogger("modelship_runtime")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAMS = 128
#: Open connections per server unless the server is given another cap.
MAX_CONNECTIONS = 1024
#: Streams closed here before their client ended them, remembered per connection so
#: their late frames are told from a reused stream id (the oldest are forgotten first).
MAX_UNENDED = 4 * MAX_STREAMS
#: Request bytes held (calls whose message has not all arrived) per connection and in
#: the whole server, at most ``max_message`` times these (and at least 16 and 64 MiB);
#: a call whose data would go over is answered RESOURCE_EXHAUSTED.
CONNECTION_BUFFER_MESSAGES = 4
SERVER_BUFFER_MESSAGES = 16
#: Seconds: the connection preface's, a request's (HEADERS to its last DATA), and an
#: idle connection's (no call open, nothing received).
HANDSHAKE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 60.0
IDLE_TIMEOUT = 600.0
SWEEP_SECONDS = 5.0
#: Control frames (PING, RST_STREAM, PRIORITY; a SETTINGS frame counts once per open call
#: plus one) a connection may send per second before it is told to calm down (GOAWAY
#: ENHANCE_YOUR_CALM): the shapes of CVE-2019-9512/9515 and CVE-2023-44487. The first
#: PING after an answer went out is not counted: grpc-go and grpc-java clients send one
#: per round trip while answers arrive (to size their windows: BDP estimation), which on
#: a fast network and a busy connection is thousands a second.
CONTROL_PER_SECOND = 2000
#: The longest grpc-message sent (after percent-encoding).
MAX_STATUS_MESSAGE = 1024
MAX_HEADER_LIST = 16 * 1024
DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
FRAME_MAX = 16_384  # SETTINGS_MAX_FRAME_SIZE of both sides' defaults; ours is not raised

# frame types and flags
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM = 0xB
# gRPC status codes used here
OK, CANCELLED, INVALID_ARGUMENT, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNIMPLEMENTED, \
    INTERNAL, UNAVAILABLE = 0, 1, 3, 4, 8, 12, 13, 14

_HEAD = struct.Struct(">I")
_FRAME = struct.Struct(">HBBBI")  # length (24 bits: H then B), type, flags, stream id


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with ``first``'s high bits above the prefix."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([first | value])
    out = bytearray([first | top])
    value -= top
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as an HPACK literal without indexing, new name, no Huffman coding:
    the answers never touch the peer's dynamic table, so they need no encoder state."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def percent_encode(message: str) -> bytes:
    """``grpc-message``'s encoding: bytes outside printable ASCII, and ``%``, as %XX; at
    most MAX_STATUS_MESSAGE bytes (a longer message is cut, and ends in ``...``)."""
    out = b"".join(bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
                   for b in message.encode()[:MAX_STATUS_MESSAGE])
    if len(out) > MAX_STATUS_MESSAGE:
        cut = out[:MAX_STATUS_MESSAGE - 3]
        tail = cut.rfind(b"%", len(cut) - 2)  # never half an escape
        out = (cut[:tail] if tail >= 0 else cut) + b"..."
    return out


#: grpc-timeout's units in seconds
_TIMEOUT_UNITS = {0x48: 3600.0, 0x4D: 60.0, 0x53: 1.0, 0x6D: 1e-3, 0x75: 1e-6, 0x6E: 1e-9}
#: Deadlines further away than this (seconds; about 116 days) are not timed.
_LONGEST_DEADLINE = 1e7
#: Deadlines are kept to within this many seconds: while calls with a deadline are open,
#: the server looks at them this often (a timer per call cost about 1 us a call, 5% of a
#: one-row ModelInfer's throughput; calls mostly end long before their deadline).
DEADLINE_TICK = 0.05


def parse_timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value (1 to 8 ASCII digits and a unit: H M S m u n);
    None when it is malformed."""
    digits = value[:-1]
    unit = _TIMEOUT_UNITS.get(value[-1]) if value else None
    if unit is None or not 1 <= len(digits) <= 8 or not digits.isdigit():
        return None
    return int(digits) * unit


# ":status: 200" (static table entry 8) and "content-type: application/grpc" (a literal
# with the static table's name 31)
RESPONSE_HEADERS = b"\x88" + _hpack_int(31, 4) + b"\x10application/grpc"
OK_TRAILERS = literal(b"grpc-status", b"0")


class GrpcError(Exception):
    """A call's failure: its gRPC status code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Stream:
    """What a streaming call needs beyond a unary one: its handler (one answer per request
    message), whether its response headers are out, and the wake-up its task waits on."""

    __slots__ = ("handler", "sent_headers", "wake")

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sent_headers = False
        self.wake: asyncio.Future[None] | None = None

    def notify(self) -> None:
        """Wake the call's task: a message or the client's end arrived, or its last
        answer went out."""
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)


class Call:
    """One call: what its request said, and whether it was cancelled."""

    __slots__ = ("arrived", "body", "cancelled", "deadline", "expired", "headers", "path",
                 "send_window", "started", "stream", "stream_id", "task", "waiting")

    def __init__(self, stream_id: int, path: str, headers: list[tuple[bytes, bytes]],
                 send_window: int) -> None:
        self.stream_id = stream_id
        self.path = path
        self.headers = headers
        """The request's headers (metadata), names in lower case, as bytes."""
        self.body = bytearray()
        self.cancelled = False
        """True once the client reset the stream or the connection went away."""
        self.send_window = send_window
        self.started = False
        """True once the request is complete and being answered (a streaming call: once
        the client ended its side)."""
        self.stream: _Stream | None = None  # a streaming call's state; None: unary
        self.task: asyncio.Task[None] | None = None  # while the handler runs
        self.waiting: bytes | None = None  # DATA payload still to send (flow control)
        self.arrived = 0.0  # the loop's time of its HEADERS (streaming: of its last message)
        self.deadline = 0.0  # its grpc-timeout's end in the loop's time; 0: none
        self.expired = False
        """True once its deadline (grpc-timeout) passed here."""

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


#: Frames counted against CONTROL_PER_SECOND.
_CONTROL = frozenset({SETTINGS, PING, RST_STREAM, PRIORITY})

#: answers a call's message (the request's payload, decompressed) with the response's
Handler = Callable[[Call, bytes], Awaitable[bytes]]


class _ProtocolError(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


class Connection(asyncio.Protocol):
    """One client connection: frames in, calls dispatched as tasks, answers out."""

    def __init__(self, server: GrpcWireServer) -> None:
        self.server = server
        self.handler = server.handler
        self.streaming = server.streaming
        self.max_message = server.max_message
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()  # made by the server, on its loop
        self.buf = bytearray()
        self.preface = False
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self.blocks: dict[bytes, list[tuple[bytes, bytes]]] = {}  # see _decode
        self.calls: dict[int, Call] = {}
        self.last_stream = 0
        self.send_window = DEFAULT_WINDOW
        self.peer_window = DEFAULT_WINDOW  # SETTINGS_INITIAL_WINDOW_SIZE of the peer
        self.peer_frame = FRAME_MAX
        # a whole request message fits a stream's window, so streams need no WINDOW_UPDATE
        self.stream_window = min(MAX_WINDOW, self.max_message + 1024)
        self.connection_window = min(MAX_WINDOW, max(4 * self.stream_window, 1 << 20))
        self.recv_window = self.connection_window  # what the peer may still send
        self.block: tuple[int, int, bytearray] | None = None  # a header block in pieces
        self.going_away = False
        self.blocked: list[Call] = []  # answers waiting for flow-control window
        self.buffered = 0  # request bytes held for calls not started
        self.buffer_limit = max(CONNECTION_BUFFER_MESSAGES * self.max_message, 16 << 20)
        self.control = 0  # control frames in the current second
        self.control_second = 0
        self.answered = False  # an answer (HEADERS, DATA) sent since the last PING
        self.opened = self.seen = 0.0  # the loop's times: connected, last frame received
        # streams closed here whose client had not ended them: their late frames are
        # dropped, where a HEADERS on any other stream id not above the last is an error
        self.unended: dict[int, None] = {}
        self.refused = False  # over the server's connection cap: only GOAWAY is sent

    # --- asyncio ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self.opened = self.seen = self.loop.time()
        if not self.server.admit():
            # over the cap with every connection busy: GOAWAY instead of the server's
            # preface, so the client counts a failed connection (UNAVAILABLE, backoff)
            # rather than one that went away (grpcio reconnects at once, again and again)
            self.refused = True
            transport.write(frame(
                GOAWAY, 0, 0, struct.pack(">II", 0, REFUSED_STREAM) + b"too many connections"))
            transport.close()
            return
        self.server.connections.add(self)
        # SETTINGS: MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE (a whole message fits a
        # stream's window), MAX_HEADER_LIST_SIZE; then a connection window of the same
        settings = struct.pack(">HIHIHI", 0x3, MAX_STREAMS, 0x4, self.stream_window,
                               0x6, MAX_HEADER_LIST)
        transport.write(frame(SETTINGS, 0, 0, settings) + frame(
            WINDOW_UPDATE, 0, 0, _HEAD.pack(self.connection_window - DEFAULT_WINDOW)))

    def pause_writing(self) -> None:
        """The peer is not reading what we write: stop reading from it until it does, so
        nothing it sends (calls, PINGs, SETTINGS) can pile answers up here."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for call in self.calls.values():
            self._cancel(call)
            self._release(call)
        self.calls.clear()
        self.server.changed()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        buf = self.buf
        buf += data
        self.seen = self.loop.time()
        try:
            pos = 0
            if not self.preface:
                if len(buf) < 24:
                    if not PREFACE.startswith(bytes(buf)):
                        raise _ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    return
                if buf[:24] != PREFACE:
                    raise _ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self.preface = True
                pos = 24
            end = len(buf)
            while end - pos >= 9:
                hi, lo, kind, flags, sid = _FRAME.unpack_from(buf, pos)
                n = (hi << 8) | lo
                if n > FRAME_MAX:
                    raise _ProtocolError(FRAME_SIZE_ERROR, f"a frame of {n} bytes")
                if end - pos - 9 < n:
                    break
                payload = bytes(buf[pos + 9:pos + 9 + n])
                pos += 9 + n
                self._frame(kind, flags, sid & 0x7FFFFFFF, payload)
            del buf[:pos]
        except _ProtocolError as exc:
            self.go_away(exc.code, str(exc))
        except hpack.HPACKError as exc:
            self.go_away(COMPRESSION_ERROR, f"bad header block: {exc}")

    # --- frames in ---------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.block is not None and kind != CONTINUATION:
            raise _ProtocolError(PROTOCOL_ERROR, "a header block was interrupted")
        if kind in _CONTROL and not (kind == PING and self.answered):
            second = int(self.seen)
            if second != self.control_second:
                self.control_second, self.control = second, 0
            # a SETTINGS frame may touch every open call: it counts for each of them
            self.control += 1 + len(self.calls) if kind == SETTINGS else 1
            if self.control > CONTROL_PER_SECOND:
                raise _ProtocolError(ENHANCE_YOUR_CALM, "too many control frames")
        elif kind == PING:  # the first PING since an answer went out: not counted
            self.answered = False
        if kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == DATA:
            self._data(flags, sid, payload)
        elif kind == CONTINUATION:
            if self.block is None or self.block[0] != sid:
                raise _ProtocolError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            block = self.block[2]
            block += payload
            if len(block) > MAX_HEADER_LIST:
                raise _ProtocolError(PROTOCOL_ERROR, "header block too large")
            if flags & END_HEADERS:
                first_flags = self.block[1]
                self.block = None
                self._headers_done(first_flags, sid, bytes(block))
        elif kind == SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == PING:
            if len(payload) != 8 or sid:
                raise _ProtocolError(FRAME_SIZE_ERROR if len(payload) != 8 else PROTOCOL_ERROR,
                                     "bad PING")
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if not sid or len(payload) != 4:
                raise _ProtocolError(PROTOCOL_ERROR if not sid else FRAME_SIZE_ERROR,
                                     "bad RST_STREAM")
            if sid > self.last_stream:
                raise _ProtocolError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            self.unended.pop(sid, None)
            call = self.calls.pop(sid, None)
            if call is not None:
                self._cancel(call)
                self._release(call)
                self.server.changed()
        elif kind == PRIORITY:  # advice this server does not follow; checked, then ignored
            if not sid:
                raise _ProtocolError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:  # a stream error (RFC 9113 6.3)
                self._reset(sid, FRAME_SIZE_ERROR)
        elif kind == GOAWAY:
            self.going_away = True
            self._close_if_idle()
        elif kind == PUSH_PROMISE:
            raise _ProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # unknown frame types are ignored

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ProtocolError(PROTOCOL_ERROR, "bad padding")
            return payload[1:len(payload) - payload[0]]
        return payload

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise _ProtocolError(PROTOCOL_ERROR, "HEADERS on stream 0")
        payload = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._headers_done(flags, sid, payload)
        else:
            self.block = (sid, flags, bytearray(payload))

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The header list of ``block``. A client sends the same block call after call
        once its fields are in the dynamic table; a block that left the table as it was
        decodes alike until the table changes, so it is decoded once."""
        headers = self.blocks.get(block)
        if headers is not None:
            return headers
        table = self.decoder.header_table
        entries = table.dynamic_entries
        n, first, size = len(entries), entries[0] if entries else None, table.maxsize
        headers = list(self.decoder.decode(block, raw=True))
        if (len(entries) == n and (entries[0] if entries else None) is first
                and table.maxsize == size):
            if len(self.blocks) >= 32:
                self.blocks.clear()
            self.blocks[block] = headers
        else:
            self.blocks.clear()
        return headers

    def _headers_done(self, flags: int, sid: int, block: bytes) -> None:
        headers = self._decode(block)  # keeps the decoder's table in step
        call = self.calls.get(sid)
        if call is not None:  # trailers, which must end the stream
            if not flags & END_STREAM:
                raise _ProtocolError(PROTOCOL_ERROR, f"a second HEADERS on stream {sid}")
            if call.stream is not None:
                call.started = True
                call.stream.notify()
                return
            self._request_done(call)
            return
        if sid <= self.last_stream:
            if sid in self.unended:  # the late trailers of a stream closed early here
                if flags & END_STREAM:
                    del self.unended[sid]
                return
            # a new stream must have an id above every one before (RFC 9113 5.1.1)
            raise _ProtocolError(PROTOCOL_ERROR, f"stream id {sid} is not above the last "
                                 f"one, {self.last_stream}")
        if not sid & 1:
            raise _ProtocolError(PROTOCOL_ERROR, f"even stream id {sid} from a client")
        self.last_stream = sid
        if self.going_away or len(self.calls) >= MAX_STREAMS:
            self._write(frame(RST_STREAM, 0, sid, _HEAD.pack(REFUSED_STREAM)))
            if not flags & END_STREAM:
                self._unended(sid)
            return
        method = path = content_type = b""
        timeout: bytes | None = None
        meta: list[tuple[bytes, bytes]] = []
        for k, v in headers:
            if k[:1] == b":":
                if k == b":path":
                    path = v
                elif k == b":method":
                    method = v
            else:
                if k == b"content-type":
                    content_type = v
                elif k == b"grpc-timeout":
                    timeout = v
                meta.append((k, v))
        call = Call(sid, path.decode("latin-1"), meta, self.peer_window)
        call.arrived = self.seen
        self.calls[sid] = call
        if method != b"POST" or not content_type.startswith(b"application/grpc"):
            self._refuse_http(call, b"415" if method == b"POST" else b"405")
            return
        if timeout is not None:
            seconds = parse_timeout(timeout)
            if seconds is None:
                self._answer_early(call, INTERNAL, "malformed grpc-timeout "
                                   f"{timeout.decode('latin-1')!r}: 1 to 8 digits and a "
                                   "unit, one of H M S m u n", flags)
                return
            if seconds < _LONGEST_DEADLINE:
                call.deadline = self.seen + seconds
                if not seconds:  # "0S" and the like: passed already
                    self.expire(call)
                    return
                if not self.server.ticking:
                    self.server.start_ticking()
        if self.streaming:
            handler = self.streaming.get(call.path)
            if handler is not None:
                call.stream = _Stream(handler)
                call.started = bool(flags & END_STREAM)
                call.task = self.loop.create_task(self._stream(call))
                return
        if flags & END_STREAM:
            self._request_done(call)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise _ProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
        n = len(payload)
        self.recv_window -= n
        if self.recv_window < 0:
            raise _ProtocolError(FLOW_CONTROL_ERROR, "connection window exceeded")
        if self.recv_window < self.connection_window // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0,
                              _HEAD.pack(self.connection_window - self.recv_window)))
            self.recv_window = self.connection_window
        call = self.calls.get(sid)
        if call is None or call.started:
            if sid > self.last_stream:
                raise _ProtocolError(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            if flags & END_STREAM:
                self.unended.pop(sid, None)
            return  # a stream reset or refused here: its late frames are dropped
        payload = self._unpad(flags, payload)
        if call.stream is not None:
            self._stream_data(call, flags, payload, n - len(payload))
            return
        n = len(payload)
        why = None
        if len(call.body) + n > self.max_message + 5:
            why = f"request message larger than the maximum of {self.max_message} bytes"
        elif self.buffered + n > self.buffer_limit or \
                self.server.buffered + n > self.server.buffer_limit:
            why = "too many request bytes in flight; retry later"
        if why is not None:
            # answered at once, and the rest of the request refused: RST_STREAM NO_ERROR
            self._release(call)
            self._answer_error(call, RESOURCE_EXHAUSTED, why)
            self._write(frame(RST_STREAM, 0, sid, _HEAD.pack(NO_ERROR)))
            return
        call.body += payload
        self.buffered += n
        self.server.buffered += n
        if flags & END_STREAM:
            self._request_done(call)

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise _ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            return
        if len(payload) % 6:
            raise _ProtocolError(FRAME_SIZE_ERROR, "bad SETTINGS length")
        window = None
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == 0x4:
                if value > MAX_WINDOW:
                    raise _ProtocolError(FLOW_CONTROL_ERROR, "initial window too large")
                window = value  # the last one counts: applied once, below
            elif key == 0x5:
                if not FRAME_MAX <= value <= 2**24 - 1:
                    raise _ProtocolError(PROTOCOL_ERROR, "bad max frame size")
                self.peer_frame = value
        if window is not None and window != self.peer_window:
            delta = window - self.peer_window
            self.peer_window = window
            for call in self.calls.values():
                call.send_window += delta
                if call.send_window > MAX_WINDOW:
                    raise _ProtocolError(FLOW_CONTROL_ERROR, "stream window overflow")
        self._write(frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ProtocolError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        inc = _HEAD.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if not inc:
                raise _ProtocolError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += inc
            if self.send_window > MAX_WINDOW:
                raise _ProtocolError(FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            if sid > self.last_stream:
                raise _ProtocolError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            call = self.calls.get(sid)
            if call is None:
                return  # a closed stream's
            if not inc:  # stream errors (RFC 9113 6.9, 6.9.1)
                self._reset(sid, PROTOCOL_ERROR)
                return
            call.send_window += inc
            if call.send_window > MAX_WINDOW:
                self._reset(sid, FLOW_CONTROL_ERROR)
                return
        self._flush_blocked()

    # --- calls -------------------------------------------------------------------------

    def _release(self, call: Call) -> None:
        """Forget the request bytes a call holds."""
        n = len(call.body)
        if n:
            self.buffered -= n
            self.server.buffered -= n
            call.body = bytearray()

    def _request_done(self, call: Call) -> None:
        if call.started:
            return
        call.started = True
        body = call.body
        self._release(call)
        if len(body) < 5:
            self._answer_error(call, INVALID_ARGUMENT, "a unary call needs one request "
                               "message; none came")
            return
        size = _HEAD.unpack_from(body, 1)[0]
        if len(body) != 5 + size:
            self._answer_error(call, INVALID_ARGUMENT, "a unary call takes one request "
                               "message; the request held "
                               + ("more" if len(body) > 5 + size else "a truncated one"))
            return
        message = bytes(body[5:])
        if body[0]:
            try:
                message = self._decompress(call, message)
            except GrpcError as exc:
                self._answer_error(call, exc.code, exc.message)
                return
        call.task = self.loop.create_task(self._run(call, message))

    def _decompress(self, call: Call, message: bytes) -> bytes:
        encoding = call.header(b"grpc-encoding") or b"identity"
        if encoding == b"identity":  # the gRPC protocol: then the flag must be 0
            raise GrpcError(INTERNAL, "the request message is flagged compressed but "
                            "grpc-encoding names no compression")
        wbits = {b"gzip": 31, b"deflate": 15}.get(encoding)
        if wbits is None:
            raise GrpcError(UNIMPLEMENTED, f"message compression {encoding.decode('latin-1')!r}"
                            " is not supported (gzip, deflate are)")
        try:
            d = zlib.decompressobj(wbits)
            out = d.decompress(message, self.max_message + 1)
        except zlib.error as exc:
            raise GrpcError(INTERNAL, f"cannot decompress the request message: {exc}") from None
        if len(out) > self.max_message or d.unconsumed_tail:
            raise GrpcError(RESOURCE_EXHAUSTED, "request message larger than the maximum of "
                            f"{self.max_message} bytes")
        return out

    async def _run(self, call: Call, message: bytes) -> None:
        try:
            answer = await self.handler(call, message)
        except GrpcError as exc:
            self._answer_error(call, exc.code, exc.message)
            return
        except asyncio.CancelledError:
            if not call.cancelled:  # the server's stop, not the client
                self._answer_error(call, CANCELLED, "the server is shutting down")
            return
        except Exception:
            logger.exception("unexpected error in a gRPC call")
            self._answer_error(call, INTERNAL, "internal error")
            return
        finally:
            call.task = None  # no cycle call -> task -> this frame -> call left to the GC
        try:
            self._answer(call, answer)
        except Exception:  # an answer that cannot be framed: the stream is reset
            logger.exception("cannot send a gRPC answer")
            self._write(frame(RST_STREAM, 0, call.stream_id, _HEAD.pack(INTERNAL_ERROR)))
            self._finished(call)

    # --- streaming calls -------------------------------------------------------------

    def _stream_data(self, call: Call, flags: int, payload: bytes, padding: int) -> None:
        """DATA of a streaming call: held until its task reads the messages out."""
        n = len(payload)
        if len(call.body) + n > self.stream_window:  # beyond the window given: not a peer
            self._reset(call.stream_id, FLOW_CONTROL_ERROR)  # that follows flow control
            return
        why = None
        if self.buffered + n > self.buffer_limit or \
                self.server.buffered + n > self.server.buffer_limit:
            why = "too many request bytes in flight; retry later"
        else:
            call.body += payload
            self.buffered += n
            self.server.buffered += n
            if len(call.body) >= 5 and _HEAD.unpack_from(call.body, 1)[0] > self.max_message:
                why = f"request message larger than the maximum of {self.max_message} bytes"
        if why is not None:
            self._release(call)
            self._end_stream(call, RESOURCE_EXHAUSTED, why)
            self._cancel(call)
            return
        if flags & END_STREAM:
            call.started = True
        elif padding:  # padding is never read out, so its window is given back now
            self._write(frame(WINDOW_UPDATE, 0, call.stream_id, _HEAD.pack(padding)))
        call.arrived = self.seen
        assert call.stream is not None
        call.stream.notify()

    async def _stream(self, call: Call) -> None:
        """A streaming call's task: each request message answered in turn, then the
        trailers."""
        stream = call.stream
        assert stream is not None
        code, why = OK, ""
        try:
            while (message := await self._next_message(call, stream)) is not None:
                answer = await stream.handler(call, message)
                self._send_message(call, stream, answer)
                while call.waiting is not None:  # the next message waits for this answer
                    await self._wait(stream)
        except GrpcError as exc:
            code, why = exc.code, exc.message
        except asyncio.CancelledError:
            if call.cancelled:  # the client, the deadline or a limit ended it
                return
            code, why = CANCELLED, "the server is shutting down"
        except Exception:
            logger.exception("unexpected error in a gRPC streaming call")
            code, why = INTERNAL, "internal error"
        finally:
            call.task = None
        self._end_stream(call, code, why)

    async def _wait(self, stream: _Stream) -> None:
        stream.wake = wake = self.loop.create_future()
        try:
            await wake
        finally:
            stream.wake = None

    async def _next_message(self, call: Call, stream: _Stream) -> bytes | None:
        """The next request message of a streaming call (decompressed), once all of it has
        arrived; None once the client ended its side. Its window is given back."""
        while True:
            body = call.body
            if len(body) >= 5:
                size = _HEAD.unpack_from(body, 1)[0]
                if size > self.max_message:
                    raise GrpcError(RESOURCE_EXHAUSTED, "request message larger than the "
                                    f"maximum of {self.max_message} bytes")
                end = 5 + size
                if len(body) >= end:
                    compressed = body[0]
                    message = bytes(body[5:end])
                    del body[:end]
                    self.buffered -= end
                    self.server.buffered -= end
                    if not call.started:  # the client may send as much again
                        self._write(frame(WINDOW_UPDATE, 0, call.stream_id, _HEAD.pack(end)))
                    call.arrived = self.loop.time()
                    return self._decompress(call, message) if compressed else message
            if call.started:
                if body:
                    raise GrpcError(INVALID_ARGUMENT, "the stream ended inside a request "
                                    "message")
                return None
            await self._wait(stream)

    def _send_message(self, call: Call, stream: _Stream, message: bytes) -> None:
        """One response message of a streaming call (its response headers first)."""
        if call.cancelled:
            return
        sid = call.stream_id
        data = b"\0" + _HEAD.pack(len(message)) + message
        n = len(data)
        head = b""
        if not stream.sent_headers:
            stream.sent_headers = True
            head = frame(HEADERS, END_HEADERS, sid, RESPONSE_HEADERS)
        self.answered = True
        if n <= self.send_window and n <= call.send_window and n <= self.peer_frame:
            self.send_window -= n
            call.send_window -= n
            self._write(head + frame(DATA, 0, sid, data))
            return
        if head:
            self._write(head)
        call.waiting = data
        self.blocked.append(call)
        self._flush_blocked()

    def _end_stream(self, call: Call, code: int, message: str) -> None:
        """End a streaming call with ``code``: trailers after its response messages, or a
        trailers-only answer before any (and RST_STREAM NO_ERROR when the client has not
        ended its side, so it stops sending); an answer part-sent is cut by RST_STREAM
        CANCEL instead, as no status can follow it."""
        if call.cancelled or self.calls.get(call.stream_id) is not call:
            return
        self._release(call)
        sid = call.stream_id
        ended = call.started
        if call.waiting is not None:
            call.waiting = None
            self._write(frame(RST_STREAM, 0, sid, _HEAD.pack(CANCEL)))
            self._finished(call)
            return
        if call.stream is not None and call.stream.sent_headers:
            block = literal(b"grpc-status", str(code).encode())
            if message:
                block += literal(b"grpc-message", percent_encode(message))
            self.answered = True
            self._write(frame(HEADERS, END_HEADERS | END_STREAM, sid, block))
            self._finished(call)
        else:
            self._answer_error(call, code, message)
        if not ended:
            self._write(frame(RST_STREAM, 0, sid, _HEAD.pack(NO_ERROR)))

    def _cancel(self, call: Call) -> None:
        call.cancelled = True
        if call.task is not None and not call.task.done():
            call.task.cancel()

    def expire(self, call: Call) -> None:
        """The call's deadline passed: answered DEADLINE_EXCEEDED (or its stream reset,
        when its answer is part-sent), and its task cancelled."""
        if self.calls.get(call.stream_id) is not call:
            return
        call.expired = True
        self._release(call)
        why = ("deadline exceeded (grpc-timeout "
               f"{(call.header(b'grpc-timeout') or b'').decode('latin-1')})")
        if call.waiting is not None:  # its response headers are out: no status can follow
            call.waiting = None
            self._write(frame(RST_STREAM, 0, call.stream_id, _HEAD.pack(CANCEL)))
            self._finished(call)
        elif call.stream is not None:
            self._end_stream(call, DEADLINE_EXCEEDED, why)
        else:
            self._answer_early(call, DEADLINE_EXCEEDED, why)
        self._cancel(call)

    def _reset(self, sid: int, code: int) -> None:
        """A stream error: RST_STREAM ``code``, and the stream's call, if open, cancelled."""
        self._write(frame(RST_STREAM, 0, sid, _HEAD.pack(code)))
        call = self.calls.pop(sid, None)
        if call is not None:
            if not call.started:
                self._unended(sid)
            self._cancel(call)
            self._release(call)
            self.server.changed()
            if self.going_away:
                self._close_if_idle()

    def _unended(self, sid: int) -> None:
        unended = self.unended
        unended[sid] = None
        if len(unended) > MAX_UNENDED:
            del unended[next(iter(unended))]

    # --- frames out --------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _answer(self, call: Call, message: bytes) -> None:
        if call.cancelled:
            return
        sid = call.stream_id
        data = b"\0" + _HEAD.pack(len(message)) + message
        n = len(data)
        head = frame(HEADERS, END_HEADERS, sid, RESPONSE_HEADERS)
        self.answered = True
        if n <= self.send_window and n <= call.send_window and n <= self.peer_frame:
            self.send_window -= n
            self._write(head + frame(DATA, 0, sid, data)
                        + frame(HEADERS, END_HEADERS | END_STREAM, sid, OK_TRAILERS))
            self._finished(call)
            return
        self._write(head)
        call.waiting = data
        self.blocked.append(call)
        self._flush_blocked()

    def _flush_blocked(self) -> None:
        if not self.blocked:
            return
        still: list[Call] = []
        for call in self.blocked:
            data = call.waiting
            if data is None or call.cancelled:
                continue
            out = []
            while data:
                n = min(len(data), self.send_window, call.send_window, self.peer_frame)
                if n <= 0:
                    break
                out.append(frame(DATA, 0, call.stream_id, data[:n]))
                data = data[n:]
                self.send_window -= n
                call.send_window -= n
            if data:
                call.waiting = data
                still.append(call)
            else:
                call.waiting = None
                if call.stream is None:
                    out.append(frame(HEADERS, END_HEADERS | END_STREAM, call.stream_id,
                                     OK_TRAILERS))
            if out:
                self.answered = True
                self._write(b"".join(out))
            if not data:
                if call.stream is None:
                    self._finished(call)
                else:  # its task sends the next answer, or the trailers
                    call.stream.notify()
        self.blocked = still

    def _answer_error(self, call: Call, code: int, message: str) -> None:
        """A trailers-only answer: status 200, grpc-status and grpc-message."""
        if call.cancelled:
            return
        block = (RESPONSE_HEADERS + literal(b"grpc-status", str(code).encode())
                 + literal(b"grpc-message", percent_encode(message)))
        self.answered = True
        self._write(frame(HEADERS, END_HEADERS | END_STREAM, call.stream_id, block))
        self._finished(call)

    def _answer_early(self, call: Call, code: int, message: str, flags: int = 0) -> None:
        """A trailers-only answer before the request has all arrived (unless ``flags``,
        its HEADERS', end the stream): then RST_STREAM NO_ERROR too, as the gRPC protocol
        asks, so the client stops sending."""
        ended = call.started or bool(flags & END_STREAM)
        self._answer_error(call, code, message)
        if not ended:
            self._write(frame(RST_STREAM, 0, call.stream_id, _HEAD.pack(NO_ERROR)))

    def _refuse_http(self, call: Call, status: bytes) -> None:
        """Not a gRPC request: a plain HTTP status, as the gRPC protocol asks."""
        block = (literal(b":status", status) + literal(b"grpc-status", str(INTERNAL).encode())
                 + literal(b"grpc-message", b"not a gRPC request (POST, content-type "
                           b"application/grpc)"))
        self._write(frame(HEADERS, END_HEADERS | END_STREAM, call.stream_id, block))
        self._finished(call)

    def _finished(self, call: Call) -> None:
        self.calls.pop(call.stream_id, None)
        if not call.started:
            self._unended(call.stream_id)
        self.server.changed()
        if self.going_away:
            self._close_if_idle()

    # --- the end -----------------------------------------------------------------------

    def go_away(self, code: int, why: str) -> None:
        """GOAWAY ``code`` and close the connection; its open calls are cancelled."""
        logger.info("closing a gRPC connection: %s", why)
        self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, code)))
        for call in self.calls.values():
            self._cancel(call)
            self._release(call)
        self.calls.clear()
        self.server.changed()
        if self.transport is not None:
            self.transport.close()

    def shut(self) -> None:
        """GOAWAY: no new calls on this connection; it closes once its calls are answered."""
        if self.going_away:
            return
        self.going_away = True
        self._write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, NO_ERROR)))
        self._close_if_idle()

    def sweep(self, now: float) -> None:
        """Close a connection whose preface never came or that idles; answer calls whose
        request has not all arrived in time DEADLINE_EXCEEDED."""
        if not self.preface:
            if now - self.opened > HANDSHAKE_TIMEOUT and self.transport is not None:
                self.transport.close()
            return
        if not self.calls:
            if now - self.seen > IDLE_TIMEOUT:
                self.go_away(NO_ERROR, "idle")
            return
        late = [c for c in self.calls.values()
                if not c.started and now - c.arrived > REQUEST_TIMEOUT]
        for call in late:
            self._release(call)
            if call.stream is not None:
                self._end_stream(call, DEADLINE_EXCEEDED, "no request message on the "
                                 f"stream in {REQUEST_TIMEOUT:g} s")
                self._cancel(call)
                continue
            self._answer_error(call, DEADLINE_EXCEEDED, "the request did not arrive in "
                               f"{REQUEST_TIMEOUT:g} s")
            self._write(frame(RST_STREAM, 0, call.stream_id, _HEAD.pack(CANCEL)))

    def drop_unstarted(self) -> None:
        """At shutdown: calls whose request has not all arrived are refused at once."""
        for call in [c for c in self.calls.values() if not c.started]:
            self._release(call)
            if call.stream is not None:
                if call.stream.sent_headers:  # answered in part: not a refusal
                    self._end_stream(call, UNAVAILABLE, "the server is shutting down")
                    self._cancel(call)
                    continue
                self._cancel(call)
            self._write(frame(RST_STREAM, 0, call.stream_id, _HEAD.pack(REFUSED_STREAM)))
            self._finished(call)

    def _close_if_idle(self) -> None:
        if not self.calls and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Cancel the calls still running and drop the connection."""
        for call in list(self.calls.values()):
            if call.task is not None and not call.task.done():
                call.task.cancel()
        if self.transport is not None:
            self.transport.close()


class GrpcWireServer:
    """The listening socket and its connections."""

    def __init__(self, handler: Handler, max_message: int,
                 max_connections: int = MAX_CONNECTIONS,
                 streaming: Mapping[str, Handler] | None = None) -> None:
        """``handler`` answers unary calls; ``streaming`` maps the paths of streaming
        calls to the handler that answers each of their request messages."""
        self.handler = handler
        self.streaming: Mapping[str, Handler] = dict(streaming or {})
        self.max_message = max_message
        self.max_connections = max_connections
        self.refused = 0  # connections refused at the cap
        self.ticking = False  # calls with a deadline are open: tick() is scheduled
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refusal_logged = -1e9
        self.connections: set[Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._changed: asyncio.Event | None = None
        self.buffered = 0  # request bytes held by all connections
        self.buffer_limit = max(SERVER_BUFFER_MESSAGES * max_message, 64 << 20)
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen; OSError when the address cannot be bound."""
        self._loop = loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), host, port,
                                                reuse_address=True, backlog=1024)
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self.connections):
            try:
                conn.sweep(now)
            except Exception:  # never let the sweep stop
                logger.exception("gRPC connection sweep")
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    def start_ticking(self) -> None:
        assert self._loop is not None
        self.ticking = True
        self._loop.call_later(DEADLINE_TICK, self.tick)

    def tick(self) -> None:
        """Expire the calls whose deadline passed; again in :data:`DEADLINE_TICK` while
        calls with a deadline are open."""
        assert self._loop is not None
        now = self._loop.time()
        waiting = False
        for conn in list(self.connections):
            if not conn.calls:
                continue
            for call in [c for c in conn.calls.values() if c.deadline]:
                if call.deadline <= now:
                    try:
                        conn.expire(call)
                    except Exception:  # never let one call keep the others open
                        logger.exception("gRPC deadline")
                else:
                    waiting = True
        self.ticking = waiting
        if waiting:
            self._loop.call_later(DEADLINE_TICK, self.tick)

    def admit(self) -> bool:
        """Whether a new connection may open: below the cap, or at it once the connection
        idle the longest (no call open) is sent GOAWAY and closed; False when every
        connection has a call open."""
        if len(self.connections) < self.max_connections:
            return True
        idle = [c for c in self.connections if not c.calls]
        if not idle:
            self.refused += 1
            now = time.monotonic()
            if now - self._refusal_logged > 60:  # at most a line a minute
                self._refusal_logged = now
                logger.warning("gRPC connections refused: %d connections open, all busy "
                               "(the cap); %d refused so far", len(self.connections),
                               self.refused)
            return False
        oldest = min(idle, key=lambda c: c.seen)
        self.connections.discard(oldest)
        oldest.go_away(NO_ERROR, f"{len(self.connections) + 1} connections open (the cap): "
                        "the one idle the longest is closed for a new one")
        return True

    @property
    def calls(self) -> int:
        """Calls open on all connections."""
        return sum(len(c.calls) for c in self.connections)

    def changed(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def stop(self, grace: float) -> None:
        """Stop listening, GOAWAY every connection, wait at most ``grace`` seconds for
        the calls in flight, then cancel what is left and close."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._changed = asyncio.Event()
        for conn in list(self.connections):
            conn.drop_unstarted()
            conn.shut()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.calls and loop.time() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            except TimeoutError:
                break
        tasks: list[asyncio.Task[Any]] = []
        for conn in list(self.connections):
            tasks.extend(c.task for c in conn.calls.values() if c.task is not None)
            conn.abort()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

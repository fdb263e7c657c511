"""The stable's side of shadow traffic: mirror prediction requests to the canary.

With ``MODELSHIP_SHADOW_URL`` set, or a mounted ``MODELSHIP_SHADOW_CONFIG_FILE`` naming
this pod's version (the operator's ConfigMap during a rollout's shadow phase), a share
(``MODELSHIP_SHADOW_FRACTION``, sampled at random) of the successful prediction requests
is sent again, after the client has its answer, to the same route of the canary's
Service with:

- ``X-Modelship-Shadow``: ``1``, or the shared ``MODELSHIP_SHADOW_TOKEN``;
- ``X-Request-ID``: the request's id, so both pods' logs name the same request;
- ``X-Modelship-Stable-Prediction``: this runtime's predictions, a JSON array with one
  label (classifiers) or value (regressors) per row, at most
  ``MODELSHIP_SHADOW_MAX_PREDICTION_BYTES`` long (longer: not mirrored);
- ``X-Modelship-Stable-Version``, and the client's ``Authorization`` / ``X-API-Key``.

``/predict``, ``/v1/models/{name}:predict``, ``/v2/models/{name}/infer`` and
``/invocations`` are mirrored (the versioned V2 route goes to the unversioned one: the
canary serves another version), with the client's ``Content-Type`` and
``Inference-Header-Content-Length``, so binary tensors and CSV bodies reach the canary
as they reached the stable. gRPC ``ModelInfer`` calls are mirrored by
:mod:`modelship_runtime.grpc_server` as the binary V2 request of the same rows.
A request that carries ``X-Modelship-Shadow`` is never mirrored, so two pods mirroring to
each other make no loop.

The serving process does not send them: its one event loop serves the clients, and every
microsecond spent there on the canary is taken from them. It starts a sender process
(:mod:`modelship_runtime.shadow_sender`) when mirroring first switches on, at idle CPU
priority, and hands it the chosen requests in batches (every ``HANDOFF_SECONDS``, or
``HANDOFF_REQUESTS`` at a time), each with one non-blocking write on a Unix socket pair;
when that socket's buffer is full, or the sender is gone, the batch is dropped (and
counted), never waited for. The sender owns the connections to the canary, the timeouts
(``MODELSHIP_SHADOW_TIMEOUT_SECONDS``), the bounded queue (``MODELSHIP_SHADOW_QUEUE``),
the ``MODELSHIP_SHADOW_CONCURRENCY`` sending tasks and the pause after a failure. It exits
when the server closes its end of the socket or dies; a sender that dies is started
again (after 1 s, doubling up to a minute), and what it had not settled counts as
dropped. Every request chosen for mirroring ends in exactly one outcome of
``modelship_shadow_mirrored_total``; ``modelship_shadow_pending`` is what was handed over
and not yet settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import mmap
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from .model import Prediction
from .shadow_sender import BATCH, BLOCK_BYTES, DROPPED, FAILED, REQUEST, SENT, TARGET

logger = logging.getLogger("modelship_runtime.shadow")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

_V1 = re.compile(r"/v1/models/[^/]+:predict")
_V2 = re.compile(r"/v2/models/([^/]+)(?:/versions/[^/]+)?/infer")
#: The client's headers a copy carries: its credentials, and what says how to read its
#: body (an Open Inference Protocol binary request, a CSV for ``/invocations``).
_FORWARDED = (b"authorization", b"x-api-key", b"content-type", b"content-encoding",
              b"inference-header-content-length")
_JSON = b"\r\ncontent-type: application/json"
#: Bytes the socket to the sender may hold (the kernel caps it at net.core.wmem_max,
#: then doubles it); the largest request handed over is a little under it.
SOCKET_BUFFER = 4 * 1024 * 1024
#: Chosen requests are handed over together: at most this long after the first of them
#: (seconds), or as soon as this many are waiting. One write and one wake-up of the sender
#: per batch instead of per request: the write is most of what mirroring costs the
#: serving process, and every wake-up is a switch on the pod's CPU.
HANDOFF_SECONDS = 0.005
HANDOFF_REQUESTS = 32
RESTART_FIRST = 1.0
RESTART_MAX = 60.0
STOP_SECONDS = 5.0


def mirror_path(path: str) -> str | None:
    """The canary's route for a prediction route of this runtime; None: not mirrored."""
    if path == "/predict" or path == "/invocations":
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


def check_url(url: str) -> None:
    """ValueError unless ``url`` is an http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"shadow URL {url!r} is not an http(s) URL with a host")


class Outgoing:
    """A request of this runtime chosen for mirroring: its body and its predictions."""

    cacheable = True
    __slots__ = ("chunks", "forwarded", "mirror", "path", "prediction", "request_id")

    def __init__(self, path: bytes, request_id: bytes, forwarded: bytes,
                 mirror: Mirror) -> None:
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


class SenderProcess:
    """The serving process's end of the sender: hands requests over, counts outcomes.

    One per app. Counts of its own (plain integers: this is the request path) plus the
    sender's shared block make ``modelship_shadow_mirrored_total``.
    """

    def __init__(self, *, version: str, token: str | None, concurrency: int,
                 queue_size: int, timeout: float, log_level: str = "INFO",
                 log_json: bool = True, priority: str = "idle") -> None:
        self.version = version
        self.shadow_value = token or "1"
        self.args = ["--concurrency", str(concurrency), "--queue", str(queue_size),
                     "--timeout", str(timeout), "--priority", priority,
                     "--log-level", log_level,
                     "--log-json" if log_json else "--no-log-json"]
        self.handed = 0      # written to the socket, to be settled by the sender
        self.dropped = 0     # socket full, sender gone, or lost with a dead sender
        self.skipped = 0
        self.shed = 0        # chosen while other requests were being served
        self._batch: list[bytes] = []  # the next write: requests, head then parts
        self._batched = 0
        self._batch_bytes = 0
        self._flush_at: asyncio.TimerHandle | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._sock: socket.socket | None = None
        self._targets: dict[int, bytes] = {}
        self._block: mmap.mmap | None = None
        self._counts: memoryview | None = None
        self._pidfd: int | None = None
        self._restart: asyncio.TimerHandle | None = None
        self._closed = False
        self._last_target = 0
        self.max_message = 0

    # --- on the request path: cheap, never waits -----------------------------------

    def hand(self, target: int, item: Outgoing, prediction: bytes) -> None:
        """Queue a request for the sender's next write (within HANDOFF_SECONDS); one that
        the socket could never carry is skipped."""
        if self._sock is None:
            self.dropped += 1
            return
        chunks = item.chunks
        size = 0
        for c in chunks:
            size += len(c)
        head = REQUEST.pack(b"R", target, len(item.path), len(item.request_id),
                            len(prediction), len(item.forwarded), size)
        size += len(head) + len(item.path) + len(item.request_id) + len(prediction) \
            + len(item.forwarded)
        if size + BATCH.size > self.max_message:  # more than a write to the sender carries
            self.skipped += 1
            return
        if self._batch_bytes + size + BATCH.size > self.max_message:
            self.flush()
        self._batch += (head, item.path, item.request_id, prediction, item.forwarded, *chunks)
        self._batched += 1
        self._batch_bytes += size
        if self._batched >= HANDOFF_REQUESTS:
            self.flush()
        elif self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(HANDOFF_SECONDS,
                                                                  self.flush)

    def flush(self) -> None:
        """Write the waiting requests to the sender in one packet, never waiting: if the
        socket cannot take it now, they are dropped."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if not self._batched:
            return
        batch, n = self._batch, self._batched
        self._batch, self._batched, self._batch_bytes = [], 0, 0
        sock = self._sock
        if sock is None:
            self.dropped += n
            return
        try:
            sock.sendmsg([BATCH.pack(b"B", n), *batch])
        except BlockingIOError:  # the sender is behind: never wait for it
            self.dropped += n
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:  # the kernel carries less than it said
                self.skipped += n
            else:  # the sender is gone
                self.dropped += n
                self._gone()
        else:
            self.handed += n

    def new_target(self) -> int:
        """An index for a canary not named before."""
        self._last_target = (self._last_target + 1) % 65536
        return self._last_target

    # --- figures for /metrics ----------------------------------------------------------

    def figures(self) -> tuple[dict[str, float], float]:
        """Outcomes so far, and how many handed over are not settled yet."""
        sent = failed = dropped = 0
        if self._counts is not None:
            sent, failed, dropped = (self._counts[SENT], self._counts[FAILED],
                                     self._counts[DROPPED])
        pending = max(self.handed - sent - failed - dropped, 0) + self._batched
        return ({"sent": sent, "dropped": self.dropped + dropped, "failed": failed,
                 "skipped": self.skipped, "shed": self.shed}, pending)

    # --- the process -------------------------------------------------------------------

    def declare(self, index: int, url: str) -> None:
        """Name a canary the requests handed over with ``index`` go to (starting the
        sender if it is not running)."""
        message = TARGET.pack(b"T", index) + json.dumps(
            {"url": url, "shadow": self.shadow_value, "version": self.version}).encode()
        self._targets[index] = message
        if self._sock is None and self._restart is None and not self._closed:
            self._spawn()
        elif self._sock is not None:
            self._control(message)

    def _control(self, message: bytes) -> None:
        assert self._sock is not None
        self._sock.setblocking(True)  # a target must arrive; the buffer is 4 MiB
        try:
            self._sock.settimeout(1.0)
            self._sock.send(message)
        except OSError:
            self._gone()
        finally:
            if self._sock is not None:
                self._sock.setblocking(False)

    def _spawn(self) -> None:
        if self._block is None:
            fd = _shared_fd(BLOCK_BYTES)
            self._block = mmap.mmap(fd, BLOCK_BYTES)
            self._counts = memoryview(self._block).cast("Q")
            self._counts_fd = fd
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sndbuf = ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            self.max_message = max(sndbuf - 4096, 65536)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modelship_runtime.shadow_sender",
                 "--socket-fd", str(theirs.fileno()), "--counts-fd", str(self._counts_fd),
                 "--max-message", str(self.max_message), *self.args],
                pass_fds=(theirs.fileno(), self._counts_fd), stdin=subprocess.DEVNULL)
        except OSError:
            logger.exception("cannot start the shadow sender")
            ours.close()
            theirs.close()
            self._schedule_restart()
            return
        theirs.close()
        ours.setblocking(False)
        self._sock = ours
        for message in self._targets.values():
            self._control(message)
        self._watch(self.proc)
        logger.info("shadow sender started", extra={"pid": self.proc.pid})

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Learn at once when the sender exits (a pidfd on the loop, where there is one)."""
        with contextlib.suppress(AttributeError, OSError, RuntimeError, NotImplementedError):
            pidfd = os.pidfd_open(proc.pid)
            try:
                asyncio.get_running_loop().add_reader(pidfd, self._exited, proc)
            except BaseException:
                os.close(pidfd)
                raise
            self._pidfd = pidfd

    def _exited(self, proc: subprocess.Popen[bytes]) -> None:
        if proc is self.proc:
            self._gone()

    def _gone(self) -> None:
        """The sender died: what it had not settled is dropped; start another later."""
        if self._sock is None:
            return
        self._unwatch()
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        self.dropped += self._batched  # never handed over: lost with this sender
        self._batch, self._batched, self._batch_bytes = [], 0, 0
        self._sock.close()
        self._sock = None
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()  # if only its socket broke
            proc.wait()
            logger.warning("shadow sender exited", extra={"exit_code": proc.returncode})
        if self._counts is not None:  # its counts are final now
            settled = self._counts[SENT] + self._counts[FAILED] + self._counts[DROPPED]
            self.dropped += max(self.handed - settled, 0)
            self.handed = settled
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        if self._closed:
            return
        delay = min(RESTART_FIRST * 2 ** self.restarts, RESTART_MAX)
        self.restarts += 1
        self._restart = asyncio.get_running_loop().call_later(delay, self._restarted)

    def _restarted(self) -> None:
        self._restart = None
        if not self._closed and self._sock is None:
            self._spawn()

    def _unwatch(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def close(self) -> None:
        """Close the socket (the sender exits at its end) and wait for the process."""
        self._closed = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        self.flush()  # the last requests chosen: the sender settles them before it exits
        self._unwatch()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc, self.proc = self.proc, None
        if proc is not None:
            deadline = time.monotonic() + STOP_SECONDS
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self._counts is not None:  # unsettled: dropped
            settled = self._counts[SENT] + self._counts[FAILED] + self._counts[DROPPED]
            self.dropped += max(self.handed - settled, 0)
            self.handed = settled


def _shared_fd(size: int) -> int:
    """A file descriptor of ``size`` zero bytes to share with the sender (memory only
    where the system can)."""
    try:
        fd = os.memfd_create("modelship-shadow-counts", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        fd, name = tempfile.mkstemp(prefix="modelship-shadow-")
        os.unlink(name)
    os.ftruncate(fd, size)
    return fd


#: The serving process counts as busy above this share of one core's time (its own CPU
#: time, the predict thread's included) over the last CPU_WINDOW seconds.
BUSY_CPU = 0.75
CPU_WINDOW = 0.05


class Busy:
    """Whether the serving process has no CPU to spare for a copy: requests are being
    served (``in_flight``), or it used more than BUSY_CPU of a core lately. The second
    catches a pod kept busy by requests that never overlap (one client sending back to
    back), where a copy's sending would take the CPU its next request needs."""

    def __init__(self, in_flight: Callable[[], bool],
                 cpu: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.in_flight = in_flight
        self.cpu = cpu
        self.clock = clock
        self._at = clock()
        self._used = cpu()
        self.share = 0.0  # of one core, over the last window measured

    def __call__(self) -> bool:
        if self.in_flight():
            return True
        now = self.clock()
        if now - self._at >= CPU_WINDOW:  # one process-CPU read per window, not per call
            used = self.cpu()
            self.share = (used - self._used) / (now - self._at)
            self._at, self._used = now, used
        return self.share > BUSY_CPU


class Mirror:
    """One canary to mirror to, at a fraction; hands chosen requests to the sender."""

    def __init__(self, url: str, sender: SenderProcess, *, fraction: float,
                 max_header: int, busy: Callable[[], bool] | None = None) -> None:
        check_url(url)
        self.url = url
        self.sender = sender
        self.fraction = fraction
        self.max_header = max_header
        self.busy = busy  # True while other requests are being served: shed this one
        self.target = sender.new_target()
        self._paths: dict[str, bytes] = {}

    # --- on the request path: cheap, never waits -----------------------------------

    def choose(self, method: str, path: str, request_id: bytes,
               headers: list[tuple[bytes, bytes]]) -> Outgoing | None:
        """An Outgoing when this request is to be mirrored, else None."""
        if self.fraction < 1.0 and random.random() >= self.fraction:
            return None
        if method != "POST":
            return None
        target = self._paths.get(path)
        if target is None:
            route = mirror_path(path)
            if route is None:
                return None
            target = route.encode()
            if len(self._paths) < 64:  # routes of the served model: a handful
                self._paths[path] = target
        if self.busy is not None and self.busy():
            self.sender.shed += 1
            return None
        forwarded = b""
        typed = False
        for k, v in headers:
            if k in _FORWARDED:
                forwarded += b"\r\n" + k + b": " + v
                typed = typed or k == b"content-type"
        if not typed:  # what the runtime reads a body without one as
            forwarded += _JSON
        return Outgoing(target, request_id, forwarded, self)

    def submit(self, outgoing: Outgoing, status: int) -> None:
        """Hand a chosen request over once its answer is sent (or count it skipped)."""
        prediction = outgoing.prediction
        if status != 200 or prediction is None:
            self.sender.skipped += 1
            return
        header = encode_predictions(prediction.labels)
        if header is None or len(header) > self.max_header:
            self.sender.skipped += 1
            return
        self.sender.hand(self.target, outgoing, header)

    def start(self) -> None:
        """Tell the sender about this canary (starting it if need be)."""
        self.sender.declare(self.target, self.url)
        logger.info("mirroring prediction requests", extra={
            "shadow_url": self.url, "fraction": self.fraction})

    async def close(self) -> None:
        """Nothing to stop: the sender settles what it was given."""


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

"""A real `modelship-runtime serve` under hostile clients stays up and keeps answering.

One process for the module, with small limits so the attacks are cheap: 50 connections,
4 requests in flight, 8 KiB of headers, 1 s to send headers (and as much for the body),
1 s of keep-alive, 100 rows of at most 64 values. Health is probed over a fresh
connection while each attack runs, as a kubelet does, each probe followed by one of a
trivial peer server in a process of its own: what the machine's load adds to a probe
shows in both. The aim is a probe answered within 100 ms; the test holds every probe
but one in ten to PROBE_BOUND (250 ms) more than the peer's beside it, generous enough for a
saturated CI machine (at a load average of 20-50 on the 2-core development machine,
with other suites running, the worst probe came to 160 ms over its peer; on its own,
30-70 ms) and still far under what the attacks did without these defences: the body
attacks held the event loop 0.35-0.4 s per request, so three at once kept probes waiting
over a second, and idle connections or huge headers made them fail outright. Fuzzed
prediction requests are held to the same bound.
"""

from __future__ import annotations

import json
import os
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from helpers import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

RUNTIME = str(Path(sys.executable).parent / "modelship-runtime")
PROBE_BOUND = 0.250
MAX_CONNECTIONS = 50
MAX_CONCURRENCY = 4
MAX_HEADER_BYTES = 8192
HEADER_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 1
MAX_ROWS = 100
LIMITS = {
    "MODELSHIP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "MODELSHIP_MAX_CONCURRENCY": str(MAX_CONCURRENCY),
    "MODELSHIP_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
    "MODELSHIP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    "MODELSHIP_KEEPALIVE_TIMEOUT_SECONDS": str(KEEPALIVE_TIMEOUT),
    "MODELSHIP_MAX_ROWS": str(MAX_ROWS),
    "MODELSHIP_MAX_COLUMNS": "64",
    "MODELSHIP_DRAIN_SECONDS": "0",
}
ROW = [0.5] * 8
MB = 1024 * 1024


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == name and labels.items() <= s.labels.items())

    def server_errors(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "http_requests_total" and s.labels["status"].startswith("5"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, local_models: Any) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("hostile") / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [RUNTIME, "serve", "--host", "127.0.0.1", "--port", str(port),
             "--model-dir", str(local_models.lr_dir)],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **LIMITS, "MODELSHIP_MODEL_NAME": "lr"})
    srv = Server(f"http://127.0.0.1:{port}", port, proc)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise AssertionError(log.read_text())
            try:
                if httpx.get(f"{srv.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the runtime did not become ready:\n" + log.read_text())
            time.sleep(0.05)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in log.read_text(), log.read_text()


def probe(port: int, path: str = "/healthz") -> tuple[int, float]:
    """GET ``path`` over a new connection, as a kubelet probe does: (status, seconds)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data[9:12]), time.perf_counter() - t0


_CONTROL = """
import asyncio, sys

async def answer(reader, writer):
    await reader.readuntil(b"\\r\\n\\r\\n")
    writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok")
    await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""

_PROBER = """
import select, socket, sys, time
port, control = int(sys.argv[1]), int(sys.argv[2])

def probe(port, path):
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\\r\\nHost: probe\\r\\n"
                  "Connection: close\\r\\n\\r\\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data[9:12]), time.perf_counter() - t0

n = 0
while not select.select([sys.stdin], [], [], 0.01)[0]:
    status, seconds = probe(port, ("/healthz", "/readyz")[n % 2])
    _, peer = probe(control, "/")
    print(status, seconds, peer, flush=True)
    n += 1
"""


@pytest.fixture(scope="module")
def control() -> Iterator[int]:
    """A trivial HTTP server in a process of its own: the peer every probe is compared
    with, so that what the machine's load adds to a probe is not blamed on the runtime."""
    proc = subprocess.Popen([sys.executable, "-c", _CONTROL], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.communicate("", timeout=30)


@dataclass
class Probes:
    """(status, seconds of the runtime's probe, seconds of the peer's probe just after)."""

    results: list[tuple[int, float, float]]

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + 60
        while len(self.results) < n:
            assert time.monotonic() < deadline, self.results
            time.sleep(0.01)

    def assert_fast(self, at_least: int = 3) -> None:
        """Every probe answered 200, each within PROBE_BOUND of the peer's probe beside it,
        but for one in ten: on a busy machine the runtime's process alone may be left
        without a core for a moment (a single probe over the bound failed a run on a
        loaded machine), where an attack that holds the event loop delays every probe made
        while it runs."""
        results = list(self.results)
        assert len(results) >= at_least, results
        assert {status for status, _, _ in results} == {200}, results
        slow = sorted((r for r in results if r[1] - r[2] >= PROBE_BOUND),
                      key=lambda r: r[2] - r[1])
        assert len(slow) <= len(results) // 10, (
            f"{len(slow)} of {len(results)} probes over their peer's by {PROBE_BOUND} s or "
            f"more; the slowest took {slow[0][1] * 1000:.1f} ms, its peer's "
            f"{slow[0][2] * 1000:.1f} ms")


@contextmanager
def probing(port: int, control: int) -> Iterator[Probes]:
    """Probe /healthz and /readyz in turn, each followed by a probe of the peer, from a
    process of its own (so the attacking threads of this one cannot delay the probes),
    while the block runs."""
    probes = Probes([])
    proc = subprocess.Popen([sys.executable, "-c", _PROBER, str(port), str(control)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            status, seconds, peer = line.split()
            probes.results.append((int(status), float(seconds), float(peer)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        probes.wait_for(1)  # probing has begun
        yield probes
    finally:
        assert proc.stdin is not None
        proc.stdin.write("stop\n")
        proc.stdin.close()
        proc.wait(60)
        reader.join(10)


def closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closes ``sock`` (None: still open after ``timeout``)."""
    t0 = time.monotonic()
    while (left := timeout - (time.monotonic() - t0)) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - t0
            except ConnectionResetError:
                return time.monotonic() - t0
    return None


def raise_own_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"this test opens {need} sockets; the open-file hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


# --- idle sockets, slowloris, keep-alive -----------------------------------------------------

def test_idle_connections_cannot_starve_health_checks(server: Server, control: int) -> None:
    raise_own_fd_limit(1400)
    evicted = server.metric("modelship_connections_closed_total", reason="evicted")
    fds_before = server.fds()
    sockets = []
    try:
        for _ in range(1200):
            sockets.append(socket.create_connection(("127.0.0.1", server.port)))
        with probing(server.port, control) as probes:
            probes.wait_for(10)
        probes.assert_fast(at_least=10)
        # The server holds at most its cap of client connections, not 1,200.
        assert server.fds() <= fds_before + MAX_CONNECTIONS
    finally:
        for s in sockets:
            s.close()
    assert server.metric("modelship_connections_closed_total", reason="evicted") - evicted \
        >= 1200 - MAX_CONNECTIONS


def test_silent_and_kept_alive_connections_are_closed(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as silent, \
            socket.create_connection(("127.0.0.1", server.port)) as kept:
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        # Sends nothing: closed at the header deadline; idle after an answer: at the
        # keep-alive timeout.
        after = closed_within(silent, 10)
        assert after is not None and after > HEADER_TIMEOUT / 2
        assert closed_within(kept, 10) is not None


def test_slowloris_headers_are_cut_off_at_the_header_timeout(server: Server) -> None:
    timeouts = server.metric("modelship_connections_closed_total", reason="read_timeout")
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        try:
            while time.monotonic() - t0 < 10:
                s.sendall(b"X-Slow: 1\r\n")
                sent += 1
                if closed_within(s, 0.1) is not None:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        elapsed = time.monotonic() - t0
    assert sent >= 5  # it really was trickling headers all along
    assert HEADER_TIMEOUT * 0.9 < elapsed < HEADER_TIMEOUT + 4, elapsed
    assert server.metric("modelship_connections_closed_total", reason="read_timeout") \
        > timeouts


def test_a_trickled_body_is_cut_off_and_counted_as_a_disconnect(server: Server) -> None:
    closed = server.metric("http_requests_total", route="/predict", status="499")
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 10:
                s.sendall(b" ")
                if closed_within(s, 0.1) is not None:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        elapsed = time.monotonic() - t0
    assert HEADER_TIMEOUT * 0.9 < elapsed < HEADER_TIMEOUT + 4, elapsed
    wait_for_metric(server, "http_requests_total", closed + 1, route="/predict", status="499")


# --- huge headers ----------------------------------------------------------------------------

def test_huge_headers_are_refused_with_431_and_not_kept(server: Server, control: int) -> None:
    ok = httpx.get(f"{server.url}/healthz", headers={"x-pad": "a" * (MAX_HEADER_BYTES // 2)})
    assert ok.status_code == 200
    r = httpx.get(f"{server.url}/healthz", headers={"x-pad": "a" * MAX_HEADER_BYTES})
    assert r.status_code == 431
    assert "MODELSHIP_MAX_HEADER_BYTES" in r.json()["error"]
    rss_before = server.rss()
    sockets = []
    try:  # twenty 2 MB headers that never end, at once
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            sockets.append(s)
        with probing(server.port, control) as probes:
            for s in sockets:
                try:
                    for _ in range(32):
                        s.sendall(b"a" * 65536)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            answers = [s.recv(65536) for s in sockets]
        assert all(a.startswith(b"HTTP/1.1 431") for a in answers), answers
        probes.assert_fast(at_least=1)
        grown = server.rss() - rss_before
        assert grown < 8 * MB, f"RSS grew by {grown / MB:.1f} MiB"
    finally:
        for s in sockets:
            s.close()


# --- pathological bodies ---------------------------------------------------------------------

def _v2(data: bytes, shape: bytes = b"[1, 8]", extra: bytes = b"") -> bytes:
    return (b'{"inputs": [{"name": "x", "shape": ' + shape
            + b', "datatype": "FP64", "data": ' + data + b"}]" + extra + b"}")


BODIES: list[tuple[str, str, bytes, int, str]] = [
    # (id, path, body, status, fragment of the error)
    ("empty-rows", "/predict",
     b'{"instances": [' + b",".join([b"[]"] * 1_390_000) + b"]}", 400, "MODELSHIP_MAX_ROWS"),
    ("empty-rows-v1", "/v1/models/lr:predict",
     b'{"instances": [' + b",".join([b"[]"] * 1_390_000) + b"]}", 400, "MODELSHIP_MAX_ROWS"),
    ("empty-rows-v2", "/v2/models/lr/infer",
     _v2(b"[" + b",".join([b"[]"] * 1_390_000) + b"]"), 400, "MODELSHIP_MAX_ROWS"),
    ("deep-nesting", "/predict", b'{"features": ' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}",
     400, "MODELSHIP_MAX_ROWS"),
    ("deep-nesting-small", "/predict", b'{"features": ' + b"[" * 100 + b"]" * 100 + b"}",
     400, "features has 1 values"),
    ("huge-number", "/predict", b'{"features": [' + b"9" * 4_000_000 + b"]}", 400, "JSON"),
    ("huge-numbers", "/predict", b'{"features": [' + b",".join([b"9" * 400] * 8) + b"]}",
     400, "out of the float64 range"),
    ("wide-row", "/predict", b'{"features": [' + b",".join([b"1"] * 2_000_000) + b"]}",
     400, "MODELSHIP_MAX_COLUMNS"),
    ("many-keys", "/predict",
     b"{" + b",".join(b'"k%d": 1' % i for i in range(300_000)) + b"}", 400, "values"),
    ("large-but-valid", "/v2/models/lr/infer",
     _v2(b"[" + b",".join([b"0.5"] * 8) + b"]", extra=b', "id": "' + b"x" * 3_000_000 + b'"'),
     200, ""),
]


@pytest.mark.parametrize(("path", "body", "status", "fragment"), [b[1:] for b in BODIES],
                         ids=[b[0] for b in BODIES])
def test_pathological_bodies_are_refused_without_stalling_health(
        server: Server, control: int, path: str, body: bytes, status: int, fragment: str
) -> None:
    assert len(body) <= 4 * MB
    answers: list[tuple[int, str]] = []

    def attack() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for _ in range(2):
                r = c.post(path, content=body, headers={"content-type": "application/json"})
                answers.append((r.status_code, r.text[:300]))

    threads = [threading.Thread(target=attack) for _ in range(3)]
    with probing(server.port, control) as probes:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert len(answers) == 6
    for code, text in answers:
        assert code == status, text
        assert fragment in text
    probes.assert_fast()


def test_bounded_bodies_cost_nothing_of_the_small_requests(server: Server) -> None:
    r = httpx.post(f"{server.url}/predict", json={"instances": [ROW] * MAX_ROWS})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == MAX_ROWS


# --- concurrency cap, disconnects ------------------------------------------------------------

def _hold(port: int, path: str) -> socket.socket:
    """A request whose body is promised but never sent: it stays in flight."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              "Content-Length: 1000\r\n\r\n{\"features".encode())
    return s


def wait_for_metric(server: Server, name: str, at_least: float, **labels: str) -> float:
    deadline = time.monotonic() + 10
    while (value := server.metric(name, **labels)) < at_least:
        assert time.monotonic() < deadline, f"{name}{labels} = {value}, wanted {at_least}"
        time.sleep(0.05)
    return value


def test_over_the_concurrency_cap_is_503_with_retry_after(server: Server) -> None:
    held = [_hold(server.port, "/predict") for _ in range(MAX_CONCURRENCY)]
    try:
        deadline = time.monotonic() + 10
        while True:  # the held requests have reached the app once a further one is shed
            r = httpx.post(f"{server.url}/v1/models/lr:predict", json={"instances": [ROW]})
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "MODELSHIP_MAX_CONCURRENCY" in r.json()["error"]
        assert [probe(server.port, p)[0] for p in ("/healthz", "/readyz")] == [200, 200]
        assert httpx.get(f"{server.url}/metrics").status_code == 200
    finally:
        for s in held:
            s.close()
    assert server.metric("http_requests_total", route="/v1/models/{name}:predict",
                         status="503") >= 1
    deadline = time.monotonic() + 10
    while (r := httpx.post(f"{server.url}/predict", json={"features": ROW})).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.05)


@pytest.mark.parametrize("path", ["/predict", "/v1/models/lr:predict", "/v2/models/lr/infer"])
def test_a_client_that_leaves_is_counted_499_not_5xx(server: Server, path: str) -> None:
    route = {"/v1/models/lr:predict": "/v1/models/{name}:predict",
             "/v2/models/lr/infer": "/v2/models/{name}/infer"}.get(path, path)
    before = server.metric("http_requests_total", route=route, status="499")
    errors = server.server_errors()
    s = _hold(server.port, path)
    time.sleep(0.05)
    s.close()
    wait_for_metric(server, "http_requests_total", before + 1, route=route, status="499")
    assert server.server_errors() == errors


# --- property-based fuzzing of the prediction routes -----------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=6),
    max_leaves=60)
_number = st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False,
                                                                        allow_infinity=False)
_row = st.lists(_number, min_size=0, max_size=12)
_bodies = st.one_of(
    _json,
    st.fixed_dictionaries({"features": _row | _json}),
    st.fixed_dictionaries({"instances": st.lists(_row, max_size=MAX_ROWS + 5) | _json}),
    st.fixed_dictionaries({"inputs": st.lists(st.fixed_dictionaries({
        "name": st.text(max_size=5), "shape": st.lists(st.integers(-2, 200), max_size=3),
        "datatype": st.sampled_from(["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8",
                                     "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
                                     "BF16", "BYTES", "x"]),
        "data": st.lists(_number, max_size=40) | st.lists(_row, max_size=5) | _json,
    }), max_size=2)}, optional={"outputs": _json, "id": _json}),
)
_raw = st.one_of(
    _bodies.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.sampled_from([b"", b"{", b'{"features": [NaN, Infinity, -Infinity]}', b"[" * 5000,
                     b'{"features": [1e999]}', b'{"instances": [[' + b"1," * 2000 + b"1]]}"]),
)
_header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,24}", fullmatch=True).filter(
    lambda n: n.lower() not in {"content-length", "transfer-encoding", "host", "connection",
                                "expect", "upgrade", "content-encoding", "te", "trailer"})
_headers = st.dictionaries(_header_names, st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200).filter(
        lambda v: v == v.strip()), max_size=8)
ROUTES = ["/predict", "/v1/models/lr:predict", "/v2/models/lr/infer",
          "/v2/models/lr/versions/0/infer"]


def test_fuzzed_prediction_requests_get_no_5xx_and_no_slow_answer(server: Server,
                                                                   control: int) -> None:
    slowest: list[tuple[float, str, bytes]] = []
    errors = server.server_errors()
    with httpx.Client(base_url=server.url, timeout=10) as client:

        @given(path=st.sampled_from(ROUTES), body=_raw, headers=_headers)
        @settings(max_examples=200, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(path: str, body: bytes, headers: dict[str, str]) -> None:
            t0 = time.perf_counter()
            r = client.post(path, content=body, headers=headers)
            elapsed = time.perf_counter() - t0 - probe(control, "/")[1]  # minus the peer's
            assert r.status_code < 500, (path, body[:200], headers, r.text)
            assert 200 <= r.status_code < 300 or "error" in r.json()
            slowest.append((elapsed, path, body[:200]))

        check()
    slowest.sort(reverse=True)
    assert len(slowest) >= 200
    assert slowest[0][0] < PROBE_BOUND, slowest[:3]
    assert server.server_errors() == errors


# --- every connection busy: a new one is answered 503 ----------------------------------------

def test_at_the_connection_cap_with_every_connection_busy_a_new_one_gets_503() -> None:
    from modelship_runtime.guard import Limits, guarded_protocol

    closed: list[str] = []

    async def app(scope: dict[str, Any], receive: Callable[[], Any], send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    protocol = guarded_protocol(Limits(max_header_bytes=8192, header_timeout=30,
                                       max_connections=8, on_close=closed.append))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_config=None, http=protocol))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    busy: list[socket.socket] = []
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.01)
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12")
            busy.append(s)
        deadline = time.monotonic() + 60  # until the server has read all their headers
        while len(server.server_state.connections) < 8 or protocol._idle:
            assert time.monotonic() < deadline, "the busy connections were not all read"
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", port)) as extra:
            answer = extra.recv(65536)
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"retry-after: 1" in answer
            assert closed_within(extra, 5) is not None
        assert closed == ["over_capacity"]
        busy[0].sendall(b"34567890")  # the busy ones are still served
        assert busy[0].recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for s in busy:
            s.close()
        server.should_exit = True
        thread.join(10)


def test_the_open_file_limit_is_raised_and_the_connection_cap_kept_under_it() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the open-file hard limit is {hard}")
    code = (
        "import resource\n"
        "from modelship_runtime.guard import raise_fd_limit, connection_cap\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "limit = raise_fd_limit()\n"
        "print(limit, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard,"
        " connection_cap(1024, 256), connection_cap(1024, limit))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    limit, now, hard_seen, low_cap, cap = (int(x) for x in out)
    assert limit == now > 256
    assert now == hard_seen or hard_seen == resource.RLIM_INFINITY
    assert low_cap == 256 - 128
    assert cap == min(1024, limit - 128)

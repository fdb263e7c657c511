"""SIGTERM drains a real `modelship-runtime serve` under steady traffic.

Readiness fails at once while every request keeps being answered (over new connections
too) for the drain period; then the process exits 0. A second signal ends the drain.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port

RUNTIME = str(Path(sys.executable).parent / "modelship-runtime")


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def status_of(url: str) -> int | str:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


@pytest.fixture
def serve(tmp_path: Path, local_models: Any) -> Iterator[Any]:
    """Start `modelship-runtime serve` on the local LogisticRegression; (url, process)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [RUNTIME, "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--model-dir", str(local_models.lr_dir)],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(log.read_text())
            return status_of(f"{url}/readyz") == 200

        wait_for(ready, 90, "the runtime to be ready")
        return url, proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@dataclass
class Load:
    """POST /predict in a loop from a thread; each outcome is kept with the phase it
    was sent in (a status code, or the name of the transport error)."""

    url: str
    row: list[float]
    phase: str = "before"
    outcomes: list[tuple[str, int | str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                phase = self.phase
                try:
                    r = client.post(f"{self.url}/predict", json={"features": self.row})
                    self.outcomes.append((phase, r.status_code, r.headers.get("connection", "")))
                except httpx.HTTPError as exc:
                    self.outcomes.append((phase, type(exc).__name__, ""))

    def count(self, phase: str) -> int:
        return sum(1 for p, _, _ in self.outcomes if p == phase)


def test_sigterm_keeps_answering_through_the_drain_then_exits_0(
    serve: Any, local_models: Any
) -> None:
    drain = 10.0
    url, proc = serve(MODELSHIP_DRAIN_SECONDS=str(drain))
    load = Load(url, local_models.X[0].tolist())
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: load.count("before") >= 20, 30, "traffic before the signal")
        load.phase = "signalled"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # Readiness fails at once; liveness stays OK.
        wait_for(lambda: status_of(f"{url}/readyz") == 503, 30, "/readyz 503")
        load.phase = "draining"
        assert status_of(f"{url}/v2/health/ready") == 503
        assert status_of(f"{url}/healthz") == 200
        assert status_of(f"{url}/v2/health/live") == 200
        wait_for(lambda: load.count("draining") >= 30, 30, "requests during the drain")
        still_draining = proc.poll() is None
    finally:
        load.stop.set()
        thread.join(15)
    assert still_draining, "the process exited before the drain was over"
    after = [(code, conn) for phase, code, conn in load.outcomes if phase != "before"]
    assert [code for code, _ in after] == [200] * len(after), after
    # Once draining, every response asks the client to reconnect, and the next request's
    # new connection is accepted: a keep-alive client moves on through its router.
    assert all(conn == "close" for phase, _, conn in load.outcomes if phase == "draining")
    assert proc.wait(60) == 0
    assert time.monotonic() - signalled >= drain
    assert status_of(f"{url}/healthz") == "ConnectError"
    assert [code for phase, code, _ in load.outcomes if phase == "before"].count(200) >= 20


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_ends_the_drain(serve: Any, second: signal.Signals) -> None:
    url, proc = serve(MODELSHIP_DRAIN_SECONDS="600")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: status_of(f"{url}/readyz") == 503, 30, "/readyz 503")
    assert status_of(f"{url}/healthz") == 200  # a 600 s drain is under way
    proc.send_signal(second)
    assert proc.wait(60) == 0

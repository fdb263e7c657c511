"""Start, time, measure and stop one server process, and run wrk against it.

Every server runs pinned to core 0 with `taskset`, in its own session, its output
to a log file (never a pipe that could fill and stall it). Cold start is the time
from spawn to the first 200 answer to a real prediction request, polled every
20 ms, which is the same definition for every server whatever its health routes
say. Peak RSS is VmHWM summed over the process and all its descendants (MLServer
predicts in a child process by default). Stopping is by pid: SIGTERM to the server,
then SIGKILL to it and to every descendant recorded before, if still the same process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from wrkparse import WrkResult, parse_wrk

SERVER_CPU = "0"
LOAD_CPU = "1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) of one process in KiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Server:
    """One running server process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    #: the core it is pinned to
    cpu: str = SERVER_CPU
    started_at: float = 0.0
    known: dict[int, str | None] = field(default_factory=dict)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(
                ["taskset", "-c", self.cpu, *self.argv],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, url: str, body: bytes, timeout_s: float) -> float:
        """Poll `url` with `body` until it answers 200; return seconds since spawn."""
        deadline = self.started_at + timeout_s
        while time.perf_counter() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log_path}"
                )
            req = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - self.started_at
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.02)
            self.remember_tree()
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s; see {self.log_path}")

    def remember_tree(self) -> None:
        """Record the pids (and start times) of the server and its descendants."""
        for pid in [self.pid, *descendants(self.pid)]:
            self.known.setdefault(pid, _start_time(pid))

    def peak_rss_mib(self) -> float:
        """Sum of VmHWM over the server and its live descendants, in MiB."""
        self.remember_tree()
        return sum(vm_hwm_kib(p) for p in [self.pid, *descendants(self.pid)]) / 1024.0

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the server, wait, then SIGKILL it and each recorded descendant."""
        if self.proc is None:
            return
        self.remember_tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pid, started in self.known.items():
            if pid != self.proc.pid and started is not None and _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc = None


def write_lua(path: Path, body: str) -> None:
    """A wrk script that POSTs `body` as JSON."""
    level = "=" * 4
    if f"]{level}]" in body:
        raise ValueError("body contains the Lua long-bracket terminator")
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [{level}[{body}]{level}]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


def run_wrk(
    url: str, lua: Path, connections: int, duration_s: int, timeout_s: float = 10.0
) -> tuple[WrkResult, str]:
    """One wrk run pinned to the load core; returns the parsed result and raw text."""
    argv = [
        "taskset",
        "-c",
        LOAD_CPU,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={timeout_s:.0f}s",
        "--latency",
        "-s",
        str(lua),
        url,
    ]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=True
    )
    return parse_wrk(out.stdout), out.stdout

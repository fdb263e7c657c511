"""Loopback ports for the servers the tests start, never handed out twice at once.

A free port is found by binding port 0 and closing the socket; the server that is to use
it binds it later, after its imports or a model pull (seconds on a busy machine). In
between, the kernel may give the same port to another ``bind(0)``: in this process (a
fixture starting 19 runtimes picks 38 ports before the first of them binds) or in another
pytest worker. Two servers were then given one port; the second could not bind, and the
tests of its model talked to the first server (seen once in a full run).

So each port handed out is also reserved, across processes, by a file named after it in
one directory (created exclusively); a reservation is honoured for :data:`HOLD_SECONDS`,
longer than any server here takes to bind, then the port may be handed out again.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

HOLD_SECONDS = 900.0
_DIR = Path(tempfile.gettempdir()) / f"modelship-test-ports-{os.getuid()}"


def _reserve(port: int) -> bool:
    """True when ``port`` was not reserved (or its reservation had lapsed) and now is."""
    mark = _DIR / str(port)
    for _ in range(2):
        try:
            os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return True
        except FileExistsError:
            try:
                if time.time() - mark.stat().st_mtime < HOLD_SECONDS:
                    return False
                mark.unlink()  # lapsed: take it again (another process may win the race)
            except FileNotFoundError:
                pass
    return False


def free_port() -> int:
    """A loopback port nothing listens on now, and that no other caller of this function,
    in any process, was given in the last :data:`HOLD_SECONDS`."""
    _DIR.mkdir(mode=0o700, exist_ok=True)
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if _reserve(port):
            return port
    raise RuntimeError(f"no loopback port left to reserve (see {_DIR})")

"""A real HTTP server on a loopback port that answers webhook calls as a test scripts it.

`HookServer` runs `http.server.ThreadingHTTPServer` in a thread. Each path has a queue
of answers (status and body; ``HANG`` holds the request until the test ends); when the
queue is empty the path answers 200. Every request is recorded with its headers and
decoded JSON body.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG = -1


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: Any


class HookServer:
    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[int, str, dict[str, str]]]] = {}
        self.received: list[Received] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                del format, args

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with server._lock:
                    server.received.append(
                        Received(self.path, dict(self.headers.items()), json.loads(raw or b"null"))
                    )
                    queue = server.answers.get(self.path.split("?")[0], [])
                    status, text, headers = queue.pop(0) if queue else (200, "ok", {})
                if status == HANG:
                    server.release.wait(60)
                    return
                data = text.encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, path: str, *answers: int | tuple[int, str] | tuple[int, str, dict[str, str]]
               ) -> None:
        """Queue answers for `path`: a status, (status, body) or (status, body, headers)."""
        with self._lock:
            queue = self.answers.setdefault(path, [])
            for a in answers:
                if isinstance(a, int):
                    queue.append((a, "", {}))
                elif len(a) == 2:
                    queue.append((a[0], a[1], {}))
                else:
                    queue.append(a)  # type: ignore[arg-type]

    def hits(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path.split("?")[0] == path]

    def start(self) -> HookServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)


@contextmanager
def hook_server() -> Iterator[HookServer]:
    server = HookServer().start()
    try:
        yield server
    finally:
        server.stop()

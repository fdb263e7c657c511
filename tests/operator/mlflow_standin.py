"""A stand-in for the MLflow REST routes the operator uses, counting what it is asked.

It serves registered-models/alias, model-versions/get and model-versions/get-download-uri
from plain data (per bearer token), answers 401 for an unknown token and 503 while down,
and records every request's route, token and client port (one port per TCP connection).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Mlflow:
    """What the stand-in serves, and what it was asked."""

    aliases: dict[tuple[str, str, str], str] = field(default_factory=dict)  # token, model, alias
    versions: set[tuple[str, str]] = field(default_factory=set)  # model, version
    tokens: set[str] = field(default_factory=lambda: {""})  # "" = no Authorization header
    down: bool = False
    delay: float = 0.0
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # route, token, client port
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, route: str, token: str | None = None) -> int:
        with self.lock:
            return sum(1 for r, t, _ in self.seen if r == route and token in (None, t))

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()
        self.aliases.clear()
        self.versions.clear()
        self.tokens = {""}
        self.down, self.delay = False, 0.0


def handler_for(state: Mlflow) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as MLflow's server does

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            route = url.path.removeprefix("/api/2.0/mlflow/")
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            with state.lock:
                state.seen.append((route, token, self.client_address[1]))
            if state.delay:
                time.sleep(state.delay)
            if state.down:
                return self.reply(503, {"message": "down for maintenance"})
            if token not in state.tokens:
                return self.reply(401, {"message": "who are you"})
            name, version = query.get("name", ""), query.get("version", "")
            if route == "registered-models/alias":
                target = state.aliases.get((token, name, query.get("alias", "")))
                if target is None:
                    return self.reply(400, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                                            "message": "alias not found"})
                return self.reply(200, {"model_version": {"name": name, "version": target}})
            if (name, version) not in state.versions:
                return self.reply(404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                                        "message": f"version {version} not found"})
            if route == "model-versions/get":
                return self.reply(200, {"model_version": {"version": version, "status": "READY"}})
            if route == "model-versions/get-download-uri":
                return self.reply(200, {"artifact_uri": f"s3://models/{name}/{version}"})
            return self.reply(404, {"message": f"no route {route}"})

        def reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def serving(state: Mlflow) -> Iterator[str]:
    """Serve `state` on a loopback port; yields the tracking URI."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

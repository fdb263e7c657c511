"""Drain on SIGTERM: fail readiness, keep serving a while, then close.

Kubernetes removes a terminating pod from its Services' endpoints at the same moment it
starts stopping the pod, but kube-proxy, ingress controllers and gateways learn of the
removal a second or two later and keep sending requests meanwhile. A server that stops
accepting at SIGTERM refuses those (KServe's raw mode lost requests so,
kserve/kserve#5983). So on the first SIGTERM or SIGINT the server:

1. fails readiness at once: ``/readyz`` and ``/v2/health/ready`` answer 503 (liveness,
   ``/healthz`` and ``/v2/health/live``, stays OK, so nothing restarts the pod);
2. keeps accepting and answering for ``drain_seconds``, every response carrying
   ``Connection: close`` so that keep-alive clients reconnect through a router that
   has moved on;
3. then stops accepting, finishes the requests in flight (at most
   ``shutdown_timeout_seconds``) and exits 0.

A second SIGTERM or SIGINT during the drain ends it there (step 3 starts at once); a
third SIGINT exits without waiting for the requests in flight (uvicorn's force exit). A
signal that comes before the server listens (the model still loading) stops it at once,
and ``drain_seconds`` 0 skips step 2.
"""

from __future__ import annotations

import logging
import time
from types import FrameType

import uvicorn

logger = logging.getLogger("modelship_runtime")

CONNECTION_CLOSE = (b"connection", b"close")


class Drain:
    """Whether the server drains, and what it still starts; readiness and the response
    headers read it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.draining = False
        self.starting: set[str] = set()
        """Listeners not up yet (the gRPC server starts after HTTP answers): readiness
        fails until this is empty."""
        self.deadline: float | None = None
        """time.monotonic() at which the drain ends (None: not draining, or no drain)."""

    def begin(self) -> bool:
        """Start draining; True when a drain period now runs (False: close at once)."""
        first = not self.draining
        self.draining = True
        if first and self.seconds > 0:
            self.deadline = time.monotonic() + self.seconds
            return True
        return False


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the drain period between the signal and the shutdown."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as the signal handler: no logging here (on_tick reports), only flags.
        if self.started and self.drain.begin():
            return
        self.drain.draining = True
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        deadline = self.drain.deadline
        if deadline is not None and not self.should_exit:
            if not self._announced:
                self._announced = True
                logger.info("draining for %g s: readiness fails, requests are still answered",
                            self.drain.seconds, extra={"drain_seconds": self.drain.seconds})
            if time.monotonic() >= deadline:
                logger.info("drain over: no new connections; finishing requests in flight")
                self.should_exit = True
        return await super().on_tick(counter)

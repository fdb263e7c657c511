"""Running the gRPC server beside uvicorn: started once HTTP listens, drained with it.

Kept apart from :mod:`.grpc_server` so that ``serve`` imports the gRPC side (protobuf
and its generated modules, hpack) only after HTTP is up and answering: the import runs on
a worker thread while the event loop answers HTTP, so the first HTTP prediction does not
wait for it, and readiness (``/readyz``, ``/v2/health/ready``) fails until the gRPC server
listens (:attr:`.drain.Drain.starting`). With ``MODELSHIP_GRPC_PORT=0`` it is never
imported at all.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import socket
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI

from .drain import Drain, DrainingServer
from .settings import RuntimeSettings

if TYPE_CHECKING:
    from .grpc_server import GrpcServer

logger = logging.getLogger("modelship_runtime")

LISTENER = "gRPC"


class _AfterGrpc:
    """uvicorn's lifespan, whose shutdown (which releases the model) waits for gRPC."""

    def __init__(self, lifespan: Any, stopping: Awaitable[None]) -> None:
        self._lifespan = lifespan
        self._stopping = stopping

    async def shutdown(self) -> None:
        await self._stopping
        await self._lifespan.shutdown()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lifespan, name)


class GrpcDrainingServer(DrainingServer):
    """uvicorn with the drain, and the gRPC server on the same loop: started once HTTP
    listens, stopped together with it when the drain ends."""

    grpc_failed = False
    """True when the gRPC port could not be bound (the server then stops; exit 3)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, app: FastAPI,
                 settings: RuntimeSettings) -> None:
        super().__init__(config, drain)
        self._app = app
        self._settings = settings
        self.grpc: GrpcServer | None = None
        self._starting: asyncio.Task[None] | None = None
        drain.starting.add(LISTENER)  # not ready before gRPC listens

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._starting = asyncio.create_task(self._start_grpc())

    async def _start_grpc(self) -> None:
        # the gRPC side (protobuf, the generated module, hpack) is imported off the
        # loop, which answers HTTP meanwhile; nothing else imports them, so the threads
        # share no module import
        try:
            module = await asyncio.to_thread(importlib.import_module,
                                             f"{__package__}.grpc_server")
            server = module.GrpcServer(self._app, self._settings)
            await server.start()
        except Exception as exc:
            if isinstance(exc, RuntimeError):  # the port cannot be bound
                logger.error("%s", exc)
            else:
                logger.exception("the gRPC server did not start")
            self.should_exit = True
            self.grpc_failed = True
            return
        self.grpc = server
        gc.freeze()  # the gRPC side's modules are long-lived too, as the lifespan's freeze says
        self.drain.starting.discard(LISTENER)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._starting is not None:  # a start under way finishes, then stops
            await self._starting
        if self.grpc is None:
            await super().shutdown(sockets)
            return
        grace = float(self.config.timeout_graceful_shutdown or 0)
        stopping = asyncio.ensure_future(self.grpc.stop(grace))
        self.lifespan = _AfterGrpc(self.lifespan, stopping)
        try:
            await super().shutdown(sockets)
        finally:
            await stopping

"""Running the gRPC server beside uvicorn: started once HTTP listens, drained with it.

Kept apart from :mod:`.grpc_server` so that ``serve`` imports the gRPC side (protobuf
and its generated modules, hpack) only after HTTP is up and answering: the HTTP cold
start does not pay for gRPC, and with ``MODELSHIP_GRPC_PORT=0`` it is never imported.
"""

from __future__ import annotations

import asyncio
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

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        from .grpc_server import GrpcServer

        self.grpc = GrpcServer(self._app, self._settings)
        try:
            await self.grpc.start()
        except RuntimeError as exc:
            logger.error("%s", exc)
            self.should_exit = True
            self.grpc_failed = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
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

"""Thin routes: read the body, hand it to the protocol parser and the data plane.

Every route takes the raw ``Request`` and returns a ready ``Response`` so FastAPI does no
validation or serialization of its own on the hot path (the bodies are parsed once, by
orjson, in :mod:`modelship_runtime.protocols`); the request schemas appear in OpenAPI
through ``openapi_extra`` only.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response

from . import __version__, protocols
from .dataplane import SHADOW_SCOPE_KEY, DataPlane, ShadowContext
from .drain import Drain
from .errors import ModelNotFound, ModelNotReady
from .metrics import CONTENT_TYPE

JSON = "application/json"


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {JSON: {"schema": schema}}}}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"description": "error", "content": {JSON: {"schema": protocols.ERROR_SCHEMA}}}
    return out


_ERRORS = _responses(400, 401, 404, 413, 415, 503)


async def seed_predict(plane: DataPlane, raw: bytes, t0: float,
                       shadow: ShadowContext | None = None) -> bytes:
    """The whole of ``POST /predict`` after the body is read: parse, validate, infer."""
    batcher = plane.batcher
    batcher.arriving += 1  # lets a micro-batch wait for requests still being parsed
    try:
        rows, single = await plane.parse(raw, protocols.seed_rows)
    finally:
        batcher.arriving -= 1
    result = await plane.infer(rows, shadow)
    ms = (time.perf_counter() - t0) * 1000.0
    return protocols.seed_response(result.prediction, single, result.cache_hit, ms)


def build_router(plane: DataPlane, drain: Drain | None = None) -> APIRouter:
    """All routes of the runtime, bound to one data plane; readiness fails while `drain`
    drains."""
    router = APIRouter()
    drain = drain or Drain(0.0)

    def check_serving() -> None:
        if drain.draining:
            raise ModelNotReady("draining: the server is shutting down")
    model = plane.model
    info = model.info
    batcher = plane.batcher

    def check_name(name: str, version: str | None = None) -> None:
        if name != info.name:
            raise ModelNotFound(f"model {name!r} is not served here; this server serves "
                                f"{info.name!r}")
        if version is not None and version != info.version:
            raise ModelNotFound(f"model {name!r} version {version!r} is not served here; this "
                                f"server serves version {info.version}")

    @router.post("/predict", tags=["predict"], openapi_extra=_json_body(protocols.PREDICT_BODY),
                 responses=_ERRORS, summary="Predict one row or a batch (seed format)")
    async def predict(request: Request) -> Response:
        # Normally answered by ServingMiddleware's fast path (same function, no routing).
        t0 = time.perf_counter()
        batcher.arriving += 1
        try:
            raw = await request.body()
        finally:
            batcher.arriving -= 1
        return Response(await seed_predict(plane, raw, t0, request.scope.get(SHADOW_SCOPE_KEY)),
                        media_type=JSON)

    @router.post("/v1/models/{name}:predict", tags=["kserve-v1"], responses=_ERRORS,
                 openapi_extra=_json_body(protocols.V1_BODY), summary="KServe V1 predict")
    async def v1_predict(name: str, request: Request) -> Response:
        check_name(name)
        batcher.arriving += 1
        try:
            rows = await plane.parse(await request.body(), protocols.v1_rows)
        finally:
            batcher.arriving -= 1
        result = await plane.infer(rows, request.scope.get(SHADOW_SCOPE_KEY))
        return Response(protocols.v1_response(result.prediction), media_type=JSON)

    @router.get("/v1/models/{name}", tags=["kserve-v1"], responses=_ERRORS,
                summary="KServe V1 model status")
    async def v1_model(name: str) -> dict[str, Any]:
        check_name(name)
        return {"name": info.name, "version": info.version, "ready": model.ready}

    @router.get("/v2", tags=["v2"], summary="V2 server metadata")
    async def v2_server() -> dict[str, Any]:
        return {"name": "modelship-runtime", "version": __version__, "extensions": []}

    @router.get("/v2/health/live", tags=["v2"], summary="V2 server live")
    async def v2_live() -> dict[str, Any]:
        return {"live": True}

    @router.get("/v2/health/ready", tags=["v2"], responses=_ERRORS, summary="V2 server ready")
    async def v2_ready() -> dict[str, Any]:
        plane.check_ready()
        check_serving()
        return {"ready": True}

    @router.get("/v2/models/{name}", tags=["v2"], responses=_ERRORS, summary="V2 model metadata")
    async def v2_model(name: str) -> dict[str, Any]:
        check_name(name)
        plane.check_ready()
        return protocols.v2_model_metadata(info)

    @router.get("/v2/models/{name}/versions/{version}", tags=["v2"], responses=_ERRORS,
                summary="V2 model metadata (versioned)")
    async def v2_model_version(name: str, version: str) -> dict[str, Any]:
        check_name(name, version)
        plane.check_ready()
        return protocols.v2_model_metadata(info)

    @router.get("/v2/models/{name}/ready", tags=["v2"], responses=_ERRORS,
                summary="V2 model ready")
    async def v2_model_ready(name: str) -> dict[str, Any]:
        check_name(name)
        plane.check_ready()
        return {"name": info.name, "ready": True}

    @router.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"], responses=_ERRORS,
                summary="V2 model ready (versioned)")
    async def v2_model_version_ready(name: str, version: str) -> dict[str, Any]:
        check_name(name, version)
        plane.check_ready()
        return {"name": info.name, "ready": True}

    async def infer(request: Request) -> Response:
        batcher.arriving += 1
        try:
            rows, req = await plane.parse(await request.body(), protocols.v2_rows)
        finally:
            batcher.arriving -= 1
        result = await plane.infer(rows, request.scope.get(SHADOW_SCOPE_KEY))
        return Response(protocols.v2_response(result.prediction, info, req), media_type=JSON)

    @router.post("/v2/models/{name}/infer", tags=["v2"], responses=_ERRORS,
                 openapi_extra=_json_body(protocols.V2_BODY), summary="V2 inference")
    async def v2_infer(name: str, request: Request) -> Response:
        check_name(name)
        return await infer(request)

    @router.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], responses=_ERRORS,
                 openapi_extra=_json_body(protocols.V2_BODY), summary="V2 inference (versioned)")
    async def v2_infer_version(name: str, version: str, request: Request) -> Response:
        check_name(name, version)
        return await infer(request)

    @router.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @router.get("/readyz", tags=["health"], responses=_ERRORS,
                summary="Readiness (model loaded, not draining)")
    async def readyz() -> dict[str, Any]:
        if not model.ready:
            raise ModelNotReady("model not loaded")
        check_serving()
        return {"status": "ready", "model": info.name, "version": info.version}

    @router.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(plane.metrics.render(), media_type=CONTENT_TYPE)

    return router

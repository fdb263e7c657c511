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

from . import __version__, binary, codings, fastpath, invocations, protocols
from .dataplane import SHADOW_SCOPE_KEY, DataPlane
from .drain import Drain
from .errors import ModelNotReady, ModelshipError
from .fastpath import seed_predict
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


def build_router(plane: DataPlane, drain: Drain | None = None) -> APIRouter:
    """All routes of the runtime, bound to one data plane; readiness fails while `drain`
    drains."""
    router = APIRouter()
    drain = drain or Drain(0.0)

    def check_serving() -> None:
        if drain.draining:
            raise ModelNotReady("draining: the server is shutting down")
        if drain.starting:
            raise ModelNotReady(f"{', '.join(sorted(drain.starting))} not listening yet")
    model = plane.model
    info = model.info
    batcher = plane.batcher

    def check_name(name: str, version: str | None = None) -> None:
        fastpath.check_name(plane, name, version)

    async def body(request: Request) -> bytes:
        applied = codings.of_request(request.scope["headers"])
        batcher.arriving += 1  # lets a micro-batch wait for requests still being read
        try:
            raw = await request.body()
        finally:
            batcher.arriving -= 1
        if applied:
            raw = await plane.decoder.offload(codings.decode, raw, applied,
                                              plane.max_body_bytes)
        return raw

    @router.post("/predict", tags=["predict"], openapi_extra=_json_body(protocols.PREDICT_BODY),
                 responses=_ERRORS, summary="Predict one row or a batch (seed format)")
    async def predict(request: Request) -> Response:
        # Normally answered by ServingMiddleware's fast path (same function, no routing).
        t0 = time.perf_counter()
        raw = await body(request)
        return Response(await seed_predict(plane, raw, t0, request.scope.get(SHADOW_SCOPE_KEY)),
                        media_type=JSON)

    @router.post("/v1/models/{name}:predict", tags=["kserve-v1"], responses=_ERRORS,
                 openapi_extra=_json_body(protocols.V1_BODY), summary="KServe V1 predict")
    async def v1_predict(name: str, request: Request) -> Response:
        # Normally answered by ServingMiddleware's fast path (same function, no routing).
        raw = await body(request)
        return Response(await fastpath.v1_predict(plane, raw, name,
                                                  request.scope.get(SHADOW_SCOPE_KEY)),
                        media_type=JSON)

    @router.get("/", tags=["kserve-v1"], summary="KServe V1 server liveness")
    async def v1_live() -> dict[str, Any]:
        return {"status": "alive"}

    @router.get("/v1/models", tags=["kserve-v1"], summary="KServe V1 model list")
    async def v1_models() -> dict[str, Any]:
        return {"models": [info.name]}

    @router.get("/v1/models/{name}", tags=["kserve-v1"], responses=_ERRORS,
                summary="KServe V1 model readiness (503 until loaded)")
    async def v1_model(name: str) -> dict[str, Any]:
        check_name(name)
        plane.check_ready()
        return {"name": info.name, "version": info.version, "ready": True}

    @router.post("/invocations", tags=["mlflow"], responses=_ERRORS,
                 openapi_extra={"requestBody": {"required": True, "content": {
                     JSON: {"schema": protocols.INVOCATIONS_BODY},
                     "text/csv": {"schema": {"type": "string"}}}}},
                 summary="MLflow scoring protocol (mlflow models serve)")
    async def mlflow_invocations(request: Request) -> Response:
        # Normally answered by ServingMiddleware's fast path (same function, no routing).
        try:
            raw = await body(request)
            answer = await fastpath.invocations_predict(
                plane, raw, request.headers.get("content-type", "").encode("latin-1") or None,
                request.scope.get(SHADOW_SCOPE_KEY))
        except ModelshipError as exc:
            return Response(invocations.error_body(exc), status_code=exc.status_code,
                            media_type=JSON)
        return Response(answer, media_type=JSON)

    @router.get("/ping", tags=["mlflow"], summary="MLflow scoring server health")
    async def ping() -> Response:
        return Response(b"\n", status_code=200 if model.ready else 503,
                        media_type="application/json")

    @router.get("/health", tags=["mlflow"], summary="MLflow scoring server health")
    async def health() -> Response:
        return await ping()

    @router.get("/version", tags=["mlflow"], summary="Server version (plain text)")
    async def version() -> Response:
        return Response(__version__, media_type="text/plain")

    @router.get("/v2", tags=["v2"], summary="V2 server metadata")
    async def v2_server() -> dict[str, Any]:
        return {"name": "modelship-runtime", "version": __version__,
                "extensions": list(binary.EXTENSIONS)}

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

    # The binary tensor extension (Inference-Header-Content-Length) goes through these
    # routes; JSON bodies are normally answered by ServingMiddleware's fast path.
    async def infer(request: Request, name: str, version: str | None) -> Response:
        raw = await body(request)
        shadow = request.scope.get(SHADOW_SCOPE_KEY)
        header = request.headers.get(binary.HEADER)
        if header is not None:
            fastpath.check_name(plane, name, version)
            answer = await binary.v2_infer(plane, raw, header, shadow)
        else:
            answer = await fastpath.v2_infer(plane, raw, name, version, shadow)
        if isinstance(answer, binary.Answer):
            return Response(answer.body, headers=answer.headers())
        return Response(answer, media_type=JSON)

    @router.post("/v2/models/{name}/infer", tags=["v2"], responses=_ERRORS,
                 openapi_extra=_json_body(protocols.V2_BODY), summary="V2 inference")
    async def v2_infer(name: str, request: Request) -> Response:
        return await infer(request, name, None)

    @router.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], responses=_ERRORS,
                 openapi_extra=_json_body(protocols.V2_BODY), summary="V2 inference (versioned)")
    async def v2_infer_version(name: str, version: str, request: Request) -> Response:
        return await infer(request, name, version)

    @router.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @router.get("/readyz", tags=["health"], responses=_ERRORS,
                summary="Readiness (model loaded, every listener up, not draining)")
    async def readyz() -> dict[str, Any]:
        if not model.ready:
            raise ModelNotReady("model not loaded")
        check_serving()
        return {"status": "ready", "model": info.name, "version": info.version}

    @router.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(plane.metrics.render(), media_type=CONTENT_TYPE)

    return router

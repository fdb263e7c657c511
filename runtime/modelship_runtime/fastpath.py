"""The prediction routes of every protocol, as plain functions the serving middleware calls.

``/predict``, KServe V1 ``:predict``, Open Inference V2 ``infer`` (JSON) and MLflow's
``/invocations`` each come down to: read the body, parse it straight into the float64
matrix the model takes, :meth:`DataPlane.infer` (cache, micro-batcher, worker thread),
render the answer. :func:`match` tells the serving middleware which of them a request is,
so it answers them without FastAPI's routing and per-request objects; the FastAPI routes
in :mod:`modelship_runtime.endpoints` call the same functions (and document the routes in
OpenAPI), so both paths answer alike.

A V2 request with an ``Inference-Header-Content-Length`` header (the binary tensor
extension, tritonclient.http's default) is answered here too, by
:func:`modelship_runtime.binary.v2_infer`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import binary, invocations, protocols
from .dataplane import DataPlane, ShadowContext, loads
from .errors import ModelNotFound, ModelshipError

SEED, V1, V2, V2_BINARY, INVOCATIONS = "seed", "v1", "v2", "v2-binary", "invocations"
BINARY_HEADER = b"inference-header-content-length"


@dataclass(frozen=True)
class Match:
    """A prediction request: its protocol, route template (``path``, what metrics and
    logs name it by) and the model name and version its path gives."""

    kind: str
    path: str
    name: str = ""
    version: str | None = None


_SEED = Match(SEED, "/predict")
_INVOCATIONS = Match(INVOCATIONS, "/invocations")
V1_TEMPLATE = "/v1/models/{name}:predict"
V2_TEMPLATE = "/v2/models/{name}/infer"
V2_VERSION_TEMPLATE = "/v2/models/{name}/versions/{version}/infer"


def match(path: str, headers: list[tuple[bytes, bytes]]) -> Match | None:
    """The prediction route a ``POST`` to ``path`` is, or None (left to the router)."""
    if path == "/predict":
        return _SEED
    if path.startswith("/v1/models/"):
        if path.endswith(":predict"):
            name = path[11:-8]
            if name and "/" not in name:
                return Match(V1, V1_TEMPLATE, name)
        return None
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        parts = path[11:-6].split("/")
        if len(parts) == 1 and parts[0]:
            found = Match(V2, V2_TEMPLATE, parts[0])
        elif len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
            found = Match(V2, V2_VERSION_TEMPLATE, parts[0], parts[2])
        else:
            return None
        for k, _ in headers:
            if k == BINARY_HEADER:
                return Match(V2_BINARY, found.path, found.name, found.version)
        return found
    if path == "/invocations":
        return _INVOCATIONS
    return None


def check_name(plane: DataPlane, name: str, version: str | None = None) -> None:
    """ModelNotFound (404) unless ``name`` (and ``version``) is the model served here."""
    info = plane.model.info
    if name != info.name:
        raise ModelNotFound(f"model {name!r} is not served here; this server serves "
                            f"{info.name!r}")
    if version is not None and version != info.version:
        raise ModelNotFound(f"model {name!r} version {version!r} is not served here; this "
                            f"server serves version {info.version}")


# The parse of each protocol's body, as DataPlane.parse runs them (on the decode thread
# for a large body), after bounding the body's size.

def _seed_rows(raw: bytes, plane: DataPlane) -> tuple[np.ndarray, bool]:
    body = loads(raw)
    plane.check_ready()
    return protocols.seed_rows(body, plane.validator)


def _v1_rows(raw: bytes, plane: DataPlane) -> tuple[np.ndarray, bool]:
    body = loads(raw)
    plane.check_ready()
    return protocols.v1_rows(body, plane.validator, plane.model.info)


def _v2_rows(raw: bytes, plane: DataPlane) -> tuple[np.ndarray, dict[str, Any]]:
    body = loads(raw)
    plane.check_ready()
    return protocols.v2_rows(body, plane.validator, plane.model.info)


def _invocation_rows(raw: bytes, plane: DataPlane, content_type: bytes | None
                     ) -> tuple[np.ndarray, bool]:
    plane.check_ready()
    return invocations.parse(raw, content_type, plane.validator, plane.model.info)


async def seed_predict(plane: DataPlane, raw: bytes, t0: float,
                       shadow: ShadowContext | None = None) -> bytes:
    """The whole of ``POST /predict`` after the body is read: parse, validate, infer."""
    batcher = plane.batcher
    batcher.arriving += 1  # lets a micro-batch wait for requests still being parsed
    try:
        rows, single = await plane.parse(raw, _seed_rows, plane)
    finally:
        batcher.arriving -= 1
    result = await plane.infer(rows, shadow)
    ms = (time.perf_counter() - t0) * 1000.0
    return protocols.seed_response(result.prediction, single, result.cache_hit, ms)


async def v1_predict(plane: DataPlane, raw: bytes, name: str,
                     shadow: ShadowContext | None = None) -> bytes:
    """``POST /v1/models/NAME:predict`` after the body is read."""
    check_name(plane, name)
    batcher = plane.batcher
    batcher.arriving += 1
    try:
        rows, proba = await plane.parse(raw, _v1_rows, plane)
    finally:
        batcher.arriving -= 1
    result = await plane.infer(rows, shadow)
    return protocols.v1_response(result.prediction, proba)


async def v2_infer(plane: DataPlane, raw: bytes, name: str, version: str | None = None,
                   shadow: ShadowContext | None = None) -> bytes | binary.Answer:
    """``POST /v2/models/NAME[/versions/VERSION]/infer`` with a JSON body, after the body
    is read: a JSON answer, or a binary one when the request asks for binary outputs."""
    check_name(plane, name, version)
    batcher = plane.batcher
    batcher.arriving += 1
    try:
        rows, req = await plane.parse(raw, _v2_rows, plane)
        as_binary = binary.wants_binary(req)
    finally:
        batcher.arriving -= 1
    result = await plane.infer(rows, shadow)
    if as_binary:
        return binary.answer(result.prediction, plane.model.info, req)
    return protocols.v2_response(result.prediction, plane.model.info, req)


async def invocations_predict(plane: DataPlane, raw: bytes, content_type: bytes | None,
                              shadow: ShadowContext | None = None) -> bytes:
    """``POST /invocations`` (MLflow's scoring protocol) after the body is read."""
    batcher = plane.batcher
    batcher.arriving += 1
    try:
        rows, proba = await plane.parse(raw, _invocation_rows, plane, content_type)
    finally:
        batcher.arriving -= 1
    result = await plane.infer(rows, shadow)
    return invocations.response(result.prediction, proba)


async def answer(plane: DataPlane, m: Match, raw: bytes, t0: float,
                 headers: list[tuple[bytes, bytes]], shadow: ShadowContext | None
                 ) -> bytes | binary.Answer:
    """The answer to the prediction request ``m`` whose body is ``raw`` (JSON, or V2
    binary outputs when asked)."""
    if m.kind == SEED:
        return await seed_predict(plane, raw, t0, shadow)
    if m.kind == V1:
        return await v1_predict(plane, raw, m.name, shadow)
    if m.kind == V2:
        return await v2_infer(plane, raw, m.name, m.version, shadow)
    if m.kind == V2_BINARY:
        check_name(plane, m.name, m.version)
        header = next(v for k, v in headers if k == BINARY_HEADER)
        return await binary.v2_infer(plane, raw, header.decode("latin-1"), shadow)
    content_type = None
    for k, v in headers:
        if k == b"content-type":
            content_type = v
    return await invocations_predict(plane, raw, content_type, shadow)


def error_body(m: Match, exc: ModelshipError) -> bytes | None:
    """The protocol's own error body for ``exc``; None for the runtime's ``{"error"}``."""
    if m.kind == INVOCATIONS:
        return invocations.error_body(exc)
    return None

"""The Open Inference Protocol (V2) over gRPC, beside HTTP in the same process.

``modelship-runtime serve`` listens for gRPC on ``MODELSHIP_GRPC_PORT`` (default 8081;
0: none) on uvicorn's own event loop, with :mod:`.grpc_wire`'s HTTP/2 protocol (not
``grpc.aio``, whose hand-off of every call from its poller thread to the loop cost more
CPU than the HTTP V2 route's whole path), so both protocols share the one data plane: the
same validation, cache, micro-batcher (requests over gRPC and HTTP join the same batches)
and metrics. The service is the specification's
``inference.GRPCInferenceService`` (``_proto/grpc_predict_v2.proto``): ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer, with inputs in
``contents`` or ``raw_input_contents`` (answered in the same form). gRPC Server Reflection
(:mod:`.reflection`, v1 and v1alpha) describes it, unless ``grpc_reflection`` is off.

Errors are gRPC status codes with the HTTP route's message: INVALID_ARGUMENT (400),
UNAUTHENTICATED (401: API keys are configured and neither ``authorization: Bearer KEY``
nor ``x-api-key: KEY`` metadata holds one), NOT_FOUND (404: another model),
RESOURCE_EXHAUSTED (429: over the rate limit, counted with HTTP's per key; or a request
message over ``max_body_bytes``), UNAVAILABLE (503: not loaded yet), INTERNAL (500),
UNIMPLEMENTED (a method the service does not have). Reflection requests are guarded
as ModelMetadata is (API key, rate limit per request message). Each call is counted in
``http_requests_total`` and ``http_request_duration_seconds`` with ``method="GRPC"``,
``route="grpc:<Method>"`` and the HTTP status its code maps to (:data:`HTTP_STATUS`), so
the rollout's error-rate queries (``status=~"5.."``) see gRPC failures too; each
reflection request message is counted under ``route="grpc:ServerReflectionInfo"``.

Shutdown follows HTTP's (:mod:`.drain`): during the drain period gRPC keeps answering and
ServerReady says false; when the drain ends the server stops listening, sends GOAWAY on
every connection and finishes the calls in flight (at most ``shutdown_timeout_seconds``)
before the model is released.

The generated modules register the ``inference`` protobuf package in the process's
default descriptor pool, as tritonclient's do, and the reflection ones
``grpc.reflection.v1`` and ``v1alpha``, as grpcio-reflection's and grpclib's do: such
modules cannot be imported into one process (the runtime imports only its own; tests
drive it from another process).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI
from google.protobuf.message import DecodeError, Message

from . import __version__, binary, protocols
from ._proto import grpc_predict_v2_pb2 as pb
from .dataplane import DataPlane
from .drain import Drain
from .errors import BadRequest, ModelNotFound, ModelshipError, Unauthorized
from .grpc_wire import (
    INTERNAL,
    INVALID_ARGUMENT,
    OK,
    RESOURCE_EXHAUSTED,
    UNIMPLEMENTED,
    Call,
    GrpcError,
    GrpcWireServer,
    Handler,
)
from .metrics import Metrics
from .model import Prediction
from .ratelimit import ANONYMOUS
from .settings import RuntimeSettings
from .shadow import Mirror, MirrorSwitch

if TYPE_CHECKING:
    from .auth import KeyRing
    from .ratelimit import RateLimiter
    from .reflection import Reflection

logger = logging.getLogger("modelship_runtime")

SERVICE = "inference.GRPCInferenceService"
UNAUTHENTICATED, NOT_FOUND, UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED = 16, 5, 14, 1, 4

#: The HTTP status each gRPC status code is counted under in http_requests_total.
HTTP_STATUS: dict[int, int] = {
    OK: 200, INVALID_ARGUMENT: 400, UNAUTHENTICATED: 401, NOT_FOUND: 404,
    RESOURCE_EXHAUSTED: 429, CANCELLED: 499, DEADLINE_EXCEEDED: 504, UNAVAILABLE: 503,
    INTERNAL: 500,
}
_CODE_OF: dict[int, int] = {
    400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 404: NOT_FOUND, 429: RESOURCE_EXHAUSTED,
    415: INVALID_ARGUMENT, 503: UNAVAILABLE,
}
#: The ``contents`` field of each datatype, and the numpy type of its values (wider than
#: the datatype for INT8, INT16, UINT8 and UINT16, whose range is then checked). FP16 has
#: none: it is sent in ``raw_input_contents`` only.
_CONTENTS: dict[str, tuple[str, type[np.generic]]] = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int32), "INT16": ("int_contents", np.int32),
    "INT32": ("int_contents", np.int32), "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint32), "UINT16": ("uint_contents", np.uint32),
    "UINT32": ("uint_contents", np.uint32), "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32), "FP64": ("fp64_contents", np.float64),
    "BYTES": ("bytes_contents", np.object_),
}
_OUT_CONTENTS = {"FP64": "fp64_contents", "INT64": "int64_contents", "BOOL": "bool_contents"}


_CREDENTIALS = (b"authorization", b"x-api-key")


def _request_id(metadata: list[tuple[bytes, bytes]], given: str) -> bytes | None:
    """The call's ``x-request-id`` metadata, else the request's ``id``, when fit for an
    HTTP header (printable ASCII, at most 128 characters); else None."""
    for k, v in metadata:
        if k == b"x-request-id" and 0 < len(v) <= 128 and v.isascii() \
                and v.decode().isprintable():
            return v
    if 0 < len(given) <= 128 and given.isascii() and given.isprintable():
        return given.encode()
    return None


def _mirror_head(shape: tuple[int, ...]) -> bytes:
    """The JSON part of a binary V2 request of one FP64 tensor of ``shape``."""
    size = math.prod(shape) * 8
    return (b'{"inputs":[{"name":"input-0","shape":[%d,%d],"datatype":"FP64",'
            b'"parameters":{"binary_data_size":%d}}]}' % (shape[0], shape[1], size))


class RateLimited(ModelshipError):
    """Over the rate limit (RESOURCE_EXHAUSTED; 429 in the metrics, as over HTTP)."""

    status_code = 429


def _given_key(metadata: list[tuple[bytes, bytes]]) -> bytes:
    given = b""
    for k, value in metadata:
        if k == b"authorization" and value[:7].lower() == b"bearer ":
            given = value[7:].strip()
        elif k == b"x-api-key":
            given = value.strip()
    return given


class InferenceServicer:
    """The V2 gRPC service over one data plane; the HTTP side's API keys (reloaded as
    they change) and rate limiter, when set."""

    def __init__(self, plane: DataPlane, drain: Drain, api_keys: KeyRing | None = None,
                 limiter: RateLimiter | None = None,
                 mirror: MirrorSwitch | None = None) -> None:
        self.plane = plane
        self.drain = drain
        self.api_keys = api_keys
        self.limiter = limiter
        self.mirror = mirror
        self._counter = 0
        self._prefix = "grpc-" + os.urandom(4).hex()
        self.metrics: Metrics = plane.metrics
        self._children: dict[tuple[str, int], Any] = {}
        self._durations: dict[str, Any] = {}
        # path -> (request type, answer, guarded by API key and rate limit, method name)
        self.methods: dict[str, tuple[type[Message],
                                      Callable[[Any, Call], Awaitable[Message]], bool, str]] = {
            f"/{SERVICE}/{name}": (request, getattr(self, name), guarded, name)
            for name, request, guarded in (
                ("ServerLive", pb.ServerLiveRequest, False),
                ("ServerReady", pb.ServerReadyRequest, False),
                ("ModelReady", pb.ModelReadyRequest, True),
                ("ServerMetadata", pb.ServerMetadataRequest, True),
                ("ModelMetadata", pb.ModelMetadataRequest, True),
                ("ModelInfer", pb.ModelInferRequest, True),
            )}

    async def handle(self, call: Call, message: bytes) -> bytes:
        """The serialized answer to one call (:data:`.grpc_wire.Handler`), or GrpcError."""
        method = self.methods.get(call.path)
        if method is None:
            raise GrpcError(UNIMPLEMENTED, f"method {call.path} is not served here")
        request_type, answer, guarded, name = method
        start = time.perf_counter()
        code = OK
        try:
            if guarded:
                bucket = ANONYMOUS
                if self.api_keys is not None:
                    bucket = self._authorize(call.headers)
                if self.limiter is not None:
                    await self._limit(bucket)
            try:
                request = request_type.FromString(message)
            except DecodeError as exc:
                raise BadRequest(f"the request is not a {request_type.DESCRIPTOR.full_name}: "
                                 f"{exc}") from None
            response = await answer(request, call)
            answer_bytes: bytes = response.SerializeToString()
            return answer_bytes
        except ModelshipError as exc:
            code = _CODE_OF.get(exc.status_code, INTERNAL)
            raise GrpcError(code, exc.message) from None
        except asyncio.CancelledError:
            code = DEADLINE_EXCEEDED if call.expired else CANCELLED
            raise
        except Exception:
            logger.exception("unexpected error")
            code = INTERNAL
            raise GrpcError(code, "internal error") from None
        finally:
            self._observe(name, HTTP_STATUS.get(code, 500), time.perf_counter() - start)

    def reflection(self) -> dict[str, Handler]:
        """The streaming paths of gRPC Server Reflection (v1, v1alpha) and their handler,
        describing this service (for :class:`.grpc_wire.GrpcWireServer`)."""
        from . import reflection

        served = reflection.Reflection([pb.DESCRIPTOR, *(v.DESCRIPTOR
                                                         for v in reflection.VERSIONS)])

        def handler(version: ModuleType) -> Handler:
            async def reflect(call: Call, message: bytes) -> bytes:
                return await self._reflect(served, version, call, message)
            return reflect

        return {reflection.path(v): handler(v) for v in reflection.VERSIONS}

    async def _reflect(self, served: Reflection, version: ModuleType, call: Call,
                       message: bytes) -> bytes:
        """One reflection request message's answer, guarded as ModelMetadata is."""
        start = time.perf_counter()
        code = OK
        try:
            bucket = ANONYMOUS
            if self.api_keys is not None:
                bucket = self._authorize(call.headers)
            if self.limiter is not None:
                await self._limit(bucket)
            return served.answer(message, version)
        except ModelshipError as exc:
            code = _CODE_OF.get(exc.status_code, INTERNAL)
            raise GrpcError(code, exc.message) from None
        except GrpcError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:
            code = DEADLINE_EXCEEDED if call.expired else CANCELLED
            raise
        except Exception:
            logger.exception("unexpected error")
            code = INTERNAL
            raise GrpcError(code, "internal error") from None
        finally:
            self._observe("ServerReflectionInfo", HTTP_STATUS.get(code, 500),
                          time.perf_counter() - start)

    # --- the calls -------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, call: Call) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, call: Call
                          ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.model.ready and not self.drain.draining)

    async def ModelReady(self, request: pb.ModelReadyRequest, call: Call) -> pb.ModelReadyResponse:
        self._check_name(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.plane.model.ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, call: Call
                             ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="modelship-runtime", version=__version__)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, call: Call
                            ) -> pb.ModelMetadataResponse:
        self._check_name(request.name, request.version)
        self.plane.check_ready()
        meta = protocols.v2_model_metadata(self.plane.model.info)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                    for t in meta["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                     for t in meta["outputs"]])

    # --- the work ------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, call: Call
                         ) -> pb.ModelInferResponse:
        plane = self.plane
        self._check_name(request.model_name, request.model_version)
        batcher = plane.batcher
        batcher.arriving += 1  # lets a micro-batch wait for requests still being parsed
        try:
            plane.check_ready()
            rows = self._rows(request, plane)
            names = binary.wanted_outputs([o.name for o in request.outputs])
        finally:
            batcher.arriving -= 1
        result = await plane.infer(rows)
        if self.mirror is not None and (mirror := self.mirror.current) is not None:
            self._mirror(mirror, request, call, rows, result.prediction)
        info = plane.model.info
        response = pb.ModelInferResponse(model_name=info.name, model_version=info.version,
                                         id=request.id)
        raw = bool(request.raw_input_contents)
        for name, datatype, shape, values in binary.output_tensors(result.prediction, info,
                                                                   names):
            out = response.outputs.add(name=name, datatype=datatype, shape=shape)
            if raw:
                response.raw_output_contents.append(binary.tensor_bytes(datatype, values))
            elif isinstance(values, list):
                out.contents.bytes_contents.extend(s.encode() for s in values)
            else:
                getattr(out.contents, _OUT_CONTENTS[datatype]).extend(values.tolist())
        return response

    def _mirror(self, mirror: Mirror, request: pb.ModelInferRequest, call: Call,
                rows: np.ndarray, prediction: Prediction) -> None:
        """Hand the call to the shadow sender, once its answer is written, as the Open
        Inference Protocol's binary HTTP request of the same rows (the canary's V2 route
        compares it like any mirrored request); the client's credentials go with it.
        Rows of typed columns (strings, booleans) have no such tensor: skipped."""
        rid = _request_id(call.headers, request.id)
        if rid is None:
            self._counter += 1
            rid = f"{self._prefix}-{self._counter:x}".encode()
        headers = [(k, v) for k, v in call.headers if k in _CREDENTIALS]
        headers.append((b"content-type", b"application/octet-stream"))
        outgoing = mirror.choose("POST", f"/v2/models/{self.plane.model.info.name}/infer",
                                 rid, headers)
        if outgoing is None:  # not sampled, or shed: nothing more to build
            return
        if self.plane.validator.kinds is not None or rows.dtype != np.float64:
            mirror.sender.skipped += 1
            return
        head = _mirror_head(rows.shape)
        outgoing.forwarded += b"\r\ninference-header-content-length: %d" % len(head)
        outgoing.chunks = [head, rows.tobytes()]
        outgoing.observe(prediction)
        # after this call's answer is written: the handler returns it first
        asyncio.get_running_loop().call_soon(mirror.submit, outgoing, 200)

    @staticmethod
    def _rows(request: pb.ModelInferRequest, plane: DataPlane) -> np.ndarray:
        v = plane.validator
        n = len(request.inputs)
        if n != 1 or v.kinds is not None or (n and request.inputs[0].datatype == "BYTES"):
            return InferenceServicer._by_columns(request, plane)
        t = request.inputs[0]
        datatype = binary.check_datatype(t.datatype, "inputs[0]")
        shape = binary.check_shape(list(t.shape), "inputs[0]")
        raws = request.raw_input_contents
        if raws:
            if len(raws) != 1:
                raise BadRequest(f"raw_input_contents has {len(raws)} entries; there is "
                                 "one input")
            if t.HasField("contents"):
                raise BadRequest("inputs[0] has both contents and raw_input_contents; send one")
            return binary.rows_from_bytes(raws[0], shape, datatype, v, "inputs[0]",
                                          "raw_input_contents[0]")
        array = _contents(t, datatype, shape, "inputs[0]")
        return binary.to_rows(array, shape, datatype, v, "inputs[0]")

    @staticmethod
    def _by_columns(request: pb.ModelInferRequest, plane: DataPlane) -> np.ndarray:
        """Rows of a request going by columns (several inputs, or strings: BYTES)."""
        v = plane.validator
        if not request.inputs:
            raise BadRequest('missing field: "inputs" must hold at least one tensor')
        if len(request.inputs) > max(v.max_columns, 1):
            raise BadRequest(f"{len(request.inputs)} input tensors; the maximum is "
                             f"{v.max_columns}")
        raws = request.raw_input_contents
        if raws and len(raws) != len(request.inputs):
            raise BadRequest(f"raw_input_contents has {len(raws)} entries for "
                             f"{len(request.inputs)} inputs")
        tensors: list[tuple[str, list[int], str, list[Any]]] = []
        for i, t in enumerate(request.inputs):
            where = f"inputs[{i}]"
            datatype = protocols.check_input_datatype(t.datatype, where, v)
            shape = binary.check_shape(list(t.shape), where)
            if raws:
                flat = binary.raw_values(raws[i], shape, datatype, where,
                                         f"raw_input_contents[{i}]")
            elif datatype == "BYTES":
                values = _field(t, datatype, shape, where)
                try:
                    flat = [b.decode() for b in values]
                except UnicodeDecodeError:
                    raise BadRequest(f"{where}.contents.bytes_contents holds an element "
                                     "that is not UTF-8") from None
            else:
                flat = _contents(t, datatype, shape, where).tolist()
            tensors.append((t.name, shape, datatype,
                            protocols.tensor_values(flat, datatype, where)))
        return protocols.tensors_to_rows(tensors, v, plane.model.info)

    def _check_name(self, name: str, version: str) -> None:
        info = self.plane.model.info
        if name != info.name:
            raise ModelNotFound(f"model {name!r} is not served here; this server serves "
                                f"{info.name!r}")
        if version and version != info.version:
            raise ModelNotFound(f"model {name!r} version {version!r} is not served here; this "
                                f"server serves version {info.version}")

    # --- auth, rate limit and metrics ----------------------------------------------

    def _authorize(self, metadata: list[tuple[bytes, bytes]]) -> str:
        """The key's id (the rate limit's bucket), or Unauthorized."""
        assert self.api_keys is not None
        found = self.api_keys.match(_given_key(metadata))  # constant time over every key
        if found is None:
            raise Unauthorized("missing or invalid API key: send metadata authorization: "
                               "Bearer KEY or x-api-key: KEY")
        return found

    async def _limit(self, bucket: str) -> None:
        assert self.limiter is not None
        wait = await self.limiter.check(bucket)
        if wait is not None:
            self.metrics.rate_limited.inc()
            raise RateLimited(f"rate limit exceeded: {self.limiter.limit} requests per "
                              f"{self.limiter.period} s; retry in "
                              f"{self.limiter.retry_after(wait)} s")

    def _observe(self, method: str, status: int, seconds: float) -> None:
        key = (method, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.metrics.http_requests.labels(
                "GRPC", f"grpc:{method}", str(status))
        child.inc()
        hist = self._durations.get(method)
        if hist is None:
            hist = self._durations[method] = self.metrics.http_duration.labels(
                "GRPC", f"grpc:{method}")
        hist.observe(seconds)


def _field(t: Any, datatype: str, shape: list[int], where: str) -> Any:
    """The ``contents`` values of input tensor ``t`` (``where``), as many as its shape
    holds."""
    if datatype not in _CONTENTS:  # FP16
        raise BadRequest(f"{where}.datatype {datatype} has no contents field in the V2 gRPC "
                         f"protocol: send it in raw_input_contents")
    field = _CONTENTS[datatype][0]
    values = getattr(t.contents, field)
    need = math.prod(shape)
    if len(values) != need:
        raise BadRequest(f"{where}.contents.{field} has {len(values)} values; shape {shape} "
                         f"of {datatype} needs {need}")
    return values


def _contents(t: Any, datatype: str, shape: list[int], where: str) -> np.ndarray:
    """The numbers (or booleans) in input tensor ``t``'s ``contents`` as a flat array,
    each within ``datatype``'s range."""
    values = _field(t, datatype, shape, where)
    field, container = _CONTENTS[datatype]
    array = np.array(values, dtype=container)
    if datatype in _NARROW:
        low, high = protocols.INT_RANGES[datatype]
        bad = (array < low) | (array >= high)
        if bad.any():
            i = int(np.argmax(bad))
            raise protocols.out_of_range(f"{where}.contents.{field}[{i}]", int(array[i]),
                                         datatype)
    return array


_NARROW = frozenset({"INT8", "INT16", "UINT8", "UINT16"})


def address(host: str, port: int) -> str:
    """``host:port`` as gRPC binds it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """The gRPC listener of one app: started on the running loop, stopped gracefully."""

    def __init__(self, app: FastAPI, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.servicer = InferenceServicer(app.state.plane, app.state.drain,
                                          app.state.api_keys, app.state.limiter,
                                          app.state.mirror)
        self.server: GrpcWireServer | None = None

    async def start(self) -> None:
        """Listen on ``settings.grpc_port``; RuntimeError when the port cannot be bound."""
        s = self.settings
        server = GrpcWireServer(self.servicer.handle, s.max_body_bytes,
                                max_connections=s.max_connections,
                                streaming=self.servicer.reflection() if s.grpc_reflection
                                else None)
        where = address(s.host, s.grpc_port)
        try:
            await server.start(s.host, s.grpc_port)
        except OSError as exc:
            raise RuntimeError(f"cannot listen for gRPC on {where}: {exc}") from None
        self.server = server
        logger.info("gRPC (Open Inference Protocol V2%s) on %s",
                    ", server reflection" if s.grpc_reflection else "", where,
                    extra={"grpc_port": s.grpc_port})

    async def stop(self, grace: float) -> None:
        """Stop accepting calls; wait at most ``grace`` seconds for those in flight."""
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None

"""The runtime's gRPC against clients of other HTTP/2 stacks than grpcio's: grpclib (pure
Python, on the ``h2`` library, which enforces flow control and header rules strictly) at
its defaults, and Node's ``@grpc/grpc-js`` (``grpcjs/client.js``: keepalive PINGs every
100 ms, gzip-compressed requests), against a real ``modelship-runtime serve`` with API
keys on. ``make setup`` installs node (as root, from Debian, when missing) and the
client's packages (``npm ci`` in ``tests/runtime/grpcjs``); the grpc-js test skips only
where neither is there, and fails when one is there without the other.

What grpcio's C-core client does not show: a request and an answer both over 4 MiB while
h2 gives the server a 65,535-byte window (the answer goes out only as its WINDOW_UPDATEs
come; a byte past the window and h2 would fail the connection), 400 calls at once on one
connection (above the 128 the server advertises: h2 holds the rest until streams close),
API keys in ``x-api-key`` and ``authorization`` metadata, UNIMPLEMENTED for an unknown
method, and a connection that keeps serving after a call whose deadline passed and one
cancelled mid-call.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

grpclib_client = pytest.importorskip("grpclib.client", reason="grpclib missing (make setup "
                                     "installs it)")
from grpclib.const import Cardinality, Status  # noqa: E402
from grpclib.exceptions import GRPCError  # noqa: E402
from test_grpc import KEY, MODEL, Runtime, start_runtime, stop  # noqa: E402
from tritonclient.grpc import service_pb2 as pb  # noqa: E402  (the V2 messages)

SERVICE = "/inference.GRPCInferenceService/"
BIG_ROWS = 200_000  # FP32 in: 6.4 MB; out, INT64 labels and FP64 pairs: 4.8 MB
JS_ROWS = 300_000  # FP64 in contents: 19.2 MB; out: 5.1 MB
AUTH = {"x-api-key": KEY}
GRPCJS = Path(__file__).parent / "grpcjs"
PROTO = Path(__file__).parents[2] / "runtime" / "modelship_runtime" / "_proto" / \
    "grpc_predict_v2.proto"


@pytest.fixture(scope="module")
def runtime(local_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("grpc-interop")
    (root / "keys").write_text(f"{KEY}\n")
    r = start_runtime(local_models.lr_dir, root, MODELSHIP_API_KEYS_FILE=str(root / "keys"),
                      MODELSHIP_DRAIN_SECONDS="0", MODELSHIP_MAX_ROWS=str(JS_ROWS),
                      MODELSHIP_MAX_BODY_BYTES=str(24 << 20))
    yield r
    stop(r.proc)
    assert r.proc.returncode == 0, Path(r.log).read_text()


def channel(runtime: Runtime) -> Any:
    host, port = runtime.grpc.rsplit(":", 1)
    return grpclib_client.Channel(host, int(port))


async def call(ch: Any, name: str, request: Any, reply: type[Any],
               metadata: dict[str, str] | None = None, timeout: float = 60) -> Any:
    async with ch.request(SERVICE + name, Cardinality.UNARY_UNARY, type(request), reply,
                          timeout=timeout, metadata=metadata) as stream:
        await stream.send_message(request, end=True)
        return await stream.recv_message()


def infer_request(rows: np.ndarray) -> Any:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input-0", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.astype("<f4").tobytes())
    return request


def outputs(reply: Any) -> dict[str, np.ndarray]:
    types = {"INT64": "<i8", "FP64": "<f8"}
    return {o.name: np.frombuffer(raw, types[o.datatype]).reshape(list(o.shape))
            for o, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)}


def rows_of(local_models: Any, n: int, start: int = 0) -> np.ndarray:
    X = local_models.X
    return X[(np.arange(n) + start) % len(X)].astype(np.float32)


def check(local_models: Any, rows: np.ndarray, reply: Any) -> None:
    got = outputs(reply)
    as_f64 = rows.astype(np.float64)
    np.testing.assert_array_equal(got["predict"], local_models.lr.predict(as_f64))
    np.testing.assert_allclose(got["predict_proba"], local_models.lr.predict_proba(as_f64),
                               rtol=1e-6)


def test_health_metadata_keys_and_errors(runtime: Runtime) -> None:
    async def run() -> None:
        ch = channel(runtime)
        try:
            assert (await call(ch, "ServerLive", pb.ServerLiveRequest(),
                               pb.ServerLiveResponse)).live
            assert (await call(ch, "ServerReady", pb.ServerReadyRequest(),
                               pb.ServerReadyResponse)).ready
            for metadata in (AUTH, {"authorization": f"Bearer {KEY}"}):
                meta = await call(ch, "ModelMetadata", pb.ModelMetadataRequest(name=MODEL),
                                  pb.ModelMetadataResponse, metadata)
                assert meta.name == MODEL and [t.name for t in meta.outputs] == [
                    "predict", "predict_proba"]
            for metadata, status in (({}, Status.UNAUTHENTICATED),
                                     ({"x-api-key": "wrong"}, Status.UNAUTHENTICATED)):
                with pytest.raises(GRPCError) as err:
                    await call(ch, "ModelMetadata", pb.ModelMetadataRequest(name=MODEL),
                               pb.ModelMetadataResponse, metadata)
                assert err.value.status == status
                assert "API key" in (err.value.message or "")
            with pytest.raises(GRPCError) as err:
                await call(ch, "NoSuchMethod", pb.ServerLiveRequest(), pb.ServerLiveResponse)
            assert err.value.status == Status.UNIMPLEMENTED
            assert "NoSuchMethod" in (err.value.message or "")
            with pytest.raises(GRPCError) as err:
                await call(ch, "ModelReady", pb.ModelReadyRequest(name="other"),
                           pb.ModelReadyResponse, AUTH)
            assert err.value.status == Status.NOT_FOUND
        finally:
            ch.close()

    asyncio.run(run())


def test_request_and_answer_over_4_mib_within_the_clients_windows(runtime: Runtime,
                                                                   local_models: Any) -> None:
    rows = rows_of(local_models, BIG_ROWS)

    async def run() -> None:
        ch = channel(runtime)
        try:
            request = infer_request(rows)
            assert request.ByteSize() > 4 << 20
            reply = await call(ch, "ModelInfer", request, pb.ModelInferResponse, AUTH, 120)
            assert reply.ByteSize() > 4 << 20  # against h2's 65,535-byte windows
            check(local_models, rows, reply)
        finally:
            ch.close()

    asyncio.run(run())


def test_400_calls_at_once_on_one_connection(runtime: Runtime, local_models: Any) -> None:
    """More calls than the server's MAX_CONCURRENT_STREAMS (128): h2 opens streams as
    others close; each call gets the prediction of its own rows."""
    async def run() -> None:
        ch = channel(runtime)
        try:
            batches = [rows_of(local_models, 1 + i % 4, start=i) for i in range(400)]
            replies = await asyncio.gather(*(
                call(ch, "ModelInfer", infer_request(rows), pb.ModelInferResponse, AUTH, 120)
                for rows in batches))
            for rows, reply in zip(batches, replies, strict=True):
                check(local_models, rows, reply)
        finally:
            ch.close()

    asyncio.run(run())


def test_a_passed_deadline_and_a_cancelled_call_leave_the_connection_serving(
        runtime: Runtime, local_models: Any) -> None:
    rows = rows_of(local_models, BIG_ROWS)

    async def run() -> None:
        ch = channel(runtime)
        try:
            # the deadline is kept by grpclib and by the server (grpc-timeout): whichever
            # sees it pass first ends the call
            with pytest.raises((asyncio.TimeoutError, GRPCError)) as err:
                await call(ch, "ModelInfer", infer_request(rows), pb.ModelInferResponse,
                           AUTH, timeout=0.001)
            if isinstance(err.value, GRPCError):
                assert err.value.status == Status.DEADLINE_EXCEEDED
            task = asyncio.ensure_future(call(ch, "ModelInfer", infer_request(rows),
                                              pb.ModelInferResponse, AUTH))
            await asyncio.sleep(0)  # the call under way, then cancelled
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            small = rows_of(local_models, 3)
            check(local_models, small, await call(ch, "ModelInfer", infer_request(small),
                                                  pb.ModelInferResponse, AUTH))
        finally:
            ch.close()

    asyncio.run(run())


def node() -> str:
    """The node binary; skip where neither node nor the client's packages are installed."""
    found = shutil.which("node") or shutil.which("nodejs")
    installed = (GRPCJS / "node_modules" / "@grpc" / "grpc-js").is_dir()
    if found is None and not installed:
        pytest.skip("node missing (make setup installs nodejs and npm as root, then the "
                    "client with npm ci in tests/runtime/grpcjs)")
    assert found is not None, "tests/runtime/grpcjs/node_modules is installed but node " \
        "is missing"
    assert installed, "node is here but the grpc-js client is not installed: make setup " \
        "(npm ci in tests/runtime/grpcjs)"
    return found


def js_rows(n: int) -> np.ndarray:
    """client.js's rows: value i of the row-major array is ((i * 7919) % 1000) / 100 - 5."""
    i = np.arange(n * 8, dtype=np.int64)
    return (((i * 7919) % 1000) / 100 - 5).reshape(n, 8)


def test_grpc_js_client(runtime: Runtime, local_models: Any) -> None:
    result = subprocess.run(
        [node(), str(GRPCJS / "client.js"), runtime.grpc, str(PROTO), MODEL, KEY,
         str(JS_ROWS)], capture_output=True, text=True, timeout=300, cwd=GRPCJS,
        env={**os.environ, "GRPC_TRACE": "keepalive,transport", "GRPC_VERBOSITY": "DEBUG"})
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout)
    lr = local_models.lr

    def expected(rows: np.ndarray) -> dict[str, Any]:
        return {"predict": {"shape": [len(rows)], "sum": int(lr.predict(rows).sum())},
                "predict_proba": {"shape": [len(rows), 2],
                                  "sum": pytest.approx(lr.predict_proba(rows)[:, 1].sum(),
                                                       rel=1e-9)}}

    assert out["live"] == {"reply": {"live": True}}
    assert out["ready"] == {"reply": {"ready": True}}
    assert out["metadata"]["reply"]["name"] == MODEL
    assert out["no_key"]["code"] == 16  # UNAUTHENTICATED
    assert out["unknown"]["code"] == 12  # UNIMPLEMENTED
    assert out["small"] == expected(js_rows(3))
    assert out["big"] == expected(js_rows(JS_ROWS))  # in 19.2 MB, out 5.1 MB
    assert out["gzip"] == expected(js_rows(5000))
    # 300 calls at once on one connection, each answered for its own rows
    assert out["many"]["ok"] == 300
    sums = {n: pytest.approx(lr.predict_proba(js_rows(n))[:, 1].sum(), rel=1e-9)
            for n in range(1, 5)}
    assert out["many"]["sums"] == [sums[1 + i % 4] for i in range(300)]
    assert out["deadline"]["code"] == 4  # DEADLINE_EXCEEDED (the client's or the server's)
    assert out["cancelled"]["code"] == 1  # CANCELLED
    # keepalive PINGs every 100 ms: answered, and the connection neither closed nor sent
    # GOAWAY (the control-frame limit is for floods)
    assert out["pings"] >= 10
    assert out["closed"] == [] and out["goaway"] == []
    assert out["after_pings"] == {"reply": {"live": True}}

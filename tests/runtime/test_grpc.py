"""The Open Inference Protocol V2 over gRPC, and the binary tensor extension over HTTP,
against a real ``modelship-runtime serve`` driven by real clients.

One runtime process (API keys on) serves the module (the drain test starts its own):
tritonclient.grpc and KServe's InferenceGRPCClient over gRPC, tritonclient.http at its
defaults (binary tensors both ways) and with ``binary_data=False``. Under 32 concurrent
clients each sending its own rows, every answer must be scikit-learn's prediction for
those very rows (the clients' requests share micro-batches, so a mix-up would show).
KServe's client cannot share this environment (its pins conflict with the project's), so
it runs from a virtualenv of its own, built once and kept under the user's cache
directory.

SIGTERM drains gRPC as it drains HTTP: under steady ModelInfer traffic ServerReady turns
false at once while every call is still answered through the drain period; then the
server stops, exits 0, and a new call finds it gone (UNAVAILABLE).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import free_port, wait_http

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] missing "
                                 "(make setup installs it)")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] missing "
                                 "(make setup installs it)")
import grpc  # noqa: E402  (tritonclient[grpc] brings it)
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

RUNTIME = str(Path(sys.executable).parent / "modelship-runtime")
KEY = "grpc-test-key"
AUTH = {"x-api-key": KEY}
MODEL = "lr"
CLIENTS = 32
ROUNDS = 3
#: Every numeric V2 datatype a model of numbers takes, and the numpy type clients send.
NUMPY: dict[str, type[np.generic]] = {
    "FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64,
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "FP16": np.float16,
}
#: The gRPC ``contents`` field of each (FP16 has none: raw only).
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "BOOL": "bool_contents", "UINT8": "uint_contents",
            "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents"}
KSERVE = "kserve==0.21.0"
N_FEATURES = 8  # the local models' width (conftest.py)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Runtime:
    http: str
    grpc: str
    proc: subprocess.Popen[bytes]
    log: Path


def start_runtime(model_dir: Path, root: Path, **env: str) -> Runtime:
    """``modelship-runtime serve`` on free HTTP and gRPC ports, ready to answer."""
    port, gport = free_port(), free_port()
    log = root / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [RUNTIME, "serve", "--host", "127.0.0.1", "--port", str(port),
             "--grpc-port", str(gport), "--model-dir", str(model_dir)],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "MODELSHIP_MODEL_NAME": MODEL, **env})
    runtime = Runtime(f"http://127.0.0.1:{port}", f"127.0.0.1:{gport}", proc, log)
    try:
        wait_http(f"{runtime.http}/healthz", 120, proc)
        with grpc.insecure_channel(runtime.grpc) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
    except BaseException:
        stop(proc)
        raise AssertionError(f"the runtime did not come up:\n{log.read_text()}") from None
    return runtime


@pytest.fixture(scope="module")
def runtime(local_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("grpc")
    (root / "keys").write_text(f"{KEY}\nanother-key\n")
    r = start_runtime(local_models.lr_dir, root, MODELSHIP_API_KEYS_FILE=str(root / "keys"),
                      MODELSHIP_DRAIN_SECONDS="0")
    yield r
    stop(r.proc)
    assert r.proc.returncode == 0, r.log.read_text()


def rows_for(local_models: Any, client: int, n: int, datatype: str) -> np.ndarray:
    """Client ``client``'s own ``n`` rows, as ``datatype``: integers rounded x10 (unsigned:
    their magnitude), clipped to the type's range; booleans: the positive values; floats
    as numpy casts them (the server must round FP16 and FP32 JSON values the same way)."""
    X = local_models.X
    rows = X[(np.arange(n) + client * 7) % len(X)]
    dtype = np.dtype(NUMPY[datatype])
    if dtype.kind == "b":
        return rows > 0
    if dtype.kind in "iu":
        rows = np.round(rows * 10)
        if dtype.kind == "u":
            rows = np.abs(rows)
        limits = np.iinfo(dtype)
        rows = np.clip(rows, limits.min, limits.max)
    return rows.astype(dtype)


def expected(local_models: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    as_f64 = rows.astype(np.float64)
    return local_models.lr.predict(as_f64), local_models.lr.predict_proba(as_f64)


def run_concurrently(work: Callable[[int], None]) -> None:
    """``work(i)`` for i in 0..CLIENTS-1 on as many threads at once; re-raise a failure."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(CLIENTS)

    def body(i: int) -> None:
        try:
            barrier.wait(60)
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "a client hung"
    if errors:
        raise errors[0]


def metric(base: str, route: str, status: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    want = f'http_requests_total{{method="GRPC",route="{route}",status="{status}"}} '
    for line in text.splitlines():
        if line.startswith(want):
            return float(line.split()[-1])
    return 0.0


# --- gRPC ---------------------------------------------------------------------------


def test_health_and_metadata_over_grpc(runtime: Runtime) -> None:
    client = grpcclient.InferenceServerClient(runtime.grpc)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL, headers=AUTH)
    assert client.get_server_metadata(headers=AUTH).name == "modelship-runtime"
    meta = client.get_model_metadata(MODEL, headers=AUTH, as_json=True)
    over_http = httpx.get(f"{runtime.http}/v2/models/{MODEL}", headers=AUTH, timeout=10).json()
    assert meta["name"] == over_http["name"] == MODEL
    assert meta["versions"] == over_http["versions"]
    for kind in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta[kind]] \
            == [(t["name"], t["datatype"], t["shape"]) for t in over_http[kind]]
    with pytest.raises(InferenceServerException) as err:
        client.is_model_ready("other", headers=AUTH)
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_32_tritonclient_grpc_clients_each_get_their_own_predictions(
    runtime: Runtime, local_models: Any
) -> None:
    before = metric(runtime.http, "grpc:ModelInfer", "200")
    datatypes = list(NUMPY)

    def work(i: int) -> None:
        client = grpcclient.InferenceServerClient(runtime.grpc)
        for r in range(ROUNDS):
            datatype = datatypes[(i + r) % len(datatypes)]
            rows = rows_for(local_models, i * ROUNDS + r, 1 + (i + r) % 3, datatype)
            tensor = grpcclient.InferInput("input-0", list(rows.shape), datatype)
            tensor.set_data_from_numpy(rows)
            result = client.infer(MODEL, [tensor], headers=dict(AUTH), request_id=f"c{i}-{r}")
            labels, probs = expected(local_models, rows)
            assert result.get_response().id == f"c{i}-{r}"
            np.testing.assert_array_equal(result.as_numpy("predict"), labels)
            np.testing.assert_allclose(result.as_numpy("predict_proba"), probs, rtol=1e-12)
        client.close()

    run_concurrently(work)
    assert metric(runtime.http, "grpc:ModelInfer", "200") - before == CLIENTS * ROUNDS


@pytest.mark.parametrize("datatype", list(CONTENTS))
def test_contents_in_contents_out(runtime: Runtime, local_models: Any, datatype: str) -> None:
    """Inputs in typed ``contents`` (not raw bytes) are answered in ``contents``."""
    rows = rows_for(local_models, 99, 4, datatype)
    field = CONTENTS[datatype]
    request = service_pb2.ModelInferRequest(model_name=MODEL, id="typed")
    tensor = request.inputs.add(name="input-0", datatype=datatype, shape=list(rows.shape))
    getattr(tensor.contents, field).extend(rows.reshape(-1).tolist())
    request.outputs.add(name="predict")
    request.outputs.add(name="predict_proba")
    with grpc.insecure_channel(runtime.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, metadata=[("authorization", f"Bearer {KEY}")],
                                   timeout=30)
    labels, probs = expected(local_models, rows)
    assert not response.raw_output_contents
    predict, proba = response.outputs
    assert (predict.name, predict.datatype, list(predict.shape)) == ("predict", "INT64", [4])
    assert list(predict.contents.int64_contents) == labels.tolist()
    assert (proba.datatype, list(proba.shape)) == ("FP64", [4, 2])
    np.testing.assert_allclose(np.array(proba.contents.fp64_contents).reshape(4, 2), probs,
                               rtol=1e-12)
    assert response.model_name == MODEL and response.id == "typed"


def _infer_raw(runtime: Runtime, request: Any, metadata: list[tuple[str, str]] | None = None
               ) -> grpc.RpcError:
    with grpc.insecure_channel(runtime.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, metadata=metadata if metadata is not None
                            else list(AUTH.items()), timeout=30)
    return err.value


def _request(datatype: str = "FP64", shape: tuple[int, ...] = (1, N_FEATURES),
             raw: bytes | None = None, model: str = MODEL) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input-0", datatype=datatype, shape=list(shape))
    if raw is None:
        raw = np.zeros(int(np.prod(shape)), dtype=NUMPY.get(datatype, np.float64)).tobytes()
    request.raw_input_contents.append(raw)
    return request


def _two_inputs() -> Any:
    request = _request()
    request.inputs.add(name="input-1", datatype="FP64", shape=[1, N_FEATURES])
    return request


def _nan() -> Any:
    values = np.zeros(N_FEATURES)
    values[3] = np.nan
    return _request(raw=values.tobytes())


def _typed_short() -> Any:
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="input-0", datatype="FP32", shape=[2, N_FEATURES])
    tensor.contents.fp32_contents.extend([0.0] * N_FEATURES)
    return request


def _contents(datatype: str, values: list[Any], columns: int = 1) -> Any:
    """``values`` in the contents of one [1, 8] tensor, or of ``columns`` [1] tensors."""
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    shape = [1, N_FEATURES] if columns == 1 else [1]
    for c in range(columns):
        tensor = request.inputs.add(name=f"input-{c}", datatype=datatype, shape=shape)
        if datatype in CONTENTS:
            getattr(tensor.contents, CONTENTS[datatype]).extend(values)
    return request


def _unknown_output() -> Any:
    request = _request()
    request.outputs.add(name="logits")
    return request


BAD = {
    "features": (lambda: _request(shape=(1, 5)), "5 features; the model takes 8"),
    "datatype": (lambda: _request(datatype="BYTES", raw=b""),
                 "BYTES: this model takes numbers only"),
    "unknown datatype": (lambda: _request(datatype="FP128", raw=b""), "not a V2 datatype"),
    "short raw": (lambda: _request(raw=b"\0" * 12), "raw_input_contents[0] has 12 bytes"),
    "long raw": (lambda: _request(raw=b"\0" * 72), "needs 64"),
    "typed count": (_typed_short, "fp32_contents has 8 values"),
    "NaN": (_nan, "NaN"),
    "inputs": (_two_inputs, "raw_input_contents has 1 entries for 2 inputs"),
    "rank": (lambda: _request(shape=(1, 2, 4)), "shape must be [features] or [rows"),
    "empty": (lambda: _request(shape=(0, N_FEATURES)), "is empty"),
    "output": (_unknown_output, "'logits' is not an output"),
    "BF16": (lambda: _request(datatype="BF16", raw=bytes(16)),
             "BF16 is not supported (numpy has no bfloat16"),
    "UINT16 raw size": (lambda: _request(datatype="UINT16", raw=bytes(15)),
                        "has 15 bytes; inputs[0].shape [1, 8] of UINT16 needs 16"),
    "FP16 infinity": (lambda: _request(datatype="FP16",
                                       raw=np.full(N_FEATURES, np.inf, np.float16).tobytes()),
                      "inputs[0].data[0][0] is Infinity"),
    "BOOL byte": (lambda: _request(datatype="BOOL", raw=bytes([0, 1, 2, 0, 0, 0, 0, 0])),
                  "element 2 is byte 2; BOOL elements are 0 (false) or 1 (true)"),
    "FP16 contents": (lambda: _contents("FP16", []),
                      "FP16 has no contents field in the V2 gRPC protocol: send it in "
                      "raw_input_contents"),
    "UINT8 range": (lambda: _contents("UINT8", [0, 1, 2, 300, 0, 0, 0, 0]),
                    "inputs[0].contents.uint_contents[3] (300) does not fit in UINT8: its "
                    "range is 0..255"),
    "INT8 range": (lambda: _contents("INT8", [0, -129, 0, 0, 0, 0, 0, 0]),
                   "int_contents[1] (-129) does not fit in INT8"),
    "INT16 range by column": (lambda: _contents("INT16", [40000], columns=N_FEATURES),
                              "inputs[0].contents.int_contents[0] (40000) does not fit in "
                              "INT16: its range is -32768..32767"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_are_invalid_argument_naming_the_problem(runtime: Runtime,
                                                              case: str) -> None:
    make, words = BAD[case]
    error = _infer_raw(runtime, make())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert words in error.details()


def test_unknown_model_and_version_are_not_found(runtime: Runtime) -> None:
    error = _infer_raw(runtime, _request(model="iris"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "'iris' is not served here" in error.details()
    request = _request()
    request.model_version = "99"
    error = _infer_raw(runtime, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "version '99'" in error.details()


@pytest.mark.parametrize("metadata", [[], [("x-api-key", "wrong")],
                                      [("authorization", "Bearer wrong")],
                                      [("authorization", KEY)]], ids=str)
def test_api_keys_guard_grpc_as_they_guard_http(runtime: Runtime,
                                                metadata: list[tuple[str, str]]) -> None:
    before = metric(runtime.http, "grpc:ModelInfer", "401")
    error = _infer_raw(runtime, _request(), metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "API key" in error.details()
    assert metric(runtime.http, "grpc:ModelInfer", "401") == before + 1
    with grpc.insecure_channel(runtime.grpc) as channel:  # liveness stays open, as over HTTP
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), metadata=metadata,
                               timeout=30).live
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=MODEL),
                               metadata=metadata, timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_errors_are_counted_with_http_statuses(runtime: Runtime) -> None:
    before = {s: metric(runtime.http, "grpc:ModelInfer", s) for s in ("400", "404")}
    _infer_raw(runtime, _request(shape=(1, 3)))
    _infer_raw(runtime, _request(model="nope"))
    assert metric(runtime.http, "grpc:ModelInfer", "400") == before["400"] + 1
    assert metric(runtime.http, "grpc:ModelInfer", "404") == before["404"] + 1


# --- KServe's client, from its own virtualenv ------------------------------------------

KSERVE_SCRIPT = r"""
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

url, model, key, path = sys.argv[1:]
jobs = json.load(open(path))

async def one(job):
    client = InferenceGRPCClient(url, timeout=60)
    rows = np.array(job["rows"], dtype=job["numpy"])
    tensor = InferInput(name="input-0", shape=list(rows.shape), datatype=job["datatype"])
    tensor.set_data_from_numpy(rows, binary_data=job["raw"])
    request = InferRequest(model_name=model, infer_inputs=[tensor], request_id=job["id"])
    try:
        response = await client.infer(request, headers=[("x-api-key", key)])
    finally:
        await client.close()
    return {"id": response.id,
            "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs}}

async def main():
    return await asyncio.gather(*(one(job) for job in jobs))

print(json.dumps(asyncio.run(main())))
"""


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """The python of a virtualenv holding KServe's client (built once, then reused)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = cache / "modelship-tests" / KSERVE.replace("==", "-")
    python = root / "bin" / "python"
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f"{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel pytest processes build it once
        if not (root / ".complete").exists():
            venv.create(root, with_pip=True, clear=True)
            result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", KSERVE],
                                    capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                pytest.skip(f"cannot install {KSERVE} into its virtualenv (no PyPI?): "
                            f"{result.stderr[-2000:]}")
            (root / ".complete").touch()
    return python


def test_32_kserve_grpc_clients_each_get_their_own_predictions(
    runtime: Runtime, local_models: Any, kserve_python: Path, tmp_path: Path
) -> None:
    datatypes = list(NUMPY)
    jobs = []
    for i in range(CLIENTS):
        datatype = datatypes[i % len(datatypes)]
        rows = rows_for(local_models, 500 + i, 1 + i % 3, datatype)
        jobs.append({"id": f"k{i}", "rows": rows.tolist(), "datatype": datatype,
                     "numpy": np.dtype(NUMPY[datatype]).name,
                     # each datatype both ways; FP16 has no contents field: raw only
                     "raw": (i // len(datatypes)) % 2 == 0 or datatype == "FP16"})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    result = subprocess.run([str(kserve_python), "-c", KSERVE_SCRIPT, runtime.grpc, MODEL,
                             KEY, str(tmp_path / "jobs.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(answers) == CLIENTS
    for job, answer in zip(jobs, answers, strict=True):
        rows = np.array(job["rows"], dtype=job["numpy"])
        labels, probs = expected(local_models, rows)
        assert answer["id"] == job["id"]
        assert answer["outputs"]["predict"] == labels.tolist()
        np.testing.assert_allclose(answer["outputs"]["predict_proba"], probs, rtol=1e-12)


KSERVE_REST_SCRIPT = r"""
import asyncio, json, sys
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest
from kserve.protocol.infer_type import RequestedOutput
from kserve.inference_client import RESTConfig

url, model, key, path = sys.argv[1:]
jobs = json.load(open(path))
auth = {"x-api-key": key}

async def one(job):
    client = InferenceRESTClient(RESTConfig(protocol=job["protocol"], timeout=60))
    rows = np.array(job["rows"], dtype=job["numpy"])
    try:
        if job["protocol"] == "v1":
            body = {"instances": rows.tolist()}
            if job["proba"]:
                body["parameters"] = {"method": "predict_proba"}
            answer = await client.infer(url, body, model_name=model, headers=dict(auth))
            return {"predictions": answer["predictions"]}
        tensor = InferInput(name="input-0", shape=list(rows.shape), datatype=job["datatype"])
        tensor.set_data_from_numpy(rows, binary_data=job["raw"])
        outputs = [RequestedOutput(name, parameters={"binary_data": job["raw"]})
                   for name in ("predict", "predict_proba")]
        request = InferRequest(model_name=model, infer_inputs=[tensor], request_id=job["id"],
                               request_outputs=outputs)
        response = await client.infer(url, request, model_name=model, headers=dict(auth))
        return {"id": response.id,
                "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs}}
    finally:
        await client.close()

async def health():
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=60))
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    try:
        try:
            other = await v1.is_model_ready(url, "other", headers=auth)
        except Exception as exc:  # 404 Not Found: it raises for what is not a 503
            other = exc.response.status_code
        return {"v1 live": await v1.is_server_live(url),
                "v1 model ready": await v1.is_model_ready(url, model, headers=auth),
                "v1 other model ready": other,
                "v2 live": await v2.is_server_live(url),
                "v2 ready": await v2.is_server_ready(url),
                "v2 model ready": await v2.is_model_ready(url, model, headers=auth),
                "v2 other model ready": await v2.is_model_ready(url, "other", headers=auth)}
    finally:
        await v1.close()
        await v2.close()

async def main():
    answers = await asyncio.gather(*(one(job) for job in jobs))
    return {"answers": answers, "health": await health()}

print(json.dumps(asyncio.run(main())))
"""


def test_32_kserve_rest_clients_v1_and_v2_each_get_their_own_predictions(
    runtime: Runtime, local_models: Any, kserve_python: Path, tmp_path: Path
) -> None:
    """KServe's InferenceRESTClient at its defaults: V1 instances (labels and, asked,
    probabilities), V2 with binary tensors (its default) or JSON, and its health calls."""
    datatypes = list(NUMPY)
    jobs = []
    for i in range(CLIENTS):
        datatype = datatypes[i % len(datatypes)] if i % 3 else "FP64"
        rows = rows_for(local_models, 800 + i, 1 + i % 3, datatype)
        jobs.append({"id": f"r{i}", "rows": rows.tolist(), "datatype": datatype,
                     "numpy": np.dtype(NUMPY[datatype]).name,
                     # KServe sends no FP16 in JSON
                     "raw": (i // len(datatypes)) % 2 == 0 or datatype == "FP16",
                     "protocol": "v1" if i % 3 == 0 else "v2", "proba": i % 6 == 3})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    result = subprocess.run([str(kserve_python), "-c", KSERVE_REST_SCRIPT, runtime.http, MODEL,
                             KEY, str(tmp_path / "jobs.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["health"] == {"v1 live": True, "v1 model ready": True,
                             "v1 other model ready": 404, "v2 live": True, "v2 ready": True,
                             "v2 model ready": True, "v2 other model ready": False}
    assert len(out["answers"]) == CLIENTS
    for job, answer in zip(jobs, out["answers"], strict=True):
        rows = np.array(job["rows"], dtype=job["numpy"])
        labels, probs = expected(local_models, rows)
        if job["protocol"] == "v1":
            if job["proba"]:
                np.testing.assert_allclose(answer["predictions"], probs, rtol=1e-12)
            else:
                assert answer["predictions"] == labels.tolist()
            continue
        assert answer["id"] == job["id"]
        assert answer["outputs"]["predict"] == labels.tolist()
        np.testing.assert_allclose(answer["outputs"]["predict_proba"], probs, rtol=1e-12)


# --- HTTP: the binary tensor extension ------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_32_tritonclient_http_clients_each_get_their_own_predictions(
    runtime: Runtime, local_models: Any, binary: bool
) -> None:
    """tritonclient.http at its defaults sends raw tensors and asks for raw outputs;
    ``binary_data=False`` sends JSON and asks for JSON."""
    datatypes = list(NUMPY)
    address = runtime.http.removeprefix("http://")

    def work(i: int) -> None:
        client = httpclient.InferenceServerClient(address, connection_timeout=60,
                                                  network_timeout=60)
        for r in range(ROUNDS):
            datatype = datatypes[(i + r) % len(datatypes)]
            rows = rows_for(local_models, 1000 + i * ROUNDS + r, 1 + (i + r) % 3, datatype)
            tensor = httpclient.InferInput("input-0", list(rows.shape), datatype)
            if binary:
                tensor.set_data_from_numpy(rows)
                outputs = None
            else:
                tensor.set_data_from_numpy(rows, binary_data=False)
                outputs = [httpclient.InferRequestedOutput(n, binary_data=False)
                           for n in ("predict", "predict_proba")]
            # a fresh dict: tritonclient adds Inference-Header-Content-Length to the one given
            result = client.infer(MODEL, [tensor], outputs=outputs, headers=dict(AUTH))
            labels, probs = expected(local_models, rows)
            response = result.get_response()
            sizes = [o.get("parameters", {}).get("binary_data_size") for o in
                     response["outputs"]]
            assert all(sizes) if binary else not any(sizes), response
            np.testing.assert_array_equal(result.as_numpy("predict"), labels)
            np.testing.assert_allclose(result.as_numpy("predict_proba"), probs, rtol=1e-12)
        client.close()

    run_concurrently(work)


def _binary_body(header: dict[str, Any], tail: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + tail, {"Inference-Header-Content-Length": str(len(head)), **AUTH}


def _header(size: int, shape: list[int] | None = None, datatype: str = "FP64",
            **params: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": shape or [1, N_FEATURES],
                        "datatype": datatype, "parameters": {"binary_data_size": size}}],
            **params}


def test_binary_answer_is_octet_stream_with_the_header_length(runtime: Runtime,
                                                              local_models: Any) -> None:
    rows = rows_for(local_models, 7, 2, "FP32")
    body, headers = _binary_body(
        _header(rows.nbytes, [2, N_FEATURES], "FP32",
                outputs=[{"name": "predict_proba", "parameters": {"binary_data": True}},
                         {"name": "predict"}]),
        rows.tobytes())
    r = httpx.post(f"{runtime.http}/v2/models/{MODEL}/infer", content=body, headers=headers,
                   timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    labels, probs = expected(local_models, rows)
    proba, predict = head["outputs"]
    assert predict == {"name": "predict", "datatype": "INT64", "shape": [2],
                       "data": labels.tolist()}
    assert proba["parameters"] == {"binary_data_size": probs.nbytes}
    np.testing.assert_allclose(np.frombuffer(r.content[n:], "<f8").reshape(2, 2), probs,
                               rtol=1e-12)
    assert len(r.content) == n + probs.nbytes


def _bad_header_length(value: str) -> tuple[bytes, dict[str, str]]:
    body, headers = _binary_body(_header(64), bytes(64))
    return body, {**headers, "Inference-Header-Content-Length": value}


BAD_HTTP = {
    "header beyond body": (lambda: _bad_header_length("100000"), "beyond the body"),
    "header not a number": (lambda: _bad_header_length("ten"), "is not an integer"),
    "header negative": (lambda: _bad_header_length("-1"), "is negative"),
    "header cuts the JSON": (lambda: _bad_header_length("20"), "JSON"),
    "size beyond body": (lambda: _binary_body(_header(128), bytes(64)),
                         "binary_data_size 128 is beyond the 64 bytes"),
    "size against shape": (lambda: _binary_body(_header(60), bytes(60)),
                           "has 60 bytes; inputs[0].shape [1, 8] of FP64 needs 64"),
    "bytes left over": (lambda: _binary_body(_header(64), bytes(72)), "8 bytes after"),
    "size not a number": (lambda: _binary_body(_header("64"), bytes(64)),  # type: ignore[arg-type]
                          "non-negative integer"),
    "data and size": (lambda: _binary_body(
        {"inputs": [{"name": "input-0", "shape": [1, 8], "datatype": "FP64", "data": [0] * 8,
                     "parameters": {"binary_data_size": 64}}]}, bytes(64)), "both"),
    "datatype": (lambda: _binary_body(_header(16, [1, 8], "BF16"), bytes(16)),
                 "BF16 is not supported (numpy has no bfloat16"),
    "UINT32 size against shape": (lambda: _binary_body(_header(28, [1, 8], "UINT32"), bytes(28)),
                                  "has 28 bytes; inputs[0].shape [1, 8] of UINT32 needs 32"),
    "FP16 infinity": (lambda: _binary_body(_header(16, [1, 8], "FP16"),
                                           np.full(8, -np.inf, np.float16).tobytes()),
                      "-Infinity"),
    "FP16 NaN": (lambda: _binary_body(_header(16, [1, 8], "FP16"),
                                      np.full(8, np.nan, np.float16).tobytes()), "NaN"),
    "BOOL byte": (lambda: _binary_body(_header(8, [1, 8], "BOOL"), bytes([1] * 7 + [255])),
                  "element 7 is byte 255"),
    "features": (lambda: _binary_body(_header(40, [1, 5]), bytes(40)),
                 "5 features; the model takes 8"),
    "infinity": (lambda: _binary_body(_header(64), np.full(8, np.inf).tobytes()), "Infinity"),
    "flag type": (lambda: _binary_body(_header(64, parameters={"binary_data_output": "yes"}),
                                       bytes(64)), "binary_data_output must be true or false"),
    "tail without size": (lambda: _binary_body(
        {"inputs": [{"name": "input-0", "shape": [1, 8], "datatype": "FP64",
                     "data": [0] * 8}]}, bytes(8)), "no input declares"),
}


@pytest.mark.parametrize("case", list(BAD_HTTP))
def test_bad_binary_requests_are_400_naming_the_problem(runtime: Runtime, case: str) -> None:
    make, words = BAD_HTTP[case]
    body, headers = make()
    r = httpx.post(f"{runtime.http}/v2/models/{MODEL}/infer", content=body, headers=headers,
                   timeout=30)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_http_compressing_its_requests(runtime: Runtime, local_models: Any,
                                                    algorithm: str) -> None:
    """tritonclient.http with ``request_compression_algorithm`` (and asking compressed
    answers, which the runtime may send plain): binary tensors in a compressed body."""
    client = httpclient.InferenceServerClient(runtime.http.removeprefix("http://"),
                                              connection_timeout=60, network_timeout=60)
    try:
        for i, datatype in enumerate(NUMPY):
            rows = rows_for(local_models, 2000 + i, 3, datatype)
            tensor = httpclient.InferInput("input-0", list(rows.shape), datatype)
            tensor.set_data_from_numpy(rows)
            result = client.infer(MODEL, [tensor], headers=dict(AUTH),
                                  request_compression_algorithm=algorithm,
                                  response_compression_algorithm=algorithm)
            labels, probs = expected(local_models, rows)
            np.testing.assert_array_equal(result.as_numpy("predict"), labels)
            np.testing.assert_allclose(result.as_numpy("predict_proba"), probs, rtol=1e-12)
    finally:
        client.close()


def test_compressed_bodies_on_every_http_route(runtime: Runtime, local_models: Any) -> None:
    """gzip (two members), zlib and raw deflate bodies, and two codings applied in turn."""
    import gzip
    import zlib

    rows = rows_for(local_models, 7, 2, "FP64")
    labels, _ = expected(local_models, rows)
    v1 = json.dumps({"instances": rows.tolist()}).encode()
    raw = zlib.compressobj(wbits=-15)
    csv = "\n".join([",".join(f"f{i}" for i in range(N_FEATURES)),
                     *(",".join(repr(float(v)) for v in row) for row in rows)]).encode()
    seed = json.dumps({"instances": rows.tolist()}).encode()
    cases = [
        (f"/v1/models/{MODEL}:predict", gzip.compress(v1[:10]) + gzip.compress(v1[10:]),
         {"Content-Encoding": "gzip", "Content-Type": "application/json"}, "predictions"),
        ("/invocations", raw.compress(csv) + raw.flush(),
         {"Content-Encoding": "deflate", "Content-Type": "text/csv"}, "predictions"),
        ("/predict", gzip.compress(zlib.compress(seed)),
         {"Content-Encoding": "deflate, gzip", "Content-Type": "application/json"},
         "predictions"),
        (f"/v2/models/{MODEL}/infer", gzip.compress(json.dumps({"inputs": [
            {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
             "data": rows.ravel().tolist()}]}).encode()),
         {"Content-Encoding": "x-gzip, identity"}, None),
    ]
    for path, body, headers, key in cases:
        r = httpx.post(f"{runtime.http}{path}", content=body, headers={**headers, **AUTH},
                       timeout=30)
        assert r.status_code == 200, (path, r.text)
        if key is None:
            got = next(o["data"] for o in r.json()["outputs"] if o["name"] == "predict")
        else:
            got = r.json()[key]
        assert list(got) == labels.tolist(), (path, r.text)


def test_compressed_bodies_that_cannot_be_read_are_4xx_and_the_server_serves_on(
        runtime: Runtime, local_models: Any) -> None:
    """A body that inflates past the byte cap is 413 having inflated no further; corrupt
    or truncated ones are 400, an unknown coding 415, each naming the problem."""
    import gzip
    import zlib

    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(squeeze.compress(b"[" + b"0," * (1 << 20)) for _ in range(64))
    bomb += squeeze.flush()  # 128 MiB of JSON in about 128 KiB
    assert len(bomb) < 1 << 20
    good = gzip.compress(json.dumps({"instances": rows_for(local_models, 1, 1, "FP64")
                                     .tolist()}).encode())
    cases = [
        (bomb, "gzip", 413, "byte limit once decompressed"),
        (b"\x1f\x8b not gzip at all", "gzip", 400, "gzip body cannot be decompressed"),
        (good[:-9], "gzip", 400, "gzip body is truncated"),
        (zlib.compress(b"{}") + b"junk", "deflate", 400, "bytes after its end"),
        (good, "br", 415, "Content-Encoding 'br' is not supported"),
    ]
    url = f"{runtime.http}/v1/models/{MODEL}:predict"
    for body, coding, status, words in cases:
        r = httpx.post(url, content=body, timeout=60,
                       headers={"Content-Encoding": coding, **AUTH})
        assert r.status_code == status, (coding, r.text)
        assert words in r.json()["error"], r.text
    r = httpx.post(url, content=good, headers={"Content-Encoding": "gzip", **AUTH},
                   timeout=30)
    assert r.status_code == 200, r.text


def test_json_request_asking_binary_outputs_gets_them(runtime: Runtime,
                                                      local_models: Any) -> None:
    rows = rows_for(local_models, 3, 1, "FP64")
    r = httpx.post(f"{runtime.http}/v2/models/{MODEL}/infer", headers=AUTH, timeout=30, json={
        "inputs": [{"name": "input-0", "shape": [1, 8], "datatype": "FP64",
                    "data": rows.reshape(-1).tolist()}],
        "outputs": [{"name": "predict", "parameters": {"binary_data": True}}]})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    (predict,) = json.loads(r.content[:n])["outputs"]
    assert predict["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(r.content[n:], "<i8").tolist() == \
        expected(local_models, rows)[0].tolist()


# --- SIGTERM: gRPC drains as HTTP does ---------------------------------------------


@dataclass
class Load:
    """ModelInfer in a loop from a thread; each outcome kept with the phase it was sent in."""

    address: str
    phase: str = "before"
    outcomes: list[tuple[str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = grpcclient.InferenceServerClient(self.address)
        tensor = grpcclient.InferInput("input-0", [1, N_FEATURES], "FP64")
        tensor.set_data_from_numpy(np.zeros((1, N_FEATURES)))
        while not self.stop.is_set():
            phase = self.phase
            try:
                client.infer(MODEL, [tensor], client_timeout=30)
                self.outcomes.append((phase, "OK"))
            except InferenceServerException as exc:
                self.outcomes.append((phase, str(exc.status())))
                time.sleep(0.01)
        client.close()

    def count(self, phase: str, outcome: str = "OK") -> int:
        return sum(1 for p, o in self.outcomes if p == phase and o == outcome)


def runs(outcomes: list[tuple[str, str]]) -> str:
    """``phase outcome x count`` for each run of equal outcomes, in order."""
    out: list[list[Any]] = []
    for item in outcomes:
        if out and out[-1][0] == item:
            out[-1][1] += 1
        else:
            out.append([item, 1])
    return ", ".join(f"{p} {o} x{n}" for (p, o), n in out)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_sigterm_drains_grpc_then_exits_0(local_models: Any, tmp_path: Path) -> None:
    runtime = start_runtime(local_models.lr_dir, tmp_path, MODELSHIP_DRAIN_SECONDS="600")
    load = Load(runtime.grpc)
    thread = threading.Thread(target=load.run, daemon=True)
    try:
        thread.start()
        wait_for(lambda: load.count("before") >= 5, 60, "calls before the signal")
        probe = grpcclient.InferenceServerClient(runtime.grpc)
        assert probe.is_server_ready()
        load.phase = "drain"
        runtime.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not probe.is_server_ready(), 30, "ServerReady to turn false")
        assert probe.is_server_live()
        wait_for(lambda: load.count("drain") >= 20, 60, "calls answered during the drain")
        load.stop.set()
        thread.join(60)
        still_draining = runtime.proc.poll() is None
        runtime.proc.send_signal(signal.SIGTERM)  # a second signal ends the 600 s drain
        runtime.proc.wait(120)
        with pytest.raises(InferenceServerException) as gone:
            probe.is_server_live()
        probe.close()
    finally:
        load.stop.set()
        thread.join(60)
        stop(runtime.proc)
    assert still_draining, "the process exited before the drain was over"
    assert runtime.proc.returncode == 0, runtime.log.read_text()
    assert {o for _, o in load.outcomes} == {"OK"}, runs(load.outcomes)
    assert gone.value.status() == "StatusCode.UNAVAILABLE"


def test_readiness_waits_for_the_grpc_listener(local_models: Any, tmp_path: Path) -> None:
    """grpc is imported and started after HTTP answers; /readyz is 503 ("gRPC not
    listening yet") until then, so once it says ready, gRPC answers at once."""
    port, gport = free_port(), free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [RUNTIME, "serve", "--host", "127.0.0.1", "--port", str(port),
             "--grpc-port", str(gport), "--model-dir", str(local_models.lr_dir)],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "MODELSHIP_DRAIN_SECONDS": "0"})
    refusals: set[str] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
            except httpx.TransportError:  # not listening yet
                time.sleep(0.005)
                continue
            if r.status_code == 200:
                break
            refusals.add(f"{r.status_code} {r.json()['error']}")
        else:
            raise AssertionError(f"/readyz never answered 200:\n{log.read_text()}")
        with grpc.insecure_channel(f"127.0.0.1:{gport}") as channel:  # no wait for ready
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready
    finally:
        stop(proc)
    assert refusals <= {"503 gRPC not listening yet"}, refusals
    assert proc.returncode == 0, log.read_text()

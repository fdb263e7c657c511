"""Bad input gets a 4xx whose message names the problem, never a 500."""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

GOOD = [0.5] * 8
V2 = "/v2/models/strict/infer"


def v2(shape: Any, datatype: str, data: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}


CASES: list[tuple[str, str, Any, int, str]] = [
    # (id, path, body: bytes (raw) or a JSON value, status, message fragment)
    ("malformed-json", "/predict", b'{"features": [1, 2', 400, "malformed JSON"),
    ("empty-body", "/predict", b"", 400, "empty body"),
    ("top-level-array", "/predict", [1, 2, 3], 400, "must be a JSON object"),
    ("top-level-string", "/predict", "hello", 400, "must be a JSON object"),
    ("missing-field", "/predict", {"rows": [GOOD]}, 400, "missing field"),
    ("both-fields", "/predict", {"features": GOOD, "instances": [GOOD]}, 400, "not both"),
    ("features-not-array", "/predict", {"features": 5}, 400, "features must be an array"),
    ("too-few-features", "/predict", {"features": [1, 2, 3]}, 400,
     "features has 3 values; the model takes 8 features"),
    ("too-many-features", "/predict", {"features": [1] * 9}, 400, "takes 8 features"),
    ("string-value", "/predict", {"features": [*GOOD[:7], "abc"]}, 400,
     "features[7] must be a number, got string"),
    ("numeric-string", "/predict", {"features": ["1.5", *GOOD[1:]]}, 400,
     "features[0] must be a number, got string"),
    ("null-value", "/predict", {"features": [None, *GOOD[1:]]}, 400, "got null"),
    ("bool-value", "/predict", {"features": [True, *GOOD[1:]]}, 400, "got boolean"),
    ("object-value", "/predict", {"features": [{}, *GOOD[1:]]}, 400, "got object"),
    ("nan", "/predict", b'{"features": [0.5, NaN, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}', 400,
     "features[1] is NaN; this model takes finite numbers only"),
    ("infinity", "/predict", b'{"features": [0.5, 0.5, Infinity, 0.5, 0.5, 0.5, 0.5, 0.5]}',
     400, "features[2] is Infinity"),
    ("overflow", "/predict", b'{"features": [1e999, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}',
     400, "features[0] is Infinity"),
    ("nan-in-batch", "/predict", b'{"instances": [[1,1,1,1,1,1,1,1],[1,1,1,-Infinity,1,1,1,1]]}',
     400, "instances[1][3] is -Infinity"),
    ("empty-batch", "/predict", {"instances": []}, 400, "instances is empty"),
    ("batch-over-max", "/predict", {"instances": [GOOD] * 11}, 400,
     "instances has 11 rows; the maximum is 10"),
    ("ragged-batch", "/predict", {"instances": [GOOD, GOOD[:5]]}, 400,
     "instances[1] has 5 values"),
    ("row-not-array", "/predict", {"instances": [GOOD, 3]}, 400,
     "instances[1] must be an array"),
    ("v1-missing-instances", "/v1/models/strict:predict", {"features": GOOD}, 400,
     "missing field"),
    ("v1-unknown-model", "/v1/models/nope:predict", {"instances": [GOOD]}, 404,
     "model 'nope' is not served here"),
    ("v2-unknown-model", "/v2/models/nope/infer", v2([1, 8], "FP64", GOOD), 404,
     "not served here"),
    ("v2-unknown-version", "/v2/models/strict/versions/3/infer", v2([1, 8], "FP64", GOOD), 404,
     "version '3' is not served here"),
    ("v2-missing-inputs", V2, {"id": "x"}, 400, '"inputs" must be a non-empty array'),
    ("v2-missing-datatype", V2, {"inputs": [{"name": "x", "shape": [1, 8], "data": GOOD}]}, 400,
     "missing field: inputs[0].datatype"),
    ("v2-shape-mismatch", V2, v2([2, 8], "FP64", GOOD), 400,
     "shape [2, 8] needs 16 elements; data has 8"),
    ("v2-wrong-width", V2, v2([2, 4], "FP64", GOOD), 400, "has 4 features; the model takes 8"),
    ("v2-int-with-floats", V2, v2([1, 8], "INT64", GOOD), 400, "INT64 needs integers"),
    ("v2-int32-overflow", V2, v2([1, 8], "INT32", [2**40] + [1] * 7), 400,
     "does not fit in INT32"),
    ("v2-uint8-over", V2, v2([1, 8], "UINT8", [0, 1, 256, 3, 4, 5, 6, 7]), 400,
     "inputs[0].data[2] (256) does not fit in UINT8: its range is 0..255"),
    ("v2-uint-negative", V2, v2([1, 8], "UINT32", [0, 1, 2, 3, 4, -1, 6, 7]), 400,
     "inputs[0].data[5] (-1) does not fit in UINT32: its range is 0..4294967295"),
    ("v2-int64-over", V2, v2([1, 8], "INT64", [0, 2**63] + [0] * 6), 400,
     "inputs[0].data[1] (9223372036854775808) does not fit in INT64"),
    ("v2-uint64-negative", V2, v2([1, 8], "UINT64", [-1] + [0] * 7), 400,
     "inputs[0].data[0] (-1) does not fit in UINT64"),
    ("v2-int8-under", V2, v2([1, 8], "INT8", [0] * 7 + [-129]), 400,
     "inputs[0].data[7] (-129) does not fit in INT8: its range is -128..127"),
    ("v2-int16-with-floats", V2, v2([1, 8], "INT16", [1.5] * 8), 400,
     "inputs[0].data[0] is float; INT16 needs integers"),
    ("v2-uint8-with-bools", V2, v2([1, 8], "UINT8", [True] * 8), 400,
     "inputs[0].data[0] is boolean; UINT8 needs integers"),
    ("v2-fp16-overflow", V2, v2([1, 8], "FP16", [0.5, 1, 2, 3, 4, 5, 70000, 7]), 400,
     "inputs[0].data[6] (70000.0) overflows FP16: its finite values are within ±65504"),
    ("v2-fp16-overflow-by-column", V2, {"inputs": [
        {"name": f"c{i}", "shape": [2], "datatype": "FP16", "data": [1, -1e5 if i == 3 else 1]}
        for i in range(8)]}, 400, "inputs[3].data[1] (-100000.0) overflows FP16"),
    ("v2-uint16-over-by-column", V2, {"inputs": [
        {"name": f"c{i}", "shape": [1], "datatype": "UINT16", "data": [65536 if i else 0]}
        for i in range(8)]}, 400, "inputs[1].data[0] (65536) does not fit in UINT16"),
    ("v2-bool-with-numbers", V2, v2([1, 8], "BOOL", [1] * 8), 400,
     "inputs[0].data[0] is int; BOOL needs true or false"),
    ("v2-bf16", V2, v2([1, 8], "BF16", GOOD), 400,
     "inputs[0].datatype BF16 is not supported (numpy has no bfloat16"),
    ("v2-unsupported-datatype", V2, v2([1, 8], "BYTES", ["a"] * 8), 400,
     "BYTES: this model takes numbers only; use BOOL, UINT8, UINT16, UINT32, UINT64, INT8, "
     "INT16, INT32, INT64, FP16, FP32 or FP64"),
    ("v2-unknown-datatype", V2, v2([1, 8], "FLOAT", GOOD), 400, "is not a V2 datatype"),
    ("v2-string-in-fp", V2, v2([1, 8], "FP64", ["x", *GOOD[1:]]), 400, "FP64 needs numbers"),
    ("v2-nan", V2, b'{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP64",'
     b'"data":[NaN,1,1,1,1,1,1,1]}]}', 400, "is NaN"),
    ("v2-empty", V2, v2([0, 8], "FP64", []), 400, "is empty"),
    ("v2-unknown-output", V2, {**v2([1, 8], "FP64", GOOD), "outputs": [{"name": "logits"}]},
     400, "unknown output 'logits'"),
    ("v2-too-many-rows", V2, v2([11, 8], "FP64", GOOD * 11), 400, "the maximum is 10"),
]


@pytest.fixture(scope="module")
def client(strict_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=strict_url) as c:
        yield c


@pytest.mark.parametrize(("path", "body", "status", "fragment"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_4xx_naming_the_problem(client: httpx.Client, path: str, body: Any,
                                                status: int, fragment: str) -> None:
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    assert r.headers["x-model-version"] == "7"


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    big = {"instances": [[0.123456789] * 8] * 60}
    r = client.post("/predict", json=big)
    assert r.status_code == 413
    assert "over the 4096 byte limit" in r.json()["error"]


def test_chunked_body_over_the_limit_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"instances": ['
        for _ in range(100):
            yield b"[0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],"
        yield b"[0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]}"

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


ROW = b'{"features": [1,1,1,1,1,1,1,1]}'


@pytest.mark.parametrize("ctype", [None, "application/x-www-form-urlencoded", "text/plain",
                                   "multipart/form-data; boundary=x",
                                   "application/octet-stream", "application/json"])
def test_a_json_body_is_parsed_whatever_its_content_type(client: httpx.Client,
                                                         ctype: str | None) -> None:
    headers = {} if ctype is None else {"content-type": ctype}
    r = client.post("/predict", content=ROW, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["prediction"] in (0, 1)


def test_clients_at_their_defaults(strict_url: str) -> None:
    """requests with data= and httpx with content= send no Content-Type (requests) or
    none at all (httpx); both reach every prediction route."""
    import requests

    for path, body in [("/predict", ROW),
                       ("/v1/models/strict:predict", b'{"instances": [[1,1,1,1,1,1,1,1]]}'),
                       (V2, b'{"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP64", '
                            b'"data": [1,1,1,1,1,1,1,1]}]}')]:
        r = requests.post(strict_url + path, data=body.decode(), timeout=30)
        assert "content-type" not in {k.lower() for k in r.request.headers}
        assert r.status_code == 200, r.text
        h = httpx.post(strict_url + path, content=body, timeout=30)
        assert "content-type" not in h.request.headers
        assert h.status_code == 200, h.text
        same = {k: v for k, v in h.json().items() if k != "latency_ms"}
        assert same == {k: v for k, v in r.json().items() if k != "latency_ms"}


def _curl_line(message: str) -> list[str]:
    start = message.index("curl -H")
    return shlex.split(message[start:])


@pytest.mark.parametrize(("path", "status", "ctype"), [
    ("/predict", 415, "application/x-www-form-urlencoded"),
    ("/v1/models/strict:predict", 415, "application/x-www-form-urlencoded"),
    (V2, 415, "application/x-www-form-urlencoded"),
    ("/v2/models/strict/versions/7/infer", 415, "text/plain"),
    ("/predict", 400, None),
    ("/v1/models/strict:predict", 400, "application/json"),
])
def test_a_body_that_is_not_json_says_so_with_a_curl_line_that_works(
        client: httpx.Client, path: str, status: int, ctype: str | None) -> None:
    headers = {} if ctype is None else {"content-type": ctype}
    r = client.post(path, content=b"features=1&features=2", headers=headers)
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert "malformed JSON" in message
    if ctype is not None and status == 415:
        assert f"the body is sent as {ctype} and is not JSON" in message
    assert "curl -H 'Content-Type: application/json' -d '{" in message
    line = _curl_line(message)
    assert line[-1] == f"{client.base_url}".rstrip("/") + path
    done = subprocess.run([*line, "-s", "-w", "\n%{http_code}"], capture_output=True,
                          text=True, timeout=30)
    body, code = done.stdout.rsplit("\n", 1)
    assert code == "200", body
    assert "error" not in json.loads(body)


def test_a_form_body_from_a_client_at_its_defaults_is_415(client: httpx.Client) -> None:
    r = client.post("/predict", data={"features": "1"})  # a form, as a browser sends it
    assert r.status_code == 415
    assert "application/x-www-form-urlencoded and is not JSON" in r.json()["error"]
    r = client.post("/predict", content=b"")
    assert r.status_code == 400 and "empty body" in r.json()["error"]


def test_json_with_charset_is_accepted(client: httpx.Client) -> None:
    r = client.post("/predict", content=b'{"features": [1,1,1,1,1,1,1,1]}',
                    headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_unknown_route_and_method_are_json_errors(client: httpx.Client) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    r = client.get("/predict")
    assert r.status_code == 405 and "error" in r.json()


def test_nan_is_accepted_by_a_model_that_takes_missing_values(
        local_models: Any, serve: Any) -> None:
    from modelship_runtime import RuntimeSettings, create_app

    url = serve(create_app(RuntimeSettings(model_dir=local_models.rf_dir)))
    row = b'{"features": [NaN, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}'
    r = httpx.post(f"{url}/predict", content=row, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["prediction"] in (0, 1)
    inf = row.replace(b"NaN", b"Infinity")
    r = httpx.post(f"{url}/predict", content=inf, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "features[0] is Infinity" in r.json()["error"]

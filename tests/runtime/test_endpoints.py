"""Every endpoint over real HTTP, against models pulled from the real MLflow registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest


def test_predict_single_row_matches_the_estimator(registry: Any, lr_url: str) -> None:
    row = registry.X[3]
    r = httpx.post(f"{lr_url}/predict", json={"features": row.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prediction"] == int(registry.lr_v1.predict(row.reshape(1, -1))[0])
    np.testing.assert_allclose(body["probability"],
                               registry.lr_v1.predict_proba(row.reshape(1, -1))[0])
    assert body["cache_hit"] is False
    assert 0 < body["latency_ms"] < 5000
    assert r.headers["x-model-version"] == "1"
    assert r.headers["x-request-id"]


def test_predict_batch_matches_the_estimator(registry: Any, rf_url: str) -> None:
    rows = registry.X[:25]
    r = httpx.post(f"{rf_url}/predict", json={"instances": rows.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"] == registry.rf_v1.predict(rows).tolist()
    np.testing.assert_allclose(body["probabilities"], registry.rf_v1.predict_proba(rows))
    assert r.headers["x-model-version"] == "1"


def test_incoming_request_id_is_kept(lr_url: str, registry: Any) -> None:
    r = httpx.post(f"{lr_url}/predict", json={"features": registry.X[0].tolist()},
                   headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    other = httpx.get(f"{lr_url}/healthz")
    assert other.headers["x-request-id"] not in ("", "abc-123")
    assert other.headers["x-model-version"] == "1"


def test_kserve_v1(lr_url: str, registry: Any) -> None:
    rows = registry.X[:4]
    r = httpx.post(f"{lr_url}/v1/models/ms-lr:predict", json={"instances": rows.tolist()})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": registry.lr_v1.predict(rows).tolist()}
    meta = httpx.get(f"{lr_url}/v1/models/ms-lr")
    assert meta.json() == {"name": "ms-lr", "version": "1", "ready": True}
    assert httpx.get(f"{lr_url}/v1/models/other").status_code == 404


def test_v2_server_and_health(lr_url: str) -> None:
    server = httpx.get(f"{lr_url}/v2").json()
    assert server["name"] == "modelship-runtime"
    assert "version" in server and server["extensions"] == ["binary_tensor_data"]
    assert httpx.get(f"{lr_url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{lr_url}/v2/health/ready").json() == {"ready": True}


@pytest.mark.parametrize("path", ["/v2/models/ms-lr", "/v2/models/ms-lr/versions/1"])
def test_v2_model_metadata(lr_url: str, path: str) -> None:
    meta = httpx.get(f"{lr_url}{path}").json()
    assert meta["name"] == "ms-lr" and meta["versions"] == ["1"]
    assert meta["platform"] == "sklearn"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 8]}]
    assert meta["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]},
    ]
    assert meta["parameters"]["classes"] == [0, 1]


@pytest.mark.parametrize("path", ["/v2/models/ms-lr/ready", "/v2/models/ms-lr/versions/1/ready"])
def test_v2_model_ready(lr_url: str, path: str) -> None:
    r = httpx.get(f"{lr_url}{path}")
    assert r.status_code == 200 and r.json()["ready"] is True


@pytest.mark.parametrize("path", ["/v2/models/ms-lr/infer", "/v2/models/ms-lr/versions/1/infer"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_v2_infer(lr_url: str, registry: Any, path: str, datatype: str) -> None:
    rows = registry.X[:3]
    req = {"id": "req-7", "inputs": [{"name": "input-0", "shape": [3, 8], "datatype": datatype,
                                      "data": rows.ravel().tolist()}]}
    r = httpx.post(f"{lr_url}{path}", json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "ms-lr" and body["model_version"] == "1"
    assert body["id"] == "req-7"
    predict, proba = body["outputs"]
    assert predict == {"name": "predict", "shape": [3], "datatype": "INT64",
                       "data": registry.lr_v1.predict(rows).tolist()}
    assert proba["shape"] == [3, 2] and proba["datatype"] == "FP64"
    expected = registry.lr_v1.predict_proba(
        rows.astype(np.float32).astype(np.float64) if datatype == "FP32" else rows)
    np.testing.assert_allclose(proba["data"], expected.ravel(), rtol=1e-6)


@pytest.mark.parametrize("datatype", ["INT32", "INT64"])
def test_v2_infer_integer_inputs_and_nested_data(lr_url: str, registry: Any,
                                                  datatype: str) -> None:
    rows = [[1, 0, -2, 3, 0, 1, 2, -1], [0, 0, 0, 0, 0, 0, 0, 0]]
    req = {"inputs": [{"name": "x", "shape": [2, 8], "datatype": datatype, "data": rows}],
           "outputs": [{"name": "predict"}]}
    r = httpx.post(f"{lr_url}/v2/models/ms-lr/infer", json=req)
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    assert [o["name"] for o in outputs] == ["predict"]
    assert outputs[0]["data"] == registry.lr_v1.predict(np.array(rows, dtype=float)).tolist()


def test_health_and_readiness(lr_url: str) -> None:
    assert httpx.get(f"{lr_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{lr_url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model": "ms-lr", "version": "1"}


async def test_readyz_is_503_until_the_model_is_loaded(lr_dir: Path) -> None:
    from modelship_runtime import RuntimeSettings, create_app

    app = create_app(RuntimeSettings(model_dir=lr_dir))
    transport = httpx.ASGITransport(app=app)  # no lifespan: the model is not loaded
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/v2/health/ready")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
        r = await client.post("/predict", json={"features": [0.0] * 8})
        assert r.status_code == 503 and "not loaded" in r.json()["error"]
        async with app.router.lifespan_context(app):  # what uvicorn runs at startup
            assert (await client.get("/readyz")).status_code == 200
            r = await client.post("/predict", json={"features": [0.0] * 8})
            assert r.status_code == 200


async def test_readiness_waits_for_every_listener_but_predictions_do_not(
        lr_dir: Path) -> None:
    """A listener still starting (serve's gRPC server, started after HTTP answers) fails
    readiness; predictions are answered meanwhile."""
    from modelship_runtime import RuntimeSettings, create_app

    app = create_app(RuntimeSettings(model_dir=lr_dir))
    app.state.drain.starting.add("gRPC")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client, \
            app.router.lifespan_context(app):
        for path in ("/readyz", "/v2/health/ready"):
            r = await client.get(path)
            assert (r.status_code, r.json()) == (503, {"error": "gRPC not listening yet"})
        assert (await client.post("/predict", json={"features": [0.0] * 8})).status_code == 200
        app.state.drain.starting.discard("gRPC")
        for path in ("/readyz", "/v2/health/ready"):
            assert (await client.get(path)).status_code == 200


def test_metrics_use_route_templates(lr_url: str, registry: Any) -> None:
    httpx.post(f"{lr_url}/v1/models/ms-lr:predict", json={"instances": registry.X[:2].tolist()})
    httpx.get(f"{lr_url}/no/such/path")
    text = httpx.get(f"{lr_url}/metrics").text
    assert 'http_requests_total{method="POST",route="/v1/models/{name}:predict",status="200"}' \
        in text
    assert 'route="unmatched",status="404"' in text
    assert "/no/such/path" not in text
    assert 'model_version_info{estimator="LogisticRegression",flavor="sklearn",model="ms-lr",' \
        'version="1"} 1.0' in text
    for name in ("http_request_duration_seconds_bucket", "model_prediction_duration_seconds",
                 "model_predictions_total", "modelship_cache_hits_total",
                 "modelship_cache_misses_total", "modelship_cache_errors_total"):
        assert name in text
    classes = [line for line in text.splitlines()
               if line.startswith("model_predicted_class_total{")]
    assert classes and sum(float(line.rsplit(" ", 1)[1]) for line in classes) >= 2


def test_predicted_class_counts_follow_predictions(rf_url: str, registry: Any) -> None:
    def counts() -> dict[str, float]:
        out = {}
        for line in httpx.get(f"{rf_url}/metrics").text.splitlines():
            if line.startswith("model_predicted_class_total{"):
                label = line.split('class="')[1].split('"')[0]
                out[label] = float(line.rsplit(" ", 1)[1])
        return out

    before = counts()
    rows = registry.X[:40]
    httpx.post(f"{rf_url}/predict", json={"instances": rows.tolist()})
    after = counts()
    predicted = registry.rf_v1.predict(rows).tolist()
    for label in ("0", "1"):
        assert after.get(label, 0) - before.get(label, 0) == predicted.count(int(label))


def test_openapi_docs(lr_url: str) -> None:
    assert httpx.get(f"{lr_url}/docs").status_code == 200
    schema = httpx.get(f"{lr_url}/openapi.json").json()
    for path in ("/predict", "/v1/models/{name}:predict", "/v2/models/{name}/infer",
                 "/v2/models/{name}/versions/{version}/infer", "/healthz", "/readyz", "/metrics"):
        assert path in schema["paths"], path
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert len(body["schema"]["oneOf"]) == 2

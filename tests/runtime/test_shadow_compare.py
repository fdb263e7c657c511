"""How a runtime answers mirrored requests and compares them with the stable's answers.

Apps are served by uvicorn over real TCP (the ``serve`` fixture); the mirrored requests
are sent by hand here, with the headers a stable runtime sends, including broken ones a
client could forge. The two-process behaviour (a stable mirroring to a canary) is in
test_shadow.py; here a stable and a canary app in this process check the regressor
figures, and a real Redis checks that mirrored requests bypass the cache.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import uvicorn
from helpers import free_port
from modelship_operator.rollout.analysis import parse_metrics
from modelship_runtime import RuntimeSettings, create_app
from modelship_runtime.shadow import encode_predictions, mirror_path
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``url``/metrics: (name, sorted labels) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def shadow_headers(stable: object | None = None, *, token: str = "1",
                   raw: bytes | None = None, rid: str = "r-1") -> dict[str, str]:
    headers = {"X-Modelship-Shadow": token, "X-Request-ID": rid,
               "X-Modelship-Stable-Version": "3"}
    if raw is not None:
        headers["X-Modelship-Stable-Prediction"] = raw.decode()
    elif stable is not None:
        headers["X-Modelship-Stable-Prediction"] = orjson.dumps(stable).decode()
    return headers


@pytest.fixture(autouse=True)
def mirror_when_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stables here share this process with their clients and canaries: its CPU time
    is the test's, so shedding copies by it would judge the test, not the stable
    (test_shadow.py runs stables in processes of their own, at the default)."""
    monkeypatch.setenv("MODELSHIP_SHADOW_WHEN_BUSY", "mirror")


@pytest.fixture(scope="module")
def canary(local_models: Any, serve: Callable[..., str]) -> str:
    """The local LogisticRegression, told to log at most 2 disagreements a minute."""
    settings = RuntimeSettings(model_dir=local_models.lr_dir, model_name="sh",
                               model_version="4", shadow_log_per_minute=2)
    return serve(create_app(settings))


def test_rows_are_compared_label_by_label(canary: str, local_models: Any,
                                          caplog: pytest.LogCaptureFixture) -> None:
    X = local_models.X[:20]
    own = local_models.lr.predict(X).tolist()
    # The stable said the opposite on rows 3 and 11 (binary labels 0/1).
    stable = list(own)
    for i in (3, 11):
        stable[i] = 1 - stable[i]
    before = scrape(canary)
    caplog.set_level(logging.INFO, logger="modelship_runtime.shadow")
    for n in range(4):
        r = httpx.post(f"{canary}/predict", json={"instances": X.tolist()},
                       headers=shadow_headers(stable, rid=f"dis-{n}"))
        assert r.status_code == 200 and r.json()["predictions"] == own
    after = scrape(canary)
    name = "model_shadow_agreement_total"
    assert total(after, name, result="agree") - total(before, name, result="agree") == 4 * 18
    assert total(after, name, result="disagree") - total(before, name, result="disagree") \
        == 4 * 2
    received = total(after, "model_shadow_requests_total", route="/predict", status="200") - \
        total(before, "model_shadow_requests_total", route="/predict", status="200")
    assert received == 4
    # At most 2 a minute are logged, each naming the request and the differing rows.
    logged = [r for r in caplog.records if r.getMessage() == "shadow disagreement"]
    assert [r.request_id for r in logged] == ["dis-0", "dis-1"]  # type: ignore[attr-defined]
    first = logged[0]
    assert first.differing_rows == 2 and first.rows == 20  # type: ignore[attr-defined]
    assert [e["row"] for e in first.examples] == [3, 11]  # type: ignore[attr-defined]
    assert first.examples[0] == {"row": 3, "stable": str(stable[3]),  # type: ignore[attr-defined]
                                 "canary": str(own[3])}
    assert first.stable_version == "3"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("headers", "reason"), [
    ({"X-Modelship-Shadow": "1"}, "missing"),
    (shadow_headers(raw=b"[0, 1"), "invalid"),
    (shadow_headers(raw=b'{"labels": [0]}'), "invalid"),
    (shadow_headers([0, 1, 0]), "rows"),
])
def test_unusable_stable_predictions_are_counted_never_agreed(
        canary: str, local_models: Any, headers: dict[str, str], reason: str) -> None:
    before = scrape(canary)
    r = httpx.post(f"{canary}/predict", json={"instances": local_models.X[:2].tolist()},
                   headers=headers)
    assert r.status_code == 200
    after = scrape(canary)
    assert total(after, "model_shadow_uncompared_total", reason=reason) - \
        total(before, "model_shadow_uncompared_total", reason=reason) == 1
    assert total(after, "model_shadow_agreement_total") == \
        total(before, "model_shadow_agreement_total")


def test_v1_and_v2_mirrored_requests_are_compared(canary: str, local_models: Any) -> None:
    X = local_models.X[:3]
    own = local_models.lr.predict(X).tolist()
    before = scrape(canary)
    v1 = httpx.post(f"{canary}/v1/models/sh:predict", json={"instances": X.tolist()},
                    headers=shadow_headers(own))
    v2 = httpx.post(f"{canary}/v2/models/sh/infer", headers=shadow_headers(own), json={
        "inputs": [{"name": "x", "shape": list(X.shape), "datatype": "FP64",
                    "data": X.ravel().tolist()}]})
    assert v1.status_code == v2.status_code == 200
    after = scrape(canary)
    assert total(after, "model_shadow_agreement_total", result="agree") - \
        total(before, "model_shadow_agreement_total", result="agree") == 6
    for route in ("/v1/models/{name}:predict", "/v2/models/{name}/infer"):
        assert total(after, "model_shadow_requests_total", route=route) - \
            total(before, "model_shadow_requests_total", route=route) == 1


def test_with_a_token_only_requests_carrying_it_are_compared(local_models: Any,
                                                             serve: Callable[..., str]) -> None:
    settings = RuntimeSettings(model_dir=local_models.lr_dir, model_name="tok",
                               shadow_token="s3cret")
    url = serve(create_app(settings))
    X = local_models.X[:4]
    own = local_models.lr.predict(X).tolist()
    for token in ("1", "s3cre", "s3cret"):
        assert httpx.post(f"{url}/predict", json={"instances": X.tolist()},
                          headers=shadow_headers(own, token=token)).status_code == 200
    after = scrape(url)
    assert total(after, "model_shadow_uncompared_total", reason="token") == 2
    assert total(after, "model_shadow_agreement_total", result="agree") == 4


def test_mirrored_requests_neither_read_nor_fill_the_cache(
        local_models: Any, serve: Callable[..., str],
        redis_server: tuple[str, subprocess.Popen[bytes]]) -> None:
    settings = RuntimeSettings(model_dir=local_models.lr_dir, model_name="shc",
                               redis_url=redis_server[0], cache_timeout_ms=500)
    url = serve(create_app(settings))
    row = local_models.X[7].tolist()
    own = local_models.lr.predict(local_models.X[7:8]).tolist()
    for _ in range(3):
        r = httpx.post(f"{url}/predict", json={"features": row}, headers=shadow_headers(own))
        assert r.json()["cache_hit"] is False
    samples = scrape(url)
    assert total(samples, "modelship_cache_misses_total") == 0
    assert total(samples, "modelship_cache_hits_total") == 0
    # A client's request of the same row misses (the mirrored ones wrote nothing), then
    # is cached as usual; mirrored requests still do not read it.
    assert httpx.post(f"{url}/predict", json={"features": row}).json()["cache_hit"] is False
    wait_for("the client's prediction is cached", lambda: httpx.post(
        f"{url}/predict", json={"features": row}).json()["cache_hit"] is True, 10)
    r = httpx.post(f"{url}/predict", json={"features": row}, headers=shadow_headers(own))
    assert r.json()["cache_hit"] is False
    assert total(scrape(url), "model_shadow_agreement_total", result="agree") == 4


@pytest.fixture(scope="module")
def regressors(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path, Path, Any]:
    from sklearn.datasets import make_regression
    from sklearn.linear_model import LinearRegression, Ridge

    X, y = make_regression(n_samples=200, n_features=5, noise=10.0, random_state=3)
    stable = LinearRegression().fit(X, y)
    canary = Ridge(alpha=50.0).fit(X, y)
    root = tmp_path_factory.mktemp("regressors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn

        mlflow.sklearn.save_model(stable, root / "stable", pip_requirements=[])
        mlflow.sklearn.save_model(canary, root / "canary", pip_requirements=[])
    return stable, canary, root / "stable", root / "canary", X


def test_a_regressor_canary_reports_absolute_and_relative_differences(
        regressors: tuple[Any, Any, Path, Path, Any], serve: Callable[..., str]) -> None:
    stable_model, canary_model, stable_dir, canary_dir, X = regressors
    canary = serve(create_app(RuntimeSettings(model_dir=canary_dir, model_name="reg",
                                              model_version="2")))
    stable = serve(create_app(RuntimeSettings(model_dir=stable_dir, model_name="reg",
                                              model_version="1", shadow_url=canary)))
    rows = X[:30]
    for i in range(0, 30, 3):  # single rows, batches, V1 and versioned V2
        assert httpx.post(f"{stable}/predict", json={"features": rows[i].tolist()}
                          ).status_code == 200
        assert httpx.post(f"{stable}/predict", json={"instances": rows[i + 1:i + 2].tolist()}
                          ).status_code == 200
        assert httpx.post(f"{stable}/v2/models/reg/versions/1/infer", json={"inputs": [
            {"name": "x", "shape": [1, 5], "datatype": "FP64", "data": rows[i + 2].tolist()}]}
                          ).status_code == 200
    wait_for("30 rows compared", lambda: total(scrape(canary), "model_shadow_abs_diff_count")
             == 30)
    text = httpx.get(f"{canary}/metrics").text
    samples = scrape(canary)
    diffs = np.abs(canary_model.predict(rows) - stable_model.predict(rows))
    assert total(samples, "model_shadow_abs_diff_sum") == pytest.approx(diffs.sum(), rel=1e-9)
    # The operator's analysis reads them: the mean absolute difference of the window.
    window = parse_metrics(text)
    assert window.abs_diff_count == 30
    assert window.abs_diff_sum / window.abs_diff_count == pytest.approx(diffs.mean(), rel=1e-9)
    assert total(samples, "model_shadow_rel_diff_count") == 30
    assert total(samples, "model_shadow_abs_diff_bucket", le="0.0") == 0  # all differ
    assert total(samples, "model_shadow_agreement_total") == 0  # labels are for classifiers
    assert total(samples, "model_shadow_uncompared_total") == 0
    sent = scrape(stable)
    assert total(sent, "modelship_shadow_mirrored_total", outcome="sent") == 30
    assert total(sent, "modelship_shadow_pending") == 0
    # The versioned V2 route went to the canary's unversioned one (its version differs).
    assert total(samples, "model_shadow_requests_total", route="/v2/models/{name}/infer",
                 status="200") == 10


def test_predictions_too_large_for_the_header_are_skipped(
        local_models: Any, serve: Callable[..., str], canary: str) -> None:
    stable = serve(create_app(RuntimeSettings(
        model_dir=local_models.lr_dir, model_name="sh", shadow_url=canary,
        shadow_max_prediction_bytes=64)))
    small = {"instances": local_models.X[:5].tolist()}      # [0,1,1,0,1]: 11 bytes
    large = {"instances": local_models.X[:100].tolist()}    # 201 bytes
    assert httpx.post(f"{stable}/predict", json=small).status_code == 200
    assert httpx.post(f"{stable}/predict", json=large).status_code == 200
    assert httpx.post(f"{stable}/predict", json={"instances": [[1.0]]}).status_code == 400

    def outcome(name: str) -> float:
        return total(scrape(stable), "modelship_shadow_mirrored_total", outcome=name)

    wait_for("one sent, two skipped", lambda: (outcome("sent"), outcome("skipped")) == (1, 2))


def test_mirror_paths_and_header_encoding() -> None:
    assert mirror_path("/predict") == "/predict"
    assert mirror_path("/v1/models/iris:predict") == "/v1/models/iris:predict"
    assert mirror_path("/v2/models/iris/versions/3/infer") == "/v2/models/iris/infer"
    assert mirror_path("/v2/models/iris/infer") == "/v2/models/iris/infer"
    for path in ("/metrics", "/v2/models/iris", "/v1/models/iris", "/predict/x", "/v2/a/b/infer"):
        assert mirror_path(path) is None, path
    assert encode_predictions([0, 1, 2]) == b"[0,1,2]"
    assert encode_predictions(["setosa", 1.5, True]) == b'["setosa",1.5,true]'
    encoded = encode_predictions(["café", "東京"])
    assert encoded is not None and encoded.isascii()
    assert orjson.loads(encoded) == ["café", "東京"]


@pytest.mark.parametrize("url", ["iris--canary:8080", "ftp://iris", "http://", "http://h:99999",
                                 "http://h:8080/?q=1", "http://u:p@h:8080"])
def test_a_bad_shadow_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="shadow_url"):
        RuntimeSettings(shadow_url=url)


def test_shadow_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSHIP_SHADOW_URL", "http://iris--canary.ml.svc:8080/")
    monkeypatch.setenv("MODELSHIP_SHADOW_FRACTION", "0.25")
    s = RuntimeSettings()
    assert (s.shadow_url, s.shadow_fraction, s.shadow_queue) == (
        "http://iris--canary.ml.svc:8080", 0.25, 256)
    monkeypatch.setenv("MODELSHIP_SHADOW_FRACTION", "1.5")
    with pytest.raises(ValidationError):
        RuntimeSettings()


def test_a_burst_is_pipelined_and_every_request_compared(
        local_models: Any, serve: Callable[..., str]) -> None:
    canary = serve(create_app(RuntimeSettings(model_dir=local_models.lr_dir, model_name="pl",
                                              model_version="2")))
    stable = serve(create_app(RuntimeSettings(
        model_dir=local_models.lr_dir, model_name="pl", model_version="1", shadow_url=canary,
        shadow_concurrency=1, shadow_queue=1000, max_concurrency=256)))  # 200 at once
    X = local_models.X

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            responses = await asyncio.gather(*(
                client.post(f"{stable}/predict", json={"features": X[i % len(X)].tolist()})
                for i in range(200)))
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 200

    def settled() -> bool:
        samples = scrape(stable)
        return total(samples, "modelship_shadow_pending") == 0 and total(
            samples, "modelship_shadow_mirrored_total") == 200

    wait_for("200 mirrored requests accounted for", settled)
    assert total(scrape(stable), "modelship_shadow_mirrored_total", outcome="sent") == 200
    assert total(scrape(canary), "model_shadow_agreement_total", result="agree") == 200


class _Thread:
    """An app served by uvicorn on a thread, on a given port (to restart it there)."""

    def __init__(self, app: Any, port: int) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for("uvicorn started", lambda: self.server.started, 60)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_a_restarted_canary_is_reconnected_to(local_models: Any, serve: Callable[..., str]
                                               ) -> None:
    port = free_port()
    canary_url = f"http://127.0.0.1:{port}"

    def canary() -> _Thread:
        return _Thread(create_app(RuntimeSettings(model_dir=local_models.lr_dir,
                                                  model_name="rs", model_version="2")), port)

    stable = serve(create_app(RuntimeSettings(
        model_dir=local_models.lr_dir, model_name="rs", model_version="1",
        shadow_url=canary_url, shadow_concurrency=1)))
    row = {"features": local_models.X[0].tolist()}

    def sent() -> float:
        return total(scrape(stable), "modelship_shadow_mirrored_total", outcome="sent")

    first = canary()
    try:
        for _ in range(3):
            assert httpx.post(f"{stable}/predict", json=row).status_code == 200
        wait_for("3 sent", lambda: sent() == 3)
    finally:
        first.stop()  # closes the stable's kept-alive connection
    second = canary()
    try:
        for _ in range(3):
            assert httpx.post(f"{stable}/predict", json=row).status_code == 200
        wait_for("6 sent", lambda: sent() == 6)
        assert total(scrape(stable), "modelship_shadow_mirrored_total", outcome="failed") == 0
        assert total(scrape(canary_url), "model_shadow_agreement_total", result="agree") == 3
    finally:
        second.stop()


def test_with_api_keys_the_client_s_key_goes_along_and_refused_requests_are_not_chosen(
        local_models: Any, serve: Callable[..., str], tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k-1\n")
    canary = serve(create_app(RuntimeSettings(model_dir=local_models.lr_dir, model_name="ak",
                                              model_version="2", api_keys_file=keys)))
    stable = serve(create_app(RuntimeSettings(
        model_dir=local_models.lr_dir, model_name="ak", model_version="1", api_keys_file=keys,
        shadow_url=canary)))
    body = {"instances": local_models.X[:3].tolist()}
    assert httpx.post(f"{stable}/predict", json=body).status_code == 401
    assert httpx.post(f"{stable}/predict", json=body, headers={"X-API-Key": "k-1"}
                      ).status_code == 200
    assert httpx.post(f"{stable}/v1/models/ak:predict", json=body,
                      headers={"Authorization": "Bearer k-1"}).status_code == 200

    def outcomes() -> dict[str, float]:
        samples = scrape(stable)
        return {o: total(samples, "modelship_shadow_mirrored_total", outcome=o)
                for o in ("sent", "dropped", "failed", "skipped")}

    wait_for("two sent", lambda: outcomes()["sent"] == 2)
    assert outcomes() == {"sent": 2, "dropped": 0, "failed": 0, "skipped": 0}
    got = scrape(canary)
    assert total(got, "model_shadow_requests_total", status="200") == 2
    assert total(got, "model_shadow_agreement_total", result="agree") == 6

"""Answers the runtime will not send: the same output asked for again and again (a tiny
request, a huge reply), and a model's non-finite answer to finite inputs (sent as null
before, with status 200)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

V2 = "/v2/models/strict/infer"


@pytest.fixture(scope="module")
def client(strict_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=strict_url) as c:
        yield c


def v2(rows: list[list[float]], outputs: list[str] | None = None) -> dict[str, object]:
    body: dict[str, object] = {"inputs": [{"name": "x", "shape": [len(rows), len(rows[0])],
                                           "datatype": "FP64",
                                           "data": [v for r in rows for v in r]}]}
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    return body


@pytest.mark.parametrize("outputs", [["predict_proba"] * 2, ["predict", "predict_proba",
                                                              "predict"]])
def test_an_output_asked_for_twice_is_refused(client: httpx.Client,
                                               outputs: list[str]) -> None:
    r = client.post(V2, json=v2([[0.5] * 8], outputs))
    assert r.status_code == 400, r.text
    assert "asked for twice" in r.json()["error"]


def test_each_output_once_is_answered(client: httpx.Client) -> None:
    r = client.post(V2, json=v2([[0.5] * 8], ["predict_proba", "predict"]))
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["predict_proba", "predict"]


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory: pytest.TempPathFactory, serve: Callable[..., str],
                ) -> Iterator[dict[str, tuple[httpx.Client, list[float]]]]:
    """A 3-class LogisticRegression (softmax of +inf and -inf scores is NaN) and a
    LinearRegression (its value overflows to inf), each served over real HTTP."""
    from modelship_runtime import RuntimeSettings, create_app
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LinearRegression, LogisticRegression

    X, y = make_classification(n_samples=200, n_features=4, n_informative=3, n_redundant=0,
                               n_classes=3, random_state=0)
    root = tmp_path_factory.mktemp("overflow")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn

        clf = LogisticRegression(max_iter=500).fit(X, y)
        reg = LinearRegression().fit(X, X @ [3.0, 2.0, 1.0, 5.0])
        mlflow.sklearn.save_model(clf, root / "clf", pip_requirements=[])
        mlflow.sklearn.save_model(reg, root / "reg", pip_requirements=[])
    clients: dict[str, tuple[httpx.Client, list[float]]] = {}
    for name in ("clf", "reg"):
        url = serve(create_app(RuntimeSettings(model_dir=root / name, model_name=name,
                                               model_version="1")))
        est = clf if name == "clf" else reg
        clients[name] = (httpx.Client(base_url=url), overflowing_row(est))
    yield clients
    for c, _ in clients.values():
        c.close()


def overflowing_row(est: Any) -> list[float]:
    """A row of finite values whose answer from ``est`` (scikit-learn itself) is not
    finite: the sign pattern that makes opposite infinite terms meet."""
    for signs in itertools.product((1.0, -1.0), repeat=4):
        row = [s * 1.7e308 for s in signs]
        with np.errstate(all="ignore"):
            out = (est.predict_proba if hasattr(est, "predict_proba") else est.predict)(
                np.array([row]))
        if not np.isfinite(out).all():
            return row
    raise AssertionError("no row overflows this model: the test would show nothing")


@pytest.mark.parametrize("name", ["clf", "reg"])
def test_a_non_finite_answer_to_finite_inputs_is_a_422_not_null(
    overflowing: dict[str, tuple[httpx.Client, list[float]]], name: str,
) -> None:
    client, row = overflowing[name]
    for path, body in (("/predict", {"features": row}),
                       (f"/v2/models/{name}/infer", {"inputs": [{
                           "name": "x", "shape": [1, 4], "datatype": "FP64", "data": row}]}),
                       (f"/v1/models/{name}:predict", {"instances": [row]})):
        r = client.post(path, json=body)
        assert r.status_code == 422, (path, r.text)
        assert "not sent as a number" in r.json()["error"], r.text
    # An ordinary row is answered as before.
    ok = client.post("/predict", json={"features": [0.5, 0.1, -0.3, 1.0]})
    assert ok.status_code == 200, ok.text
    assert isinstance(ok.json()["prediction"], (int, float)), ok.text


def test_a_name_error_stays_small_whatever_the_request_sends() -> None:
    from modelship_runtime.protocols import unknown_or_missing

    given = [f"k{i}" * 100 for i in range(300_000)]
    message = str(unknown_or_missing(given, ["a", "b"], "instances[0]"))
    assert len(message) < 2_000, len(message)
    assert "and 299990 more" in message and "missing feature names ['a', 'b']" in message

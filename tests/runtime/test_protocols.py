"""Every prediction protocol against real ``modelship-runtime serve`` processes.

A 3-class LogisticRegression fitted on a DataFrame (so its MLmodel signature names the
columns, in an order that is not alphabetical) and a LinearRegression without names, both
saved with ``mlflow.sklearn.save_model``. Answers are compared with scikit-learn's own, row
by row, also under 32 concurrent clients whose rows the micro-batcher merges; MLflow's
scoring protocol is spoken by MLflow's own client (``ScoringServerClient``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import free_port, wait_serving

RUNTIME = str(Path(sys.executable).parent / "modelship-runtime")
COLUMNS = ["width (cm)", "alpha", "zeta", "beta", "gamma", "delta"]


@dataclass
class Served:
    X: np.ndarray
    clf: Any
    reg: Any
    clf_url: str
    reg_url: str
    clf_dir: Path
    reg_dir: Path

    def proba(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.clf.predict_proba(self.frame(rows)))

    def labels(self, rows: np.ndarray) -> list[Any]:
        return list(self.clf.predict(self.frame(rows)).tolist())

    def frame(self, rows: np.ndarray) -> Any:
        import pandas as pd

        return pd.DataFrame(rows.reshape(-1, len(COLUMNS)), columns=COLUMNS)


def _serve(model_dir: Path, name: str, log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    env = {**os.environ, "MODELSHIP_MODEL_NAME": name, "MODELSHIP_DRAIN_SECONDS": "0"}
    with log.open("wb") as out:
        proc = subprocess.Popen([RUNTIME, "serve", "--model-dir", str(model_dir), "--host",
                                 "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    return f"http://127.0.0.1:{port}", proc


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import pandas as pd
    from sklearn.datasets import make_classification, make_regression
    from sklearn.linear_model import LinearRegression, LogisticRegression

    X, y = make_classification(n_samples=300, n_features=len(COLUMNS), n_informative=4,
                               n_classes=3, random_state=3)
    clf = LogisticRegression(max_iter=1000).fit(pd.DataFrame(X, columns=COLUMNS), y)
    Xr, yr = make_regression(n_samples=100, n_features=4, random_state=0)
    reg = LinearRegression().fit(Xr, yr)
    root = tmp_path_factory.mktemp("protocols")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's import-time deprecation noise
        import mlflow.sklearn
        from mlflow.models import infer_signature

        signature = infer_signature(pd.DataFrame(X, columns=COLUMNS), y)
        mlflow.sklearn.save_model(clf, root / "clf", signature=signature,
                                  serialization_format="skops", pip_requirements=[])
        mlflow.sklearn.save_model(reg, root / "reg", serialization_format="skops",
                                  pip_requirements=[])
    started = [_serve(root / "clf", "clf", root / "clf.log"),
               _serve(root / "reg", "reg", root / "reg.log")]
    try:
        for (url, proc), log in zip(started, (root / "clf.log", root / "reg.log"), strict=True):
            wait_serving(url, proc, log)
        yield Served(X, clf, reg, started[0][0], started[1][0], root / "clf", root / "reg")
    finally:
        for _, proc in started:
            proc.terminate()
        for _, proc in started:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _v2(rows: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64",
                        "data": rows.ravel().tolist()}], **extra}


def _records(rows: np.ndarray, order: list[str]) -> list[dict[str, float]]:
    return [{c: float(r[COLUMNS.index(c)]) for c in order} for r in rows]


SHUFFLED = ["delta", "alpha", "gamma", "width (cm)", "zeta", "beta"]


def _ask(client: httpx.Client, s: Served, protocol: str, i: int) -> None:
    """One request for row i through ``protocol``; its answer must be scikit-learn's."""
    row = s.X[i : i + 1]
    want, probs = s.labels(row), s.proba(row)
    if protocol == "predict":
        body = client.post(f"{s.clf_url}/predict", json={"features": row[0].tolist()}).json()
        assert [body["prediction"]] == want, body
        np.testing.assert_allclose([body["probability"]], probs, atol=1e-6)
    elif protocol == "v1":
        instances = _records(row, SHUFFLED) if i % 2 else row.tolist()
        got = client.post(f"{s.clf_url}/v1/models/clf:predict",
                          json={"instances": instances}).json()
        assert got == {"predictions": want}, got
        got = client.post(f"{s.clf_url}/v1/models/clf:predict", json={
            "instances": instances, "parameters": {"method": "predict_proba"}}).json()
        np.testing.assert_allclose(got["predictions"], probs, atol=1e-6)
    elif protocol == "v2":
        got = client.post(f"{s.clf_url}/v2/models/clf/infer", json=_v2(row)).json()
        out = {o["name"]: o for o in got["outputs"]}
        assert out["predict"]["data"] == want, got
        np.testing.assert_allclose(np.reshape(out["predict_proba"]["data"], (1, 3)), probs,
                                   atol=1e-6)
    else:
        body = {"dataframe_records": _records(row, SHUFFLED)} if i % 2 else \
            {"dataframe_split": {"columns": SHUFFLED,
                                 "data": [[float(row[0][COLUMNS.index(c)]) for c in SHUFFLED]]}}
        got = client.post(f"{s.clf_url}/invocations", json=body).json()
        assert got == {"predictions": want}, got


def test_32_concurrent_clients_each_get_their_own_rows_answer(served: Served) -> None:
    jobs = [(p, i) for i in range(40) for p in ("predict", "v1", "v2", "invocations")]
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=32)) as client, \
            ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda job: _ask(client, served, *job), jobs))
    metrics = httpx.get(f"{served.clf_url}/metrics").text
    for route in ("/predict", "/v1/models/{name}:predict", "/v2/models/{name}/infer",
                  "/invocations"):
        assert f'route="{route}",status="200"' in metrics, route


def test_kserve_v1_server_routes(served: Served) -> None:
    assert httpx.get(f"{served.clf_url}/").json() == {"status": "alive"}
    assert httpx.get(f"{served.clf_url}/v1/models").json() == {"models": ["clf"]}
    assert httpx.get(f"{served.clf_url}/v1/models/clf").json() == {
        "name": "clf", "version": "0", "ready": True}
    r = httpx.get(f"{served.clf_url}/v1/models/other")
    assert r.status_code == 404 and "'other'" in r.json()["error"]


def test_kserve_v1_inputs_and_batches_of_named_features(served: Served) -> None:
    rows = served.X[:7]
    for key in ("instances", "inputs"):
        r = httpx.post(f"{served.clf_url}/v1/models/clf:predict",
                       json={key: _records(rows, SHUFFLED)})
        assert r.json() == {"predictions": served.labels(rows)}


def _cast(values: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """``values`` as a client would hold them in ``dtype``: integers rounded x10 (unsigned:
    their magnitude) within its range, booleans the positive values."""
    if dtype.kind == "b":
        return values > 0
    if dtype.kind in "iu":
        values = np.round(values * 10)
        values = np.abs(values) if dtype.kind == "u" else values
        values = np.clip(values, np.iinfo(dtype).min, np.iinfo(dtype).max)
    return values.astype(dtype)


NUMERIC = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
           "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32",
           "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64"}


@pytest.mark.parametrize("first", [0, 6], ids=["first-six", "last-six"])
def test_v2_columns_of_every_numeric_datatype(served: Served, first: int) -> None:
    """One V2 tensor per named column, each of another numeric datatype, in JSON and (by
    tritonclient.http at its defaults) in binary: the answer is scikit-learn's for the
    client's arrays cast to float64."""
    httpclient = pytest.importorskip("tritonclient.http")
    rows = served.X[50:57]
    datatypes = list(NUMERIC)[first:first + len(SHUFFLED)]
    arrays = {c: _cast(rows[:, COLUMNS.index(c)], np.dtype(NUMERIC[dt]))
              for c, dt in zip(SHUFFLED, datatypes, strict=True)}
    as_f64 = np.column_stack([arrays[c].astype(np.float64) for c in COLUMNS])
    want = served.labels(as_f64)
    body = {"inputs": [{"name": c, "shape": [len(rows)], "datatype": dt,
                        "data": arrays[c].tolist()}
                       for c, dt in zip(SHUFFLED, datatypes, strict=True)]}
    r = httpx.post(f"{served.clf_url}/v2/models/clf/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["predict"]["data"] == want
    np.testing.assert_allclose(np.reshape(out["predict_proba"]["data"], (-1, 3)),
                               served.proba(as_f64), rtol=1e-12)
    client = httpclient.InferenceServerClient(served.clf_url.removeprefix("http://"))
    try:
        tensors = []
        for c, dt in zip(SHUFFLED, datatypes, strict=True):
            tensors.append(httpclient.InferInput(c, [len(rows)], dt))
            tensors[-1].set_data_from_numpy(arrays[c])
        result = client.infer("clf", tensors)
    finally:
        client.close()
    assert result.as_numpy("predict").tolist() == want
    np.testing.assert_allclose(result.as_numpy("predict_proba"), served.proba(as_f64),
                               rtol=1e-12)


def test_mlflow_scoring_client_and_serving_input(served: Served) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mlflow.models import convert_input_example_to_serving_input
        from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    rows = served.X[10:30]
    frame = served.frame(rows)[SHUFFLED]
    host, port = served.clf_url.removeprefix("http://").split(":")
    client = ScoringServerClient(host, int(port))
    client.wait_server_ready(timeout=30)
    labels = client.invoke(frame).get_predictions(predictions_format="ndarray")
    assert labels.tolist() == served.labels(rows)
    labels = client.invoke(rows).get_predictions(predictions_format="ndarray")
    assert labels.tolist() == served.labels(rows)
    probs = client.invoke(frame, params={"method": "predict_proba"}).get_predictions()
    np.testing.assert_allclose(probs.to_numpy(), served.proba(rows), atol=1e-6)

    serving_input = convert_input_example_to_serving_input(frame)
    assert serving_input is not None
    r = httpx.post(f"{served.clf_url}/invocations", content=serving_input,
                   headers={"Content-Type": "application/json"})
    assert r.json() == {"predictions": served.labels(rows)}


def test_invocations_inputs_instances_and_csv(served: Served) -> None:
    rows = served.X[30:45]
    want = {"predictions": served.labels(rows)}
    url = f"{served.clf_url}/invocations"
    columnar = {c: rows[:, COLUMNS.index(c)].tolist() for c in SHUFFLED}
    assert httpx.post(url, json={"inputs": columnar}).json() == want
    assert httpx.post(url, json={"instances": rows.tolist()}).json() == want
    assert httpx.post(url, json={"instances": _records(rows, SHUFFLED)}).json() == want
    csv_text = served.frame(rows)[SHUFFLED].to_csv(index=False)
    r = httpx.post(url, content=csv_text, headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.json() == want


def test_regressor_through_every_protocol(served: Served) -> None:
    rows = np.random.default_rng(1).normal(size=(5, 4))
    want = served.reg.predict(rows)
    url = served.reg_url
    np.testing.assert_allclose(
        httpx.post(f"{url}/v1/models/reg:predict", json={"instances": rows.tolist()}
                   ).json()["predictions"], want)
    np.testing.assert_allclose(
        httpx.post(f"{url}/invocations", json={"inputs": rows.tolist()}).json()["predictions"],
        want)
    out = httpx.post(f"{url}/v2/models/reg/infer", json=_v2(rows)).json()["outputs"]
    assert [o["name"] for o in out] == ["predict"]
    np.testing.assert_allclose(out[0]["data"], want)


def test_pyfunc_predict_fn_decides_what_invocations_answers(
        served: Served, tmp_path: Path, serve: Callable[..., str]) -> None:
    """A model saved with pyfunc_predict_fn="predict_proba" answers probabilities on
    /invocations, as `mlflow models serve` does; params.method can ask for labels."""
    from modelship_runtime import RuntimeSettings, create_app
    from sklearn.linear_model import LogisticRegression

    X = served.X
    y = (X[:, 0] > 0).astype(int)
    est = LogisticRegression().fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn

        mlflow.sklearn.save_model(est, tmp_path / "m", serialization_format="skops",
                                  pyfunc_predict_fn="predict_proba", pip_requirements=[])
    base = serve(create_app(RuntimeSettings(model_dir=tmp_path / "m")))
    url = f"{base}/invocations"
    got = httpx.post(url, json={"inputs": X[:4].tolist()}).json()["predictions"]
    np.testing.assert_allclose(got, est.predict_proba(X[:4]), atol=1e-6)
    got = httpx.post(url, json={"inputs": X[:4].tolist(), "params": {"method": "predict"}}).json()
    assert got == {"predictions": est.predict(X[:4]).tolist()}
    # V1 keeps its own default: labels
    assert httpx.post(f"{base}/v1/models/m:predict", json={"instances": X[:2].tolist()}
                      ).json() == {"predictions": est.predict(X[:2]).tolist()}


Check = Callable[[httpx.Response], None]


def _bad(status: int, *fragments: str, mlflow: bool = False) -> Check:
    def check(r: httpx.Response) -> None:
        assert r.status_code == status, r.text
        body = r.json()
        if mlflow:
            assert body["error_code"] == ("BAD_REQUEST" if status in (400, 415) else
                                          "RESOURCE_DOES_NOT_EXIST")
            message = body["message"]
        else:
            message = body["error"]
        for f in fragments:
            assert f in message, message
    return check


V1, INV = "/v1/models/{name}:predict", "/invocations"
BAD: list[tuple[str, str, str, Any, Check]] = [
    ("v1-unknown-name", "clf", V1,
     {"instances": [{**dict.fromkeys(COLUMNS, 1.0), "height": 1.0}]},
     _bad(400, "unknown feature names ['height']")),
    ("v1-missing-name", "clf", V1, {"instances": [dict.fromkeys(COLUMNS[1:], 1.0)]},
     _bad(400, "instances[0]", "missing feature names ['width (cm)']")),
    ("v1-renamed", "clf", V1,
     {"instances": [{**dict.fromkeys(COLUMNS[1:], 1.0), "Width": 1.0}]},
     _bad(400, "unknown feature names ['Width']", "missing feature names ['width (cm)']")),
    ("v1-named-value-not-number", "clf", V1,
     {"instances": [{**dict.fromkeys(COLUMNS, 1.0), "zeta": "x"}]},
     _bad(400, "instances[0]['zeta'] must be a number")),
    ("v1-names-without-signature", "reg", V1, {"instances": [{"a": 1.0}]},
     _bad(400, "no names")),
    ("v1-both-keys", "clf", V1, {"instances": [[1.0] * 6], "inputs": [[1.0] * 6]},
     _bad(400, "not both")),
    ("v1-unknown-method", "clf", V1,
     {"instances": [[1.0] * 6], "parameters": {"method": "predict_log_proba"}},
     _bad(400, "parameters.method 'predict_log_proba'", "predict_proba")),
    ("v1-parameters-not-object", "clf", V1, {"instances": [[1.0] * 6], "parameters": [1]},
     _bad(400, "parameters must be an object")),
    ("v1-regressor-proba", "reg", V1,
     {"instances": [[1.0] * 4], "parameters": {"method": "predict_proba"}},
     _bad(400, "predict_proba", "LinearRegression")),
    ("v2-regressor-proba", "reg", "/v2/models/{name}/infer",
     _v2(np.ones((1, 4)), outputs=[{"name": "predict_proba"}]),
     _bad(400, "outputs predict_proba", "LinearRegression")),
    ("inv-no-format", "clf", INV, {"data": [[1.0] * 6]},
     _bad(400, "exactly one of", "['data']", mlflow=True)),
    ("inv-two-formats", "clf", INV, {"instances": [[1.0] * 6], "inputs": [[1.0] * 6]},
     _bad(400, "exactly one of", "['inputs', 'instances']", mlflow=True)),
    ("inv-split-unknown-column", "clf", INV,
     {"dataframe_split": {"columns": [*COLUMNS[:5], "omega"], "data": [[1.0] * 6]}},
     _bad(400, "unknown feature names ['omega']", "missing feature names ['delta']",
          mlflow=True)),
    ("inv-split-short-row", "clf", INV,
     {"dataframe_split": {"columns": COLUMNS, "data": [[1.0] * 5]}},
     _bad(400, "dataframe_split.data[0] has 5 values for 6 columns", mlflow=True)),
    ("inv-records-missing", "clf", INV, {"dataframe_records": [dict.fromkeys(COLUMNS[:5], 1)]},
     _bad(400, "dataframe_records[0]", "missing feature names ['delta']", mlflow=True)),
    ("inv-wrong-width", "clf", INV, {"inputs": [[1.0] * 5]},
     _bad(400, "inputs[0] has 5 values; the model takes 6", mlflow=True)),
    ("inv-nan", "clf", INV, b'{"instances": [[1, 1, 1, 1, 1, NaN]]}',
     _bad(400, "NaN", mlflow=True)),
    ("inv-regressor-proba", "reg", INV,
     {"inputs": [[1.0] * 4], "params": {"method": "predict_proba"}},
     _bad(400, "params.method predict_proba", "LinearRegression", mlflow=True)),
    ("inv-not-json", "clf", INV, b"{nope", _bad(400, "malformed JSON", mlflow=True)),
    ("inv-csv-bad-header", "clf", INV, ("text/csv", "a,b,c,d,e,f\n1,2,3,4,5,6\n"),
     _bad(400, "the CSV header", "unknown feature names", mlflow=True)),
    ("inv-csv-not-number", "clf", INV,
     ("text/csv", ",".join(f'"{c}"' for c in COLUMNS) + "\n1,2,x,4,5,6\n"),
     _bad(400, "CSV row 1, column 'zeta': 'x' is not a number", mlflow=True)),
    ("inv-csv-ragged", "clf", INV,
     ("text/csv", ",".join(f'"{c}"' for c in COLUMNS) + "\n1,2,3\n"),
     _bad(400, "CSV row 1 has 3 values for 6 columns", mlflow=True)),
    ("inv-csv-header-only", "clf", INV, ("text/csv", ",".join(f'"{c}"' for c in COLUMNS)),
     _bad(400, "no rows", mlflow=True)),
    ("inv-media-type", "clf", INV, ("application/xml", "<x/>"),
     _bad(415, "application/xml", "text/csv", mlflow=True)),
]


@pytest.mark.parametrize(("case", "model", "path", "body", "check"), BAD,
                         ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_naming_the_problem(served: Served, case: str, model: str,
                                               path: str, body: Any, check: Check) -> None:
    base = served.clf_url if model == "clf" else served.reg_url
    url = base + path.format(name=model)
    if isinstance(body, bytes):
        r = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
    elif isinstance(body, tuple):
        r = httpx.post(url, content=body[1], headers={"Content-Type": body[0]})
    else:
        r = httpx.post(url, json=body)
    check(r)


@pytest.mark.parametrize(("inputs", "columns"), [
    ('[{"type": "double", "name": "b", "required": true}, {"type": "long", "name": "a"}]',
     ["b", "a"]),
    ('[{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 4]}}]', None),
    ('[{"type": "double"}, {"type": "double"}]', None),  # unnamed columns
    ('[{"type": "double", "name": "a"}, {"type": "double", "name": "a"}]', None),
    # a DataFrame's unnamed columns: MLflow keeps pandas' integer names
    ('[{"type": "double", "name": 1, "required": true}, {"type": "double", "name": 0}]',
     ["1", "0"]),
    ('[{"type": "double", "name": true}, {"type": "double", "name": 0}]', None),
    ("not json", None),
    (None, None),
])
def test_signature_columns(inputs: Any, columns: list[str] | None) -> None:
    from modelship_runtime.signature import signature_columns

    assert signature_columns(inputs) == columns


@pytest.mark.parametrize(("signature", "fitted", "n", "columns", "warns"), [
    (["b", "a"], None, 2, ["b", "a"], False),
    (None, ["x", "y"], 2, ["x", "y"], False),
    (["b", "a"], ["a", "b"], 2, ["a", "b"], False),  # the estimator's order is the positions
    (["b", "a", "c"], None, 2, None, True),
    (["p", "q"], ["a", "b"], 2, ["a", "b"], True),
    (None, None, None, None, False),
])
def test_input_names_follow_the_estimator(signature: list[str] | None,
                                          fitted: list[str] | None, n: int | None,
                                          columns: list[str] | None, warns: bool) -> None:
    from modelship_runtime.signature import choose_columns

    got, problem = choose_columns(signature, fitted, n)
    assert got == columns and (problem is not None) == warns


def test_invocations_refuses_a_predict_fn_it_does_not_serve() -> None:
    from modelship_runtime.dataplane import Validator
    from modelship_runtime.errors import BadRequest
    from modelship_runtime.invocations import parse
    from modelship_runtime.model import ModelInfo

    info = ModelInfo("m", "1", estimator="LogisticRegression", n_features=2, has_proba=True,
                     predict_fn="predict_log_proba")
    v = Validator(2, False, 10)
    with pytest.raises(BadRequest, match="predict_fn 'predict_log_proba'"):
        parse(b'{"inputs": [[1, 2]]}', b"application/json", v, info)
    with pytest.raises(BadRequest, match="predict_fn 'predict_log_proba'"):
        parse(b"a,b\n1,2\n", b"text/csv", v, info)
    rows, proba = parse(b'{"inputs": [[1, 2]], "params": {"method": "predict_proba"}}',
                        None, v, info)
    assert rows.tolist() == [[1.0, 2.0]] and proba
    # no input names: columns go by position, whatever they are called
    rows, proba = parse(b'{"dataframe_split": {"columns": ["x", "y"], "data": [[3, 4]]}}',
                        b"application/json; charset=utf-8", v, ModelInfo("m", "1"))
    assert rows.tolist() == [[3.0, 4.0]] and not proba


def test_a_frame_of_unnamed_columns_is_served_by_its_integer_names(
        tmp_path: Path) -> None:
    """Fitted and logged from a DataFrame nobody named (pandas names its columns 0, 1, ...;
    MLflow's signature keeps the integers): MLflow's own serving input of such a frame, and
    the same columns sent in another order, by CSV header or as records, are answered as
    scikit-learn answers the frame."""
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(n_samples=200, n_features=5, n_informative=3, random_state=5)
    frame = pd.DataFrame(X)
    clf = LogisticRegression(max_iter=500).fit(frame, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn
        from mlflow.models import infer_signature
        from mlflow.models.utils import convert_input_example_to_serving_input

        mlflow.sklearn.save_model(clf, tmp_path / "model",
                                  signature=infer_signature(frame, y),
                                  serialization_format="skops", pip_requirements=[])
        served_input = convert_input_example_to_serving_input(frame.iloc[:6])
    assert served_input is not None
    url, proc = _serve(tmp_path / "model", "unnamed", tmp_path / "serve.log")
    try:
        wait_serving(url, proc, tmp_path / "serve.log")
        want = clf.predict(frame.iloc[:6]).tolist()
        order = [3, 0, 4, 2, 1]
        shuffled = frame.iloc[:6][order]
        bodies = [
            (served_input.encode(), "application/json"),
            (json.dumps({"dataframe_split": json.loads(shuffled.to_json(orient="split"))})
             .encode(), "application/json"),
            (json.dumps({"dataframe_records": json.loads(shuffled.to_json(orient="records"))})
             .encode(), "application/json"),
            (shuffled.to_csv(index=False).encode(), "text/csv"),
        ]
        for body, content_type in bodies:
            r = httpx.post(f"{url}/invocations", content=body,
                           headers={"Content-Type": content_type}, timeout=30)
            assert r.status_code == 200, (body[:80], r.text)
            assert r.json() == {"predictions": want}, body[:80]
        v1 = httpx.post(f"{url}/v1/models/unnamed:predict", timeout=30, json={
            "instances": json.loads(shuffled.to_json(orient="records"))})
        assert v1.status_code == 200 and v1.json() == {"predictions": want}, v1.text
    finally:
        proc.terminate()
        proc.wait(30)

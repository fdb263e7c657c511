"""A zoo of scikit-learn models, logged as users log them, served, and asked through every
protocol: each answer must be scikit-learn's own on the same rows.

Each model is logged to a real MLflow server with ``mlflow.sklearn.log_model`` (MLflow's
default serialization, skops, with the trusted types MLflow asks for; some with
cloudpickle; some with ``signature=infer_signature(...)`` and an ``input_example``, some
without), registered, and served by its own ``modelship-runtime serve --model-uri
models:/NAME/1`` (HTTP and gRPC). The rows of every request go through the runtime's own
JSON, KServe V1 (rows as arrays and as named features in another order), Open Inference
V2 as JSON, as tritonclient.http sends it by default (binary tensors) and over gRPC with
tritonclient.grpc (string columns as BYTES tensors, one tensor per column), and MLflow's
``/invocations`` (dataframe_split and dataframe_records in another column order than the
signature's, instances, columnar inputs, CSV). Labels must be equal, values and
probabilities equal to 1e-6. Asking a model without probabilities for them is a 400; a
model holding a type the runtime does not trust is refused at start (exit 8, one line).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import clean_env, free_port, wait_serving

pd = pytest.importorskip("pandas")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] missing")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] missing")

RUNTIME = str(Path(sys.executable).parent / "modelship-runtime")
N_TRAIN, N_ASK = 60, 5


@dataclass
class Case:
    """One model of the zoo: its data (a DataFrame, a text Series or an array), labels,
    and how it is logged."""

    name: str
    estimator: Any
    X: Any
    y: Any
    signature: bool = True
    cloudpickle: bool = False

    @property
    def named(self) -> bool:
        return not isinstance(self.X, np.ndarray)

    def ask(self) -> Any:
        """The rows every protocol sends: held-out rows of the same kind as X."""
        return self.X.iloc[N_TRAIN:] if self.named else self.X[N_TRAIN:]

    def frame(self) -> Any:
        rows = self.ask()
        if isinstance(rows, pd.Series):
            return rows.to_frame()
        if isinstance(rows, np.ndarray):
            return pd.DataFrame(rows, columns=[f"c{i}" for i in range(rows.shape[1])])
        return rows


def _zoo() -> list[Case]:
    from sklearn.cluster import KMeans
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        IsolationForest,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multioutput import MultiOutputClassifier
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import SVC

    rng = np.random.default_rng(7)
    n = N_TRAIN + N_ASK
    num = pd.DataFrame({"b": rng.normal(size=n), "a": rng.normal(size=n),
                        "c": rng.normal(size=n)})  # not in alphabetical order
    pets = np.where(num.a + num.b > 0, "dog", "cat")
    three = np.array(["bird", "cat", "dog"])[(num.a > 0).astype(int) + (num.c > 0.5)]
    ints = ((num.a > 0).astype(int) + (num.c > 0.5)).to_numpy()
    mixed = pd.DataFrame({"color": rng.choice(["red", "green", "blue"], n),
                          "size": rng.normal(size=n),
                          "shape": rng.choice(["round", "square"], n),
                          "weight": rng.normal(size=n)})
    mixed_y = np.where((mixed.color == "red") | (mixed["size"] > 0.5), "dog", "cat")
    words = ["good", "bad", "fine", "awful", "great", "meh"]
    text = pd.Series([" ".join(rng.choice(words, 4)) for _ in range(n)], name="review")
    text_y = np.array([int("good" in t or "great" in t) for t in text])
    gaps = num.to_numpy().copy()
    gaps[rng.random(gaps.shape) < 0.25] = np.nan
    counts = pd.DataFrame(rng.integers(0, 10, size=(n, 3)), columns=["x", "y", "z"])
    holes = mixed.copy()  # missing numbers everywhere, missing categories when training
    holes.loc[rng.random(n) < 0.3, "size"] = np.nan
    holes.loc[rng.random(n) < 0.3, "weight"] = np.nan
    holes["color"] = holes["color"].astype(object)
    holes.loc[(rng.random(n) < 0.3) & (np.arange(n) < N_TRAIN), "color"] = np.nan

    def encode(dense: bool = False) -> Any:
        return ColumnTransformer([
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=not dense),
             ["color", "shape"]),
            ("num", StandardScaler(), ["size", "weight"])])

    return [
        Case("scaled-lr", Pipeline([("scale", StandardScaler()),
                                    ("lr", LogisticRegression())]), num, ints),
        Case("mixed-pets", Pipeline([("encode", encode()), ("lr", LogisticRegression())]),
             mixed, mixed_y),
        Case("imputed", Pipeline([("encode", ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["size", "weight"]),
            ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                  OneHotEncoder(handle_unknown="ignore")),
             ["color", "shape"])])), ("lr", LogisticRegression())]), holes, mixed_y),
        Case("pandas-output", Pipeline([("encode", encode(dense=True)),
                                        ("lr", LogisticRegression())]
                                       ).set_output(transform="pandas"), mixed, mixed_y),
        Case("mixed-pets-unsigned", Pipeline([("encode", encode()),
                                              ("lr", LogisticRegression())]),
             mixed, mixed_y, signature=False, cloudpickle=True),
        Case("three-pets", LogisticRegression(), num.to_numpy(), three, signature=False),
        Case("forest", RandomForestClassifier(n_estimators=5, random_state=0), num, ints),
        Case("boosted-pets", GradientBoostingClassifier(n_estimators=5, random_state=0),
             num.to_numpy(), pets, signature=False, cloudpickle=True),
        Case("hist-gaps", HistGradientBoostingClassifier(max_iter=5), gaps, pets,
             signature=False),
        Case("hist-gaps-reg", HistGradientBoostingRegressor(max_iter=5), gaps,
             num.a.to_numpy(), signature=False),
        Case("forest-reg", RandomForestRegressor(n_estimators=5, random_state=0), num,
             num.a * 2),
        Case("two-outputs", Ridge(), num, np.c_[num.a, num.b - num.c]),
        Case("multi-label", MultiOutputClassifier(LogisticRegression()), num.to_numpy(),
             np.c_[ints, (num.b > 0).astype(int)], signature=False),
        Case("svc", SVC(), num.to_numpy(), pets, signature=False),
        Case("kmeans", KMeans(n_clusters=3, n_init=2, random_state=0), num.to_numpy(), None,
             signature=False),
        Case("outliers", IsolationForest(n_estimators=5, random_state=0), num, None),
        Case("float32", LogisticRegression(), num.astype(np.float32), ints),
        Case("int64", LogisticRegression(max_iter=500), counts, ints),
        Case("reviews", Pipeline([("tfidf", TfidfVectorizer()),
                                  ("lr", LogisticRegression())]), text, text_y),
    ]


@dataclass
class Served:
    case: Case
    url: str
    grpc: str

    @property
    def name(self) -> str:
        return f"zoo-{self.case.name}"


def _log(case: Case, mlflow: Any) -> None:
    import skops.io
    from mlflow.models import infer_signature

    est, X = case.estimator, case.X
    train = X.iloc[:N_TRAIN] if case.named else X[:N_TRAIN]
    if case.y is None:
        est.fit(train)
    else:
        est.fit(train, case.y[:N_TRAIN])
    kwargs: dict[str, Any] = {}
    if case.signature:
        kwargs["signature"] = infer_signature(train, est.predict(train))
        kwargs["input_example"] = (train.to_frame() if isinstance(train, pd.Series)
                                   else train).iloc[:3]
    if case.cloudpickle:
        kwargs["serialization_format"] = "cloudpickle"
    else:  # MLflow's default, skops, asks to be told the types it does not trust itself
        kwargs["skops_trusted_types"] = skops.io.get_untrusted_types(data=skops.io.dumps(est))
    mlflow.sklearn.log_model(est, name=case.name, registered_model_name=f"zoo-{case.name}",
                             pip_requirements=[], await_registration_for=0, **kwargs)


CASES = [c.name for c in _zoo()]


@pytest.fixture(scope="module")
def zoo(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[dict[str, Served]]:
    """Every model of the zoo logged, registered and served by its own runtime."""
    root = tmp_path_factory.mktemp("zoo")
    cases = _zoo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's deprecation and user warnings
        import mlflow
        import mlflow.sklearn

        mlflow.set_tracking_uri(mlflow_server)
        with mlflow.start_run():
            for case in cases:
                _log(case, mlflow)
    started: list[tuple[Served, subprocess.Popen[bytes], Path]] = []
    try:
        for case in cases:
            port, gport = free_port(), free_port()
            log = root / f"{case.name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [RUNTIME, "serve", "--model-uri", f"models:/zoo-{case.name}/1",
                     "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(gport)],
                    stdout=out, stderr=subprocess.STDOUT,
                    env=clean_env(MLFLOW_TRACKING_URI=mlflow_server,
                                  MODELSHIP_DRAIN_SECONDS="0"))
            started.append((Served(case, f"http://127.0.0.1:{port}", f"127.0.0.1:{gport}"),
                            proc, log))
        for served, proc, log in started:
            wait_serving(served.url, proc, log)
        yield {s.case.name: s for s, _, _ in started}
    finally:
        for _, proc, _ in started:
            proc.terminate()
        for _, proc, _ in started:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# --- what scikit-learn says, and what was answered ----------------------------------


def _want(case: Case) -> tuple[list[Any], np.ndarray | None]:
    est, rows = case.estimator, case.ask()
    labels = np.asarray(est.predict(rows)).tolist()
    proba = None
    if hasattr(est, "predict_proba") and not case.name.startswith("multi"):
        proba = np.asarray(est.predict_proba(rows))
    return labels, proba


def _same(got: Any, case: Case) -> None:
    want, _ = _want(case)
    got = np.asarray(got).reshape(np.shape(want)).tolist()
    flat_want = np.ravel(np.asarray(want, dtype=object))
    if all(isinstance(w, float) for w in flat_want):
        np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want), rtol=1e-6,
                                   atol=1e-9)
    else:
        assert got == want, (got, want)


def _same_proba(got: Any, case: Case) -> None:
    _, want = _want(case)
    assert want is not None
    np.testing.assert_allclose(np.asarray(got, dtype=float).reshape(want.shape), want,
                               atol=1e-6)


def _json(value: Any) -> Any:
    """A cell as JSON carries it: numbers and strings, a missing value as null (as
    pandas writes NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _rows(case: Case) -> list[list[Any]]:
    return [[_json(v) for v in row] for row in case.frame().itertuples(index=False)]


def _records(case: Case, reverse: bool = False) -> list[dict[str, Any]]:
    frame = case.frame()
    columns = list(frame.columns)[::-1] if reverse else list(frame.columns)
    return [{c: _json(row[c]) for c in columns} for _, row in frame.iterrows()]


def _post(url: str, **kwargs: Any) -> Any:
    r = httpx.post(url, timeout=30, **kwargs)
    assert r.status_code == 200, r.text
    return r.json()


def _strings(column: Any) -> bool:
    return getattr(column, "dtype", np.dtype(float)).kind not in "fiub"


def _v2_tensors(case: Case) -> list[tuple[str, str, np.ndarray]]:
    """(name, datatype, values) of the V2 input tensors: one numeric matrix for a model
    of numbers (float32 columns as FP32; the int64 case's counts, 0 to 9, as a client
    holding them in uint8 sends them), else one tensor per column (BYTES for strings)."""
    frame = case.frame()
    if not any(_strings(frame[c]) for c in frame.columns):
        datatype = {"f": "FP32" if case.name == "float32" else "FP64", "i": "UINT8"}
        kind = frame.to_numpy().dtype.kind
        dt = datatype.get(kind, "FP64")
        values = frame.to_numpy(dtype={"FP32": np.float32, "UINT8": np.uint8}.get(dt,
                                                                                   np.float64))
        return [("input-0", dt, values)]
    out = []
    for c in frame.columns:
        col = frame[c].to_numpy()
        if _strings(frame[c]):
            out.append((c, "BYTES", col.astype(object).reshape(-1, 1)))
        else:
            out.append((c, "FP64", col.astype(np.float64).reshape(-1, 1)))
    return out


# --- every protocol -----------------------------------------------------------------


def own(s: Served) -> None:
    case, url = s.case, s.url
    rows = _rows(case)
    _, proba = _want(case)
    body = _post(f"{url}/predict", json={"instances": rows})
    _same(body["predictions"], case)
    if proba is not None:
        _same_proba(body["probabilities"], case)
    else:
        assert body["probabilities"] is None
    one = _post(f"{url}/predict", json={"features": rows[0]})
    assert [one["prediction"]] == body["predictions"][:1]


def kserve_v1(s: Served) -> None:
    case, url = s.case, f"{s.url}/v1/models/{s.name}:predict"
    _, proba = _want(case)
    _same(_post(url, json={"instances": _rows(case)})["predictions"], case)
    if proba is not None:
        _same_proba(_post(url, json={"instances": _rows(case), "parameters": {
            "method": "predict_proba"}})["predictions"], case)
    if case.named:
        _same(_post(url, json={"inputs": _records(case, reverse=True)})["predictions"], case)
    else:
        r = httpx.post(url, json={"instances": _records(case)})
        assert r.status_code == 400 and "have no names" in r.json()["error"], r.text


def v2_json(s: Served) -> None:
    case = s.case
    inputs = [{"name": name, "datatype": dt, "shape": list(values.shape),
               "data": [_json(v) for v in values.ravel()]}
              for name, dt, values in _v2_tensors(case)]
    body = _post(f"{s.url}/v2/models/{s.name}/infer", json={"inputs": inputs})
    out = {o["name"]: o for o in body["outputs"]}
    _same(out["predict"]["data"], case)
    assert out["predict"]["shape"] == list(np.shape(_want(case)[0]))
    if _want(case)[1] is not None:
        _same_proba(out["predict_proba"]["data"], case)
    if case.named:  # one tensor per column, named, in another order (MLServer's codec)
        frame = case.frame()
        columns = [{"name": c, "datatype": "BYTES" if _strings(frame[c]) else "FP64",
                    "shape": [len(frame), 1], "data": [_json(v) for v in frame[c]]}
                   for c in reversed(frame.columns)]
        body = _post(f"{s.url}/v2/models/{s.name}/infer", json={"inputs": columns})
        _same({o["name"]: o for o in body["outputs"]}["predict"]["data"], case)


def _triton(s: Served, module: Any, address: str) -> None:
    case = s.case
    client = module.InferenceServerClient(address)
    inputs = []
    for name, dt, values in _v2_tensors(case):
        tensor = module.InferInput(name, list(values.shape), dt)
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    outputs = None
    if module is httpclient:  # answers in binary too
        outputs = [module.InferRequestedOutput("predict", binary_data=True)]
        if _want(case)[1] is not None:
            outputs.append(module.InferRequestedOutput("predict_proba", binary_data=True))
    result = client.infer(s.name, inputs, outputs=outputs)
    labels = result.as_numpy("predict")
    if labels.dtype == object:
        labels = np.array([x.decode() for x in labels.ravel()]).reshape(labels.shape)
    _same(labels, case)
    if _want(case)[1] is not None:
        _same_proba(result.as_numpy("predict_proba"), case)
    client.close()


def triton_http(s: Served) -> None:
    _triton(s, httpclient, s.url.removeprefix("http://"))


def triton_grpc(s: Served) -> None:
    _triton(s, grpcclient, s.grpc)


def invocations(s: Served) -> None:
    case, url = s.case, f"{s.url}/invocations"
    frame = case.frame()
    columns = list(frame.columns)
    order = columns[::-1] if case.named else columns  # unnamed: taken by position
    rows = _rows(case)
    split = {"columns": order, "data": [[r[columns.index(c)] for c in order] for r in rows]}
    _same(_post(url, json={"dataframe_split": split})["predictions"], case)
    _same(_post(url, json={"dataframe_records": _records(case, reverse=case.named)}
                )["predictions"], case)
    _same(_post(url, json={"instances": rows})["predictions"], case)
    columnar = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
    _same(_post(url, json={"inputs": columnar})["predictions"], case)
    csv_text = frame[order].to_csv(index=False)
    _same(_post(url, content=csv_text, headers={"Content-Type": "text/csv"})["predictions"],
          case)
    if _want(case)[1] is not None:
        _same_proba(_post(url, json={"dataframe_split": split, "params": {
            "method": "predict_proba"}})["predictions"], case)


PROTOCOLS: dict[str, Callable[[Served], None]] = {
    f.__name__: f for f in (own, kserve_v1, v2_json, triton_http, triton_grpc, invocations)}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("model", CASES)
def test_every_protocol_answers_what_scikit_learn_answers(
        zoo: dict[str, Served], model: str, protocol: str) -> None:
    PROTOCOLS[protocol](zoo[model])


@pytest.mark.parametrize("model", ["svc", "kmeans", "forest-reg", "multi-label"])
def test_probabilities_of_a_model_without_them_are_a_400_naming_it(
        zoo: dict[str, Served], model: str) -> None:
    s = zoo[model]
    rows = _rows(s.case)
    answers = [
        httpx.post(f"{s.url}/v1/models/{s.name}:predict",
                   json={"instances": rows, "parameters": {"method": "predict_proba"}}),
        httpx.post(f"{s.url}/v2/models/{s.name}/infer", json={
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [len(rows), len(rows[0])],
                        "data": [v for r in rows for v in r]}],
            "outputs": [{"name": "predict_proba"}]}),
        httpx.post(f"{s.url}/invocations",
                   json={"instances": rows, "params": {"method": "predict_proba"}}),
    ]
    for r in answers:
        assert r.status_code == 400, r.text
        body = r.json()
        assert "has no predict_proba" in body.get("error", body.get("message", "")), body


def test_bad_values_of_a_typed_model_are_a_400_naming_the_cell(
        zoo: dict[str, Served]) -> None:
    s = zoo["mixed-pets"]
    url = f"{s.url}/v1/models/{s.name}:predict"
    row = {"color": "red", "size": 0.5, "shape": "round", "weight": 1.0}
    r = httpx.post(url, json={"instances": [{**row, "size": "large"}]})
    assert r.status_code == 400, r.text
    assert "instances[0][1] ('size') must be a number, got string" in r.text, r.text
    r = httpx.post(url, json={"instances": [{**row, "color": 3}]})
    assert r.status_code == 400, r.text
    assert "instances[0][0] ('color') must be a string, got int" in r.text, r.text
    # an unseen category is what OneHotEncoder(handle_unknown="ignore") takes: all zeros
    r = httpx.post(url, json={"instances": [{**row, "color": "purple"}]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == s.case.estimator.predict(
        pd.DataFrame([{**row, "color": "purple"}])).tolist()
    r = httpx.post(f"{s.url}/invocations", json={"dataframe_records": [{**row, "size": None}]})
    assert r.status_code == 400, r.text
    assert "[0][1] ('size') is null; this model takes no missing values" in r.text, r.text


def test_a_text_model_takes_one_string_per_row_unwrapped(zoo: dict[str, Served]) -> None:
    """``{"instances": ["text", ...]}``, as KServe V1 and MLflow clients send one column."""
    s = zoo["reviews"]
    texts = s.case.ask().tolist()
    want = {"predictions": s.case.estimator.predict(s.case.ask()).tolist()}
    assert _post(f"{s.url}/v1/models/{s.name}:predict", json={"instances": texts}) == want
    assert _post(f"{s.url}/invocations", json={"inputs": texts}) == want
    r = httpx.post(f"{s.url}/v1/models/{s.name}:predict", json={"instances": [texts[0], 3]})
    assert r.status_code == 400, r.text
    assert "instances[1][0] ('review') must be a string, got int" in r.text, r.text


def test_an_imputing_pipeline_takes_missing_numbers_and_categories(
        zoo: dict[str, Served]) -> None:
    """A pipeline's own tags refuse NaN; one whose every path meets an imputer first takes
    null numbers and null categories, as pandas writes NaN."""
    s = zoo["imputed"]
    rows = [{"color": None, "size": None, "shape": "round", "weight": 1.0},
            {"color": "red", "size": 0.5, "shape": None, "weight": None}]
    want = s.case.estimator.predict_proba(pd.DataFrame(rows).fillna(np.nan))
    got = _post(f"{s.url}/v1/models/{s.name}:predict", json={
        "instances": rows, "parameters": {"method": "predict_proba"}})["predictions"]
    np.testing.assert_allclose(got, want, atol=1e-6)
    inputs = [{"name": c, "datatype": "BYTES" if c in ("color", "shape") else "FP64",
               "shape": [2, 1], "data": [r[c] for r in rows]} for c in rows[0]]
    got = _post(f"{s.url}/v2/models/{s.name}/infer", json={"inputs": inputs})
    np.testing.assert_allclose({o["name"]: o for o in got["outputs"]}["predict_proba"][
        "data"], want.ravel(), atol=1e-6)
    csv_text = "color,size,shape,weight\n,,round,1.0\nred,0.5,,\n"
    got = _post(f"{s.url}/invocations", content=csv_text, headers={
        "Content-Type": "text/csv"})["predictions"]
    assert got == s.case.estimator.predict(pd.DataFrame(rows).fillna(np.nan)).tolist()
    # a pipeline without an imputer still refuses them, by name
    r = httpx.post(f"{zoo['scaled-lr'].url}/v1/models/zoo-scaled-lr:predict",
                   json={"instances": [[None, 1.0, 2.0]]})
    assert r.status_code == 400, r.text
    assert "instances[0][0] must be a number, got null" in r.text, r.text
    r = httpx.post(f"{zoo['mixed-pets'].url}/v2/models/zoo-mixed-pets/infer", json={
        "inputs": [{**i, "data": [None, "red"] if i["name"] == "color" else i["data"]}
                   for i in inputs]})
    assert r.status_code == 400, r.text
    assert "[0][0] ('color') must be a string, got null" in r.text, r.text


def test_grpc_typed_contents_as_kserve_clients_send_them(zoo: dict[str, Served]) -> None:
    """ModelInfer with each column in typed ``contents`` (bytes_contents for strings), as
    clients that do not use raw_input_contents send it."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    s = zoo["mixed-pets"]
    frame = s.case.frame()
    request = service_pb2.ModelInferRequest(model_name=s.name)
    for c in frame.columns:
        tensor = request.inputs.add(name=c, shape=[len(frame)])
        if _strings(frame[c]):
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(v.encode() for v in frame[c])
        else:
            tensor.datatype = "FP64"
            tensor.contents.fp64_contents.extend(frame[c].astype(float))
    with grpc.insecure_channel(s.grpc) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request,
                                                                               timeout=30)
    outputs = {o.name: o for o in answer.outputs}
    _same([b.decode() for b in outputs["predict"].contents.bytes_contents], s.case)
    _same_proba(list(outputs["predict_proba"].contents.fp64_contents), s.case)


def test_v2_metadata_names_each_typed_input_and_its_datatype(zoo: dict[str, Served]) -> None:
    s = zoo["mixed-pets"]
    meta = httpx.get(f"{s.url}/v2/models/{s.name}").json()
    assert meta["inputs"] == [
        {"name": "color", "datatype": "BYTES", "shape": [-1, 1]},
        {"name": "size", "datatype": "FP64", "shape": [-1, 1]},
        {"name": "shape", "datatype": "BYTES", "shape": [-1, 1]},
        {"name": "weight", "datatype": "FP64", "shape": [-1, 1]}], meta
    meta = httpx.get(f"{zoo['scaled-lr'].url}/v2/models/zoo-scaled-lr").json()
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 3]}]
    meta = httpx.get(f"{zoo['kmeans'].url}/v2/models/zoo-kmeans").json()
    assert meta["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [-1]}]


def test_a_model_holding_an_untrusted_type_is_refused_at_start(
        mlflow_server: str, tmp_path: Path) -> None:
    """A skops model whose FunctionTransformer calls ``operator.neg`` (trusted when it was
    logged, not by the runtime): exit 8 and one line naming the type."""
    import operator

    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = np.abs(np.random.default_rng(0).normal(size=(30, 2)))
    est = Pipeline([("neg", FunctionTransformer(operator.neg)), ("lr", LogisticRegression())])
    est.fit(X, (X[:, 0] > 1).astype(int))
    extra = [t for t in skops.io.get_untrusted_types(data=skops.io.dumps(est))
             if not t.startswith("sklearn.")]
    assert extra, "the pipeline holds no type outside scikit-learn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow
        import mlflow.sklearn

        mlflow.set_tracking_uri(mlflow_server)
        with mlflow.start_run():
            mlflow.sklearn.log_model(est, name="neg", registered_model_name="zoo-neg",
                                     skops_trusted_types=extra, pip_requirements=[],
                                     await_registration_for=0)
    r = subprocess.run([RUNTIME, "serve", "--model-uri", "models:/zoo-neg/1", "--port",
                        str(free_port())], capture_output=True, text=True, timeout=120,
                       env=clean_env(MLFLOW_TRACKING_URI=mlflow_server,
                                     MODELSHIP_DRAIN_SECONDS="0"), cwd=tmp_path)
    assert r.returncode == 8, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and extra[0] in lines[0] and "MODELSHIP_TRUSTED_TYPES" \
        in lines[0], r.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_a_category_the_encoder_refuses_is_a_400_and_typed_rows_cache_apart() -> None:
    """In process: OneHotEncoder(handle_unknown="error") meeting an unseen category is a
    BadRequest carrying its message; boolean columns take booleans only; typed rows get
    cache keys of their values (equal rows, equal keys)."""
    from modelship_runtime.cache import cache_key
    from modelship_runtime.dataplane import Validator
    from modelship_runtime.errors import BadRequest
    from modelship_runtime.sklearn import SKLearnModel
    from modelship_runtime.typed import BOOL, NUMBER, STRING
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.DataFrame({"color": ["red", "blue"] * 10, "n": [float(i) for i in range(20)]})
    est = Pipeline([("ct", ColumnTransformer([("c", OneHotEncoder(), ["color"])],
                                             remainder="passthrough")),
                    ("lr", LogisticRegression())]).fit(frame, frame["n"] > 9)
    model = SKLearnModel("m", "1", Path("."), allow_pickle=False)
    model.use(est)
    assert model.info.input_kinds == ["any", "any"]  # no signature: values as sent
    v = Validator(2, False, 10, kinds=model.info.input_kinds, names=["color", "n"])
    rows = v.rows([["red", 3.0], ["blue", 12.0]])
    assert model.predict(rows).labels == est.predict(frame.iloc[[0, 11]].assign(
        n=[3.0, 12.0])).tolist()
    with pytest.raises(BadRequest, match="Found unknown categories"):
        model.predict(v.rows([["purple", 1.0]]))
    flags = Validator(3, False, 10, kinds=[BOOL, STRING, NUMBER])
    assert flags.rows([[True, "x", 1]]).tolist() == [[True, "x", 1]]
    with pytest.raises(BadRequest, match=r"\[0\]\[0\] must be true or false, got int"):
        flags.rows([[1, "x", 1]])
    a, b = v.rows([["red", 3.0]]), v.rows([["red", 3.0]])
    assert cache_key("m", "1", a) == cache_key("m", "1", b)
    assert cache_key("m", "1", a) != cache_key("m", "1", v.rows([["blue", 3.0]]))


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_a_signature_in_another_order_than_the_fitted_columns_types_each_by_name(
        tmp_path: Path) -> None:
    """The signature names color, size; the pipeline was fitted on size, color: rows go in
    the fitted order, and each column keeps its own type."""
    from modelship_runtime.dataplane import Validator
    from modelship_runtime.sklearn import SKLearnModel
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.DataFrame({"size": [float(i) for i in range(20)],
                          "color": ["red", "blue"] * 10})
    est = Pipeline([("ct", ColumnTransformer([("c", OneHotEncoder(), ["color"])],
                                             remainder="passthrough")),
                    ("lr", LogisticRegression())]).fit(frame, frame["size"] > 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn
        from mlflow.models import infer_signature

        signature = infer_signature(frame[["color", "size"]], est.predict(frame))
        mlflow.sklearn.save_model(est, tmp_path / "m", signature=signature,
                                  pip_requirements=[])
    model = SKLearnModel("m", "1", tmp_path / "m", allow_pickle=False)
    model.load_sync()
    assert model.info.input_columns == ["size", "color"]
    assert model.info.input_kinds == ["number", "string"]
    v = Validator(2, False, 10, kinds=model.info.input_kinds, names=["size", "color"])
    assert model.predict(v.rows([[3.0, "red"], [12.0, "blue"]])).labels == est.predict(
        pd.DataFrame({"size": [3.0, 12.0], "color": ["red", "blue"]})).tolist()

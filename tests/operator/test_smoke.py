"""spec.rollout.smokeTest: golden sets checked, loaded from a ConfigMap of the emulated API
and from a real MLflow run's artifacts, and run against real `modelship-runtime serve`
processes (a good model, a shifted one, one that raises on some rows)."""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ports
import pytest
from kube_emulator import Cluster
from lightkube import KubeConfig
from mlflow_proc import BIN, MlflowServer
from modelship_operator import smoke
from modelship_operator.api import ModelDeployment
from modelship_operator.k8s import KubeClient
from modelship_operator.registry import Registry
from modelship_operator.smoke import GoldenSet, SmokeError, SmokeResult
from runtime_proc import (
    RUNTIME,
    Runtime,
    flaky_model,
    good_model,
    iris,
    iris_rows,
    save_model,
    shifted_model,
    start_all,
)

NS = "ml"


def closed_port() -> int:
    return ports.free_port()


def golden_json(rows: list[list[float]], expected: list[Any]) -> str:
    return json.dumps({"instances": rows, "expected": expected})


def good_labels() -> list[int]:
    """What the good model predicts for every iris row: the golden answers."""
    X, _ = iris()
    return [int(v) for v in good_model().predict(X)]  # type: ignore[attr-defined]


def make_md(smoke_test: dict[str, Any], **model: Any) -> ModelDeployment:
    return ModelDeployment.model_validate({
        "metadata": {"name": "iris", "namespace": NS},
        "spec": {"model": {"name": "iris-classifier", "version": "2", **model},
                 "rollout": {"smokeTest": smoke_test}},
    })


# --- golden sets: what is accepted and what is refused --------------------------------------


def test_a_good_golden_set_is_parsed() -> None:
    golden = smoke.parse_golden(golden_json([[1, 2.5], [3, 4]], ["a", 1.5]), "test")
    assert golden == GoldenSet([[1, 2.5], [3, 4]], ["a", 1.5], "test")


BIG_ROW = [0.123456789] * 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "a golden set is a JSON object"),
        ('{"instances": [[1]]}', "a golden set is a JSON object"),
        ('{"instances": [[1]], "expected": [1], "labels": []}', "unknown field 'labels'"),
        ('{"instances": [], "expected": []}', "instances must be a non-empty array"),
        ('{"instances": [[1], [2]], "expected": [1]}', "2 rows, expected is 1 values"),
        ('{"instances": [[1]], "expected": 1}', "expected is not an array"),
        ('{"instances": [[1, 2], [3]], "expected": [1, 2]}', "instances[1] has 1 values"),
        ('{"instances": [[1, true]], "expected": [1]}', "instances[0][1] must be a number"),
        ('{"instances": [[1, "2"]], "expected": [1]}', "instances[0][1] must be a number"),
        ('{"instances": [[1, NaN]], "expected": [1]}', "NaN is not allowed"),
        ('{"instances": [[Infinity]], "expected": [1]}', "Infinity is not allowed"),
        ('{"instances": [1], "expected": [1]}', "instances[0] must be a non-empty array"),
        ('{"instances": [[]], "expected": [1]}', "instances[0] must be a non-empty array"),
        ('{"instances": [[1]], "expected": [[1]]}', "expected[0] must be a string, number"),
        ('{"instances": [[1]], "expected": [null]}', "expected[0] must be a string, number"),
        ('{"instances": ' + "[" * 100_000 + "]" * 100_000 + ', "expected": [1]}',
         "not valid JSON"),
        (golden_json([[1.0]] * 10_001, [1] * 10_001), "10001 rows; the maximum is 10000"),
        (golden_json([BIG_ROW] * 9_000, [1] * 9_000), "bytes; the maximum is 1048576"),
    ],
)
def test_hostile_golden_sets_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(SmokeError) as info:
        smoke.parse_golden(text, "ConfigMap g, key k")
    assert message in info.value.message
    assert info.value.message.startswith("ConfigMap g, key k: ")
    assert not info.value.transient


@pytest.mark.parametrize(
    ("expected", "got", "same"),
    [
        (1, 1, True), (1, 2, False), ("setosa", "setosa", True), ("1", 1, False),
        (1, "1", False), (True, True, True), (True, 1, False), (1, True, False),
        (0.5, 0.5000005, True), (0.5, 0.500002, False), (1, 1.0, True),
        (1_000_000.0, 1_000_000.5, True), (1_000_000.0, 1_000_002.0, False),
        (1.0, None, False), (1.0, [1.0], False), (1.0, float("nan"), False),
    ],
)
def test_matches(expected: Any, got: Any, same: bool) -> None:
    assert smoke.matches(expected, got) is same


def test_result_message_names_the_first_wrong_rows() -> None:
    result = SmokeResult(10, 3, [(i, 0, 2) for i in range(7)])
    assert result.accuracy == 0.3
    assert not result.passed(0.5) and result.passed(0.3)
    assert result.message(0.5) == (
        "3 of 10 golden rows right (accuracy 0.3000, needs 0.5000); row 0: expected 0, got 2; "
        "row 1: expected 0, got 2; row 2: expected 0, got 2; row 3: expected 0, got 2; "
        "row 4: expected 0, got 2; and 2 more")
    assert not SmokeResult(0, 0).passed(0.0)


# --- against real runtimes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Runtime]]:
    if not RUNTIME.exists():
        pytest.skip("the modelship-runtime console script is not installed (make setup)")
    root = tmp_path_factory.mktemp("smoke")
    served = {
        name: Runtime(["--model-dir", str(save_model(model, root / name))], root / f"{name}.log")
        for name, model in (("good", good_model()), ("good2", good_model()),
                            ("shifted", shifted_model()), ("flaky", flaky_model()))
    }
    try:
        start_all(list(served.values()))
        yield served
    finally:
        for runtime in served.values():
            runtime.stop()


def address(runtime: Runtime) -> str:
    return runtime.url.removeprefix("http://")


def predictions_served(runtime: Runtime) -> float:
    total = 0.0
    for line in runtime.metrics().splitlines():
        if line.startswith("model_predictions_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def iris_golden() -> GoldenSet:
    return smoke.parse_golden(golden_json(iris_rows(), good_labels()), "iris golden set")


def test_a_good_model_passes_on_every_row(runtimes: dict[str, Runtime]) -> None:
    pods = [runtimes["good"], runtimes["good2"]]
    before = [predictions_served(p) for p in pods]
    result = smoke.run_smoke([address(p) for p in pods], iris_golden(), batch_rows=40)
    assert (result.total, result.correct, result.mismatches, result.errors) == (150, 150, [], [])
    assert result.accuracy == 1.0 and result.passed(1.0)
    # Four batches of up to 40 rows, spread over both pods.
    served = [predictions_served(p) - b for p, b in zip(pods, before, strict=True)]
    assert served == [80.0, 70.0]


def test_a_shifted_model_fails_naming_the_wrong_rows(runtimes: dict[str, Runtime]) -> None:
    """The shifted model never predicts setosa (class 0, iris rows 0-49)."""
    result = smoke.run_smoke([address(runtimes["shifted"])], iris_golden())
    X, _ = iris()
    shifted = [int(v) for v in shifted_model().predict(X)]  # type: ignore[attr-defined]
    good = good_labels()
    # Exactly the rows where scikit-learn, run here, says the two models disagree.
    assert result.mismatches == [(i, good[i], shifted[i]) for i in range(150)
                                 if good[i] != shifted[i]]
    wrong_rows = [i for i, _, _ in result.mismatches]
    assert set(range(50)) <= set(wrong_rows)
    assert result.correct == 150 - len(wrong_rows) and result.accuracy <= 100 / 150
    assert not result.passed(0.9)
    message = result.message(1.0)
    assert message.startswith(f"{result.correct} of 150 golden rows right")
    assert "row 0: expected 0, got 2; row 1: expected 0, got 2" in message
    assert message.endswith(f"and {len(wrong_rows) - 5} more")


def test_rows_the_canary_refuses_count_wrong(runtimes: dict[str, Runtime]) -> None:
    """The flaky model raises (the runtime answers 500) on rows with a long sepal: every
    row of such a batch counts wrong, and the error is named."""
    rows, labels = iris_rows(), good_labels()
    golden = smoke.parse_golden(golden_json(rows, labels), "g")
    result = smoke.run_smoke([address(runtimes["flaky"])], golden, batch_rows=10)
    long_sepal_batches = {i // 10 for i, row in enumerate(rows) if row[0] > 6.5}
    assert long_sepal_batches
    refused = {i for i, _, got in result.mismatches if got is None}
    assert refused == {i for i in range(150) if i // 10 in long_sepal_batches}
    assert result.errors and result.errors[0].startswith(f"pod {address(runtimes['flaky'])}: 500")
    assert "canary errors: pod" in result.message(1.0)


def test_a_golden_set_of_the_wrong_width_fails(runtimes: dict[str, Runtime]) -> None:
    golden = smoke.parse_golden(golden_json([[1.0, 2.0, 3.0]] * 3, [0, 0, 0]), "g")
    result = smoke.run_smoke([address(runtimes["good"])], golden)
    assert (result.correct, len(result.mismatches)) == (0, 3)
    assert "400" in result.errors[0] and "the model takes 4 features" in result.errors[0]


def test_an_unreachable_pod_is_skipped(runtimes: dict[str, Runtime]) -> None:
    dead = f"127.0.0.1:{closed_port()}"
    result = smoke.run_smoke([dead, address(runtimes["good"])], iris_golden(), batch_rows=50)
    assert result.correct == 150


def test_no_pod_answering_is_transient() -> None:
    with pytest.raises(SmokeError) as info:
        smoke.run_smoke([f"127.0.0.1:{closed_port()}"], iris_golden(), timeout=2)
    assert info.value.transient
    assert "no canary pod answered" in info.value.message
    with pytest.raises(SmokeError, match="no ready canary pod") as empty:
        smoke.run_smoke([], iris_golden())
    assert empty.value.transient


# --- from a ConfigMap of the emulated API --------------------------------------------------------


def kube(cluster: Cluster) -> KubeClient:
    return KubeClient.from_kubeconfig(cluster.kubeconfig)


def put_config_map(cluster: Cluster, name: str, **fields: Any) -> None:
    cluster.http("POST", f"/api/v1/namespaces/{NS}/configmaps",
                 {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": name, "namespace": NS}, **fields})


def test_golden_set_from_a_config_map(cluster: Cluster, runtimes: dict[str, Runtime]) -> None:
    put_config_map(cluster, "iris-golden",
                   data={"smoke.json": golden_json(iris_rows(), good_labels()), "other": "x"})
    md = make_md({"configMap": {"name": "iris-golden", "key": "smoke.json"}})
    golden = smoke.load_golden_set(md, "2", kube(cluster), registry=None)
    assert golden.source == "ConfigMap iris-golden, key smoke.json"
    assert (len(golden.instances), golden.expected[:2]) == (150, [0, 0])
    assert smoke.run_smoke([address(runtimes["good"])], golden).passed(1.0)
    # Every request of the operator's client is one its RBAC rules allow (the cluster
    # fixture checks at teardown); the read is a GET of that one ConfigMap.
    gets = [(m, p) for m, p, _, agent in cluster.requests() if agent == "modelship-operator"]
    assert gets == [("GET", f"/api/v1/namespaces/{NS}/configmaps/iris-golden")]


def test_golden_set_from_binary_data(cluster: Cluster) -> None:
    text = golden_json([[1.0, 2.0]], ["a"])
    put_config_map(cluster, "bin", binaryData={"g.json": base64.b64encode(text.encode()).decode()})
    md = make_md({"configMap": {"name": "bin", "key": "g.json"}})
    assert smoke.load_golden_set(md, "2", kube(cluster), None).expected == ["a"]


def test_config_map_problems_are_named(cluster: Cluster) -> None:
    put_config_map(cluster, "iris-golden", data={"a.json": "{}", "b.json": "{}"})
    client = kube(cluster)
    missing = make_md({"configMap": {"name": "nope", "key": "smoke.json"}})
    with pytest.raises(SmokeError, match="ConfigMap nope not found in namespace ml") as info:
        smoke.load_golden_set(missing, "2", client, None)
    assert not info.value.transient
    wrong_key = make_md({"configMap": {"name": "iris-golden", "key": "smoke.json"}})
    with pytest.raises(SmokeError, match=r"no such key \(the ConfigMap has: a.json, b.json\)"):
        smoke.load_golden_set(wrong_key, "2", client, None)
    bad = make_md({"configMap": {"name": "iris-golden", "key": "a.json"}})
    with pytest.raises(SmokeError, match="a golden set is a JSON object"):
        smoke.load_golden_set(bad, "2", client, None)


def test_an_api_outage_is_transient(cluster: Cluster) -> None:
    put_config_map(cluster, "iris-golden", data={"smoke.json": golden_json([[1.0]], [1])})
    cluster.inject(lambda r: r.resource is not None and r.resource.plural == "configmaps", 503, 1)
    md = make_md({"configMap": {"name": "iris-golden", "key": "smoke.json"}})
    with pytest.raises(SmokeError, match="cannot read ConfigMap iris-golden") as info:
        smoke.load_golden_set(md, "2", kube(cluster), None)
    assert info.value.transient
    assert smoke.load_golden_set(md, "2", kube(cluster), None).expected == [1]


# --- from a real MLflow run's artifacts ---------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    if not (BIN / "mlflow").exists():
        pytest.skip("the mlflow CLI is missing (make setup installs it)")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mlflow as ml
            import mlflow.sklearn

            ml.set_tracking_uri(server.uri)
            with ml.start_run():
                mlflow.sklearn.log_model(good_model(), name="model",
                                         registered_model_name="iris-classifier",
                                         pip_requirements=[], await_registration_for=0)
                ml.log_text(golden_json(iris_rows(), good_labels()), "golden/smoke.json")
                ml.log_text("x" * (smoke.MAX_BYTES + 1), "huge.json")
        yield server
    finally:
        server.stop()


def unused_kube() -> KubeClient:
    """A client of an API that is not there: an artifact source never reads a ConfigMap."""
    return KubeClient(KubeConfig.from_server(f"http://127.0.0.1:{closed_port()}"), timeout=2)


def registry_of(server: MlflowServer | str) -> Callable[[], Registry]:
    uri = server if isinstance(server, str) else server.uri
    return lambda: Registry(uri, timeout=5)


def test_golden_set_from_an_mlflow_artifact(
    mlflow: MlflowServer, runtimes: dict[str, Runtime], tmp_path: Path
) -> None:
    md = make_md({"artifact": "golden/smoke.json"})
    golden = smoke.load_golden_set(md, "1", unused_kube(), registry_of(mlflow))
    assert golden.source == ("artifact golden/smoke.json of model 'iris-classifier' version 1")
    assert len(golden.instances) == 150
    result = smoke.run_smoke([address(runtimes["good"]), address(runtimes["good2"])], golden)
    assert result.passed(1.0), result.message(1.0)


@pytest.mark.parametrize(
    ("artifact", "version", "message", "transient"),
    [
        ("golden/nope.json", "1", "'golden/nope.json' of model 'iris-classifier' version 1 "
         "(run ", False),
        ("huge.json", "1", "larger than 1048576 bytes", False),
        ("golden/smoke.json", "7", "artifact golden/smoke.json of model 'iris-classifier' "
         "version 7: ", False),
    ],
)
def test_mlflow_artifact_problems_are_named(
    mlflow: MlflowServer, artifact: str, version: str, message: str, transient: bool
) -> None:
    md = make_md({"artifact": artifact})
    with pytest.raises(SmokeError) as info:
        smoke.load_golden_set(md, version, unused_kube(), registry_of(mlflow))
    assert message in info.value.message
    assert info.value.transient is transient
    if artifact == "golden/nope.json":
        assert info.value.message.endswith("): not found")


def test_mlflow_unreachable_is_transient() -> None:
    md = make_md({"artifact": "smoke.json"})
    with pytest.raises(SmokeError, match="unreachable") as info:
        smoke.load_golden_set(md, "1", unused_kube(),
                              registry_of(f"http://127.0.0.1:{closed_port()}"))
    assert info.value.transient
    with pytest.raises(SmokeError, match="no MLflow tracking URI"):
        smoke.load_golden_set(md, "1", unused_kube(), None)

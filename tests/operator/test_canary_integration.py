"""Canary rollouts end to end: the operator under `kopf run` against the emulated API,
a real MLflow server holding the model versions, and real runtime processes standing in
for the pods.

Each version registered in MLflow is served by its own `modelship-runtime serve` process
(pulling it from the registry); the test plays the parts of the kubelet (mark_ready) and
of the EndpointSlice controller (slices of Services `iris` and `iris--canary` pointing at
those processes, with pod names prefixed by their Deployment's name), and sends real
prediction traffic to both sides. The operator scrapes the processes' /metrics (provider
`pods`), judges each step and promotes or rolls back by itself.
"""

from __future__ import annotations

import random
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kube_emulator import OPERATOR_AGENT, Cluster, Write, wait_for
from mlflow_proc import BIN, MlflowServer
from runtime_proc import (
    RUNTIME,
    Runtime,
    Traffic,
    flaky_model,
    good_model,
    iris_rows,
    shifted_model,
    start_all,
)

NS = "ml"
MODEL = "iris"
GOOD, GOOD_TOO, FLAKY, SHIFTED = "1", "2", "3", "4"

pytestmark = pytest.mark.skipif(
    not (BIN / "mlflow").exists() or not RUNTIME.exists(),
    reason="the mlflow and modelship-runtime commands are missing (make setup installs them)",
)


# --- real parts shared by the module ----------------------------------------------------------


def register(server: MlflowServer, estimators: list[Any]) -> None:
    """Versions 1, 2, ... of MODEL, in order (cloudpickle keeps the flaky step by value)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own deprecation and pickle warnings
        import mlflow
        import mlflow.sklearn

        mlflow.set_tracking_uri(server.uri)
        with mlflow.start_run():
            for i, estimator in enumerate(estimators, start=1):
                mlflow.sklearn.log_model(
                    estimator, name=f"v{i}", registered_model_name=MODEL,
                    serialization_format="cloudpickle", pip_requirements=[],
                    await_registration_for=0,
                )


@pytest.fixture(scope="module")
def pods(
    mlflow: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Runtime]]:
    """One runtime process per registered version, each pulling it from MLflow:
    1 and 2 good, 3 fails a fifth of requests, 4 never predicts one of the classes."""
    register(mlflow, [good_model(1.0), good_model(0.3), flaky_model(), shifted_model()])
    logs = tmp_path_factory.mktemp("pods")
    runtimes = {
        v: Runtime(["--model-uri", f"models:/{MODEL}/{v}"], logs / f"v{v}.log",
                   env={"MLFLOW_TRACKING_URI": mlflow.uri})
        for v in (GOOD, GOOD_TOO, FLAKY, SHIFTED)
    }
    try:
        start_all(list(runtimes.values()))
        yield runtimes
    finally:
        for runtime in runtimes.values():
            runtime.stop()


# --- the test's side of the cluster -------------------------------------------------------------


def manifest(version: str, **analysis: Any) -> dict[str, Any]:
    rollout: dict[str, Any] = {
        "steps": [50, 100],
        "interval": analysis.pop("interval", "2s"),
        "analysis": {"provider": "pods", "minRequests": 10, "failureLimit": 1,
                     "maxLatencyP95Ms": 2000, **analysis},
    }
    return {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": NS},
        "spec": {
            "model": {"name": MODEL, "version": version},
            "replicas": 2,
            "ingress": {"host": "iris.example.com", "className": "nginx"},
            "rollout": rollout,
        },
    }


def status(cluster: Cluster) -> dict[str, Any]:
    return dict((cluster.get("modeldeployments", NS, "iris") or {}).get("status") or {})


def canary(cluster: Cluster) -> dict[str, Any]:
    return dict(status(cluster).get("canary") or {})


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def names(cluster: Cluster, plural: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in cluster.objects(plural, NS))


def events(cluster: Cluster, reason: str | None = None) -> list[dict[str, Any]]:
    found = [e for e in cluster.objects("events", NS)
             if e.get("source", {}).get("component") == "modelship-operator"]
    return [e for e in found if reason is None or e["reason"] == reason]


def operator_writes(cluster: Cluster, since: int) -> list[tuple[int, str, str]]:
    return [
        (i, method, path)
        for i, (method, path, _, agent) in enumerate(cluster.requests())
        if i >= since and method in ("POST", "PATCH", "PUT", "DELETE") and agent != "test-user"
    ]


def passes(op: Any) -> float:
    """Reconcile passes the operator has made (its own metric: passes read only caches,
    so no request marks them)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(op.metrics_url, timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        sample.value for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "modelship_operator_reconcile_duration_seconds_count"
    )


def traffic(*sides: Runtime) -> Traffic:
    """The same rows to every side in turn (so their class distributions are comparable),
    in a shuffled order (iris is sorted by class: any window of requests gets a mix)."""
    rows = iris_rows()
    random.Random(7).shuffle(rows)
    return Traffic(
        [s.url for s in sides],
        lambda i: {"features": rows[(i // len(sides)) % len(rows)]},
        max_requests=20_000, max_seconds=60, pause=0.005,
    ).start()


def operator_env(mlflow: MlflowServer) -> dict[str, str]:
    return {
        "MODELSHIP_OPERATOR_ROLLOUT_TICK_SECONDS": "0.5",
        "MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI": mlflow.uri,
        "MODELSHIP_OPERATOR_VERIFY_MODEL_VERSIONS": "true",
        "MODELSHIP_OPERATOR_REGISTRY_TIMEOUT_SECONDS": "5",
    }


def serve_stable(cluster: Cluster, pods: dict[str, Runtime], spec: dict[str, Any]) -> None:
    """Version 1 serves, ready, with the EndpointSlice of Service `iris`."""
    cluster.create_md(spec)
    wait_for(lambda: "iris-v1" in names(cluster, "deployments"), what="iris-v1")
    cluster.mark_ready(NS, "iris-v1", 2)
    wait_for(lambda: status(cluster).get("phase") == "Ready", what="version 1 Ready")
    cluster.publish_endpoint(NS, "iris", "iris-v1", pods[GOOD].port)


def start_canary(cluster: Cluster, pods: dict[str, Runtime], version: str) -> int:
    """Point spec at `version`; returns the request index the rollout starts at."""
    cluster.publish_endpoint(NS, "iris--canary", f"iris-v{version}", pods[version].port)
    mark = len(cluster.requests())
    cluster.patch_md(NS, "iris", {"spec": {"model": {"version": version}}})
    wait_for(lambda: f"iris-v{version}" in names(cluster, "deployments"),
             what=f"canary Deployment iris-v{version}")
    return mark


def canary_ingress_weight(cluster: Cluster) -> str | None:
    ingress = cluster.get("ingresses", NS, "iris--canary") or {}
    return (ingress.get("metadata", {}).get("annotations") or {}).get(
        "nginx.ingress.kubernetes.io/canary-weight")


# --- the scenarios -------------------------------------------------------------------------------


def test_healthy_canary_walks_every_step_and_is_promoted(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer,
    pods: dict[str, Runtime],
) -> None:
    op = operator(**operator_env(mlflow))
    serve_stable(cluster, pods, manifest(GOOD))
    mark = start_canary(cluster, pods, GOOD_TOO)
    load = traffic(pods[GOOD], pods[GOOD_TOO])
    try:
        cluster.mark_ready(NS, "iris-v2", 1)
        at50 = wait_for(lambda: (c := canary(cluster)).get("weight") == 50 and c,
                        what="weight 50")
        assert canary_ingress_weight(cluster) == "50"
        at100 = wait_for(lambda: (c := canary(cluster)).get("weight") == 100 and c,
                         timeout=120, what="weight 100")
        assert at100["step"] == 1 and at100["failedAnalyses"] == 0
        passed = at100["lastAnalysis"]
        assert passed["passed"] is True and passed["requests"] >= 10
        assert passed["errorRate"] == 0.0 and passed["latencyP95Ms"] > 0
        assert at50["version"] == "2"
        # At 100% the canary asks for both replicas; it holds until they are ready
        # (it is neither rolled back nor promoted on one pod).
        wait_for(lambda: (cluster.get("deployments", NS, "iris-v2") or {})
                 .get("spec", {}).get("replicas") == 2, what="canary scaled to 2")
        since = passes(op)
        wait_for(lambda: passes(op) >= since + 4, what="rollout passes")
        held = status(cluster)
        assert held["canary"]["weight"] == 100 and held["stable"]["version"] == "1"
        assert canary_ingress_weight(cluster) == "100"
        cluster.mark_ready(NS, "iris-v2", 2)
        done = wait_for(lambda: (s := status(cluster)).get("lastRollout") and s,
                        timeout=120, what="promotion")
    finally:
        load.stop()
    assert done["lastRollout"]["outcome"] == "Promoted"
    assert done["stable"]["version"] == "2" and "canary" not in done
    final = wait_for(lambda: (s := status(cluster)).get("phase") == "Ready" and s,
                     what="Ready on version 2")
    assert condition(final, "Ready")["status"] == "True"
    # Version 1's Deployment outlives the retarget a while (routers catch up), then goes.
    # (The retiring objects go in one pass, one DELETE after another: wait for all.)
    wait_for(lambda: names(cluster, "deployments") == ["iris-v2"]
             and names(cluster, "services") == ["iris"]
             and names(cluster, "ingresses") == ["iris"], what="iris-v1 and the canary retired")
    service = cluster.get("services", NS, "iris") or {}
    assert service["spec"]["selector"]["modelship.io/model-version"] == "2"

    # Service iris was retargeted to version 2 before iris-v1 was deleted.
    writes = operator_writes(cluster, mark)
    retarget = [i for i, m, p in writes if m == "PATCH" and p.endswith("/services/iris")]
    delete = [i for i, m, p in writes if m == "DELETE" and p.endswith("/deployments/iris-v1")]
    assert len(retarget) == 1 and len(delete) == 1, writes
    assert retarget[0] < delete[0]

    # An Event for each step, with the figures that decided it.
    started = events(cluster, "CanaryStarted")
    weights = [e["message"] for e in events(cluster, "CanaryWeight")]
    promoted = events(cluster, "Promoted")
    assert len(started) == 1 and "canary of version 2 against 1" in started[0]["message"]
    assert len(weights) == 2 and weights[0].endswith("weight 50%"), weights
    assert "analysis passed (" in weights[1] and "error rate 0.0000 (0/" in weights[1]
    assert weights[1].endswith("weight 100%")
    assert len(promoted) == 1 and "every step passed" in promoted[0]["message"]
    assert "error rate 0.0000 (0/" in promoted[0]["message"]
    assert "p95 " in promoted[0]["message"]
    assert load.counts[pods[GOOD_TOO].url] == {200: load.total(pods[GOOD_TOO].url)}
    op.stop()
    assert "Traceback" not in op.output()


@pytest.mark.parametrize(
    ("bad", "analysis", "figure"),
    [
        pytest.param(FLAKY, {"failureLimit": 2}, "error rate 0.", id="failing-requests"),
        pytest.param(SHIFTED, {"maxPredictionShift": 0.2, "minPredictions": 60},
                     "prediction shift PSI", id="prediction-shift"),
    ],
)
def test_bad_canary_is_rolled_back_and_stable_never_touched(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer,
    pods: dict[str, Runtime], bad: str, analysis: dict[str, Any], figure: str,
) -> None:
    op = operator(**operator_env(mlflow))
    serve_stable(cluster, pods, manifest(GOOD, **analysis))
    before = {kind: cluster.get(kind, NS, name) for kind, name in
              (("deployments", "iris-v1"), ("services", "iris"), ("ingresses", "iris"))}
    mark = start_canary(cluster, pods, bad)
    load = traffic(pods[GOOD], pods[bad])
    try:
        cluster.mark_ready(NS, f"iris-v{bad}", 1)
        wait_for(lambda: canary(cluster).get("weight") == 50, what="weight 50")
        done = wait_for(lambda: (s := status(cluster)).get("phase") == "RolledBack" and s,
                        timeout=120, what="rollback")
    except AssertionError as exc:
        story = [(e["reason"], e["message"]) for e in events(cluster)]
        raise AssertionError(f"{exc}\nstatus: {status(cluster)}\nevents: {story}") from None
    finally:
        load.stop()
    last = done["lastRollout"]
    assert last["outcome"] == "RolledBack" and last["version"] == bad
    assert figure in last["reason"] and "requests" in last["reason"]
    assert "canary" not in done and done["stable"]["version"] == "1"
    stalled = condition(done, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "RolledBack"
    assert figure in stalled["message"]
    # The canary's objects are gone (a while after its weight went to 0); 100% is back
    # on version 1.
    wait_for(lambda: names(cluster, "deployments") == ["iris-v1"]
             and names(cluster, "services") == ["iris"]
             and names(cluster, "ingresses") == ["iris"], what="canary retired")
    (rolled_back,) = events(cluster, "RolledBack")
    assert rolled_back["type"] == "Warning"
    assert figure in rolled_back["message"] and "100% back to version 1" in rolled_back["message"]
    failed = events(cluster, "AnalysisFailed")
    assert len(failed) == analysis.get("failureLimit", 1) - 1
    for event in failed:
        assert figure in event["message"] and "at 50%" in event["message"]
    # The stable side was never written to while the canary ran.
    touched = [(m, p) for _, m, p in operator_writes(cluster, mark)
               if p.endswith(("/deployments/iris-v1", "/services/iris", "/ingresses/iris"))]
    assert touched == []
    for (kind, name), obj in zip(
        (("deployments", "iris-v1"), ("services", "iris"), ("ingresses", "iris")),
        before.values(), strict=True,
    ):
        assert obj is not None and cluster.get(kind, NS, name) == obj
    # MLflow hears about it: the version is tagged with the reason.
    tags = mlflow.client().get_model_version(MODEL, bad).tags
    assert figure in tags.get("modelship.io/rolled-back", "")
    op.stop()
    assert "Traceback" not in op.output()


def test_no_weight_before_ready_and_no_verdict_without_traffic(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer,
    pods: dict[str, Runtime],
) -> None:
    op = operator(**operator_env(mlflow))
    serve_stable(cluster, pods, manifest(GOOD))
    start_canary(cluster, pods, GOOD_TOO)
    # The canary's pods are not ready: several passes later it still has no traffic.
    since = passes(op)
    wait_for(lambda: passes(op) >= since + 5, what="rollout passes")
    assert canary(cluster)["weight"] == 0
    assert canary_ingress_weight(cluster) == "0"
    assert events(cluster, "CanaryWeight") == []
    cluster.mark_ready(NS, "iris-v2", 1)
    wait_for(lambda: canary(cluster).get("weight") == 50, what="weight 50 once ready")
    assert canary_ingress_weight(cluster) == "50"

    # No traffic: the step's interval runs out and the analysis is inconclusive: it holds.
    waiting = wait_for(
        lambda: (a := canary(cluster).get("lastAnalysis")) and "passed" not in a and a,
        timeout=120, what="an analysis that waits",
    )
    assert waiting["verdict"] == "Inconclusive" and waiting.get("requests", 0) < 10
    held_at = wait_for(lambda: (s := status(cluster)) and condition(s, "Reconciling").get(
        "reason") == "AnalysisInconclusive" and s, what="the hold in a condition")
    assert "fewer than minRequests 10" in condition(held_at, "Reconciling")["message"]
    (inconclusive,) = events(cluster, "AnalysisInconclusive")
    assert inconclusive["type"] == "Warning" and "the step holds" in inconclusive["message"]
    since = passes(op)
    wait_for(lambda: passes(op) >= since + 6, what="more rollout passes")
    held = status(cluster)
    assert held["canary"]["weight"] == 50 and held["canary"]["failedAnalyses"] == 0
    assert held["phase"] == "Progressing" and "lastRollout" not in held
    assert events(cluster, "AnalysisFailed") == [] and events(cluster, "Promoted") == []

    # Traffic arrives: the same step is judged and passes.
    load = traffic(pods[GOOD], pods[GOOD_TOO])
    try:
        wait_for(lambda: canary(cluster).get("weight") == 100, timeout=120, what="weight 100")
    finally:
        load.stop()


def test_operator_restart_mid_rollout_resumes_from_status(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer,
    pods: dict[str, Runtime],
) -> None:
    first = operator(**operator_env(mlflow))
    serve_stable(cluster, pods, manifest(GOOD, interval="5s"))
    start_canary(cluster, pods, GOOD_TOO)
    load = traffic(pods[GOOD], pods[GOOD_TOO])
    try:
        cluster.mark_ready(NS, "iris-v2", 1)
        at50 = wait_for(lambda: (c := canary(cluster)).get("weight") == 50 and c,
                        what="weight 50")
        first.stop()
        assert first.proc is not None and first.proc.returncode is not None
        stopped = canary(cluster)
        assert stopped["weight"] == 50 and stopped["step"] == 0
        assert stopped["stepStartedAt"] == at50["stepStartedAt"]

        second = operator(**operator_env(mlflow))
        at100 = wait_for(lambda: (c := canary(cluster)).get("weight") == 100 and c,
                         timeout=120, what="weight 100 under the new operator")
        assert at100["startedAt"] == at50["startedAt"]
        cluster.mark_ready(NS, "iris-v2", 2)
        done = wait_for(lambda: (s := status(cluster)).get("lastRollout") and s,
                        timeout=120, what="promotion")
    finally:
        load.stop()
    assert done["lastRollout"]["outcome"] == "Promoted"
    # The new operator continued the rollout: it did not start it again.
    assert len(events(cluster, "CanaryStarted")) == 1
    weights = [e["message"] for e in events(cluster, "CanaryWeight")]
    assert len(weights) == 2, weights
    assert weights[0].endswith("weight 50%") and weights[1].endswith("weight 100%")
    assert "weight 50%" in first.output() and "weight 100%" not in first.output()
    assert "CanaryStarted" not in second.output() and "weight 100%" in second.output()
    second.stop()
    assert "Traceback" not in first.output() + second.output()


def test_pause_holds_the_weight_and_abort_rolls_back(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer,
    pods: dict[str, Runtime],
) -> None:
    op = operator(**operator_env(mlflow))
    serve_stable(cluster, pods, manifest(GOOD))
    start_canary(cluster, pods, GOOD_TOO)
    load = traffic(pods[GOOD], pods[GOOD_TOO])
    try:
        cluster.mark_ready(NS, "iris-v2", 1)
        wait_for(lambda: canary(cluster).get("weight") == 50, what="weight 50")
        cluster.patch_md(NS, "iris", {"spec": {"rollout": {"paused": True}}})
        # Healthy traffic and intervals pass; a paused rollout keeps its weight.
        since = passes(op)
        wait_for(lambda: passes(op) >= since + 10, timeout=120, what="passes")
        assert canary(cluster)["weight"] == 50
        assert [e["message"] for e in events(cluster, "CanaryWeight")] == [
            "version 2: weight 50%"]
        cluster.patch_md(NS, "iris", {"metadata": {"annotations": {
            "modelship.io/abort": "true"}}})
        done = wait_for(lambda: (s := status(cluster)).get("phase") == "RolledBack" and s,
                        what="abort")
    finally:
        load.stop()
    assert done["lastRollout"]["version"] == "2"
    assert "modelship.io/abort annotation" in done["lastRollout"]["reason"]
    assert done["stable"]["version"] == "1" and "canary" not in done
    wait_for(lambda: names(cluster, "deployments") == ["iris-v1"]
             and names(cluster, "ingresses") == ["iris"], what="canary retired")
    op.stop()
    assert "Traceback" not in op.output()


# --- what the analysis counts, and what it never lets through ---------------------------------


def sequential(url: str, count: int, rows: list[list[float]]) -> dict[int, int]:
    """`count` requests to one runtime, one after the other; status codes counted."""
    import httpx

    codes: dict[int, int] = {}
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(count):
            code = client.post("/predict", json={"features": rows[i % len(rows)]}).status_code
            codes[code] = codes.get(code, 0) + 1
    return codes


def test_each_analysis_counts_the_requests_of_its_own_step(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer,
    pods: dict[str, Runtime],
) -> None:
    """A known number of canary requests in each step, sent after the step's window
    opened and (with a 20 s interval against well under a second of sending) before it
    closes: each analysis counts all of them, and none of the other step's."""
    op = operator(**operator_env(mlflow))
    serve_stable(cluster, pods, manifest(GOOD, interval="20s"))
    start_canary(cluster, pods, GOOD_TOO)
    rows = iris_rows()
    cluster.mark_ready(NS, "iris-v2", 1)
    first = wait_for(lambda: (c := canary(cluster)).get("weight") == 50
                     and (c.get("stepCounters") or {}).get("step") == c["stepStartedAt"] and c,
                     what="weight 50 and its window open")
    assert first["stepStartedAt"].endswith("Z") and "." in first["stepStartedAt"]  # µs
    sent_first = sequential(pods[GOOD_TOO].url, 150, rows)
    sequential(pods[GOOD].url, 40, rows)  # the stable's traffic is not the canary's
    assert sent_first == {200: 150}
    second = wait_for(lambda: (c := canary(cluster)).get("weight") == 100 and c,
                      timeout=120, what="weight 100")
    judged = second["lastAnalysis"]
    assert judged["verdict"] == "Pass"
    assert 0.95 * 150 <= judged["requests"] <= 150, judged
    wait_for(lambda: (c := canary(cluster)).get("stepCounters", {}).get("step")
             == c.get("stepStartedAt"), what="the second window open")
    cluster.mark_ready(NS, "iris-v2", 2)
    assert sequential(pods[GOOD_TOO].url, 90, rows) == {200: 90}
    done = wait_for(lambda: (s := status(cluster)).get("lastRollout") and s,
                    timeout=120, what="promotion")
    assert done["lastRollout"]["outcome"] == "Promoted"
    (promoted,) = events(cluster, "Promoted")
    counted = int(promoted["message"].split("error rate 0.0000 (0/")[1].split(")")[0])
    assert 0.95 * 90 <= counted <= 90, promoted["message"]
    op.stop()
    assert "Traceback" not in op.output()


def test_shifted_canary_in_a_single_full_step_is_rolled_back(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer,
    pods: dict[str, Runtime],
) -> None:
    """steps [100]: the stable gets no traffic during the step, so the canary is judged
    against the stable's predictions recorded before traffic moved."""
    op = operator(**operator_env(mlflow))
    spec = manifest(GOOD, interval="3s", maxPredictionShift=0.2, minPredictions=100)
    spec["spec"]["rollout"]["steps"] = [100]
    serve_stable(cluster, pods, spec)
    rows = iris_rows()
    random.Random(3).shuffle(rows)
    assert sequential(pods[GOOD].url, 300, rows) == {200: 300}  # the stable's history
    start_canary(cluster, pods, SHIFTED)
    cluster.mark_ready(NS, f"iris-v{SHIFTED}", 2)
    at100 = wait_for(lambda: (c := canary(cluster)).get("weight") == 100 and c,
                     what="weight 100")
    baseline = wait_for(lambda: canary(cluster).get("baseline"), what="the stable's baseline")
    assert baseline["predictions"] >= 300 and len(baseline["classes"]) == 3
    assert at100["step"] == 0
    load = traffic(pods[SHIFTED])  # every request to the canary
    try:
        done = wait_for(lambda: (s := status(cluster)).get("phase") == "RolledBack" and s,
                        timeout=120, what="rollback on the shift")
    finally:
        load.stop()
    assert done["lastRollout"]["version"] == SHIFTED
    assert "prediction shift PSI" in done["lastRollout"]["reason"]
    assert done["stable"]["version"] == "1"
    assert events(cluster, "Promoted") == []
    op.stop()
    assert "Traceback" not in op.output()


def test_never_ready_canary_rolls_back_at_its_deadline(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer,
    pods: dict[str, Runtime],
) -> None:
    op = operator(**operator_env(mlflow))
    spec = manifest(GOOD)
    spec["spec"]["rollout"]["progressDeadlineSeconds"] = 4
    serve_stable(cluster, pods, spec)
    start_canary(cluster, pods, GOOD_TOO)  # its pods never become ready
    done = wait_for(lambda: (s := status(cluster)).get("phase") == "RolledBack" and s,
                    timeout=120, what="rollback at the deadline")
    assert done["lastRollout"]["reason"].startswith("ProgressDeadlineExceeded")
    assert "canary pods not ready" in done["lastRollout"]["reason"]
    assert condition(done, "Stalled")["reason"] == "ProgressDeadlineExceeded"
    (event,) = events(cluster, "ProgressDeadlineExceeded")
    assert event["type"] == "Warning"
    assert events(cluster, "CanaryWeight") == []  # it never had a single request
    wait_for(lambda: names(cluster, "deployments") == ["iris-v1"], what="iris-v2 retired")
    op.stop()
    assert "Traceback" not in op.output()


def test_a_step_without_data_never_promotes_and_rolls_back_at_the_deadline(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer,
    pods: dict[str, Runtime],
) -> None:
    """Ready canary, weight set, no request ever reaches it: every gate is inconclusive,
    the step holds, and at the deadline the rollout rolls back instead of promoting."""
    op = operator(**operator_env(mlflow))
    spec = manifest(GOOD)
    spec["spec"]["rollout"]["steps"] = [100]
    spec["spec"]["rollout"]["progressDeadlineSeconds"] = 4
    serve_stable(cluster, pods, spec)
    start_canary(cluster, pods, GOOD_TOO)
    cluster.mark_ready(NS, "iris-v2", 2)
    wait_for(lambda: canary(cluster).get("weight") == 100, what="weight 100")
    done = wait_for(lambda: (s := status(cluster)).get("phase") == "RolledBack" and s,
                    timeout=120, what="rollback at the deadline")
    assert done["lastRollout"]["reason"].startswith("ProgressDeadlineExceeded")
    assert "inconclusive" in done["lastRollout"]["reason"]
    assert events(cluster, "Promoted") == []
    assert len(events(cluster, "AnalysisInconclusive")) == 1
    assert done["stable"]["version"] == "1"
    op.stop()
    assert "Traceback" not in op.output()


CHILD_PLURALS = ("deployments", "services", "serviceaccounts", "horizontalpodautoscalers",
                 "ingresses", "networkpolicies", "poddisruptionbudgets", "httproutes")


def test_iris_and_iris_canary_side_by_side_never_touch_each_other(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer,
    pods: dict[str, Runtime],
) -> None:
    """A ModelDeployment named like another's canary lives through that one's rollout."""
    op = operator(**operator_env(mlflow))
    other = manifest(GOOD)
    other["metadata"]["name"] = "iris-canary"
    other["spec"]["ingress"]["host"] = "iris-canary.example.com"
    other_uid = cluster.create_md(other)["metadata"]["uid"]
    wait_for(lambda: "iris-canary-v1" in names(cluster, "deployments"), what="iris-canary-v1")
    cluster.mark_ready(NS, "iris-canary-v1", 2)
    cluster.publish_endpoint(NS, "iris-canary", "iris-canary-v1", pods[GOOD].port)
    serve_stable(cluster, pods, manifest(GOOD))
    iris_uid = (cluster.get("modeldeployments", NS, "iris") or {})["metadata"]["uid"]

    def other_status() -> dict[str, Any]:
        return dict((cluster.get("modeldeployments", NS, "iris-canary") or {}).get("status")
                    or {})

    settled = wait_for(lambda: (s := other_status()).get("phase") == "Ready" and s,
                       what="iris-canary Ready")
    other_children = {
        (plural, o["metadata"]["name"]): o["metadata"]["uid"]
        for plural in CHILD_PLURALS for o in cluster.objects(plural, NS)
        if (o["metadata"].get("ownerReferences") or [{}])[0].get("uid") == other_uid
    }
    assert set(other_children) == {
        ("deployments", "iris-canary-v1"), ("services", "iris-canary"),
        ("serviceaccounts", "iris-canary"), ("ingresses", "iris-canary"),
        ("networkpolicies", "iris-canary"), ("poddisruptionbudgets", "iris-canary"),
    }

    def takeovers() -> list[Write]:
        """Operator writes that gave a child another controller than the one it had."""
        return [w for w in cluster.writes()
                if w.agent == OPERATOR_AGENT and w.plural in CHILD_PLURALS
                and w.method != "DELETE" and w.controller_before not in (None, w.controller_after)]

    start_canary(cluster, pods, GOOD_TOO)
    load = traffic(pods[GOOD], pods[GOOD_TOO])
    try:
        cluster.mark_ready(NS, "iris-v2", 1)
        wait_for(lambda: canary(cluster).get("weight") == 50, what="weight 50")
        # Mid-rollout, both canary Services exist side by side, each with its owner.
        assert takeovers() == []
        assert condition(status(cluster), "ChildrenOwned") == {}
        assert condition(other_status(), "ChildrenOwned") == {}
        assert (cluster.get("services", NS, "iris--canary") or {})["metadata"][
            "ownerReferences"][0]["uid"] == iris_uid
        assert (cluster.get("services", NS, "iris-canary") or {})["metadata"][
            "ownerReferences"][0]["uid"] == other_uid
        wait_for(lambda: canary(cluster).get("weight") == 100, timeout=120, what="weight 100")
        cluster.mark_ready(NS, "iris-v2", 2)
        done = wait_for(lambda: (s := status(cluster)).get("lastRollout") and s,
                        timeout=120, what="promotion")
    finally:
        load.stop()
    assert done["lastRollout"]["outcome"] == "Promoted"
    final = wait_for(lambda: (s := status(cluster)).get("phase") == "Ready" and s,
                     what="iris Ready on version 2")
    assert final["stable"]["version"] == "2"
    assert condition(final, "ChildrenOwned") == {}

    # iris-canary stayed Ready the whole time, on its own children, untouched.
    after = other_status()
    assert after["phase"] == "Ready" and after["stable"]["version"] == "1"
    assert condition(after, "Ready") == condition(settled, "Ready")  # no transition since
    assert condition(after, "ChildrenOwned") == {}
    # The promoted-away version and the canary routing retire a moment later.
    wait_for(lambda: "iris-v1" not in names(cluster, "deployments")
             and cluster.get("services", NS, "iris--canary") is None, what="retirement")
    for (plural, name), uid in other_children.items():
        obj = cluster.get(plural, NS, name) or {}
        assert obj.get("metadata", {}).get("uid") == uid, f"{plural}/{name} was replaced"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == other_uid
    assert [e["reason"] for e in events(cluster) if e["type"] == "Warning"] == []

    # From the API's record of every write: no write changed an object's controller,
    # each owner wrote only names of its own, and the only deletions were iris's leftovers.
    child_writes = [w for w in cluster.writes()
                    if w.agent == OPERATOR_AGENT and w.plural in CHILD_PLURALS]
    assert len(child_writes) > 15
    assert takeovers() == []
    by_owner: dict[str | None, set[tuple[str, str]]] = {}
    for w in child_writes:
        owner = w.controller_before if w.method == "DELETE" else w.controller_after
        by_owner.setdefault(owner, set()).add((w.plural, w.name))
    assert set(by_owner) == {iris_uid, other_uid}
    assert by_owner[iris_uid].isdisjoint(by_owner[other_uid])
    assert by_owner[other_uid] == set(other_children)
    deletes = sorted((w.plural, w.name, w.controller_before)
                     for w in child_writes if w.method == "DELETE")
    assert deletes == [("deployments", "iris-v1", iris_uid),
                       ("ingresses", "iris--canary", iris_uid),
                       ("services", "iris--canary", iris_uid)]
    op.stop()
    assert "Traceback" not in op.output()

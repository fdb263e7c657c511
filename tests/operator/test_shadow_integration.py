"""The shadow phase end to end: the operator under `kopf run` against the emulated API, a
real MLflow holding the versions, real runtime processes for the pods.

The test plays the kubelet for ConfigMap ``iris--shadow`` (it copies the ConfigMap's
``shadow.json`` into the file the stable runtime reads, as a mounted ConfigMap is
projected) and kube-proxy for the canary Service (the URL in that file is rewritten to
the canary process's address). Clients only ever talk to the stable process: at weight
0 that is what the cluster does. The canary's own /metrics say how many requests it
answered, and how many of those were mirrored.
"""

from __future__ import annotations

import json
import random
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kube_emulator import Cluster, wait_for
from mlflow_proc import BIN, MlflowServer
from modelship_operator.rollout.analysis import parse_metrics
from runtime_proc import RUNTIME, Runtime, good_model, iris_rows, shifted_model, start_all

NS = "ml"
MODEL = "iris"
STABLE, SAME, SHIFTED = "1", "2", "3"

pytestmark = pytest.mark.skipif(
    not (BIN / "mlflow").exists() or not RUNTIME.exists(),
    reason="the mlflow and modelship-runtime commands are missing (make setup installs them)",
)


@pytest.fixture(scope="module")
def pods(
    mlflow: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    server = mlflow
    """Version 1 (stable, reading its shadow file), 2 (the same model), 3 (never predicts
    setosa: it disagrees with the stable on a third of iris)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow
        import mlflow.sklearn

        mlflow.set_tracking_uri(server.uri)
        with mlflow.start_run():
            for i, estimator in enumerate([good_model(1.0), good_model(1.0), shifted_model()],
                                          start=1):
                mlflow.sklearn.log_model(
                    estimator, name=f"v{i}", registered_model_name=MODEL,
                    serialization_format="cloudpickle", pip_requirements=[],
                    await_registration_for=0,
                )
    root = tmp_path_factory.mktemp("pods")
    shadow_file = root / "shadow.json"
    shadow_file.write_text("{}")
    env = {"MLFLOW_TRACKING_URI": server.uri}
    runtimes = {
        STABLE: Runtime(["--model-uri", f"models:/{MODEL}/{STABLE}"], root / "v1.log",
                        env={**env, "MODELSHIP_SHADOW_CONFIG_FILE": str(shadow_file),
                             "MODELSHIP_SHADOW_CONFIG_POLL_SECONDS": "0.2"}),
        SAME: Runtime(["--model-uri", f"models:/{MODEL}/{SAME}"], root / "v2.log", env=env),
        SHIFTED: Runtime(["--model-uri", f"models:/{MODEL}/{SHIFTED}"], root / "v3.log",
                         env=env),
    }
    try:
        start_all(list(runtimes.values()))
        yield {"runtimes": runtimes, "shadow_file": shadow_file}
    finally:
        for runtime in runtimes.values():
            runtime.stop()


class Kubelet:
    """Projects ConfigMap iris--shadow into the stable's file, resolving the canary
    Service's URL to the canary process (a thread, stopped by the test)."""

    def __init__(self, cluster: Cluster, target: Path, canary: Runtime) -> None:
        self.cluster, self.target, self.canary = cluster, target, canary
        self.seen: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Kubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.target.write_text("{}")

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            cm = self.cluster.get("configmaps", NS, "iris--shadow") or {}
            raw = (cm.get("data") or {}).get("shadow.json")
            if raw is None:
                continue
            config = json.loads(raw)
            if not self.seen or self.seen[-1] != config:
                self.seen.append(dict(config))
            if config.get("url") == f"http://iris--canary.{NS}.svc:80":
                config["url"] = self.canary.url
            text = json.dumps(config)
            if not self.target.exists() or self.target.read_text() != text:
                self.target.write_text(text)


def manifest(version: str, **rollout: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": NS},
        "spec": {
            "model": {"name": MODEL, "version": version},
            "replicas": 1,
            "ingress": {"host": "iris.example.com", "className": "nginx"},
            "rollout": {
                "steps": [50, 100], "interval": "3s",
                "shadow": {"fraction": 1.0},
                "analysis": {"provider": "pods", "minRequests": 10, "failureLimit": 1,
                             "maxLatencyP95Ms": 2000, "minAgreement": 0.95,
                             "minPredictions": 60},
                **rollout,
            },
        },
    }


def status(cluster: Cluster) -> dict[str, Any]:
    return dict((cluster.get("modeldeployments", NS, "iris") or {}).get("status") or {})


def canary(cluster: Cluster) -> dict[str, Any]:
    return dict(status(cluster).get("canary") or {})


def events(cluster: Cluster, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.objects("events", NS)
            if e.get("source", {}).get("component") == "modelship-operator"
            and e["reason"] == reason]


class Clients:
    """Client traffic to the stable process only, every answer kept (a thread)."""

    def __init__(self, stable: Runtime) -> None:
        self.url = stable.url
        self.codes: dict[int, int] = {}
        self.answers: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Clients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        rows = iris_rows()
        random.Random(11).shuffle(rows)
        with httpx.Client(timeout=10) as client:
            for i in range(50_000):
                if self._stop.wait(0.004):
                    return
                try:
                    r = client.post(f"{self.url}/predict", json={"features": rows[i % 150]})
                    code = r.status_code
                    if code == 200:
                        self.answers.append(r.json()["prediction"])
                except httpx.HTTPError:
                    code = 0
                self.codes[code] = self.codes.get(code, 0) + 1


def serve(cluster: Cluster, pods: dict[str, Any], spec: dict[str, Any], version: str) -> None:
    runtimes = pods["runtimes"]
    cluster.create_md(spec)
    wait_for(lambda: cluster.get("deployments", NS, "iris-v1") is not None, what="iris-v1")
    cluster.mark_ready(NS, "iris-v1", 1)
    wait_for(lambda: status(cluster).get("phase") == "Ready", what="version 1 Ready")
    cluster.publish_endpoint(NS, "iris", "iris-v1", runtimes[STABLE].port)
    cluster.publish_endpoint(NS, "iris--canary", f"iris-v{version}", runtimes[version].port)
    cluster.patch_md(NS, "iris", {"spec": {"model": {"version": version}}})
    wait_for(lambda: cluster.get("deployments", NS, f"iris-v{version}") is not None,
             what=f"canary Deployment iris-v{version}")
    cluster.mark_ready(NS, f"iris-v{version}", 1)


def client_requests_at(runtime: Runtime) -> tuple[float, float]:
    """(prediction requests, of which mirrored) a runtime answered so far."""
    text = runtime.metrics()
    mirrored = sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("model_shadow_requests_total{")
    )
    return parse_metrics(text).requests, mirrored


def test_an_agreeing_candidate_passes_the_shadow_then_walks_its_steps(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer, pods: dict[str, Any],
) -> None:
    runtimes = pods["runtimes"]
    op = operator(MODELSHIP_OPERATOR_ROLLOUT_TICK_SECONDS="0.5",
                  MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI=mlflow.uri)
    before = client_requests_at(runtimes[SAME])
    with Kubelet(cluster, pods["shadow_file"], runtimes[SAME]) as kubelet, \
            Clients(runtimes[STABLE]) as clients:
        serve(cluster, pods, manifest(STABLE), SAME)
        shadowing = wait_for(lambda: (c := canary(cluster)).get("shadow") and c,
                             what="the shadow phase")
        assert shadowing["weight"] == 0
        at50 = wait_for(lambda: (c := canary(cluster)).get("weight") == 50 and c,
                        timeout=120, what="weight 50 after the shadow phase")
        wait_for(lambda: kubelet.seen[-1] == {}, what="mirroring off once weighted")
        judged = at50["lastAnalysis"]
        assert judged["verdict"] == "Pass" and judged["agreement"] >= 0.95
        assert judged["compared"] >= 60
        # While it shadowed, every request the canary answered was a mirrored one.
        during = client_requests_at(runtimes[SAME])
        assert during[0] - before[0] == pytest.approx(during[1] - before[1], abs=2)
    assert at50["shadowPassed"] is True and "shadow" not in at50
    assert {"mirrorFrom": "1", "mirrorTo": "2", "fraction": 1.0,
            "url": f"http://iris--canary.{NS}.svc:80"} in kubelet.seen
    assert len(events(cluster, "ShadowStarted")) == 1
    (passed,) = events(cluster, "ShadowPassed")
    assert "agreement with the stable" in passed["message"]
    assert clients.codes.get(200, 0) > 0 and set(clients.codes) == {200}
    op.stop()
    assert "Traceback" not in op.output()


def test_a_disagreeing_candidate_fails_in_the_shadow_and_no_client_sees_it(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer, pods: dict[str, Any],
) -> None:
    runtimes = pods["runtimes"]
    op = operator(MODELSHIP_OPERATOR_ROLLOUT_TICK_SECONDS="0.5",
                  MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI=mlflow.uri)
    before = client_requests_at(runtimes[SHIFTED])
    with Kubelet(cluster, pods["shadow_file"], runtimes[SHIFTED]), \
            Clients(runtimes[STABLE]) as clients:
        serve(cluster, pods, manifest(STABLE), SHIFTED)
        done = wait_for(lambda: (s := status(cluster)).get("phase") == "RolledBack" and s,
                        timeout=120, what="rollback in the shadow phase")
    last = done["lastRollout"]
    assert last["version"] == SHIFTED and "agreement with the stable" in last["reason"]
    assert "< minAgreement 0.95" in last["reason"]
    assert events(cluster, "CanaryWeight") == []  # never a weighted step
    # No client request reached the canary: all it answered were mirrored copies.
    after = client_requests_at(runtimes[SHIFTED])
    assert after[0] - before[0] > 0
    assert after[0] - before[0] == pytest.approx(after[1] - before[1], abs=0)
    # Clients only ever got the stable's answers: the stable predicts setosa (0) for
    # setosa rows, which the shifted candidate never does.
    assert clients.answers.count(0) > 0 and set(clients.codes) == {200}
    op.stop()
    assert "Traceback" not in op.output()


def test_a_candidate_failing_the_golden_set_never_receives_traffic(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer, pods: dict[str, Any],
) -> None:
    """spec.rollout.smokeTest from a ConfigMap: the golden rows (iris, with the stable's
    answers) go to the canary's pod once it is ready, before any mirrored or real request;
    the shifted candidate gets setosa wrong and is rolled back at once."""
    runtimes = pods["runtimes"]
    rows = iris_rows()[::3]  # 50 rows, every class
    expected = [int(v) for v in good_model(1.0).predict(rows)]  # type: ignore[attr-defined]
    cluster.http("POST", f"/api/v1/namespaces/{NS}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "iris-golden", "namespace": NS},
        "data": {"smoke.json": json.dumps({"instances": rows, "expected": expected})},
    })
    op = operator(MODELSHIP_OPERATOR_ROLLOUT_TICK_SECONDS="0.5",
                  MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI=mlflow.uri)
    before = client_requests_at(runtimes[SHIFTED])
    spec = manifest(STABLE, smokeTest={"configMap": {"name": "iris-golden", "key": "smoke.json"},
                                       "minAccuracy": 0.95})
    with Kubelet(cluster, pods["shadow_file"], runtimes[SHIFTED]) as kubelet:
        serve(cluster, pods, spec, SHIFTED)
        done = wait_for(lambda: (s := status(cluster)).get("phase") == "RolledBack" and s,
                        timeout=120, what="rollback on the golden set")
    assert done["lastRollout"]["reason"].startswith("smoke test failed: ")
    (failed,) = events(cluster, "SmokeTestFailed")
    assert "golden rows right" in failed["message"] and "row 0: expected 0, got 2" in (
        failed["message"])
    assert events(cluster, "ShadowStarted") == [] and events(cluster, "CanaryWeight") == []
    assert all(config == {} for config in kubelet.seen)  # mirroring never switched on
    after = client_requests_at(runtimes[SHIFTED])
    assert after[1] == before[1]  # not one mirrored request
    assert 1 <= after[0] - before[0] <= 2  # the golden set's batch (or two): nothing else
    op.stop()
    assert "Traceback" not in op.output()


def test_webhooks_hear_the_rollout_and_a_refused_confirmation_holds_the_promotion(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer, pods: dict[str, Any],
) -> None:
    """A confirm-promotion hook that refuses (403) holds the last step, saying so; once it
    answers 2xx the canary is promoted. An event hook hears the start and the promotion."""
    from hook_server import hook_server

    runtimes = pods["runtimes"]
    with hook_server() as hooks:
        hooks.answer("/gate", 403, 403, 403)
        spec = manifest(STABLE, steps=[100], webhooks=[
            {"name": "chat", "type": "event", "url": f"{hooks.url}/events"},
            {"name": "gate", "type": "confirm-promotion", "url": f"{hooks.url}/gate"},
        ])
        del spec["spec"]["rollout"]["shadow"]
        op = operator(MODELSHIP_OPERATOR_ROLLOUT_TICK_SECONDS="0.5",
                      MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI=mlflow.uri)
        with Clients(runtimes[SAME]):  # the canary's traffic at 100%
            serve(cluster, pods, spec, SAME)
            held = wait_for(lambda: (c := canary(cluster)).get("heldSince") and c,
                            timeout=120, what="the promotion held")
            assert "promotion not confirmed" in str(held["lastAnalysis"]["gates"]) or any(
                "promotion not confirmed" in e["message"]
                for e in events(cluster, "AnalysisInconclusive"))
            done = wait_for(lambda: (s := status(cluster)).get("lastRollout") and s,
                            timeout=120, what="promotion once confirmed")
        assert done["lastRollout"]["outcome"] == "Promoted"
        gate = hooks.hits("/gate")
        assert len(gate) >= 4  # three refusals, then the 2xx that let it through
        assert gate[0].body["event"] == "ConfirmPromotion" and gate[0].body["canary"] == SAME
        (inconclusive,) = events(cluster, "AnalysisInconclusive")
        assert "promotion not confirmed" in inconclusive["message"]
        wait_for(lambda: {"RolloutStarted", "Promoted"} <= {
            h.body["event"] for h in hooks.hits("/events")}, what="the event hook's calls")
        promoted = next(h.body for h in hooks.hits("/events") if h.body["event"] == "Promoted")
        assert promoted["name"] == "iris" and promoted["canary"] == SAME
    op.stop()
    assert "Traceback" not in op.output()


def test_the_shadow_token_is_a_secret_made_once_and_a_forged_mirror_is_not_compared(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer, pods: dict[str, Any],
    tmp_path: Path,
) -> None:
    """The operator creates Secret iris--shadow-token once (random, owned by the
    ModelDeployment, never rewritten) and every runtime pod reads it. Runtimes given that
    token: the stable's mirrored requests are compared; a client posting to the canary
    directly with X-Modelship-Shadow and made-up stable predictions is not."""
    import base64

    op = operator(MODELSHIP_OPERATOR_ROLLOUT_TICK_SECONDS="0.5",
                  MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI=mlflow.uri)
    md = cluster.create_md(manifest(STABLE))
    secret = wait_for(lambda: cluster.get("secrets", NS, "iris--shadow-token"),
                      what="Secret iris--shadow-token")
    assert secret["type"] == "Opaque"
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "ModelDeployment", "iris", md["metadata"]["uid"], True)
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) >= 43 and token.isascii() and token.isprintable()

    def token_env(deployment: str) -> dict[str, Any]:
        dep = cluster.get("deployments", NS, deployment) or {}
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        (env,) = [e for e in container["env"] if e["name"] == "MODELSHIP_SHADOW_TOKEN"]
        return dict(env["valueFrom"])

    wait_for(lambda: cluster.get("deployments", NS, "iris-v1") is not None, what="iris-v1")
    cluster.mark_ready(NS, "iris-v1", 1)
    cluster.patch_md(NS, "iris", {"spec": {"model": {"version": SAME}}})
    wait_for(lambda: cluster.get("deployments", NS, f"iris-v{SAME}") is not None,
             what="the canary's Deployment")
    ref = {"secretKeyRef": {"name": "iris--shadow-token", "key": "token"}}
    assert token_env("iris-v1") == token_env(f"iris-v{SAME}") == ref
    # Passes later (the rollout ticks every 0.5 s) leave the token as it was.
    cluster.mark_ready(NS, f"iris-v{SAME}", 1)
    wait_for(lambda: canary(cluster).get("shadow"), what="the shadow phase")
    assert (cluster.get("secrets", NS, "iris--shadow-token") or {})["data"] == secret["data"]
    op.stop()
    assert "Traceback" not in op.output()

    # Pods of a stable and a canary as the Deployments start them: the same token.
    env = {"MLFLOW_TRACKING_URI": mlflow.uri, "MODELSHIP_SHADOW_TOKEN": token}
    canary_pod = Runtime(["--model-uri", f"models:/{MODEL}/{SAME}"], tmp_path / "c.log",
                         env=env)
    stable_pod = Runtime(["--model-uri", f"models:/{MODEL}/{STABLE}"], tmp_path / "s.log",
                         env={**env, "MODELSHIP_SHADOW_URL": canary_pod.url})
    try:
        start_all([canary_pod, stable_pod])
        rows = iris_rows()[:20]
        with httpx.Client(timeout=30) as client:
            for row in rows:
                assert client.post(f"{stable_pod.url}/predict", json={"features": row}
                                   ).status_code == 200
            answer = client.post(f"{canary_pod.url}/predict",
                                 json={"instances": rows}).json()["predictions"]
            for row, label in zip(rows, answer, strict=True):  # forged: "the stable agrees"
                r = client.post(f"{canary_pod.url}/predict", json={"features": row}, headers={
                    "X-Modelship-Shadow": "1",
                    "X-Modelship-Stable-Prediction": json.dumps([label])})
                assert r.status_code == 200

        def figures() -> tuple[float, float]:
            text = canary_pod.metrics()
            window = parse_metrics(text)
            token_refused = sum(
                float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("model_shadow_uncompared_total{")
                and 'reason="token"' in line)
            return window.agree + window.disagree, token_refused

        wait_for(lambda: figures() == (20, 20), what="20 compared, 20 refused")
    finally:
        stable_pod.stop()
        canary_pod.stop()

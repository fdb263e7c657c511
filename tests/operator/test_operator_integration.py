"""The operator under `kopf run`, against KMock's KubernetesEmulator over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from kube_emulator import OPERATOR_AGENT, Cluster, operator_requests, wait_for
from modelship_operator import api, rbac

NS = "ml"
UID_FIELD = "uid"

CHILD_PLURALS = (
    "deployments",
    "services",
    "serviceaccounts",
    "horizontalpodautoscalers",
    "ingresses",
    "networkpolicies",
    "poddisruptionbudgets",
    "httproutes",
)


def manifest(name: str = "iris", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"name": "Iris Classifier", "version": "3"},
        "replicas": 2,
    }
    base.update(spec)
    return {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": base,
    }


def children(cluster: Cluster, name: str = "iris") -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for plural in CHILD_PLURALS:
        objs = [
            o
            for o in cluster.objects(plural, NS)
            if o["metadata"].get("labels", {}).get("modelship.io/deployment") == name
        ]
        if objs:
            found[plural] = objs
    return found


def md_status(cluster: Cluster, name: str = "iris") -> dict[str, Any]:
    obj = cluster.get("modeldeployments", NS, name) or {}
    return dict(obj.get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def writes(requests: list[tuple[str, str, dict[str, str], str]]) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _, _ in requests if m in ("POST", "PUT", "PATCH", "DELETE")]


def test_create_makes_every_child_owned_and_labelled(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    op = operator()
    md = cluster.create_md(
        manifest(ingress={"host": "iris.example.com", "tlsSecret": "iris-tls"},
                 autoscaling={"minReplicas": 2, "maxReplicas": 5})
    )
    uid = md["metadata"][UID_FIELD]
    kids = wait_for(
        lambda: (c := children(cluster)) and len(c) >= 7 and c,
        what="children to be created",
    )
    assert set(kids) == {
        "deployments", "services", "serviceaccounts", "horizontalpodautoscalers",
        "ingresses", "networkpolicies", "poddisruptionbudgets",
    }
    assert [d["metadata"]["name"] for d in kids["deployments"]] == ["iris-v3"]
    for objs in kids.values():
        for obj in objs:
            refs = obj["metadata"]["ownerReferences"]
            assert refs == [
                {
                    "apiVersion": "modelship.io/v1alpha1",
                    "kind": "ModelDeployment",
                    "name": "iris",
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ], obj["metadata"]["name"]
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/managed-by"] == "modelship"
            assert labels["app.kubernetes.io/instance"] == "iris"
            assert labels["modelship.io/deployment"] == "iris"
            assert {"app.kubernetes.io/name", "app.kubernetes.io/component"} <= set(labels)
    assert kids["deployments"][0]["metadata"]["labels"]["modelship.io/model-version"] == "3"

    status = wait_for(lambda: (s := md_status(cluster)).get("phase") and s, what="status")
    assert status["phase"] == "Pending"
    assert status["observedGeneration"] == 1
    assert status["url"] == "https://iris.example.com/"
    assert condition(status, "Ready")["status"] == "False"
    assert condition(status, "Reconciling")["status"] == "True"
    assert condition(status, "Stalled")["status"] == "False"

    # The kubelet reports ready pods: the Deployment watch brings status to Ready.
    cluster.mark_ready(NS, "iris-v3", 2)
    status = wait_for(
        lambda: (s := md_status(cluster)).get("phase") == "Ready" and s, what="Ready"
    )
    assert status["stable"] == {"version": "3", "replicas": 2, "readyReplicas": 2}
    assert condition(status, "Ready")["reason"] == "Serving"
    assert condition(status, "Reconciling")["status"] == "False"
    events = cluster.objects("events", NS)
    reasons = {e.get("reason") for e in events}
    assert {"Reconciled", "Ready"} <= reasons, reasons
    op.stop()
    assert "Traceback" not in op.output()


def test_spec_changes_change_the_right_children(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    operator()
    cluster.create_md(manifest(ingress={"host": "iris.example.com"}))
    wait_for(lambda: "ingresses" in children(cluster), what="ingress")
    dep = children(cluster)["deployments"][0]
    assert dep["spec"]["replicas"] == 2

    cluster.patch_md(NS, "iris", {"spec": {"replicas": 4}})
    wait_for(
        lambda: children(cluster)["deployments"][0]["spec"].get("replicas") == 4,
        what="replicas 4",
    )

    # Autoscaling on: an HPA appears and the Deployment leaves replicas to it.
    cluster.patch_md(NS, "iris", {"spec": {"autoscaling": {"minReplicas": 2, "maxReplicas": 6}}})
    kids = wait_for(
        lambda: "horizontalpodautoscalers" in (c := children(cluster)) and c, what="HPA"
    )
    hpa = kids["horizontalpodautoscalers"][0]
    assert hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["scaleTargetRef"]["name"] == "iris-v3"
    wait_for(
        lambda: "replicas" not in children(cluster)["deployments"][0]["spec"],
        what="replicas to be left to the HPA",
    )

    # Ingress and autoscaling removed: both children are deleted, the rest stays.
    cluster.patch_md(NS, "iris", {"spec": {"ingress": None, "autoscaling": None}})
    kids = wait_for(
        lambda: "ingresses" not in (c := children(cluster))
        and "horizontalpodautoscalers" not in c
        and c,
        what="ingress and HPA deletion",
    )
    assert {"deployments", "services", "serviceaccounts"} <= set(kids)

    # A new model version starts a canary: the stable side is untouched, the canary
    # gets no traffic until its pods are ready, then the first step's weight.
    cluster.mark_ready(NS, "iris-v3", 4)
    cluster.patch_md(NS, "iris", {"spec": {"model": {"version": "4"}}})
    kids = wait_for(
        lambda: len((c := children(cluster))["deployments"]) == 2 and c, what="canary"
    )
    assert sorted(d["metadata"]["name"] for d in kids["deployments"]) == ["iris-v3", "iris-v4"]
    services = {s["metadata"]["name"]: s for s in kids["services"]}
    assert set(services) == {"iris", "iris--canary"}
    assert services["iris--canary"]["spec"]["selector"]["modelship.io/model-version"] == "4"
    status = wait_for(
        lambda: (s := md_status(cluster)).get("phase") == "Progressing" and s, what="Progressing"
    )
    assert status["canary"]["version"] == "4" and status["canary"]["weight"] == 0
    assert status["stable"]["version"] == "3"
    assert condition(status, "Ready")["status"] == "False"
    assert condition(status, "Reconciling")["reason"] == "RolloutInProgress"
    cluster.mark_ready(NS, "iris-v4", 1)
    status = wait_for(
        lambda: (s := md_status(cluster)).get("canary", {}).get("weight") == 10 and s,
        what="weight 10",
    )
    # A person promotes now: Service iris retargets to version 4, then v3 goes away.
    cluster.patch_md(NS, "iris", {"metadata": {"annotations": {"modelship.io/promote": "now"}}})
    def promoted() -> dict[str, list[dict[str, Any]]] | None:
        c = children(cluster)
        names = [d["metadata"]["name"] for d in c["deployments"]]
        return c if names == ["iris-v4"] and len(c["services"]) == 1 else None

    kids = wait_for(promoted, what="promotion to iris-v4")
    service = next(s for s in kids["services"] if s["metadata"]["name"] == "iris")
    assert service["spec"]["selector"]["modelship.io/model-version"] == "4"
    assert [s["metadata"]["name"] for s in kids["services"]] == ["iris"]
    status = wait_for(
        lambda: (s := md_status(cluster)).get("stable", {}).get("version") == "4" and s,
        what="stable 4",
    )
    assert status.get("canary") is None
    assert status["lastRollout"]["outcome"] == "Promoted"


PASSES = ("modelship_operator_reconcile_duration_seconds_count", frozenset())


def passes(op: Any) -> float:
    """Reconcile passes the operator has made (its own metric)."""
    return scrape(op.metrics_url)[PASSES]


def serve_ready(cluster: Cluster, **spec: Any) -> None:
    """Create `iris` with an Ingress, play the kubelet, and wait until it is Ready."""
    cluster.create_md(manifest(ingress={"host": "iris.example.com"}, **spec))
    wait_for(lambda: "ingresses" in children(cluster), what="children")
    cluster.mark_ready(NS, "iris-v3", 2)
    wait_for(lambda: md_status(cluster).get("phase") == "Ready", what="Ready")


def test_a_quiet_modeldeployment_costs_no_request(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    # Safety passes every second (the fixture's resync interval): each reads only the
    # watch-fed caches, so a ModelDeployment nothing changes costs no request at all.
    op = operator()
    serve_ready(cluster)
    # Settled: a pass has run after the last status write (that write woke it).
    settled = passes(op)
    wait_for(lambda: passes(op) >= settled + 1, what="a settled pass")
    before, start = len(cluster.requests()), passes(op)
    wait_for(lambda: passes(op) >= start + 3, what="three safety passes")
    window = [r for r in operator_requests(cluster)[before:] if r[2].get("watch") != "true"]
    assert window == [], window
    op.stop()


def test_a_child_deleted_or_edited_by_hand_is_repaired_from_its_watch_event(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    # No safety pass within the test (resync 10 min): only the watch can tell.
    operator(MODELSHIP_OPERATOR_RESYNC_INTERVAL_SECONDS="600")
    serve_ready(cluster)
    service = cluster.get("services", NS, "iris")
    assert service is not None
    cluster.delete(f"/api/v1/namespaces/{NS}/services/iris")
    wait_for(lambda: (cluster.get("services", NS, "iris") or {}).get("metadata", {}).get("uid")
             not in (None, service["metadata"]["uid"]), what="the Service made again")
    cluster.http("PATCH", f"/apis/networking.k8s.io/v1/namespaces/{NS}/ingresses/iris",
                 {"spec": {"rules": [{"host": "evil.example.com"}]}},
                 "application/merge-patch+json")
    wait_for(lambda: (cluster.get("ingresses", NS, "iris") or {}).get("spec", {})
             .get("rules", [{}])[0].get("host") == "iris.example.com",
             what="the Ingress host put back")


@pytest.mark.parametrize("cluster", [("httproutes",)], indirect=True)
def test_a_cluster_without_the_gateway_api_is_served(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    # Gateway API is not installed: its kind has no watch and no index, and a
    # ModelDeployment routed by an Ingress is served all the same.
    op = operator()
    serve_ready(cluster)
    op.stop()
    assert "Traceback" not in op.output()


def test_invalid_spec_stalls_and_creates_nothing(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    # No tracking URI in the spec and none configured: the schema allows it, the
    # operator cannot run a model without a registry.
    operator(MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI="")
    cluster.create_md(manifest())
    # A spec that breaks a CEL rule, created here because the emulator has no CEL.
    cluster.create_md(
        manifest("bad", autoscaling={"minReplicas": 5, "maxReplicas": 2},
                 model={"name": "m", "version": "1",
                        "registry": {"trackingUri": "http://mlflow:5000"}})
    )
    for name, field in (("iris", "spec.model.registry.trackingUri"),
                        ("bad", "spec.autoscaling.minReplicas")):
        status = wait_for(
            lambda n=name: (s := md_status(cluster, n)).get("phase") == "Failed" and s,
            what=f"{name} to stall",
        )
        stalled = condition(status, "Stalled")
        assert stalled["status"] == "True"
        assert stalled["reason"] == "InvalidSpec"
        assert field in stalled["message"]
        assert condition(status, "Ready")["status"] == "False"
        assert children(cluster, name) == {}
    # Not retried in a hot loop: the stalled objects cause no more writes (kopf's own
    # finalizer, added once per object, may land after the status; wait for it first).
    for name in ("iris", "bad"):
        wait_for(lambda n=name: (cluster.get(api.PLURAL, NS, n) or {}).get("metadata", {})
                 .get("finalizers"), what=f"{name}'s finalizer")
    before = len(cluster.requests())
    time.sleep(3)
    window = [r for r in operator_requests(cluster)[before:]]
    # No write of the operator's passes; kopf's own bookkeeping of the objects (a patch of
    # the object itself, under load sometimes this late) at most once each, never a loop.
    assert writes([r for r in window if r[3] == OPERATOR_AGENT]) == [], window
    by_kopf = writes([r for r in window if r[3] != OPERATOR_AGENT])
    assert len(by_kopf) == len(set(by_kopf)) <= 2, window
    warnings = [e for e in cluster.objects("events", NS) if e.get("type") == "Warning"]
    assert len(warnings) == 2


def test_transient_api_errors_are_retried_until_converged(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    cluster.inject(lambda r: r.method.value == "PATCH" and "/services/" in r.url.path, 500, 2)
    cluster.inject(lambda r: r.method.value == "PATCH" and "/deployments/" in r.url.path, 409, 1)
    op = operator()
    cluster.create_md(manifest())
    kids = wait_for(
        lambda: len(c := children(cluster)) >= 5 and c, timeout=40, what="convergence"
    )
    assert {"deployments", "services", "serviceaccounts"} <= set(kids)
    failed = [r for r in operator_requests(cluster) if r[0] == "PATCH" and "/services/" in r[1]]
    assert len(failed) >= 3  # two injected failures, then success
    assert "transient API error" in op.output()


def test_every_request_is_allowed_by_the_rbac_rules(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    operator()
    cluster.create_md(manifest(gateway={"parentRefs": [{"name": "public"}],
                                        "hostnames": ["iris.example.com"]}))
    wait_for(lambda: "httproutes" in children(cluster), what="HTTPRoute")
    cluster.mark_ready(NS, "iris-v3", 2)
    wait_for(lambda: md_status(cluster).get("phase") == "Ready", what="Ready")
    cluster.patch_md(NS, "iris", {"spec": {"gateway": None}})
    wait_for(lambda: "httproutes" not in children(cluster), what="HTTPRoute deletion")
    seen = operator_requests(cluster)
    assert len(seen) > 10
    denied = [(m, p) for m, p, q, _ in seen if not rbac.allows(m, p, q)]
    assert denied == []
    verbs = {rbac.request_attributes(m, p, q) for m, p, q, _ in seen} - {None}
    assert ("apps", "deployments", "patch") in verbs
    assert ("gateway.networking.k8s.io", "httproutes", "delete") in verbs


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, as Prometheus reads the operator's /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_endpoint_shows_passes_rollouts_and_deletions(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    op = operator()
    iris = frozenset({("namespace", NS), ("modelship_deployment", "iris")})

    def sample(name: str, **labels: str) -> float | None:
        return scrape(op.metrics_url).get((name, iris | frozenset(labels.items())))

    cluster.create_md(manifest())
    wait_for(lambda: "deployments" in children(cluster), what="iris-v3")
    cluster.mark_ready(NS, "iris-v3", 2)
    wait_for(lambda: md_status(cluster).get("phase") == "Ready", what="Ready")
    wait_for(lambda: sample("modelship_rollout_in_progress") == 0, what="in-progress 0")
    found = scrape(op.metrics_url)
    passes = found[("modelship_operator_reconcile_duration_seconds_count", frozenset())]
    assert passes >= 1
    assert found[("modelship_rollouts_total", iris | {("outcome", "Promoted")})] == 0

    # A canary at its first weight: the gauges say so, with the progress status keeps and
    # the deadline that follows from it (interval 60 s, progressDeadlineSeconds 600).
    cluster.patch_md(NS, "iris", {"spec": {"model": {"version": "4"}}})
    wait_for(lambda: len(children(cluster)["deployments"]) == 2, what="canary")
    cluster.mark_ready(NS, "iris-v4", 1)
    wait_for(lambda: md_status(cluster).get("canary", {}).get("weight") == 10, what="weight 10")
    wait_for(lambda: sample("modelship_canary_weight") == 10, what="weight gauge 10")
    assert sample("modelship_rollout_in_progress") == 1
    assert sample("modelship_rollout_step") == 1
    progress_at = datetime.fromisoformat(md_status(cluster)["canary"]["progressAt"]).timestamp()
    progressed = sample("modelship_rollout_last_progress_timestamp_seconds")
    deadline = sample("modelship_rollout_deadline_timestamp_seconds")
    assert progressed is not None and abs(progressed - progress_at) < 0.001
    assert deadline is not None and abs(deadline - (progress_at + 60 + 600)) < 0.001

    # Promoted: counted once, and the gauges are back to no rollout.
    cluster.patch_md(NS, "iris", {"metadata": {"annotations": {"modelship.io/promote": "now"}}})
    wait_for(lambda: sample("modelship_rollouts_total", outcome="Promoted") == 1,
             timeout=30, what="a promotion counted")
    wait_for(lambda: sample("modelship_canary_weight") == 0, what="weight gauge 0")
    assert sample("modelship_rollout_in_progress") == 0
    assert sample("modelship_rollout_last_progress_timestamp_seconds") is None
    assert sample("modelship_rollouts_total", outcome="RolledBack") == 0

    # A spec the operator cannot honour is a reconcile error, counted by reason.
    cluster.create_md(manifest("bad", autoscaling={"minReplicas": 5, "maxReplicas": 2}))
    invalid = frozenset({("reason", "InvalidSpec")})
    wait_for(lambda: scrape(op.metrics_url).get(
        ("modelship_operator_reconcile_errors_total", invalid), 0) >= 1,
        what="InvalidSpec counted")

    # Deleted: no series of it is left.
    cluster.delete(f"/apis/modelship.io/v1alpha1/namespaces/{NS}/modeldeployments/iris")
    wait_for(lambda: not any(iris <= labels for _, labels in scrape(op.metrics_url)),
             what="iris's series to go")
    op.stop()
    assert "Traceback" not in op.output()

"""An object of another owner where a child should be is left alone and reported.

The pure parts (who holds an object, what a child names, the condition) are checked
directly; `sync_children` runs against the emulated API through the operator's own
client, with foreign objects placed by hand; and the operator under `kopf run` reports
the conflict in status and an Event, then takes the name once it is free.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kube_emulator import OPERATOR_AGENT, Cluster, wait_for
from modelship_operator import api, render, status
from modelship_operator.apply import Conflict, holder, references, sync_children
from modelship_operator.k8s import KubeClient
from modelship_operator.render import RolloutState
from modelship_operator.settings import OperatorSettings

NS = "ml"
SETTINGS = OperatorSettings(default_tracking_uri="http://mlflow.mlflow:5000")
OURS = {"modelship.io/deployment": "iris", "app.kubernetes.io/managed-by": "modelship"}


def _meta(refs: list[dict[str, Any]] | None = None, labels: dict[str, str] | None = None
          ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "iris"}
    if refs is not None:
        meta["ownerReferences"] = refs
    if labels is not None:
        meta["labels"] = labels
    return {"metadata": meta}


def _ref(uid: str, controller: bool = True, kind: str = "ModelDeployment",
         name: str = "iris-canary") -> dict[str, Any]:
    return {"apiVersion": "x/v1", "kind": kind, "name": name, "uid": uid,
            "controller": controller}


# --- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "held_by"),
    [
        (_meta([_ref("me")]), None),
        (_meta([_ref("me")], {"other": "x"}), None),
        (_meta([_ref("them")], OURS), "ModelDeployment iris-canary (uid them)"),
        (_meta([_ref("me", controller=False), _ref("them", kind="Thing", name="t")]),
         "Thing t (uid them)"),
        (_meta(None, OURS), None),  # an orphan made for a ModelDeployment of this name
        (_meta([_ref("x", controller=False)], OURS), None),
        (_meta(None, {**OURS, "modelship.io/deployment": "iris-canary"}),
         "someone else (no controller, and not labelled as this ModelDeployment's)"),
        (_meta(None, {"modelship.io/deployment": "iris"}),
         "someone else (no controller, and not labelled as this ModelDeployment's)"),
        (_meta(), "someone else (no controller, and not labelled as this ModelDeployment's)"),
    ],
)
def test_holder(obj: dict[str, Any], held_by: str | None) -> None:
    assert holder(obj, "me", "iris") == held_by


def test_references_name_routes_scale_targets_and_identity() -> None:
    md = api.ModelDeployment.from_body({
        "metadata": {"name": "iris", "namespace": NS, "uid": "u"},
        "spec": {"model": {"name": "m", "version": "1"}, "ingress": {"host": "a.example.com"},
                 "autoscaling": {"maxReplicas": 3}},
    })
    state = RolloutState("1", "2", 10)
    found = {(o["kind"], o["metadata"]["name"]): references(o)
             for o in render.render(md, state, SETTINGS)}
    assert found[("Deployment", "iris-v1")] == {("ServiceAccount", "iris")}
    assert found[("HorizontalPodAutoscaler", "iris-v2")] == {("Deployment", "iris-v2")}
    assert found[("Ingress", "iris")] == {("Service", "iris")}
    assert found[("Ingress", "iris--canary")] == {("Service", "iris--canary")}
    assert found[("Service", "iris")] == set()
    gateway = api.ModelDeployment.from_body({
        "metadata": {"name": "iris", "namespace": NS, "uid": "u"},
        "spec": {"model": {"name": "m", "version": "1"},
                 "gateway": {"parentRefs": [{"name": "g"}]}},
    })
    (route,) = [o for o in render.render(gateway, state, SETTINGS) if o["kind"] == "HTTPRoute"]
    assert references(route) == {("Service", "iris"), ("Service", "iris--canary")}


def test_children_owned_condition() -> None:
    conflicts = [str(Conflict("Service", "iris", "Thing t (uid 1)")),
                 str(Conflict("Ingress", "iris", "", "Service iris"))]
    (held,) = status.children_owned(conflicts, [], 3)
    assert held["type"] == "ChildrenOwned" and held["status"] == "False"
    assert held["reason"] == "ChildConflict" and held["observedGeneration"] == 3
    assert held["message"].startswith(
        "left alone, and not applied: Service iris is held by Thing t (uid 1); "
        "Ingress iris (it names Service iris). Delete or rename the other object")
    assert status.held_back([held]) == held
    # Absent until a conflict is seen; True again once it is gone.
    assert status.children_owned([], [], 3) == []
    (owned,) = status.children_owned([], [held], 4)
    assert owned["status"] == "True" and owned["reason"] == "Owned"
    # This pass's verdict comes first and wins over the stored one.
    assert status.held_back([owned, held]) is None
    assert status.held_back([{"type": "Ready", "status": "False"}]) is None


# --- sync_children against the emulated API -------------------------------------------------


def _client(cluster: Cluster) -> KubeClient:
    return KubeClient.from_kubeconfig(cluster.kubeconfig)


def _place(cluster: Cluster, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    """An object created by someone else (a person, another controller)."""
    created: dict[str, Any] = cluster.http("POST", path, obj)
    return created


def _foreign_objects(cluster: Cluster) -> dict[tuple[str, str], dict[str, Any]]:
    meta = {"namespace": NS}
    placed = {
        ("services", "iris"): _place(cluster, f"/api/v1/namespaces/{NS}/services", {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {**meta, "name": "iris", "labels": {"app": "legacy-iris"}},
            "spec": {"selector": {"app": "legacy-iris"}, "ports": [{"port": 8080}]},
        }),
        ("deployments", "iris-v1"): _place(cluster, f"/apis/apps/v1/namespaces/{NS}/deployments", {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {**meta, "name": "iris-v1", "ownerReferences": [
                _ref("f00d", kind="Application", name="legacy")]},
            "spec": {"replicas": 1},
        }),
        ("networkpolicies", "iris"): _place(
            cluster, f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies", {
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                # Made for an earlier ModelDeployment iris that was deleted: its own uid.
                "metadata": {**meta, "name": "iris", "labels": dict(OURS),
                             "ownerReferences": [_ref("0ld", name="iris")]},
                "spec": {"podSelector": {}},
            }),
        ("serviceaccounts", "iris"): _place(cluster, f"/api/v1/namespaces/{NS}/serviceaccounts", {
            "apiVersion": "v1", "kind": "ServiceAccount",
            # Orphaned by `kubectl delete md iris --cascade=orphan`: ours to adopt.
            "metadata": {**meta, "name": "iris", "labels": dict(OURS)},
        }),
    }
    return placed


def test_sync_leaves_foreign_objects_alone_and_adopts_our_orphans(cluster: Cluster) -> None:
    foreign = _foreign_objects(cluster)
    md_body = cluster.create_md({
        "apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": NS},
        "spec": {"model": {"name": "m", "version": "1"}, "ingress": {"host": "a.example.com"},
                 "autoscaling": {"maxReplicas": 3}},
    })
    md = api.ModelDeployment.from_body(md_body)
    uid = md.metadata.uid
    desired = render.render(md, RolloutState("1"), SETTINGS)
    kube = _client(cluster)
    mark = len(cluster.writes())

    result = sync_children(kube, desired, render.desired_kinds(), NS, "iris", uid, "modelship")

    assert sorted(map(str, result.conflicts)) == [
        "Deployment iris-v1 is held by Application legacy (uid f00d)",
        "HorizontalPodAutoscaler iris-v1 (it names Deployment iris-v1)",
        "Ingress iris (it names Service iris)",
        "NetworkPolicy iris is held by ModelDeployment iris (uid 0ld)",
        "Service iris is held by someone else (no controller, and not labelled as this "
        "ModelDeployment's)",
    ]
    # What is free, or an orphan of ours, is applied; nothing held is written.
    assert sorted(result.created + result.updated) == [
        "PodDisruptionBudget/iris", "ServiceAccount/iris"]
    assert result.deleted == []
    operator_writes = [w for w in cluster.writes()[mark:] if w.agent == OPERATOR_AGENT]
    assert sorted((w.plural, w.name) for w in operator_writes) == [
        ("poddisruptionbudgets", "iris"), ("serviceaccounts", "iris")]
    for (plural, name), before in foreign.items():
        after = cluster.get(plural, NS, name)
        if plural == "serviceaccounts":
            assert after is not None
            assert after["metadata"]["ownerReferences"][0]["uid"] == uid
            assert after["metadata"]["uid"] == before["metadata"]["uid"]
        else:
            assert after == before, f"{plural}/{name} was changed"
    assert cluster.get("ingresses", NS, "iris") is None
    assert cluster.get("horizontalpodautoscalers", NS, "iris-v1") is None

    # The Service's owner removes it: the next pass creates ours, and the Ingress with it.
    cluster.delete(f"/api/v1/namespaces/{NS}/services/iris")
    again = sync_children(kube, desired, render.desired_kinds(), NS, "iris", uid, "modelship")
    assert sorted(again.created) == ["Ingress/iris", "Service/iris"]
    assert len(again.conflicts) == 3
    service = cluster.get("services", NS, "iris") or {}
    assert service["metadata"]["ownerReferences"][0]["uid"] == uid
    assert json.dumps(cluster.get("deployments", NS, "iris-v1")) == json.dumps(
        foreign[("deployments", "iris-v1")])


# --- the operator under kopf ------------------------------------------------------------------


def _md_status(cluster: Cluster) -> dict[str, Any]:
    return dict((cluster.get("modeldeployments", NS, "iris") or {}).get("status") or {})


def _condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def test_operator_reports_a_held_name_and_takes_it_once_free(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    service = _place(cluster, f"/api/v1/namespaces/{NS}/services", {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": NS, "name": "iris", "labels": {"app": "legacy-iris"}},
        "spec": {"selector": {"app": "legacy-iris"}, "ports": [{"port": 8080}]},
    })
    deployment = _place(cluster, f"/apis/apps/v1/namespaces/{NS}/deployments", {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"namespace": NS, "name": "iris-v3", "ownerReferences": [
            _ref("f00d", kind="Application", name="legacy")]},
        "spec": {"replicas": 1},
    })
    op = operator()
    cluster.create_md({
        "apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": NS},
        "spec": {"model": {"name": "m", "version": "3"}, "replicas": 2,
                 "ingress": {"host": "iris.example.com"}},
    })
    held = wait_for(
        lambda: (s := _md_status(cluster)) and _condition(s, "ChildrenOwned") and s,
        timeout=30, what="the ChildrenOwned condition",
    )
    owned = _condition(held, "ChildrenOwned")
    assert owned["status"] == "False" and owned["reason"] == "ChildConflict"
    for part in ("Deployment iris-v3 is held by Application legacy (uid f00d)",
                 "Service iris is held by someone else (no controller",
                 "Ingress iris (it names Service iris)"):
        assert part in owned["message"], owned["message"]
    assert held["phase"] == "Failed"
    assert _condition(held, "Ready")["status"] == "False"
    stalled = _condition(held, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "ChildConflict"
    assert stalled["message"] == owned["message"]
    (event,) = wait_for(
        lambda: [e for e in cluster.objects("events", NS) if e.get("reason") == "ChildConflict"],
        what="a ChildConflict Event",
    )
    assert event["type"] == "Warning" and event["involvedObject"]["name"] == "iris"
    assert "Service iris is held by" in event["message"]
    assert "Application legacy (uid f00d)" in event["message"]
    # The free children are made; over several resync passes (1 s apart) nothing held
    # is written or deleted, and the conflict is not posted again.
    wait_for(lambda: cluster.get("serviceaccounts", NS, "iris"), what="ServiceAccount")
    mark = len(cluster.requests())
    wait_for(lambda: sum(1 for m, p, _, a in cluster.requests()[mark:]
                         if a == OPERATOR_AGENT and m == "GET" and p.endswith("/services/iris"))
             >= 3, timeout=30, what="three more passes")
    touched = [w for w in cluster.writes() if w.agent == OPERATOR_AGENT
               and (w.plural, w.name) in (("services", "iris"), ("deployments", "iris-v3"),
                                          ("ingresses", "iris"))]
    assert touched == []
    assert cluster.get("services", NS, "iris") == service
    assert cluster.get("deployments", NS, "iris-v3") == deployment
    assert cluster.get("ingresses", NS, "iris") is None
    posted = [e for e in cluster.objects("events", NS) if e.get("reason") == "ChildConflict"]
    assert len(posted) == 1

    # Their owners remove them: the operator takes the names and serves.
    cluster.delete(f"/api/v1/namespaces/{NS}/services/iris")
    cluster.delete(f"/apis/apps/v1/namespaces/{NS}/deployments/iris-v3")
    ours = wait_for(
        lambda: (d := cluster.get("deployments", NS, "iris-v3"))
        and (d["metadata"].get("ownerReferences") or [{}])[0].get("kind") == "ModelDeployment"
        and d,
        timeout=30, what="our Deployment iris-v3",
    )
    assert ours["metadata"]["labels"]["modelship.io/deployment"] == "iris"
    wait_for(lambda: cluster.get("ingresses", NS, "iris"), what="our Ingress iris")
    cluster.mark_ready(NS, "iris-v3", 2)
    ready = wait_for(lambda: (s := _md_status(cluster)).get("phase") == "Ready" and s,
                     timeout=30, what="Ready")
    assert _condition(ready, "ChildrenOwned")["status"] == "True"
    assert _condition(ready, "Stalled")["status"] == "False"
    assert _condition(ready, "Ready")["status"] == "True"
    op.stop()
    assert "Traceback" not in op.output()

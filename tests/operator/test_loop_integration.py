"""The per-object loop against the emulated API: what its caches and its one writer must
never do (re-create nothing, decide twice, spin, wake for nothing, outlive its object)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from kube_emulator import Cluster, wait_for
from test_operator_integration import NS, children, manifest, md_status, passes, scrape


def status_patch(request: Any) -> bool:
    return bool(request.method.value == "PATCH" and "/modeldeployments/" in request.url.path
                and request.url.path.endswith("/status"))


def test_a_child_deleted_while_its_pass_runs_is_made_again(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    # The first status write is throttled (the client waits out two 429s), so the pass
    # that created the Service is still running when the Service is deleted: its own
    # record of the apply must not hide the deletion the watch reported.
    cluster.inject(status_patch, 429, 2)
    operator(MODELSHIP_OPERATOR_RESYNC_INTERVAL_SECONDS="600")
    cluster.create_md(manifest())
    first = wait_for(lambda: cluster.get("services", NS, "iris"), what="the Service")
    cluster.delete(f"/api/v1/namespaces/{NS}/services/iris")
    wait_for(lambda: (cluster.get("services", NS, "iris") or {}).get("metadata", {})
             .get("uid") not in (None, first["metadata"]["uid"]), what="the Service again")


def test_a_refused_status_write_decides_nothing_twice(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    cluster.inject(status_patch, 503, 1)
    op = operator(MODELSHIP_OPERATOR_RESYNC_INTERVAL_SECONDS="1")
    cluster.create_md(manifest(ingress={"host": "iris.example.com"}))
    wait_for(lambda: md_status(cluster).get("stable"), what="the status written")
    settled = passes(op)
    wait_for(lambda: passes(op) >= settled + 2, what="two more passes")
    reasons = Counter(e["reason"] for e in cluster.objects("events", NS))
    assert reasons["Deployed"] == 1 and reasons["Reconciled"] == 1, reasons


def test_a_follower_stalled_before_resolving_does_not_spin(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    op = operator(MODELSHIP_OPERATOR_RESYNC_INTERVAL_SECONDS="600")
    cluster.create_md(manifest(model={"name": "m", "alias": "champion"}))
    wait_for(lambda: md_status(cluster).get("phase"), what="a status")
    cluster.patch_md(NS, "iris", {"spec": {"model": {"registry": {
        "trackingUri": "http://elsewhere.example.com"}}}})
    wait_for(lambda: "TrackingHostNotAllowed" in str(md_status(cluster)), what="stalled")
    before = passes(op)
    time.sleep(3)  # a window to count passes in: a spinning loop makes thousands
    assert passes(op) - before <= 8


def test_a_change_no_pass_reads_wakes_none(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    op = operator(MODELSHIP_OPERATOR_RESYNC_INTERVAL_SECONDS="600")
    cluster.create_md(manifest(autoscaling={"minReplicas": 2, "maxReplicas": 4}))
    wait_for(lambda: "horizontalpodautoscalers" in children(cluster), what="the HPA")
    cluster.mark_ready(NS, "iris-v3", 2)
    wait_for(lambda: md_status(cluster).get("phase") == "Ready", what="Ready")
    settled = passes(op)
    wait_for(lambda: passes(op) >= settled, what="settled")
    before = passes(op)
    for utilisation in range(40, 50):  # the HPA controller reporting its metrics
        cluster.http(
            "PATCH",
            f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/iris-v3/status",
            {"status": {"currentReplicas": 2, "desiredReplicas": 2, "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {
                    "averageUtilization": utilisation}}}]}},
            "application/merge-patch+json",
        )
        time.sleep(0.2)  # apart, as the HPA controller's are (a burst would be one pass)
    # A change a pass does read, last: once its pass has run, the HPA's events are
    # behind it too (one watch stream per kind, in order; the sentinel is another kind,
    # so give the HPA's stream the same chance by waiting for the sentinel's effect).
    cluster.mark_ready(NS, "iris-v3", 1)
    wait_for(lambda: md_status(cluster).get("stable", {}).get("readyReplicas") == 1,
             what="the pod count reported")
    assert passes(op) - before <= 3


def test_a_deleted_modeldeployment_leaves_no_loop_and_no_series(
    cluster: Cluster, operator: Callable[..., Any]
) -> None:
    op = operator(MODELSHIP_OPERATOR_RESYNC_INTERVAL_SECONDS="600")
    cluster.create_md(manifest())
    wait_for(lambda: md_status(cluster).get("phase"), what="a status")
    # The next pass is slow (its Deployment apply throttled twice), and the object is
    # deleted while it runs: the pass finishes, then the loop ends, then kopf lets go.
    cluster.inject(lambda r: r.method.value == "PATCH" and "/deployments/" in r.url.path,
                   429, 2)
    cluster.patch_md(NS, "iris", {"spec": {"replicas": 3}})
    cluster.delete(f"/apis/modelship.io/v1alpha1/namespaces/{NS}/modeldeployments/iris")
    wait_for(lambda: cluster.get("modeldeployments", NS, "iris") is None, what="deleted")
    wait_for(lambda: "Daemon 'reconcile_md' succeeded" in op.output(), what="the loop's end")

    def series() -> list[Any]:
        return [labels for (_, labels) in scrape(op.metrics_url)
                if ("modelship_deployment", "iris") in labels]

    wait_for(lambda: series() == [], what="no series of the deleted object")
    assert "cancelled" not in op.output()  # the loop ended on its own, not by force

"""Following the MLflow registry, against a real `mlflow server` and the operator under kopf."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kube_emulator import Cluster, operator_requests, wait_for
from mlflow_proc import BIN, MlflowServer

NS = "ml"
SECRET_TOKEN = "tok-5f1c9e0a7b-never-printed"

pytestmark = pytest.mark.skipif(
    not (BIN / "mlflow").exists(), reason="the mlflow CLI is missing (make setup installs it)"
)


def registry_env(server: MlflowServer) -> dict[str, str]:
    return {
        "MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI": server.uri,
        "MODELSHIP_OPERATOR_VERIFY_MODEL_VERSIONS": "true",
        "MODELSHIP_OPERATOR_ALIAS_POLL_SECONDS": "1",
        "MODELSHIP_OPERATOR_ROLLOUT_TICK_SECONDS": "0.5",
        "MODELSHIP_OPERATOR_REGISTRY_TIMEOUT_SECONDS": "2",
    }


def md(name: str, model: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"model": model, "replicas": 1, **spec},
    }


def status_of(cluster: Cluster, name: str) -> dict[str, Any]:
    obj = cluster.get("modeldeployments", NS, name) or {}
    return dict(obj.get("status") or {})


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def deployments(cluster: Cluster, name: str) -> list[str]:
    return sorted(
        d["metadata"]["name"]
        for d in cluster.objects("deployments", NS)
        if d["metadata"]["labels"].get("modelship.io/deployment") == name
    )


# No runtime serves here, so no analysis ever has a request to judge (and an analysis
# without data never promotes): the test promotes by the annotation once the canary is
# ready, the way a person would, which exercises the same write-back.
FAST_ROLLOUT = {
    "steps": [100],
    "interval": "1s",
    "analysis": {"minRequests": 0, "failureLimit": 1},
}


def test_alias_move_rolls_out_and_writes_back(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer
) -> None:
    mlflow.register("Fraud Model", 2)
    client = mlflow.client()
    client.set_registered_model_alias("Fraud Model", "champion", "1")
    operator(**registry_env(mlflow))
    cluster.create_md(
        md("fraud", {"name": "Fraud Model", "alias": "champion", "promoteAlias": "production"},
           rollout=FAST_ROLLOUT)
    )
    wait_for(lambda: deployments(cluster, "fraud") == ["fraud-v1"], what="fraud-v1")
    cluster.mark_ready(NS, "fraud-v1", 1)
    status = wait_for(lambda: (s := status_of(cluster, "fraud")).get("phase") == "Ready" and s,
                      what="Ready")
    assert status["model"] == {"resolvedVersion": "1"}
    assert cond(status, "ModelResolved")["status"] == "True"
    assert cond(status, "RegistryAvailable")["status"] == "True"

    # Moving the alias in MLflow starts a canary of version 2 by itself.
    client.set_registered_model_alias("Fraud Model", "champion", "2")
    status = wait_for(
        lambda: (s := status_of(cluster, "fraud")).get("canary", {}).get("version") == "2" and s,
        what="canary of version 2",
    )
    assert status["stable"]["version"] == "1"
    assert status["model"] == {"resolvedVersion": "2"}
    assert deployments(cluster, "fraud") == ["fraud-v1", "fraud-v2"]
    cluster.mark_ready(NS, "fraud-v2", 1)
    wait_for(lambda: status_of(cluster, "fraud").get("canary", {}).get("weight") == 100,
             what="canary at 100%")
    cluster.patch_md(NS, "fraud", {"metadata": {"annotations": {"modelship.io/promote": "now"}}})
    status = wait_for(
        lambda: (s := status_of(cluster, "fraud")).get("stable", {}).get("version") == "2"
        and s.get("lastRollout", {}).get("writeBack") == "Done" and s,
        timeout=120, what="promotion of version 2 written back",
    )
    assert status["lastRollout"]["outcome"] == "Promoted"
    wait_for(lambda: deployments(cluster, "fraud") == ["fraud-v2"], what="fraud-v1 deleted")
    # The outcome is in MLflow: the promote alias moved, the version is tagged.
    assert client.get_model_version_by_alias("Fraud Model", "production").version == "2"
    tags = client.get_model_version("Fraud Model", "2").tags
    assert tags["modelship.io/deployed"] == f"{NS}/fraud"


def test_missing_alias_target_leaves_serving_alone(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer
) -> None:
    mlflow.register("Churn", 1)
    client = mlflow.client()
    client.set_registered_model_alias("Churn", "champion", "1")
    operator(**registry_env(mlflow))
    # An alias that points nowhere: nothing is created, the condition says why.
    cluster.create_md(md("ghost", {"name": "Churn", "alias": "no-such-alias"}))
    status = wait_for(
        lambda: (s := status_of(cluster, "ghost")) and cond(s, "ModelResolved").get("status")
        == "False" and s,
        what="ModelResolved=False",
    )
    assert cond(status, "ModelResolved")["reason"] == "ModelVersionNotFound"
    assert deployments(cluster, "ghost") == []

    # A served alias removed from MLflow: serving goes on untouched.
    cluster.create_md(md("churn", {"name": "Churn", "alias": "champion"}))
    wait_for(lambda: deployments(cluster, "churn") == ["churn-v1"], what="churn-v1")
    cluster.mark_ready(NS, "churn-v1", 1)
    wait_for(lambda: status_of(cluster, "churn").get("phase") == "Ready", what="Ready")
    before = len(cluster.requests())
    client.delete_registered_model_alias("Churn", "champion")
    status = wait_for(
        lambda: (s := status_of(cluster, "churn"))
        and cond(s, "ModelResolved").get("status") == "False" and s,
        what="ModelResolved=False after the alias went away",
    )
    assert cond(status, "ModelResolved")["reason"] == "ModelVersionNotFound"
    assert status["stable"]["version"] == "1"
    assert deployments(cluster, "churn") == ["churn-v1"]
    child_writes = [
        (m, p) for m, p, _, _ in operator_requests(cluster)[before:]
        if m in ("PATCH", "DELETE", "POST") and "/churn" in p and "modeldeployments" not in p
        and "/events" not in p
    ]
    assert child_writes == []


def test_rolled_back_version_is_tagged_and_credentials_stay_secret(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer, tmp_path: Path
) -> None:
    mlflow.register("Spam Filter", 2)
    cluster.http(
        "POST", f"/api/v1/namespaces/{NS}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mlflow-auth",
         "namespace": NS},
         "data": {"MLFLOW_TRACKING_TOKEN": base64.b64encode(SECRET_TOKEN.encode()).decode()}},
    )
    op = operator(**registry_env(mlflow))
    model = {"name": "Spam Filter", "version": "1",
             "registry": {"trackingUri": mlflow.uri, "credentialsSecret": "mlflow-auth"}}
    rollout = {"steps": [50, 100], "interval": "30s", "analysis": {"failureLimit": 1}}
    cluster.create_md(md("spam", model, rollout=rollout))
    wait_for(lambda: deployments(cluster, "spam") == ["spam-v1"], what="spam-v1")
    cluster.mark_ready(NS, "spam-v1", 1)
    cluster.patch_md(NS, "spam", {"spec": {"model": {"version": "2"}}})
    wait_for(lambda: deployments(cluster, "spam") == ["spam-v1", "spam-v2"], what="canary")
    cluster.mark_ready(NS, "spam-v2", 1)
    wait_for(lambda: status_of(cluster, "spam").get("canary", {}).get("weight") == 50,
             what="weight 50")
    # The canary's pods stop being ready: with failureLimit 1 that is a rollback.
    cluster.mark_ready(NS, "spam-v2", 0)
    status = wait_for(
        lambda: (s := status_of(cluster, "spam")).get("phase") == "RolledBack"
        and s.get("lastRollout", {}).get("writeBack") == "Done" and s,
        what="rollback written back",
    )
    assert cond(status, "Stalled")["status"] == "True"
    wait_for(lambda: deployments(cluster, "spam") == ["spam-v1"], what="canary removed")
    tags = mlflow.client().get_model_version("Spam Filter", "2").tags
    assert tags["modelship.io/rolled-back"].startswith(f"{NS}/spam: ")
    assert "stopped being ready" in tags["modelship.io/rolled-back"]

    # The token was read (the registry was used) but is nowhere a person could see it.
    op.stop()
    events = cluster.objects("events", NS)
    statuses = [o.get("status") for o in cluster.objects("modeldeployments", NS)]
    assert SECRET_TOKEN not in op.output()
    assert SECRET_TOKEN not in json.dumps(events)
    assert SECRET_TOKEN not in json.dumps(statuses)
    assert any(
        m == "GET" and p.endswith("/secrets/mlflow-auth") for m, p, _, _ in cluster.requests()
    )


def test_registry_outage_changes_nothing_and_recovers(
    cluster: Cluster, operator: Callable[..., Any], mlflow: MlflowServer
) -> None:
    mlflow.register("Outage Model", 1)
    mlflow.client().set_registered_model_alias("Outage Model", "champion", "1")
    operator(**registry_env(mlflow))
    cluster.create_md(md("out", {"name": "Outage Model", "alias": "champion"}))
    wait_for(lambda: deployments(cluster, "out") == ["out-v1"], what="out-v1")
    cluster.mark_ready(NS, "out-v1", 1)
    wait_for(lambda: status_of(cluster, "out").get("phase") == "Ready", what="Ready")

    mlflow.stop()
    before = len(cluster.requests())
    status = wait_for(
        lambda: (s := status_of(cluster, "out"))
        and cond(s, "RegistryAvailable").get("status") == "False" and s,
        timeout=30, what="RegistryAvailable=False",
    )
    assert cond(status, "RegistryAvailable")["reason"] == "RegistryUnavailable"
    assert status["phase"] == "Ready"  # serving is not the registry's business
    assert status["model"] == {"resolvedVersion": "1"}  # the last answer is kept
    assert deployments(cluster, "out") == ["out-v1"]
    child_writes = [
        (m, p) for m, p, _, _ in operator_requests(cluster)[before:]
        if m in ("PATCH", "DELETE", "POST") and "modeldeployments" not in p
        and "/events" not in p
    ]
    assert child_writes == []

    mlflow.start()  # same port: the operator recovers by itself
    status = wait_for(
        lambda: (s := status_of(cluster, "out"))
        and cond(s, "RegistryAvailable").get("status") == "True" and s,
        timeout=60, what="RegistryAvailable=True again",
    )
    assert cond(status, "ModelResolved")["status"] == "True"
    assert deployments(cluster, "out") == ["out-v1"]

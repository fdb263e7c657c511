"""kustomize/: the base and the dev, staging and prod overlays, built with
`kubectl kustomize` and strictly validated; each overlay's namespace, replicas,
resources and log level; peering whenever there is more than one replica; the RBAC rules
the operator keeps in rbac.py; and the same operator pod as the Helm chart's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from artifacts import OVERLAYS, REPO, kustomize_build
from k8scheck import validate
from modelship_operator.rbac import RULES
from modelship_operator.settings import OperatorSettings

EXPECTED = {
    # overlay: (namespace, replicas, memory limit, log flags)
    "base": ("modelship-system", 1, "3Gi", ["--log-format=json"]),
    "dev": ("modelship-dev", 1, "192Mi", ["--log-format=plain", "--debug"]),
    "staging": ("modelship-staging", 2, "256Mi", ["--log-format=json"]),
    "prod": ("modelship-system", 2, "3Gi", ["--log-format=json", "--quiet"]),
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "ClusterKopfPeering"}


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def _env(objects: list[dict[str, Any]]) -> dict[str, str]:
    container = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_every_object_is_strictly_valid(built: dict[str, list[dict[str, Any]]], name: str
                                        ) -> None:
    kinds = {o["kind"] for o in built[name]}
    assert {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
            "ServiceAccount", "Deployment", "NetworkPolicy"} <= kinds
    for obj in built[name]:
        validate(obj)


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_overlay_settings(built: dict[str, list[dict[str, Any]]], name: str) -> None:
    namespace, replicas, memory, log_flags = EXPECTED[name]
    objects = built[name]
    assert _one(objects, "Namespace")["metadata"]["name"] == namespace
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == namespace, obj["kind"]
    deployment = _one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == replicas
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == memory
    assert container["args"] == ["--all-namespaces", *log_flags]
    binding = _one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "modelship-operator", "namespace": namespace}]
    assert _one(objects, "ClusterRole")["rules"] == [rule.as_dict() for rule in RULES]


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_more_than_one_replica_peers(built: dict[str, list[dict[str, Any]]], name: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    objects = built[name]
    env = _env(objects)
    for key, value in env.items():
        assert key.removeprefix("MODELSHIP_OPERATOR_").lower() in OperatorSettings.model_fields
        monkeypatch.setenv(key, value)
    settings = OperatorSettings()
    deployment = _one(objects, "Deployment")
    peerings = [o for o in objects if o["kind"] == "ClusterKopfPeering"]
    if deployment["spec"]["replicas"] > 1:
        assert settings.standalone is False and settings.clusterwide_peering is True
        assert [p["metadata"]["name"] for p in peerings] == [settings.peering_name]
        crds = {o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"}
        assert "clusterkopfpeerings.kopf.dev" in crds
        assert _one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    else:
        assert settings.standalone is True and not peerings
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_same_operator_pod_as_the_chart(
    built: dict[str, list[dict[str, Any]]], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    ours = _one(built["base"], "Deployment")["spec"]["template"]["spec"]
    chart = _one(rendered["default"], "Deployment")["spec"]["template"]["spec"]
    for key in ("securityContext", "volumes", "automountServiceAccountToken",
                "enableServiceLinks"):
        assert ours[key] == chart[key], key
    a, b = ours["containers"][0], chart["containers"][0]
    for key in ("securityContext", "ports", "livenessProbe", "readinessProbe", "volumeMounts",
                "resources", "args"):
        assert a[key] == b[key], key
    assert _env(built["base"]) == _env(rendered["default"])


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_operator_serves_metrics_on_the_named_port(
    built: dict[str, list[dict[str, Any]]], name: str
) -> None:
    objects = built[name]
    container = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8081, "metrics": 8080}
    assert _env(objects)["MODELSHIP_OPERATOR_METRICS_PORT"] == "8080"
    ingress = _one(objects, "NetworkPolicy")["spec"]["ingress"]
    assert ingress == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]


def test_monitoring_component_scrapes_the_operator(tmp_path: Path) -> None:
    base = os.path.relpath(REPO / "kustomize" / "base", tmp_path)
    component = os.path.relpath(REPO / "kustomize" / "components" / "monitoring", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"namespace: ops\nresources: [{base}]\ncomponents: [{component}]\n")
    objects = kustomize_build(tmp_path)
    monitor = _one(objects, "PodMonitor")
    validate(monitor)
    assert monitor["metadata"]["namespace"] == "ops"
    pod = _one(objects, "Deployment")["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["honorLabels"] is True
    assert endpoint["port"] in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}

"""The Helm chart, rendered by the real Helm engine (helm-python-sdk bundles Helm's Go
SDK): lint, values schema, strict validity of every object, the two watch modes, kopf
peering, RBAC equal to the operator's RULES, operator settings the operator knows, and
the PrometheusRule checked and unit-tested by promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from artifacts import CHART, NAMESPACE, VALUE_SETS, render_chart
from k8scheck import validate
from modelship_operator.rbac import RULES
from modelship_operator.settings import OperatorSettings

HERE = Path(__file__).parent


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def _kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def _containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator container of each operator Deployment (one per shard)."""
    found = []
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        containers = deployment["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        found.append(containers[0])
    assert found
    return found


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator container; shards' containers differ only in their arguments."""
    first, *others = _containers(objects)
    for other in others:
        assert {k: v for k, v in other.items() if k != "args"} == {
            k: v for k, v in first.items() if k != "args"}
    return first


def _env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(objects)["env"]}


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_strict(value_set: str) -> None:
    report = helm.lint(str(CHART), VALUE_SETS[value_set], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
    assert report["total_charts_linted"] == 1


@pytest.mark.parametrize(
    "values",
    [
        {"replicas": 0},
        {"logLevel": "verbose"},
        {"watchNamespaces": ["Not_A_Namespace"]},
        {"shards": [{"name": "a"}]},
        {"shards": [{"name": "a", "namespaces": []}]},
        {"shards": [{"name": "A", "namespaces": ["ml"]}]},
        {"shards": [{"name": "a", "namespaces": ["ml"], "labels": {}}]},
        {"image": {"repository": "x", "digest": "latest"}},
        {"monitoring": {"prometheusRule": {"errorRateThreshold": 2}}},
        {"metrics": {"port": 8081}},
        {"metrics": {"port": 80}},
        {"settings": {"Runtime-Image": "x"}},
        {"unknownKey": True},
    ],
)
def test_values_schema_rejects(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render_chart(values)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_object_is_strictly_valid(
    rendered: dict[str, list[dict[str, Any]]], value_set: str
) -> None:
    how = {f"{o['kind']}/{o['metadata']['name']}": validate(o) for o in rendered[value_set]}
    assert "schema" in how.values()


def test_chart_crds_are_valid_and_serve_modeldeployments() -> None:
    crds = [doc for path in sorted((CHART / "crds").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]
    for crd in crds:
        validate(crd)
    names = {crd["metadata"]["name"] for crd in crds}
    assert names == {"modeldeployments.modelship.io", "clusterkopfpeerings.kopf.dev",
                     "kopfpeerings.kopf.dev"}


def test_default_install(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["default"]
    assert _kinds(objects) == ["ClusterRole", "ClusterRoleBinding", "Deployment",
                               "NetworkPolicy", "ServiceAccount"]
    container = _container(objects)
    assert container["image"] == "ghcr.io/modelship/modelship-operator:0.1.0"
    assert container["args"] == ["--all-namespaces", "--log-format=json"]
    env = _env(objects)
    assert env["MODELSHIP_OPERATOR_RUNTIME_IMAGE"] == "ghcr.io/modelship/modelship-runtime:0.1.0"
    assert env["MODELSHIP_OPERATOR_STANDALONE"] == "true"
    deployment = _one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    binding = _one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "modelship", "namespace": NAMESPACE}
    ]


def test_listed_namespaces_mode(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["namespaced"]
    assert "ClusterRoleBinding" not in _kinds(objects)
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                      "kind": "ClusterRole", "name": "modelship"}
    assert _container(objects)["args"][:2] == ["--namespace=ml", "--namespace=team-b"]


def test_shards_are_one_operator_each_for_its_namespaces(
    rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objects = rendered["sharded"]
    deployments = {d["metadata"]["name"]: d for d in objects if d["kind"] == "Deployment"}
    assert sorted(deployments) == ["modelship-a", "modelship-b"]
    args = {name: d["spec"]["template"]["spec"]["containers"][0]["args"]
            for name, d in deployments.items()}
    assert args["modelship-a"][:2] == ["--namespace=team-a", "--namespace=team-b"]
    assert args["modelship-b"][0] == "--namespace=team-c"
    assert not any(a == "--all-namespaces" for shard in args.values() for a in shard)
    # Each Deployment selects its own pods only.
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector["modelship.io/shard"] == name.removeprefix("modelship-")
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert "ClusterRoleBinding" not in _kinds(objects)
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b",
                                                                    "team-c"]
    assert not {"ClusterKopfPeering", "KopfPeering", "PodDisruptionBudget"} & set(
        _kinds(objects))


def test_sharded_replicas_peer_within_their_shard(
    rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objects = rendered["ha-sharded"]
    peerings = [o for o in objects if o["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert "ClusterKopfPeering" not in _kinds(objects)
    env = _env(objects)
    assert env["MODELSHIP_OPERATOR_STANDALONE"] == "false"
    assert env["MODELSHIP_OPERATOR_CLUSTERWIDE_PEERING"] == "false"
    budgets = {b["metadata"]["name"]: b["spec"] for b in objects
               if b["kind"] == "PodDisruptionBudget"}
    assert budgets == {
        f"modelship-{s}": {"minAvailable": 1, "selector": {"matchLabels": {
            "app.kubernetes.io/name": "modelship-operator",
            "app.kubernetes.io/instance": "modelship", "modelship.io/shard": s}}}
        for s in ("a", "b")}
    monitor = _named(objects, "PodMonitor", "modelship-runtime")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"shards": [{"name": "a", "namespaces": ["ml"]}, {"name": "b", "namespaces": ["ml"]}]},
         "namespace ml is in two shards"),
        ({"shards": [{"name": "a", "namespaces": ["ml"]}], "watchNamespaces": ["x"]},
         "set shards or watchNamespaces, not both"),
    ],
)
def test_shards_that_cannot_work_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=message):
        render_chart(values)


def test_rbac_rules_are_the_operators(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for objects in rendered.values():
        role = _one(objects, "ClusterRole")
        assert role["rules"] == [rule.as_dict() for rule in RULES]


@pytest.mark.parametrize(
    ("value_set", "peering_kind", "namespaces"),
    [("ha", "ClusterKopfPeering", [None]), ("ha-namespaced", "KopfPeering", ["ml"])],
)
def test_several_replicas_peer(
    rendered: dict[str, list[dict[str, Any]]], value_set: str, peering_kind: str,
    namespaces: list[str | None],
) -> None:
    objects = rendered[value_set]
    env = _env(objects)
    assert env["MODELSHIP_OPERATOR_STANDALONE"] == "false"
    peerings = [o for o in objects if o["kind"] == peering_kind]
    assert [p["metadata"].get("namespace") for p in peerings] == namespaces
    assert {p["metadata"]["name"] for p in peerings} == {env["MODELSHIP_OPERATOR_PEERING_NAME"]}
    assert env["MODELSHIP_OPERATOR_CLUSTERWIDE_PEERING"] == str(namespaces == [None]).lower()
    assert "strategy" not in _one(objects, "Deployment")["spec"]
    assert _one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    # The operator's settings read these the way the chart means them.
    settings = OperatorSettings.model_validate(
        {k.removeprefix("MODELSHIP_OPERATOR_").lower(): v for k, v in env.items()})
    assert settings.standalone is False
    assert settings.clusterwide_peering is (namespaces == [None])


def test_single_replica_has_no_peering(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = _kinds(rendered["default"]) + _kinds(rendered["namespaced"])
    assert not {"ClusterKopfPeering", "KopfPeering", "PodDisruptionBudget"} & set(kinds)


def test_log_level_and_format(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert _container(rendered["ha"])["args"] == ["--all-namespaces", "--log-format=plain",
                                                  "--debug"]


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_env_is_settings_the_operator_knows(
    rendered: dict[str, list[dict[str, Any]]], value_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(rendered[value_set])
    for name, value in env.items():
        assert name.startswith("MODELSHIP_OPERATOR_"), name
        field = name.removeprefix("MODELSHIP_OPERATOR_").lower()
        assert field in OperatorSettings.model_fields, f"{name}: no such operator setting"
        monkeypatch.setenv(name, value)
    OperatorSettings()  # every value parses


def test_custom_values(
    rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered["custom"]
    assert _container(objects)["image"] == "ghcr.io/acme/modelship-operator:0.1.0-rc1"
    env = _env(objects)
    runtime_image = "ghcr.io/acme/modelship-runtime@sha256:" + "a" * 64
    assert env["MODELSHIP_OPERATOR_RUNTIME_IMAGE"] == runtime_image
    assert env["MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI"] == "http://mlflow.mlflow:5000"
    assert json.loads(env["MODELSHIP_OPERATOR_DEFAULT_RESOURCES"]) == {
        "requests": {"cpu": "250m", "memory": "256Mi"}}
    assert env["MODELSHIP_OPERATOR_VERIFY_MODEL_VERSIONS"] == "false"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()  # read as the operator reads its environment
    assert settings.allowed_tracking_hosts == ["mlflow.mlflow", "*.registry.svc.cluster.local"]
    assert settings.namespace == NAMESPACE
    assert (settings.network_policy_namespaces, settings.network_policy_egress_cidrs,
            settings.network_policy_egress_ports, settings.network_policy_redis_ports) == (
        ["gateway-system"], ["10.0.0.0/8"], [9000], [6380])
    assert _one(objects, "ServiceAccount")["metadata"]["name"] == "ms-operator"
    assert "NetworkPolicy" not in _kinds(objects)
    pod = _one(objects, "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "ml-platform"
    assert pod["spec"]["serviceAccountName"] == "ms-operator"


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind}/{name}"
    return found[0]


def test_monitoring_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["monitoring"]
    for kind in ("ServiceMonitor", "PrometheusRule", "ConfigMap"):
        _one(objects, kind)
    pod_monitor = _named(objects, "PodMonitor", "modelship-runtime")
    assert pod_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pod_monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == (
        "modelship-runtime")
    # The operator is scraped once, by a PodMonitor, with the series' own namespace label.
    operator = _named(objects, "PodMonitor", "modelship-operator")
    assert operator["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert operator["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    pod_labels = _one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = operator["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert operator["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "honorLabels": True}]
    assert "Service" not in _kinds(objects)
    dashboard = _one(objects, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["modelship.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text())
    groups = _one(objects, "PrometheusRule")["spec"]["groups"]
    assert {g["name"]: [r["alert"] for r in g["rules"]] for g in groups} == {
        "modelship.runtime": ["ModelshipHighErrorRate", "ModelshipHighLatencyP95",
                              "ModelshipReplicasBelowMinimum"],
        "modelship.rollout": ["ModelshipRolloutRolledBack", "ModelshipRolloutStuck",
                              "ModelshipOperatorMetricsAbsent"],
    }


def _metrics_port(objects: list[dict[str, Any]]) -> int | None:
    ports = {p["name"]: p["containerPort"] for p in _container(objects).get("ports", [])}
    assert ports.get("health") == 8081
    return ports.get("metrics")


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_operator_serves_metrics_on_the_named_port(
    rendered: dict[str, list[dict[str, Any]]], value_set: str
) -> None:
    objects = rendered[value_set]
    port = _metrics_port(objects)
    assert port == VALUE_SETS[value_set].get("metrics", {}).get("port", 8080)
    # The operator listens where the container port says.
    assert _env(objects)["MODELSHIP_OPERATOR_METRICS_PORT"] == str(port)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for policy in policies:  # only the metrics port is open
        assert [[p["port"] for p in rule["ports"]] for rule in policy["spec"]["ingress"]] == [
            ["metrics"]]


def test_metrics_off_closes_the_port() -> None:
    objects = render_chart({"metrics": {"enabled": False}})
    assert _metrics_port(objects) is None
    assert _env(objects)["MODELSHIP_OPERATOR_METRICS_PORT"] == "0"
    assert _one(objects, "NetworkPolicy")["spec"]["ingress"] == []
    assert OperatorSettings(metrics_port=0).metrics_port == 0


def test_operator_scraped_through_a_service_when_only_service_monitors_are_on(
    rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objects = rendered["monitoring-services"]
    assert "PodMonitor" not in _kinds(objects)
    service = _one(objects, "Service")
    pod_labels = _one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    monitor = _named(objects, "ServiceMonitor", "modelship-operator")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items())
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "honorLabels": True}]
    ingress = _one(objects, "NetworkPolicy")["spec"]["ingress"]
    assert ingress == [{"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}]


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (Debian package prometheus; make setup installs it)")
    return found


@pytest.fixture(scope="module")
def rules_file(rendered: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
               ) -> Path:
    rule = _one(rendered["monitoring"], "PrometheusRule")
    path = tmp_path_factory.mktemp("rules") / "modelship-rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


def test_promtool_check_rules(rules_file: Path) -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(rules_file)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 rules found" in result.stdout


def test_promtool_test_rules(rules_file: Path) -> None:
    tests = (HERE / "alerts_test.yaml").read_text().replace("RULES_FILE", str(rules_file))
    test_file = rules_file.parent / "alerts_test.yaml"
    test_file.write_text(tests)
    result = subprocess.run([_promtool(), "test", "rules", str(test_file)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout

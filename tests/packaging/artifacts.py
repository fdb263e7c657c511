"""What the packaging tests check, made once: the chart rendered by the real Helm engine
(helm-python-sdk bundles Helm's Go SDK), kustomize builds and `modelship render` output.
(A module with its own name rather than conftest: test modules import from it.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modelship"
RELEASE, NAMESPACE = "modelship", "modelship-system"
OVERLAYS = ("dev", "staging", "prod")
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

# Value sets the tests render: the defaults, and the modes a platform engineer picks.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["ml", "team-b"]},
    "ha": {"replicas": 2, "logLevel": "debug", "logFormat": "plain"},
    "ha-namespaced": {"replicas": 3, "watchNamespaces": ["ml"], "peering": {"name": "ms"}},
    "sharded": {"shards": [{"name": "a", "namespaces": ["team-a", "team-b"]},
                           {"name": "b", "namespaces": ["team-c"]}]},
    "ha-sharded": {"replicas": 2, "shards": [{"name": "a", "namespaces": ["team-a"]},
                                             {"name": "b", "namespaces": ["team-b"]}],
                   "monitoring": {"podMonitor": {"enabled": True}}},
    "monitoring": {
        "monitoring": {
            "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        },
    },
    "monitoring-services": {
        "metrics": {"port": 9090},
        "networkPolicy": {"metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]},
        "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                       "prometheusRule": {"enabled": True}},
    },
    "custom": {
        "image": {"repository": "ghcr.io/acme/modelship-operator", "tag": "0.1.0-rc1"},
        "runtime": {"image": {"repository": "ghcr.io/acme/modelship-runtime",
                              "digest": "sha256:" + "a" * 64}},
        "defaultTrackingUri": "http://mlflow.mlflow:5000",
        "allowedTrackingHosts": ["mlflow.mlflow", "*.registry.svc.cluster.local"],
        "runtimeNetworkPolicy": {"allowNamespaces": ["gateway-system"],
                                 "egressCidrs": ["10.0.0.0/8"], "egressPorts": [9000],
                                 "redisPorts": [6380]},
        "settings": {"resync_interval_seconds": 120, "verify_model_versions": False,
                     "default_resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}},
        "serviceAccount": {"name": "ms-operator", "annotations": {"a.example/b": "c"}},
        "networkPolicy": {"enabled": False},
        "podLabels": {"team": "ml-platform"},
        "priorityClassName": "system-cluster-critical",
        "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def render_chart(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart's templates render (crds/ not included)."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def kustomize_build(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize PATH`, parsed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: the kustomize tests need `kubectl kustomize` "
                    "(install kubectl from your distribution; make setup does not download it)")
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_examples() -> list[dict[str, Any]]:
    """`modelship render` of every example (an alias resolves to version 7), and of the
    minimal one mid-canary (version 4 at 10%, so the canary's objects are there too)."""
    cli = Path(sys.executable).parent / "modelship"
    runs = [["--alias-version", "7", *[a for e in EXAMPLES for a in ("-f", str(e))]],
            ["--canary-version", "4", "--weight", "10", "-f",
             str(REPO / "examples" / "minimal.yaml")]]
    objects: list[dict[str, Any]] = []
    for args in runs:
        result = subprocess.run([str(cli), "render", *args], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        objects += [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return objects

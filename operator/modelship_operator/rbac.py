"""The operator's least-privilege RBAC, kept in one place.

The Helm chart and the kustomize base carry these rules (a test holds them equal to
`RULES`), and the integration tests check that every request the operator sent to the
API is allowed by them (`allows()`), so a new API call without a rule fails a test
rather than a production cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WRITE = ["get", "list", "watch", "create", "update", "patch", "delete"]


@dataclass(frozen=True)
class Rule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


RULES: tuple[Rule, ...] = (
    Rule(
        ("modelship.io",),
        ("modeldeployments",),
        ("get", "list", "watch", "patch"),
        "watch ModelDeployments; kopf keeps its progress in their annotations",
    ),
    Rule(
        ("modelship.io",),
        ("modeldeployments/status",),
        ("get", "patch", "update"),
        "report phase, conditions and rollout state",
    ),
    Rule(("apps",), ("deployments",), tuple(WRITE), "one Deployment per live model version"),
    Rule(
        ("",),
        ("services", "serviceaccounts"),
        tuple(WRITE),
        "stable/canary Services and the runtime's ServiceAccount",
    ),
    Rule(
        ("",),
        ("configmaps",),
        tuple(WRITE),
        "the shadow phase's mirroring settings (NAME--shadow); golden sets named in the spec",
    ),
    Rule(("autoscaling",), ("horizontalpodautoscalers",), tuple(WRITE), "HPA per Deployment"),
    Rule(
        ("networking.k8s.io",),
        ("ingresses", "networkpolicies"),
        tuple(WRITE),
        "Ingress routes and the runtime's NetworkPolicy",
    ),
    Rule(("policy",), ("poddisruptionbudgets",), tuple(WRITE), "PodDisruptionBudget"),
    Rule(
        ("gateway.networking.k8s.io",),
        ("httproutes",),
        tuple(WRITE),
        "Gateway API routes with weighted backends",
    ),
    Rule(
        ("",),
        ("secrets",),
        ("get", "create"),
        "MLflow credentials named in the spec; the shadow token (NAME--shadow-token), "
        "created once and never changed",
    ),
    Rule(("",), ("configmaps",), ("get",), "smoke-test golden sets named in the spec"),
    Rule(
        ("discovery.k8s.io",),
        ("endpointslices",),
        ("get", "list"),
        "find canary pods to scrape for analysis",
    ),
    Rule(("", "events.k8s.io"), ("events",), ("create", "patch"), "Events for kubectl describe"),
    Rule(
        ("kopf.dev",),
        ("clusterkopfpeerings", "kopfpeerings"),
        ("get", "list", "watch", "patch"),
        "kopf peering, so that two replicas never both act",
    ),
)

_VERB_BY_METHOD = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def cluster_role(name: str = "modelship-operator") -> dict[str, Any]:
    """A ClusterRole object holding exactly `RULES`."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "modelship-operator"}},
        "rules": [rule.as_dict() for rule in RULES],
    }


def request_attributes(
    method: str, path: str, query: dict[str, str] | None = None
) -> tuple[str, str, str] | None:
    """(apiGroup, resource[/subresource], verb) of a REST request; None for non-resource URLs."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if not parts or parts[0] not in ("api", "apis"):
        return None
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        if len(parts) < 3:
            return None
        group, rest = parts[1], parts[3:]
    if len(rest) >= 2 and rest[0] == "namespaces":
        rest = rest[2:] if len(rest) > 2 else []
    if not rest:
        return None  # discovery
    resource = rest[0]
    named = len(rest) >= 2
    if len(rest) >= 3:
        resource = f"{resource}/{rest[2]}"
    method = method.upper()
    if method == "GET":
        if (query or {}).get("watch") in ("true", "1"):
            verb = "watch"
        else:
            verb = "get" if named else "list"
    else:
        verb = _VERB_BY_METHOD.get(method, method.lower())
    return group, resource, verb


def allows(method: str, path: str, query: dict[str, str] | None = None) -> bool:
    """True when RULES grant this request (non-resource URLs such as discovery are open)."""
    attributes = request_attributes(method, path, query)
    if attributes is None:
        return True
    group, resource, verb = attributes
    return any(
        group in rule.api_groups and resource in rule.resources and verb in rule.verbs
        for rule in RULES
    )

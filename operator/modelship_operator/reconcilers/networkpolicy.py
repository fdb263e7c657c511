"""The NetworkPolicy ``NAME`` around every runtime pod of the ModelDeployment.

Ingress, to the ports the runtime container serves only (HTTP, and any other it
listens on), from:

- the namespaces of the operator's setting ``network_policy_namespaces`` (by default
  ingress-nginx and monitoring: the ingress controller or Gateway data plane, and
  Prometheus) and the operator's own namespace (analysis scrapes, smoke tests);
- this ModelDeployment's own pods: in a shadow phase the stable version's pods mirror
  requests to Service ``NAME--canary``, i.e. to the canary's pods;
- the peers of spec.networkPolicy.allowFrom (client workloads that call the Service).

Egress: DNS (UDP and TCP 53); this ModelDeployment's own pods on the runtime port (the
mirror again); and, on TCP ports only, the registry (the tracking URI's port, 443 or 80
by default), Redis (``network_policy_redis_ports``, when spec.cache is set) and the
operator's ``network_policy_egress_ports`` (an artifact store the tracking server does
not proxy). A NetworkPolicy cannot name a host: those ports are open to any address,
unless ``network_policy_egress_cidrs`` narrows them to address ranges. Everything else
is denied. Policies are additive, so a platform team can still layer stricter ones, and
a ModelDeployment's author can widen this one only by adding sources of its own.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from modelship_operator import labels, naming, trust
from modelship_operator.api import LabelSelector, ModelDeployment
from modelship_operator.reconcilers import RenderError, require_annotation_keys, require_label
from modelship_operator.settings import OperatorSettings

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
DNS_PORT = 53


def registry_port(uri: str) -> int:
    """The TCP port the tracking URI's host is reached on."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise RenderError("spec.model.registry.trackingUri", f"bad port: {exc}") from None
    if port is not None:
        return port
    return 443 if parts.scheme == "https" else 80


def _selector(selector: LabelSelector, field: str) -> dict[str, Any]:
    match = require_annotation_keys(dict(selector.match_labels), f"{field}.matchLabels")
    return {"matchLabels": match} if match else {}


def _peers(md: ModelDeployment) -> list[dict[str, Any]]:
    peers: list[dict[str, Any]] = []
    spec = md.spec.network_policy
    for i, peer in enumerate(spec.allow_from if spec is not None else []):
        field = f"spec.networkPolicy.allowFrom[{i}]"
        out: dict[str, Any] = {}
        if peer.namespace_selector is not None:
            out["namespaceSelector"] = _selector(peer.namespace_selector,
                                                 f"{field}.namespaceSelector")
        if peer.pod_selector is not None:
            out["podSelector"] = _selector(peer.pod_selector, f"{field}.podSelector")
        peers.append(out)
    return peers


def trusted_namespaces(settings: OperatorSettings) -> list[str]:
    """The namespaces every runtime pod admits, in order, without repeats."""
    names = [*settings.network_policy_namespaces, settings.namespace]
    seen: list[str] = []
    for name in names:
        if name and name not in seen:
            seen.append(require_label(name, "operator setting network_policy_namespaces"))
    return seen


def serving_ports(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """The ports the serving containers of a rendered Deployment listen on, as
    NetworkPolicy ports (every one: HTTP, and any other the runtime serves)."""
    pod = deployment["spec"]["template"]["spec"]
    return [{"protocol": p.get("protocol", "TCP"), "port": p["containerPort"]}
            for c in pod["containers"] for p in c.get("ports", [])]


def render(
    md: ModelDeployment,
    settings: OperatorSettings,
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The NetworkPolicy selecting all versions' pods; `ports` are the serving ports
    (:func:`serving_ports` of the Deployment; default: the runtime's HTTP port)."""
    name = md.metadata.name
    own_pods = {"podSelector": {"matchLabels": labels.deployment_selector(name)}}
    runtime_ports = ports or [{"protocol": "TCP", "port": settings.runtime_port}]
    ingress: list[dict[str, Any]] = []
    namespaces = trusted_namespaces(settings)
    if namespaces:
        ingress.append({
            "from": [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: ns}}}
                     for ns in namespaces],
            "ports": runtime_ports,
        })
    ingress.append({"from": [own_pods], "ports": runtime_ports})
    peers = _peers(md)
    if peers:
        ingress.append({"from": peers, "ports": runtime_ports})

    tcp_ports: list[int] = []
    uri = trust.tracking_uri(md, settings)
    if uri:
        tcp_ports.append(registry_port(uri))
    if md.spec.cache is not None:
        tcp_ports += settings.network_policy_redis_ports
    tcp_ports += settings.network_policy_egress_ports
    outward: dict[str, Any] = {
        "ports": [{"protocol": "TCP", "port": p} for p in sorted(set(tcp_ports))]
    }
    if settings.network_policy_egress_cidrs:
        outward = {"to": [{"ipBlock": {"cidr": c}} for c in settings.network_policy_egress_cidrs],
                   **outward}
    egress: list[dict[str, Any]] = [
        {"ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}]},
        {"to": [own_pods], "ports": runtime_ports},
    ]
    if tcp_ports:
        egress.append(outward)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": naming.service_name(name),
            "labels": {labels.COMPONENT: labels.PREDICTOR},
        },
        "spec": {
            "podSelector": {"matchLabels": labels.deployment_selector(name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }

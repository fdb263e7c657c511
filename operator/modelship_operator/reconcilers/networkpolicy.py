"""The NetworkPolicy ``NAME`` around every runtime pod of the ModelDeployment.

Ingress: the runtime's ports only (HTTP and gRPC), from any source. The ingress
controller, the Gateway's data plane and Prometheus live in namespaces this operator
cannot know, so narrowing the sources is left to the cluster's own policies; what this
policy closes is every other port. Egress: DNS (UDP and TCP 53) and TCP to anywhere,
because the MLflow registry, its artifact store and Redis may be inside or outside the
cluster on any port. Everything else (other UDP, SCTP, ICMP) is denied. Policies are
additive, so a platform team can still layer stricter ones.
"""

from __future__ import annotations

from typing import Any

from modelship_operator import labels, naming
from modelship_operator.api import ModelDeployment
from modelship_operator.settings import OperatorSettings


def render(md: ModelDeployment, settings: OperatorSettings) -> dict[str, Any]:
    """The NetworkPolicy selecting all versions' pods."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": naming.service_name(md.metadata.name),
            "labels": {labels.COMPONENT: labels.PREDICTOR},
        },
        "spec": {
            "podSelector": {"matchLabels": labels.deployment_selector(md.metadata.name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [
                {"protocol": "TCP", "port": port}
                for port in (settings.runtime_port, settings.runtime_grpc_port) if port
            ]}],
            "egress": [
                {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                {"ports": [{"protocol": "TCP"}]},
            ],
        },
    }

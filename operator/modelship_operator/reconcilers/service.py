"""The Service ``NAME``: port 80 to the runtime's named port, selecting one version.

It selects pods by ModelDeployment and model version, never by track: promotion
retargets this selector to the new version's pods (issue 3), and no pod restarts.
"""

from __future__ import annotations

from typing import Any

from modelship_operator import labels, naming
from modelship_operator.api import ModelDeployment
from modelship_operator.reconcilers.deployment import GRPC_PORT_NAME, PORT_NAME

SERVICE_PORT = 80
SERVICE_GRPC_PORT = 8081


def render(md: ModelDeployment, version: str, *, name: str | None = None,
           grpc: bool = True) -> dict[str, Any]:
    """A ClusterIP Service (default name ``NAME``) selecting the pods of `version`: port
    80 to the runtime's HTTP, and (``grpc``) 8081 to its Open Inference Protocol gRPC."""
    ports: list[dict[str, Any]] = [
        {"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}
    ]
    if grpc:
        # h2c: HTTP/2 without TLS, so meshes and gateways treat the port as gRPC
        ports.append({"name": GRPC_PORT_NAME, "port": SERVICE_GRPC_PORT,
                      "targetPort": GRPC_PORT_NAME, "protocol": "TCP",
                      "appProtocol": "kubernetes.io/h2c"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name or naming.service_name(md.metadata.name),
            "labels": {labels.COMPONENT: labels.ENDPOINT},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": labels.version_selector(md.metadata.name, version),
            "ports": ports,
        },
    }

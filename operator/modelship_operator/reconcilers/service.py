"""The Service ``NAME``: port 80 to the runtime's named port, selecting one version.

It selects pods by ModelDeployment and model version, never by track: promotion
retargets this selector to the new version's pods (issue 3), and no pod restarts.
"""

from __future__ import annotations

from typing import Any

from modelship_operator import labels, naming
from modelship_operator.api import ModelDeployment
from modelship_operator.reconcilers.deployment import PORT_NAME

SERVICE_PORT = 80


def render(md: ModelDeployment, version: str, *, name: str | None = None) -> dict[str, Any]:
    """A ClusterIP Service (default name ``NAME``) selecting the pods of `version`."""
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
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": SERVICE_PORT,
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }

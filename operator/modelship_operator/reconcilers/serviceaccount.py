"""The ServiceAccount ``NAME`` the runtime pods run as: no API token mounted, since the
runtime never talks to the Kubernetes API. Its own account (rather than ``default``)
lets a platform team bind cloud identities (IRSA, Workload Identity) per model.
"""

from __future__ import annotations

from typing import Any

from modelship_operator import labels, naming
from modelship_operator.api import ModelDeployment


def render(md: ModelDeployment) -> dict[str, Any]:
    """The ServiceAccount, with automountServiceAccountToken false."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": naming.service_name(md.metadata.name),
            "labels": {labels.COMPONENT: labels.PREDICTOR},
        },
        "automountServiceAccountToken": False,
    }

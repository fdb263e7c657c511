"""The PodDisruptionBudget (policy/v1) ``NAME`` over every pod of the ModelDeployment.

From spec.disruptionBudget when it sets minAvailable or maxUnavailable. Otherwise
``maxUnavailable: 1``: a voluntary eviction (a node drain) takes at most one pod at a
time, and a one-replica ModelDeployment can still be drained (``minAvailable: 1``
would block the drain for good). The selector spans all versions, so during a canary
the budget covers stable and canary pods together.
"""

from __future__ import annotations

from typing import Any

from modelship_operator import labels, naming
from modelship_operator.api import ModelDeployment

DEFAULT_MAX_UNAVAILABLE = 1


def render(md: ModelDeployment) -> dict[str, Any]:
    """The PDB; exactly one of minAvailable / maxUnavailable is set."""
    budget = md.spec.disruption_budget
    spec: dict[str, Any] = {}
    if budget is not None and budget.min_available is not None:
        spec["minAvailable"] = budget.min_available
    elif budget is not None and budget.max_unavailable is not None:
        spec["maxUnavailable"] = budget.max_unavailable
    else:
        spec["maxUnavailable"] = DEFAULT_MAX_UNAVAILABLE
    spec["selector"] = {"matchLabels": labels.deployment_selector(md.metadata.name)}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": naming.service_name(md.metadata.name),
            "labels": {labels.COMPONENT: labels.PREDICTOR},
        },
        "spec": spec,
    }

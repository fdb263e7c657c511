"""The HorizontalPodAutoscaler (autoscaling/v2) of one versioned Deployment.

Rendered only when spec.autoscaling is set; the Deployment then leaves
``spec.replicas`` out so that the HPA alone owns it (server-side apply would otherwise
fight the HPA on every pass). Bounds are passed in so the canary (issue 3) can scale
them with its weight.
"""

from __future__ import annotations

from typing import Any

from modelship_operator import labels, naming
from modelship_operator.api import AutoscalingSpec, ModelDeployment


def _utilization(resource: str, target: int) -> dict[str, Any]:
    return {
        "type": "Resource",
        "resource": {
            "name": resource,
            "target": {"type": "Utilization", "averageUtilization": target},
        },
    }


def render(
    md: ModelDeployment,
    version: str,
    autoscaling: AutoscalingSpec,
    *,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
) -> dict[str, Any]:
    """An HPA for ``NAME-vVERSION``: CPU and/or memory utilization targets.

    With neither target set, ``metrics`` is left out and Kubernetes uses 80% CPU.
    """
    deployment = naming.deployment_name(md.metadata.name, version)
    metrics = []
    if autoscaling.target_cpu_utilization is not None:
        metrics.append(_utilization("cpu", autoscaling.target_cpu_utilization))
    if autoscaling.target_memory_utilization is not None:
        metrics.append(_utilization("memory", autoscaling.target_memory_utilization))
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
        "minReplicas": autoscaling.min_replicas if min_replicas is None else min_replicas,
        "maxReplicas": autoscaling.max_replicas if max_replicas is None else max_replicas,
    }
    if metrics:
        spec["metrics"] = metrics
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": deployment,
            "labels": {
                labels.COMPONENT: labels.PREDICTOR,
                labels.MODEL_VERSION: naming.label_value(version),
            },
        },
        "spec": spec,
    }

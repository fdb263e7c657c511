"""ModelDeployment -> every child object, complete and ready to apply. Pure.

Each child kind has a module in :mod:`modelship_operator.reconcilers` that renders its
kind-specific part; this module chooses which children the spec asks for and adds, in
one place, what every child shares: the namespace, the standard labels
(:mod:`modelship_operator.labels`) and the controller ownerReference to the
ModelDeployment (so deleting it garbage-collects them).

The rollout state says which model version serves. This issue renders the stable side
only; the canary fields of :class:`RolloutState` are for the canary issue and are
ignored here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modelship_operator import api, labels
from modelship_operator.api import ModelDeployment
from modelship_operator.reconcilers import (
    RenderError,
    deployment,
    hpa,
    httproute,
    ingress,
    networkpolicy,
    pdb,
    service,
    serviceaccount,
)
from modelship_operator.settings import OperatorSettings

__all__ = ["RenderError", "RolloutState", "desired_kinds", "owner_reference", "render"]


@dataclass(frozen=True)
class RolloutState:
    """Which model versions serve, and how traffic is split between them."""

    stable_version: str
    """The version that serves: spec.model.version, or the alias as resolved."""
    canary_version: str | None = None
    """The version under test (the canary issue); None when no rollout runs."""
    canary_weight: int = 0
    """Percent of traffic sent to the canary, 0..100."""


_KINDS: list[tuple[str, str]] = [
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("networking.k8s.io/v1", "Ingress"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
]


def desired_kinds() -> list[tuple[str, str]]:
    """(apiVersion, kind) of every kind of child render can produce, in render's order."""
    return list(_KINDS)


def owner_reference(md: ModelDeployment) -> dict[str, Any]:
    """The controller ownerReference every child carries."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": md.metadata.name,
        "uid": md.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _finish(md: ModelDeployment, obj: dict[str, Any]) -> dict[str, Any]:
    """Namespace, standard labels (the child's own win) and the ownerReference."""
    meta = obj["metadata"]
    own = meta.get("labels", {})
    component = own.get(labels.COMPONENT, labels.PREDICTOR)
    metadata: dict[str, Any] = {
        "name": meta["name"],
        "namespace": md.metadata.namespace,
        "labels": {**labels.standard(md.metadata.name, md.spec.model.name, component), **own},
    }
    if meta.get("annotations"):
        metadata["annotations"] = dict(meta["annotations"])
    metadata["ownerReferences"] = [owner_reference(md)]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": metadata,
            **{k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}}


def render(
    md: ModelDeployment, state: RolloutState, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Every child object of `md` for `state`, complete, in :func:`desired_kinds` order.

    Deterministic and pure: the same input gives equal output, nothing is read or
    written. Raises :class:`RenderError` (with the field path) for a spec the schema
    accepts but the operator cannot honour; then nothing should be applied.
    """
    version = state.stable_version
    if not version:
        raise RenderError("spec.model.version", "no model version to serve")
    spec = md.spec
    children: list[dict[str, Any]] = [
        serviceaccount.render(md),
        deployment.render(md, version, settings),
        service.render(md, version),
    ]
    if spec.autoscaling is not None:
        children.append(hpa.render(md, version, spec.autoscaling))
    children.append(pdb.render(md))
    children.append(networkpolicy.render(md, settings))
    if spec.ingress is not None:
        children.append(ingress.render(md, spec.ingress))
    if spec.gateway is not None:
        children.append(httproute.render(md, spec.gateway))
    # A JSON round trip, not deepcopy (which keeps shared parts shared): no two places in
    # the result, nor the settings, share a mutable part.
    finished = [_finish(md, child) for child in children]
    result: list[dict[str, Any]] = json.loads(json.dumps(finished))
    return result

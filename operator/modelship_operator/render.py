"""ModelDeployment -> every child object, complete and ready to apply. Pure.

Each child kind has a module in :mod:`modelship_operator.reconcilers` that renders its
kind-specific part; this module chooses which children the spec asks for and adds, in
one place, what every child shares: the namespace, the standard labels
(:mod:`modelship_operator.labels`) and the controller ownerReference to the
ModelDeployment (so deleting it garbage-collects them).

The rollout state says which model version serves and, mid-rollout, which version is
the canary and what share of traffic it gets (see :func:`_with_canary`), and which
versions traffic has just left: their Deployments stay until routers have moved on
(see :func:`_with_retiring`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from modelship_operator import api, labels, naming
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
    shadowconfig,
)
from modelship_operator.settings import OperatorSettings

__all__ = [
    "RenderError", "Retiring", "RolloutState", "desired_kinds", "owner_reference", "render",
]


@dataclass(frozen=True)
class Retiring:
    """A version traffic has left, whose Deployment stays until its pods have drained."""

    version: str
    replicas: int | None = None
    """Replicas the live Deployment has (kept as they are); None: the usual count."""


@dataclass(frozen=True)
class RolloutState:
    """Which model versions serve, and how traffic is split between them."""

    stable_version: str
    """The version that serves: spec.model.version, or the alias as resolved."""
    canary_version: str | None = None
    """The version under test (the canary issue); None when no rollout runs."""
    canary_weight: int = 0
    """Percent of traffic sent to the canary, 0..100."""
    retiring: tuple[Retiring, ...] = ()
    """Versions no longer served whose Deployments stay a while (routers learn of a
    retarget seconds after it is made, and keep sending requests meanwhile)."""
    former_canary: str | None = None
    """While versions retire and no canary runs: the version of the rollout that just
    ended. Its canary Service (and canary Ingress, or HTTPRoute backend) stay, at weight
    0, so no router that still uses them finds them gone."""
    header_routing: bool = False
    """Send requests carrying spec.rollout.headerRouting's header and value to the canary,
    whatever its weight (ingress and gateway modes; replica-split mode cannot). Set only
    once the canary's pods are ready: no route ever leads to a canary that cannot answer.
    Without spec.rollout.headerRouting it changes nothing."""
    mirror: bool = False
    """The shadow phase runs (set once the canary's pods are ready): via runtime, ConfigMap
    NAME--shadow tells the stable's pods to mirror; via gateway, the HTTPRoute copies
    every request of its weighted rule to the canary Service (a RequestMirror filter)."""


_KINDS: list[tuple[str, str]] = [
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
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


CANARY_ANNOTATION = "nginx.ingress.kubernetes.io/canary"
CANARY_WEIGHT_ANNOTATION = "nginx.ingress.kubernetes.io/canary-weight"
CANARY_BY_HEADER_ANNOTATION = "nginx.ingress.kubernetes.io/canary-by-header"
CANARY_BY_HEADER_VALUE_ANNOTATION = "nginx.ingress.kubernetes.io/canary-by-header-value"


def _share(total: int, weight: int) -> int:
    """Replicas for `weight` percent of `total`, at least one (a canary is never empty)."""
    return max(1, math.ceil(total * weight / 100))


def _with_canary(
    md: ModelDeployment,
    state: RolloutState,
    settings: OperatorSettings,
    children: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Add the canary side and split traffic by `state.canary_weight`.

    - ingress: a second Ingress ``NAME--canary`` with ingress-nginx's canary annotations;
    - gateway: the one HTTPRoute gets two weighted backendRefs;
    - neither: Service ``NAME`` selects both versions once the canary has weight (at
      weight 0 it selects the stable version only), and the replica counts carry the
      split (coarse: a 10% step on 2 replicas is 1 of 3 pods). The stable side keeps
      all its replicas until the canary has weight, i.e. until its pods are ready.
    The canary's size (replicas or HPA bounds) follows its weight, at least one pod.

    With `state.header_routing` and spec.rollout.headerRouting, requests whose header
    equals the value reach the canary at any weight: ingress-nginx's canary-by-header
    and canary-by-header-value annotations (other values of the header fall through to
    the weight), or a first HTTPRoute rule matching the header exactly. Replica-split
    mode has no router that reads headers, so nothing is rendered there. With
    `state.mirror` and spec.rollout.shadow.via gateway, the HTTPRoute's weighted rule
    mirrors every request to the canary Service.
    """
    assert state.canary_version is not None
    spec = md.spec
    name = md.metadata.name
    canary, weight = state.canary_version, max(0, min(100, state.canary_weight))
    stable = state.stable_version
    if naming.deployment_name(name, canary) == naming.deployment_name(name, stable) or (
        naming.label_value(canary) == naming.label_value(stable)
    ):
        # Only hashed versions can meet; one Deployment cannot serve both.
        raise RenderError(
            "spec.model.version",
            f"versions {stable!r} and {canary!r} map to the same Deployment "
            f"{naming.deployment_name(name, canary)} or pod label; serve one of them",
        )
    canary_service = naming.canary_service_name(name)
    split_by_replicas = spec.ingress is None and spec.gateway is None
    by_header = spec.rollout.header_routing if state.header_routing else None
    shadow = spec.rollout.shadow
    mirror = state.mirror and shadow is not None and shadow.via == "gateway"
    canary_deployment = deployment.render(md, canary, settings)
    result: list[dict[str, Any]] = []
    for child in children:
        kind = child["kind"]
        if kind == "Deployment" and spec.autoscaling is None:
            total = spec.replicas
            if split_by_replicas:
                canary_deployment["spec"]["replicas"] = _share(total, weight)
                if weight > 0:
                    child["spec"]["replicas"] = max(1, total - _share(total, weight))
            else:
                canary_deployment["spec"]["replicas"] = _share(total, weight)
        if kind == "Service" and split_by_replicas and weight > 0:
            # Both versions behind Service NAME only once the canary has weight: before
            # that the canary's ready pods must not receive a single request.
            child["spec"]["selector"] = labels.deployment_selector(name)
        if kind == "HTTPRoute" and spec.gateway is not None:
            child = httproute.render(
                md, spec.gateway,
                backends=[(naming.service_name(name), 100 - weight), (canary_service, weight)],
                header_route=(by_header.header, by_header.value, canary_service)
                if by_header is not None else None,
                mirror_to=canary_service if mirror else None,
            )
        result.append(child)
        if kind == "Deployment":
            result.append(canary_deployment)
        if kind == "Service":
            result.append(service.render(md, canary, name=canary_service,
                                         grpc=settings.runtime_grpc_port > 0))
        if kind == "HorizontalPodAutoscaler" and spec.autoscaling is not None:
            auto = spec.autoscaling
            result.append(
                hpa.render(
                    md, canary, auto,
                    min_replicas=_share(auto.min_replicas, weight),
                    max_replicas=max(_share(auto.max_replicas, weight),
                                     _share(auto.min_replicas, weight)),
                )
            )
        if kind == "Ingress" and spec.ingress is not None:
            extra = {CANARY_ANNOTATION: "true", CANARY_WEIGHT_ANNOTATION: str(weight)}
            if by_header is not None:
                extra[CANARY_BY_HEADER_ANNOTATION] = by_header.header
                extra[CANARY_BY_HEADER_VALUE_ANNOTATION] = by_header.value
            result.append(
                ingress.render(
                    md, spec.ingress, name=canary_service, service=canary_service,
                    extra_annotations=extra,
                )
            )
    return result


def _with_retiring(
    md: ModelDeployment,
    state: RolloutState,
    settings: OperatorSettings,
    children: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Add the Deployments of retiring versions, and the former canary's routing at weight 0.

    A retiring Deployment keeps the replicas it has (no pod is started or stopped before
    it is deleted as a whole) and loses its HPA. The former canary's Service keeps
    selecting its version; its Ingress (or HTTPRoute backend) stays with weight 0.
    """
    spec = md.spec
    name = md.metadata.name
    serving = {state.stable_version, state.canary_version}
    retiring = [r for r in state.retiring if r.version not in serving]
    former = state.former_canary if state.canary_version is None else None
    canary_service = naming.canary_service_name(name)
    result: list[dict[str, Any]] = []
    for i, child in enumerate(children):
        kind = child["kind"]
        following = children[i + 1]["kind"] if i + 1 < len(children) else None
        if kind == "HTTPRoute" and former is not None and spec.gateway is not None:
            child = httproute.render(
                md, spec.gateway, backends=[(naming.service_name(name), 100), (canary_service, 0)]
            )
        result.append(child)
        if kind == "Deployment" and following != "Deployment":
            for old in retiring:
                kept = deployment.render(md, old.version, settings)
                if old.replicas is not None and spec.autoscaling is None:
                    kept["spec"]["replicas"] = old.replicas
                result.append(kept)
        if kind == "Service" and former is not None:
            result.append(service.render(md, former, name=canary_service,
                                         grpc=settings.runtime_grpc_port > 0))
        if kind == "Ingress" and former is not None and spec.ingress is not None:
            result.append(
                ingress.render(
                    md, spec.ingress, name=canary_service, service=canary_service,
                    extra_annotations={CANARY_ANNOTATION: "true", CANARY_WEIGHT_ANNOTATION: "0"},
                )
            )
    return result


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
    stable = deployment.render(md, version, settings)
    children: list[dict[str, Any]] = [
        serviceaccount.render(md),
        stable,
        service.render(md, version, grpc=settings.runtime_grpc_port > 0),
    ]
    if shadowconfig.wanted(md):
        mirroring = state.mirror and state.canary_version not in (None, version)
        children.append(shadowconfig.render(
            md, version if mirroring else None, state.canary_version if mirroring else None
        ))
    if spec.autoscaling is not None:
        children.append(hpa.render(md, version, spec.autoscaling))
    children.append(pdb.render(md))
    children.append(networkpolicy.render(md, settings, networkpolicy.serving_ports(stable)))
    if spec.ingress is not None:
        children.append(ingress.render(md, spec.ingress))
    if spec.gateway is not None:
        children.append(httproute.render(md, spec.gateway))
    if state.canary_version is not None and state.canary_version != version:
        children = _with_canary(md, state, settings, children)
    if state.retiring or state.former_canary:
        children = _with_retiring(md, state, settings, children)
    # A JSON round trip, not deepcopy (which keeps shared parts shared): no two places in
    # the result, nor the settings, share a mutable part.
    finished = [_finish(md, child) for child in children]
    result: list[dict[str, Any]] = json.loads(json.dumps(finished))
    return result

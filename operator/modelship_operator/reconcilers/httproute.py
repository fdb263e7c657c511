"""The Gateway API HTTPRoute (gateway.networking.k8s.io/v1) ``NAME`` for spec.gateway.

One rule: a PathPrefix match to weighted Service backends. This issue renders one
backend, the Service ``NAME``; the canary (issue 3) passes two with their weights.
The Gateway API's schemas are not among Kubernetes' own, so the checks its CRD would
make on what we render (hostnames, names, namespaces) are made here, as RenderError.
"""

from __future__ import annotations

import re
from typing import Any

from modelship_operator import labels, naming
from modelship_operator.api import GatewaySpec, ModelDeployment
from modelship_operator.reconcilers import (
    RenderError,
    require_label,
    require_path,
    require_subdomain,
)
from modelship_operator.reconcilers.service import SERVICE_PORT

# The Gateway API's Hostname: a DNS name, optionally with a leading wildcard label.
_HOSTNAME = re.compile(
    r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_SECTION = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _parent_ref(gateway: GatewaySpec, i: int) -> dict[str, Any]:
    ref = gateway.parent_refs[i]
    field = f"spec.gateway.parentRefs[{i}]"
    out: dict[str, Any] = {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": require_subdomain(ref.name, f"{field}.name", "Gateway name"),
    }
    if ref.namespace is not None:
        out["namespace"] = require_label(ref.namespace, f"{field}.namespace")
    if ref.section_name is not None:
        if not _SECTION.fullmatch(ref.section_name):
            raise RenderError(f"{field}.sectionName", f"{ref.section_name!r} is not a valid "
                              "listener name (lowercase letters, digits, '-' and '.')")
        out["sectionName"] = ref.section_name
    return out


def _hostnames(gateway: GatewaySpec) -> list[str]:
    for i, host in enumerate(gateway.hostnames):
        if len(host) > 253 or not _HOSTNAME.fullmatch(host):
            raise RenderError(
                f"spec.gateway.hostnames[{i}]",
                f"{host!r} is not a valid hostname (lowercase DNS name, optionally *. first; "
                "no IP address, no port)",
            )
    return list(gateway.hostnames)


def render(
    md: ModelDeployment,
    gateway: GatewaySpec,
    *,
    backends: list[tuple[str, int]] | None = None,
) -> dict[str, Any]:
    """The HTTPRoute; `backends` is ``[(service name, weight), ...]`` (default: ``NAME``)."""
    refs = [_parent_ref(gateway, i) for i in range(len(gateway.parent_refs))]
    if backends is None:
        backend_refs: list[dict[str, Any]] = [
            {"name": naming.service_name(md.metadata.name), "port": SERVICE_PORT}
        ]
    else:
        backend_refs = [
            {"name": svc, "port": SERVICE_PORT, "weight": weight} for svc, weight in backends
        ]
    spec: dict[str, Any] = {"parentRefs": refs}
    hostnames = _hostnames(gateway)
    if hostnames:
        spec["hostnames"] = hostnames
    path = require_path(gateway.path, "spec.gateway.path")
    spec["rules"] = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": path}}],
            "backendRefs": backend_refs,
        }
    ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": naming.service_name(md.metadata.name),
            "labels": {labels.COMPONENT: labels.ENDPOINT},
        },
        "spec": spec,
    }

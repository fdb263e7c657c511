"""The Gateway API HTTPRoute (gateway.networking.k8s.io/v1) ``NAME`` for spec.gateway.

One rule: a PathPrefix match to weighted Service backends (the Service ``NAME``; mid-
rollout also the canary Service with its weight). Mid-rollout two additions may come:

- header routing: a first rule with the same path match plus an exact match on one
  header, whose only backend is the canary Service. The Gateway API ranks a rule with
  more header matches above one with fewer for the same path, whatever their order;
  it is also put first, for readers.
- a RequestMirror filter on the weighted rule (shadow via gateway): the gateway copies
  every request it matches to the canary Service and drops the copies' answers. The
  v1.1 standard channel has no mirror percentage, so it is all requests or none.

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


def _distinct_parents(refs: list[dict[str, Any]]) -> None:
    """The HTTPRoute CRD's rules on parentRefs naming one Gateway more than once: each
    names a listener (sectionName), a different one (a namespace left out and one
    given are different parents to those rules, as here)."""
    seen: dict[tuple[str | None, str], list[tuple[int, str | None]]] = {}
    for i, ref in enumerate(refs):
        parent = (ref.get("namespace"), ref["name"])
        section = ref.get("sectionName")
        for j, other in seen.get(parent, []):
            field = f"spec.gateway.parentRefs[{i}]"
            if other == section:
                raise RenderError(field, f"names the same Gateway and listener as "
                                  f"parentRefs[{j}]; list each parent once")
            if (other is None) != (section is None):
                raise RenderError(field, f"names the same Gateway as parentRefs[{j}]; "
                                  "give each of them a sectionName, or list the Gateway once")
        seen.setdefault(parent, []).append((i, section))


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
    header_route: tuple[str, str, str] | None = None,
    mirror_to: str | None = None,
) -> dict[str, Any]:
    """The HTTPRoute; `backends` is ``[(service name, weight), ...]`` (default: ``NAME``).

    `header_route` is ``(header name, value, service)``: requests whose header equals
    the value (exactly; header names match case-insensitively) go to that service only.
    `mirror_to` names a service every request of the weighted rule is copied to.
    """
    refs = [_parent_ref(gateway, i) for i in range(len(gateway.parent_refs))]
    _distinct_parents(refs)
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
    main: dict[str, Any] = {"matches": [{"path": {"type": "PathPrefix", "value": path}}]}
    if mirror_to is not None:
        main["filters"] = [
            {
                "type": "RequestMirror",
                "requestMirror": {"backendRef": {"name": mirror_to, "port": SERVICE_PORT}},
            }
        ]
    main["backendRefs"] = backend_refs
    rules = [main]
    if header_route is not None:
        header, value, service = header_route
        rules.insert(0, {
            "matches": [{
                "path": {"type": "PathPrefix", "value": path},
                "headers": [{"type": "Exact", "name": header, "value": value}],
            }],
            "backendRefs": [{"name": service, "port": SERVICE_PORT}],
        })
    spec["rules"] = rules
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": naming.service_name(md.metadata.name),
            "labels": {labels.COMPONENT: labels.ENDPOINT},
        },
        "spec": spec,
    }

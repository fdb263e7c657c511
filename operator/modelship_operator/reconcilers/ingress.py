"""The Ingress (networking.k8s.io/v1) ``NAME`` for spec.ingress: one Prefix path to the
Service ``NAME``, TLS when spec.ingress.tlsSecret is set. Mid-rollout render also makes
the canary Ingress ``NAME--canary`` through `name`, `service` and `extra_annotations`:
ingress-nginx's canary annotations (weight, and canary-by-header / canary-by-header-value
for header routing), which win over spec.ingress.annotations of the same key.

spec.ingress.rateLimit becomes ingress-nginx's per-client-IP limits on both Ingresses
(limit-rps: more requests per second from one address get 503; limit-connections), which
also win over spec.ingress.annotations: the main and canary Ingress are separate
ingress-nginx servers, each counting on its own.
"""

from __future__ import annotations

from typing import Any

from modelship_operator import labels, naming
from modelship_operator.api import IngressSpec, ModelDeployment
from modelship_operator.reconcilers import (
    require_annotation_keys,
    require_path,
    require_subdomain,
)
from modelship_operator.reconcilers.service import SERVICE_PORT

LIMIT_RPS_ANNOTATION = "nginx.ingress.kubernetes.io/limit-rps"
LIMIT_CONNECTIONS_ANNOTATION = "nginx.ingress.kubernetes.io/limit-connections"


def rate_limit_annotations(ingress: IngressSpec) -> dict[str, str]:
    """ingress-nginx's annotations for spec.ingress.rateLimit (none when it is unset)."""
    limit = ingress.rate_limit
    out: dict[str, str] = {}
    if limit is not None and limit.requests_per_second is not None:
        out[LIMIT_RPS_ANNOTATION] = str(limit.requests_per_second)
    if limit is not None and limit.connections is not None:
        out[LIMIT_CONNECTIONS_ANNOTATION] = str(limit.connections)
    return out


def render(
    md: ModelDeployment,
    ingress: IngressSpec,
    *,
    name: str | None = None,
    service: str | None = None,
    extra_annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Ingress routing ``host`` + ``path`` (Prefix) to `service` (default ``NAME``)."""
    backend = service or naming.service_name(md.metadata.name)
    spec: dict[str, Any] = {}
    if ingress.class_name:
        spec["ingressClassName"] = require_subdomain(
            ingress.class_name, "spec.ingress.className", "IngressClass name"
        )
    if ingress.tls_secret:
        secret = require_subdomain(ingress.tls_secret, "spec.ingress.tlsSecret", "Secret name")
        spec["tls"] = [{"hosts": [ingress.host], "secretName": secret}]
    spec["rules"] = [
        {
            "host": ingress.host,
            "http": {
                "paths": [
                    {
                        "path": require_path(ingress.path, "spec.ingress.path"),
                        "pathType": "Prefix",
                        "backend": {
                            "service": {"name": backend, "port": {"number": SERVICE_PORT}}
                        },
                    }
                ]
            },
        }
    ]
    metadata: dict[str, Any] = {
        "name": name or naming.service_name(md.metadata.name),
        "labels": {labels.COMPONENT: labels.ENDPOINT},
    }
    annotations = {
        **require_annotation_keys(ingress.annotations or {}, "spec.ingress.annotations"),
        **rate_limit_annotations(ingress),
        **(extra_annotations or {}),
    }
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": spec,
    }

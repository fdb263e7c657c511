"""The Ingress (networking.k8s.io/v1) ``NAME`` for spec.ingress: one Prefix path to the
Service ``NAME``, TLS when spec.ingress.tlsSecret is set. Mid-rollout render also makes
the canary Ingress ``NAME--canary`` through `name`, `service` and `extra_annotations`:
ingress-nginx's canary annotations (weight, and canary-by-header / canary-by-header-value
for header routing), which win over spec.ingress.annotations of the same key.
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

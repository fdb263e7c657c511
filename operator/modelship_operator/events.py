"""Kubernetes Events for what a person wants to read in `kubectl describe md`.

Posted by the operator itself (not through kopf's logging-to-events bridge), so that
only decisions are posted: kopf's per-handler messages would add a write on every
resync, and a resync with nothing to do must write nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from modelship_operator.k8s import ApiError, KubeClient
from modelship_operator.status import now_iso
from modelship_operator.trust import redact

_log = logging.getLogger(__name__)


def post(
    client: KubeClient,
    involved: Mapping[str, Any],
    reason: str,
    message: str,
    *,
    warning: bool = False,
) -> None:
    """Post one Event about `involved`; a failure is logged, never raised."""
    meta = involved.get("metadata", {})
    namespace = meta.get("namespace", "default")
    at = now_iso()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta.get('name', 'object')}.{uuid.uuid4().hex[:12]}",
            "namespace": namespace,
        },
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": redact(message)[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": "modelship-operator"},
        "reportingComponent": "modelship.io/operator",
        "reportingInstance": "modelship-operator",
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    }
    try:
        client.create(event)
    except ApiError as exc:
        _log.warning("could not post event %s: %s", reason, exc)

"""The Secret ``NAME--shadow-token``: the token a stable's mirrored requests carry.

Only with ``spec.rollout.shadow.via: runtime``. Every runtime pod of the ModelDeployment
reads it as ``MODELSHIP_SHADOW_TOKEN``: the stable's pods send it in
``X-Modelship-Shadow`` with every mirrored request, and the canary's pods compare only
the mirrored requests that carry it, so a client that reaches a canary pod directly
cannot sway the agreement the canary is judged on.

Unlike every other child this one is not rendered on each pass: its value is random, so
it is created once (with the same labels and controller ownerReference as the others,
so it goes with the ModelDeployment) and never changed, by
:func:`modelship_operator.shadow_secret.ensure` (create only: the operator needs
``create`` on Secrets, not ``patch``). A Secret deleted by hand is created again, with
a new token, on the next pass; pods started before keep the old one until they restart
(their mirrored requests then count as uncompared, never as agreement).
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from modelship_operator import labels, naming
from modelship_operator.api import ModelDeployment
from modelship_operator.reconcilers.deployment import SHADOW_TOKEN_KEY
from modelship_operator.reconcilers.shadowconfig import wanted

__all__ = ["new_token", "render", "wanted"]

TOKEN_BYTES = 32


def render(md: ModelDeployment, owner: dict[str, Any], token: str) -> dict[str, Any]:
    """The Secret holding `token` (base64 in ``data``, as the API server keeps it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": naming.shadow_token_name(md.metadata.name),
            "namespace": md.metadata.namespace,
            "labels": labels.standard(md.metadata.name, md.spec.model.name, labels.PREDICTOR),
            "ownerReferences": [owner],
        },
        "data": {SHADOW_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe base64 (fit for an HTTP header)."""
    return secrets.token_urlsafe(TOKEN_BYTES)

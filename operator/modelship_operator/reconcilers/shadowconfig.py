"""The ConfigMap ``NAME--shadow``: where the stable's pods learn to mirror requests.

Only with ``spec.rollout.shadow.via: runtime``. Every runtime pod of the
ModelDeployment mounts it (optional) and re-reads ``shadow.json`` every few seconds, so
a shadow phase starts and stops without restarting a pod. The file names the version
that mirrors (``mirrorFrom``: the stable one; the canary's pods read the same file and
do nothing), the canary Service's URL and the share of requests to copy. Outside a
shadow phase it is ``{}``.
"""

from __future__ import annotations

import json
from typing import Any

from modelship_operator import labels, naming
from modelship_operator.api import ModelDeployment
from modelship_operator.reconcilers.deployment import SHADOW_FILE
from modelship_operator.reconcilers.service import SERVICE_PORT

KEY = SHADOW_FILE.rsplit("/", 1)[1]


def wanted(md: ModelDeployment) -> bool:
    shadow = md.spec.rollout.shadow
    return shadow is not None and shadow.via == "runtime"


def render(
    md: ModelDeployment, mirror_from: str | None, canary_version: str | None
) -> dict[str, Any]:
    """The ConfigMap; mirroring on when `mirror_from` (the stable version) is given."""
    shadow = md.spec.rollout.shadow
    config: dict[str, Any] = {}
    if shadow is not None and mirror_from is not None and canary_version is not None:
        service = naming.canary_service_name(md.metadata.name)
        config = {
            "mirrorFrom": mirror_from,
            "mirrorTo": canary_version,
            "url": f"http://{service}.{md.metadata.namespace}.svc:{SERVICE_PORT}",
            "fraction": shadow.fraction,
        }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": naming.shadow_config_name(md.metadata.name),
            "labels": {labels.COMPONENT: labels.PREDICTOR},
        },
        "data": {KEY: json.dumps(config, sort_keys=True)},
    }

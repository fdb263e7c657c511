"""Creating the shadow token Secret once (its render is reconcilers/shadowtoken.py).

The Secret's value is random, so unlike the other children it is not applied on every
pass: it is created when missing and never changed (see reconcilers/shadowtoken.py).
This is the part that talks to the API server, kept out of reconcilers/, which render only.
"""

from __future__ import annotations

from typing import Any

from modelship_operator import naming
from modelship_operator.api import ModelDeployment
from modelship_operator.k8s import ApiError, KubeClient, kind_of
from modelship_operator.reconcilers.shadowtoken import new_token, render

SECRETS = kind_of("v1", "Secret")


def ensure(client: KubeClient, md: ModelDeployment, owner: dict[str, Any]) -> bool:
    """Create the Secret unless it exists (one read per pass); True when created now.

    A Secret that exists is left as it is, whoever made it: its token is what the pods
    already run with."""
    name = naming.shadow_token_name(md.metadata.name)
    if client.get(SECRETS, md.metadata.namespace, name) is not None:
        return False
    try:
        client.create(render(md, owner, new_token()))
    except ApiError as exc:
        if exc.status != 409:  # 409: made meanwhile (another pass): it is there
            raise
        return False
    return True

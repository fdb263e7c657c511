"""Registry calls of the real operator under kopf: ModelDeployments following one alias
with one credentials Secret share one poll per interval; another Secret's followers get
their own. MLflow is a counting stand-in (tests/operator/mlflow_standin.py)."""

from __future__ import annotations

import base64
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kube_emulator import Cluster, wait_for
from mlflow_standin import Mlflow, serving

POLL = 2.0
FOLLOWERS = {"ml": ("tok-ml-3a9c", "1", 12), "ops": ("tok-ops-7e21", "2", 4)}


@pytest.fixture()
def mlflow() -> Iterator[tuple[str, Mlflow]]:
    state = Mlflow()
    state.tokens = {token for token, _, _ in FOLLOWERS.values()}
    for token, version, _ in FOLLOWERS.values():
        state.aliases[(token, "fraud", "champion")] = version
    state.versions.update({("fraud", "1"), ("fraud", "2")})
    with serving(state) as uri:
        yield uri, state


def resolved(cluster: Cluster, namespace: str, name: str) -> str | None:
    obj = cluster.get("modeldeployments", namespace, name) or {}
    return ((obj.get("status") or {}).get("model") or {}).get("resolvedVersion")


def test_followers_of_one_alias_share_a_poll_per_credentials(
    cluster: Cluster, operator: Callable[..., Any], mlflow: tuple[str, Mlflow]
) -> None:
    uri, state = mlflow
    for namespace, (token, _, _) in FOLLOWERS.items():
        cluster.http("POST", f"/api/v1/namespaces/{namespace}/secrets", {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "mlflow-auth", "namespace": namespace},
            "data": {"MLFLOW_TRACKING_TOKEN": base64.b64encode(token.encode()).decode()}})
    op = operator(MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI=uri,
                  MODELSHIP_OPERATOR_VERIFY_MODEL_VERSIONS="true",
                  MODELSHIP_OPERATOR_ALIAS_POLL_SECONDS=str(POLL),
                  MODELSHIP_OPERATOR_REGISTRY_TIMEOUT_SECONDS="2")
    names = [(ns, f"fraud-{i}") for ns, (_, _, count) in FOLLOWERS.items() for i in range(count)]
    for namespace, name in names:
        cluster.create_md({
            "apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"name": "fraud", "alias": "champion",
                               "registry": {"credentialsSecret": "mlflow-auth"}},
                     "replicas": 1}})
    # Each namespace's followers see what their own credentials see.
    wait_for(lambda: all(resolved(cluster, ns, n) == FOLLOWERS[ns][1] for ns, n in names),
             timeout=120, what="every follower resolved")

    def polls() -> dict[str, int]:
        return {ns: state.count("registered-models/alias", token)
                for ns, (token, _, _) in FOLLOWERS.items()}

    start, began = polls(), time.monotonic()
    wait_for(lambda: all(polls()[ns] >= start[ns] + 3 for ns in FOLLOWERS), timeout=120,
             what="three more polls of each alias")
    elapsed, made = time.monotonic() - began, polls()
    # At most one poll per (jittered, >= 0.9 x POLL) interval, whatever the followers:
    # without sharing, the twelve of ml alone would make twelve.
    for ns in FOLLOWERS:
        assert made[ns] - start[ns] <= elapsed / (0.9 * POLL) + 2, (ns, made, start, elapsed)
    # Each version was checked once, with each set of credentials that asked for it.
    assert state.count("model-versions/get", FOLLOWERS["ml"][0]) == 1
    assert state.count("model-versions/get", FOLLOWERS["ops"][0]) == 1

    with urllib.request.urlopen(op.metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = re.search(r'^modelship_operator_registry_requests_total\{operation="resolveAlias",'
                      r'outcome="Ok"\} (\S+)$', text, re.M)
    assert found is not None, text
    assert float(found[1]) == state.count("registered-models/alias")

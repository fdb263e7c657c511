"""Two operator replicas with kopf peering, as the chart runs them with replicas > 1:
exactly one acts, the other stands by, and it takes over when the first goes away.

Each replica must have a priority of its own: kopf pauses every operator that sees a
peer of the same priority (all of them, when all have the default), so two replicas
with equal priorities would leave every ModelDeployment unserved."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from kube_emulator import Cluster, wait_for
from mlflow_proc import BIN

PEERING = "modelship"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path).start()

    def serve_peerings(emulator: Any) -> None:
        emulator.resources["kopf.dev/v1/clusterkopfpeerings"] = kmock.ResourceInfo(
            kind="ClusterKopfPeering", namespaced=False,
            verbs=["get", "list", "watch", "create", "update", "patch", "delete"])

    cluster.inspect(serve_peerings)
    cluster.http("POST", "/apis/kopf.dev/v1/clusterkopfpeerings", {
        "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
        "metadata": {"name": PEERING}})
    try:
        yield cluster
    finally:
        cluster.stop()


def _replica(cluster: Cluster, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
    env.update(
        KUBECONFIG=str(cluster.kubeconfig),
        MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI="http://127.0.0.1:9",
        MODELSHIP_OPERATOR_VERIFY_MODEL_VERSIONS="false",
        MODELSHIP_OPERATOR_METRICS_PORT="0",
        # What the chart sets with replicas > 1.
        MODELSHIP_OPERATOR_STANDALONE="false",
        MODELSHIP_OPERATOR_PEERING_NAME=PEERING,
        MODELSHIP_OPERATOR_CLUSTERWIDE_PEERING="true",
        PYTHONUNBUFFERED="1",
    )
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(BIN / "kopf"), "run", "--all-namespaces", "-m", "modelship_operator.handlers"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )


def _md(name: str) -> dict[str, Any]:
    return {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "ml"},
            "spec": {"model": {"name": "iris", "version": "1"}, "replicas": 1}}


def _peers(cluster: Cluster) -> dict[str, Any]:
    peering = cluster.get("clusterkopfpeerings", None, PEERING) or {}  # type: ignore[arg-type]
    return dict(peering.get("status") or {})


@pytest.mark.skipif(not (BIN / "kopf").exists(), reason="kopf is not installed (make setup)")
def test_one_replica_acts_and_the_other_takes_over(cluster: Cluster, tmp_path: Path) -> None:
    logs = [tmp_path / "replica-0.log", tmp_path / "replica-1.log"]
    replicas = [_replica(cluster, log) for log in logs]
    try:
        peers = wait_for(lambda: len(_peers(cluster)) == 2 and _peers(cluster), 60,
                         "both replicas in the peering object")
        priorities = [p["priority"] for p in peers.values()]
        assert len(set(priorities)) == 2, f"equal priorities: {peers}"
        cluster.create_md(_md("first"))
        wait_for(lambda: cluster.get("deployments", "ml", "first-v1"), 60,
                 "the acting replica to deploy the first ModelDeployment")
        texts = [log.read_text() for log in logs]
        assert sum("Pausing operations in favour of" in text for text in texts) == 1, texts
        assert not any("Pausing all operators" in text for text in texts), texts
        # The acting replica goes (a rolling update, a node drained): the other takes over.
        acting = next(i for i, text in enumerate(texts)
                      if "Pausing operations in favour of" not in text)
        replicas[acting].send_signal(signal.SIGTERM)
        replicas[acting].wait(timeout=60)
        cluster.create_md(_md("second"))
        wait_for(lambda: cluster.get("deployments", "ml", "second-v1"), 90,
                 "the standing-by replica to take over")
    finally:
        for proc in replicas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in replicas:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

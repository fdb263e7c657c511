"""Fixtures of the operator's integration tests: an emulated API and a real `kopf run`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import ports
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kube_emulator import OPERATOR_AGENT, Cluster
from mlflow_proc import MlflowServer
from modelship_operator import rbac

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    # Indirect parametrisation may name kinds the API does not serve.
    emulated = Cluster(tmp_path, without=tuple(getattr(request, "param", ()))).start()
    try:
        yield emulated
        # Whatever the test did, every request the operator sent must be one its RBAC
        # rules allow (operator/modelship_operator/rbac.py).
        denied = [
            (method, path)
            for method, path, query, agent in emulated.requests()
            if agent != "test-user" and not rbac.allows(method, path, query)
        ]
        assert denied == [], f"requests outside the operator's RBAC rules: {denied}"
    finally:
        emulated.stop()


class Operator:
    """`kopf run -m modelship_operator.handlers` as a child process."""

    def __init__(self, cluster: Cluster, log: Path, env: dict[str, str]) -> None:
        self.cluster = cluster
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        address = env.get("MODELSHIP_OPERATOR_METRICS_ADDRESS", "0.0.0.0")
        self.metrics_url = f"http://{address}:{env.get('MODELSHIP_OPERATOR_METRICS_PORT')}/metrics"

    def start(self) -> Operator:
        kopf = Path(sys.executable).parent / "kopf"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(kopf), "run", "--standalone", "--all-namespaces", "--verbose",
                 "-m", "modelship_operator.handlers"],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
            )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture()
def operator_env(cluster: Cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
    env.update(
        KUBECONFIG=str(cluster.kubeconfig),
        MODELSHIP_OPERATOR_RESYNC_INTERVAL_SECONDS="1",
        MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI="http://mlflow.mlflow:5000",
        MODELSHIP_OPERATOR_STALLED_RETRY_SECONDS="600",
        # These tests have no MLflow; the registry tests turn verification back on.
        MODELSHIP_OPERATOR_VERIFY_MODEL_VERSIONS="false",
        MODELSHIP_OPERATOR_WATCH_TIMEOUT_SECONDS="30",
        # Deployments traffic left go 2 s later (test_drain_integration uses the default).
        MODELSHIP_OPERATOR_RETIRE_AFTER_SECONDS="2",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture()
def operator(
    cluster: Cluster, operator_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., Operator]]:
    started: list[Operator] = []

    def start(**extra_env: str) -> Operator:
        # Each operator serves its metrics on a port of its own (the default 8080 may be
        # taken on a shared machine, and a test may run two operators at once).
        metrics = {"MODELSHIP_OPERATOR_METRICS_ADDRESS": "127.0.0.1",
                   "MODELSHIP_OPERATOR_METRICS_PORT": str(_free_port())}
        op = Operator(cluster, tmp_path / f"operator-{len(started)}.log",
                      {**operator_env, **metrics, **extra_env}).start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


def _free_port() -> int:
    return ports.free_port()


__all__ = ["OPERATOR_AGENT", "Operator"]


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` for one test module (a module may override it)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    try:
        yield server
    finally:
        server.stop()

"""End to end on kind, in order: install the chart, predict through the ingress,
promote a canary, roll back a failing one, uninstall. Each step needs the one before.

Prerequisites and skipping: see conftest.py. The suite installs its own release of the
chart (replacing the demo's, same name) and works in namespace e2e.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kindkit import CONTEXT, REPO, tool

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

NS = "e2e"
RELEASE, RELEASE_NS = "modelship", "modelship-system"
HOST = "iris-e2e.example.com"
PORT = int(os.environ.get("DEMO_HTTP_PORT", "8080"))


def kubectl(*args: str, stdin: str | None = None) -> str:
    exe = tool("kubectl")
    assert exe is not None
    result = subprocess.run([exe, "--context", CONTEXT, *args], input=stdin,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def helm(*args: str) -> str:
    exe = tool("helm")
    assert exe is not None
    result = subprocess.run([exe, "--kube-context", CONTEXT, *args], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
    return result.stdout


def md() -> dict[str, Any]:
    return json.loads(kubectl("-n", NS, "get", "md", "iris", "-o", "json"))  # type: ignore[no-any-return]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(5)
    pytest.fail(f"timed out waiting for {what}; status: {json.dumps(md().get('status'))}")


def predict(features: list[float]) -> tuple[str, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://localhost:{PORT}/predict", data=json.dumps({"features": features}).encode(),
        headers={"Host": HOST, "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["X-Model-Version"], json.loads(response.read())


@pytest.fixture()
def traffic() -> Iterator[None]:
    """Predictions in the background, so the canary analysis has requests to judge."""
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                predict([6.7, 3.0, 5.2, 2.3])
            time.sleep(0.1)

    worker = threading.Thread(target=send, daemon=True)
    worker.start()
    yield
    stop.set()
    worker.join(timeout=15)


MANIFEST = f"""
apiVersion: modelship.io/v1alpha1
kind: ModelDeployment
metadata: {{name: iris, namespace: {NS}}}
spec:
  model: {{name: iris-classifier, version: "1"}}
  replicas: 1
  ingress: {{host: {HOST}}}
  rollout:
    steps: [50, 100]
    interval: 15s
    analysis: {{minRequests: 5, failureLimit: 1}}
"""


def test_install() -> None:
    helm("upgrade", "--install", RELEASE, str(REPO / "charts" / "modelship"),
         "--namespace", RELEASE_NS, "--create-namespace", "--wait", "--timeout", "5m",
         "--set", "defaultTrackingUri=http://mlflow.mlflow:5000")
    kubectl("wait", "--for=condition=Established", "crd/modeldeployments.modelship.io")
    kubectl("-n", RELEASE_NS, "rollout", "status", f"deploy/{RELEASE}", "--timeout=300s")


def test_predict_through_the_ingress() -> None:
    kubectl("apply", "-f", "-", stdin=kubectl("create", "namespace", NS, "--dry-run=client",
                                              "-o", "yaml"))
    kubectl("apply", "-f", "-", stdin=MANIFEST)
    kubectl("-n", NS, "wait", "md/iris", "--for=condition=Ready", "--timeout=600s")

    def answers() -> bool:
        try:
            return predict([5.1, 3.5, 1.4, 0.2])[0] == "1"
        except OSError:
            return False

    wait_for("a prediction from version 1 through the ingress", answers, timeout=120)
    version, body = predict([5.1, 3.5, 1.4, 0.2])
    assert version == "1" and "prediction" in body


def test_canary_promotes(traffic: None) -> None:
    kubectl("-n", NS, "patch", "md", "iris", "--type", "merge",
            "-p", '{"spec":{"model":{"version":"2"}}}')
    wait_for("a canary of version 2",
             lambda: md().get("status", {}).get("canary", {}).get("version") == "2", 300)
    wait_for("version 2 promoted", lambda: (
        md()["status"].get("stable", {}).get("version") == "2"
        and md()["status"].get("phase") == "Ready"), 900)
    assert predict([5.1, 3.5, 1.4, 0.2])[0] == "2"
    assert md()["status"]["lastRollout"]["outcome"] == "Promoted"


def test_failing_canary_rolls_back(traffic: None) -> None:
    # No latency can pass a p95 bound of 0 ms: the first analysis fails, and with
    # failureLimit 1 the operator rolls back to version 2.
    kubectl("-n", NS, "patch", "md", "iris", "--type", "merge", "-p", json.dumps(
        {"spec": {"model": {"version": "1"},
                  "rollout": {"analysis": {"maxLatencyP95Ms": 0}}}}))
    wait_for("the rollback", lambda: md().get("status", {}).get("phase") == "RolledBack", 900)
    status = md()["status"]
    assert status["stable"]["version"] == "2"
    assert "canary" not in status or not status["canary"]
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "RolledBack"
    assert predict([5.1, 3.5, 1.4, 0.2])[0] == "2"


def test_uninstall() -> None:
    kubectl("-n", NS, "delete", "md", "iris", "--wait=true", "--timeout=300s")
    wait_for("the children to be garbage-collected", lambda: not kubectl(
        "-n", NS, "get", "deploy,svc,ingress", "-l", "modelship.io/deployment=iris",
        "-o", "name").strip(), 300)
    helm("uninstall", RELEASE, "--namespace", RELEASE_NS, "--wait")
    assert not kubectl("-n", RELEASE_NS, "get", "deploy", "-o", "name").strip()
    # Helm keeps the CRDs of crds/: ModelDeployments of other namespaces are not lost.
    kubectl("get", "crd", "modeldeployments.modelship.io")
    kubectl("delete", "namespace", NS, "--wait=false")

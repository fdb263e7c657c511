"""The kind end-to-end suite: runs only with `-m e2e` (make e2e), against the cluster
`make demo` creates, and skips with the reason when that cluster is not there.

It needs: a Docker engine, the kind cluster CLUSTER (default modelship-demo) reachable
through the kubeconfig context kind-CLUSTER, kubectl and helm (PATH or ./bin), the
images and the demo MLflow with iris-classifier versions 1 and 2 (all made by
`make demo`), and the ingress on localhost:DEMO_HTTP_PORT (default 8080).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kindkit import CLUSTER, CONTEXT, tool


def _missing() -> str | None:
    """Why the suite cannot run here, or None."""
    docker = shutil.which("docker")
    if docker is None:
        return "no Docker: the e2e suite needs a kind cluster (make demo creates it)"
    if subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
        return "Docker engine not running ('docker info' fails): no kind cluster possible"
    for name in ("kubectl", "helm"):
        if tool(name) is None:
            return f"{name} not found (make demo fetches it into ./bin)"
    kubectl = tool("kubectl")
    assert kubectl is not None
    probe = subprocess.run([kubectl, "--context", CONTEXT, "get", "--raw", "/readyz"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        return f"kind cluster {CLUSTER!r} not reachable (context {CONTEXT}): run make demo"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e = [item for item in items if item.get_closest_marker("e2e")]
    if not e2e:
        return
    if "e2e" not in (config.getoption("markexpr") or ""):
        reason = "end-to-end test: runs only with `make e2e` (pytest -m e2e) on a kind cluster"
    else:
        reason = _missing() or ""
    if reason:
        for item in e2e:
            item.add_marker(pytest.mark.skip(reason=reason))

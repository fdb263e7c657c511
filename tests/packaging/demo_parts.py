"""Real parts the documentation and demo tests talk to: an MLflow server holding what
`make demo` registers (scripts/demo/register_models.py, run as the demo runs it), and
`modelship-runtime serve` processes pulling from it, as the pods do.

The server and runtime processes are the operator tests' (tests/operator/mlflow_proc.py
and runtime_proc.py), so every suite starts and stops them the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from artifacts import REPO

sys.path.insert(0, str(REPO / "tests" / "operator"))

from mlflow_proc import MlflowServer
from runtime_proc import Runtime

MODEL = "iris-classifier"
__all__ = ["MODEL", "MlflowServer", "Runtime", "demo_registry", "runtime"]


def demo_registry(root: Path) -> MlflowServer:
    """A started MLflow server with the demo's iris-classifier versions 1 and 2."""
    server = MlflowServer(root).start()
    try:
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "demo" / "register_models.py")],
            env={**os.environ, "MLFLOW_TRACKING_URI": server.uri}, cwd=root,
            capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    except BaseException:
        server.stop()
        raise
    return server


def runtime(registry: MlflowServer, version: str, log: Path,
            env: dict[str, str] | None = None) -> Runtime:
    """A started `modelship-runtime serve --model-uri models:/iris-classifier/VERSION`."""
    return Runtime(["--model-uri", f"models:/{MODEL}/{version}"], log,
                   env={"MLFLOW_TRACKING_URI": registry.uri, **(env or {})}).start()

"""A real `mlflow server` the operator's registry tests can stop and start again.

sqlite backend and a local artifact root served through the tracking server's proxy,
on a loopback port that stays the same across restarts (so the operator's settings
keep pointing at it), stopped by its own process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

# ports.py lives in tests/, which pytest puts on the path; scripts that import this
# module from elsewhere (benchmarks/operator) do not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ports import free_port

BIN = Path(sys.executable).parent


class MlflowServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> MlflowServer:
        log = (self.root / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server",
             "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
             "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"mlflow server at {self.uri} did not start in {timeout}s")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, and SIGKILL after `grace` seconds (at once when 0: a throwaway server)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        try:
            proc.wait(grace if grace > 0 else 15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)
        # MLflow's job consumers (huey) outlive the server on SIGTERM: end the rest of
        # the group, so no test run leaves busy processes behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def client(self) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mlflow import MlflowClient

            return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def register(self, name: str, count: int) -> None:
        """Log `count` small LogisticRegression versions of model `name`."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mlflow
            import mlflow.sklearn
            from sklearn.datasets import make_classification
            from sklearn.linear_model import LogisticRegression

            mlflow.set_tracking_uri(self.uri)
            X, y = make_classification(n_samples=100, n_features=4, random_state=0)
            with mlflow.start_run():
                for i in range(count):
                    model = LogisticRegression(C=1.0 / (i + 1)).fit(X, y)
                    mlflow.sklearn.log_model(
                        model, name=f"m{i}", registered_model_name=name,
                        pip_requirements=[], await_registration_for=0,
                    )

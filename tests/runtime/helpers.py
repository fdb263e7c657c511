"""Small helpers the runtime tests share: free ports, waiting for a server, reading one
metric, and an environment without the runtime's own settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

# ports.py lives in tests/, which pytest puts on the path; scripts that import this
# module from elsewhere (benchmarks/operator) do not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ports import free_port

__all__ = ["free_port"]  # the tests import it from here




def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers 200, failing early if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def wait_serving(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the runtime at ``url`` is ready (300 s: a busy CI machine starts
    slowly); fail with the end of its ``log`` if it exits or never is. A ready answer
    while ``proc`` has exited came from another server on its port: a failure too."""
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200 \
                    and proc.poll() is None:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            why = "not ready after 300 s" if proc.returncode is None \
                else f"exited with {proc.returncode}"
            raise RuntimeError(f"{url}: {why}\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one sample of ``url``'s /metrics."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not in /metrics")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without MODELSHIP_ and MLFLOW_ variables, plus ``extra``; no gRPC
    port (the default 8081 is one port for every runtime of a parallel test run)."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSHIP_", "MLFLOW_"))}
    return {**keep, "MODELSHIP_GRPC_PORT": "0", **extra}

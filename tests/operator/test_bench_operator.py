"""`make bench-operator` in a short form: benchmarks/operator/run.py with 30
ModelDeployments, a real MLflow and the real operator must bring every one to Ready, and
its figures must be sane; plus the benchmark's own judgement of Ready and its failure."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from mlflow_proc import BIN

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "benchmarks" / "operator" / "run.py"
COUNT = 30
CHILD_KINDS = ("serviceaccounts", "deployments", "services", "poddisruptionbudgets",
               "networkpolicies", "ingresses")


def _load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_operator_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_run()


@pytest.mark.skipif(not (BIN / "mlflow").exists() or not (BIN / "kopf").exists(),
                    reason="the mlflow and kopf commands are missing (make setup installs them)")
def test_short_benchmark_brings_every_modeldeployment_to_ready() -> None:
    result = subprocess.run(
        [sys.executable, str(RUN), "--count", str(COUNT), "--resync", "2", "--timeout", "300"],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    figures: dict[str, Any] = json.loads(result.stdout)
    assert figures["modeldeployments"] == figures["ready"] == COUNT
    assert 0 < figures["wall_seconds"] < 300
    # both are rounded from the same unrounded wall time: equal within that rounding
    assert figures["per_second"] == pytest.approx(COUNT / figures["wall_seconds"], abs=0.15)
    # Every ModelDeployment had its six children applied and its status written.
    by_kind = figures["create_requests_per_md_by_kind"]
    for kind in CHILD_KINDS:
        assert by_kind.get(f"PATCH {kind}", 0) >= 1, kind
    assert by_kind.get("PATCH modeldeployments/status", 0) >= 1
    assert figures["create_writes_per_md"] >= len(CHILD_KINDS) + 1
    assert figures["create_requests_per_md"] >= figures["create_writes_per_md"]
    assert sum(by_kind.values()) == pytest.approx(figures["create_requests_per_md"], abs=0.2)
    # A no-op resync round: one pass per ModelDeployment at least, reads only.
    assert figures["resync_passes"] >= COUNT
    assert figures["resync_writes_total"] == 0
    assert len(CHILD_KINDS) <= figures["resync_requests_per_pass"] < 30
    assert figures["requests_outside_rbac"] == 0
    assert figures["operator_cpu_ms_per_md_create"] > 0
    assert 20 < figures["operator_peak_rss_mib"] < 2048


def _md(phase: str, ready: str, generation: int, observed: int | None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": [
        {"type": "Ready", "status": ready, "reason": "R", "message": "m"},
        {"type": "Reconciling", "status": "False" if ready == "True" else "True",
         "reason": "ReplicasNotReady", "message": "version 1: 1/2 replicas ready"}]}
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"name": "model-0001", "generation": generation}, "status": status}


def test_ready_means_ready_for_the_current_generation() -> None:
    assert bench.is_ready(_md("Ready", "True", 1, 1))
    assert not bench.is_ready(_md("Pending", "False", 1, 1))
    assert not bench.is_ready(_md("Ready", "True", 2, 1))  # status of an older spec
    assert not bench.is_ready(_md("Ready", "True", 1, None))
    assert not bench.is_ready(_md("Ready", "Unknown", 1, 1))
    assert not bench.is_ready({"metadata": {"name": "model-0001", "generation": 1}})
    assert bench.describe(_md("Pending", "False", 1, 1)) == (
        "model-0001: phase Pending, ReplicasNotReady: version 1: 1/2 replicas ready")


def test_waiting_ends_with_an_error_at_the_bound() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = time.monotonic()
        with pytest.raises(bench.BenchError, match="timed out waiting for the answer"):
            bench.poll(lambda: False, time.monotonic() + 0.5, proc, "the answer", every=0.05)
        assert time.monotonic() - started < 30
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(bench.BenchError, match="the operator exited with"):
        bench.poll(lambda: False, time.monotonic() + 60, proc, "the answer", every=0.05)


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--count", "0"])
    assert exit_.value.code == 2
    assert "--count must be at least 1" in capsys.readouterr().err

"""`make bench-operator` in a short form: benchmarks/operator/run.py with 200
ModelDeployments over 10 namespaces, a real MLflow and the real operator must bring every
one to Ready, with sane figures; and a quiet cluster must cost the operator no LIST and
no write. Plus the benchmark's own judgement of Ready, of request kinds and of targets.

The operator's resync interval and alias poll are 5 s here (its defaults are minutes
and 30 s): a per-object periodic LIST or write, or one per alias poll, would then show
in the 20 s quiet window, as it would in a real cluster's every few minutes."""

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
COUNT = 200
QUIET_SECONDS = 20
CHILD_KINDS = ("serviceaccounts", "deployments", "services", "poddisruptionbudgets",
               "networkpolicies", "ingresses")


def _load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_operator_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_run()


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    if not (BIN / "mlflow").exists() or not (BIN / "kopf").exists():
        pytest.skip("the mlflow and kopf commands are missing (make setup installs them)")
    result = subprocess.run(
        [sys.executable, str(RUN), "--count", str(COUNT), "--namespaces", "10",
         "--resync", "5", "--alias-poll", "5", "--settle-seconds", "3",
         "--quiet-seconds", str(QUIET_SECONDS),
         "--changes", "3", "--timeout", "300"],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def test_short_benchmark_brings_every_modeldeployment_to_ready(figures: dict[str, Any]) -> None:
    assert figures["modeldeployments"] == figures["ready"] == COUNT
    assert figures["following_alias"] == COUNT // 5
    assert 0 < figures["converge_seconds"] < 300
    # Every ModelDeployment had its six children applied and its status written.
    by_kind = figures["converge_requests_per_md_by_kind"]
    for kind in CHILD_KINDS:
        assert by_kind.get(f"PATCH {kind}", 0) >= 1, kind
    assert by_kind.get("PATCH modeldeployments/status", 0) >= 1
    assert figures["converge_writes_per_md"] >= len(CHILD_KINDS) + 1
    assert figures["converge_requests_per_md"] >= figures["converge_writes_per_md"]
    assert sum(by_kind.values()) == pytest.approx(figures["converge_requests_per_md"], abs=0.2)
    # The versions were checked in MLflow, through the counting proxy.
    assert figures["converge_registry_calls"] > 0
    assert figures["requests_outside_rbac"] == 0
    assert figures["operator_cpu_seconds_converge"] > 0
    assert 20 < figures["operator_peak_rss_mib"] < 2048
    assert figures["operator_rss_mib_end"] <= figures["operator_peak_rss_mib"]
    # Each spec change reached its Deployment and the status within the bound.
    assert len(figures["spec_change_seconds"]) == 3
    assert all(t is not None and 0 < t < 60 for t in figures["spec_change_seconds"])
    assert figures["quiet_seconds"] >= QUIET_SECONDS


def test_a_quiet_cluster_costs_no_list_and_no_write(figures: dict[str, Any]) -> None:
    verbs = figures["quiet_requests_by_verb"]
    assert verbs["LIST"] == 0, figures["quiet_requests_per_md_minute_by_kind"]
    assert figures["quiet_writes"] == 0, figures["quiet_requests_per_md_minute_by_kind"]
    # Not quiet for want of an operator: its timers ran in the window (the alias polls
    # every 5 s reached MLflow), and it answered the spec changes made after it.
    assert figures["quiet_registry_calls_per_minute"] > 0
    assert figures["operator_cpu_seconds_per_quiet_minute"] > 0
    assert all(t is not None for t in figures["spec_change_seconds"])


def test_request_kinds() -> None:
    ns = "/apis/modelship.io/v1alpha1/namespaces/a/modeldeployments"
    assert bench.classify("GET", ns, {}) == ("LIST", "modeldeployments")
    assert bench.classify("GET", ns, {"watch": "true"}) == ("WATCH", "modeldeployments")
    assert bench.classify("GET", f"{ns}/m", {}) == ("GET", "modeldeployments")
    assert bench.classify("PATCH", f"{ns}/m/status", {}) == ("PATCH", "modeldeployments/status")
    assert bench.classify("GET", "/apis/apps/v1/deployments", {"watch": "1"}) == (
        "WATCH", "deployments")
    assert bench.classify("POST", "/api/v1/namespaces/a/events", {}) == ("POST", "events")
    assert bench.classify("GET", "/api/v1/namespaces/a/services/s", {}) == ("GET", "services")
    requests_ = [("GET", ns, {}, "kopf"), ("PATCH", f"{ns}/m", {}, "kopf"),
                 ("GET", ns, {}, "test-user")]
    assert bench.by_verb(bench.by_operator(requests_))["LIST"] == 1
    assert bench.breakdown(bench.by_operator(requests_), 2) == {
        "LIST modeldeployments": 0.5, "PATCH modeldeployments": 0.5}


def test_workload_and_targets() -> None:
    following = [i for i in range(100) if bench.follows_alias(i, 0.2)]
    assert len(following) == 20 and following[:2] == [4, 9]
    assert not any(bench.follows_alias(i, 0.0) for i in range(100))
    assert len({bench.namespace(i, 10) for i in range(100)}) == 10
    assert bench.target(0, 0, inclusive=True)["met"]
    assert not bench.target(1, 0, inclusive=True)["met"]
    assert not bench.target(0.1, 0.1)["met"]
    assert not bench.target(None, 5)["met"]  # not measured: missed, never met
    assert bench.memory_limit_mib() > 0


def test_memory_limit_units(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    for limit, mib in (("256Mi", 256), ("1Gi", 1024), ("512Ki", 0.5)):
        values.write_text(f"resources:\n  limits:\n    memory: {limit}\n")
        assert bench.memory_limit_mib(values) == pytest.approx(mib)


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
    assert "--count (or every size)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "1000,x"])
    assert "--sizes must be comma-separated integers" in capsys.readouterr().err

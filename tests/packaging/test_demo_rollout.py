"""The demo's canary stage against a real runtime: its traffic reaches the runtime and is
counted as the canary analysis counts it, at a rate examples/minimal.yaml's rollout can
judge; its wait step says what it saw and fails when the canary is not promoted; and
`make demo` fails then too. No cluster runs here: kubectl is fake_kubectl.py, answering
from a state file the test writes (as the operator would write status)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ports
import pytest
import yaml
from artifacts import REPO
from demo_parts import Runtime
from fake_kubectl import write_state
from modelship_operator.api import ModelDeployment
from modelship_operator.rollout.analysis import parse_metrics
from prometheus_client.parser import text_string_to_metric_families

TRAFFIC = REPO / "scripts" / "demo" / "traffic.sh"
WAIT = REPO / "scripts" / "demo" / "wait-promotion.sh"
DEMO_SH = REPO / "scripts" / "demo.sh"
FAKE = Path(__file__).parent / "fake_kubectl.py"
NS, NAME, HOST = "ml", "iris", "iris.example.com"
BOUND = 180.0  # generous: a busy machine is slow


def wait_for(what: str, check: Callable[[], Any], timeout: float = BOUND) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


# --- a fake cluster ---------------------------------------------------------------------------

@dataclass
class FakeCluster:
    state: Path
    log: Path
    kubectl: Path

    def set(self, md: dict[str, Any]) -> None:
        write_state(self.state, {f"{NS}/{NAME}": md})

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def gets(self) -> int:
        return sum(1 for c in self.calls() if "get" in c)


@pytest.fixture
def cluster(tmp_path: Path) -> FakeCluster:
    state, log = tmp_path / "state.json", tmp_path / "kubectl.log"
    log.touch()
    kubectl = tmp_path / "bin" / "kubectl"
    kubectl.parent.mkdir()
    kubectl.write_text(f"#!/bin/sh\nFAKE_KUBECTL_STATE='{state}' FAKE_KUBECTL_LOG='{log}' "
                       f"exec '{sys.executable}' '{FAKE}' \"$@\"\n")
    kubectl.chmod(0o755)
    write_state(state, {})
    return FakeCluster(state, log, kubectl)


def md(phase: str, stable: str, *, canary: dict[str, Any] | None = None,
       reconciling: str = "", last: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "stable": {"version": stable},
                              "conditions": [{"type": "Ready", "status": "True"}]}
    if reconciling:
        status["conditions"].append({"type": "Reconciling", "status": "True",
                                     "message": reconciling})
    if canary is not None:
        status["canary"] = canary
    if last is not None:
        status["lastRollout"] = last
    return {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": NS},
            "spec": {"model": {"name": "iris-classifier", "version": stable}},
            "status": status}


HELD = md("Progressing", "1", canary={
    "version": "2", "weight": 10, "step": 0,
    "lastAnalysis": {"verdict": "Inconclusive", "requests": 7, "errorRate": 0.0,
                     "latencyP95Ms": 3.5}},
    reconciling="AnalysisInconclusive: 7 canary requests in the window, 20 needed")
PROMOTED = md("Ready", "2", last={"version": "2", "outcome": "Promoted", "reason": "all gates"})


# --- counting as the analysis counts ----------------------------------------------------------

def counted(runtime: Runtime) -> tuple[float, float, float]:
    """(prediction requests, of which 2xx, timed requests) in the runtime's /metrics, read
    with the operator's own parser where it has one."""
    text = runtime.metrics()
    snapshot = parse_metrics(text)
    ok = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == "http_requests_total" and s.labels.get("route") == "/predict"
             and s.labels.get("status", "").startswith("2"))
    return snapshot.requests, ok, max(snapshot.buckets.values(), default=0.0)


def demo_rate() -> int:
    match = re.search(r'^DEMO_RATE="\$\{DEMO_RATE:-([0-9]+)\}"$', DEMO_SH.read_text(), re.M)
    assert match, "scripts/demo.sh sets no default DEMO_RATE"
    return int(match.group(1))


def needed_rate(manifest: Path, miss: float = 0.001) -> float:
    """The smallest request rate at which the first (smallest) step's window holds
    minRequests canary requests except with probability `miss` (each request goes to the
    canary with the step's weight, as ingress-nginx draws it)."""
    from scipy.stats import binom

    rollout = ModelDeployment.model_validate(yaml.safe_load(manifest.read_text())).spec.rollout
    weight, window = rollout.steps[0] / 100, rollout.interval_seconds
    needed = rollout.analysis.min_requests
    rate = 0.5
    while binom.cdf(needed - 1, math.floor(rate * window), weight) > miss:
        rate += 0.5
    return rate


def test_the_demo_rate_is_enough_for_the_minimal_example() -> None:
    needed = needed_rate(REPO / "examples" / "minimal.yaml")
    assert 3 < needed < demo_rate(), (needed, demo_rate())
    # What used to be sent, one request per 0.2 s plus its own time, was not enough.
    assert needed > 5


# --- traffic ---------------------------------------------------------------------------------

def test_traffic_reaches_the_runtime_and_is_counted(iris_runtime: Runtime) -> None:
    before = counted(iris_runtime)
    count, rate = 60, demo_rate()
    started = time.monotonic()
    result = subprocess.run([str(TRAFFIC), iris_runtime.url, "--host", HOST, "--rate", str(rate),
                             "--count", str(count)], capture_output=True, text=True,
                            timeout=BOUND)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(rf"traffic: {count} requests to {re.escape(iris_runtime.url)}/predict "
                        rf"in \d+ s: 200 x {count}\n", result.stdout), result.stdout
    after = counted(iris_runtime)
    assert [a - b for a, b in zip(after, before, strict=True)] == [count, count, count]
    # Fast enough for examples/minimal.yaml's first step, whatever each answer costs.
    assert count / elapsed >= needed_rate(REPO / "examples" / "minimal.yaml"), elapsed


def test_traffic_that_gets_no_answer_says_so(tmp_path: Path) -> None:
    port = ports.free_port()  # a port that nothing listens on
    result = subprocess.run([str(TRAFFIC), f"http://127.0.0.1:{port}", "--count", "3"],
                            capture_output=True, text=True, timeout=BOUND)
    assert result.returncode == 1
    assert "3 requests" in result.stdout and "000 x 3" in result.stdout
    assert "no request got a 2xx answer" in result.stderr


@pytest.mark.parametrize("args", [[], ["ftp://x"], ["http://x", "--rate", "0"],
                                  ["http://x", "--count", "many"], ["http://x", "--what"]])
def test_traffic_refuses_bad_arguments(args: list[str]) -> None:
    result = subprocess.run([str(TRAFFIC), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr


# --- wait for promotion -----------------------------------------------------------------------

def run_wait(cluster: FakeCluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(WAIT), NS, NAME, "2", "--every", "0.2", *args],
                            env={**os.environ, "KUBECTL": str(cluster.kubectl)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_wait_exits_0_once_the_version_is_promoted(cluster: FakeCluster) -> None:
    cluster.set(HELD)
    proc = run_wait(cluster, "--timeout", "600")
    wait_for("the wait step's first look", lambda: cluster.gets() >= 1)
    assert proc.poll() is None  # held: still waiting
    cluster.set(PROMOTED)
    out, err = proc.communicate(timeout=BOUND)
    assert proc.returncode == 0, out + err
    assert "weight 10%" in out and "Inconclusive (7 requests" in out  # the held step shown
    assert out.splitlines()[-1].startswith("promoted: version 2 of ml/iris serves all traffic")


def test_wait_fails_saying_what_it_saw_when_not_promoted_in_time(cluster: FakeCluster) -> None:
    cluster.set(HELD)
    proc = run_wait(cluster, "--timeout", "2")
    out, err = proc.communicate(timeout=BOUND)
    assert proc.returncode == 1, out + err
    assert err.startswith("timed out: version 2 of ml/iris was not promoted within 2s; "
                          "last seen: phase Progressing, stable 1, canary 2, weight 10%, step 0, "
                          "last analysis: Inconclusive (7 requests, error rate 0, p95 3.5 ms); "
                          "AnalysisInconclusive: 7 canary requests in the window, 20 needed"), err


def test_wait_fails_at_once_when_the_canary_rolls_back(cluster: FakeCluster) -> None:
    reason = "error rate 0.09 > 0.01 over 300 requests"
    cluster.set(md("RolledBack", "1", last={"version": "2", "outcome": "RolledBack",
                                             "reason": reason}))
    proc = run_wait(cluster, "--timeout", "600")  # not waited for: the subprocess bound
    out, err = proc.communicate(timeout=BOUND)
    assert proc.returncode == 1, out + err
    assert err.startswith(f"rolled back: version 2 of ml/iris was not promoted: {reason}")


def test_a_rollback_of_another_version_is_not_this_ones(cluster: FakeCluster) -> None:
    cluster.set(md("RolledBack", "1", last={"version": "3", "outcome": "RolledBack",
                                             "reason": "old"}))
    proc = run_wait(cluster, "--timeout", "1")
    out, err = proc.communicate(timeout=BOUND)
    assert proc.returncode == 1 and err.startswith("timed out"), out + err


def test_wait_reports_what_kubectl_said(cluster: FakeCluster) -> None:
    proc = run_wait(cluster, "--timeout", "1")  # no such ModelDeployment
    _, err = proc.communicate(timeout=BOUND)
    assert proc.returncode == 1
    assert "last seen: " in err and 'modeldeployments.modelship.io "iris" not found' in err


def test_wait_refuses_bad_arguments() -> None:
    for args in ([], ["ml", "iris"], ["ml", "iris", "2", "--timeout", "soon"]):
        result = subprocess.run([str(WAIT), *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and result.stderr


# --- make demo, through the Makefile and demo.sh ----------------------------------------------

def make_demo(cluster: FakeCluster, runtime: Runtime, timeout: int) -> subprocess.Popen[str]:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    # As a user types it: not as a sub-make of `make test` (make[1], inherited flags).
    outer = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    env = {**outer, "KUBECTL": str(cluster.kubectl), "DEMO_HTTP_PORT": str(runtime.port),
           "DEMO_ROLLOUT_TIMEOUT": str(timeout), "DEMO_POLL_SECONDS": "0.2"}
    return subprocess.Popen([make, "--no-print-directory", "demo", "DEMO_ARGS=rollout"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def patched(cluster: FakeCluster) -> bool:
    return ["-n", NS, "patch", "md", NAME, "--type", "merge",
            "-p", '{"spec":{"model":{"version":"2"}}}'] in cluster.calls()


def test_make_demo_fails_when_the_canary_is_not_promoted(cluster: FakeCluster,
                                                         iris_runtime: Runtime) -> None:
    cluster.set(HELD)
    before = counted(iris_runtime)
    proc = make_demo(cluster, iris_runtime, timeout=3)
    out, err = proc.communicate(timeout=BOUND)
    assert proc.returncode == 2, out + err  # make's status for a failed recipe
    assert "timed out: version 2 of ml/iris was not promoted within 3s; last seen: phase " \
           "Progressing, stable 1, canary 2, weight 10%" in err
    assert "make demo: version 2 was not promoted" in err
    assert re.search(r"^make: \*\*\* \[Makefile:\d+: demo\] Error 1$", err, re.M), err
    assert ["config", "use-context", "kind-modelship-demo"] in cluster.calls()
    assert patched(cluster)
    assert "Status:" in out  # what the rollout did, from describe
    assert counted(iris_runtime)[1] > before[1]  # the traffic was flowing meanwhile


def test_make_demo_succeeds_once_counted_traffic_lets_the_canary_promote(
        cluster: FakeCluster, iris_runtime: Runtime) -> None:
    cluster.set(md("Ready", "1"))
    before = counted(iris_runtime)
    proc = make_demo(cluster, iris_runtime, timeout=600)
    wait_for("the version patch", lambda: patched(cluster))
    cluster.set(HELD)
    # The operator promotes after minRequests counted canary requests; so does this one.
    needed = ModelDeployment.model_validate(yaml.safe_load(
        (REPO / "examples" / "minimal.yaml").read_text())).spec.rollout.analysis.min_requests
    wait_for(f"{needed} counted requests",
             lambda: counted(iris_runtime)[1] - before[1] >= needed or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()
    cluster.set(PROMOTED)
    out, err = proc.communicate(timeout=BOUND)
    assert proc.returncode == 0, out + err
    assert "promoted: version 2 of ml/iris serves all traffic" in out
    traffic = re.search(r"^traffic: (\d+) requests to http://localhost:\d+/predict in \d+ s: "
                        r"200 x (\d+)$", out, re.M)
    assert traffic and int(traffic.group(1)) == int(traffic.group(2)) >= needed, out
    assert "X-Model-Version: 2" in out  # the prediction after the promotion

"""The operator's metrics: what each recording function exports, read back through the
exposition format the way Prometheus reads it, and the HTTP endpoint that serves them."""

from __future__ import annotations

import urllib.request

import ports
import pytest
from modelship_operator import metrics
from modelship_operator.api import AnalysisSpec, RolloutSpec
from modelship_operator.metrics import OperatorMetrics
from modelship_operator.rollout.analysis import Snapshot, Window, analyse
from modelship_operator.rollout.state import (
    Canary,
    Observed,
    Outcome,
    RolloutState,
    Verdict,
    advance,
)
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(m: OperatorMetrics) -> Samples:
    """(sample name, labels) -> value of every sample, without the *_created ones."""
    found: Samples = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            if not s.name.endswith("_created"):
                found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def of_md(found: Samples, namespace: str, name: str) -> set[str]:
    """Names of the samples that carry this ModelDeployment's labels."""
    md = {("namespace", namespace), ("modelship_deployment", name)}
    return {sample for sample, labels in found if md <= labels}


MD = {"namespace": "ml", "modelship_deployment": "iris"}


def test_outcome_counters_exist_at_zero_before_the_first_rollout_ends() -> None:
    m = OperatorMetrics()
    m.clear_canary("ml", "iris")  # the first pass over a ModelDeployment
    found = samples(m)
    for outcome in metrics.OUTCOMES:
        assert value(found, "modelship_rollouts_total", **MD, outcome=outcome) == 0.0
    m.record_rollout("ml", "iris", "RolledBack")
    m.record_rollout("ml", "iris", "RolledBack")
    m.record_rollout("ml", "iris", "Promoted")
    found = samples(m)
    assert value(found, "modelship_rollouts_total", **MD, outcome="RolledBack") == 2.0
    assert value(found, "modelship_rollouts_total", **MD, outcome="Promoted") == 1.0
    assert value(found, "modelship_rollouts_total", **MD, outcome="Aborted") == 0.0


@pytest.mark.parametrize("outcome", ["Failed", "rolledback", ""])
def test_an_unknown_outcome_is_refused(outcome: str) -> None:
    with pytest.raises(ValueError, match="rollout outcome"):
        OperatorMetrics().record_rollout("ml", "iris", outcome)


def test_gate_verdicts() -> None:
    m = OperatorMetrics()
    m.record_gate("ml", "iris", "latencyP95", "Fail")
    m.record_gate("ml", "iris", "latencyP95", "Fail")
    m.record_gate("ml", "iris", "errorRate", "Pass")
    m.record_gate("ml", "iris", "goldenSet", "Inconclusive")  # a gate added later
    found = samples(m)
    name = "modelship_analysis_verdicts_total"
    assert value(found, name, **MD, gate="latencyP95", verdict="Fail") == 2.0
    assert value(found, name, **MD, gate="errorRate", verdict="Pass") == 1.0
    assert value(found, name, **MD, gate="goldenSet", verdict="Inconclusive") == 1.0
    # Every verdict of a gate exists from its first verdict on (increase() needs a 0).
    assert value(found, name, **MD, gate="goldenSet", verdict="Fail") == 0.0
    assert value(found, name, **MD, gate="predictionShift", verdict="Fail") == 0.0


def test_the_gates_and_verdicts_are_the_analysis_ones() -> None:
    assert set(metrics.VERDICTS) == {"Pass", "Fail", "Inconclusive"}
    # An analysis of an empty window with every gate on: each answers (inconclusive).
    spec = AnalysisSpec(max_prediction_shift=0.2)
    verdict, _ = analyse(Window(canary=Snapshot(), stable=Snapshot()), spec, {})
    assert {g.gate for g in verdict.gates} == set(metrics.KNOWN_GATES)
    m = OperatorMetrics()
    for gate in verdict.gates:
        m.record_gate("ml", "iris", gate.gate, gate.outcome.value)
    assert value(samples(m), "modelship_analysis_verdicts_total", **MD, gate="errorRate",
                 verdict="Inconclusive") == 1.0


@pytest.mark.parametrize(
    ("gate", "verdict", "problem"),
    [("latencyP95", "pass", "verdict"), ("LatencyP95", "Pass", "gate name"),
     ("error rate", "Fail", "gate name"), ("", "Pass", "gate name")],
)
def test_a_bad_gate_or_verdict_is_refused(gate: str, verdict: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        OperatorMetrics().record_gate("ml", "iris", gate, verdict)


def test_canary_gauges_follow_the_rollout() -> None:
    m = OperatorMetrics()
    # Canary created, pods not ready: the clock runs from the start.
    m.set_canary("ml", "iris", weight=0, step=0, progressed_at=1000.0, deadline_at=1600.0)
    found = samples(m)
    assert value(found, "modelship_rollout_in_progress", **MD) == 1.0
    assert value(found, "modelship_canary_weight", **MD) == 0.0
    assert value(found, "modelship_rollout_step", **MD) == 1.0
    assert value(found, "modelship_rollout_last_progress_timestamp_seconds", **MD) == 1000.0
    assert value(found, "modelship_rollout_deadline_timestamp_seconds", **MD) == 1600.0
    m.set_canary("ml", "iris", weight=50, step=1, progressed_at=1400.0, deadline_at=2060.0)
    found = samples(m)
    assert value(found, "modelship_canary_weight", **MD) == 50.0
    assert value(found, "modelship_rollout_step", **MD) == 2.0
    assert value(found, "modelship_rollout_last_progress_timestamp_seconds", **MD) == 1400.0
    assert value(found, "modelship_rollout_deadline_timestamp_seconds", **MD) == 2060.0
    # Paused: no deadline applies.
    m.set_canary("ml", "iris", weight=50, step=1, progressed_at=1400.0, deadline_at=None)
    found = samples(m)
    assert value(found, "modelship_rollout_deadline_timestamp_seconds", **MD) is None
    assert value(found, "modelship_rollout_in_progress", **MD) == 1.0
    # Done: weight and step 0, nothing left that an alert on progress could match.
    m.clear_canary("ml", "iris")
    found = samples(m)
    assert value(found, "modelship_rollout_in_progress", **MD) == 0.0
    assert value(found, "modelship_canary_weight", **MD) == 0.0
    assert value(found, "modelship_rollout_step", **MD) == 0.0
    assert value(found, "modelship_rollout_last_progress_timestamp_seconds", **MD) is None
    assert value(found, "modelship_rollout_deadline_timestamp_seconds", **MD) is None


@pytest.mark.parametrize(
    ("weight", "step", "problem"),
    [(101, 0, "percentage"), (-1, 0, "percentage"), (10, -1, "step")],
)
def test_impossible_canary_figures_are_refused(weight: int, step: int, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        OperatorMetrics().set_canary("ml", "iris", weight=weight, step=step,
                                     progressed_at=None, deadline_at=None)


def test_forget_drops_every_series_of_a_deleted_model_deployment() -> None:
    m = OperatorMetrics()
    for name in ("iris", "wine"):
        m.set_canary("ml", name, weight=10, step=0, progressed_at=5.0, deadline_at=605.0)
        m.record_rollout("ml", name, "Aborted")
        m.record_gate("ml", name, "customGate", "Pass")
    m.record_reconcile_error("InvalidSpec")
    before = samples(m)
    assert of_md(before, "ml", "iris") == {  # every per-ModelDeployment metric
        "modelship_rollouts_total", "modelship_analysis_verdicts_total",
        "modelship_canary_weight", "modelship_rollout_step", "modelship_rollout_in_progress",
        "modelship_rollout_last_progress_timestamp_seconds",
        "modelship_rollout_deadline_timestamp_seconds",
    }
    m.forget("ml", "iris")
    after = samples(m)
    assert of_md(after, "ml", "iris") == set()
    assert of_md(after, "ml", "wine") == of_md(before, "ml", "wine")
    assert value(after, "modelship_operator_reconcile_errors_total", reason="InvalidSpec") == 1
    # Seen again (re-created under the same name): counters start over from 0.
    m.clear_canary("ml", "iris")
    assert value(samples(m), "modelship_rollouts_total", **MD, outcome="Aborted") == 0.0


def test_reconcile_errors_and_duration() -> None:
    m = OperatorMetrics()
    m.record_reconcile_error("TransientApiError")
    m.record_reconcile_error("TransientApiError")
    m.record_reconcile_error("RegistryUnavailable")
    with m.reconcile_duration.time():
        pass
    found = samples(m)
    name = "modelship_operator_reconcile_errors_total"
    assert value(found, name, reason="TransientApiError") == 2.0
    assert value(found, name, reason="RegistryUnavailable") == 1.0
    assert value(found, "modelship_operator_reconcile_duration_seconds_count") == 1.0
    with pytest.raises(ValueError, match="CamelCase"):
        m.record_reconcile_error("connection refused: 10.0.0.1:443")


def test_every_way_a_rollout_ends_is_an_outcome_counted() -> None:
    """The reconciler counts the outcome of a pass that ends a rollout (a canary before,
    none after): every way a rollout ends must leave one of OUTCOMES."""
    spec = RolloutSpec(steps=[10, 100], interval="60s",
                       analysis=AnalysisSpec(failure_limit=1), progress_deadline_seconds=60)
    running = RolloutState("3", Canary("4", weight=10, step=0, step_started_at=0.0,
                                       progress_at=0.0))
    ready = {"canary_ready": True}
    failed = Verdict(Outcome.FAIL, "error rate 0.5")
    unsure = Verdict(Outcome.INCONCLUSIVE, "3 requests")
    ends = {
        "promoted": advance(spec, "4", running, Observed(now=1.0, promote_now=True, **ready)),
        "rolled back": advance(spec, "4", running, Observed(now=61.0, **ready), failed),
        "reverted": advance(spec, "3", running, Observed(now=1.0, **ready)),
        "abort annotation": advance(spec, "4", running, Observed(now=1.0, abort=True, **ready)),
        "deadline": advance(spec, "4", running, Observed(now=500.0, **ready), unsure),
    }
    outcomes = {}
    for how, step in ends.items():
        assert step.state.canary is None and step.state.last is not None, how
        outcomes[how] = step.state.last.outcome
    assert set(outcomes.values()) == set(metrics.OUTCOMES), outcomes
    assert outcomes["deadline"] == "RolledBack"


def _free_port() -> int:
    return ports.free_port()


def test_served_over_http() -> None:
    m = OperatorMetrics()
    m.set_canary("ml", "iris", weight=50, step=1, progressed_at=7.0, deadline_at=None)
    server = m.serve(_free_port(), "127.0.0.1")
    try:
        host, port = server.server_address[:2]
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("text/plain")
            text = answer.read().decode()
        assert 'modelship_canary_weight{modelship_deployment="iris",namespace="ml"} 50.0' in text
        # A second server on the same port cannot start: the caller hears of it.
        with pytest.raises(OSError):
            m.serve(int(port), "127.0.0.1")
    finally:
        server.shutdown()
        server.server_close()

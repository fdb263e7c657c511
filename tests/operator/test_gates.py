"""The gates' verdict logic: bounds against exact ones, calibration, monotony, and the
README's table of what they catch kept equal to the script that computes it."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modelship_operator.rollout.gates import (
    GateResult,
    Outcome,
    combine,
    error_rate_gate,
    latency_gate,
    prediction_shift_gate,
    wilson_lower,
    wilson_upper,
)
from scipy.stats import beta, binom

REPO = Path(__file__).resolve().parents[2]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 2000), data=st.data(), confidence=st.sampled_from([0.8, 0.95, 0.99]))
def test_bounds_hold_the_estimate_and_stay_near_the_exact_ones(
    n: int, data: st.DataObject, confidence: float
) -> None:
    e = data.draw(st.integers(0, n))
    lower, upper = wilson_lower(e, n, confidence), wilson_upper(e, n, confidence)
    assert 0.0 <= lower <= e / n <= upper <= 1.0
    # Clopper-Pearson, the exact (conservative) one-sided bounds.
    exact_lower = 0.0 if e == 0 else float(beta.ppf(1 - confidence, e, n - e + 1))
    exact_upper = 1.0 if e == n else float(beta.ppf(confidence, e + 1, n - e))
    assert lower <= exact_lower + 0.02 and upper >= exact_upper - 0.02
    if e < n:
        assert wilson_lower(e + 1, n, confidence) >= lower  # monotone in the count


def fails(n: int, e: int, threshold: float) -> bool:
    return error_rate_gate(n, e, max_error_rate=threshold, min_requests=1,
                           confidence=0.95).outcome is Outcome.FAIL


@pytest.mark.parametrize("threshold", [0.001, 0.01, 0.05, 0.1])
@pytest.mark.parametrize("n", [20, 50, 100, 300, 1000, 3000])
def test_error_rate_false_alarms_stay_within_the_confidence(threshold: float, n: int) -> None:
    """A canary exactly at the threshold is failed at most 1 - confidence of the time."""
    if not fails(n, n, threshold):
        return
    lo, hi = 0, n  # the smallest failing count (the gate is monotone in it)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fails(n, mid, threshold) else (mid + 1, hi)
    assert not fails(n, lo - 1, threshold) if lo > 0 else True
    assert all(fails(n, e, threshold) for e in range(lo, min(n, lo + 5) + 1))
    assert float(binom.sf(lo - 1, n, threshold)) <= 0.05 + 1e-9


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 3000), data=st.data(), threshold=st.floats(0.0, 0.5))
def test_error_rate_at_or_under_the_threshold_never_fails(
    n: int, data: st.DataObject, threshold: float
) -> None:
    e = data.draw(st.integers(0, math.floor(n * threshold)))
    result = error_rate_gate(n, e, max_error_rate=threshold, min_requests=0, confidence=0.95,
                             stable_requests=n, stable_errors=0)
    assert result.outcome is Outcome.PASS


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 500), min_requests=st.integers(1, 500), data=st.data())
def test_too_few_requests_is_inconclusive_whatever_the_figures(
    n: int, min_requests: int, data: st.DataObject
) -> None:
    if n >= min_requests:
        return
    e = data.draw(st.integers(0, n))
    assert error_rate_gate(n, e, max_error_rate=0.01, min_requests=min_requests,
                           confidence=0.95).outcome is Outcome.INCONCLUSIVE
    buckets = {0.5: float(n - e), math.inf: float(n)}
    assert latency_gate(buckets, max_latency_p95_ms=500, min_requests=min_requests,
                        confidence=0.95).outcome is Outcome.INCONCLUSIVE


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 3000), data=st.data())
def test_latency_with_at_most_five_percent_slow_never_fails(n: int, data: st.DataObject) -> None:
    slow = data.draw(st.integers(0, math.floor(n * 0.05)))
    buckets = {0.1: float(n - slow), 0.5: float(n - slow), 1.0: float(n), math.inf: float(n)}
    assert latency_gate(buckets, max_latency_p95_ms=500, min_requests=1,
                        confidence=0.95).outcome is Outcome.PASS


def test_latency_counts_only_requests_certainly_slower() -> None:
    """Threshold 300 ms between bounds 250 and 500 ms: only requests above 500 ms are
    certainly slower; those between 250 and 500 ms might not be."""
    maybe = {0.25: 0.0, 0.5: 100.0, math.inf: 100.0}
    assert latency_gate(maybe, max_latency_p95_ms=300, min_requests=1,
                        confidence=0.95).outcome is Outcome.PASS
    surely = {0.25: 0.0, 0.5: 0.0, math.inf: 100.0}
    assert latency_gate(surely, max_latency_p95_ms=300, min_requests=1,
                        confidence=0.95).outcome is Outcome.FAIL
    # A threshold above every finite bound: nothing is certainly slower.
    high = {0.5: 0.0, math.inf: 100.0}
    assert latency_gate(high, max_latency_p95_ms=5000, min_requests=1,
                        confidence=0.95).outcome is Outcome.PASS
    assert latency_gate({}, max_latency_p95_ms=500, min_requests=1,
                        confidence=0.95).outcome is Outcome.INCONCLUSIVE


def test_prediction_shift_needs_both_sides() -> None:
    even = {"a": 100.0, "b": 100.0}
    assert prediction_shift_gate(None, even, max_psi=0.1,
                                 min_predictions=100).outcome is Outcome.INCONCLUSIVE
    assert prediction_shift_gate(even, {"a": 99.0}, max_psi=0.1,
                                 min_predictions=100).outcome is Outcome.INCONCLUSIVE
    assert prediction_shift_gate(even, even, max_psi=0.1, min_predictions=100).outcome is (
        Outcome.PASS)
    moved = prediction_shift_gate(even, {"a": 200.0}, max_psi=0.1, min_predictions=100)
    assert moved.outcome is Outcome.FAIL and moved.figure is not None and moved.figure > 1


def test_combine_takes_the_worst_and_nothing_is_never_a_pass() -> None:
    p = GateResult("a", Outcome.PASS, "fine")
    i = GateResult("b", Outcome.INCONCLUSIVE, "no data")
    f = GateResult("c", Outcome.FAIL, "too high")
    assert combine([p, p]).outcome is Outcome.PASS
    assert combine([p, i]).outcome is Outcome.INCONCLUSIVE
    assert combine([i, f, p]).outcome is Outcome.FAIL
    assert combine([i, f]).message == "too high"
    assert combine([]).outcome is Outcome.INCONCLUSIVE


def test_readme_tables_are_the_scripts_output() -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gate_power.py"), "--check"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_agreement_fails_only_when_significantly_below() -> None:
    from modelship_operator.rollout.gates import agreement_gate, mean_abs_diff_gate

    def verdict(agree: int, disagree: int) -> Outcome:
        return agreement_gate(agree, disagree, min_agreement=0.98, min_predictions=100,
                              confidence=0.95).outcome

    assert verdict(50, 0) is Outcome.INCONCLUSIVE  # too few rows compared
    assert verdict(1000, 0) is Outcome.PASS
    assert verdict(975, 25) is Outcome.PASS  # 97.5%: not significantly under 98%
    assert verdict(800, 200) is Outcome.FAIL  # the shuffled-labels canary
    assert verdict(960, 40) is Outcome.FAIL  # 96% of 1000: significantly under
    mad = mean_abs_diff_gate(30.0, 300, max_mean_abs_diff=0.05, min_predictions=100)
    assert mad.outcome is Outcome.FAIL and mad.figure == pytest.approx(0.1)
    assert mean_abs_diff_gate(3.0, 300, max_mean_abs_diff=0.05,
                              min_predictions=100).outcome is Outcome.PASS
    assert mean_abs_diff_gate(0.0, 10, max_mean_abs_diff=0.05,
                              min_predictions=100).outcome is Outcome.INCONCLUSIVE

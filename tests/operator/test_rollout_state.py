"""The canary state machine: paths by example, and its safety rules by hypothesis."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from modelship_operator.api import AnalysisSpec, RolloutSpec
from modelship_operator.rollout.state import (
    Canary,
    LastRollout,
    Observed,
    Outcome,
    RolloutState,
    Verdict,
    advance,
    analysis_due,
)

SPEC = RolloutSpec(steps=[10, 50, 100], interval="60s", analysis=AnalysisSpec(failure_limit=2))
PASS = Verdict(Outcome.PASS, "ok")
FAIL = Verdict(Outcome.FAIL, "error rate 0.2 > 0.01")
WAIT = Verdict(Outcome.INCONCLUSIVE, "3 canary requests, fewer than minRequests 20")


def run(state: RolloutState, target: str, now: float, **obs: bool) -> RolloutState:
    return advance(SPEC, target, state, Observed(now=now, **obs)).state


def test_first_version_serves_directly() -> None:
    step = advance(SPEC, "3", RolloutState(stable=None), Observed(now=0))
    assert step.state == RolloutState(stable="3")
    assert step.phase == "Ready"


def test_happy_path_steps_then_promotes() -> None:
    state = RolloutState(stable="3")
    state = run(state, "4", 0)
    assert state.canary == Canary(version="4", progress_at=0)  # created, no traffic yet
    state = run(state, "4", 1)  # canary pods not ready: still no traffic
    assert state.canary is not None and state.canary.weight == 0
    state = run(state, "4", 2, canary_ready=True)
    assert state.canary is not None and state.canary.weight == 10
    weights = [10]
    now = 2.0
    while state.canary is not None:
        now += 61
        assert analysis_due(state, SPEC, now)
        step = advance(SPEC, "4", state, Observed(now=now, canary_ready=True), PASS)
        state = step.state
        if state.canary is not None:
            weights.append(state.canary.weight)
    assert weights == [10, 50, 100]
    assert state == RolloutState(stable="4", canary=None, last=LastRollout("4", "Promoted",
                                 "every step passed; last: ok"))


def test_analysis_not_due_before_interval_holds_weight() -> None:
    state = RolloutState("3", Canary("4", weight=10, step=0, step_started_at=100.0,
                                     progress_at=100.0))
    step = advance(SPEC, "4", state, Observed(now=130.0, canary_ready=True), FAIL)
    assert step.state == state  # a verdict before the interval ends is ignored


def test_inconclusive_holds_says_so_once_and_counts_no_failure() -> None:
    state = RolloutState("3", Canary("4", weight=10, step=0, step_started_at=0.0,
                                     progress_at=0.0))
    step = advance(SPEC, "4", state, Observed(now=100.0, canary_ready=True), WAIT)
    assert step.state.canary == Canary("4", weight=10, step=0, step_started_at=0.0,
                                       progress_at=0.0, held_since=100.0)
    assert [e[0] for e in step.events] == ["AnalysisInconclusive"]
    assert "fewer than minRequests" in step.events[0][1] and step.events[0][2] is True
    again = advance(SPEC, "4", step.state, Observed(now=105.0, canary_ready=True), WAIT)
    assert again.state == step.state and again.events == ()  # one Event, not one a pass
    passed = advance(SPEC, "4", again.state, Observed(now=110.0, canary_ready=True), PASS)
    assert passed.state.canary is not None
    assert passed.state.canary.weight == 50 and passed.state.canary.held_since is None
    assert passed.state.canary.failed_analyses == 0


def test_failures_up_to_the_limit_roll_back() -> None:
    state = RolloutState("3", Canary("4", weight=50, step=1, step_started_at=0.0))
    step = advance(SPEC, "4", state, Observed(now=61, canary_ready=True), FAIL)
    assert step.state.canary is not None
    assert step.state.canary.failed_analyses == 1
    assert step.state.canary.weight == 50
    assert step.state.canary.step_started_at == 61
    step = advance(SPEC, "4", step.state, Observed(now=122, canary_ready=True), FAIL)
    assert step.state.stable == "3" and step.state.canary is None
    assert step.state.last is not None and step.state.last.outcome == "RolledBack"
    assert "error rate 0.2" in step.state.last.reason
    assert step.phase == "RolledBack"
    assert step.events[0][0] == "RolledBack" and step.events[0][2] is True
    # The rolled-back version is not retried until the spec changes.
    assert advance(SPEC, "4", step.state, Observed(now=200, canary_ready=True)).state == step.state
    restarted = advance(SPEC, "5", step.state, Observed(now=200)).state
    assert restarted.canary == Canary(version="5", progress_at=200)


def test_revert_aborts_and_annotations_act() -> None:
    state = RolloutState("3", Canary("4", weight=50, step=1, step_started_at=0.0))
    reverted = advance(SPEC, "3", state, Observed(now=1, canary_ready=True))
    assert reverted.state.stable == "3" and reverted.state.canary is None
    assert reverted.state.last == LastRollout("4", "Aborted", "spec reverted to the stable version")
    aborted = advance(SPEC, "4", state, Observed(now=1, canary_ready=True, abort=True))
    assert aborted.state.stable == "3" and aborted.state.canary is None
    promoted = advance(SPEC, "4", state, Observed(now=1, canary_ready=True, promote_now=True))
    assert promoted.state.stable == "4" and promoted.state.canary is None


def test_paused_holds_the_weight_and_stops_the_clock() -> None:
    paused = SPEC.model_copy(update={"paused": True})
    state = RolloutState("3", Canary("4", weight=10, step=0, step_started_at=0.0,
                                     progress_at=0.0))
    step = advance(paused, "4", state, Observed(now=500, canary_ready=True), PASS)
    assert step.state.canary == Canary("4", weight=10, step=0, step_started_at=0.0,
                                       progress_at=0.0, paused_at=500)
    assert [e[0] for e in step.events] == ["RolloutPaused"]
    # Hours paused: no deadline runs, nothing moves.
    later = advance(paused, "4", step.state, Observed(now=50_000, canary_ready=True), WAIT)
    assert later.state == step.state
    # Resumed: the pause is added to the clock, so the deadline does not fire at once.
    resumed = advance(SPEC, "4", later.state, Observed(now=60_000, canary_ready=True), WAIT)
    assert resumed.state.canary is not None
    assert resumed.state.canary.paused_at is None
    assert resumed.state.canary.progress_at == 59_500
    assert "RolloutResumed" in [e[0] for e in resumed.events]


def test_canary_losing_its_pods_gets_no_traffic() -> None:
    state = RolloutState("3", Canary("4", weight=50, step=1, step_started_at=0.0))
    step = advance(SPEC, "4", state, Observed(now=10, canary_ready=False))
    assert step.state.canary is not None
    assert step.state.canary.weight == 0 and step.state.canary.failed_analyses == 1
    # Ready again: the same step resumes from its weight.
    again = advance(SPEC, "4", step.state, Observed(now=20, canary_ready=True))
    assert again.state.canary is not None and again.state.canary.weight == 50


def test_canary_growing_with_its_weight_holds_rather_than_rolls_back() -> None:
    """At a higher weight the canary asks for more pods; until they are ready it has some
    ready pods but not all: the weight holds, nothing is judged, nothing is counted."""
    limit1 = SPEC.model_copy(update={"analysis": AnalysisSpec(failure_limit=1)})
    state = RolloutState("3", Canary("4", weight=50, step=1, step_started_at=0.0,
                                     progress_at=0.0))
    growing = Observed(now=100, canary_ready=False, canary_available=True)
    for verdict in (None, PASS, FAIL, WAIT):
        step = advance(limit1, "4", state, growing, verdict)
        assert step.state == state and step.events == ()
    # Every pod ready: the due analysis is judged as usual.
    step = advance(limit1, "4", state, Observed(now=100, canary_ready=True), PASS)
    assert step.state.canary is not None and step.state.canary.weight == 100
    # No pod ready at all is lost readiness: weight 0 and a failure (here the last one).
    lost = advance(limit1, "4", state, Observed(now=100, canary_available=False))
    assert lost.state.canary is None and lost.phase == "RolledBack"
    # The first weight waits for every pod the canary asks for.
    fresh = RolloutState("3", Canary("4", progress_at=0.0))
    assert advance(limit1, "4", fresh, growing).state == fresh
    early = Observed(now=1, canary_available=True, promote_now=True)
    assert advance(limit1, "4", fresh, early).state == fresh


def test_deadline_rolls_back_a_canary_that_never_becomes_ready() -> None:
    spec = SPEC.model_copy(update={"progress_deadline_seconds": 300})
    state = run(RolloutState(stable="3"), "4", 0)
    for now in (60, 180, 299, 300):
        state = advance(spec, "4", state, Observed(now=now)).state
        assert state.canary is not None and state.canary.weight == 0
    step = advance(spec, "4", state, Observed(now=301))
    assert step.state.canary is None and step.state.stable == "3"
    assert step.phase == "RolledBack"
    assert step.state.last is not None
    assert step.state.last.reason.startswith("ProgressDeadlineExceeded")
    assert step.events[0][0] == "ProgressDeadlineExceeded" and step.events[0][2] is True


def test_deadline_rolls_back_a_step_that_stays_inconclusive() -> None:
    """The deadline counts beyond the schedule: warm-up plus interval, then the deadline."""
    spec = SPEC.model_copy(update={"progress_deadline_seconds": 120, "warmup": "10s"})
    state = RolloutState("3", Canary("4", weight=10, step=0, step_started_at=0.0,
                                     progress_at=0.0))
    assert not analysis_due(state, spec, 69.0) and analysis_due(state, spec, 70.0)
    for now in (70.0, 120.0, 190.0):  # 10 s warm-up + 60 s interval + 120 s deadline
        state = advance(spec, "4", state, Observed(now=now, canary_ready=True), WAIT).state
        assert state.canary is not None and state.canary.weight == 10
    step = advance(spec, "4", state, Observed(now=190.5, canary_ready=True), WAIT)
    assert step.state.canary is None and step.state.last is not None
    assert "ProgressDeadlineExceeded" in step.state.last.reason
    assert "inconclusive" in step.state.last.reason
    assert step.state.canary is None and step.state.stable == "3"


def test_failure_limit_counts_failures_in_total_over_the_rollout() -> None:
    """Documented: failureLimit counts every failed analysis of one rollout, not only
    consecutive ones; a pass in between does not reset it; inconclusive never counts."""
    state = RolloutState("3", Canary("4", weight=10, step=0, step_started_at=0.0,
                                     progress_at=0.0))
    state = advance(SPEC, "4", state, Observed(now=61, canary_ready=True), FAIL).state
    assert state.canary is not None and state.canary.failed_analyses == 1
    state = advance(SPEC, "4", state, Observed(now=122, canary_ready=True), WAIT).state
    state = advance(SPEC, "4", state, Observed(now=123, canary_ready=True), PASS).state
    assert state.canary is not None and state.canary.weight == 50
    assert state.canary.failed_analyses == 1
    step = advance(SPEC, "4", state, Observed(now=184, canary_ready=True), FAIL)
    assert step.state.canary is None and step.phase == "RolledBack"
    assert step.state.last is not None and "failed 2 times" in step.state.last.reason


# -- properties ---------------------------------------------------------------------------

events = st.lists(
    st.tuples(
        st.sampled_from(["4", "4", "4", "4", "5", "3"]),  # target version, mostly the canary
        st.sampled_from(["ready", "ready", "growing", "none"]),  # canary pods
        st.sampled_from([None, PASS, PASS, FAIL, WAIT]),
        st.integers(min_value=0, max_value=120),  # seconds since the previous tick
        st.sampled_from(["", "", "", "", "", "promote", "abort"]),
    ),
    min_size=1,
    max_size=60,
)
steps_strategy = st.lists(st.integers(1, 99), min_size=0, max_size=5).map(
    lambda xs: [*sorted(set(xs)), 100]
)


@settings(max_examples=300, deadline=None)
@given(events=events, steps=steps_strategy, limit=st.integers(1, 3))
def test_safety_properties(
    events: list[tuple[str, str, Verdict | None, int, str]], steps: list[int], limit: int
) -> None:
    spec = RolloutSpec(steps=steps, interval="30s", analysis=AnalysisSpec(failure_limit=limit))
    state = RolloutState(stable="3")
    now = 0.0
    for target, pods, verdict, dt, note in events:
        now += dt
        before = state
        step = advance(
            spec, target, state,
            Observed(now=now, canary_ready=pods == "ready",
                     canary_available=pods in ("ready", "growing"),
                     promote_now=note == "promote", abort=note == "abort"),
            verdict,
        )
        state = step.state
        if (
            verdict is not None and verdict.outcome is Outcome.INCONCLUSIVE
            and before.canary is not None and state.canary is not None
            and before.canary.version == state.canary.version and pods == "ready"
        ):
            assert state.canary.failed_analyses == before.canary.failed_analyses
        # Exactly one stable version always serves.
        assert state.stable is not None
        canary = state.canary
        if canary is not None:
            assert 0 <= canary.weight <= 100
            # Never any weight to a canary without ready pods; never more weight to one
            # whose pods are not all ready.
            prev = before.canary
            if pods == "none":
                assert canary.weight == 0
            if pods != "ready":
                assert canary.weight == 0 or (
                    prev is not None and prev.version == canary.version
                    and canary.weight == prev.weight
                )
            assert canary.version != state.stable
            if prev is not None and prev.version == canary.version and canary.weight != prev.weight:
                # Weights rise one step at a time, or drop to 0.
                if canary.weight > prev.weight:
                    assert canary.weight == spec.steps[canary.step]
                    assert prev.weight == 0 or canary.step == prev.step + 1
                else:
                    assert canary.weight == 0
        # Promotion only after the last step passed, or on the annotation.
        if before.canary is not None and state.stable == before.canary.version:
            assert pods != "none"
            assert note == "promote" or (
                pods == "ready"
                and before.canary.weight == 100 and verdict is not None
                and verdict.outcome is Outcome.PASS
            )
    # Finishing: with a ready canary and passing analyses, every path ends on one version.
    for _ in range(len(steps) + 3):
        now += 31
        state = advance(spec, "4", state, Observed(now=now, canary_ready=True), PASS).state
    assert state.canary is None
    assert state.stable in ("3", "4", "5")


def test_smoke_test_then_shadow_phase_before_any_weight() -> None:
    """Golden set first (failing it rolls back at once), then the shadow phase, judged
    like a step, and only then the first weight."""
    spec = RolloutSpec.model_validate({
        "steps": [50, 100], "interval": "60s",
        "shadow": {"fraction": 0.5},
        "smokeTest": {"configMap": {"name": "golden", "key": "smoke.json"}},
        "analysis": {"failureLimit": 2},
    })
    state = advance(spec, "4", RolloutState(stable="3"), Observed(now=0)).state
    # Ready, smoke test not run yet: nothing moves.
    held = advance(spec, "4", state, Observed(now=1, canary_ready=True)).state
    assert held.canary is not None and held.canary.weight == 0 and not held.canary.shadow
    # Smoke test fails: rolled back at once, no request ever reached the canary.
    bad = advance(spec, "4", held, Observed(now=2, canary_ready=True,
                                            smoke=Verdict(Outcome.FAIL, "row 3: 1 != 2")))
    assert bad.state.canary is None and bad.state.last is not None
    assert bad.state.last.outcome == "RolledBack" and "row 3" in bad.state.last.reason
    assert bad.events[0][0] == "SmokeTestFailed"
    # Smoke test passes: the shadow phase starts, weight still 0.
    good = advance(spec, "4", held, Observed(now=2, canary_ready=True,
                                             smoke=Verdict(Outcome.PASS, "20/20 rows")))
    canary = good.state.canary
    assert canary is not None and canary.smoked and canary.shadow and canary.weight == 0
    assert [e[0] for e in good.events] == ["SmokeTestPassed", "ShadowStarted"]
    assert analysis_due(good.state, spec, 62) and not analysis_due(good.state, spec, 61)
    # A failed shadow analysis counts; a passing one moves to the first weight.
    failed = advance(spec, "4", good.state, Observed(now=62, canary_ready=True),
                     Verdict(Outcome.FAIL, "agreement 0.8 < 0.98")).state
    assert failed.canary is not None and failed.canary.shadow
    assert failed.canary.failed_analyses == 1 and failed.canary.weight == 0
    passed = advance(spec, "4", failed, Observed(now=123, canary_ready=True),
                     Verdict(Outcome.PASS, "agreement 1.0"))
    assert passed.state.canary is not None
    assert not passed.state.canary.shadow and passed.state.canary.shadowed
    assert passed.state.canary.weight == 50 and passed.events[0][0] == "ShadowPassed"
    # The smoke test and the shadow phase are not run again at later steps.
    at100 = advance(spec, "4", passed.state, Observed(now=184, canary_ready=True),
                    Verdict(Outcome.PASS, "ok")).state
    assert at100.canary is not None and at100.canary.weight == 100


def test_a_canary_losing_its_pods_in_the_shadow_counts_a_failure() -> None:
    spec = RolloutSpec.model_validate({"shadow": {}, "analysis": {"failureLimit": 1}})
    state = RolloutState("3", Canary("4", shadow=True, step_started_at=0.0, progress_at=0.0))
    step = advance(spec, "4", state, Observed(now=5, canary_available=False))
    assert step.state.canary is None and step.phase == "RolledBack"

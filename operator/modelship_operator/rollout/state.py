"""The canary rollout as a pure state machine.

`advance()` takes everything the decision depends on (the rollout spec, the version
the spec asks for, the rollout state kept in status, the readiness of both sides, the
latest analysis verdict, the annotations a person may set, and the time) and returns
the next state plus the Events that explain it. It does no I/O, so every path is
tested directly and property-tested with hypothesis; all state lives in status, so an
operator restart resumes where it was.

Safety rules it enforces:
- no weight goes to a canary whose pods are not ready (weight 0 while unready, and a
  canary that loses its pods mid-rollout drops to 0 and counts a failed analysis);
- a canary that has ready pods but not yet all it asks for (it grew with its weight, or
  a pod restarts) holds its weight: no analysis is judged and no step taken until the
  rest are ready (counting that as lost readiness would roll back every canary whose
  size follows its weight, at the first step that adds a pod);
- weights only rise step by step, or drop to 0 (rollback, lost readiness);
- promotion only after the last step (weight 100) passed its analysis, or on the
  explicit `modelship.io/promote: now` annotation;
- an inconclusive analysis (no data, too few samples, a failed query) holds the step,
  never promotes and never counts as a failure; its window keeps growing;
- `failureLimit` counts failed analyses in total over one rollout;
- past `progressDeadlineSeconds` without progress beyond the schedule (pods not ready,
  a step inconclusive after its warm-up and interval) the rollout rolls back;
- `paused` stops the rollout's clock: the deadline does not run while paused;
- every path ends with exactly one version serving 100%.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from modelship_operator.api import RolloutSpec
from modelship_operator.rollout.gates import Outcome, Verdict

__all__ = [
    "ABORT_ANNOTATION", "DEADLINE_REASON", "PROMOTE_ANNOTATION", "Canary", "LastRollout",
    "Observed", "Outcome", "RolloutState", "Step", "Verdict", "advance", "analysis_due",
    "deadline_at", "smoke_due",
]

PROMOTE_ANNOTATION = "modelship.io/promote"
ABORT_ANNOTATION = "modelship.io/abort"
DEADLINE_REASON = "ProgressDeadlineExceeded"


@dataclass(frozen=True)
class Canary:
    version: str
    weight: int = 0
    step: int = 0  # index into spec.rollout.steps of the current (or next) weight
    failed_analyses: int = 0
    step_started_at: float | None = None  # epoch seconds when the current weight was set
    progress_at: float | None = None  # last progress; the deadline counts from here
    paused_at: float | None = None  # when spec.rollout.paused stopped the clock
    held_since: float | None = None  # since when the step's analysis is inconclusive
    smoked: bool = False  # the golden-set smoke test passed (or none is asked for)
    shadow: bool = False  # in the shadow phase: mirrored requests only, weight 0
    shadowed: bool = False  # the shadow phase passed (or none is asked for)


@dataclass(frozen=True)
class LastRollout:
    version: str
    outcome: str  # Promoted | RolledBack | Aborted
    reason: str = ""


@dataclass(frozen=True)
class RolloutState:
    stable: str | None
    canary: Canary | None = None
    last: LastRollout | None = None


@dataclass(frozen=True)
class Observed:
    """What the caller saw this pass."""

    now: float
    canary_ready: bool = False
    """Every pod the canary's Deployment asks for is ready (and at least one)."""
    canary_available: bool | None = None
    """At least one canary pod is ready; None means the same as `canary_ready`."""
    promote_now: bool = False
    abort: bool = False
    smoke: Verdict | None = None
    """The golden-set smoke test's result, when the caller ran it this pass."""

    @property
    def canary_serving(self) -> bool:
        return self.canary_ready if self.canary_available is None else (
            self.canary_available or self.canary_ready
        )


@dataclass(frozen=True)
class Step:
    state: RolloutState
    events: tuple[tuple[str, str, bool], ...] = ()  # (reason, message, warning)

    @property
    def phase(self) -> str:
        if self.state.canary is not None:
            return "Progressing"
        if self.state.last is not None and self.state.last.outcome == "RolledBack":
            return "RolledBack"
        return "Ready"


def smoke_due(state: RolloutState, spec: RolloutSpec) -> bool:
    """True while the canary waits for its smoke test: before any mirrored or real traffic."""
    canary = state.canary
    return (
        spec.smoke_test is not None and canary is not None and not canary.smoked
        and canary.weight == 0 and not canary.shadow
    )


def analysis_due(state: RolloutState, spec: RolloutSpec, now: float) -> bool:
    """True when the current step (or the shadow phase) has run its warm-up and interval
    and must be judged."""
    canary = state.canary
    if canary is None or (canary.weight == 0 and not canary.shadow) or (
        canary.step_started_at is None
    ):
        return False
    return now - canary.step_started_at >= spec.warmup_seconds + spec.interval_seconds


def deadline_at(canary: Canary, spec: RolloutSpec) -> float | None:
    """When the rollout rolls back unless it progresses; None while paused or unknown.

    The deadline counts from the last progress plus what the schedule asks before the
    next one: nothing while pods become ready, the warm-up and interval of a step.
    """
    if canary.paused_at is not None or canary.progress_at is None:
        return None
    timed = canary.weight > 0 or canary.shadow
    scheduled = spec.warmup_seconds + spec.interval_seconds if timed else 0.0
    return canary.progress_at + scheduled + spec.progress_deadline_seconds


def _rollback(
    state: RolloutState, reason: str, outcome: str = "RolledBack", event: str | None = None
) -> Step:
    assert state.canary is not None
    version = state.canary.version
    event = event or ("RolledBack" if outcome == "RolledBack" else "Aborted")
    return Step(
        RolloutState(state.stable, None, LastRollout(version, outcome, reason)),
        ((event, f"version {version}: {reason}; 100% back to version {state.stable}", True),),
    )


def _promote(state: RolloutState, reason: str) -> Step:
    assert state.canary is not None
    version = state.canary.version
    return Step(
        RolloutState(version, None, LastRollout(version, "Promoted", reason)),
        (("Promoted", f"version {version} promoted ({reason}); was {state.stable}", False),),
    )


def _where(canary: Canary) -> str:
    return "in the shadow" if canary.shadow else f"at {canary.weight}%"


def _new_canary(target: str, now: float) -> Canary:
    return Canary(version=target, progress_at=now)


def _hold(state: RolloutState, spec: RolloutSpec, now: float, why: str) -> Step:
    """Nothing to do this pass: roll back if the deadline has passed, else keep the state."""
    canary = state.canary
    assert canary is not None
    due = deadline_at(canary, spec)
    if due is not None and now > due:
        return _rollback(
            state,
            f"{DEADLINE_REASON}: no progress within progressDeadlineSeconds "
            f"{spec.progress_deadline_seconds} ({why})",
            event=DEADLINE_REASON,
        )
    return Step(state)


def advance(
    spec: RolloutSpec,
    target: str,
    state: RolloutState,
    observed: Observed,
    verdict: Verdict | None = None,
) -> Step:
    """The next rollout state. `verdict` is the analysis of the current step, when due."""
    canary = state.canary
    now = observed.now

    # Nothing serves yet: the first version serves directly, there is nothing to compare.
    if state.stable is None:
        first = RolloutState(target, None, state.last)
        return Step(first, (("Deployed", f"version {target}", False),))

    if canary is None:
        if target == state.stable:
            return Step(state)
        if state.last is not None and state.last.version == target and state.last.outcome in (
            "RolledBack",
            "Aborted",
        ):
            return Step(state)  # a version that was rolled back waits for a new spec
        started = RolloutState(state.stable, _new_canary(target, now), state.last)
        return Step(
            started,
            (("CanaryStarted", f"canary of version {target} against {state.stable}", False),),
        )

    # A rollout runs.
    if target == state.stable:
        return _rollback(state, "spec reverted to the stable version", "Aborted")
    if target != canary.version:
        restarted = RolloutState(state.stable, _new_canary(target, now), state.last)
        return Step(
            restarted,
            (
                (
                    "CanaryReplaced",
                    f"version {canary.version} replaced by {target} before promotion",
                    False,
                ),
            ),
        )
    if observed.abort:
        return _rollback(state, f"{ABORT_ANNOTATION} annotation")

    # Bookkeeping of the clock: a status written before it had one, a pause that ended.
    events: list[tuple[str, str, bool]] = []
    if canary.progress_at is None:
        canary = replace(canary, progress_at=canary.step_started_at or now)
    if canary.paused_at is not None and not spec.paused:
        pause = max(0.0, now - canary.paused_at)
        assert canary.progress_at is not None
        canary = replace(
            canary,
            paused_at=None,
            progress_at=canary.progress_at + pause,
            held_since=None if canary.held_since is None else canary.held_since + pause,
        )
        events.append(("RolloutResumed", f"version {canary.version}: rollout resumed", False))
    state = replace(state, canary=canary)

    def done(step: Step) -> Step:
        return Step(step.state, (*events, *step.events)) if events else step

    if not observed.canary_serving:
        if canary.weight > 0 or canary.shadow:
            failed = canary.failed_analyses + 1
            lost = replace(
                canary, weight=0, failed_analyses=failed, step_started_at=None,
                progress_at=now, held_since=None, shadow=False,
            )
            if failed >= spec.analysis.failure_limit:
                return done(_rollback(state, "canary pods stopped being ready"))
            return done(Step(
                replace(state, canary=lost),
                (("CanaryNotReady", f"version {canary.version}: pods not ready, weight 0", True),),
            ))
        return done(_hold(state, spec, now, "canary pods not ready"))
    if canary.weight == 0 and not observed.canary_ready:
        return done(_hold(state, spec, now, "canary pods not all ready"))
    if observed.promote_now:
        return done(_promote(state, f"{PROMOTE_ANNOTATION} annotation"))
    if spec.paused:
        if canary.paused_at is None:
            paused = replace(canary, paused_at=now)
            return done(Step(
                replace(state, canary=paused),
                (("RolloutPaused", f"version {canary.version}: paused at {canary.weight}%",
                  False),),
            ))
        return done(Step(state))
    if not observed.canary_ready:
        # Some pods serve, the rest are starting (the canary grew with its weight): hold
        # the weight and judge nothing until they are all ready.
        return done(_hold(state, spec, now, "canary pods not all ready"))
    if canary.weight == 0 and not canary.shadow:
        if spec.smoke_test is not None and not canary.smoked:
            smoke = observed.smoke
            if smoke is None or smoke.outcome is Outcome.INCONCLUSIVE:
                why = smoke.message if smoke is not None else "smoke test not run yet"
                return done(_hold(state, spec, now, f"smoke test: {why}"))
            if smoke.outcome is Outcome.FAIL:
                return done(_rollback(state, f"smoke test failed: {smoke.message}",
                                      event="SmokeTestFailed"))
            canary = replace(canary, smoked=True, progress_at=now)
            state = replace(state, canary=canary)
            events.append(("SmokeTestPassed", f"version {canary.version}: {smoke.message}",
                           False))
        if spec.shadow is not None and not canary.shadowed:
            shadowing = replace(canary, shadow=True, step_started_at=now, progress_at=now,
                                held_since=None)
            return done(Step(
                replace(state, canary=shadowing),
                (("ShadowStarted",
                  f"version {canary.version}: answers {spec.shadow.fraction:.0%} of the "
                  f"stable's requests in the shadow (via {spec.shadow.via}); no client "
                  "sees its answers", False),),
            ))
        weight = spec.steps[canary.step]
        moved = replace(canary, weight=weight, step_started_at=now, progress_at=now,
                        held_since=None)
        return done(Step(
            replace(state, canary=moved),
            (("CanaryWeight", f"version {canary.version}: weight {weight}%", False),),
        ))
    if not analysis_due(state, spec, now) or verdict is None:
        return done(_hold(state, spec, now, "step not yet analysed"))
    if verdict.outcome is Outcome.INCONCLUSIVE:
        held = _hold(state, spec, now, f"analysis inconclusive: {verdict.message}")
        if held.state.canary is None or canary.held_since is not None:
            return done(held)
        return done(Step(
            replace(state, canary=replace(canary, held_since=now)),
            (
                (
                    "AnalysisInconclusive",
                    f"version {canary.version} {_where(canary)}: {verdict.message}; "
                    "the step holds",
                    True,
                ),
            ),
        ))
    if verdict.outcome is Outcome.FAIL:
        failed = canary.failed_analyses + 1
        if failed >= spec.analysis.failure_limit:
            return done(_rollback(state, f"analysis failed {failed} times: {verdict.message}"))
        again = replace(canary, failed_analyses=failed, step_started_at=now, progress_at=now,
                        held_since=None)
        return done(Step(
            replace(state, canary=again),
            (
                (
                    "AnalysisFailed",
                    f"version {canary.version} {_where(canary)}: {verdict.message} "
                    f"({failed}/{spec.analysis.failure_limit})",
                    True,
                ),
            ),
        ))
    # Passed.
    if canary.shadow:
        weight = spec.steps[canary.step]
        moved = replace(canary, shadow=False, shadowed=True, weight=weight,
                        step_started_at=now, progress_at=now, held_since=None)
        return done(Step(
            replace(state, canary=moved),
            (("ShadowPassed",
              f"version {canary.version}: shadow analysis passed ({verdict.message}); "
              f"weight {weight}%", False),),
        ))
    if canary.step + 1 >= len(spec.steps):
        return done(_promote(state, f"every step passed; last: {verdict.message}"))
    step = canary.step + 1
    weight = spec.steps[step]
    moved = replace(canary, step=step, weight=weight, step_started_at=now, progress_at=now,
                    held_since=None)
    return done(Step(
        replace(state, canary=moved),
        (
            (
                "CanaryWeight",
                f"version {canary.version}: analysis passed ({verdict.message}); weight {weight}%",
                False,
            ),
        ),
    ))

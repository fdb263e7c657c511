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
- every path ends with exactly one version serving 100%.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from modelship_operator.api import RolloutSpec

PROMOTE_ANNOTATION = "modelship.io/promote"
ABORT_ANNOTATION = "modelship.io/abort"


class Outcome(enum.Enum):
    PASS = "Pass"
    FAIL = "Fail"
    WAIT = "Wait"  # too few requests to judge: the step waits


@dataclass(frozen=True)
class Verdict:
    """What an analysis concluded, with the figures that decided it."""

    outcome: Outcome
    message: str
    figures: dict[str, float | int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Canary:
    version: str
    weight: int = 0
    step: int = 0  # index into spec.rollout.steps of the current (or next) weight
    failed_analyses: int = 0
    step_started_at: float | None = None  # epoch seconds when the current weight was set


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


def analysis_due(state: RolloutState, spec: RolloutSpec, now: float) -> bool:
    """True when the current step has run its interval and must be judged."""
    canary = state.canary
    if canary is None or canary.weight == 0 or canary.step_started_at is None:
        return False
    return now - canary.step_started_at >= spec.interval_seconds


def _rollback(state: RolloutState, reason: str, outcome: str = "RolledBack") -> Step:
    assert state.canary is not None
    version = state.canary.version
    event = "RolledBack" if outcome == "RolledBack" else "Aborted"
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
        started = RolloutState(state.stable, Canary(version=target), state.last)
        return Step(
            started,
            (("CanaryStarted", f"canary of version {target} against {state.stable}", False),),
        )

    # A rollout runs.
    if target == state.stable:
        return _rollback(state, "spec reverted to the stable version", "Aborted")
    if target != canary.version:
        restarted = RolloutState(state.stable, Canary(version=target), state.last)
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
    if not observed.canary_serving:
        if canary.weight > 0:
            failed = canary.failed_analyses + 1
            lost = replace(canary, weight=0, failed_analyses=failed, step_started_at=None)
            if failed >= spec.analysis.failure_limit:
                return _rollback(state, "canary pods stopped being ready")
            return Step(
                replace(state, canary=lost),
                (("CanaryNotReady", f"version {canary.version}: pods not ready, weight 0", True),),
            )
        return Step(state)  # wait for the canary's pods; no traffic until then
    if canary.weight == 0 and not observed.canary_ready:
        return Step(state)  # the first weight waits for every pod the canary asks for
    if observed.promote_now:
        return _promote(state, f"{PROMOTE_ANNOTATION} annotation")
    if spec.paused:
        return Step(state)
    if not observed.canary_ready:
        # Some pods serve, the rest are starting (the canary grew with its weight): hold
        # the weight and judge nothing until they are all ready.
        return Step(state)
    if canary.weight == 0:
        weight = spec.steps[canary.step]
        moved = replace(canary, weight=weight, step_started_at=now)
        return Step(
            replace(state, canary=moved),
            (("CanaryWeight", f"version {canary.version}: weight {weight}%", False),),
        )
    if not analysis_due(state, spec, now) or verdict is None:
        return Step(state)
    if verdict.outcome is Outcome.WAIT:
        return Step(state)
    if verdict.outcome is Outcome.FAIL:
        failed = canary.failed_analyses + 1
        if failed >= spec.analysis.failure_limit:
            return _rollback(state, f"analysis failed {failed} times: {verdict.message}")
        again = replace(canary, failed_analyses=failed, step_started_at=now)
        return Step(
            replace(state, canary=again),
            (
                (
                    "AnalysisFailed",
                    f"version {canary.version} at {canary.weight}%: {verdict.message} "
                    f"({failed}/{spec.analysis.failure_limit})",
                    True,
                ),
            ),
        )
    # Passed.
    if canary.step + 1 >= len(spec.steps):
        return _promote(state, f"every step passed; last: {verdict.message}")
    step = canary.step + 1
    weight = spec.steps[step]
    moved = replace(canary, step=step, weight=weight, step_started_at=now)
    return Step(
        replace(state, canary=moved),
        (
            (
                "CanaryWeight",
                f"version {canary.version}: analysis passed ({verdict.message}); weight {weight}%",
                False,
            ),
        ),
    )

"""Plan one pass of a ModelDeployment from what was observed (pure: no I/O, no clock).

A pass is observe → plan → act (reconcile.py does the observing and the acting):

1. observe: the ModelDeployment and its children from the watch-fed caches, the registry's
   answer, and, when the rollout asks for them, the analysis, the smoke test and the
   confirm-promotion webhooks (:func:`rollout_inputs` says what the rollout needs);
2. :func:`plan`: the rollout's next state (rollout/state.py), the Deployments that
   retire, and the desired children (render.py), or the reason the spec cannot be honoured;
3. act: apply what differs, delete what is no longer desired, open a step's window, tell
   MLflow how a rollout ended;
4. :func:`report`: the status and the Events that follow from the plan and from what
   acting met (children held by another owner, the write-back's outcome); the writer
   posts the Events and writes the status with one patch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from modelship_operator import api, naming, retire, status
from modelship_operator.render import (
    RenderError,
    Retiring,
    RolloutState,
    render,
)
from modelship_operator.rollout import record
from modelship_operator.rollout.gates import Verdict
from modelship_operator.rollout.state import (
    ABORT_ANNOTATION,
    DEADLINE_REASON,
    PROMOTE_ANNOTATION,
    Observed,
    Step,
    advance,
)
from modelship_operator.rollout.state import RolloutState as Machine
from modelship_operator.settings import OperatorSettings

Key = tuple[str, str, str]
Event = tuple[str, str, bool]
"""(reason, message, warning) of one Event to post."""


@dataclass(frozen=True)
class Observation:
    """Everything a pass knows, read before anything is decided."""

    md: api.ModelDeployment
    current: Mapping[str, Any]
    """The status as read."""
    live: Mapping[Key, dict[str, Any]]
    """The children, from the caches (with the loop's own recent writes)."""
    target: str
    """The model version the spec asks for, as the registry resolved it."""
    now: float
    resolved: str | None = None
    """What a followed alias pointed at (None for a pinned version)."""
    conditions: tuple[dict[str, Any], ...] = ()
    """Conditions the registry's answer sets (ModelResolved, RegistryAvailable)."""
    verdict: Verdict | None = None
    """This step's analysis, when one was due."""
    analysis: Mapping[str, Any] | None = None
    """That analysis as status.canary.lastAnalysis records it."""
    counters: Mapping[str, Any] | None = None
    smoke: Verdict | None = None
    """The golden set's verdict, when it was due."""


@dataclass(frozen=True)
class Plan:
    before: Machine
    step: Step
    kept: list[retire.Entry]
    """Versions traffic left whose Deployments stay a while."""
    desired: list[dict[str, Any]] = field(default_factory=list)
    stall: tuple[str, str] | None = None
    """(reason, message) when the spec cannot be honoured: nothing is applied."""


@dataclass(frozen=True)
class Acted:
    """What acting on a plan met, for the report."""

    changed: str | None = None
    """What applying changed (``created Deployment/iris-v2; ...``), None for nothing."""
    conflicts: list[str] = field(default_factory=list)
    write_back: str | None = None
    counters: Mapping[str, Any] | None = None
    baseline: Mapping[str, Any] | None = None


# -- the rollout's inputs ------------------------------------------------------------------


def rollout_inputs(
    md: api.ModelDeployment, current: Mapping[str, Any], live: Mapping[Key, dict[str, Any]],
    now: float,
) -> tuple[Machine, Observed]:
    """The rollout's state as status keeps it, and what the state machine observes."""
    before = record.read_state(current)
    canary_version = before.canary.version if before.canary else None
    canary_dep = deployment(live, md.metadata.name, canary_version)
    annotations = md.metadata.annotations
    return before, Observed(
        now=now,
        canary_ready=ready(canary_dep),
        canary_available=available(canary_dep),
        promote_now=annotations.get(PROMOTE_ANNOTATION, "").lower() == "now",
        abort=ABORT_ANNOTATION in annotations
        and annotations[ABORT_ANNOTATION].lower() not in ("", "false"),
    )


def plan(seen: Observation, settings: OperatorSettings) -> Plan:
    """The rollout's next step, what retires, and the children to have."""
    md, live, name = seen.md, seen.live, seen.md.metadata.name
    before, observed = rollout_inputs(md, seen.current, live, seen.now)
    if seen.smoke is not None:
        observed = replace(observed, smoke=seen.smoke)
    step = advance(md.spec.rollout, seen.target, before, observed, seen.verdict)
    after = step.state
    assert after.stable is not None

    def serving(state: Machine) -> set[str]:
        return {v for v in (state.stable, state.canary.version if state.canary else None) if v}

    kept = retire.plan(
        retire.read(seen.current.get("retiring")), serving(before), serving(after),
        lambda version: deployment(live, name, version) is not None,
        seen.now, settings.retire_after_seconds,
    )
    state = RolloutState(
        stable_version=after.stable,
        canary_version=after.canary.version if after.canary else None,
        canary_weight=after.canary.weight if after.canary else 0,
        mirror=bool(after.canary and after.canary.shadow and observed.canary_ready),
        header_routing=bool(
            after.canary and observed.canary_ready
            and (after.canary.smoked or md.spec.rollout.smoke_test is None)
            and (before.canary is not None and before.canary.version == after.canary.version)
        ),
        retiring=tuple(
            Retiring(e.version, replicas(deployment(live, name, e.version))) for e in kept
        ),
        former_canary=after.last.version if kept and after.canary is None and after.last
        else None,
    )
    try:
        desired = render(md, state, settings)
    except RenderError as exc:
        return Plan(before, step, kept, stall=("InvalidSpec", f"{exc.field}: {exc}"))
    return Plan(before, step, kept, desired)


# -- the report ----------------------------------------------------------------------------


def report(seen: Observation, planned: Plan, acted: Acted) -> tuple[dict[str, Any], list[Event]]:
    """The status the object should have after this pass, and the Events it causes.

    Only the fields that differ from `seen.current` are written (status.status_patch).
    """
    md, current, step = seen.md, seen.current, planned.step
    state = step.state
    assert state.stable is not None
    name = md.metadata.name
    extra = [
        *seen.conditions,
        *status.children_owned(acted.conflicts, current.get("conditions"),
                               md.metadata.generation),
    ]
    stable_dep = deployment(seen.live, name, state.stable) or {}
    desired = serving_status(
        md, current, step,
        int((stable_dep.get("status") or {}).get("replicas") or 0),
        int((stable_dep.get("status") or {}).get("readyReplicas") or 0),
        extra, analysis=seen.analysis,
    )
    if md.spec.model.alias is not None:
        # What the alias points at, as last seen; kept through a registry outage.
        known = seen.resolved or (current.get("model") or {}).get("resolvedVersion")
        desired["model"] = {"resolvedVersion": known or resolved_version(step)}
    canary_dep = (deployment(seen.live, name, state.canary.version)
                  if state.canary else None) or {}
    desired["canary"] = record.canary_status(
        state,
        current.get("canary"),
        int((canary_dep.get("status") or {}).get("replicas") or 0),
        int((canary_dep.get("status") or {}).get("readyReplicas") or 0),
        seen.analysis or None,
        step_counters=acted.counters,
        baseline=acted.baseline,
        now=seen.now,
    )
    last = record.last_rollout_status(state)
    if last is not None and acted.write_back is not None:
        last["writeBack"] = acted.write_back
    desired["lastRollout"] = last
    desired["retiring"] = retire.to_status(planned.kept)

    found: list[Event] = list(step.events)
    if acted.changed:
        found.append(("Reconciled", acted.changed, False))
    for cond in extra:
        before: Mapping[str, Any] = next(
            (c for c in current.get("conditions") or [] if c.get("type") == cond["type"]), {}
        )
        if before.get("status") != cond["status"] and cond["status"] == "False":
            found.append((cond["reason"], cond["message"], True))
    if desired["phase"] == "Ready" and current.get("phase") != "Ready":
        found.append(("Ready", f"serving version {state.stable}", False))
    return typed(desired), found


def typed(desired: Mapping[str, Any]) -> dict[str, Any]:
    """A status as the typed model (api.ModelDeploymentStatus) has it: checked against the
    model the CRD's schema is generated from, so nothing is written that the API server
    would prune (and a pass would then write again). A top-level None stays: it removes
    that field."""
    out = api.ModelDeploymentStatus.model_validate(dict(desired)).dump()
    out.update({key: None for key, value in desired.items() if value is None})
    return out


def serving_status(
    md: api.ModelDeployment,
    current: Mapping[str, Any],
    step: Step,
    replicas: int,
    ready_replicas: int,
    extra_conditions: list[dict[str, Any]] | None = None,
    *,
    analysis: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Phase, conditions, URL and stable version for a serving ModelDeployment."""
    generation = md.metadata.generation
    version = step.state.stable
    assert version is not None
    phase, conditions = status.serving(desired_replicas(md), ready_replicas, version, generation)
    if step.phase == "Progressing" and step.state.canary is not None:
        canary = step.state.canary
        message = (
            f"canary of version {canary.version} at {canary.weight}% "
            f"(step {canary.step + 1}/{len(md.spec.rollout.steps)}); "
            f"version {version} serves the rest"
        )
        reason = "RolloutInProgress"
        if canary.paused_at is not None:
            reason, message = "RolloutPaused", f"{message}; paused by spec.rollout.paused"
        elif canary.held_since is not None:
            last = analysis or (current.get("canary") or {}).get("lastAnalysis") or {}
            why = "; ".join(
                str(g.get("message")) for g in last.get("gates") or []
                if g.get("verdict") == "Inconclusive"
            ) or "analysis inconclusive"
            reason = "AnalysisInconclusive"
            message = f"{message}; the step holds: {why}"[:1000]
        phase = "Progressing"
        conditions = status.kstatus(False, True, False, reason, message, generation)
    elif step.phase == "RolledBack" and step.state.last is not None:
        last_rollout = step.state.last
        message = (
            f"version {last_rollout.version} was rolled back ({last_rollout.reason}); "
            f"version {version} serves all traffic; change spec.model to try again"
        )
        phase = "RolledBack"
        reason = (DEADLINE_REASON if last_rollout.reason.startswith(DEADLINE_REASON)
                  else "RolledBack")
        conditions = status.kstatus(False, False, True, reason, message, generation)
    held = status.held_back([*(extra_conditions or []), *(current.get("conditions") or [])])
    if held is not None:
        phase = "Failed"
        conditions = status.kstatus(
            False, False, True, held["reason"], held["message"], generation
        )
    desired: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "url": url_of(md),
        "stable": {"version": version, "replicas": replicas, "readyReplicas": ready_replicas},
        "conditions": status.merge_conditions(
            current.get("conditions"), [*conditions, *(extra_conditions or [])],
            status.now_iso(),
        ),
    }
    if md.spec.model.alias is not None:
        desired["model"] = {"resolvedVersion": resolved_version(step)}
    return desired


def stalled(
    current: Mapping[str, Any], reason: str, message: str, generation: int | None,
    extra: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], list[Event]]:
    """A spec the operator cannot honour: Failed, Stalled=True, and one warning Event."""
    desired: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": "Failed",
        "conditions": status.merge_conditions(
            current.get("conditions"),
            [*status.stalled(message, reason, generation), *(extra or [])],
            status.now_iso(),
        ),
    }
    return typed(desired), [(reason, message, True)]


def unresolved(
    current: Mapping[str, Any], reason: str, message: str, generation: int | None,
    conditions: list[dict[str, Any]],
) -> tuple[dict[str, Any], list[Event]]:
    """Nothing serves and the registry cannot say what should: Pending, one warning."""
    desired = {
        "phase": "Pending",
        "conditions": status.merge_conditions(
            current.get("conditions"),
            [*status.kstatus(False, True, False, reason, message, generation), *conditions],
            status.now_iso(),
        ),
    }
    return typed(desired), [(reason, message, True)]


# -- reading the children --------------------------------------------------------------------


def url_of(md: api.ModelDeployment) -> str:
    spec = md.spec
    if spec.ingress is not None:
        scheme = "https" if spec.ingress.tls_secret else "http"
        return f"{scheme}://{spec.ingress.host}{spec.ingress.path}"
    if spec.gateway is not None and spec.gateway.hostnames:
        return f"http://{spec.gateway.hostnames[0]}{spec.gateway.path}"
    service = naming.service_name(md.metadata.name)
    return f"http://{service}.{md.metadata.namespace}.svc.cluster.local/"


def desired_replicas(md: api.ModelDeployment) -> int:
    if md.spec.autoscaling is not None:
        return md.spec.autoscaling.min_replicas
    return md.spec.replicas


def resolved_version(step: Step) -> str | None:
    state = step.state
    if state.canary is not None:
        return state.canary.version
    return state.stable


def deployment(
    live: Mapping[Key, dict[str, Any]], name: str, version: str | None
) -> dict[str, Any] | None:
    if version is None:
        return None
    return live.get(("apps/v1", "Deployment", naming.deployment_name(name, version)))


def replicas(dep: Mapping[str, Any] | None) -> int | None:
    wanted = ((dep or {}).get("spec") or {}).get("replicas")
    return int(wanted) if wanted is not None else None


def available(dep: Mapping[str, Any] | None) -> bool:
    """At least one pod of a Deployment is ready."""
    if not dep:
        return False
    return int((dep.get("status") or {}).get("readyReplicas") or 0) > 0


def ready(dep: Mapping[str, Any] | None) -> bool:
    """All the pods a Deployment asks for are ready (and at least one)."""
    if not dep:
        return False
    wanted = (dep.get("spec") or {}).get("replicas")
    ready_replicas = int((dep.get("status") or {}).get("readyReplicas") or 0)
    return ready_replicas >= max(1, int(wanted if wanted is not None else 1))

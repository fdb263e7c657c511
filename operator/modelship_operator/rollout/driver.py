"""Between status and the state machine: read rollout state, run analysis, write it back.

`read_state()` and `write_state()` map `status.stable`, `status.canary` and
`status.lastRollout` to and from :class:`RolloutState`; status is the only memory, so a
restarted operator resumes mid-rollout.

Times in status are RFC 3339 with microseconds (`iso()`), and they are the one source
of truth: the state machine, the analysis window and both providers read the step's
start from `status.canary.stepStartedAt`. `Analyst` opens a step's window (the pods
provider's counters at its start, kept in `status.canary.stepCounters`), records the
stable version's predicted-class baseline before traffic moves, and judges a step.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from modelship_operator import naming
from modelship_operator.api import ModelDeployment
from modelship_operator.k8s import KubeClient
from modelship_operator.rollout.analysis import Snapshot, Window, analyse, merge
from modelship_operator.rollout.gates import Outcome, Verdict
from modelship_operator.rollout.providers import (
    AnalysisError,
    PodsProvider,
    PrometheusProvider,
    Target,
    increase,
    pods_from_status,
    pods_to_status,
)
from modelship_operator.rollout.state import Canary, LastRollout, RolloutState

MAX_CLASSES = 64  # class labels kept in status; the rest are summed as OTHER
OTHER = "(other)"


def epoch(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time; None for none or a malformed one."""
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def iso(seconds: float | None) -> str | None:
    """RFC 3339 in UTC with microseconds; `epoch(iso(t))` is `t` to the microsecond."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def read_state(status: Mapping[str, Any]) -> RolloutState:
    stable = (status.get("stable") or {}).get("version")
    canary_raw = status.get("canary") or None
    canary = None
    if canary_raw and canary_raw.get("version"):
        canary = Canary(
            version=str(canary_raw["version"]),
            weight=int(canary_raw.get("weight") or 0),
            step=int(canary_raw.get("step") or 0),
            failed_analyses=int(canary_raw.get("failedAnalyses") or 0),
            step_started_at=epoch(canary_raw.get("stepStartedAt")),
            progress_at=epoch(canary_raw.get("progressAt")),
            paused_at=epoch(canary_raw.get("pausedAt")),
            held_since=epoch(canary_raw.get("heldSince")),
            smoked=bool(canary_raw.get("smokeTestPassed")),
            shadow=bool(canary_raw.get("shadow")),
            shadowed=bool(canary_raw.get("shadowPassed")),
        )
    last_raw = status.get("lastRollout") or None
    last = None
    if last_raw and last_raw.get("version"):
        last = LastRollout(
            str(last_raw["version"]), str(last_raw.get("outcome", "")), last_raw.get("reason", "")
        )
    return RolloutState(stable=str(stable) if stable else None, canary=canary, last=last)


def capped(classes: Mapping[str, float]) -> dict[str, float]:
    """At most MAX_CLASSES labels, the rarest summed into OTHER (status stays small)."""
    if len(classes) <= MAX_CLASSES:
        return dict(sorted(classes.items()))
    ranked = sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[: MAX_CLASSES - 1])
    kept[OTHER] = kept.get(OTHER, 0.0) + sum(v for _, v in ranked[MAX_CLASSES - 1:])
    return dict(sorted(kept.items()))


def canary_status(
    state: RolloutState,
    previous: Mapping[str, Any] | None,
    replicas: int,
    ready: int,
    analysis: Mapping[str, Any] | None,
    *,
    step_counters: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, Any] | None:
    """status.canary for `state` (None when no rollout runs).

    `step_counters` and `baseline`, when given, replace the previous ones; otherwise
    those of the same canary version are kept (counters only for the same step).
    """
    canary = state.canary
    if canary is None:
        return None
    previous = previous or {}
    same = previous.get("version") == canary.version
    result: dict[str, Any] = {
        "version": canary.version,
        "weight": canary.weight,
        "step": canary.step,
        "failedAnalyses": canary.failed_analyses,
        "replicas": replicas,
        "readyReplicas": ready,
        "startedAt": (previous.get("startedAt") if same else None)
        or iso(canary.progress_at if canary.progress_at is not None else now),
        "stepStartedAt": iso(canary.step_started_at),
        "progressAt": iso(canary.progress_at),
        "pausedAt": iso(canary.paused_at),
        "heldSince": iso(canary.held_since),
        "smokeTestPassed": canary.smoked or None,
        "shadow": canary.shadow or None,
        "shadowPassed": canary.shadowed or None,
    }
    step_iso = result["stepStartedAt"]
    if step_counters is None and same:
        kept = previous.get("stepCounters")
        if kept and kept.get("step") == step_iso:
            step_counters = kept
    if step_counters is not None and step_counters.get("step") == step_iso and step_iso:
        result["stepCounters"] = dict(step_counters)
    if baseline is None and same:
        baseline = previous.get("baseline")
    if baseline:
        result["baseline"] = dict(baseline)
    last = analysis if analysis is not None else (previous.get("lastAnalysis") if same else None)
    if last:
        result["lastAnalysis"] = dict(last)
    return {k: v for k, v in result.items() if v is not None}


def last_rollout_status(state: RolloutState) -> dict[str, Any] | None:
    if state.last is None:
        return None
    return {"version": state.last.version, "outcome": state.last.outcome,
            "reason": state.last.reason[:1000]}


def targets(md: ModelDeployment, stable: str, canary: str) -> tuple[Target, Target]:
    ns = md.metadata.namespace
    name = md.metadata.name
    return (
        Target(ns, naming.canary_service_name(name), naming.deployment_name(name, canary), canary),
        Target(ns, naming.service_name(name), naming.deployment_name(name, stable), stable),
    )


def _counters_record(
    step_iso: str, at: float, canary: Mapping[str, Snapshot], stable: Mapping[str, Snapshot]
) -> dict[str, Any]:
    for snap in (*canary.values(), *stable.values()):
        snap.classes = capped(snap.classes)
    return {"step": step_iso, "at": iso(at), "canary": pods_to_status(canary),
            "stable": pods_to_status(stable)}


class Analyst:
    """Runs the analysis a ModelDeployment's spec asks for."""

    def __init__(self, client: KubeClient) -> None:
        self.pods = PodsProvider(client)

    def window_opens_at(self, md: ModelDeployment, state: RolloutState) -> float | None:
        """When the current step's analysis window opens: its start plus the warm-up."""
        if state.canary is None or state.canary.step_started_at is None:
            return None
        return state.canary.step_started_at + md.spec.rollout.warmup_seconds

    def open_window(
        self, md: ModelDeployment, state: RolloutState, now: float
    ) -> dict[str, Any] | None:
        """The pods' counters at the opening of the current step's window, for status.

        None for provider prometheus (it needs no counters) or when a scrape fails (the
        next pass tries again; until then the step cannot be judged).
        """
        opens = self.window_opens_at(md, state)
        if (
            md.spec.rollout.analysis.provider != "pods"
            or opens is None
            or now < opens
            or state.stable is None
            or state.canary is None
        ):
            return None
        canary, stable = targets(md, state.stable, state.canary.version)
        try:
            canary_snap, stable_snap = self.pods.scrape_both(canary, stable)
        except AnalysisError:
            return None
        step_iso = iso(state.canary.step_started_at)
        assert step_iso is not None
        return _counters_record(step_iso, now, canary_snap, stable_snap)

    def baseline(
        self, md: ModelDeployment, state: RolloutState, now: float
    ) -> dict[str, Any] | None:
        """The stable version's predicted-class counts so far, for the shift gate.

        Taken when the canary first gets traffic: pods provider, the stable pods'
        counters since they started; prometheus, their increase over the hour before.
        None when the gate is off or nothing could be had (the next pass tries again).
        """
        analysis = md.spec.rollout.analysis
        if analysis.max_prediction_shift is None or state.stable is None or state.canary is None:
            return None
        _, stable = targets(md, state.stable, state.canary.version)
        try:
            if analysis.provider == "prometheus":
                classes = PrometheusProvider(analysis.prometheus_url).classes(stable, 3600.0, now)
            else:
                classes = merge(self.pods.scrape(stable).values()).classes
        except AnalysisError:
            return None
        classes = capped(classes)
        return {"at": iso(now), "predictions": sum(classes.values()), "classes": classes}

    def verdict(
        self,
        md: ModelDeployment,
        state: RolloutState,
        canary_status_now: Mapping[str, Any] | None,
        now: float,
    ) -> tuple[Verdict, dict[str, Any], dict[str, Any] | None]:
        """The verdict on the current step, the record for status.canary.lastAnalysis,
        and (pods provider, when the step's counters were missing) the counters opened now.
        """
        assert state.canary is not None and state.stable is not None
        spec = md.spec.rollout.analysis
        canary, stable = targets(md, state.stable, state.canary.version)
        current = canary_status_now or {}
        raw_baseline = (current.get("baseline") or {}).get("classes")
        baseline = {str(k): float(v) for k, v in (raw_baseline or {}).items()}
        opens = self.window_opens_at(md, state) or now
        reopened: dict[str, Any] | None = None
        try:
            if spec.provider == "prometheus":
                window = PrometheusProvider(spec.prometheus_url).window(
                    spec, canary, stable, max(0.0, now - opens)
                )
            else:
                step_iso = iso(state.canary.step_started_at)
                counters = current.get("stepCounters") or {}
                start_canary = pods_from_status(counters.get("canary"))
                start_stable = pods_from_status(counters.get("stable"))
                now_canary, now_stable = self.pods.scrape_both(canary, stable)
                if counters.get("step") != step_iso or start_canary is None or (
                    start_stable is None
                ):
                    assert step_iso is not None
                    reopened = _counters_record(step_iso, now, now_canary, now_stable)
                    verdict = Verdict(
                        Outcome.INCONCLUSIVE,
                        "no counters from the start of the step's window; measuring from now",
                    )
                    return verdict, _inconclusive_record(verdict, now), reopened
                window = Window(
                    canary=increase(now_canary, start_canary),
                    stable=increase(now_stable, start_stable),
                )
        except AnalysisError as exc:
            verdict = Verdict(Outcome.INCONCLUSIVE, f"no figures: {exc}")
            return verdict, _inconclusive_record(verdict, now), None
        verdict, record = analyse(window, spec, baseline or None, shadow=state.canary.shadow)
        record["at"] = iso(now)
        record["windowSeconds"] = round(max(0.0, now - opens), 3)
        if verdict.outcome is not Outcome.INCONCLUSIVE:
            record["passed"] = verdict.outcome is Outcome.PASS
        return verdict, record, reopened


def _inconclusive_record(verdict: Verdict, now: float) -> dict[str, Any]:
    return {
        "verdict": verdict.outcome.value,
        "at": iso(now),
        "gates": [{"gate": "window", "verdict": verdict.outcome.value,
                   "message": verdict.message[:500]}],
    }

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

# The rollout's status records are pure (rollout/record.py); kept importable from here.
from modelship_operator.rollout.record import (
    MAX_CLASSES,
    OTHER,
    canary_status,
    capped,
    epoch,
    iso,
    last_rollout_status,
    read_state,
)
from modelship_operator.rollout.state import RolloutState

__all__ = ["MAX_CLASSES", "OTHER", "Analyst", "canary_status", "capped", "epoch", "iso",
           "last_rollout_status", "read_state", "targets"]


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

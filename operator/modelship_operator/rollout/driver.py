"""Between status and the state machine: read rollout state, run analysis, write it back.

`read_state()` and `write_state()` map `status.stable`, `status.canary` and
`status.lastRollout` to and from :class:`RolloutState`; status is the only memory, so a
restarted operator resumes mid-rollout. `Analyst` runs the provider the spec names when
a step is due and turns its figures into a Verdict.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Mapping
from typing import Any

from modelship_operator import naming
from modelship_operator.api import ModelDeployment
from modelship_operator.k8s import KubeClient
from modelship_operator.rollout.analysis import Figures, judge
from modelship_operator.rollout.providers import (
    AnalysisError,
    PodsProvider,
    PrometheusProvider,
    Target,
)
from modelship_operator.rollout.state import Canary, LastRollout, Outcome, RolloutState, Verdict


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


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
            step_started_at=_epoch(canary_raw.get("stepStartedAt")),
        )
    last_raw = status.get("lastRollout") or None
    last = None
    if last_raw and last_raw.get("version"):
        last = LastRollout(
            str(last_raw["version"]), str(last_raw.get("outcome", "")), last_raw.get("reason", "")
        )
    return RolloutState(stable=str(stable) if stable else None, canary=canary, last=last)


def canary_status(
    state: RolloutState,
    previous: Mapping[str, Any] | None,
    replicas: int,
    ready: int,
    analysis: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """status.canary for `state` (None when no rollout runs)."""
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
    }
    started = previous.get("startedAt") if same else None
    result["startedAt"] = started or _iso(canary.step_started_at) or previous.get("startedAt")
    if not same:
        result["startedAt"] = None
    if canary.step_started_at is not None:
        result["stepStartedAt"] = _iso(canary.step_started_at)
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


class Analyst:
    """Runs the analysis a ModelDeployment's spec asks for."""

    def __init__(self, client: KubeClient) -> None:
        self.pods = PodsProvider(client)

    def begin(self, md: ModelDeployment, state: RolloutState) -> None:
        """Note the start of the current step (the pods provider scrapes now)."""
        if state.canary is None or state.canary.step_started_at is None or state.stable is None:
            return
        if md.spec.rollout.analysis.provider != "pods":
            return
        canary, stable = targets(md, state.stable, state.canary.version)
        # On failure the step is measured from the first scrape that works (see figures()).
        with contextlib.suppress(AnalysisError):
            self.pods.begin(canary, stable, state.canary.step_started_at)

    def verdict(
        self, md: ModelDeployment, state: RolloutState, now: float
    ) -> tuple[Verdict, dict[str, Any]]:
        """The verdict on the current step and the figures for status.canary.lastAnalysis."""
        assert state.canary is not None and state.stable is not None
        spec = md.spec.rollout.analysis
        canary, stable = targets(md, state.stable, state.canary.version)
        started = state.canary.step_started_at or now
        figures: Figures | None
        try:
            if spec.provider == "prometheus":
                provider = PrometheusProvider(spec.prometheus_url)
                figures = provider.figures(spec, canary, stable, now - started)
            else:
                figures = self.pods.figures(canary, stable, started)
        except AnalysisError as exc:
            return Verdict(Outcome.WAIT, f"no figures: {exc}"), {}
        if figures is None:
            return Verdict(Outcome.WAIT, "measuring from now (no scrape from the step start)"), {}
        verdict = judge(figures, spec)
        record: dict[str, Any] = {
            "requests": figures.requests,
            "passed": verdict.outcome is Outcome.PASS,
            "at": _iso(now),
        }
        if figures.error_rate is not None:
            record["errorRate"] = round(figures.error_rate, 6)
        if figures.latency_p95_ms is not None:
            record["latencyP95Ms"] = round(figures.latency_p95_ms, 3)
        if figures.prediction_shift is not None:
            record["predictionShift"] = round(figures.prediction_shift, 6)
        if verdict.outcome is Outcome.WAIT:
            record.pop("passed")
        return verdict, record

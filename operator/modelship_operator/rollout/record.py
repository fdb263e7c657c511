"""The rollout's state as status records it: read back, and written (pure).

status.canary and status.lastRollout are where the rollout's state machine
(rollout/state.py) keeps its state between passes: :func:`read_state` reads it from a
status, :func:`canary_status` and :func:`last_rollout_status` write it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

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

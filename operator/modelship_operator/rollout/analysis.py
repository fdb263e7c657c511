"""Judging a canary step from the runtime's own metrics.

Two providers give the same figures (request count, error rate, p95 latency, and the
per-class prediction counts of both sides):

- `pods`: the operator scrapes the runtime pods' /metrics itself (pods found through
  the Services' EndpointSlices) and computes the figures from counter and histogram
  deltas between the scrape at the start of the step and the one at its end; no
  Prometheus needed.
- `prometheus`: PromQL over the same metrics (`increase()` over the step's interval),
  with per-metric overrides from spec.rollout.analysis.queries.

`analyse()` turns a step's window into a Verdict through the gates of
:mod:`modelship_operator.rollout.gates`; it is pure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from modelship_operator.api import AnalysisSpec
from modelship_operator.rollout.gates import (
    GateResult,
    Outcome,
    Verdict,
    agreement_gate,
    combine,
    error_rate_gate,
    latency_gate,
    mean_abs_diff_gate,
    prediction_shift_gate,
    quantile_from_buckets,
)

REQUESTS = "http_requests_total"
DURATION = "http_request_duration_seconds"
PREDICTIONS_BY_CLASS = "model_predicted_class_total"
SHADOW_AGREEMENT = "model_shadow_agreement_total"
SHADOW_ABS_DIFF = "model_shadow_abs_diff"
SHADOW_UNCOMPARED = "model_shadow_uncompared_total"
CLIENT_CLOSED = "499"
"""The runtime's status for a request whose client went away before the answer (nginx's
convention): neither a success nor an error, so counted in neither the error rate's
numerator nor its denominator (Flagger counts non-5xx as success; a disconnect is not)."""
PREDICT_PATHS = ("/predict", "/v1/models/{name}:predict", "/v2/models/{name}/infer",
                 "/v2/models/{name}/versions/{version}/infer")


@dataclass
class Snapshot:
    """Cumulative counters of one side (canary or stable) at one moment, summed over pods.

    The shadow figures are the canary's comparison of its predictions with the stable's
    on mirrored requests: rows that agree and disagree (classifiers), the sum and count
    of |canary - stable| per row (regressors), and mirrored requests that could not be
    compared."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    classes: dict[str, float] = field(default_factory=dict)
    agree: float = 0.0
    disagree: float = 0.0
    abs_diff_sum: float = 0.0
    abs_diff_count: float = 0.0
    uncompared: float = 0.0

    def __sub__(self, older: Snapshot) -> Snapshot:
        """The change since `older`; a counter that went down (pod restart) counts from 0."""

        def delta(new: float, old: float) -> float:
            return new - old if new >= old else new

        return Snapshot(
            requests=delta(self.requests, older.requests),
            errors=delta(self.errors, older.errors),
            buckets={le: delta(v, older.buckets.get(le, 0.0)) for le, v in self.buckets.items()},
            classes={c: delta(v, older.classes.get(c, 0.0)) for c, v in self.classes.items()},
            **{name: delta(getattr(self, name), getattr(older, name)) for name in _SHADOW},
        )

    def to_status(self) -> dict[str, Any]:
        """A JSON form for status (bucket bounds as strings, +Inf included)."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "buckets": {repr(le) if math.isfinite(le) else "+Inf": v
                        for le, v in sorted(self.buckets.items())},
            "classes": dict(sorted(self.classes.items())),
            # only when not zero: most snapshots have no shadow traffic
            **{key: v for name, key in _SHADOW.items() if (v := getattr(self, name))},
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> Snapshot | None:
        """The inverse of :meth:`to_status`; None for a missing or malformed record."""
        if not isinstance(raw, Mapping):
            return None
        try:
            return cls(
                requests=float(raw.get("requests") or 0.0),
                errors=float(raw.get("errors") or 0.0),
                buckets={float(le): float(v) for le, v in (raw.get("buckets") or {}).items()},
                classes={str(c): float(v) for c, v in (raw.get("classes") or {}).items()},
                **{name: float(raw.get(key) or 0.0) for name, key in _SHADOW.items()},
            )
        except (TypeError, ValueError):
            return None

    @property
    def predictions(self) -> float:
        return sum(self.classes.values())

    def add(self, other: Snapshot) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for le, v in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + v
        for c, v in other.classes.items():
            self.classes[c] = self.classes.get(c, 0.0) + v
        for name in _SHADOW:
            setattr(self, name, getattr(self, name) + getattr(other, name))


# Snapshot's shadow fields and their keys in status.
_SHADOW = {"agree": "agree", "disagree": "disagree", "abs_diff_sum": "absDiffSum",
           "abs_diff_count": "absDiffCount", "uncompared": "uncompared"}


def _is_prediction_route(labels: Mapping[str, str]) -> bool:
    path = labels.get("path") or labels.get("route") or labels.get("handler") or ""
    return path in PREDICT_PATHS or path.endswith((":predict", "/infer")) or path == "/predict"


def parse_metrics(text: str) -> Snapshot:
    """The figures analysis needs from one pod's /metrics text (Prometheus exposition)."""
    snap = Snapshot()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == REQUESTS and _is_prediction_route(labels):
                status = str(labels.get("status") or labels.get("code") or "")
                if status == CLIENT_CLOSED:
                    continue
                snap.requests += sample.value
                if status.startswith("5"):
                    snap.errors += sample.value
            elif sample.name == f"{DURATION}_bucket" and _is_prediction_route(labels):
                le = float(labels["le"])
                snap.buckets[le] = snap.buckets.get(le, 0.0) + sample.value
            elif sample.name == PREDICTIONS_BY_CLASS:
                cls = labels.get("class") or labels.get("label", "")
                snap.classes[cls] = snap.classes.get(cls, 0.0) + sample.value
            elif sample.name == SHADOW_AGREEMENT:
                if labels.get("result") == "agree":
                    snap.agree += sample.value
                elif labels.get("result") == "disagree":
                    snap.disagree += sample.value
            elif sample.name == f"{SHADOW_ABS_DIFF}_sum":
                snap.abs_diff_sum += sample.value
            elif sample.name == f"{SHADOW_ABS_DIFF}_count":
                snap.abs_diff_count += sample.value
            elif sample.name == SHADOW_UNCOMPARED:
                snap.uncompared += sample.value
    return snap


@dataclass(frozen=True)
class Window:
    """What one step's window holds: the increase of each side's counters over it.

    `overridden` names the figures that came from the user's PromQL overrides
    (``errorRate``, ``latencyP95Ms``, ``requests``); such a figure is a point value, and
    None means its query returned no data. `requests_known` is False when the request
    count itself could not be had.
    """

    canary: Snapshot
    stable: Snapshot | None = None
    error_rate_override: float | None = None
    p95_ms_override: float | None = None
    overridden: frozenset[str] = frozenset()
    requests_known: bool = True


def analyse(
    window: Window,
    spec: AnalysisSpec,
    baseline: Mapping[str, float] | None = None,
    *,
    shadow: bool = False,
) -> tuple[Verdict, dict[str, Any]]:
    """The verdict on one step and the record for ``status.canary.lastAnalysis``.

    `baseline` is the stable version's predicted-class counts recorded before traffic
    moved; the shift gate compares the canary with it plus the stable's own predictions
    in the same window, so a 100% step (no stable traffic) is judged too.
    """
    canary = window.canary
    requests = canary.requests
    gates: list[GateResult] = []
    if not window.requests_known:
        gates.append(GateResult("requests", Outcome.INCONCLUSIVE,
                                "the requests query returned no data"))
    # Error rate.
    if "errorRate" in window.overridden:
        if window.error_rate_override is None:
            gates.append(GateResult("errorRate", Outcome.INCONCLUSIVE,
                                    "the errorRate query returned no data"))
        else:
            rate = min(max(window.error_rate_override, 0.0), 1.0)
            gates.append(error_rate_gate(
                requests, rate * requests, max_error_rate=spec.max_error_rate,
                min_requests=spec.min_requests, confidence=spec.confidence,
            ))
    else:
        stable = window.stable
        gates.append(error_rate_gate(
            requests, canary.errors, max_error_rate=spec.max_error_rate,
            min_requests=spec.min_requests, confidence=spec.confidence,
            stable_requests=stable.requests if stable else None,
            stable_errors=stable.errors if stable else None,
        ))
    # Latency.
    gates.append(latency_gate(
        canary.buckets, max_latency_p95_ms=spec.max_latency_p95_ms,
        min_requests=spec.min_requests, confidence=spec.confidence,
        p95_ms_override=window.p95_ms_override,
        override_used="latencyP95Ms" in window.overridden,
    ))
    # Prediction shift.
    reference: dict[str, float] | None = None
    if spec.max_prediction_shift is not None:
        reference = dict(baseline or {})
        if window.stable is not None:
            for cls, count in window.stable.classes.items():
                reference[cls] = reference.get(cls, 0.0) + count
        gates.append(prediction_shift_gate(
            reference, canary.classes, max_psi=spec.max_prediction_shift,
            min_predictions=spec.min_predictions,
            reference_name="the stable version's predictions",
        ))
    # Shadow phase: the canary's answers to mirrored requests against the stable's.
    if shadow and spec.min_agreement is not None:
        gates.append(agreement_gate(
            canary.agree, canary.disagree, min_agreement=spec.min_agreement,
            min_predictions=spec.min_predictions, confidence=spec.confidence,
        ))
    if shadow and spec.max_mean_abs_diff is not None:
        gates.append(mean_abs_diff_gate(
            canary.abs_diff_sum, canary.abs_diff_count,
            max_mean_abs_diff=spec.max_mean_abs_diff, min_predictions=spec.min_predictions,
        ))
    verdict = combine(gates, _summary(window))
    record: dict[str, Any] = {
        "requests": round(requests),
        "errors": round(canary.errors),
        "verdict": verdict.outcome.value,
        "gates": [g.as_dict() for g in gates],
    }
    if "errorRate" in window.overridden:
        if window.error_rate_override is not None:
            record["errorRate"] = round(window.error_rate_override, 6)
    elif requests > 0:
        record["errorRate"] = round(canary.errors / requests, 6)
    p95 = window.p95_ms_override if "latencyP95Ms" in window.overridden else (
        None if (q := quantile_from_buckets(canary.buckets, 0.95)) is None else q * 1000.0
    )
    if p95 is not None and math.isfinite(p95):
        record["latencyP95Ms"] = round(p95, 3)
    if spec.max_prediction_shift is not None:
        record["predictions"] = round(canary.predictions)
        shift = next((g.figure for g in gates if g.gate == "predictionShift"), None)
        if shift is not None:
            record["predictionShift"] = round(shift, 6)
    if shadow:
        record["compared"] = round(canary.agree + canary.disagree + canary.abs_diff_count)
        for name, key in (("agreement", "agreement"), ("meanAbsDiff", "meanAbsDiff")):
            figure = next((g.figure for g in gates if g.gate == name), None)
            if figure is not None:
                record[key] = round(figure, 6)
    figures: dict[str, float | int | None] = {
        k: v for k, v in record.items() if isinstance(v, int | float)
    }
    return Verdict(verdict.outcome, verdict.message, verdict.gates, figures), record


def _summary(window: Window) -> str:
    canary = window.canary
    parts = [f"{round(canary.requests)} requests"]
    if canary.requests > 0 and "errorRate" not in window.overridden:
        parts.append(f"{round(canary.errors)} errors")
    if canary.classes:
        parts.append(f"{round(canary.predictions)} predictions")
    return ", ".join(parts)


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    total = Snapshot()
    for snap in snapshots:
        total.add(snap)
    return total

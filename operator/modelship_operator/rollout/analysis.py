"""Judging a canary step from the runtime's own metrics.

Two providers give the same figures (request count, error rate, p95 latency, and the
per-class prediction counts of both sides):

- `pods`: the operator scrapes the runtime pods' /metrics itself (pods found through
  the Services' EndpointSlices) and computes the figures from counter and histogram
  deltas between the scrape at the start of the step and the one at its end; no
  Prometheus needed.
- `prometheus`: PromQL over the same metrics (`increase()` over the step's interval),
  with per-metric overrides from spec.rollout.analysis.queries.

`judge()` turns figures into a Verdict; it and `population_stability_index()` are pure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from modelship_operator.api import AnalysisSpec
from modelship_operator.rollout.state import Outcome, Verdict

REQUESTS = "http_requests_total"
DURATION = "http_request_duration_seconds"
PREDICTIONS_BY_CLASS = "model_predicted_class_total"
PREDICT_PATHS = ("/predict", "/v1/models/{name}:predict", "/v2/models/{name}/infer",
                 "/v2/models/{name}/versions/{version}/infer")


@dataclass
class Snapshot:
    """Cumulative counters of one side (canary or stable) at one moment, summed over pods."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    classes: dict[str, float] = field(default_factory=dict)

    def __sub__(self, older: Snapshot) -> Snapshot:
        """The change since `older`; a counter that went down (pod restart) counts from 0."""

        def delta(new: float, old: float) -> float:
            return new - old if new >= old else new

        return Snapshot(
            requests=delta(self.requests, older.requests),
            errors=delta(self.errors, older.errors),
            buckets={le: delta(v, older.buckets.get(le, 0.0)) for le, v in self.buckets.items()},
            classes={c: delta(v, older.classes.get(c, 0.0)) for c, v in self.classes.items()},
        )

    def add(self, other: Snapshot) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for le, v in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + v
        for c, v in other.classes.items():
            self.classes[c] = self.classes.get(c, 0.0) + v


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
                snap.requests += sample.value
                status = str(labels.get("status") or labels.get("code") or "")
                if status.startswith("5"):
                    snap.errors += sample.value
            elif sample.name == f"{DURATION}_bucket" and _is_prediction_route(labels):
                le = float(labels["le"])
                snap.buckets[le] = snap.buckets.get(le, 0.0) + sample.value
            elif sample.name == PREDICTIONS_BY_CLASS:
                cls = labels.get("class") or labels.get("label", "")
                snap.classes[cls] = snap.classes.get(cls, 0.0) + sample.value
    return snap


def quantile_from_buckets(buckets: Mapping[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated as PromQL's histogram_quantile."""
    if not buckets:
        return None
    ordered = sorted(buckets.items())
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def population_stability_index(
    expected: Mapping[str, float], actual: Mapping[str, float], floor: float = 1e-4
) -> float | None:
    """PSI of `actual` (canary) against `expected` (stable) class shares; None without data.

    Shares are floored so that a class seen on one side only gives a large, finite PSI.
    Common reading: < 0.1 no shift, 0.1-0.25 moderate, > 0.25 large.
    """
    classes = set(expected) | set(actual)
    e_total = sum(expected.values())
    a_total = sum(actual.values())
    if not classes or e_total <= 0 or a_total <= 0:
        return None
    psi = 0.0
    for cls in classes:
        e = max(expected.get(cls, 0.0) / e_total, floor)
        a = max(actual.get(cls, 0.0) / a_total, floor)
        psi += (a - e) * math.log(a / e)
    return psi


@dataclass(frozen=True)
class Figures:
    requests: int
    error_rate: float | None
    latency_p95_ms: float | None
    prediction_shift: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "requests": self.requests,
            "errorRate": self.error_rate,
            "latencyP95Ms": self.latency_p95_ms,
            "predictionShift": self.prediction_shift,
        }


def figures_from(canary: Snapshot, stable: Snapshot | None = None) -> Figures:
    """Figures of one step from the canary's (and stable's) counter deltas."""
    requests = round(canary.requests)
    error_rate = canary.errors / canary.requests if canary.requests > 0 else None
    p95 = quantile_from_buckets(canary.buckets, 0.95)
    shift = population_stability_index(stable.classes, canary.classes) if stable else None
    return Figures(
        requests=requests,
        error_rate=error_rate,
        latency_p95_ms=None if p95 is None else p95 * 1000.0,
        prediction_shift=shift,
    )


def judge(figures: Figures, spec: AnalysisSpec) -> Verdict:
    """Pass, Fail or Wait for one step, with a message quoting the deciding figures."""
    data = figures.as_dict()
    if figures.requests < spec.min_requests:
        return Verdict(
            Outcome.WAIT, f"{figures.requests} requests, fewer than {spec.min_requests}", data
        )
    problems: list[str] = []
    if figures.error_rate is not None and figures.error_rate > spec.max_error_rate:
        problems.append(f"error rate {figures.error_rate:.4f} > {spec.max_error_rate}")
    if figures.latency_p95_ms is not None and figures.latency_p95_ms > spec.max_latency_p95_ms:
        problems.append(f"p95 {figures.latency_p95_ms:.1f} ms > {spec.max_latency_p95_ms} ms")
    if (
        spec.max_prediction_shift is not None
        and figures.prediction_shift is not None
        and figures.prediction_shift > spec.max_prediction_shift
    ):
        problems.append(
            f"prediction shift (PSI) {figures.prediction_shift:.3f} > {spec.max_prediction_shift}"
        )
    summary = _summary(figures)
    if problems:
        return Verdict(Outcome.FAIL, "; ".join(problems) + f" [{summary}]", data)
    return Verdict(Outcome.PASS, summary, data)


def _summary(figures: Figures) -> str:
    parts = [f"{figures.requests} requests"]
    if figures.error_rate is not None:
        parts.append(f"error rate {figures.error_rate:.4f}")
    if figures.latency_p95_ms is not None:
        parts.append(f"p95 {figures.latency_p95_ms:.1f} ms")
    if figures.prediction_shift is not None:
        parts.append(f"PSI {figures.prediction_shift:.3f}")
    return ", ".join(parts)


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    total = Snapshot()
    for snap in snapshots:
        total.add(snap)
    return total

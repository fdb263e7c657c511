"""The operator's own Prometheus metrics, declared in one place.

What a platform engineer alerts on and graphs: how rollouts end (Promoted, RolledBack,
Aborted), the canary weight of each ModelDeployment over time, whether a rollout has
stopped making progress past its deadline, what each analysis gate said, and why
reconcile passes fail. The runtime's metrics say how a model serves; these say what the
operator decided about it.

Per-ModelDeployment series carry the labels ``namespace`` and ``modelship_deployment``:
the same names the chart's monitors give every runtime series, so a dashboard or an
alert joins the two. The chart scrapes the operator with ``honorLabels: true`` so that
``namespace`` stays the ModelDeployment's, not the operator pod's.

Series are bounded: labels hold names of ModelDeployments, fixed outcomes and verdicts,
gate names and reason words (checked here, a bad value raises ValueError), never a
message or a version. :meth:`OperatorMetrics.forget` drops every series of a
ModelDeployment when it is deleted.

With kopf peering, a replica that loses its turn keeps exporting what it last saw; the
chart's alerts therefore aggregate replicas per ModelDeployment and only believe a
rollout runs while every replica that knows it says so (see prometheusrule.yaml).
"""

from __future__ import annotations

import contextlib
import re
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from modelship_operator.rollout.gates import Outcome

OUTCOMES = ("Promoted", "RolledBack", "Aborted")
"""How a rollout ends (status.lastRollout.outcome)."""
VERDICTS = tuple(outcome.value for outcome in Outcome)
"""What one analysis gate says of one step: Pass, Fail or Inconclusive."""
KNOWN_GATES = ("errorRate", "latencyP95", "predictionShift")
"""Gates whose verdict series exist (at 0) from a ModelDeployment's first pass on."""

_GATE = re.compile(r"[a-z][A-Za-z0-9]{0,62}")
_REASON = re.compile(r"[A-Z][A-Za-z0-9]{0,62}")
_MD_LABELS = ("namespace", "modelship_deployment")
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class OperatorMetrics:
    """The operator's collectors on a private registry; thread-safe (handlers run in a pool)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rollouts = Counter(
            "modelship_rollouts",
            "Rollouts finished, by outcome: Promoted, RolledBack or Aborted.",
            [*_MD_LABELS, "outcome"],
            registry=r,
        )
        self.gate_verdicts = Counter(
            "modelship_analysis_verdicts",
            "Analysis gate verdicts on canary steps, by gate and verdict "
            "(Pass, Fail, Inconclusive).",
            [*_MD_LABELS, "gate", "verdict"],
            registry=r,
        )
        self.canary_weight = Gauge(
            "modelship_canary_weight",
            "Percent of traffic the canary gets (0 when no rollout runs).",
            _MD_LABELS,
            registry=r,
        )
        self.rollout_step = Gauge(
            "modelship_rollout_step",
            "Step of the running rollout, counted from 1 (0 when no rollout runs).",
            _MD_LABELS,
            registry=r,
        )
        self.in_progress = Gauge(
            "modelship_rollout_in_progress",
            "1 while a rollout (a canary) runs, else 0.",
            _MD_LABELS,
            registry=r,
        )
        self.last_progress = Gauge(
            "modelship_rollout_last_progress_timestamp_seconds",
            "Unix time the running rollout last made progress (started, got a weight, "
            "passed or failed a step); absent when no rollout runs.",
            _MD_LABELS,
            registry=r,
        )
        self.deadline = Gauge(
            "modelship_rollout_deadline_timestamp_seconds",
            "Unix time after which the running rollout is rolled back unless it progresses "
            "(last progress, the step's warm-up and interval, spec.rollout."
            "progressDeadlineSeconds); absent while paused and when no rollout runs.",
            _MD_LABELS,
            registry=r,
        )
        self.reconcile_errors = Counter(
            "modelship_operator_reconcile_errors",
            "Reconcile passes that stalled or will be retried, by reason.",
            ["reason"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "modelship_operator_reconcile_duration_seconds",
            "Time of one reconcile pass of one ModelDeployment.",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.registry_requests = Counter(
            "modelship_operator_registry_requests",
            "HTTP requests the operator sent to MLflow, by operation (resolveAlias, "
            "getVersion, ...) and outcome (Ok, or the error reason: ModelVersionNotFound, "
            "Unauthorized, InvalidRequest, RegistryUnavailable, ...).",
            ["operation", "outcome"],
            registry=r,
        )
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str]] = set()
        self._running: set[tuple[str, str]] = set()
        self._gates: dict[tuple[str, str], set[str]] = {}

    # -- what the reconciler calls ------------------------------------------------------

    def record_rollout(self, namespace: str, name: str, outcome: str) -> None:
        """Count a finished rollout; `outcome` is one of OUTCOMES."""
        if outcome not in OUTCOMES:
            raise ValueError(f"rollout outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
        with self._lock:
            self._see_locked(namespace, name)
            self.rollouts.labels(namespace, name, outcome).inc()

    def record_gate(self, namespace: str, name: str, gate: str, verdict: str) -> None:
        """Count one gate's verdict on one analysed step.

        `gate` is a lowerCamelCase name (errorRate, latencyP95, predictionShift, ...);
        `verdict` is one of VERDICTS.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"gate verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        if not _GATE.fullmatch(gate):
            raise ValueError(f"gate name {gate!r} is not a lowerCamelCase word")
        with self._lock:
            self._see_locked(namespace, name)
            self._gate_locked(namespace, name, gate)
            self.gate_verdicts.labels(namespace, name, gate, verdict).inc()

    def set_canary(
        self,
        namespace: str,
        name: str,
        *,
        weight: int,
        step: int,
        progressed_at: float | None,
        deadline_at: float | None,
    ) -> None:
        """A rollout runs: its canary gets `weight`% at step index `step` (0-based).

        `progressed_at` is when it last made progress and `deadline_at` when it is rolled
        back unless it progresses (Unix times, as the rollout state machine keeps them);
        None: not known, or (deadline) paused.
        """
        if not 0 <= weight <= 100:
            raise ValueError(f"canary weight {weight} is not a percentage")
        if step < 0:
            raise ValueError(f"rollout step {step} is negative")
        with self._lock:
            self._see_locked(namespace, name)
            self._running.add((namespace, name))
            self.canary_weight.labels(namespace, name).set(weight)
            self.rollout_step.labels(namespace, name).set(step + 1)
            self.in_progress.labels(namespace, name).set(1)
            for gauge, value in ((self.last_progress, progressed_at),
                                 (self.deadline, deadline_at)):
                if value is None:
                    _remove(gauge, namespace, name)
                else:
                    gauge.labels(namespace, name).set(value)

    def clear_canary(self, namespace: str, name: str) -> None:
        """No rollout runs: weight, step and in-progress 0; no progress or deadline series."""
        with self._lock:
            self._see_locked(namespace, name)
            if (namespace, name) in self._running:
                self._running.discard((namespace, name))
                _remove(self.last_progress, namespace, name)
                _remove(self.deadline, namespace, name)
            self.canary_weight.labels(namespace, name).set(0)
            self.rollout_step.labels(namespace, name).set(0)
            self.in_progress.labels(namespace, name).set(0)

    def record_reconcile_error(self, reason: str) -> None:
        """Count a pass that stalled or raised for a retry; `reason` is a CamelCase word."""
        if not _REASON.fullmatch(reason):
            raise ValueError(f"reconcile error reason {reason!r} is not a CamelCase word")
        self.reconcile_errors.labels(reason).inc()

    def record_registry_request(self, operation: str, outcome: str) -> None:
        """Count one HTTP request to MLflow: `operation` a lowerCamelCase word (resolveAlias,
        getVersion, ...), `outcome` Ok or a CamelCase error reason."""
        if not _GATE.fullmatch(operation):
            raise ValueError(f"registry operation {operation!r} is not a lowerCamelCase word")
        if not _REASON.fullmatch(outcome):
            raise ValueError(f"registry outcome {outcome!r} is not a CamelCase word")
        self.registry_requests.labels(operation, outcome).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted ModelDeployment."""
        with self._lock:
            self._seen.discard((namespace, name))
            self._running.discard((namespace, name))
            for outcome in OUTCOMES:
                _remove(self.rollouts, namespace, name, outcome)
            for gate in self._gates.pop((namespace, name), set()):
                for verdict in VERDICTS:
                    _remove(self.gate_verdicts, namespace, name, gate, verdict)
            for gauge in (self.canary_weight, self.rollout_step, self.in_progress,
                          self.last_progress, self.deadline):
                _remove(gauge, namespace, name)

    def render(self) -> bytes:
        """The exposition text of every metric (what /metrics serves)."""
        return generate_latest(self.registry)

    def serve(self, port: int, address: str = "0.0.0.0") -> WSGIServer:
        """Serve the metrics over HTTP (at /metrics, and any other path) from a daemon
        thread until ``shutdown()`` of the returned server; OSError when the port is taken."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return server

    # -- internals ----------------------------------------------------------------------

    def _see_locked(self, namespace: str, name: str) -> None:
        """Create a ModelDeployment's counters at 0 when first seen.

        A counter series that first appears at 1 shows no increase() in Prometheus, so
        the first rollback of a ModelDeployment would never alert.
        """
        if (namespace, name) in self._seen:
            return
        self._seen.add((namespace, name))
        for outcome in OUTCOMES:
            self.rollouts.labels(namespace, name, outcome)
        for gate in KNOWN_GATES:
            self._gate_locked(namespace, name, gate)

    def _gate_locked(self, namespace: str, name: str, gate: str) -> None:
        """Create a gate's verdict series of a ModelDeployment at 0 (see _see_locked)."""
        gates = self._gates.setdefault((namespace, name), set())
        if gate not in gates:
            gates.add(gate)
            for verdict in VERDICTS:
                self.gate_verdicts.labels(namespace, name, gate, verdict)


def _remove(metric: MetricWrapperBase, *labelvalues: str) -> None:
    """Remove one child series of `metric`, if it exists."""
    with contextlib.suppress(KeyError):
        metric.remove(*labelvalues)


METRICS = OperatorMetrics()
"""The operator process's metrics; the functions below record on it."""

record_rollout = METRICS.record_rollout
record_gate = METRICS.record_gate
set_canary = METRICS.set_canary
clear_canary = METRICS.clear_canary
record_reconcile_error = METRICS.record_reconcile_error
record_registry_request = METRICS.record_registry_request
forget = METRICS.forget
reconcile_duration = METRICS.reconcile_duration

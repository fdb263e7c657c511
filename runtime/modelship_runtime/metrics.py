"""Every Prometheus metric of the runtime, declared in one place.

The rollout's analysis scrapes these from canary and stable pods, so the names are part
of the contract with the operator: request counts and latency by route template (never a
raw path, so a client cannot blow up the series count), prediction latency and counts,
predicted-class counts (the model-aware gate compares their distribution), a
model-version info gauge, the cache's hits, misses and errors, the API keys in force and
their reloads, and the rate limit's refusals and backend. The ``shadow`` metrics
judge a canary on mirrored traffic: the stable side counts what became of each request it
chose to mirror, the canary side counts the mirrored requests it answered and how its
predictions compare with the stable's, row by row. Each app gets its own registry so
tests and several apps in one process never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PREDICT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

# |canary - stable| of a regressor's row: exact zero first, then a wide range of scales.
ABS_DIFF_BUCKETS = (0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    25.0, 50.0, 100.0, 1000.0)
# |canary - stable| / max(|canary|, |stable|): between 0 (equal) and 2 (opposite signs).
REL_DIFF_BUCKETS = (0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
MIRROR_OUTCOMES = ("sent", "dropped", "failed", "skipped", "shed")
CLOSE_REASONS = ("header_too_large", "read_timeout", "evicted", "over_capacity")
AGREEMENT_RESULTS = ("agree", "disagree")

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _no_mirror() -> tuple[dict[str, float], float]:
    return dict.fromkeys(MIRROR_OUTCOMES, 0.0), 0.0


class _MirrorCollector(Collector):
    """``modelship_shadow_mirrored_total`` and ``modelship_shadow_pending``, read when
    scraped (the sender process counts in shared memory, not in this registry)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        counts, pending = m.mirror_figures()
        mirrored = CounterMetricFamily(
            "modelship_shadow_mirrored",
            "Prediction requests chosen to be mirrored to the canary, by outcome: sent (the "
            "canary answered), dropped (no room to queue it, or the sender process was "
            "gone), failed (no answer in time), skipped (an error answer, or predictions or "
            "body too large to send), shed (other requests were being served).",
            labels=["model", "version", "outcome"])
        for outcome in MIRROR_OUTCOMES:
            mirrored.add_metric([m.model, m.version, outcome], float(counts[outcome]))
        yield mirrored
        gauge = GaugeMetricFamily(
            "modelship_shadow_pending",
            "Requests handed to the sender process and not yet sent, failed or dropped.",
            labels=["model", "version"])
        gauge.add_metric([m.model, m.version], float(pending))
        yield gauge


class Metrics:
    """The runtime's collectors on a private registry."""

    def __init__(self, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time from request start to response end, by method and route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.prediction_duration = Histogram(
            "model_prediction_duration_seconds",
            "Time of one estimator call (a micro-batch may serve several requests).",
            ["model", "version"],
            buckets=PREDICT_BUCKETS,
            registry=r,
        ).labels(model, version)
        self.predictions = Counter(
            "model_predictions_total",
            "Rows predicted (cache hits included).",
            ["model", "version"],
            registry=r,
        ).labels(model, version)
        self.predicted_class = Counter(
            "model_predicted_class_total",
            "Predicted rows by class label, for comparing canary and stable distributions.",
            ["model", "version", "class"],
            registry=r,
        )
        self.batch_size = Histogram(
            "model_batch_rows",
            "Rows per estimator call (shows how much micro-batching shares).",
            ["model", "version"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        ).labels(model, version)
        self.model_info = Gauge(
            "model_version_info",
            "Always 1; labels name the model and version this pod serves.",
            ["model", "version", "flavor", "estimator"],
            registry=r,
        )
        self.model_ready = Gauge(
            "modelship_model_ready", "1 once the model is loaded.", ["model", "version"],
            registry=r,
        ).labels(model, version)
        cache_labels = ["model", "version"]
        self.cache_hits = Counter(
            "modelship_cache_hits_total", "Prediction cache hits.", cache_labels, registry=r
        ).labels(model, version)
        self.cache_misses = Counter(
            "modelship_cache_misses_total", "Prediction cache misses.", cache_labels, registry=r
        ).labels(model, version)
        self.cache_errors = Counter(
            "modelship_cache_errors_total",
            "Cache calls that failed or timed out (the request was served without cache).",
            cache_labels,
            registry=r,
        ).labels(model, version)
        # What became of the requests chosen for mirroring: counted partly in the sender
        # process, so read from `mirror_figures` when scraped.
        self.mirror_figures: Callable[[], tuple[dict[str, float], float]] = _no_mirror
        r.register(_MirrorCollector(self))
        self.shadow_requests = Counter(
            "model_shadow_requests_total",
            "Mirrored requests (X-Modelship-Shadow) answered, by route template and status; "
            "they are in http_requests_total too.",
            ["model", "version", "route", "status"],
            registry=r,
        )
        self.shadow_agreement = Counter(
            "model_shadow_agreement_total",
            "Rows of mirrored requests whose predicted label equals the stable's (agree) or "
            "not (disagree); classifiers only.",
            ["model", "version", "result"],
            registry=r,
        )
        self.shadow_abs_diff = Histogram(
            "model_shadow_abs_diff",
            "|canary - stable| per row of mirrored requests; regressors only.",
            ["model", "version"],
            buckets=ABS_DIFF_BUCKETS,
            registry=r,
        ).labels(model, version)
        self.shadow_rel_diff = Histogram(
            "model_shadow_rel_diff",
            "|canary - stable| / max(|canary|, |stable|) per row of mirrored requests "
            "(0 when both are 0); regressors only.",
            ["model", "version"],
            buckets=REL_DIFF_BUCKETS,
            registry=r,
        ).labels(model, version)
        self.shadow_uncompared = Counter(
            "model_shadow_uncompared_total",
            "Mirrored requests answered but not compared, by reason: missing, invalid, rows, "
            "type, token.",
            ["model", "version", "reason"],
            registry=r,
        )
        self.connections_closed = Counter(
            "modelship_connections_closed_total",
            "Client connections the server closed to protect itself, by reason: "
            "header_too_large (431), read_timeout (headers or body too slow), evicted (idle "
            "when a new connection came at the connection cap), over_capacity (503 at the "
            "cap with every connection busy).",
            ["reason"],
            registry=r,
        )
        self._closed = {reason: self.connections_closed.labels(reason)
                        for reason in CLOSE_REASONS}
        self.api_keys = Gauge(
            "modelship_api_keys", "API keys in force (0 when API keys are off).", registry=r)
        self.api_key_reloads = Counter(
            "modelship_api_key_reloads_total",
            "Reloads of the API key file after it changed, by result: ok, or error (the "
            "file could not be used and the previous keys stayed in force).",
            ["result"], registry=r)
        self.rate_limit_backend = Gauge(
            "modelship_rate_limit_backend",
            "1 for the backend the rate limit counts in: redis (shared by all replicas) or "
            "local (this pod alone: no Redis, or Redis failing); absent when there is no "
            "rate limit.",
            ["backend"], registry=r)
        self.rate_limited = Counter(
            "modelship_rate_limited_total",
            "Requests refused with 429 because their API key (or, without keys, all clients "
            "together) was over the rate limit.",
            ["model", "version"], registry=r).labels(model, version)
        # Zero series from the start, so a delta (or increase()) sees the first increment.
        self.agreement = {res: self.shadow_agreement.labels(model, version, res)
                          for res in AGREEMENT_RESULTS}
        self._class_children: dict[object, Counter] = {}

    def count_classes(self, labels: list[object]) -> None:
        """Count predicted class labels (one increment per distinct label)."""
        counts: dict[object, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        for label, n in counts.items():
            child = self._class_children.get(label)
            if child is None:
                child = self.predicted_class.labels(self.model, self.version, str(label))
                self._class_children[label] = child
            child.inc(n)

    def connection_closed(self, reason: str) -> None:
        """Count a connection closed by the server's guard (:mod:`.guard`)."""
        self._closed[reason].inc()

    def render(self) -> bytes:
        """The exposition text of every metric."""
        return generate_latest(self.registry)

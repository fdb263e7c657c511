"""Where analysis figures come from: the pods themselves, or Prometheus.

`PodsProvider` scrapes /metrics of the runtime pods behind a Service (found through its
EndpointSlices, so only ready endpoints count), pod by pod. The scrape taken when a
step's window opens is kept in status (`status.canary.stepCounters`), so a restarted
operator still judges the whole step; a step's figures are the per-pod increases since
then (a pod that appeared counts from 0, a pod that restarted counts from its restart,
a pod that left takes its requests with it). `PrometheusProvider` asks PromQL for the
increase of the same counters over the window, to the millisecond.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from modelship_operator.api import AnalysisSpec
from modelship_operator.k8s import ApiError, KubeClient, kind_of
from modelship_operator.rollout.analysis import Snapshot, Window, merge, parse_metrics

ENDPOINT_SLICE = kind_of("discovery.k8s.io/v1", "EndpointSlice")
PREDICT_ROUTES = r"/predict|/v1/models/.*:predict|/v2/models/.*/infer"


class AnalysisError(Exception):
    """The figures could not be had this time (the step waits, it does not fail)."""


@dataclass(frozen=True)
class Target:
    """One side of a rollout to analyse."""

    namespace: str
    service: str  # the Service whose EndpointSlices list the pods
    deployment: str  # the Deployment whose pods belong to this side (pod-name prefix)
    version: str


MAX_PODS = 200  # pods per side whose counters a step keeps


def endpoints(client: KubeClient, target: Target, port_name: str = "http") -> dict[str, str]:
    """Pod name (or address) -> host:port of every ready pod of `target` behind its Service."""
    try:
        slices = client.list(
            ENDPOINT_SLICE, target.namespace, f"kubernetes.io/service-name={target.service}"
        )
    except ApiError as exc:
        raise AnalysisError(f"cannot list EndpointSlices of {target.service}: {exc}") from exc
    found: dict[str, str] = {}
    for eps in slices:
        ports = [p for p in eps.get("ports") or [] if p.get("name") in (port_name, None)]
        if not ports:
            continue
        port = ports[0].get("port")
        for endpoint in eps.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            ref = endpoint.get("targetRef") or {}
            if ref.get("name") and not str(ref["name"]).startswith(target.deployment + "-"):
                continue  # a pod of the other version behind a shared Service
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ":" in address else address
                found[str(ref.get("name") or address)] = f"{host}:{port}"
    return dict(sorted(found.items())[:MAX_PODS])


def scrape(addresses: Mapping[str, str], timeout: float = 3.0) -> dict[str, Snapshot]:
    """Counters of each pod at `addresses` (pod -> host:port); a failed scrape raises."""
    snapshots: dict[str, Snapshot] = {}
    for pod, address in addresses.items():
        try:
            response = requests.get(f"http://{address}/metrics", timeout=timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise AnalysisError(f"cannot scrape {pod} at {address}: {exc}") from exc
        snapshots[pod] = parse_metrics(response.text)
    return snapshots


def increase(now: Mapping[str, Snapshot], start: Mapping[str, Snapshot]) -> Snapshot:
    """Summed per-pod increases since `start`; a pod absent then counts from 0."""
    return merge(snap - start.get(pod, Snapshot()) for pod, snap in now.items())


def pods_to_status(pods: Mapping[str, Snapshot]) -> dict[str, Any]:
    return {pod: snap.to_status() for pod, snap in pods.items()}


def pods_from_status(raw: Any) -> dict[str, Snapshot] | None:
    """The inverse of :func:`pods_to_status`; None when missing or malformed."""
    if not isinstance(raw, Mapping):
        return None
    result: dict[str, Snapshot] = {}
    for pod, value in raw.items():
        snap = Snapshot.from_status(value)
        if snap is None:
            return None
        result[str(pod)] = snap
    return result


class PodsProvider:
    """Scrapes the runtime pods of both sides of a rollout."""

    def __init__(self, client: KubeClient, timeout: float = 3.0) -> None:
        self.client = client
        self.timeout = timeout

    def scrape(self, target: Target) -> dict[str, Snapshot]:
        return scrape(endpoints(self.client, target), self.timeout)

    def scrape_both(
        self, canary: Target, stable: Target
    ) -> tuple[dict[str, Snapshot], dict[str, Snapshot]]:
        return self.scrape(canary), self.scrape(stable)


# A pod of Deployment D is named D-<pod-template-hash>-<suffix>; neither part holds a
# "-", so this matches D's pods only, never those of a Deployment "D-x" of another
# ModelDeployment. Requests whose client left (status 499) are neither successes nor
# errors: out of the request count as out of the errors.
DEFAULT_QUERIES = {
    "requests": (
        'sum(increase(http_requests_total{namespace="$namespace",pod=~"$deployment-[a-z0-9]+-[a-z0-9]+",'
        'route=~"' + PREDICT_ROUTES + '",status!="499"}[$window]))'
    ),
    "errors": (
        'sum(increase(http_requests_total{namespace="$namespace",pod=~"$deployment-[a-z0-9]+-[a-z0-9]+",'
        'route=~"' + PREDICT_ROUTES + '",status=~"5.."}[$window]))'
    ),
    "latencyP95Ms": (
        "1000 * histogram_quantile(0.95, sum by (le) (increase("
        'http_request_duration_seconds_bucket{namespace="$namespace",pod=~"$deployment-[a-z0-9]+-[a-z0-9]+",'
        'route=~"' + PREDICT_ROUTES + '"}[$window])))'
    ),
    "buckets": (
        "sum by (le) (increase("
        'http_request_duration_seconds_bucket{namespace="$namespace",pod=~"$deployment-[a-z0-9]+-[a-z0-9]+",'
        'route=~"' + PREDICT_ROUTES + '"}[$window]))'
    ),
    "agree": (
        'sum(increase(model_shadow_agreement_total{namespace="$namespace",'
        'pod=~"$deployment-[a-z0-9]+-[a-z0-9]+",result="agree"}[$window]))'
    ),
    "disagree": (
        'sum(increase(model_shadow_agreement_total{namespace="$namespace",'
        'pod=~"$deployment-[a-z0-9]+-[a-z0-9]+",result="disagree"}[$window]))'
    ),
    "absDiffSum": (
        'sum(increase(model_shadow_abs_diff_sum{namespace="$namespace",'
        'pod=~"$deployment-[a-z0-9]+-[a-z0-9]+"}[$window]))'
    ),
    "absDiffCount": (
        'sum(increase(model_shadow_abs_diff_count{namespace="$namespace",'
        'pod=~"$deployment-[a-z0-9]+-[a-z0-9]+"}[$window]))'
    ),
    "classes": (
        "sum by (class) (increase(model_predicted_class_total"
        '{namespace="$namespace",pod=~"$deployment-[a-z0-9]+-[a-z0-9]+"}[$window]))'
    ),
}


class PrometheusProvider:
    """PromQL over the runtime's metrics, as Prometheus scraped them."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _query(
        self, promql: str, at: float | None = None
    ) -> list[tuple[Mapping[str, str], float]]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            response = requests.get(
                f"{self.url}/api/v1/query", params=params, timeout=self.timeout
            )
            response.raise_for_status()
            data = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise AnalysisError(f"Prometheus at {self.url}: {exc}") from exc
        if data.get("status") != "success":
            raise AnalysisError(f"Prometheus query failed: {data.get('error', data)}")
        result = []
        for item in data["data"]["result"]:
            value = float(item["value"][1])
            if value == value:  # drop NaN (no data)
                result.append((item.get("metric", {}), value))
        return result

    def _scalar(self, promql: str) -> float | None:
        rows = self._query(promql)
        return rows[0][1] if rows else None

    def _render(self, template: str, target: Target, window_seconds: float) -> str:
        # Milliseconds: a window cut to whole seconds would leave out the step's first
        # samples (and a longer one would take in the previous step's).
        window = f"{max(round(window_seconds * 1000), 1000)}ms"
        return string.Template(template).safe_substitute(
            namespace=target.namespace,
            deployment=target.deployment,
            service=target.service,
            version=target.version,
            window=window,
        )

    def classes(
        self, target: Target, window_seconds: float, at: float | None = None
    ) -> dict[str, float]:
        """Predicted rows by class of `target` over the window ending `at` (default now)."""
        promql = self._render(DEFAULT_QUERIES["classes"], target, window_seconds)
        return {str(m.get("class", "")): v for m, v in self._query(promql, at)}

    def _buckets(self, target: Target, window_seconds: float) -> dict[float, float]:
        promql = self._render(DEFAULT_QUERIES["buckets"], target, window_seconds)
        buckets: dict[float, float] = {}
        for metric, value in self._query(promql):
            try:
                buckets[float(metric.get("le", "nan"))] = value
            except ValueError:
                continue
        return {le: v for le, v in buckets.items() if le == le}

    def window(
        self, spec: AnalysisSpec, canary: Target, stable: Target, window_seconds: float
    ) -> Window:
        """The increases of both sides' counters over the last `window_seconds`.

        A default query with no series means nothing happened (0); an override that
        returns no data leaves its figure unknown, and its gate is inconclusive.
        """
        overrides = spec.queries
        overridden: set[str] = set()

        def scalar(promql: str, target: Target) -> float | None:
            return self._scalar(self._render(promql, target, window_seconds))

        requests_known = True
        if overrides is not None and overrides.requests:
            overridden.add("requests")
            count = scalar(overrides.requests, canary)
            requests_known = count is not None
        else:
            count = scalar(DEFAULT_QUERIES["requests"], canary) or 0.0
        errors = scalar(DEFAULT_QUERIES["errors"], canary) or 0.0
        error_rate = None
        if overrides is not None and overrides.error_rate:
            overridden.add("errorRate")
            error_rate = scalar(overrides.error_rate, canary)
        p95 = None
        if overrides is not None and overrides.latency_p95_ms:
            overridden.add("latencyP95Ms")
            p95 = scalar(overrides.latency_p95_ms, canary)
        canary_snap = Snapshot(
            requests=count or 0.0,
            errors=min(errors, count or 0.0),
            buckets=self._buckets(canary, window_seconds),
        )
        stable_snap = Snapshot(
            requests=scalar(DEFAULT_QUERIES["requests"], stable) or 0.0,
            errors=scalar(DEFAULT_QUERIES["errors"], stable) or 0.0,
        )
        if spec.max_prediction_shift is not None:
            canary_snap.classes = self.classes(canary, window_seconds)
            stable_snap.classes = self.classes(stable, window_seconds)
        if spec.min_agreement is not None:  # shadow phase, classifiers
            canary_snap.agree = scalar(DEFAULT_QUERIES["agree"], canary) or 0.0
            canary_snap.disagree = scalar(DEFAULT_QUERIES["disagree"], canary) or 0.0
        if spec.max_mean_abs_diff is not None:  # shadow phase, regressors
            canary_snap.abs_diff_sum = scalar(DEFAULT_QUERIES["absDiffSum"], canary) or 0.0
            canary_snap.abs_diff_count = scalar(DEFAULT_QUERIES["absDiffCount"], canary) or 0.0
        return Window(
            canary=canary_snap,
            stable=stable_snap,
            error_rate_override=error_rate,
            p95_ms_override=p95,
            overridden=frozenset(overridden),
            requests_known=requests_known,
        )

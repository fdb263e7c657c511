"""Where analysis figures come from: the pods themselves, or Prometheus.

`PodsProvider` scrapes /metrics of the runtime pods behind a Service (found through its
EndpointSlices, so only ready endpoints count) and keeps the scrape taken when a step
began, in memory; a step whose starting scrape was lost (operator restart) takes a new
one and waits. `PrometheusProvider` asks PromQL for the increase of the same counters
over the step's interval.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

import requests

from modelship_operator.api import AnalysisSpec
from modelship_operator.k8s import ApiError, KubeClient, kind_of
from modelship_operator.rollout.analysis import (
    Figures,
    Snapshot,
    figures_from,
    merge,
    parse_metrics,
)

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


def endpoints(client: KubeClient, target: Target, port_name: str = "http") -> list[str]:
    """host:port of every ready pod of `target` behind its Service."""
    try:
        slices = client.list(
            ENDPOINT_SLICE, target.namespace, f"kubernetes.io/service-name={target.service}"
        )
    except ApiError as exc:
        raise AnalysisError(f"cannot list EndpointSlices of {target.service}: {exc}") from exc
    found: list[str] = []
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
                found.append(f"{host}:{port}")
    return sorted(set(found))


def scrape(addresses: list[str], timeout: float = 3.0) -> Snapshot:
    """Summed counters of the pods at `addresses`; unreachable pods raise AnalysisError."""
    snapshots = []
    for address in addresses:
        try:
            response = requests.get(f"http://{address}/metrics", timeout=timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise AnalysisError(f"cannot scrape {address}: {exc}") from exc
        snapshots.append(parse_metrics(response.text))
    return merge(snapshots)


class PodsProvider:
    """Counter deltas between the scrape at a step's start and the one at its end."""

    def __init__(self, client: KubeClient, timeout: float = 3.0) -> None:
        self.client = client
        self.timeout = timeout
        self._baselines: dict[tuple[str, str, float], tuple[Snapshot, Snapshot]] = {}

    def _scrape_both(self, canary: Target, stable: Target) -> tuple[Snapshot, Snapshot]:
        canary_snap = scrape(endpoints(self.client, canary), self.timeout)
        stable_snap = scrape(endpoints(self.client, stable), self.timeout)
        return canary_snap, stable_snap

    def begin(self, canary: Target, stable: Target, step_started_at: float) -> None:
        """Take the scrape a step is measured from."""
        key = (canary.namespace, canary.deployment, step_started_at)
        if key not in self._baselines:
            self._baselines[key] = self._scrape_both(canary, stable)

    def figures(self, canary: Target, stable: Target, step_started_at: float) -> Figures | None:
        """Figures since the step began; None when its starting scrape was lost (begins now)."""
        key = (canary.namespace, canary.deployment, step_started_at)
        baseline = self._baselines.get(key)
        now_canary, now_stable = self._scrape_both(canary, stable)
        if baseline is None:
            self._baselines[key] = (now_canary, now_stable)
            return None
        return figures_from(now_canary - baseline[0], now_stable - baseline[1])

    def forget(self, namespace: str, deployment: str) -> None:
        for key in [k for k in self._baselines if k[:2] == (namespace, deployment)]:
            del self._baselines[key]


DEFAULT_QUERIES = {
    "requests": (
        'sum(increase(http_requests_total{namespace="$namespace",pod=~"$deployment-.*",'
        'route=~"' + PREDICT_ROUTES + '"}[$window]))'
    ),
    "errors": (
        'sum(increase(http_requests_total{namespace="$namespace",pod=~"$deployment-.*",'
        'route=~"' + PREDICT_ROUTES + '",status=~"5.."}[$window]))'
    ),
    "latencyP95Ms": (
        "1000 * histogram_quantile(0.95, sum by (le) (increase("
        'http_request_duration_seconds_bucket{namespace="$namespace",pod=~"$deployment-.*",'
        'route=~"' + PREDICT_ROUTES + '"}[$window])))'
    ),
    "classes": (
        "sum by (class) (increase(model_predicted_class_total"
        '{namespace="$namespace",pod=~"$deployment-.*"}[$window]))'
    ),
}


class PrometheusProvider:
    """PromQL over the runtime's metrics, as Prometheus scraped them."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _query(self, promql: str) -> list[tuple[Mapping[str, str], float]]:
        try:
            response = requests.get(
                f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout
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

    def figures(
        self, spec: AnalysisSpec, canary: Target, stable: Target, window_seconds: float
    ) -> Figures:
        # Milliseconds: a window cut to whole seconds would leave out the step's first
        # samples (and a longer one would take in the previous step's).
        window = f"{max(round(window_seconds * 1000), 1000)}ms"

        def render(template: str, target: Target) -> str:
            return string.Template(template).safe_substitute(
                namespace=target.namespace,
                deployment=target.deployment,
                service=target.service,
                version=target.version,
                window=window,
            )

        overrides = spec.queries
        requests_q = (overrides.requests if overrides else None) or DEFAULT_QUERIES["requests"]
        p95_q = (overrides.latency_p95_ms if overrides else None) or DEFAULT_QUERIES[
            "latencyP95Ms"
        ]
        count = self._scalar(render(requests_q, canary)) or 0.0
        if overrides is not None and overrides.error_rate:
            error_rate = self._scalar(render(overrides.error_rate, canary))
        else:
            errors = self._scalar(render(DEFAULT_QUERIES["errors"], canary)) or 0.0
            error_rate = errors / count if count > 0 else None
        p95 = self._scalar(render(p95_q, canary))
        shift = None
        if spec.max_prediction_shift is not None:
            from modelship_operator.rollout.analysis import population_stability_index

            canary_classes = {
                str(m.get("class", "")): v
                for m, v in self._query(render(DEFAULT_QUERIES["classes"], canary))
            }
            stable_classes = {
                str(m.get("class", "")): v
                for m, v in self._query(render(DEFAULT_QUERIES["classes"], stable))
            }
            shift = population_stability_index(stable_classes, canary_classes)
        return Figures(
            requests=round(count),
            error_rate=error_rate,
            latency_p95_ms=p95,
            prediction_shift=shift,
        )

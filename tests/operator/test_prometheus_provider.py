"""The `prometheus` analysis provider against a real Prometheus server scraping real
runtime processes.

Prometheus (the Debian package) runs on a free port with a temporary storage directory
and a static scrape configuration that gives each runtime the `namespace` and `pod`
labels the default queries select on, as the Kubernetes service discovery would. The
figures PromQL gives must be those of the traffic the test sent: the error rate, the
p95 and the prediction shift exactly as the pods provider computes them from the same
counters (increase()'s extrapolation scales every series of one scrape alike, so shares
and quantiles are unaffected), the request count within that extrapolation.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kube_emulator import wait_for
from modelship_operator.api import AnalysisSpec
from modelship_operator.rollout.analysis import Window, analyse, parse_metrics
from modelship_operator.rollout.providers import AnalysisError, PrometheusProvider, Target
from runtime_proc import (
    RUNTIME,
    Runtime,
    flaky_model,
    free_port,
    good_model,
    iris_rows,
    save_model,
    start_all,
)

PROMETHEUS = shutil.which("prometheus")
NS = "ml"
STABLE = Target(NS, "iris", "iris-v1", "1")
CANARY = Target(NS, "iris--canary", "iris-v3", "3")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None or not RUNTIME.exists(),
    reason="the prometheus binary is missing (Debian package prometheus; make setup "
    "installs it as root)" if PROMETHEUS is None else "modelship-runtime is not installed",
)


class Prometheus:
    def __init__(self, root: Path, targets: dict[str, Runtime]) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        static = "\n".join(
            f"      - targets: ['127.0.0.1:{runtime.port}']\n"
            f"        labels: {{namespace: {NS}, pod: {pod}}}"
            for pod, runtime in targets.items()
        )
        self.config = root / "prometheus.yml"
        self.config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: modelship-runtime\n"
            "    scrape_interval: 1s\n"
            "    static_configs:\n" + static + "\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        assert PROMETHEUS is not None
        with (self.root / "prometheus.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.root / "prometheus.log").read_text())
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("prometheus did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def query(self, promql: str) -> list[tuple[dict[str, str], float, float]]:
        """(labels, sample time, value) of an instant query."""
        data = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5).json()
        assert data["status"] == "success", data
        return [(r["metric"], float(r["value"][0]), float(r["value"][1]))
                for r in data["data"]["result"]]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Prometheus, Runtime, Runtime]]:
    root = tmp_path_factory.mktemp("prometheus")
    stable = Runtime(["--model-dir", str(save_model(good_model(), root / "v1"))], root / "v1.log")
    canary = Runtime(["--model-dir", str(save_model(flaky_model(), root / "v3"))],
                     root / "v3.log")
    prometheus: Prometheus | None = None
    try:
        start_all([stable, canary])
        pods = {"iris-v1-6d4f9c7b8-abc12": stable, "iris-v3-5c8d7f6b9-abc12": canary}
        prometheus = Prometheus(root, pods).start()
        yield prometheus, stable, canary
    finally:
        if prometheus is not None:
            prometheus.stop()
        stable.stop()
        canary.stop()


def last_scrape(prometheus: Prometheus, pod: str) -> float:
    rows = prometheus.query(f'timestamp(up{{pod="{pod}"}})')
    return rows[0][2] if rows else 0.0


def scraped_count(prometheus: Prometheus, pod: str) -> float:
    rows = prometheus.query(f'sum(http_requests_total{{pod="{pod}",route="/predict"}})')
    return rows[0][2] if rows else -1.0


def send(runtime: Runtime, rows: list[list[float]], bad: int) -> dict[int, int]:
    codes: dict[int, int] = {}
    with httpx.Client(base_url=runtime.url, timeout=10) as client:
        for row in rows:
            code = client.post("/predict", json={"features": row}).status_code
            codes[code] = codes.get(code, 0) + 1
        for _ in range(bad):
            code = client.post("/predict", json={"features": [1.0, 2.0]}).status_code
            codes[code] = codes.get(code, 0) + 1
    return codes


def test_figures_match_the_traffic_sent(stack: tuple[Prometheus, Runtime, Runtime]) -> None:
    prometheus, stable, canary = stack
    rows = iris_rows()
    # Every series exists before the measured window, with counts larger than what the
    # window adds: a series born inside a window loses its first increase, and one that
    # starts near zero is extrapolated differently from the others (increase() does not
    # extrapolate a counter below zero).
    warm = rows[1::2] + rows[100::2]
    send(stable, warm, 20)
    send(canary, warm, 20)  # includes rows the flaky model refuses
    for pod, runtime in (("iris-v1-6d4f9c7b8-abc12", stable), ("iris-v3-5c8d7f6b9-abc12", canary)):
        total = parse_metrics(runtime.metrics()).requests
        wait_for(lambda p=pod, t=total: scraped_count(prometheus, p) == t,
                 what=f"Prometheus to scrape {pod}")
    # The window opens a scrape of each pod before the traffic and closes a scrape after.
    start = time.time()

    def both_scraped_after(moment: float) -> bool:
        return min(last_scrape(prometheus, "iris-v1-6d4f9c7b8-abc12"),
                   last_scrape(prometheus, "iris-v3-5c8d7f6b9-abc12")) > moment

    wait_for(lambda: both_scraped_after(start), what="a scrape of each pod in the window")
    before = (parse_metrics(canary.metrics()), parse_metrics(stable.metrics()))

    codes = send(canary, rows[::2], 10)
    send(stable, rows[::2], 0)
    after = (parse_metrics(canary.metrics()), parse_metrics(stable.metrics()))
    for pod, snap in (("iris-v3-5c8d7f6b9-abc12", after[0]), ("iris-v1-6d4f9c7b8-abc12", after[1])):
        wait_for(lambda p=pod, t=snap.requests: scraped_count(prometheus, p) == t,
                 what=f"Prometheus to scrape {pod} after the traffic")
    done = time.time()
    wait_for(lambda: both_scraped_after(done), what="a scrape of each pod after the traffic")
    window = time.time() - start

    spec = AnalysisSpec(provider="prometheus", prometheusUrl=prometheus.url, min_requests=10,
                        max_prediction_shift=0.2, min_predictions=10)
    measured = PrometheusProvider(prometheus.url).window(spec, CANARY, STABLE, window)
    _, figures = analyse(measured, spec)
    _, exact = analyse(Window(after[0] - before[0], after[1] - before[1]), spec)

    sent = sum(codes.values())
    assert sent == 85 and codes[400] == 10 and codes.get(500, 0) > 0
    assert exact["requests"] == sent
    # increase() extrapolates from the first and last samples in the window to its edges,
    # by at most 1.1 scrape intervals (1 s) at each: never fewer, at most that much more.
    assert sent <= figures["requests"] <= math.ceil(sent * window / (window - 2.2)), window
    assert exact["errorRate"] == pytest.approx(codes[500] / sent, abs=1e-6)
    assert figures["errorRate"] == pytest.approx(exact["errorRate"], rel=0.02)
    assert figures["latencyP95Ms"] == pytest.approx(exact["latencyP95Ms"], rel=0.1)
    # The histogram itself comes back, bucket by bucket, for the latency gate's counts.
    assert measured.canary.buckets[math.inf] == pytest.approx(measured.canary.requests, rel=0.02)
    assert "predictionShift" in figures and "predictionShift" in exact
    assert figures["predictionShift"] == pytest.approx(exact["predictionShift"], rel=0.1,
                                                       abs=0.01)

    # An override query is used as given: only successful requests count here, and the
    # error rate is the share of every non-2xx answer.
    selector = 'namespace="$namespace",pod=~"$deployment-.*",route="/predict"'
    overridden = AnalysisSpec.model_validate({
        "provider": "prometheus", "prometheusUrl": prometheus.url, "queries": {
            "requests": f'sum(increase(http_requests_total{{{selector},status="200"}}[$window]))',
            "errorRate": f'sum(increase(http_requests_total{{{selector},status!="200"}}[$window]))'
                         f' / sum(increase(http_requests_total{{{selector}}}[$window]))',
        },
    })
    custom = PrometheusProvider(prometheus.url).window(overridden, CANARY, STABLE, window)
    assert codes[200] <= custom.canary.requests < measured.canary.requests
    assert custom.error_rate_override == pytest.approx((codes[500] + codes[400]) / sent,
                                                       rel=0.02)
    # An override that matches nothing is no data: its gate is inconclusive, never a pass.
    empty = AnalysisSpec.model_validate({
        "provider": "prometheus", "prometheusUrl": prometheus.url, "minRequests": 10,
        "queries": {"errorRate": 'sum(rate(http_requests_total{route="/nowhere"}[$window]))'},
    })
    nothing = PrometheusProvider(prometheus.url).window(empty, CANARY, STABLE, window)
    verdict, _ = analyse(nothing, empty)
    assert nothing.error_rate_override is None
    assert verdict.outcome.value == "Inconclusive"
    assert "the errorRate query returned no data" in verdict.message


def test_a_query_prometheus_refuses_is_an_analysis_error(
    stack: tuple[Prometheus, Runtime, Runtime],
) -> None:
    prometheus = stack[0]
    spec = AnalysisSpec.model_validate({
        "provider": "prometheus", "prometheusUrl": prometheus.url,
        "queries": {"requests": "sum(rate(http_requests_total[$window]"},
    })
    with pytest.raises(AnalysisError, match="Prometheus"):
        PrometheusProvider(prometheus.url).window(spec, CANARY, STABLE, 5.0)
    unreachable = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(AnalysisError, match=unreachable):
        PrometheusProvider(unreachable, timeout=1).window(
            AnalysisSpec(provider="prometheus", prometheusUrl=unreachable), CANARY, STABLE, 5.0)

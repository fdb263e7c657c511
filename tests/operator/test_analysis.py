"""Analysis figures: parse_metrics on the /metrics text of real runtime processes after
real requests, the histogram quantile against numpy, PSI's properties, and analyse()'s
table of windows and verdicts."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from modelship_operator.api import AnalysisSpec
from modelship_operator.rollout.analysis import Snapshot, Window, analyse, parse_metrics
from modelship_operator.rollout.gates import (
    Outcome,
    population_stability_index,
    quantile_from_buckets,
)
from modelship_operator.rollout.providers import increase, scrape
from prometheus_client.parser import text_string_to_metric_families
from runtime_proc import (
    RUNTIME,
    Runtime,
    flaky_model,
    good_model,
    iris_rows,
    save_model,
    start_all,
)

# --- parse_metrics on a real runtime's /metrics --------------------------------------------


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Runtime]]:
    if not RUNTIME.exists():
        pytest.skip("the modelship-runtime console script is not installed (make setup)")
    root = tmp_path_factory.mktemp("analysis")
    served = {
        "good": Runtime(["--model-dir", str(save_model(good_model(), root / "good"))],
                        root / "good.log"),
        "flaky": Runtime(["--model-dir", str(save_model(flaky_model(), root / "flaky"))],
                         root / "flaky.log"),
    }
    try:
        start_all(list(served.values()))
        yield served
    finally:
        for runtime in served.values():
            runtime.stop()


def address(runtime: Runtime) -> str:
    return runtime.url.removeprefix("http://")


def test_parse_metrics_counts_real_requests(runtimes: dict[str, Runtime]) -> None:
    runtime = runtimes["good"]
    rows = iris_rows()
    before = parse_metrics(runtime.metrics())
    predicted: dict[str, int] = {}
    with httpx.Client(base_url=runtime.url, timeout=10) as client:
        for row in rows[::5]:  # 30 single rows
            r = client.post("/predict", json={"features": row})
            assert r.status_code == 200
            label = str(r.json()["prediction"])
            predicted[label] = predicted.get(label, 0) + 1
        for start in range(0, 20, 4):  # 5 batches of 4 rows
            r = client.post("/predict", json={"instances": rows[start:start + 4]})
            assert r.status_code == 200
            for label in r.json()["predictions"]:
                predicted[str(label)] = predicted.get(str(label), 0) + 1
        bad = [
            client.post("/predict", json={"features": [1.0, 2.0]}),  # wrong feature count
            client.post("/predict", json={"features": ["a", 1, 2, 3]}),  # not a number
            client.post("/predict", content=b"{not json", headers={
                "Content-Type": "application/json"}),
            client.post("/predict", json={"instances": []}),
        ]
        assert [r.status_code // 100 for r in bad] == [4, 4, 4, 4]
        for _ in range(5):  # not prediction routes: never counted
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 200
    after = scrape({"pod-a": address(runtime)})  # the provider's own scrape, over HTTP
    delta = increase(after, {"pod-a": before})

    assert delta.requests == 30 + 5 + len(bad)
    assert delta.errors == 0  # 4xx are the client's mistakes, not the model's
    assert {k: int(v) for k, v in delta.classes.items() if v} == predicted
    assert sum(delta.classes.values()) == 30 + 20
    # The latency histogram: cumulative, and its +Inf bucket counts every request.
    counts = [delta.buckets[le] for le in sorted(delta.buckets)]
    assert counts == sorted(counts)
    assert delta.buckets[math.inf] == delta.requests
    verdict, record = analyse(Window(canary=delta), AnalysisSpec(min_requests=20))
    assert verdict.outcome is Outcome.PASS, verdict.message
    assert record["requests"] == 39 and record["errorRate"] == 0.0
    assert 0 < record["latencyP95Ms"] < 5000


def test_parse_metrics_counts_5xx_as_errors(runtimes: dict[str, Runtime]) -> None:
    runtime = runtimes["flaky"]
    rows = iris_rows()
    before = parse_metrics(runtime.metrics())
    codes: dict[int, int] = {}
    with httpx.Client(base_url=runtime.url, timeout=10) as client:
        for row in rows:
            code = client.post("/predict", json={"features": row}).status_code
            codes[code] = codes.get(code, 0) + 1
        for _ in range(6):
            code = client.post("/predict", json={"features": [1.0]}).status_code
            codes[code] = codes.get(code, 0) + 1
    expected_failures = sum(1 for row in rows if row[0] > 6.5)
    assert codes == {200: len(rows) - expected_failures, 500: expected_failures, 400: 6}
    delta = parse_metrics(runtime.metrics()) - before
    assert delta.requests == len(rows) + 6
    assert delta.errors == expected_failures
    assert sum(delta.classes.values()) == len(rows) - expected_failures
    verdict, record = analyse(Window(canary=delta), AnalysisSpec(min_requests=10))
    assert record["errorRate"] == pytest.approx(expected_failures / (len(rows) + 6), abs=1e-6)
    assert verdict.outcome is Outcome.FAIL
    assert f"error rate {record['errorRate']:.4f} ({expected_failures}/{len(rows) + 6}" in (
        verdict.message
    )


def test_parse_metrics_counts_a_client_that_left_neither_as_request_nor_error(
        runtimes: dict[str, Runtime]) -> None:
    """A client that disconnects before its answer is status 499 on the runtime: out of
    the error rate's numerator and out of its denominator."""
    runtime = runtimes["good"]
    host, port = address(runtime).rsplit(":", 1)
    before = parse_metrics(runtime.metrics())
    text_before = runtime.metrics()
    name = httpx.get(f"{runtime.url}/readyz", timeout=10).json()["model"]
    for path in ("/predict", f"/v1/models/{name}:predict", f"/v2/models/{name}/infer") * 2:
        with socket.create_connection((host, int(port))) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{"
                      .encode())
    with httpx.Client(base_url=runtime.url, timeout=10) as client:
        assert client.post("/predict", json={"features": iris_rows()[0]}).status_code == 200

    def left(text: str) -> float:
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "http_requests_total" and s.labels["status"] == "499")

    deadline = time.monotonic() + 10
    while left(text := runtime.metrics()) - left(text_before) < 6:
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    delta = parse_metrics(text) - before
    assert left(text) - left(text_before) == 6  # the runtime did count them, as 499
    assert delta.requests == 1
    assert delta.errors == 0


def test_snapshot_delta_survives_a_pod_restart() -> None:
    """A counter lower than before means a restarted pod: its count starts from 0."""
    older = Snapshot(requests=100, errors=5, buckets={0.1: 80, math.inf: 100},
                     classes={"0": 60, "1": 40})
    newer = Snapshot(requests=12, errors=1, buckets={0.1: 10, math.inf: 12},
                     classes={"0": 130, "1": 7})
    delta = newer - older
    assert (delta.requests, delta.errors) == (12, 1)
    assert delta.buckets == {0.1: 10, math.inf: 12}
    assert delta.classes == {"0": 70, "1": 7}


# --- the histogram quantile against numpy ---------------------------------------------------


def cumulative(samples: np.ndarray, bounds: np.ndarray) -> dict[float, float]:
    buckets = {float(le): float(np.count_nonzero(samples <= le)) for le in bounds}
    buckets[math.inf] = float(len(samples))
    return buckets


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("seed", range(5))
def test_quantile_matches_numpy_within_a_bucket(q: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples = rng.lognormal(mean=-4.0, sigma=0.8, size=5000)  # latencies around 20 ms
    bounds = np.geomspace(1e-4, 10.0, 80)
    estimate = quantile_from_buckets(cumulative(samples, bounds), q)
    exact = float(np.quantile(samples, q))
    assert estimate is not None
    # The estimate lies in the bucket that holds the exact quantile.
    upper = bounds[np.searchsorted(bounds, exact)]
    lower = bounds[np.searchsorted(bounds, exact) - 1]
    assert lower <= estimate <= upper
    assert estimate == pytest.approx(exact, rel=0.1)


@pytest.mark.parametrize("q", [0.1, 0.5, 0.95])
def test_quantile_is_exact_for_uniform_data(q: float) -> None:
    samples = np.random.default_rng(1).uniform(0.0, 1.0, 100_000)
    estimate = quantile_from_buckets(cumulative(samples, np.linspace(0.1, 1.0, 10)), q)
    assert estimate == pytest.approx(float(np.quantile(samples, q)), abs=0.005)


def test_quantile_edges_follow_promql() -> None:
    assert quantile_from_buckets({}, 0.95) is None
    assert quantile_from_buckets({0.1: 0.0, math.inf: 0.0}, 0.95) is None
    # The rank falls in the +Inf bucket: the highest finite bound, as histogram_quantile.
    assert quantile_from_buckets({0.1: 1.0, 0.5: 2.0, math.inf: 10.0}, 0.95) == 0.5
    # The first bucket interpolates from 0.
    assert quantile_from_buckets({0.2: 10.0, math.inf: 10.0}, 0.5) == pytest.approx(0.1)


# --- PSI --------------------------------------------------------------------------------------


def test_psi_is_zero_for_equal_distributions() -> None:
    stable = {"0": 50.0, "1": 30.0, "2": 20.0}
    assert population_stability_index(stable, stable) == 0.0
    scaled = {k: 7 * v for k, v in stable.items()}  # same shares, other traffic
    # Only the half-count smoothing separates them.
    assert population_stability_index(stable, scaled) == pytest.approx(0.0, abs=1e-4)


def test_psi_grows_with_the_shift() -> None:
    stable = {"0": 50.0, "1": 50.0}
    values = [
        population_stability_index(stable, {"0": 50.0 + d, "1": 50.0 - d})
        for d in (0, 5, 10, 20, 30, 40, 49)
    ]
    assert all(v is not None for v in values)
    assert values == sorted(values) and len(set(values)) == len(values)
    assert values[1] is not None and values[1] < 0.1 < values[-1]  # type: ignore[operator]


def test_psi_is_finite_with_a_class_on_one_side() -> None:
    psi = population_stability_index({"0": 100.0, "1": 100.0}, {"0": 100.0, "2": 100.0})
    assert psi is not None and math.isfinite(psi) and psi > 0.25
    one_sided = population_stability_index({"0": 100.0}, {"1": 100.0})
    assert one_sided is not None and math.isfinite(one_sided) and one_sided > psi


def test_psi_without_data_is_none() -> None:
    assert population_stability_index({}, {"0": 1.0}) is None
    assert population_stability_index({"0": 1.0}, {}) is None
    assert population_stability_index({"0": 0.0}, {"0": 5.0}) is None


@given(
    st.dictionaries(st.sampled_from("abcde"), st.floats(0, 1e6), min_size=1),
    st.dictionaries(st.sampled_from("abcde"), st.floats(0, 1e6), min_size=1),
)
def test_psi_is_non_negative_and_symmetric(
    expected: dict[str, float], actual: dict[str, float]
) -> None:
    psi = population_stability_index(expected, actual)
    if sum(expected.values()) <= 0 or sum(actual.values()) <= 0:
        assert psi is None
        return
    assert psi is not None and psi >= -1e-12 and math.isfinite(psi)
    assert population_stability_index(actual, expected) == pytest.approx(psi, abs=1e-9)


# --- analyse: windows to verdicts ----------------------------------------------------------

SPEC = AnalysisSpec(max_error_rate=0.01, max_latency_p95_ms=500, min_requests=20,
                    max_prediction_shift=0.2, min_predictions=50)


def snap(requests: int, errors: int = 0, slow: int = 0, classes: dict[str, float] | None = None
         ) -> Snapshot:
    """`requests` of which `errors` failed and `slow` took over a second."""
    return Snapshot(requests=requests, errors=errors,
                    buckets={0.05: requests - slow, 0.5: requests - slow, 1.0: requests - slow,
                             math.inf: requests},
                    classes=dict(classes or {}))


EVEN = {"0": 100.0, "1": 100.0, "2": 100.0}


@pytest.mark.parametrize(
    ("window", "baseline", "outcome", "quoted"),
    [
        # Too few requests: inconclusive, whatever the figures say.
        (Window(snap(5, classes=EVEN)), EVEN, Outcome.INCONCLUSIVE,
         ["5 canary requests, fewer than minRequests 20"]),
        (Window(snap(19, errors=19, slow=19, classes=EVEN)), EVEN, Outcome.INCONCLUSIVE,
         ["fewer than minRequests 20"]),
        # No traffic at all is never a pass.
        (Window(Snapshot()), EVEN, Outcome.INCONCLUSIVE, ["0 canary requests"]),
        # Enough requests, clean, same classes: pass.
        (Window(snap(300, classes=EVEN)), EVEN, Outcome.PASS, ["error rate 0.0000 (0/300)"]),
        # One error in 20 is not evidence against a 1% budget; five in 20 are.
        (Window(snap(20, errors=1, classes=EVEN)), EVEN, Outcome.PASS, ["(1/20)"]),
        (Window(snap(20, errors=5, classes=EVEN)), EVEN, Outcome.FAIL,
         ["error rate 0.2500 (5/20; at least", "> maxErrorRate 0.01"]),
        # Latency: 30 of 300 over a second is p95 > 500 ms, significantly.
        (Window(snap(300, slow=30, classes=EVEN)), EVEN, Outcome.FAIL,
         ["maxLatencyP95Ms 500", "30/300 requests slower"]),
        (Window(snap(300, slow=15, classes=EVEN)), EVEN, Outcome.PASS, ["(15/300 slower"]),
        # The shift gate: judged against the baseline even when the stable got nothing.
        (Window(snap(300, classes={"0": 300.0}), Snapshot()), EVEN, Outcome.FAIL,
         ["prediction shift PSI", "> maxPredictionShift 0.2"]),
        # ... and inconclusive without enough predictions on either side.
        (Window(snap(300, classes={"0": 40.0})), EVEN, Outcome.INCONCLUSIVE,
         ["40 canary predictions, fewer than minPredictions 50"]),
        (Window(snap(300, classes=EVEN)), None, Outcome.INCONCLUSIVE,
         ["0 predictions in the stable version's predictions"]),
        # No baseline, but the stable's own predictions in the window are a reference.
        (Window(snap(300, classes=EVEN), snap(300, classes=EVEN)), None, Outcome.PASS,
         ["PSI 0.000"]),
        # A failing gate decides over an inconclusive one.
        (Window(snap(100, errors=50, classes={"0": 3.0})), EVEN, Outcome.FAIL,
         ["error rate 0.5000"]),
    ],
)
def test_analyse(window: Window, baseline: dict[str, float] | None, outcome: Outcome,
                 quoted: list[str]) -> None:
    verdict, record = analyse(window, SPEC, baseline)
    assert verdict.outcome is outcome, verdict.message
    for text in quoted:
        assert text in verdict.message
    assert record["verdict"] == outcome.value
    assert {g["gate"] for g in record["gates"]} == {"errorRate", "latencyP95", "predictionShift"}


def test_analyse_against_the_stable_error_rate() -> None:
    """3% of 100 is not significantly above a 1% budget on its own, but is significantly
    above a stable that failed 0 of 2000 in the same window."""
    spec = AnalysisSpec(max_error_rate=0.01, min_requests=20)
    alone, _ = analyse(Window(snap(100, errors=3)), spec)
    assert alone.outcome is Outcome.PASS, alone.message
    against, _ = analyse(Window(snap(100, errors=3), snap(2000, errors=0)), spec)
    assert against.outcome is Outcome.FAIL
    assert "significantly above the stable version's 0.0000 (0/2000)" in against.message
    # A stable as bad as the canary: not significantly worse.
    same, _ = analyse(Window(snap(100, errors=3), snap(2000, errors=60)), spec)
    assert same.outcome is Outcome.PASS
    # A stricter confidence needs more evidence for the same counts.
    strict, _ = analyse(Window(snap(20, errors=2)), spec.model_copy(update={"confidence": 0.999}))
    assert strict.outcome is Outcome.PASS
    loose, _ = analyse(Window(snap(20, errors=2)), spec)
    assert loose.outcome is Outcome.FAIL and "at 95% confidence" in loose.message


def test_overrides_without_data_are_inconclusive_never_pass() -> None:
    """A PromQL override returning no data no longer disables its gate."""
    base = snap(300)
    for overridden, window in [
        ("errorRate", Window(base, overridden=frozenset({"errorRate"}))),
        ("latencyP95Ms", Window(base, overridden=frozenset({"latencyP95Ms"}))),
        ("requests", Window(base, overridden=frozenset({"requests"}), requests_known=False)),
    ]:
        verdict, record = analyse(window, AnalysisSpec(min_requests=20))
        assert verdict.outcome is Outcome.INCONCLUSIVE, overridden
        assert "query returned no data" in verdict.message
        assert "passed" not in record
    ok, _ = analyse(Window(base, error_rate_override=0.0, p95_ms_override=12.0,
                           overridden=frozenset({"errorRate", "latencyP95Ms"})),
                    AnalysisSpec(min_requests=20))
    assert ok.outcome is Outcome.PASS
    slow, _ = analyse(Window(base, p95_ms_override=900.0,
                             overridden=frozenset({"latencyP95Ms"})),
                      AnalysisSpec(min_requests=20))
    assert slow.outcome is Outcome.FAIL and "p95 900.0 ms > maxLatencyP95Ms" in slow.message


def test_min_requests_zero_still_needs_a_request() -> None:
    verdict, _ = analyse(Window(Snapshot()), AnalysisSpec(min_requests=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE

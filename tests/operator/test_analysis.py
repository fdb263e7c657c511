"""Analysis figures: parse_metrics on the /metrics text of real runtime processes after
real requests, the histogram quantile against numpy, PSI's properties, and judge's table."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from modelship_operator.api import AnalysisSpec
from modelship_operator.rollout.analysis import (
    Figures,
    Snapshot,
    figures_from,
    judge,
    parse_metrics,
    population_stability_index,
    quantile_from_buckets,
)
from modelship_operator.rollout.providers import scrape
from modelship_operator.rollout.state import Outcome
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
    after = scrape([address(runtime)])  # the provider's own scrape, over HTTP
    delta = after - before

    assert delta.requests == 30 + 5 + len(bad)
    assert delta.errors == 0  # 4xx are the client's mistakes, not the model's
    assert {k: int(v) for k, v in delta.classes.items() if v} == predicted
    assert sum(delta.classes.values()) == 30 + 20
    # The latency histogram: cumulative, and its +Inf bucket counts every request.
    counts = [delta.buckets[le] for le in sorted(delta.buckets)]
    assert counts == sorted(counts)
    assert delta.buckets[math.inf] == delta.requests
    figures = figures_from(delta)
    assert figures.requests == 39 and figures.error_rate == 0.0
    assert figures.latency_p95_ms is not None and 0 < figures.latency_p95_ms < 5000


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
    figures = figures_from(delta)
    assert figures.error_rate == pytest.approx(expected_failures / (len(rows) + 6))
    verdict = judge(figures, AnalysisSpec(min_requests=10))
    assert verdict.outcome is Outcome.FAIL
    assert f"error rate {figures.error_rate:.4f} > 0.01" in verdict.message


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
    assert population_stability_index(stable, scaled) == pytest.approx(0.0, abs=1e-12)


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


# --- judge --------------------------------------------------------------------------------------

SPEC = AnalysisSpec(max_error_rate=0.01, max_latency_p95_ms=500, min_requests=20,
                    max_prediction_shift=0.2)


@pytest.mark.parametrize(
    ("figures", "spec", "outcome", "quoted"),
    [
        (Figures(5, 0.0, 10.0), SPEC, Outcome.WAIT, ["5 requests, fewer than 20"]),
        (Figures(19, 0.9, 900.0, 2.0), SPEC, Outcome.WAIT, ["19 requests, fewer than 20"]),
        (Figures(20, 0.0, 10.0), SPEC, Outcome.PASS, ["20 requests", "p95 10.0 ms"]),
        (Figures(100, 0.01, 500.0, 0.2), SPEC, Outcome.PASS, ["error rate 0.0100", "PSI 0.200"]),
        (Figures(100, 0.0, None), SPEC, Outcome.PASS, ["100 requests"]),
        (Figures(100, 0.0101, 10.0), SPEC, Outcome.FAIL, ["error rate 0.0101 > 0.01"]),
        (Figures(100, 0.0, 500.5), SPEC, Outcome.FAIL, ["p95 500.5 ms > 500.0 ms"]),
        (Figures(100, 0.0, 10.0, 0.21), SPEC, Outcome.FAIL, ["prediction shift (PSI) 0.210 > 0.2"]),
        (Figures(100, 0.5, 900.0, 3.0), SPEC, Outcome.FAIL,
         ["error rate 0.5000 > 0.01", "p95 900.0 ms > 500.0 ms", "(PSI) 3.000 > 0.2",
          "[100 requests"]),
        # No threshold set for the shift: any shift passes.
        (Figures(100, 0.0, 10.0, 5.0), AnalysisSpec(min_requests=20), Outcome.PASS, ["PSI 5.000"]),
        # minRequests 0: a step with no traffic passes.
        (Figures(0, None, None), AnalysisSpec(min_requests=0), Outcome.PASS, ["0 requests"]),
    ],
)
def test_judge(figures: Figures, spec: AnalysisSpec, outcome: Outcome,
               quoted: list[str]) -> None:
    verdict = judge(figures, spec)
    assert verdict.outcome is outcome
    for text in quoted:
        assert text in verdict.message
    assert verdict.figures == figures.as_dict()


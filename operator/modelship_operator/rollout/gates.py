"""The gates a canary step must pass, each answering pass, fail or inconclusive.

Every gate is a pure function of counts, so the numbers below can be checked by hand
and the tests drive them directly.

Error rate. ``e`` failed (5xx) of ``n`` canary requests. The gate fails when the
canary's error rate is *significantly* above ``maxErrorRate``: the one-sided Wilson
score lower bound of e/n at ``confidence`` exceeds it. It also fails when the canary's
rate is above ``maxErrorRate`` and significantly above the stable version's rate in the
same window (the Newcombe-Wilson lower bound of the difference is above 0). One noisy
point estimate never decides: 1 error in 20 requests (5%) does not fail a 1% budget at
95% confidence (its lower bound is 0.34%), 2 in 20 do (2.2%); see ``_wilson``.

Latency. The runtime's request-duration histogram gives, for a threshold ``T`` =
``maxLatencyP95Ms``, how many requests were certainly slower than ``T`` (those above
the smallest bucket bound at or over ``T``). p95 > T means more than 5% of requests are
slower than T, so the gate fails when the Wilson lower bound of that share is above
5%: the same test as the error rate, on the histogram's counts.

Prediction shift. The Population Stability Index of the canary's predicted-class
distribution against a reference distribution of the stable version's predictions:
``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)`` over classes, with shares smoothed by adding
half a prediction to every class of either side (Jeffreys' prior), so a class one side
never predicted gives a large but finite term. It fails above ``maxPredictionShift``.

Inconclusive. A gate with no data, a failed query, or fewer samples than it needs
(``minRequests`` requests for error rate and latency, ``minPredictions`` predictions on
each side for the shift) is inconclusive: the step holds and never promotes on it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

P95_SHARE = 0.05  # p95 above T <=> more than 5% of requests slower than T


class Outcome(enum.Enum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict, the figure it judged and a sentence a person can act on."""

    gate: str
    outcome: Outcome
    message: str
    figure: float | None = None

    def as_dict(self) -> dict[str, object]:
        result: dict[str, object] = {
            "gate": self.gate, "verdict": self.outcome.value, "message": self.message[:500]
        }
        if self.figure is not None and math.isfinite(self.figure):
            result["figure"] = round(self.figure, 6)
        return result


@dataclass(frozen=True)
class Verdict:
    """What an analysis concluded: the worst of its gates, with each gate's result."""

    outcome: Outcome
    message: str
    gates: tuple[GateResult, ...] = ()
    figures: dict[str, float | int | None] = field(default_factory=dict)


def combine(results: Iterable[GateResult], summary: str = "") -> Verdict:
    """Fail if any gate fails; else inconclusive if any is; else pass. No gate: inconclusive."""
    gates = tuple(results)
    if not gates:
        return Verdict(Outcome.INCONCLUSIVE, "no gate had anything to judge")
    failed = [g for g in gates if g.outcome is Outcome.FAIL]
    unsure = [g for g in gates if g.outcome is Outcome.INCONCLUSIVE]
    if failed:
        outcome, deciding = Outcome.FAIL, failed
    elif unsure:
        outcome, deciding = Outcome.INCONCLUSIVE, unsure
    else:
        outcome, deciding = Outcome.PASS, list(gates)
    message = "; ".join(g.message for g in deciding)
    if summary and outcome is not Outcome.PASS:
        message = f"{message} [{summary}]"
    return Verdict(outcome, message, gates)


def z_value(confidence: float) -> float:
    """The one-sided normal quantile for `confidence` (1.645 at 0.95)."""
    return NormalDist().inv_cdf(confidence)


def _wilson(successes: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval with continuity correction (Newcombe 1998, method 4).

    The correction keeps the bounds close to the exact Clopper-Pearson ones at the small
    counts a canary step sees (1 error in 20 requests is not evidence against a 1%
    budget: at 1%, 18% of 20-request windows hold at least one error).
    """
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    z2 = z * z
    denominator = 2 * (n + z2)
    if p <= 0:
        lower = 0.0
    else:
        root = z2 - 2 - 1 / n + 4 * p * (n * (1 - p) + 1)
        lower = (2 * n * p + z2 - 1 - z * math.sqrt(max(root, 0.0))) / denominator
    if p >= 1:
        upper = 1.0
    else:
        root = z2 + 2 - 1 / n + 4 * p * (n * (1 - p) - 1)
        upper = (2 * n * p + z2 + 1 + z * math.sqrt(max(root, 0.0))) / denominator
    return max(0.0, lower), min(1.0, upper)


EXACT_COUNT_LIMIT = 400  # up to this many events on the smaller side, exact bounds


def _binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (k small, see callers)."""
    if k <= 0 or p >= 1.0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    log_q = math.log1p(-p)
    log_ratio = math.log(p) - log_q
    term = n * log_q  # log P(X = 0)
    total = term
    for j in range(k - 1):
        term += math.log((n - j) / (j + 1)) + log_ratio
        high, low = (total, term) if total > term else (term, total)
        total = high + math.log1p(math.exp(low - high))
    return max(0.0, 1.0 - math.exp(total))


def _solve(f: object, lo: float, hi: float) -> float:
    """The root of an increasing `f` on [lo, hi] by bisection (to ~1e-12)."""
    assert callable(f)
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _bounds(successes: float, n: float, confidence: float) -> tuple[float, float]:
    """One-sided bounds at `confidence`: exact (Clopper-Pearson) at small counts, Wilson
    with continuity correction beyond (where the two agree to a small fraction)."""
    k, total = round(successes), round(n)
    if total <= 0:
        return 0.0, 1.0
    k = min(max(k, 0), total)
    if min(k, total - k) > EXACT_COUNT_LIMIT:
        return _wilson(k, total, z_value(confidence))
    alpha = 1.0 - confidence
    lower = 0.0 if k == 0 else _solve(
        lambda p: _binomial_tail(k, total, p) - alpha, 0.0, k / total)
    upper = 1.0 if k == total else _solve(
        lambda p: alpha - (1.0 - _binomial_tail(k + 1, total, p)), k / total, 1.0)
    return lower, upper


def wilson_lower(successes: float, n: float, confidence: float) -> float:
    """One-sided lower bound of a binomial share at `confidence` (see `_bounds`)."""
    return _bounds(successes, n, confidence)[0]


def wilson_upper(successes: float, n: float, confidence: float) -> float:
    """One-sided upper bound of a binomial share at `confidence` (see `_bounds`)."""
    return _bounds(successes, n, confidence)[1]


def difference_lower(
    e1: float, n1: float, e2: float, n2: float, confidence: float
) -> float:
    """Newcombe's hybrid lower bound of p1 - p2 at one-sided `confidence`, from the
    single-share bounds of `_bounds`."""
    p1, p2 = e1 / n1, e2 / n2
    l1, _ = _bounds(e1, n1, confidence)
    _, u2 = _bounds(e2, n2, confidence)
    return p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)


def error_rate_gate(
    requests: float,
    errors: float,
    *,
    max_error_rate: float,
    min_requests: int,
    confidence: float,
    stable_requests: float | None = None,
    stable_errors: float | None = None,
) -> GateResult:
    """Fail only when the canary's error rate is significantly too high (module docstring)."""
    gate = "errorRate"
    n, e = round(requests), min(round(errors), round(requests))
    if n <= 0 or n < min_requests:
        return GateResult(
            gate, Outcome.INCONCLUSIVE, f"{n} canary requests, fewer than minRequests "
            f"{min_requests}",
        )
    rate = e / n
    lower = wilson_lower(e, n, confidence)
    if lower > max_error_rate:
        return GateResult(
            gate, Outcome.FAIL,
            f"error rate {rate:.4f} ({e}/{n}; at least {lower:.4f} at {confidence * 100:g}% "
            f"confidence) > maxErrorRate {max_error_rate}", rate,
        )
    if (
        stable_requests is not None
        and stable_errors is not None
        and round(stable_requests) >= max(min_requests, 1)
        and rate > max_error_rate
    ):
        sn = round(stable_requests)
        se = min(round(stable_errors), sn)
        if difference_lower(e, n, se, sn, confidence) > 0:
            return GateResult(
                gate, Outcome.FAIL,
                f"error rate {rate:.4f} ({e}/{n}) > maxErrorRate {max_error_rate} and "
                f"significantly above the stable version's {se / sn:.4f} ({se}/{sn})", rate,
            )
    return GateResult(gate, Outcome.PASS, f"error rate {rate:.4f} ({e}/{n})", rate)


def slower_than(buckets: Mapping[float, float], threshold: float) -> tuple[float, float]:
    """(requests certainly slower than `threshold` seconds, all requests) of a histogram.

    `buckets` maps each upper bound ``le`` to its cumulative count (``+Inf`` for all).
    A request is certainly slower when it lies above the smallest bound >= threshold;
    with no such finite bound none is certain.
    """
    if not buckets:
        return 0.0, 0.0
    ordered = sorted(buckets.items())
    total = ordered[-1][1]
    at_or_above = [(le, count) for le, count in ordered if le >= threshold and math.isfinite(le)]
    if not at_or_above:
        return 0.0, total
    return max(0.0, total - at_or_above[0][1]), total


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


def latency_gate(
    buckets: Mapping[float, float],
    *,
    max_latency_p95_ms: float,
    min_requests: int,
    confidence: float,
    p95_ms_override: float | None = None,
    override_used: bool = False,
) -> GateResult:
    """p95 against maxLatencyP95Ms, from the histogram's counts (module docstring).

    With a PromQL override of the p95 (`override_used`), only a point figure exists: it
    is judged as it is, and no figure at all is inconclusive.
    """
    gate = "latencyP95"
    if override_used:
        if p95_ms_override is None or not math.isfinite(p95_ms_override):
            return GateResult(gate, Outcome.INCONCLUSIVE, "the p95 query returned no data")
        if p95_ms_override > max_latency_p95_ms:
            return GateResult(
                gate, Outcome.FAIL,
                f"p95 {p95_ms_override:.1f} ms > maxLatencyP95Ms {max_latency_p95_ms}",
                p95_ms_override,
            )
        return GateResult(gate, Outcome.PASS, f"p95 {p95_ms_override:.1f} ms", p95_ms_override)
    slow, total = slower_than(buckets, max_latency_p95_ms / 1000.0)
    n = round(total)
    if n <= 0 or n < min_requests:
        return GateResult(
            gate, Outcome.INCONCLUSIVE,
            f"{n} timed canary requests, fewer than minRequests {min_requests}",
        )
    p95 = quantile_from_buckets(buckets, 0.95)
    p95_ms = None if p95 is None else p95 * 1000.0
    shown = "unknown" if p95_ms is None else f"{p95_ms:.1f} ms"
    s = min(round(slow), n)
    lower = wilson_lower(s, n, confidence)
    if lower > P95_SHARE:
        return GateResult(
            gate, Outcome.FAIL,
            f"p95 {shown} > maxLatencyP95Ms {max_latency_p95_ms}: {s}/{n} requests slower "
            f"(at least {lower:.1%} at {confidence * 100:g}% confidence, more than 5%)", p95_ms,
        )
    return GateResult(gate, Outcome.PASS, f"p95 {shown} ({s}/{n} slower than "
                      f"{max_latency_p95_ms} ms)", p95_ms)


def population_stability_index(
    expected: Mapping[str, float], actual: Mapping[str, float], pseudo: float = 0.5
) -> float | None:
    """PSI of `actual` (canary) against `expected` (reference) class counts; None without data.

    Counts are smoothed by adding `pseudo` to every class seen on either side, so a
    class one side never predicted gives a large, finite term.
    """
    classes = sorted(set(expected) | set(actual))
    e_total = sum(max(v, 0.0) for v in expected.values())
    a_total = sum(max(v, 0.0) for v in actual.values())
    if not classes or e_total <= 0 or a_total <= 0:
        return None
    k = len(classes)
    psi = 0.0
    for cls in classes:
        e = (max(expected.get(cls, 0.0), 0.0) + pseudo) / (e_total + pseudo * k)
        a = (max(actual.get(cls, 0.0), 0.0) + pseudo) / (a_total + pseudo * k)
        psi += (a - e) * math.log(a / e)
    return psi


def prediction_shift_gate(
    reference: Mapping[str, float] | None,
    canary: Mapping[str, float],
    *,
    max_psi: float,
    min_predictions: int,
    reference_name: str = "the stable version's baseline",
) -> GateResult:
    """PSI of the canary's predicted classes against the stable's reference distribution."""
    gate = "predictionShift"
    c_total = round(sum(max(v, 0.0) for v in canary.values()))
    r_total = round(sum(max(v, 0.0) for v in (reference or {}).values()))
    if c_total < max(min_predictions, 1):
        return GateResult(
            gate, Outcome.INCONCLUSIVE,
            f"{c_total} canary predictions, fewer than minPredictions {min_predictions}",
        )
    if reference is None or r_total < max(min_predictions, 1):
        return GateResult(
            gate, Outcome.INCONCLUSIVE,
            f"{r_total} predictions in {reference_name}, fewer than minPredictions "
            f"{min_predictions}",
        )
    psi = population_stability_index(reference, canary)
    if psi is None:  # pragma: no cover - totals above are positive
        return GateResult(gate, Outcome.INCONCLUSIVE, "no predicted classes to compare")
    if psi > max_psi:
        return GateResult(
            gate, Outcome.FAIL,
            f"prediction shift PSI {psi:.3f} > maxPredictionShift {max_psi} "
            f"({c_total} canary predictions against {r_total} in {reference_name})", psi,
        )
    return GateResult(gate, Outcome.PASS, f"PSI {psi:.3f} ({c_total} predictions)", psi)


def agreement_gate(
    agree: float,
    disagree: float,
    *,
    min_agreement: float,
    min_predictions: int,
    confidence: float,
) -> GateResult:
    """Shadow phase, classifiers: the share of mirrored rows on which the canary predicts
    the stable's class. Fails only when significantly below `min_agreement` (the upper
    confidence bound of the share is under it), so a handful of rows decides nothing."""
    gate = "agreement"
    a = round(max(agree, 0.0))
    n = a + round(max(disagree, 0.0))
    if n < max(min_predictions, 1):
        return GateResult(
            gate, Outcome.INCONCLUSIVE,
            f"{n} mirrored rows compared, fewer than minPredictions {min_predictions}",
        )
    share = a / n
    upper = wilson_upper(a, n, confidence)
    if upper < min_agreement:
        return GateResult(
            gate, Outcome.FAIL,
            f"agreement with the stable {share:.4f} ({a}/{n} rows; at most {upper:.4f} at "
            f"{confidence * 100:g}% confidence) < minAgreement {min_agreement}", share,
        )
    return GateResult(gate, Outcome.PASS, f"agreement with the stable {share:.4f} ({a}/{n})",
                      share)


def mean_abs_diff_gate(
    abs_diff_sum: float,
    abs_diff_count: float,
    *,
    max_mean_abs_diff: float,
    min_predictions: int,
) -> GateResult:
    """Shadow phase, regressors: mean |canary - stable| over mirrored rows."""
    gate = "meanAbsDiff"
    n = round(max(abs_diff_count, 0.0))
    if n < max(min_predictions, 1):
        return GateResult(
            gate, Outcome.INCONCLUSIVE,
            f"{n} mirrored rows compared, fewer than minPredictions {min_predictions}",
        )
    mean = max(abs_diff_sum, 0.0) / n
    if mean > max_mean_abs_diff:
        return GateResult(
            gate, Outcome.FAIL,
            f"mean absolute difference from the stable {mean:.6g} over {n} rows > "
            f"maxMeanAbsDiff {max_mean_abs_diff}", mean,
        )
    return GateResult(gate, Outcome.PASS, f"mean absolute difference {mean:.6g} ({n} rows)",
                      mean)

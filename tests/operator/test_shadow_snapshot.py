"""The shadow figures of an analysis Snapshot: read from a runtime's own metrics, told as
deltas (a restarted pod counts from zero), summed over pods and kept in status."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from modelship_operator.rollout.analysis import Snapshot, merge, parse_metrics
from modelship_runtime.agreement import Judge
from modelship_runtime.metrics import Metrics
from modelship_runtime.model import Prediction
from modelship_runtime.sklearn import SKLearnModel


def judged(estimator: object, comparisons: list[tuple[bytes | None, list[object]]]) -> str:
    """The /metrics text of a runtime whose judge compared these (stable header, canary
    predictions) pairs."""
    model = SKLearnModel("m", "2", Path("unused"), allow_pickle=True)
    model.use(estimator)
    metrics = Metrics("m", "2")
    judge = Judge(model, metrics, token=None, log_per_minute=0, log_rel_diff=0.05)
    for stable, canary in comparisons:
        judge.compare(judge.incoming(b"1", stable, b"1"), Prediction(canary, None))
    return metrics.render().decode()


def test_a_classifier_canary_s_agreement_is_parsed() -> None:
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression().fit(np.array([[0.0], [1.0]]), [0, 1])
    text = judged(est, [(b"[0,1,1,0]", [0, 1, 0, 0]), (b"[1,1]", [1, 1]), (None, [0]),
                        (b"[0,0]", [0])])
    snap = parse_metrics(text)
    assert (snap.agree, snap.disagree, snap.uncompared) == (5, 1, 2)
    assert (snap.abs_diff_sum, snap.abs_diff_count) == (0, 0)


def test_a_regressor_canary_s_differences_are_parsed() -> None:
    from sklearn.linear_model import LinearRegression

    est = LinearRegression().fit(np.array([[0.0], [1.0]]), [0.0, 1.0])
    text = judged(est, [(b"[1.0,2.5,-3]", [1.5, 2.5, -1.0]), (b'["a"]', [1.0])])
    snap = parse_metrics(text)
    assert snap.abs_diff_count == 3
    assert math.isclose(snap.abs_diff_sum, 0.5 + 0.0 + 2.0)
    assert (snap.agree, snap.disagree, snap.uncompared) == (0, 0, 1)


def test_shadow_figures_as_deltas_sums_and_status() -> None:
    older = Snapshot(requests=10, agree=90, disagree=10, abs_diff_sum=4.0, abs_diff_count=8,
                     uncompared=1)
    newer = Snapshot(requests=20, agree=150, disagree=5, abs_diff_sum=5.0, abs_diff_count=10,
                     uncompared=1)
    delta = newer - older
    # disagree went down: the pod restarted, and its 5 are all new
    assert (delta.agree, delta.disagree, delta.abs_diff_sum, delta.abs_diff_count,
            delta.uncompared) == (60, 5, 1.0, 2, 0)
    total = merge([older, newer])
    assert (total.agree, total.disagree, total.abs_diff_sum, total.abs_diff_count,
            total.uncompared) == (240, 15, 9.0, 18, 2)
    status = newer.to_status()
    assert {k: status[k] for k in ("agree", "disagree", "absDiffSum", "absDiffCount",
                                   "uncompared")} == {
        "agree": 150, "disagree": 5, "absDiffSum": 5.0, "absDiffCount": 10, "uncompared": 1}
    assert Snapshot.from_status(status) == newer
    # Without shadow traffic, status carries no shadow keys, and old records still parse.
    plain = Snapshot(requests=3, errors=1, classes={"0": 3})
    assert set(plain.to_status()) == {"requests", "errors", "buckets", "classes"}
    assert Snapshot.from_status(plain.to_status()) == plain
    assert Snapshot.from_status({"requests": 1, "agree": "x"}) is None

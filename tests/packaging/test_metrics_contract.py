"""Every metric the chart's alerts and Grafana dashboard query is one the runtime or the
operator really exposes, with the labels they use.

The runtime's collectors are built from runtime/modelship_runtime/metrics.py and the
operator's from operator/modelship_operator/metrics.py (the modules that declare all of
them, on the registries each serves at /metrics), exercised once so that labelled
families have samples, and read back through the exposition format. The queries are taken
apart with a small PromQL tokenizer: the names outside label matchers, grouping clauses
and function calls are metric names.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from artifacts import CHART
from modelship_operator.metrics import OperatorMetrics
from modelship_runtime.metrics import Metrics
from prometheus_client.parser import text_string_to_metric_families

# Labels Prometheus adds to every series of a target: the ones every scrape gets, and for
# the runtime those of the chart's PodMonitor/ServiceMonitor relabelings. (The operator's
# own namespace label wins over its pod's: it is scraped with honorLabels.)
SCRAPE_LABELS = {"namespace", "pod", "job", "instance", "container", "endpoint", "service"}
TARGET_LABELS = {
    "runtime": SCRAPE_LABELS | {"modelship_deployment", "modelship_model_version"},
    "operator": SCRAPE_LABELS,
}
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk",
    "bottomk", "quantile", "count_values", "group", "inf", "nan",
}


def _read(text: str, source: str, exposed: dict[str, tuple[set[str], str]]) -> None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, known = exposed.setdefault(sample.name, (set(), source))
            assert known == source, f"{sample.name} is exposed by both {known} and {source}"
            labels.update(sample.labels)


def _exposed() -> dict[str, tuple[set[str], str]]:
    """Sample name -> (label names, "runtime" or "operator"), as each /metrics shows them."""
    metrics = Metrics("iris-classifier", "3")
    metrics.http_requests.labels("POST", "/predict", "200").inc()
    metrics.http_duration.labels("POST", "/predict").observe(0.01)
    metrics.prediction_duration.observe(0.001)
    metrics.predictions.inc()
    metrics.count_classes(["setosa", "virginica"])
    metrics.batch_size.observe(2)
    metrics.model_info.labels("iris-classifier", "3", "sklearn", "LogisticRegression").set(1)
    metrics.model_ready.set(1)
    metrics.cache_hits.inc()
    metrics.cache_misses.inc()
    metrics.cache_errors.inc()
    exposed: dict[str, tuple[set[str], str]] = {}
    _read(metrics.render().decode(), "runtime", exposed)
    operator = OperatorMetrics()
    operator.set_canary("ml", "iris", weight=10, step=0, progressed_at=1.0, deadline_at=601.0)
    operator.record_rollout("ml", "iris", "RolledBack")
    operator.record_gate("ml", "iris", "latencyP95", "Fail")
    operator.record_reconcile_error("InvalidSpec")
    operator.reconcile_duration.observe(0.1)
    _read(operator.render().decode(), "operator", exposed)
    return exposed


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every vector selector in a PromQL expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    expr = re.sub(r"\[[^\]]*\]", "", expr)                     # ranges, subqueries
    found: list[tuple[str, set[str]]] = []
    pattern = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?")
    position = 0
    while (m := pattern.search(expr, position)) is not None:
        position = m.end()
        name, matchers, call = m.group(1), m.group(2), m.group(3)
        before = expr[: m.start()].rstrip()
        if name in _KEYWORDS or (call and not matchers) or re.match(r"[0-9.]", name):
            if name in ("by", "without", "on", "ignoring", "group_left", "group_right"):
                # skip the label list of a grouping clause
                close = expr.find(")", position) if call else position
                position = close + 1 if call else position
            continue
        if before.endswith(("$", "{")):
            continue
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers or ""))
        found.append((name, labels))
    return found


def _grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels.update(x.strip() for x in group.split(",") if x.strip())
    return labels - {"le"}


def _queries() -> dict[str, str]:
    import yaml

    queries: dict[str, str] = {}
    rule_template = (CHART / "templates" / "prometheusrule.yaml").read_text()
    for alert, expr in re.findall(r"- alert: (\w+)\n\s+expr: \|\n((?:\s{12}.*\n)+)",
                                  rule_template):
        queries[f"alert {alert}"] = re.sub(r"\{\{[^}]*\}\}", "1", expr)
    dashboard: dict[str, Any] = json.loads((CHART / "files" / "dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queries[f"panel {panel['title']} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["definition"])
            assert inner, variable["definition"]
            queries[f"variable {variable['name']}"] = f"{inner.group(1)} by ({inner.group(2)})"
    assert yaml  # the alerts are read from the template, with thresholds filled in
    # The canary analysis's own PromQL (provider prometheus), its placeholders filled in.
    from modelship_operator.rollout.providers import DEFAULT_QUERIES

    for name, template in DEFAULT_QUERIES.items():
        queries[f"analysis {name}"] = (
            template.replace("$namespace", "ml").replace("$deployment", "iris-v1")
            .replace("$window", "60000ms")
        )
    return queries


QUERIES = _queries()
EXPOSED = _exposed()


def test_the_tokenizer_finds_selectors() -> None:
    assert selectors(
        'sum by (a, b) (rate(x_total{m="POST", s=~"5.."}[5m])) / ignoring(c) '
        'group_left sum(y) > 0.5 and histogram_quantile(0.9, z_bucket)'
    ) == [("x_total", {"m", "s"}), ("y", set()), ("z_bucket", set())]


def test_queries_were_found() -> None:
    assert sum(k.startswith("alert ") for k in QUERIES) == 6
    assert sum(k.startswith("panel ") for k in QUERIES) >= 16


@pytest.mark.parametrize("where", sorted(QUERIES))
def test_query_uses_only_exposed_metrics_and_labels(where: str) -> None:
    expr = QUERIES[where]
    used = selectors(expr)
    assert used, f"{where}: no metric found in {expr!r}"
    known_labels: set[str] = set()
    for name, labels in used:
        assert name in EXPOSED or name in SYNTHETIC, (
            f"{where}: {name} is not a metric the runtime or the operator exposes "
            f"(they have: {', '.join(sorted(EXPOSED))})")
        own, source = EXPOSED.get(name, (set(), "runtime"))
        available = own | TARGET_LABELS[source]
        assert labels <= available, f"{where}: {name} has no label {labels - available}"
        known_labels |= available
    missing = _grouping_labels(expr) - known_labels
    assert not missing, f"{where}: groups by labels no queried metric has: {missing}"


@pytest.mark.parametrize(
    "expr",
    ['rate(http_request_total[5m])', 'sum by (model) (modelship_predictions_total)',
     'model_version_info{track="canary"}', 'modelship_canary_weight{version="4"}',
     'modelship_operator_reconcile_errors_total{modelship_deployment="iris"}',
     'increase(modelship_rollout_total[5m])'],
)
def test_a_wrong_metric_or_label_is_caught(expr: str) -> None:
    (name, labels), = selectors(expr)
    if name in EXPOSED:
        own, source = EXPOSED[name]
        assert not labels <= own | TARGET_LABELS[source]

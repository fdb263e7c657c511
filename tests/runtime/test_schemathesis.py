"""Property-based fuzzing of every documented route: no input makes the server answer 5xx.

The schema is the live app's ``/openapi.json``. Schemathesis' lazy pytest fixture does not
work with this pytest version (it writes a node attribute pytest renamed), so the test
walks the operations itself and drives each one's Hypothesis strategy.
"""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok


def test_no_server_errors_on_any_operation(strict_url: str) -> None:
    def answered() -> float:
        text = httpx.get(f"{strict_url}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("http_requests_total{"))

    before = answered()
    schema = schemathesis.openapi.from_url(f"{strict_url}/openapi.json")
    seen = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        seen.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        check()
    assert "POST /predict" in seen and "POST /v2/models/{name}/infer" in seen
    assert len(seen) >= 15
    assert answered() - before > 3 * len(seen)  # the cases really went over HTTP

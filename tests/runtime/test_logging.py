"""Structured logs: JSON lines carrying the request id and model version."""

from __future__ import annotations

import json
import logging

from modelship_runtime.logging import JsonFormatter, model_version_var, request_id_var


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("modelship_runtime", logging.WARNING, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_a_record_is_one_json_line_with_extras() -> None:
    line = JsonFormatter().format(record("cache down", error="TimeoutError", retry_in_s=5.0))
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "cache down" and data["level"] == "warning"
    assert data["error"] == "TimeoutError" and data["retry_in_s"] == 5.0
    assert data["logger"] == "modelship_runtime" and data["ts"].endswith("Z")
    assert "request_id" not in data


def test_request_context_is_carried() -> None:
    rid = request_id_var.set("req-42")
    ver = model_version_var.set("3")
    try:
        data = json.loads(JsonFormatter().format(record("hello")))
    finally:
        request_id_var.reset(rid)
        model_version_var.reset(ver)
    assert data["request_id"] == "req-42" and data["model_version"] == "3"


def test_exceptions_are_kept_in_the_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = record("failed")
        rec.exc_info = sys.exc_info()
    data = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in data["exc_info"]

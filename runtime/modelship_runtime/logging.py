"""Structured logs: one JSON object per line, with request id and model version.

Pods log to stdout and a collector parses the lines, so each record is a JSON object.
The request id and model version live in context variables that the HTTP layer sets, so
any log line written while a request is handled carries them without being passed
around. API keys are never put in a record, and the ``user:password@`` of any URI in a
line is redacted (:mod:`modelship_runtime.redact`).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

from .redact import RedactingFormatter

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "modelship_request_id", default=None
)
model_version_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "modelship_model_version", default=None
)

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line; `extra=` fields are kept as keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            out["request_id"] = request_id
        version = model_version_var.get()
        if version is not None:
            out["model_version"] = version
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    """Send the runtime's and uvicorn's logs to stdout, as JSON lines or plain text."""
    handler = logging.StreamHandler(sys.stdout)
    inner = JsonFormatter() if json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(RedactingFormatter(inner))  # no user:password@ in any line
    for name in ("modelship_runtime", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False

"""Credentials in URIs never reach a log line or an error message."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port
from modelship_runtime.redact import redact

RUNTIME = str(Path(sys.executable).parent / "modelship-runtime")


@pytest.mark.parametrize(("text", "expected"), [
    ("redis://:s3cret@redis:6379/0", "redis://***@redis:6379/0"),
    ("rediss://default:pw@r:6380", "rediss://***@r:6380"),
    ("https://user:p@ss@mlflow.example/api?x=a@b", "https://***@mlflow.example/api?x=a@b"),
    ("see http://tok@h/x and s3://key:sec@bucket/m", "see http://***@h/x and s3://***@bucket/m"),
    ('{"u": "http://h:1", "x": "a@b"}', '{"u": "http://h:1", "x": "a@b"}'),
    ("models:/iris@champion", "models:/iris@champion"),
    ("http://host/path@x", "http://host/path@x"),
    ("no uri at all", "no uri at all"),
])
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_every_log_line_is_redacted_extra_fields_and_tracebacks_too() -> None:
    from modelship_runtime.logging import configure_logging

    names = ("modelship_runtime", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level,
                 logging.getLogger(n).propagate) for n in names}
    configure_logging("INFO", json=True)
    logger = logging.getLogger("modelship_runtime")
    handler = logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    out = io.StringIO()
    old = handler.setStream(out)
    try:
        logger.info("connecting to %s", "redis://:pw-one@r:6379/0",
                    extra={"tracking_uri": "https://u:pw-two@mlflow"})
        try:
            raise ConnectionError("cannot reach http://u:pw-three@h/")
        except ConnectionError:
            logger.exception("failed")
    finally:
        handler.setStream(old)
        for n, (handlers, level, propagate) in saved.items():
            log = logging.getLogger(n)
            log.handlers[:], log.level, log.propagate = handlers, level, propagate
    text = out.getvalue()
    assert "pw-one" not in text and "pw-two" not in text and "pw-three" not in text
    assert "redis://***@r:6379/0" in text and '"tracking_uri":"https://***@mlflow"' in text
    assert "ConnectionError: cannot reach http://***@h/" in text, text


def test_a_failed_pull_names_the_registry_without_its_password(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSHIP_", "MLFLOW_"))}
    r = subprocess.run(
        [RUNTIME, "pull", "--model-uri", "models:/iris/1", "--dest", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=180,
        env={**env, "MLFLOW_TRACKING_URI": f"http://alice:pw-four@127.0.0.1:{port}",
             "MODELSHIP_PULL_ATTEMPTS": "1"})
    assert r.returncode == 6, r.stdout + r.stderr
    assert "pw-four" not in r.stdout + r.stderr
    assert "http://***@127.0.0.1" in r.stderr, r.stderr

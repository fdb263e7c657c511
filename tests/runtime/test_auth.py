"""Optional API-key auth: keys from a mounted Secret, 401 with WWW-Authenticate."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest


@pytest.fixture(scope="module")
def auth_url(local_models: Any, serve: Callable[..., str],
             tmp_path_factory: pytest.TempPathFactory) -> str:
    from modelship_runtime import RuntimeSettings, create_app

    secret = tmp_path_factory.mktemp("secret")  # a Secret volume: one file per key
    (secret / "alice").write_text("key-alice-123\n")
    (secret / "bob").write_text("key-bob-456\nkey-bob-789\n")
    settings = RuntimeSettings(model_dir=local_models.lr_dir, model_name="auth",
                               api_keys_file=secret, access_log=True)
    return serve(create_app(settings))


ROW = {"features": [0.1] * 8}


def test_no_key_is_401_with_www_authenticate(auth_url: str) -> None:
    r = httpx.post(f"{auth_url}/predict", json=ROW)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "API key" in r.json()["error"]
    assert r.headers["x-request-id"]


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer nope"}, {"X-API-Key": "nope"},
                                     {"Authorization": "Basic a2V5LWFsaWNlLTEyMw=="},
                                     {"X-API-Key": ""}])
def test_wrong_key_is_401(auth_url: str, headers: dict[str, str]) -> None:
    assert httpx.post(f"{auth_url}/predict", json=ROW, headers=headers).status_code == 401


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer key-alice-123"},
                                     {"authorization": "bearer key-bob-789"},
                                     {"X-API-Key": "key-bob-456"}])
def test_valid_key_is_served(auth_url: str, headers: dict[str, str]) -> None:
    r = httpx.post(f"{auth_url}/predict", json=ROW, headers=headers)
    assert r.status_code == 200, r.text
    r = httpx.get(f"{auth_url}/v2/models/auth", headers=headers)
    assert r.status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/v2/health/live",
                                  "/v2/health/ready"])
def test_health_and_metrics_stay_open(auth_url: str, path: str) -> None:
    assert httpx.get(f"{auth_url}{path}").status_code == 200


@pytest.mark.parametrize("path", ["/v2/models/auth", "/v1/models/auth", "/v2"])
def test_model_endpoints_are_protected(auth_url: str, path: str) -> None:
    assert httpx.get(f"{auth_url}{path}").status_code == 401


def test_keys_are_never_logged(auth_url: str, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("modelship_runtime")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="modelship_runtime"):
            httpx.post(f"{auth_url}/predict", json=ROW,
                       headers={"Authorization": "Bearer key-alice-123"})
            httpx.post(f"{auth_url}/predict", json=ROW, headers={"X-API-Key": "wrong-secret"})
    finally:
        logger.removeHandler(caplog.handler)
    assert any(getattr(r, "route", None) == "/predict" for r in caplog.records)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "key-alice-123" not in text and "wrong-secret" not in text


def test_key_file_with_one_key_per_line(tmp_path: Path) -> None:
    from modelship_runtime.auth import load_api_keys

    f = tmp_path / "keys"
    f.write_text("one\n\n  two  \n")
    assert load_api_keys(f) == [b"one", b"two"]

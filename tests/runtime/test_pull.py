"""Pulling from the real MLflow registry: versions, aliases, and failures that say why."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port
from modelship_runtime.errors import PullError
from modelship_runtime.pull import parse_model_uri, pull, read_metadata

RUNTIME = str(Path(sys.executable).parent / "modelship-runtime")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUNTIME, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize(("uri", "name", "version", "alias"), [
    ("models:/iris/3", "iris", "3", None),
    ("models:/iris@champion", "iris", None, "champion"),
    ("models:/my-model.v2@stage_2", "my-model.v2", None, "stage_2"),
])
def test_parse_model_uri(uri: str, name: str, version: str | None, alias: str | None) -> None:
    ref = parse_model_uri(uri)
    assert (ref.name, ref.version, ref.alias) == (name, version, alias)


@pytest.mark.parametrize(("uri", "run_id", "path", "name"), [
    ("runs:/0123abcd/model", "0123abcd", "model", "model"),
    ("runs:/0123abcd/models/iris/", "0123abcd", "models/iris", "iris"),
])
def test_parse_runs_uri(uri: str, run_id: str, path: str, name: str) -> None:
    ref = parse_model_uri(uri)
    assert (ref.run_id, ref.path, ref.name, ref.version, ref.alias) == (run_id, path, name,
                                                                       None, None)


def test_parse_logged_model_uri() -> None:
    ref = parse_model_uri("models:/m-f3c82dc5d8b34ea6ab6e6f84d64b0504")
    assert ref.model_id == "m-f3c82dc5d8b34ea6ab6e6f84d64b0504" and ref.version is None


@pytest.mark.parametrize(("uri", "message"), [
    ("models:/iris", "is not models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH"),
    ("models:/a/1/extra", "is not models:/NAME/VERSION"),
    ("", "is not models:/NAME/VERSION"),
    ("runs:/abc", "is not models:/NAME/VERSION"),
    ("runs:/abc/../etc", "must not hold empty, '.' or '..' parts"),
    ("runs:/abc/a//b", "must not hold empty, '.' or '..' parts"),
    ("models:/iris/latest", "'latest' picks a version when the pod starts"),
    ("models:/iris/Latest", "'latest' picks a version when the pod starts"),
    ("models:/iris/Production", "the stage 'Production' picks a version"),
    ("file:///models/iris", "is a local path: serve the directory with --model-dir"),
    ("/models/iris", "is a local path"),
    ("s3://bucket/iris", "pulls through an MLflow tracking server only"),
    ("https://mlflow.example.com/models/iris", "pulls through an MLflow tracking server"),
    ("gs://bucket/iris", "pulls through an MLflow tracking server only"),
])
def test_bad_model_uri(uri: str, message: str) -> None:
    with pytest.raises(PullError, match=re.escape(message)) as exc:
        parse_model_uri(uri)
    assert exc.value.kind == "usage"


def test_a_pull_names_its_registry_or_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """Without a registry MLflow would use sqlite:///mlflow.db in the working directory."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PullError, match="no registry to pull from") as exc:
        pull("models:/iris/3", tmp_path / "x", attempts=1)
    assert exc.value.kind == "usage"
    assert list(tmp_path.iterdir()) == []


def test_pull_version_keeps_mlflow_layout_and_metadata(registry: Any, tmp_path: Path) -> None:
    meta = pull("models:/ms-lr/2", tmp_path / "m", attempts=1)
    assert (meta.name, meta.version, meta.alias) == ("ms-lr", "2", None)
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"MLmodel", "model.pkl", "modelship.json"} <= files
    assert not any(name.startswith(".pull-") for name in files)
    on_disk = read_metadata(tmp_path / "m")
    assert on_disk is not None and on_disk.version == "2"
    assert on_disk.uri == "models:/ms-lr/2"


def test_alias_resolves_to_the_version_it_points_at(registry: Any, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(registry.uri)
    client.set_registered_model_alias("ms-lr", "moving", "1")
    assert pull("models:/ms-lr@moving", tmp_path / "a", attempts=1).version == "1"
    client.set_registered_model_alias("ms-lr", "moving", "2")
    meta = pull("models:/ms-lr@moving", tmp_path / "b", attempts=1)
    assert (meta.version, meta.alias) == ("2", "moving")
    assert json.loads((tmp_path / "b" / "modelship.json").read_text())["version"] == "2"


def test_cli_pull_then_exit_zero(registry: Any, tmp_path: Path) -> None:
    r = run_cli("pull", "--model-uri", "models:/ms-rf/1", "--dest", str(tmp_path / "rf"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "rf" / "modelship.json").read_text())["name"] == "ms-rf"
    assert '"model pulled"' in r.stdout


@pytest.mark.parametrize("uri", ["models:/no-such-model/1", "models:/ms-lr/99",
                                 "models:/ms-lr@no-such-alias"])
def test_pull_of_a_missing_model_fails_fast(registry: Any, tmp_path: Path, uri: str) -> None:
    with pytest.raises(PullError, match=r"not found: .* does not exist in the registry") as exc:
        pull(uri, tmp_path / "x", attempts=5, backoff_seconds=30)
    assert (exc.value.kind, exc.value.transient) == ("not_found", False)
    assert not (tmp_path / "x" / "modelship.json").exists()


def test_cli_pull_of_a_missing_model_exits_4(registry: Any, tmp_path: Path) -> None:
    r = run_cli("pull", "--model-uri", "models:/ms-lr@no-such-alias", "--dest",
                str(tmp_path / "x"), env={"MODELSHIP_PULL_BACKOFF_SECONDS": "30"}, timeout=60)
    assert r.returncode == 4
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr + r.stdout
    assert "pull failed: not found: model 'ms-lr' alias @no-such-alias does not exist" in r.stderr


def test_cli_pull_from_an_unreachable_registry_retries_then_exits_6(tmp_path: Path) -> None:
    port = free_port()  # a port nobody listens on
    r = run_cli("pull", "--model-uri", "models:/m@champion", "--dest", str(tmp_path / "x"),
                env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
                     "MODELSHIP_PULL_ATTEMPTS": "3", "MODELSHIP_PULL_BACKOFF_SECONDS": "0.05"},
                timeout=60)
    assert r.returncode == 6
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr + r.stdout
    assert "pull failed: unreachable" in r.stderr
    assert f"127.0.0.1:{port}" in r.stderr
    assert r.stdout.count('"pull failed; retrying"') == 2


@pytest.fixture
def refusing_registry() -> Iterator[str]:
    """An HTTP server answering 401 to everything, as a registry with auth does."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"error_code": "UNAUTHENTICATED", "message": "bad credentials"}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_cli_pull_with_refused_credentials_says_auth_and_exits_5(refusing_registry: str,
                                                      tmp_path: Path) -> None:
    r = run_cli("pull", "--model-uri", "models:/m/1", "--dest", str(tmp_path / "x"),
                env={"MLFLOW_TRACKING_URI": refusing_registry, "MLFLOW_TRACKING_TOKEN": "t0ken",
                     "MODELSHIP_PULL_BACKOFF_SECONDS": "30"}, timeout=60)
    assert r.returncode == 5
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr + r.stdout
    assert "pull failed: auth" in r.stderr
    assert "t0ken" not in r.stderr + r.stdout

"""Every model URI form against the real MLflow server: served, or refused at start with
one line and its exit code (docs/cli.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import clean_env, free_port

RUNTIME = str(Path(sys.executable).parent / "modelship-runtime")


@dataclass
class Extra:
    """What this module adds to the session's registry."""

    legacy_run_id: str  # a run holding a model as plain run artifacts (MLflow 2's layout)
    s3_version: str  # a version of ms-s3 whose artifacts are on S3, not behind the proxy


@pytest.fixture(scope="module")
def extra(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Extra:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn
        from mlflow import MlflowClient

        client = MlflowClient(registry.uri)
        saved = tmp_path_factory.mktemp("legacy") / "model"
        mlflow.sklearn.save_model(registry.lr_v2, saved, pip_requirements=[],
                                  serialization_format="cloudpickle")
        run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
        client.log_artifacts(run.info.run_id, str(saved), "legacy")
        client.set_terminated(run.info.run_id)
        client.create_registered_model("ms-s3")
        mv = client.create_model_version("ms-s3", "s3://models-bucket/ms-s3/1")
    return Extra(run.info.run_id, str(mv.version))


def _serve(uri: str, registry: Any, log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([RUNTIME, "serve", "--model-uri", uri, "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env=clean_env(MLFLOW_TRACKING_URI=registry.uri,
                                         MODELSHIP_DRAIN_SECONDS="0"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(log.read_text())
        time.sleep(0.05)


@pytest.mark.parametrize("form", ["version", "run-logged-model", "logged-model-id",
                                  "run-artifacts"])
def test_each_uri_form_is_served_with_what_it_resolved_to(
        registry: Any, extra: Extra, tmp_path: Path, form: str) -> None:
    uri, name, version, model = {
        "version": ("models:/ms-lr/2", "ms-lr", "2", registry.lr_v2),
        "run-logged-model": (f"runs:/{registry.run_id}/rf1", "rf1", registry.run_id,
                             registry.rf_v1),
        "logged-model-id": (f"models:/{registry.lr_v1_model_id}", "lr1",
                            registry.lr_v1_model_id, registry.lr_v1),
        "run-artifacts": (f"runs:/{extra.legacy_run_id}/legacy", "legacy",
                          extra.legacy_run_id, registry.lr_v2),
    }[form]
    log = tmp_path / "serve.log"
    url, proc = _serve(uri, registry, log)
    try:
        rows = registry.X[:3].tolist()
        r = httpx.post(f"{url}/predict", json={"instances": rows})
        assert r.status_code == 200, r.text
        assert r.headers["x-model-version"] == version
        assert r.json()["predictions"] == model.predict(registry.X[:3]).tolist()
        assert httpx.get(f"{url}/v2/models/{name}").json()["versions"] == [version]
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    pulled = [x for x in lines if x["message"] == "model pulled"]
    assert pulled and (pulled[0]["uri"], pulled[0]["version"]) == (uri, version)
    if form != "version":
        assert pulled[0]["run_id"] == (extra.legacy_run_id if form == "run-artifacts"
                                       else registry.run_id)


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUNTIME, *args], capture_output=True, text=True, timeout=120,
                          env=clean_env(MODELSHIP_PULL_BACKOFF_SECONDS="30", **env))


def _refused(r: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert r.returncode == code, r.stdout + r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("modelship-runtime: ") and fragment in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize(("uri", "code", "fragment"), [
    ("models:/ms-lr/latest", 2, "'latest' picks a version when the pod starts"),
    ("models:/ms-lr/Production", 2, "the stage 'Production' picks a version"),
    ("file:///models/ms-lr", 2, "is a local path: serve the directory with --model-dir"),
    ("s3://bucket/ms-lr", 2, "pulls through an MLflow tracking server only"),
    ("http://mlflow:5000/models/ms-lr", 2, "pulls through an MLflow tracking server only"),
    ("models:/ms-lr", 2, "is not models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH"),
    ("runs:/0123/../../etc", 2, "must not hold empty, '.' or '..' parts"),
    ("runs:/0123456789abcdef0123456789abcdef/model", 4, "pull failed: not found: run "
     "0123456789abcdef0123456789abcdef"),
    ("RUN/no-such-path", 4, "artifact path 'no-such-path' does not exist"),
    ("models:/m-0123456789abcdef0123456789abcdef", 4, "pull failed: not found: logged model"),
    ("S3", 8, "pull failed: untrusted: the artifacts of model 'ms-s3' version"),
])
def test_other_uris_are_refused_at_start(registry: Any, extra: Extra, tmp_path: Path,
                                         uri: str, code: int, fragment: str) -> None:
    uri = uri.replace("RUN", f"runs:/{registry.run_id}").replace(
        "S3", f"models:/ms-s3/{extra.s3_version}")
    port = str(free_port())
    r = _run("serve", "--model-uri", uri, "--host", "127.0.0.1", "--port", port,
             MLFLOW_TRACKING_URI=registry.uri, TMPDIR=str(tmp_path))
    _refused(r, code, fragment)
    assert list(tmp_path.iterdir()) == []  # the temporary pull directory is gone


@pytest.mark.parametrize(("variable", "value"), [
    ("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
    ("MLFLOW_TRACKING_URI", "databricks"),
    ("MLFLOW_REGISTRY_URI", "file:///mlruns"),
])
def test_a_registry_that_is_not_a_tracking_server_is_a_usage_error(
        tmp_path: Path, variable: str, value: str) -> None:
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", variable: value}
    r = _run("pull", "--model-uri", "models:/m/1", "--dest", str(tmp_path / "d"), **env)
    _refused(r, 2, f"{variable}={value!r} is not an MLflow tracking server's URL")
    assert not (tmp_path / "d").exists()

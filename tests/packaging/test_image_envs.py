"""Each image's virtualenv, built here as its Dockerfile builds it, then used as the image
uses it: what ships must install and start.

The build stage's COPY sources are copied into an empty folder (the build context as the
image sees it) and its RUN lines run there, with /opt/venv replaced by a temporary
folder: they call scripts/build-venv.sh, the one recipe of the virtualenv (hash-locked
wheels from requirements/IMAGE.lock, the IMAGE/ distribution without dependencies, then
`pip check`). Nothing but that virtualenv's interpreter and scripts is used afterwards:
no PYTHONPATH, the working directory outside the repository. Every module of the package
the image ships must import; the ENTRYPOINT with the CMD must accept `--help`; `--version`
must name the distribution's version; the runtime serves a prediction from a model and the
operator reconciles a ModelDeployment against the emulated API (tests/operator).

Needs PyPI (pip's cache makes reruns quick) and the Python the images run (3.11).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ports
import pytest
from dockerfiles import DISTRIBUTIONS, IMAGES, REPO, arg_default, copies, exec_form, stages

sys.path.insert(0, str(REPO / "tests" / "operator"))

from kube_emulator import Cluster, wait_for

PACKAGES = {"operator": "modelship_operator", "runtime": "modelship_runtime"}
VENV_IN_IMAGE = "/opt/venv"
BUILD_TIMEOUT = 900  # seconds for the whole build of one virtualenv (a cold pip cache)


def _image_python() -> str:
    """An interpreter of the version the images run (python:3.11-slim-...)."""
    tag = arg_default(IMAGES["operator"], "PYTHON_IMAGE").split(":", 1)[1]
    version = tag.split("-", 1)[0]
    if sys.version.startswith(version + "."):
        return sys.executable
    found = shutil.which(f"python{version}")
    if found is None:
        pytest.skip(f"the images run Python {version} (their locks are for it): none found")
    return found


def _clean_env(venv: Path, home: Path, **extra: str) -> dict[str, str]:
    """Only the virtualenv's scripts on PATH, no PYTHONPATH or other Python settings."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "VIRTUAL_ENV", "MODELSHIP_", "KUBECONFIG"))}
    return {**keep, "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home),
            "TMPDIR": str(home), **extra}


def _copy_context(image: str, context: Path) -> None:
    """What the build stage COPYs from the repository, where Docker puts it: a folder's
    contents into the destination folder, a file into it (destinations end in /)."""
    for sources, dest in copies(stages(IMAGES[image])[0]):
        assert dest.endswith("/"), f"COPY ... {dest}: a destination folder ends in /"
        target = context / dest
        for source in sources:
            src = REPO / source
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.egg-info", "build"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target / src.name)


def _build(image: str, root: Path) -> Path:
    """Run the build stage's RUN lines in a copy of its context; the virtualenv's path."""
    context, venv = root / "src", root / "venv"
    context.mkdir()
    _copy_context(image, context)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"))}
    env["PYTHON"] = _image_python()
    log = root / "build.log"
    runs = [i.removeprefix("RUN ") for i in stages(IMAGES[image])[0] if i.startswith("RUN ")]
    assert runs, f"Dockerfile.{image} builds nothing"
    with log.open("w") as out:
        for command in runs:
            result = subprocess.run(["sh", "-c", command.replace(VENV_IN_IMAGE, str(venv))],
                                    cwd=context, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    timeout=BUILD_TIMEOUT)
            if result.returncode != 0:
                lines = [line for line in log.read_text().splitlines()
                         if not line.startswith("WARNING: Location")]  # a local index's noise
                tail = "\n".join(lines[-12:])
                raise BuildFailed(f"RUN {command} failed ({result.returncode}):\n{tail}")
    return venv


class BuildFailed(Exception):
    """A RUN line of the build stage failed; the message ends with its output."""


Built = tuple[Path, Path]  # (the virtualenv, an empty folder outside the repository)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Built]]:
    """Each image's virtualenv, built once for the module when a test first asks, and
    removed afterwards (the runtime's is some 400 MB)."""
    done: dict[str, Built | BuildFailed] = {}
    roots: list[Path] = []

    def get(image: str) -> Built:
        if image not in done:
            root = tmp_path_factory.mktemp(f"{image}-image")
            roots.append(root)
            started = time.monotonic()
            try:
                venv = _build(image, root)
            except BuildFailed as failed:
                done[image] = failed
            else:
                print(f"\n{image} virtualenv built in {time.monotonic() - started:.1f}s")
                (root / "home").mkdir()
                done[image] = (venv, root / "home")
        result = done[image]
        if isinstance(result, BuildFailed):
            pytest.fail(f"Dockerfile.{image}'s virtualenv: {result}", pytrace=False)
        return result

    yield get
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def _run(venv: Path, home: Path, *args: str, timeout: float = 120, **env: str
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=home, env=_clean_env(venv, home, **env),
                          capture_output=True, text=True, timeout=timeout)


def _version(image: str) -> str:
    project = tomllib.loads((REPO / image / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTIONS[image]
    version: str = project["version"]
    return version


IMPORT_ALL = textwrap.dedent("""
    import importlib, importlib.metadata, importlib.util, json, pkgutil, sys
    dist, package, other = sys.argv[1:]
    top = importlib.metadata.distribution(dist).read_text("top_level.txt").split()
    imported, failed, outside = [], {}, []
    root = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
    for name in names:
        try:
            module = importlib.import_module(name)
        except BaseException as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
            continue
        imported.append(name)
        if not module.__file__.startswith(sys.prefix):
            outside.append(module.__file__)
    print(json.dumps({"top_level": top, "imported": imported, "failed": failed,
                      "outside": outside, "other": importlib.util.find_spec(other) is not None}))
""")


def _source_modules(image: str) -> set[str]:
    """Every module of the package in the repository, by dotted name."""
    folder = REPO / image
    names = set()
    for path in (folder / PACKAGES[image]).rglob("*.py"):
        parts = path.relative_to(folder).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_module_of_the_shipped_package_imports(image: str,
                                                     build: Callable[[str], Built]) -> None:
    venv, home = build(image)
    other = next(p for i, p in PACKAGES.items() if i != image)
    result = _run(venv, home, str(venv / "bin" / "python"), "-c", IMPORT_ALL,
                  DISTRIBUTIONS[image], PACKAGES[image], other)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["failed"] == {}, "modules that do not import in the image:\n" + "\n".join(
        f"  {name}: {error}" for name, error in report["failed"].items())
    assert report["top_level"] == [PACKAGES[image]]
    assert set(report["imported"]) == _source_modules(image)
    assert report["outside"] == [], "imported from outside the virtualenv"
    assert report["other"] is False, f"the {image} image also ships {other}"


def _entrypoint(image: str, venv: Path) -> list[str]:
    """The final stage's ENTRYPOINT + CMD, with the command resolved as the image would:
    a script the stage COPYs onto PATH, else the virtualenv's console script."""
    final = stages(IMAGES[image])[-1]
    command, *args = exec_form(final, "ENTRYPOINT") + exec_form(final, "CMD")
    for instruction in final:
        words = instruction.split()
        if words[0] == "COPY" and words[-1] == f"/usr/local/bin/{command}":
            return ["sh", str(REPO / words[-2]), *args]
    return [str(venv / "bin" / command), *args]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_the_entrypoint_with_its_cmd_accepts_help(image: str,
                                                  build: Callable[[str], Built]) -> None:
    venv, home = build(image)
    result = _run(venv, home, *_entrypoint(image, venv), "--help")
    assert result.returncode == 0, result.stdout + result.stderr
    expected = {"operator": "Usage: kopf run", "runtime": "usage: modelship-runtime serve"}
    assert expected[image] in result.stdout, result.stdout


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_version_names_the_distribution(image: str, build: Callable[[str], Built]) -> None:
    venv, home = build(image)
    command = {"operator": "modelship", "runtime": "modelship-runtime"}[image]
    result = _run(venv, home, str(venv / "bin" / command), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{command} {_version(image)}"), result.stdout
    assert result.stdout.split()[1] == _version(image)


def _free_port() -> int:
    return ports.free_port()


@pytest.fixture()
def process() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, stopped (SIGTERM, then SIGKILL) when it ends."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


TRAIN = textwrap.dedent("""
    import sys, joblib
    from sklearn.linear_model import LogisticRegression
    X = [[0.0, 0.0], [0.1, 0.2], [1.0, 1.0], [0.9, 1.1]]
    joblib.dump(LogisticRegression().fit(X, [0, 0, 1, 1]), sys.argv[1])
""")


def test_runtime_serves_a_prediction(build: Callable[[str], Built],
                                     process: list[subprocess.Popen[bytes]]) -> None:
    venv, home = build("runtime")
    model_dir = home / "models" / "toy"
    model_dir.mkdir(parents=True)
    trained = _run(venv, home, str(venv / "bin" / "python"), "-c", TRAIN,
                   str(model_dir / "model.joblib"))
    assert trained.returncode == 0, trained.stderr
    port = _free_port()
    log = home / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "modelship-runtime"), "serve", "--model-dir", str(model_dir),
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=home, env=_clean_env(venv, home), stdout=out, stderr=subprocess.STDOUT)
    process.append(proc)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, timeout=120, what="the runtime to be ready")
    answer = httpx.post(f"{url}/predict", json={"instances": [[0.0, 0.1], [1.0, 0.9]]},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == [0, 1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()


def test_operator_reconciles_a_model_deployment(build: Callable[[str], Built],
                                                 process: list[subprocess.Popen[bytes]],
                                                 tmp_path: Path) -> None:
    venv, home = build("operator")
    cluster = Cluster(tmp_path).start()
    try:
        health = _free_port()
        log = home / "operator.log"
        env = _clean_env(
            venv, home, KUBECONFIG=str(cluster.kubeconfig),
            MODELSHIP_OPERATOR_HEALTH_PORT=str(health),
            MODELSHIP_OPERATOR_METRICS_PORT=str(_free_port()),
            MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI="http://mlflow.mlflow:5000",
            MODELSHIP_OPERATOR_VERIFY_MODEL_VERSIONS="false")
        with log.open("wb") as out:
            proc = subprocess.Popen([*_entrypoint("operator", venv), "--standalone"], cwd=home,
                                    env=env, stdout=out, stderr=subprocess.STDOUT)
        process.append(proc)
        cluster.create_md({
            "apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml"},
            "spec": {"model": {"name": "iris-classifier", "version": "3"}, "replicas": 1},
        })

        def deployment() -> dict[str, Any] | None:
            assert proc.poll() is None, log.read_text(errors="replace")
            return next((d for d in cluster.objects("deployments", "ml")
                         if d["metadata"]["labels"].get("modelship.io/deployment") == "iris"),
                        None)

        try:
            made = wait_for(deployment, timeout=120, what="the operator to create a Deployment")
        except AssertionError as timed_out:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise AssertionError(f"{timed_out}\noperator log (end):\n{tail}") from None
        container = made["spec"]["template"]["spec"]["containers"][0]
        assert container["image"].endswith(f"modelship-runtime:{_version('runtime')}")
        live = httpx.get(f"http://127.0.0.1:{health}/healthz", timeout=10)
        assert live.status_code == 200, live.text
    finally:
        for proc in process:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        cluster.stop()

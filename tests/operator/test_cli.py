"""`modelship render`, run as the real console script in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODELSHIP = shutil.which("modelship", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.skipif(MODELSHIP is None, reason="console script not installed")

MINIMAL = """\
apiVersion: modelship.io/v1alpha1
kind: ModelDeployment
metadata: {name: iris, namespace: ml}
spec:
  model:
    name: iris-classifier
    version: "3"
    registry: {trackingUri: "http://mlflow.mlflow:5000"}
"""
SECOND = MINIMAL.replace("name: iris,", "name: wine,").replace('version: "3"', 'version: "8"')
NO_URI = """\
apiVersion: modelship.io/v1alpha1
kind: ModelDeployment
metadata: {name: plain}
spec: {model: {name: m, version: "1"}}
"""
INVALID = """\
apiVersion: modelship.io/v1alpha1
kind: ModelDeployment
metadata: {name: broken}
spec:
  model: {name: m, version: "1", registry: {trackingUri: "http://x"}}
  autoscaling: {minReplicas: 0, maxReplicas: 2}
"""
ALIAS = """\
apiVersion: modelship.io/v1alpha1
kind: ModelDeployment
metadata: {name: champ}
spec: {model: {name: m, alias: champion, registry: {trackingUri: "http://x"}}}
"""


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
    assert MODELSHIP is not None
    return subprocess.run(
        [MODELSHIP, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
    )


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_render_a_file(tmp_path: Path) -> None:
    result = run("render", "-f", write(tmp_path, "iris.yaml", MINIMAL))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("---\n")
    assert "&id" not in result.stdout and "*id" not in result.stdout
    objects = docs(result.stdout)
    assert [o["kind"] for o in objects] == [
        "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"
    ]
    for obj in objects:
        ref = obj["metadata"]["ownerReferences"][0]
        assert ref["uid"] == "00000000-0000-0000-0000-000000000000"
        assert ref["name"] == "iris"
        kubernetes_validate.validate(obj, "1.37", strict=True)


def test_stdin_with_several_documents_and_several_files(tmp_path: Path) -> None:
    stream = MINIMAL + "---\n" + SECOND
    extra = write(tmp_path, "extra.yaml", MINIMAL.replace("name: iris,", "name: three,"))
    result = run("render", "-f", "-", "-f", extra, stdin=stream)
    assert result.returncode == 0, result.stderr
    deployments = [o["metadata"]["name"] for o in docs(result.stdout) if o["kind"] == "Deployment"]
    assert deployments == ["iris-v3", "wine-v8", "three-v3"]


def test_invalid_manifest_names_the_field_and_prints_nothing_for_it(tmp_path: Path) -> None:
    result = run("render", "-f", write(tmp_path, "bad.yaml", INVALID))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "spec.autoscaling.minReplicas" in result.stderr
    assert "broken" in result.stderr


def test_invalid_manifest_among_valid_ones(tmp_path: Path) -> None:
    result = run("render", "-f", "-", stdin=MINIMAL + "---\n" + INVALID + "---\n" + SECOND)
    assert result.returncode == 1
    owners = {o["metadata"]["ownerReferences"][0]["name"] for o in docs(result.stdout)}
    assert owners == {"iris", "wine"}
    assert "<stdin>#2: ModelDeployment/broken: spec.autoscaling.minReplicas" in result.stderr


ERROR_CASES = [
    (MINIMAL.replace('version: "3"', 'version: "3"\n    alias: champion'), "spec.model"),
    (MINIMAL + "  replicas: many\n", "spec.replicas"),
    (MINIMAL + "  runtime: {env: [{name: A}, {name: '1x'}]}\n", "spec.runtime.env[1].name"),
    (MINIMAL + "  ingress: {host: a.example.com, path: '/a//b'}\n", "spec.ingress.path"),
    (MINIMAL.replace("metadata: {name: iris, namespace: ml}", "metadata: {}"), "metadata.name"),
    (MINIMAL + "  unknownField: 1\n", "spec.unknownField"),
]


def test_error_paths() -> None:
    """One stream of broken manifests (one process): each error names its field."""
    result = run("render", "-f", "-", stdin="---\n".join(m for m, _ in ERROR_CASES))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == len(ERROR_CASES), result.stderr
    for i, (line, (_, path)) in enumerate(zip(lines, ERROR_CASES, strict=True), start=1):
        assert line.startswith(f"<stdin>#{i}: ModelDeployment/"), line
        assert f": {path}: " in line, line


def test_tracking_uri_and_image_options() -> None:
    result = run("render", "-f", "-", stdin=NO_URI)
    assert result.returncode == 1
    assert "spec.model.registry.trackingUri" in result.stderr
    assert "--tracking-uri" in result.stderr
    result = run(
        "render", "-f", "-", "--tracking-uri", "http://mlflow:5000", "--image", "rt:9",
        stdin=NO_URI,
    )
    assert result.returncode == 0, result.stderr
    (dep,) = [o for o in docs(result.stdout) if o["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "rt:9"
    init_env = {e["name"]: e.get("value") for e in pod["initContainers"][0]["env"]}
    assert init_env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_a_password_in_the_tracking_uri_option_is_a_usage_error_not_shown() -> None:
    result = run("render", "-f", "-", "--tracking-uri", "http://ml:pw-9c1@mlflow:5000",
                 stdin=NO_URI)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --tracking-uri: no user or password")
    assert "pw-9c1" not in result.stderr + result.stdout


def test_alias_needs_a_version_to_preview() -> None:
    result = run("render", "-f", "-", stdin=ALIAS)
    assert result.returncode == 1
    assert "spec.model.alias" in result.stderr and "--alias-version" in result.stderr
    result = run("render", "-f", "-", "--alias-version", "5", stdin=ALIAS)
    assert result.returncode == 0, result.stderr
    assert "champ-v5" in [o["metadata"]["name"] for o in docs(result.stdout)]


INGRESS = MINIMAL + "  replicas: 4\n  ingress: {host: iris.example.com, className: nginx}\n"
GATEWAY = MINIMAL.replace("name: iris,", "name: gw,") + (
    "  replicas: 4\n  gateway: {parentRefs: [{name: public}], hostnames: [iris.example.com]}\n"
)


def test_canary_preview_renders_the_rollout_mid_way() -> None:
    result = run("render", "-f", "-", "--canary-version", "4", "--weight", "25",
                 stdin=INGRESS + "---\n" + GATEWAY)
    assert result.returncode == 0, result.stderr
    objects = docs(result.stdout)
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    for obj in objects:
        if obj["kind"] != "HTTPRoute":  # a CRD kind: kubernetes-validate has no schema
            kubernetes_validate.validate(obj, "1.37", strict=True)
    # Both versions run; the canary is sized for its weight, the stable side keeps all.
    assert by_name[("Deployment", "iris-v3")]["spec"]["replicas"] == 4
    assert by_name[("Deployment", "iris-v4")]["spec"]["replicas"] == 1
    canary_svc = by_name[("Service", "iris--canary")]
    assert canary_svc["spec"]["selector"]["modelship.io/model-version"] == "4"
    ingress = by_name[("Ingress", "iris--canary")]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary"] == "true"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] == "25"
    route = by_name[("HTTPRoute", "gw")]
    weights = [(b["name"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]]
    assert weights == [("gw", 75), ("gw--canary", 25)]


def test_canary_weight_defaults_to_zero() -> None:
    result = run("render", "-f", "-", "--canary-version", "4", stdin=INGRESS)
    assert result.returncode == 0, result.stderr
    ingress = next(o for o in docs(result.stdout) if o["metadata"]["name"] == "iris--canary"
                   and o["kind"] == "Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] == "0"


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--weight", "10"], 2, "--weight needs --canary-version"),
        (["--canary-version", "4", "--weight", "101"], 2, "must be 0-100"),
        (["--canary-version", "4", "--weight", "-1"], 2, "must be 0-100"),
        (["--canary-version", "v4"], 2, "an MLflow model version number"),
        (["--canary-version", "3", "--weight", "50"], 1, "that is the stable version"),
    ],
)
def test_canary_option_errors(args: list[str], status: int, message: str) -> None:
    result = run("render", "-f", "-", *args, stdin=MINIMAL)
    assert result.returncode == status
    assert result.stdout == ""
    assert message in result.stderr


def test_other_kinds_are_skipped() -> None:
    result = run("render", "-f", "-", stdin="apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "skipped Secret/s" in result.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["render", "-f", "/nonexistent/md.yaml"], None, "cannot read /nonexistent/md.yaml"),
        (["render", "-f", "-"], "a: [unclosed\n", "not valid YAML"),
        (["render"], None, "-f"),
        ([], None, "render"),
    ],
)
def test_usage_errors(args: list[str], stdin: str | None, message: str) -> None:
    result = run(*args, stdin=stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr


def _examples() -> list[str]:
    return [str(p) for p in sorted(EXAMPLES.glob("**/*.y*ml"))]


@pytest.mark.skipif(not _examples(), reason="examples/ holds no manifests yet")
def test_every_example_renders() -> None:
    files = [arg for path in _examples() for arg in ("-f", path)]
    result = run("render", *files, "--alias-version", "1")
    assert result.returncode == 0, result.stderr
    assert any(o["kind"] == "Deployment" for o in docs(result.stdout))


def test_version_comes_from_the_installed_distribution() -> None:
    from importlib.metadata import version

    import modelship_operator

    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"modelship {version('modelship-operator')}\n"
    assert version("modelship-operator") == modelship_operator.__version__


def test_version_without_distribution_metadata_falls_back_to_the_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    import modelship_operator
    from modelship_operator.cli import version_string

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert version_string() == f"modelship {modelship_operator.__version__}"


def test_a_file_that_is_not_text_is_a_one_line_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x80\x81 binary")
    result = run("render", "-f", str(path))
    assert result.returncode == 2
    assert result.stderr == f"error: cannot read {path}: not UTF-8 text (invalid start byte " \
        "at byte 0)\n"


def test_a_reader_that_leaves_early_ends_the_render_quietly() -> None:
    """`modelship render ... | head`: a reader gone before the YAML is written gets no
    BrokenPipeError traceback, and the exit code is the shell's 141."""
    assert MODELSHIP is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
    proc = subprocess.Popen([MODELSHIP, "render", "-f", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader leaves first
    proc.stdin.write(MINIMAL.encode())
    proc.stdin.close()
    assert proc.wait(60) == 141
    assert proc.stderr.read() == b""
    proc.stderr.close()

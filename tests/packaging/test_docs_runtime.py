"""What the documentation shows is what happens: every shell block says how it is tested
(docs_blocks.py); the blocks that talk to a runtime run against a real
`modelship-runtime serve` and must get the answers they document; every Secret example
holds the keys the operator's pods read (derived from what the operator renders), and
examples/full.yaml's pod, started from those Secrets as a kubelet would, serves with its
cache and API keys."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import kubelet
import ports
import pytest
import secret_examples as se
import yaml
from artifacts import REPO
from demo_parts import MlflowServer, Runtime
from docs_blocks import (
    DOCS,
    RUNS_OFFLINE,
    RUNTIME,
    RUNTIME_HOSTS,
    RUNTIME_WITH_KEYS,
    Block,
    blocks,
    expected_statuses,
)
from modelship_operator import naming
from modelship_operator.api import ModelDeployment
from modelship_operator.reconcilers import shadowtoken
from modelship_operator.render import RolloutState, render
from modelship_operator.settings import OperatorSettings
from runtime_proc import free_port

BLOCKS = blocks()
RUNTIME_BLOCKS = [b for b in BLOCKS if b.mark in (RUNTIME, RUNTIME_WITH_KEYS)]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
BIN = Path(sys.executable).parent
NAMESPACE = "ml"


# --- every block is classified -------------------------------------------------------------

def test_every_shell_block_says_how_it_is_tested() -> None:
    assert {b.path for b in BLOCKS} >= {REPO / "README.md", REPO / "runtime" / "README.md"}
    assert REPO / "docs" / "cli.md" in DOCS  # docs/*.md are read too
    unmarked = [b.where for b in BLOCKS if b.mark is None]
    assert not unmarked, (
        f"shell blocks without a mark: {unmarked}; put one of '<!-- readme-test: runs offline "
        "-->', '<!-- readme-test: talks to a runtime -->', '<!-- readme-test: talks to a "
        "runtime with API keys -->' or '<!-- readme-test: skip, REASON -->' before each")
    unknown = [(b.where, b.mark) for b in BLOCKS if b.mark not in (
        RUNS_OFFLINE, RUNTIME, RUNTIME_WITH_KEYS) and not (b.skip_reason or "").strip()]
    assert not unknown, f"marks the tests do not know: {unknown}"
    hidden = [b.where for b in BLOCKS if b.talks_to_a_runtime() and b not in RUNTIME_BLOCKS]
    assert not hidden, f"blocks that talk to a runtime but are not run against one: {hidden}"
    idle = [b.where for b in RUNTIME_BLOCKS if not b.talks_to_a_runtime()]
    assert not idle, f"blocks marked as talking to a runtime that send it nothing: {idle}"


def test_which_blocks_run_and_which_do_not() -> None:
    ran = sorted(b.where for b in RUNTIME_BLOCKS)
    skipped = sorted(f"{b.where} ({b.skip_reason})" for b in BLOCKS if b.skip_reason)
    print("run against a real runtime:", *ran, sep="\n  ")
    print("run offline (test_readme.py):",
          *sorted(b.where for b in BLOCKS if b.mark == RUNS_OFFLINE), sep="\n  ")
    print("not run:", *skipped, sep="\n  ")
    assert ran, "no block talks to a runtime"
    assert {b.path for b in RUNTIME_BLOCKS} >= {REPO / "README.md", REPO / "runtime" / "README.md"}
    assert any(b.mark == RUNTIME_WITH_KEYS for b in RUNTIME_BLOCKS)
    assert sum(len(expected_statuses(b.body)) for b in RUNTIME_BLOCKS) >= 10


# --- the blocks that talk to a runtime --------------------------------------------------------

SHIM = """#!/bin/bash
# curl, with the status of its last answer (000: none) appended to $CURL_LOG
headers="$(mktemp)"
rc=0
{curl} "$@" -D "$headers" || rc=$?
status="$(awk '/^HTTP\\//{{ s = $2 }} END {{ print s }}' "$headers")"
echo "${{status:-000}}" >>"$CURL_LOG"
rm -f "$headers"
exit "$rc"
"""


def run_block(block: Block, base_url: str,
              tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """Run `block` with its runtime host replaced by `base_url`; (result, statuses)."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = block.body
    for host in RUNTIME_HOSTS:
        body = body.replace(host, base_url)
    others = [u for u in re.findall(r"https?://[^\s'\"]+", body) if not u.startswith(base_url)]
    assert not others, f"{block.where} talks to {others}, not to {' or '.join(RUNTIME_HOSTS)}"
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "curl").write_text(SHIM.format(curl=curl))
    (shim / "curl").chmod(0o755)
    log = tmp_path / "statuses"
    log.touch()
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "CURL_LOG": str(log)}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    return result, [int(s) for s in log.read_text().split()]


def mismatches(statuses: list[int], expected: list[range | int]) -> list[str]:
    """Each curl line whose answer is not the documented one (or that did not run)."""
    if len(statuses) != len(expected):
        return [f"{len(statuses)} answers for {len(expected)} curl lines: {statuses}"]
    return [f"curl #{i + 1}: {got}, documented {want}"
            for i, (got, want) in enumerate(zip(statuses, expected, strict=True))
            if (got not in want if isinstance(want, range) else got != want)]


@pytest.mark.parametrize("block", RUNTIME_BLOCKS, ids=lambda b: b.where)
def test_block_gets_the_answers_it_documents(block: Block, request: pytest.FixtureRequest,
                                             tmp_path: Path) -> None:
    runtime = request.getfixturevalue(
        "iris_runtime" if block.mark == RUNTIME else "full_example_pod").url
    result, statuses = run_block(block, runtime, tmp_path)
    assert result.returncode == 0, f"{block.where}:\n{result.stdout}{result.stderr}"
    wrong = mismatches(statuses, expected_statuses(block.body))
    assert not wrong, f"{block.where}: {wrong}\n{result.stdout}{result.stderr}"


def test_a_block_is_held_to_what_it_documents(iris_runtime: Runtime, tmp_path: Path) -> None:
    """The check above can fail: a refused request, or a status other than the one the
    comment names, is a mismatch."""
    block = Block(REPO / "README.md", 0, RUNTIME, (
        "curl -s http://localhost:8080/predict -d '{\"features\": [1]}'\n"
        "curl -s http://localhost:8080/readyz   # 404: wrongly documented\n"))
    result, statuses = run_block(block, iris_runtime.url, tmp_path)
    assert result.returncode == 0 and statuses == [400, 200]
    assert mismatches(statuses, expected_statuses(block.body)) == [
        "curl #1: 400, documented range(200, 300)", "curl #2: 200, documented 404"]
    assert mismatches(statuses[:1], expected_statuses(block.body))


# --- Secret examples against the keys the pods read -------------------------------------------

def _rendered(path: Path) -> list[dict[str, Any]]:
    md = ModelDeployment.model_validate(yaml.safe_load(path.read_text()))
    version = md.spec.model.version or "7"  # an alias resolves to some version
    return render(md, RolloutState(stable_version=version), OperatorSettings())


def _operator_made(path: Path) -> set[str]:
    """Secrets the operator creates itself for the example (users never write them)."""
    md = ModelDeployment.model_validate(yaml.safe_load(path.read_text()))
    return {naming.shadow_token_name(md.metadata.name)} if shadowtoken.wanted(md) else set()


def _uses() -> dict[str, se.Reads]:
    uses: dict[str, se.Reads] = {}
    for path in EXAMPLES:
        made = _operator_made(path)
        for name, use in se.reads(_rendered(path)).items():
            if name in made:
                continue
            merged = uses.setdefault(name, se.Reads())
            merged.required |= use.required
            merged.optional |= use.optional
            merged.whole |= use.whole
            merged.tls |= use.tls
            merged.by |= {f"{path.name}: {b}" for b in use.by}
    return uses


def test_secret_examples_hold_the_keys_the_pods_read() -> None:
    examples = se.documented()
    uses = _uses()
    # What the operator renders today: a cache Secret read by key, an API-key Secret
    # mounted whole, registry credentials as optional keys, TLS for the Ingress.
    assert {n for n, u in uses.items() if u.by_pods} >= {"iris-redis", "iris-api-keys",
                                                         "mlflow-auth"}
    assert uses["iris-redis"].required and uses["iris-api-keys"].whole
    assert uses["mlflow-auth"].optional and not uses["mlflow-auth"].required
    named = {e.name for e in examples}
    undocumented = sorted(n for n, u in uses.items() if u.by_pods and n not in named)
    assert not undocumented, f"the examples name Secrets the docs never show: {undocumented}"
    found = []
    for example in examples:
        assert example.namespace in (None, NAMESPACE), example
        if example.name not in uses:
            found.append(f"{example.where}: {example.name} is named by no example")
            continue
        found += [f"{example.where}: {p}" for p in se.problems(example, uses[example.name])]
    assert not found, "\n".join(found)


def test_the_secret_check_finds_wrong_keys() -> None:
    """The check above can fail: the keys docs and code used to disagree on are caught."""
    uses = _uses()
    by_name = {e.name: e for e in se.documented()}
    redis = by_name["iris-redis"]
    wrong = se.SecretExample("x", redis.name, None, "Opaque", {"REDIS_URL": "redis://r:6379"})
    assert any("lacks ['url']" in p for p in se.problems(wrong, uses["iris-redis"]))
    token = se.SecretExample("x", "mlflow-auth", None, "Opaque", {"token": "t"})
    assert any("no pod reads" in p for p in se.problems(token, uses["mlflow-auth"]))
    empty = se.SecretExample("x", "iris-api-keys", None, "Opaque", {})
    assert se.problems(empty, uses["iris-api-keys"])
    assert not se.problems(by_name["iris-api-keys"], uses["iris-api-keys"])


# --- examples/full.yaml's pod, from the documented Secrets ------------------------------------

@dataclass
class Pod:
    url: str
    secrets: dict[str, dict[str, str]]
    env: dict[str, str]


def _redis(tmp: Path) -> tuple[int, subprocess.Popen[bytes]]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is missing (apt-get install redis-server; make setup does)")
    port = ports.free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return port, proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def operator_made_secrets() -> dict[str, dict[str, str]]:
    """The Secrets the operator itself creates for examples/full.yaml, as it makes them."""
    return {name: {"token": shadowtoken.new_token()}
            for name in _operator_made(REPO / "examples" / "full.yaml")}


def full_example_pod_spec(tracking_uri: str, version: str) -> dict[str, Any]:
    """The Deployment pod of examples/full.yaml, at `version` of the demo registry."""
    manifest = yaml.safe_load((REPO / "examples" / "full.yaml").read_text())
    manifest["spec"]["model"]["version"] = version
    manifest["spec"]["model"]["registry"]["trackingUri"] = tracking_uri
    md = ModelDeployment.model_validate(manifest)
    objects = render(md, RolloutState(stable_version=version), OperatorSettings())
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _serve_args(command: list[str]) -> list[str]:
    """The serving container's arguments after `serve`, without its --port."""
    assert command[:2] == ["modelship-runtime", "serve"], command
    args = command[2:]
    i = args.index("--port")
    assert args[i + 1] == str(OperatorSettings().runtime_port)
    return args[:i] + args[i + 2:]


@pytest.fixture(scope="module")
def full_example_pod(demo_mlflow: MlflowServer, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[Pod]:
    """examples/full.yaml's pod: its init container pulls, its runtime serves, both with
    the env and volumes the operator renders, filled from the documented Secrets (the
    cache Secret's Redis address pointed at a real redis-server)."""
    root = tmp_path_factory.mktemp("full-pod")
    port, redis = _redis(root)
    try:
        secrets = {e.name: dict(e.data) for e in reversed(se.documented())}
        url = urlsplit(secrets["iris-redis"]["url"])
        secrets["iris-redis"]["url"] = urlunsplit(url._replace(netloc=f"127.0.0.1:{port}"))
        pod = full_example_pod_spec(demo_mlflow.uri, "2")
        secrets.update(operator_made_secrets())
        init = kubelet.container(pod, "pull-model", root / "volumes", namespace=NAMESPACE,
                                 secrets=secrets)
        assert init.command[:2] == ["modelship-runtime", "pull"]
        pulled = subprocess.run([str(BIN / "modelship-runtime"), *init.command[1:]],
                                env={**os.environ, **init.env}, capture_output=True,
                                text=True, timeout=300)
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        main = kubelet.container(pod, "runtime", root / "volumes", namespace=NAMESPACE,
                                 secrets=secrets)
        # The pod's own ports: a pod has its network to itself, this test shares the
        # machine's (the rendered gRPC port, 8081, may be another test's meanwhile).
        assert main.env["MODELSHIP_GRPC_PORT"] == str(OperatorSettings().runtime_grpc_port)
        env = {**main.env, "MODELSHIP_GRPC_PORT": str(free_port())}
        runtime = Runtime(_serve_args(main.command), root / "runtime.log", env=env).start()
        try:
            yield Pod(runtime.url, secrets, main.env)
        finally:
            runtime.stop()
    finally:
        redis.terminate()
        redis.wait(15)


def test_full_example_serves_with_the_documented_secrets(full_example_pod: Pod) -> None:
    url, keys = full_example_pod.url, full_example_pod.secrets["iris-api-keys"]
    row = {"features": [5.1, 3.5, 1.4, 0.2]}
    assert len(keys) >= 2  # the docs show that any key of the Secret counts
    assert httpx.post(f"{url}/predict", json=row).status_code == 401
    for key in keys.values():
        answers = [httpx.post(f"{url}/predict", json=row, headers={"X-API-Key": key})
                   for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200], answers[0].text
        assert answers[1].json()["cache_hit"] is True  # the cache Secret's Redis answers
    assert full_example_pod.env["REDIS_URL"].startswith("redis://127.0.0.1:")


def test_a_cache_secret_without_its_key_stops_the_pod(tmp_path: Path) -> None:
    pod = full_example_pod_spec("http://mlflow.mlflow:5000", "2")
    secrets = {e.name: dict(e.data) for e in se.documented()}
    secrets["iris-redis"] = {"REDIS_URL": secrets["iris-redis"]["url"]}  # the old key
    with pytest.raises(kubelet.PodError, match="couldn't find key url in Secret ml/iris-redis"):
        kubelet.container(pod, "runtime", tmp_path, namespace=NAMESPACE, secrets=secrets)


def test_an_api_key_secret_without_keys_stops_the_runtime_saying_why(tmp_path: Path) -> None:
    pod = full_example_pod_spec("http://mlflow.mlflow:5000", "2")
    secrets = {e.name: dict(e.data) for e in se.documented()}
    secrets["iris-api-keys"] = {}
    secrets.update(operator_made_secrets())
    main = kubelet.container(pod, "runtime", tmp_path / "volumes", namespace=NAMESPACE,
                             secrets=secrets)
    result = subprocess.run([str(BIN / "modelship-runtime"), *main.command[1:]],
                            env={**os.environ, **main.env}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "holds no API key" in result.stderr
    assert main.env["MODELSHIP_API_KEYS_FILE"] in result.stderr

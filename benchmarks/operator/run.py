"""Reconcile N ModelDeployments to Ready with the real operator, a real MLflow and KMock's
emulated Kubernetes API.

The operator checks every model version in MLflow before it deploys it (the setting
verify_model_versions, on by default), so the benchmark runs a real `mlflow server`
(sqlite, artifacts behind its proxy) holding one registered model per ModelDeployment
with version 1 and its MLmodel file. It then creates the ModelDeployments, plays the
kubelet (a Deployment's pods turn ready once the operator has reported on its owner) and
waits until every ModelDeployment is Ready for its current generation.

Measures: wall time from the first create until all are Ready; API requests per
ModelDeployment on the way (the operator's client and kopf's, not the benchmark's); a
full round of no-op resync passes (every ModelDeployment resynced once more): requests
per pass and writes (none expected); operator CPU and peak RSS.

Exits 1, saying which ModelDeployments are not Ready and why, unless all are Ready within
--timeout seconds of the first create (and the setup and resync rounds end within their
own bounds).

Usage: .venv/bin/python benchmarks/operator/run.py [--count 200] [--resync 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "operator"))

from kube_emulator import Cluster  # noqa: E402
from mlflow_proc import BIN, MlflowServer  # noqa: E402
from modelship_operator import naming, rbac  # noqa: E402

Request = tuple[str, str, dict[str, str], str]  # method, path, query, user agent

NS = "bench"
SETUP_SECONDS = 300.0  # bound on the start of MLflow and of the operator
ROUND_SECONDS = 120.0  # bound on each round of resync passes (at least 20 intervals)
REPLICAS = 2
CHILDREN_PER_MD = 6  # Deployment, Service, ServiceAccount, PDB, NetworkPolicy, Ingress

# The MLmodel file of the one artifact every version points at. The operator checks that
# it is listed; no pod loads it (the emulated API runs no pods).
MLMODEL = """artifact_path: model
flavors:
  python_function:
    loader_module: mlflow.sklearn
    model_path: model.pkl
  sklearn:
    pickled_model: model.pkl
    serialization_format: cloudpickle
"""


class BenchError(RuntimeError):
    """The run could not produce its figures; the message says why."""


def model_name(i: int) -> str:
    return f"bench-model-{i:04d}"


def manifest(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"model-{i:04d}", "namespace": NS},
        "spec": {
            # The registry is the operator's default tracking URI (the real MLflow).
            "model": {"name": model_name(i), "version": "1"},
            "replicas": REPLICAS,
            "ingress": {"host": f"m{i}.example.com"},
        },
    }


def register_models(uri: str, count: int) -> None:
    """Model `bench-model-NNNN` version 1 for each ModelDeployment, over MLflow's REST API:
    one run holding an MLmodel file, and `count` registered models whose version 1 is it."""
    session = requests.Session()

    def call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = session.request(method, f"{uri}/api/2.0/{path}", timeout=60, **kwargs)
        if response.status_code != 200:
            raise BenchError(f"MLflow {method} {path}: {response.status_code} {response.text}")
        return dict(response.json()) if response.content else {}

    run = call("POST", "mlflow/runs/create", json={"experiment_id": "0"})["run"]["info"]
    artifacts = run["artifact_uri"]  # mlflow-artifacts:/0/<run id>/artifacts
    if not artifacts.startswith("mlflow-artifacts:/"):
        raise BenchError(f"MLflow stores artifacts at {artifacts}, not behind its proxy")
    path = artifacts.removeprefix("mlflow-artifacts:/")
    call("PUT", f"mlflow-artifacts/artifacts/{path}/model/MLmodel", data=MLMODEL.encode())

    def one(i: int) -> None:
        call("POST", "mlflow/registered-models/create", json={"name": model_name(i)})
        version = call("POST", "mlflow/model-versions/create", json={
            "name": model_name(i), "source": f"{artifacts}/model", "run_id": run["run_id"],
        })["model_version"]
        if version["version"] != "1" or version["status"] != "READY":
            raise BenchError(f"{model_name(i)}: unexpected version {version}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(count)))


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def is_ready(md: dict[str, Any]) -> bool:
    """Ready for its current spec: phase Ready, Ready=True, observedGeneration current."""
    status = md.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return (status.get("phase") == "Ready" and bool(ready) and ready[0].get("status") == "True"
            and status.get("observedGeneration") == md["metadata"].get("generation"))


def describe(md: dict[str, Any]) -> str:
    status = md.get("status") or {}
    reconciling = [c for c in status.get("conditions") or [] if c.get("type") == "Reconciling"]
    why = f"{reconciling[0].get('reason')}: {reconciling[0].get('message')}" if reconciling \
        else "no conditions"
    return f"{md['metadata']['name']}: phase {status.get('phase')}, {why}"


def poll(predicate: Callable[[], bool], deadline: float, proc: subprocess.Popen[bytes],
         what: str, every: float = 0.25) -> None:
    """Until `predicate()` holds; BenchError at `deadline` or if the operator exits."""
    while not predicate():
        if proc.poll() is not None:
            raise BenchError(f"the operator exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(every)


def by_operator(cluster: Cluster, since: int) -> list[Request]:
    """Requests from the operator (its client and kopf's) after the first `since` requests."""
    return [r for r in cluster.requests()[since:] if r[3] != "test-user"]


def resync_passes(window: list[Request]) -> int:
    # One resync pass of one ModelDeployment lists its Deployments exactly once, by label.
    return sum(1 for r in window if r[0] == "GET" and r[1].endswith("/deployments") and r[2]
               and "watch" not in r[2])


def resource_of(path: str) -> str:
    """The resource a request path names: 'deployments', 'modeldeployments/status', ..."""
    parts = path.strip("/").split("/")
    if "namespaces" in parts[:-1]:
        parts = parts[parts.index("namespaces") + 2:]
    else:
        parts = parts[2:] if parts[0] == "api" else parts[3:]
    return "/".join(parts[:1] + parts[2:3])


def breakdown(requests_: list[Request], count: int) -> dict[str, float]:
    """Requests per ModelDeployment by method and resource, most frequent first."""
    tally: dict[str, int] = {}
    for method, path, query, _ in requests_:
        key = f"{'WATCH' if 'watch' in query else method} {resource_of(path)}"
        tally[key] = tally.get(key, 0) + 1
    return {k: round(v / count, 2) for k, v in sorted(tally.items(), key=lambda kv: -kv[1])}


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    begun = time.monotonic()

    def say(what: str) -> None:
        print(f"[{time.monotonic() - begun:6.1f}s] {what}", file=sys.stderr, flush=True)

    setup_deadline = begun + SETUP_SECONDS
    mlflow = MlflowServer(workdir)
    cluster = Cluster(workdir)
    proc: subprocess.Popen[bytes] | None = None
    cluster_up = False
    log = (workdir / "operator.log").open("wb")
    try:
        with ThreadPoolExecutor(1) as pool:
            # MLflow starts while the emulated API and the operator do.
            mlflow_up = pool.submit(mlflow.start, SETUP_SECONDS)
            cluster.start()
            cluster_up = True
            env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
            env.update(
                KUBECONFIG=str(cluster.kubeconfig),
                MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI=mlflow.uri,
                MODELSHIP_OPERATOR_VERIFY_MODEL_VERSIONS="true",
                MODELSHIP_OPERATOR_RESYNC_INTERVAL_SECONDS=str(args.resync),
                MODELSHIP_OPERATOR_METRICS_PORT="0",  # no metrics endpoint: 8080 may be taken
                PYTHONUNBUFFERED="1",
            )
            proc = subprocess.Popen(
                [str(BIN / "kopf"), "run", "--standalone", "--all-namespaces", "-m",
                 "modelship_operator.handlers"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            )
            try:
                mlflow_up.result()
            except (RuntimeError, TimeoutError) as exc:
                raise BenchError(f"MLflow: {exc}") from exc
        mlflow_seconds = time.monotonic() - begun
        say(f"MLflow up at {mlflow.uri}; registering {args.count} models")
        started = time.monotonic()
        register_models(mlflow.uri, args.count)
        register_seconds = time.monotonic() - started
        say("models registered; waiting for the operator")
        # Startup and discovery are not part of the figures: wait for the operator's watch.
        kube = cluster
        poll(lambda: any(r[0] == "GET" and r[1].endswith("/modeldeployments")
                         and "watch" in r[2] for r in by_operator(kube, 0)),
             setup_deadline, proc, "the operator to watch ModelDeployments")
        baseline = len(kube.requests())
        cpu_start = cpu_seconds(proc.pid)
        setup_seconds = time.monotonic() - begun
        say(f"operator up; creating {args.count} ModelDeployments")
        started = time.monotonic()
        deadline = started + args.timeout
        for i in range(args.count):
            kube.create_md(manifest(i))
        marked: set[str] = set()

        def all_ready() -> bool:
            mds = kube.objects("modeldeployments", NS)
            for md in mds:
                stable = (md.get("status") or {}).get("stable") or {}
                if not stable.get("version"):
                    continue
                name = naming.deployment_name(md["metadata"]["name"], str(stable["version"]))
                if name not in marked:
                    kube.mark_ready(NS, name, REPLICAS)  # the kubelet's part
                    marked.add(name)
            return len(mds) == args.count and all(is_ready(md) for md in mds)

        try:
            poll(all_ready, deadline, proc, "every ModelDeployment to be Ready", every=0.5)
        except BenchError as exc:
            mds = kube.objects("modeldeployments", NS)
            late = [describe(md) for md in mds if not is_ready(md)]
            raise BenchError(
                f"{exc}: {args.count - len(late)}/{args.count} Ready within {args.timeout}s; "
                f"not Ready: {'; '.join(late[:5])}{' ...' if len(late) > 5 else ''}"
            ) from exc
        wall = time.monotonic() - started
        say(f"all {args.count} Ready; measuring a round of resync passes")
        cpu_create = cpu_seconds(proc.pid) - cpu_start
        create_requests = by_operator(kube, baseline)

        # Let every ModelDeployment have one resync pass, then measure one more full round.
        deadline = time.monotonic() + max(ROUND_SECONDS, 20 * args.resync)
        settle = len(kube.requests())
        poll(lambda: resync_passes(by_operator(kube, settle)) >= args.count, deadline, proc,
             "a first round of resync passes")
        deadline = time.monotonic() + max(ROUND_SECONDS, 20 * args.resync)
        before = len(kube.requests())
        cpu_before = cpu_seconds(proc.pid)
        window_start = time.monotonic()
        poll(lambda: resync_passes(by_operator(kube, before)) >= args.count, deadline,
             proc, "a round of resync passes")
        window_seconds = time.monotonic() - window_start
        say("resync round measured; stopping")
        if args.requests_log is not None:
            with args.requests_log.open("w") as out:
                for number, request in enumerate(kube.requests()):
                    phase = "setup" if number < baseline else "create" if number < settle \
                        else "settle" if number < before else "resync"
                    method, path, query, agent = request
                    out.write(json.dumps({"phase": phase, "method": method, "path": path,
                                          "query": query, "agent": agent}) + "\n")
        cpu_resync = cpu_seconds(proc.pid) - cpu_before
        window = by_operator(kube, before)
        passes = resync_passes(window)
        writes = [r for r in window if r[0] in ("POST", "PUT", "PATCH", "DELETE")]
        denied = [r for r in by_operator(kube, 0) if not rbac.allows(r[0], r[1], r[2])]
        return {
            "modeldeployments": args.count,
            "ready": args.count,
            "setup_seconds": round(setup_seconds, 2),
            "mlflow_start_seconds": round(mlflow_seconds, 2),
            "mlflow_registration_seconds": round(register_seconds, 2),
            "wall_seconds": round(wall, 2),
            "per_second": round(args.count / wall, 1),
            "create_requests_per_md": round(len(create_requests) / args.count, 2),
            "create_writes_per_md": round(
                sum(1 for r in create_requests if r[0] != "GET") / args.count, 2
            ),
            "create_requests_per_md_by_kind": breakdown(create_requests, args.count),
            "resync_window_seconds": round(window_seconds, 2),
            "resync_passes": passes,
            "resync_requests_per_pass": round(len(window) / passes, 2),
            "resync_writes_total": len(writes),
            "operator_cpu_ms_per_md_create": round(1000 * cpu_create / args.count, 1),
            "operator_cpu_ms_per_resync_pass": round(1000 * cpu_resync / passes, 1),
            "operator_peak_rss_mib": round(peak_rss_kib(proc.pid) / 1024, 1),
            "requests_outside_rbac": len(denied),
        }
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                say("the operator did not stop within 30s of SIGTERM; killing it")
                proc.kill()
                proc.wait(timeout=20)
            say("operator stopped")
        log.close()
        if cluster_up:
            cluster.stop()
            say("emulated API stopped")
        mlflow.stop()
        say("emulated API and MLflow stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="ModelDeployments (>= 1)")
    parser.add_argument("--resync", type=float, default=5.0, help="resync interval, seconds")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds from the first create within which every "
                             "ModelDeployment must be Ready")
    parser.add_argument("--requests-log", type=Path, metavar="FILE",
                        help="write every API request (JSON lines, with the phase) to FILE")
    args = parser.parse_args(argv)
    if args.count < 1 or args.resync <= 0 or args.timeout <= 0:
        parser.error("--count must be at least 1, --resync and --timeout above 0")
    workdir = Path(tempfile.mkdtemp(prefix="modelship-bench-"))
    try:
        result = bench(args, workdir)
    except BenchError as exc:
        print(f"bench-operator failed: {exc} (logs kept in {workdir})", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

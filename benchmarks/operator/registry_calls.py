"""Registry calls per minute of the real operator, for N ModelDeployments on one alias.

Starts KMock's emulated Kubernetes API (tests/operator/kube_emulator.py), a counting
stand-in for MLflow's REST routes (tests/operator/mlflow_standin.py) and the operator
(`kopf run -m modelship_operator.handlers`), creates `--followers` ModelDeployments that
follow one alias with one credentials Secret and `--pinned` ones on one version, waits
until every one has resolved, then counts for `--window` seconds what the operator asks
MLflow (by route) and how often it reads the Secret. With `--peer DIR` (a checkout of
another revision) the same scenario runs with DIR's operator code too, in the same run,
and the ratios peer / this are reported.

Usage: .venv/bin/python benchmarks/operator/registry_calls.py [--followers 200]
           [--pinned 50] [--poll 2] [--window 30] [--peer /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "operator"))

from kube_emulator import Cluster  # noqa: E402
from mlflow_standin import Mlflow, serving  # noqa: E402

NS = "bench"
TOKEN = "bench-token"
KOPF = Path(sys.executable).parent / "kopf"


def wait(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {seconds}s waiting for {what}")
        time.sleep(0.25)


def scenario(code: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The figures of one operator (its code under `code`)."""
    state = Mlflow()
    state.tokens = {TOKEN}
    state.aliases[(TOKEN, "fraud", "champion")] = "1"
    state.versions.update({("fraud", "1"), ("fraud", "2")})
    cluster = Cluster(workdir).start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        with serving(state) as uri:
            cluster.http("POST", f"/api/v1/namespaces/{NS}/secrets", {
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "mlflow-auth", "namespace": NS},
                "data": {"MLFLOW_TRACKING_TOKEN": base64.b64encode(TOKEN.encode()).decode()}})
            env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
            env.update(
                KUBECONFIG=str(cluster.kubeconfig),
                PYTHONPATH=os.pathsep.join([str(code / "operator"), str(code / "runtime")]),
                MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI=uri,
                MODELSHIP_OPERATOR_VERIFY_MODEL_VERSIONS="true",
                MODELSHIP_OPERATOR_ALIAS_POLL_SECONDS=str(args.poll),
                MODELSHIP_OPERATOR_METRICS_PORT="0",
                PYTHONUNBUFFERED="1",
            )
            with (workdir / "operator.log").open("wb") as log:
                proc = subprocess.Popen(
                    [str(KOPF), "run", "--standalone", "--all-namespaces", "-m",
                     "modelship_operator.handlers"],
                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                )
            registry = {"credentialsSecret": "mlflow-auth"}
            names = []
            for i in range(args.followers + args.pinned):
                model = {"name": "fraud", "registry": registry}
                model.update({"alias": "champion"} if i < args.followers else {"version": "2"})
                names.append(f"md-{i}")
                cluster.create_md({
                    "apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
                    "metadata": {"name": names[-1], "namespace": NS},
                    "spec": {"model": model, "replicas": 1}})

            def resolved() -> bool:
                mds = cluster.objects("modeldeployments", NS)
                return len(mds) == len(names) and all(
                    ((md.get("status") or {}).get("stable") or {}).get("version") for md in mds)

            wait(resolved, 600, "every ModelDeployment resolved")
            seen, requests = len(state.seen), len(cluster.requests())
            time.sleep(args.window)  # the measured window: a count over a fixed time
            window = state.seen[seen:]
            secret_gets = sum(1 for m, p, _, _ in cluster.requests()[requests:]
                              if m == "GET" and p.endswith("/secrets/mlflow-auth"))
            per_minute = 60.0 / args.window
            routes: dict[str, int] = {}
            for route, _, _ in window:
                routes[route] = routes.get(route, 0) + 1
            return {
                "registry_calls_per_minute": round(len(window) * per_minute, 1),
                "alias_polls_per_minute": round(
                    routes.get("registered-models/alias", 0) * per_minute, 1),
                "version_checks_in_window": routes.get("model-versions/get", 0),
                "secret_reads_per_minute": round(secret_gets * per_minute, 1),
                "tcp_connections_in_window": len({port for _, _, port in window}),
            }
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=200)
    parser.add_argument("--pinned", type=int, default=50)
    parser.add_argument("--poll", type=float, default=2.0, help="alias_poll_seconds")
    parser.add_argument("--window", type=float, default=30.0, help="seconds counted")
    parser.add_argument("--peer", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "followers": args.followers, "pinned": args.pinned, "poll_seconds": args.poll,
        "window_seconds": args.window,
    }
    with tempfile.TemporaryDirectory(prefix="registry-calls-") as tmp:
        (Path(tmp) / "this").mkdir()
        result["this"] = scenario(REPO, args, Path(tmp) / "this")
        if args.peer is not None:
            (Path(tmp) / "peer").mkdir()
            result["peer"] = scenario(args.peer.resolve(), args, Path(tmp) / "peer")
            result["peer_over_this"] = {
                k: round(v / result["this"][k], 1) if result["this"][k] else None
                for k, v in result["peer"].items()
            }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Reconcile N ModelDeployments with the real operator against KMock's emulator.

Measures: wall time from the first create until every ModelDeployment has all its
children and a status; API requests per ModelDeployment on create and on a no-op
resync (by the operator's own client and kopf's); the operator process's peak RSS.

Usage: .venv/bin/python benchmarks/operator/run.py [--count 200] [--resync 5]
"""

from __future__ import annotations

import argparse
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

from kube_emulator import Cluster, operator_requests  # noqa: E402

NS = "bench"
CHILDREN_PER_MD = 6  # Deployment, Service, ServiceAccount, PDB, NetworkPolicy, Ingress


def manifest(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"model-{i:04d}", "namespace": NS},
        "spec": {
            "model": {
                "name": f"Model {i}",
                "version": str(1 + i % 7),
                "registry": {"trackingUri": "http://mlflow.mlflow:5000"},
            },
            "replicas": 2,
            "ingress": {"host": f"m{i}.example.com"},
        },
    }


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--resync", type=float, default=5.0, help="resync interval, seconds")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="modelship-bench-"))
    cluster = Cluster(workdir).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
    env.update(
        KUBECONFIG=str(cluster.kubeconfig),
        MODELSHIP_OPERATOR_RESYNC_INTERVAL_SECONDS=str(args.resync),
        MODELSHIP_OPERATOR_METRICS_PORT="0",  # no metrics endpoint: 8080 may be taken here
        PYTHONUNBUFFERED="1",
    )
    log = (workdir / "operator.log").open("wb")
    kopf = Path(sys.executable).parent / "kopf"
    proc = subprocess.Popen(
        [str(kopf), "run", "--standalone", "--all-namespaces", "-m",
         "modelship_operator.handlers"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
    )
    try:
        time.sleep(2.0)  # startup and discovery are not part of the reconcile figure
        baseline = len(cluster.requests())
        cpu_start = cpu_seconds(proc.pid)
        started = time.monotonic()
        for i in range(args.count):
            cluster.create_md(manifest(i))
        deadline = started + args.timeout
        done = 0
        while time.monotonic() < deadline:
            mds = cluster.objects("modeldeployments", NS)
            done = sum(1 for md in mds if (md.get("status") or {}).get("observedGeneration"))
            children = len(cluster.objects("deployments", NS))
            if done == args.count and children == args.count:
                break
            time.sleep(0.5)
        wall = time.monotonic() - started
        if done != args.count:
            print(f"only {done}/{args.count} reconciled within {args.timeout}s", file=sys.stderr)
            return 1
        cpu_create = cpu_seconds(proc.pid) - cpu_start
        create_requests = operator_requests(cluster)[baseline:]
        # Let every MD's first resync pass happen, then count one full resync period.
        time.sleep(args.resync * 2)
        before = len(cluster.requests())
        cpu_before = cpu_seconds(proc.pid)
        time.sleep(args.resync * 3)
        cpu_resync = cpu_seconds(proc.pid) - cpu_before
        window = operator_requests(cluster)[before:]
        # One resync pass of one ModelDeployment lists its Deployments exactly once.
        passes = sum(
            1 for r in window if r[0] == "GET" and r[1].endswith("/deployments") and r[2]
        )
        writes = [r for r in window if r[0] in ("POST", "PUT", "PATCH", "DELETE")]
        result = {
            "modeldeployments": args.count,
            "wall_seconds": round(wall, 2),
            "per_second": round(args.count / wall, 1),
            "create_requests_per_md": round(len(create_requests) / args.count, 2),
            "create_writes_per_md": round(
                sum(1 for r in create_requests if r[0] != "GET") / args.count, 2
            ),
            "resync_passes": passes,
            "resync_requests_per_pass": round(len(window) / max(passes, 1), 2),
            "resync_writes_total": len(writes),
            "operator_cpu_ms_per_md_create": round(1000 * cpu_create / args.count, 1),
            "operator_cpu_ms_per_resync_pass": round(1000 * cpu_resync / max(passes, 1), 1),
            "operator_peak_rss_mib": round(peak_rss_kib(proc.pid) / 1024, 1),
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        cluster.stop()


if __name__ == "__main__":
    raise SystemExit(main())

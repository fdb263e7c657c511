"""How much work on the other core slows a runtime on core 0, with no exchange between
them: the same server, the same fixed-rate load, with and without a busy loop at idle
priority on the load generator's core.

    .venv/bin/python benchmarks/runtime/neighbour.py [--rounds 4]

One `modelship-runtime serve` of this tree (light model, core 0); h2load on core 1 at 4,500
requests a second on 8 connections, 2 s warm-up then 5 s; rounds alternate without and
with `chrt --idle 0 python -c "while True: pass"` on core 1. Prints the server's CPU per
request and the p50 and p99 of each run, then the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402
from procs import LOAD_CPU, Server, free_port  # noqa: E402
from protocols import run_h2load  # noqa: E402
from servers import REPO, base_env  # noqa: E402
from shadow import RESULTS, RUNTIME, cpu_seconds  # noqa: E402

RATE = 4500
CONNS = 8


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(argv)
    workdir = RESULTS / "work" / "neighbour"
    files, rows = models.train(workdir / "models")
    model = files["light"]
    assert model.mlflow_dir is not None
    body = json.dumps({"features": rows[0]}).encode()
    body_file = workdir / "body.json"
    body_file.write_bytes(body)
    env = base_env()
    env.update({"PYTHONPATH": str(REPO / "runtime"), "MODELSHIP_MODEL_NAME": "bench",
                "MODELSHIP_GRPC_PORT": "0"})
    port = free_port()
    server = Server("off", [str(RUNTIME), "serve", "--model-dir", str(model.mlflow_dir),
                            "--host", "127.0.0.1", "--port", str(port)],
                    env, workdir / "server.log", cpu="0")
    url = f"http://127.0.0.1:{port}/predict"
    extra = ["--h1", "-H", "content-type: application/json", f"--rps={RATE / CONNS}"]
    results: dict[str, list[tuple[float, float, float]]] = {"alone": [], "neighbour": []}
    server.start()
    try:
        server.wait_ready(url, body, 120)
        for rnd in range(args.rounds):
            for case in ("alone", "neighbour"):
                hog = None
                if case == "neighbour":
                    hog = subprocess.Popen(["taskset", "-c", LOAD_CPU, "chrt", "--idle", "0",
                                            sys.executable, "-c", "while True: pass"])
                try:
                    run_h2load(url, body_file, extra, CONNS, 2, None)
                    cpu0 = cpu_seconds(server.pid)
                    log = workdir / f"r{rnd}-{case}.log"
                    log.unlink(missing_ok=True)
                    stats = run_h2load(url, body_file, extra, CONNS, 5, log)
                    cpu = cpu_seconds(server.pid) - cpu0
                finally:
                    if hog is not None:
                        hog.terminate()
                        hog.wait(10)
                per = cpu / stats["done"] * 1e6
                results[case].append((per, stats["p50_ms"], stats["p99_ms"]))
                print(f"round {rnd} {case}: {stats['done']} requests, {per:.1f} us CPU/request,"
                      f" p50 {stats['p50_ms']:.3f} ms, p99 {stats['p99_ms']:.3f} ms", flush=True)
    finally:
        server.stop()
    for case, runs in results.items():
        cpu, p50, p99 = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"{case}: median {cpu:.1f} us CPU/request, p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

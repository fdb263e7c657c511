"""One runtime, four ways in: /predict, V2 over HTTP (JSON and binary tensors), V2 gRPC.

    .venv/bin/python benchmarks/runtime/protocols.py        # about 3 minutes

One `modelship-runtime serve` of this work tree (the project's venv, `PYTHONPATH=runtime`,
gRPC on) serves the benchmark's light model (or `--model heavy`), pinned to core 0. The
load comes from one generator for all four, h2load (nghttp2-client), pinned to core 1:
HTTP/1.1 (`--h1`) for the HTTP routes, h2c for gRPC (one stream in flight per
connection, as HTTP/1.1 allows one request), each connection sending the same body over
and over: one row, as each protocol's usual client sends it: `{"features": [...]}`, a V2
JSON FP64 tensor, the same tensor as raw bytes after an `Inference-Header-Content-Length`
JSON header (what tritonclient.http sends by default), and a ModelInferRequest with
`raw_input_contents` (what tritonclient.grpc sends). Per round and scenario (c1, c8, c32)
every protocol is measured in turn, the order rotating, each a warm-up then a measured
run; p50 and p99 come from h2load's per-request log. h2load sees HTTP statuses only, so
around each gRPC run the runtime's own count of OK ModelInfer calls is read: every
request h2load counts must be one of them. Ratios are taken within each round, then the
median over rounds. Results: benchmarks/runtime/results/protocols-latest.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402
from procs import LOAD_CPU, Server, free_port  # noqa: E402
from servers import REPO, base_env  # noqa: E402

RESULTS = HERE / "results"
RUNTIME = Path(sys.executable).parent / "modelship-runtime"
MODEL = "bench"
#: scenario -> connections (one row per request)
SCENARIOS = {"c1": 1, "c8": 8, "c32": 32}
PROTOCOLS = ("predict", "http-v2", "http-v2-binary", "grpc")
PEERS = ("predict", "http-v2")  # the ratios' denominators


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def grpc_frame(row: list[float]) -> bytes:
    """A gRPC message frame (uncompressed) of a ModelInferRequest of one FP64 row."""
    sys.path.insert(0, str(REPO / "runtime"))
    from modelship_runtime._proto import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input-0", datatype="FP64", shape=[1, len(row)])
    request.raw_input_contents.append(struct.pack(f"<{len(row)}d", *row))
    message = request.SerializeToString()
    return b"\0" + struct.pack(">I", len(message)) + message


def bodies(row: list[float], workdir: Path) -> dict[str, tuple[Path, list[str], str]]:
    """protocol -> (body file, extra h2load arguments, path)."""
    tensor = {"name": "input-0", "shape": [1, len(row)], "datatype": "FP64"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {
        "binary_data_size": 8 * len(row)}}], "parameters": {"binary_data_output": True}})
    raw = {
        "predict": json.dumps({"features": row}).encode(),
        "http-v2": json.dumps({"inputs": [{**tensor, "data": row}]}).encode(),
        "http-v2-binary": header.encode() + struct.pack(f"<{len(row)}d", *row),
        "grpc": grpc_frame(row),
    }
    json_h = ["--h1", "-H", "content-type: application/json"]
    extra = {
        "predict": json_h,
        "http-v2": json_h,
        "http-v2-binary": ["--h1", "-H", "content-type: application/octet-stream", "-H",
                           f"inference-header-content-length: {len(header)}"],
        "grpc": ["-H", "content-type: application/grpc", "-H", "te: trailers"],
    }
    paths = {"predict": "/predict", "http-v2": f"/v2/models/{MODEL}/infer",
             "http-v2-binary": f"/v2/models/{MODEL}/infer",
             "grpc": "/inference.GRPCInferenceService/ModelInfer"}
    out = {}
    for name, data in raw.items():
        path = workdir / f"{name}.body"
        path.write_bytes(data)
        out[name] = (path, extra[name], paths[name])
    return out


def run_h2load(url: str, body: Path, extra: list[str], conns: int, seconds: int,
               log_file: Path | None) -> dict[str, Any]:
    """One h2load run on the load core: req/s, and latencies from its per-request log."""
    argv = ["taskset", "-c", LOAD_CPU, "h2load", "-t1", f"-c{conns}", "-m1", f"-D{seconds}",
            "-d", str(body), *extra]
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60,
                         check=True).stdout
    stats: dict[str, Any] = {"raw": out}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("finished in"):
            stats["rps"] = float(words[3])
        elif line.startswith("requests:"):
            stats["done"] = int(words[5])
            stats["failed"] = int(words[9]) + int(words[11])
        elif line.startswith("status codes:"):
            stats["2xx"] = int(words[2])
    if log_file is not None:
        latencies = sorted(int(line.split("\t")[2]) for line in log_file.read_text().splitlines()
                           if line.count("\t") == 2)
        statuses = [line.split("\t")[1] for line in log_file.read_text().splitlines()]
        stats["non_2xx"] = sum(1 for s in statuses if not s.startswith("2"))
        if latencies:
            stats["p50_ms"] = latencies[len(latencies) // 2] / 1000
            stats["p99_ms"] = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] \
                / 1000
    return stats


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def grpc_ok(url: str) -> float:
    """The runtime's count of ModelInfer calls answered OK."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith('http_requests_total{method="GRPC",route="grpc:ModelInfer",'
                               'status="200"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("light", "heavy"), default="light")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = p.parse_args(argv)
    for tool in ("h2load", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (apt-get install -y nghttp2-client util-linux)")
    if not RUNTIME.exists():
        raise SystemExit(f"{RUNTIME} is missing (make setup)")
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    workdir = RESULTS / "work" / f"protocols-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    log("training the models")
    files, rows = models.train(workdir / "models")
    model = files[args.model]
    assert model.mlflow_dir is not None, "mlflow is needed to save the model directory"
    port, gport = free_port(), free_port()
    environ = base_env()
    environ["PYTHONPATH"] = str(REPO / "runtime")  # this work tree's runtime
    environ.update(MODELSHIP_MODEL_NAME=MODEL, MODELSHIP_GRPC_PORT=str(gport),
                   MODELSHIP_DRAIN_SECONDS="0")
    server = Server("runtime", [str(RUNTIME), "serve", "--model-dir", str(model.mlflow_dir),
                                "--host", "127.0.0.1", "--port", str(port)],
                    environ, workdir / "runtime.log")
    base = f"http://127.0.0.1:{port}"
    targets = {name: (f"{base}{path}" if name != "grpc" else f"http://127.0.0.1:{gport}{path}",
                      body, extra)
               for name, (body, extra, path) in bodies(rows[0], workdir).items()}
    scenarios = [s for s in args.scenarios.split(",") if s]
    runs: list[dict[str, Any]] = []
    try:
        server.start()
        cold = server.wait_ready(f"{base}/predict", json.dumps({"features": rows[0]}).encode(),
                                 120)
        log(f"runtime ready in {cold:.1f} s (pid {server.pid})")
        for rnd in range(args.rounds):
            for s_i, scenario in enumerate(scenarios):
                shift = (rnd + s_i) % len(PROTOCOLS)
                for name in PROTOCOLS[shift:] + PROTOCOLS[:shift]:
                    url, body, extra = targets[name]
                    conns = SCENARIOS[scenario]
                    run_h2load(url, body, extra, conns, args.warmup, None)
                    ok_before = grpc_ok(base) if name == "grpc" else 0.0
                    log_file = workdir / f"r{rnd}-{scenario}-{name}.log"
                    cpu0 = cpu_seconds(server.pid)
                    stats = run_h2load(url, body, extra, conns, args.duration, log_file)
                    stats["cpu_us_per_request"] = (cpu_seconds(server.pid) - cpu0) \
                        / max(1, stats.get("done", 0)) * 1e6
                    (workdir / f"r{rnd}-{scenario}-{name}.txt").write_text(stats.pop("raw"))
                    if name == "grpc":  # h2load cannot read grpc-status: the runtime can
                        ok = grpc_ok(base) - ok_before
                        stats["non_ok"] = max(0, stats["done"] - int(ok))
                    record = {"round": rnd, "scenario": scenario, "protocol": name,
                              "loadavg_1m": os.getloadavg()[0], **stats}
                    runs.append(record)
                    log(f"round {rnd} {scenario:4s} {name:15s} {stats.get('rps', 0):8.0f} req/s "
                        f"p50 {stats.get('p50_ms', 0):7.2f} ms p99 {stats.get('p99_ms', 0):7.2f} "
                        f"ms {stats['cpu_us_per_request']:5.0f} us CPU/req non-2xx "
                        f"{stats.get('non_2xx')} failed {stats.get('failed')}"
                        + (f" non-OK {stats['non_ok']}" if name == "grpc" else ""))
    finally:
        server.stop()
    summary = summarize(runs, scenarios)
    load = os.getloadavg()[0]
    result = {"at": stamp, "model": args.model, "rounds": args.rounds,
              "duration_s": args.duration, "loadavg_1m_at_end": load, "runs": runs,
              "summary": summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "protocols-latest.json").write_text(json.dumps(result, indent=1))
    table = render(summary, args, load)
    (RESULTS / "protocols-latest.md").write_text(table)
    print(table)
    return 0


def summarize(runs: list[dict[str, Any]], scenarios: list[str]) -> list[dict[str, Any]]:
    """Per scenario and protocol: medians over rounds, and ratios to each peer taken
    within each round."""
    out = []
    for scenario in scenarios:
        by_round: dict[int, dict[str, dict[str, Any]]] = {}
        for r in runs:
            if r["scenario"] == scenario and "rps" in r:
                by_round.setdefault(r["round"], {})[r["protocol"]] = r
        full = [v for v in by_round.values() if all(p in v for p in PROTOCOLS)]
        for name in PROTOCOLS:
            if not full:
                continue
            row: dict[str, Any] = {"scenario": scenario, "protocol": name}
            for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request"):
                row[key] = statistics.median(v[name][key] for v in full)
            for peer in PEERS:
                row[f"rps_x_{peer}"] = statistics.median(
                    v[name]["rps"] / v[peer]["rps"] for v in full)
                row[f"cpu_x_{peer}"] = statistics.median(
                    v[name]["cpu_us_per_request"] / v[peer]["cpu_us_per_request"] for v in full)
            row["errors"] = sum(v[name]["failed"] + v[name].get("non_2xx", 0)
                                + v[name].get("non_ok", 0) for v in full)
            row["rounds"] = len(full)
            out.append(row)
    return out


def render(summary: list[dict[str, Any]], args: argparse.Namespace, load: float) -> str:
    lines = [
        f"one runtime, model {args.model}, one row per request, h2load, {args.rounds} rounds x "
        f"{args.duration} s (load average at the end: {load:.1f})",
        "",
        "| scenario | protocol | req/s | p50 ms | p99 ms | req/s x /predict | req/s x HTTP V2 "
        "| server CPU us/req | CPU x /predict | CPU x HTTP V2 | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['scenario']} | {s['protocol']} | {s['rps']:.0f} | {s['p50_ms']:.2f} | "
            f"{s['p99_ms']:.2f} | {s['rps_x_predict']:.2f} | {s['rps_x_http-v2']:.2f} | "
            f"{s['cpu_us_per_request']:.0f} | {s['cpu_x_predict']:.2f} | "
            f"{s['cpu_x_http-v2']:.2f} | {s['errors']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

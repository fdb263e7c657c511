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

    .venv/bin/python benchmarks/runtime/protocols.py --peers mlserver,kserve

also starts MLServer and KServe's ModelServer (from their venvs under .venvs/, built
as run.py builds them) on the same model file under the same model name, pinned to core
0 beside the runtime, and measures in the same rotation: the runtime's KServe V1 route
too, MLServer's V2 JSON route and gRPC ModelInfer, KServe's V1, V2 JSON and gRPC
ModelInfer, each peer sent the same body bytes as the runtime. A peer's route is
measured only after it answered once (HTTP 200 with a JSON body; gRPC status OK with an
output, by grpcio); around each of a peer's gRPC runs one grpcio call must answer OK
before and after, and MLServer's own count of OK ModelInfer calls (its gRPC metrics)
is read as the runtime's is. A peer or route that fails is reported, never measured.
Results: results/protocols-peers-latest.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402
from procs import LOAD_CPU, Server, descendants, free_port  # noqa: E402
from servers import REPO, TARGETS, ModelFiles, base_env  # noqa: E402

RESULTS = HERE / "results"
RUNTIME = Path(sys.executable).parent / "modelship-runtime"
MODEL = "bench"
#: scenario -> connections (one row per request)
SCENARIOS = {"c1": 1, "c8": 8, "c32": 32}
PROTOCOLS = ("predict", "http-v2", "http-v2-binary", "grpc")
PEERS = ("predict", "http-v2")  # the ratios' denominators
#: with --peers: the runtime's protocols, and each peer server's
RUNTIME_WITH_PEERS = ("predict", "v1", "http-v2", "http-v2-binary", "grpc")
PEER_PROTOCOLS = {"mlserver": ("http-v2", "grpc"), "kserve": ("v1", "http-v2", "grpc")}
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def grpc_frame(row: list[float]) -> bytes:
    """A gRPC message frame (uncompressed) of a ModelInferRequest of one FP64 row."""
    sys.path.insert(0, str(REPO / "runtime"))
    from modelship_runtime._proto import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input-0", datatype="FP64", shape=[1, len(row)])
    request.raw_input_contents.append(struct.pack(f"<{len(row)}d", *row))
    message: bytes = request.SerializeToString()
    return b"\0" + struct.pack(">I", len(message)) + message


def bodies(row: list[float], workdir: Path) -> dict[str, tuple[Path, list[str], str]]:
    """protocol -> (body file, extra h2load arguments, path)."""
    tensor = {"name": "input-0", "shape": [1, len(row)], "datatype": "FP64"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {
        "binary_data_size": 8 * len(row)}}], "parameters": {"binary_data_output": True}})
    raw = {
        "predict": json.dumps({"features": row}).encode(),
        "v1": json.dumps({"instances": [row]}).encode(),
        "http-v2": json.dumps({"inputs": [{**tensor, "data": row}]}).encode(),
        "http-v2-binary": header.encode() + struct.pack(f"<{len(row)}d", *row),
        "grpc": grpc_frame(row),
    }
    json_h = ["--h1", "-H", "content-type: application/json"]
    extra = {
        "predict": json_h,
        "v1": json_h,
        "http-v2": json_h,
        "http-v2-binary": ["--h1", "-H", "content-type: application/octet-stream", "-H",
                           f"inference-header-content-length: {len(header)}"],
        "grpc": ["-H", "content-type: application/grpc", "-H", "te: trailers"],
    }
    paths = {"predict": "/predict", "v1": f"/v1/models/{MODEL}:predict",
             "http-v2": f"/v2/models/{MODEL}/infer",
             "http-v2-binary": f"/v2/models/{MODEL}/infer",
             "grpc": GRPC_METHOD}
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


def tree_cpu_seconds(pid: int) -> float:
    """CPU time so far of a process and its live descendants (MLServer predicts in a
    child process)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError, IndexError):  # exited meanwhile
            total += cpu_seconds(p)
    return total


def grpc_ok(url: str) -> float:
    """The runtime's count of ModelInfer calls answered OK."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith('http_requests_total{method="GRPC",route="grpc:ModelInfer",'
                               'status="200"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def prometheus_sum(metrics_url: str, name: str, *labels: str) -> float:
    """The sum of a Prometheus counter's samples whose labels include all of `labels`."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        total = 0.0
        for line in resp.read().decode().splitlines():
            if line.startswith(name + "{") and all(label in line for label in labels):
                total += float(line.rsplit(" ", 1)[1])
        return total


#: a peer's own count of gRPC calls answered: MLServer counts ModelInfer calls by gRPC
#: status (py-grpc-prometheus); KServe's ModelServer counts calls through its model's
#: postprocess step, which a call reaches only once predict returned (REST and gRPC
#: alike: only gRPC is sent while its run lasts)
PEER_OK_COUNTERS = {
    "mlserver": ("grpc_server_handled_total", 'grpc_method="ModelInfer"', 'grpc_code="OK"'),
    "kserve": ("request_postprocess_seconds_count", f'model_name="{MODEL}"'),
}


@dataclass
class Route:
    """One way into one server: what h2load sends where, and how its answers are checked."""

    server: str
    protocol: str
    url: str
    body: Path
    extra: list[str]
    proc: Server
    #: the server's own count of ModelInfer calls answered OK, when it keeps one
    ok_count: Callable[[], float] | None = None
    #: a peer's gRPC port: one grpcio call before and after each measured run
    check_port: int | None = None

    @property
    def label(self) -> str:
        return self.protocol if self.server == "modelship" else f"{self.server}:{self.protocol}"


def grpc_check(port: int, frame: bytes) -> str | None:
    """One ModelInfer call by grpcio with the message h2load sends: None when it answers
    OK with at least one output, else what went wrong."""
    import grpc

    sys.path.insert(0, str(REPO / "runtime"))
    from modelship_runtime._proto import grpc_predict_v2_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(GRPC_METHOD, request_serializer=lambda b: b,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        try:
            answer = call(frame[5:], timeout=30)
        except grpc.RpcError as exc:
            return f"gRPC {exc.code()}: {exc.details()}"
    if not answer.outputs:
        return "gRPC OK without any output"
    return None


def http_check(url: str, body: Path, extra: list[str]) -> str | None:
    """One POST of the body h2load sends: None when it answers 200 with a JSON object (a
    V2 binary answer: its JSON header)."""
    headers = dict(h.split(": ", 1) for h in extra[2::2])
    req = urllib.request.Request(url, data=body.read_bytes(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = resp.read()
            status = resp.status
            header_length = resp.headers.get("inference-header-content-length")
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read()[:200]!r}"
    except (urllib.error.URLError, OSError) as exc:
        return f"no answer: {exc}"
    if status != 200:
        return f"HTTP {status}"
    if header_length is not None:
        data = data[: int(header_length)]
    try:
        if not isinstance(json.loads(data), dict):
            return "answer is not a JSON object"
    except ValueError:
        return f"answer is not JSON: {data[:200]!r}"
    return None


def check_route(route: Route, frame: bytes) -> str | None:
    if route.protocol == "grpc":
        port = route.check_port or int(route.url.split(":")[2].split("/")[0])
        return grpc_check(port, frame)
    return http_check(route.url, route.body, route.extra)


def start_peer(name: str, model: ModelFiles, row: list[float], workdir: Path,
               payloads: dict[str, tuple[Path, list[str], str]],
               ) -> tuple[Server | None, list[Route], dict[str, str]]:
    """Start one peer and check each of its routes once: the server (None when it did not
    start), its routes that answered, and what failed (route -> why)."""
    from run import ensure_venv

    target = TARGETS[name]
    try:
        ensure_venv(target.venv)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, [], {name: f"its venv could not be built: {exc}"}
    launch = target.launch(dataclasses.replace(model, name=MODEL), workdir)
    server = Server(name, launch.argv, launch.env, workdir / f"{name}.log")
    try:
        server.start()
        cold = server.wait_ready(launch.predict_url, target.body([row], True).encode(), 180)
    except (RuntimeError, OSError) as exc:
        server.stop()
        return None, [], {name: f"did not start: {exc}"}
    log(f"{name} ready in {cold:.1f} s (pid {server.pid})")
    base = launch.predict_url.split("/v")[0]
    routes, failed = [], {}
    for protocol in PEER_PROTOCOLS[name]:
        body, extra, path = payloads[protocol]
        url = (f"http://127.0.0.1:{launch.grpc_port}{path}" if protocol == "grpc"
               else f"{base}{path}")
        route = Route(name, protocol, url, body, extra, server, check_port=launch.grpc_port)
        if protocol == "grpc" and launch.metrics_url is not None:
            route.ok_count = functools.partial(prometheus_sum, launch.metrics_url,
                                               *PEER_OK_COUNTERS[name])
        problem = check_route(route, payloads["grpc"][0].read_bytes())
        if problem is None and route.ok_count is not None:
            try:
                counted = route.ok_count()
            except (urllib.error.URLError, OSError):
                counted = 0.0
            if counted < 1:  # no counter to read: the grpcio checks alone
                log(f"{route.label}: no count of OK calls to read; grpcio checks only")
                route.ok_count = None
        if problem is None:
            routes.append(route)
        else:
            failed[route.label] = problem
            log(f"{route.label}: not measured: {problem}")
    return server, routes, failed


def measure(route: Route, conns: int, args: argparse.Namespace, frame: bytes,
            log_file: Path) -> dict[str, Any]:
    """A warm-up, then a measured h2load run, with the server's CPU and the checks."""
    run_h2load(route.url, route.body, route.extra, conns, args.warmup, None)
    stats: dict[str, Any] = {}
    if route.check_port is not None and route.protocol == "grpc":
        stats["check_before"] = grpc_check(route.check_port, frame) or "OK"
    ok_before = route.ok_count() if route.ok_count is not None else 0.0
    cpu0 = tree_cpu_seconds(route.proc.pid)
    stats.update(run_h2load(route.url, route.body, route.extra, conns, args.duration, log_file))
    stats["cpu_us_per_request"] = (tree_cpu_seconds(route.proc.pid) - cpu0) \
        / max(1, stats.get("done", 0)) * 1e6
    if route.ok_count is not None:  # h2load cannot read grpc-status: the server can
        stats["non_ok"] = max(0, stats["done"] - int(route.ok_count() - ok_before))
    if route.check_port is not None and route.protocol == "grpc":
        stats["check_after"] = grpc_check(route.check_port, frame) or "OK"
        stats["check_failed"] = int(stats["check_before"] != "OK") \
            + int(stats["check_after"] != "OK")
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("light", "heavy"), default="light")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--peers", default="", help="also measure these servers in the same run: "
                   + ",".join(PEER_PROTOCOLS))
    args = p.parse_args(argv)
    peers = [name for name in args.peers.split(",") if name]
    for name in peers:
        if name not in PEER_PROTOCOLS:
            raise SystemExit(f"--peers: unknown server {name!r} (known: "
                             f"{', '.join(PEER_PROTOCOLS)})")
    for tool in ("h2load", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (apt-get install -y nghttp2-client util-linux)")
    if not RUNTIME.exists():
        raise SystemExit(f"{RUNTIME} is missing (make setup)")
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    load_start = os.getloadavg()[0]
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
    payloads = bodies(rows[0], workdir)
    frame = payloads["grpc"][0].read_bytes()
    routes = []
    for name in RUNTIME_WITH_PEERS if peers else PROTOCOLS:
        body, extra, path = payloads[name]
        url = f"{base}{path}" if name != "grpc" else f"http://127.0.0.1:{gport}{path}"
        routes.append(Route("modelship", name, url, body, extra, server,
                            ok_count=(lambda: grpc_ok(base)) if name == "grpc" else None))
    scenarios = [s for s in args.scenarios.split(",") if s]
    runs: list[dict[str, Any]] = []
    peer_servers: list[Server] = []
    failed: dict[str, str] = {}
    try:
        server.start()
        cold = server.wait_ready(f"{base}/predict", json.dumps({"features": rows[0]}).encode(),
                                 120)
        log(f"runtime ready in {cold:.1f} s (pid {server.pid})")
        if peers:
            for route in list(routes):
                problem = check_route(route, frame)
                if problem is not None:
                    failed[route.label] = problem
                    routes.remove(route)
                    log(f"{route.label}: not measured: {problem}")
        for name in peers:
            peer, peer_routes, peer_failed = start_peer(name, model, rows[0], workdir, payloads)
            if peer is not None:
                peer_servers.append(peer)
            routes += peer_routes
            failed.update(peer_failed)
        for rnd in range(args.rounds):
            for s_i, scenario in enumerate(scenarios):
                shift = (rnd + s_i) % len(routes)
                for route in routes[shift:] + routes[:shift]:
                    conns = SCENARIOS[scenario]
                    log_file = workdir / f"r{rnd}-{scenario}-{route.label}.log"
                    if peers:
                        try:
                            stats = measure(route, conns, args, frame, log_file)
                        except (subprocess.SubprocessError, OSError) as exc:
                            stats = {"error": str(exc)}
                    else:
                        stats = measure(route, conns, args, frame, log_file)
                    if "raw" in stats:
                        (workdir / f"r{rnd}-{scenario}-{route.label}.txt").write_text(
                            stats.pop("raw"))
                    record = {"round": rnd, "scenario": scenario, "server": route.server,
                              "protocol": route.protocol, "loadavg_1m": os.getloadavg()[0],
                              **stats}
                    runs.append(record)
                    if "error" in stats:
                        log(f"round {rnd} {scenario:4s} {route.label:15s} FAILED: "
                            f"{stats['error']}")
                        continue
                    log(f"round {rnd} {scenario:4s} {route.label:15s} "
                        f"{stats.get('rps', 0):8.0f} req/s "
                        f"p50 {stats.get('p50_ms', 0):7.2f} ms p99 {stats.get('p99_ms', 0):7.2f} "
                        f"ms {stats['cpu_us_per_request']:5.0f} us CPU/req non-2xx "
                        f"{stats.get('non_2xx')} failed {stats.get('failed')}"
                        + (f" non-OK {stats['non_ok']}" if "non_ok" in stats else "")
                        + (f" checks {stats['check_before']}/{stats['check_after']}"
                           if "check_before" in stats else ""))
    finally:
        server.stop()
        for peer in peer_servers:
            peer.stop()
    load = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    if peers:
        summary = summarize_peers(runs, scenarios, routes)
        result = {"at": stamp, "model": args.model, "rounds": args.rounds,
                  "duration_s": args.duration, "warmup_s": args.warmup, "peers": peers,
                  "loadavg_1m_at_start": load_start, "loadavg_1m_at_end": load,
                  "not_measured": failed, "runs": runs, "summary": summary}
        (RESULTS / "protocols-peers-latest.json").write_text(json.dumps(result, indent=1))
        table = render_peers(summary, failed, args, peers, load_start, load)
        (RESULTS / "protocols-peers-latest.md").write_text(table)
        print(table)
        return 1 if failed or not summary["routes"] else 0
    summary_ = summarize(runs, scenarios)
    result = {"at": stamp, "model": args.model, "rounds": args.rounds,
              "duration_s": args.duration, "loadavg_1m_at_end": load, "runs": runs,
              "summary": summary_}
    (RESULTS / "protocols-latest.json").write_text(json.dumps(result, indent=1))
    table = render(summary_, args, load)
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


def _measured(record: dict[str, Any] | None) -> bool:
    return record is not None and "rps" in record and record.get("done", 0) > 0


def summarize_peers(runs: list[dict[str, Any]], scenarios: list[str],
                    routes: list[Route]) -> dict[str, list[dict[str, Any]]]:
    """Per scenario and route: medians over the rounds it was measured in; the runtime's
    routes' ratios to its /predict and V2 JSON routes, and each of its protocols' ratios to
    the same protocol of each peer, taken within each round, then the median."""
    out: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    for scenario in scenarios:
        by_round: dict[int, dict[str, dict[str, Any]]] = {}
        for r in runs:
            if r["scenario"] == scenario:
                label = r["protocol"] if r["server"] == "modelship" \
                    else f"{r['server']}:{r['protocol']}"
                by_round.setdefault(r["round"], {})[label] = r
        for route in routes:
            tried = [v[route.label] for v in by_round.values() if route.label in v]
            good = [r for r in tried if _measured(r)]
            row: dict[str, Any] = {"scenario": scenario, "server": route.server,
                                   "protocol": route.protocol, "rounds": len(good),
                                   "runs_failed": len(tried) - len(good)}
            for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request"):
                values = [r[key] for r in good if key in r]
                row[key] = statistics.median(values) if values else None
            row["errors"] = sum(r["failed"] + r.get("non_2xx", 0) + r.get("non_ok", 0)
                                + r.get("check_failed", 0) for r in good)
            if route.server == "modelship":
                for peer in PEERS:
                    pairs = [(v[route.label], v[peer]) for v in by_round.values()
                             if _measured(v.get(route.label)) and _measured(v.get(peer))]
                    row[f"rps_x_{peer}"] = statistics.median(
                        a["rps"] / b["rps"] for a, b in pairs) if pairs else None
                    row[f"cpu_x_{peer}"] = statistics.median(
                        a["cpu_us_per_request"] / b["cpu_us_per_request"]
                        for a, b in pairs) if pairs else None
            out.append(row)
        for protocol in RUNTIME_WITH_PEERS:
            for peer in {r.server for r in routes} - {"modelship"}:
                if protocol not in PEER_PROTOCOLS[peer]:
                    continue
                label = f"{peer}:{protocol}"
                pairs = [(v[protocol], v[label]) for v in by_round.values()
                         if _measured(v.get(protocol)) and _measured(v.get(label))]
                ratio: dict[str, Any] = {"scenario": scenario, "protocol": protocol,
                                         "peer": peer, "rounds": len(pairs)}
                for key, name in (("rps", "rps_x"), ("cpu_us_per_request", "cpu_x"),
                                  ("p99_ms", "p99_x")):
                    ratio[name] = statistics.median(
                        a[key] / b[key] for a, b in pairs) if pairs else None
                ratio["per_round_rps_x"] = [round(a["rps"] / b["rps"], 2) for a, b in pairs]
                ratios.append(ratio)
    ratios.sort(key=lambda r: (scenarios.index(r["scenario"]), r["protocol"], r["peer"]))
    return {"routes": out, "ratios": ratios}


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_peers(summary: dict[str, list[dict[str, Any]]], failed: dict[str, str],
                 args: argparse.Namespace, peers: list[str], load_start: float,
                 load: float) -> str:
    lines = [
        f"modelship-runtime beside {', '.join(peers)}, model {args.model}, one row per request, "
        f"h2load, {args.rounds} rounds x {args.duration} s after {args.warmup} s of warm-up "
        f"(load average at the start: {load_start:.1f}, at the end: {load:.1f})",
        "",
    ]
    if failed:
        lines += ["NOT MEASURED (failed before the load):", ""]
        lines += [f"- {label}: {why}" for label, why in sorted(failed.items())]
        lines.append("")
    if not summary["routes"]:
        lines.append("nothing was measured: no figures")
        return "\n".join(lines) + "\n"
    lines += [
        "| scenario | server | protocol | req/s | p50 ms | p99 ms | server CPU us/req "
        "| req/s x /predict | req/s x HTTP V2 | errors | rounds |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in summary["routes"]:
        lost = f" + {s['runs_failed']} runs failed" if s["runs_failed"] else ""
        lines.append(
            f"| {s['scenario']} | {s['server']} | {s['protocol']} | {_f(s['rps'], 0)} | "
            f"{_f(s['p50_ms'], 2)} | {_f(s['p99_ms'], 2)} | {_f(s['cpu_us_per_request'], 0)} | "
            f"{_f(s.get('rps_x_predict'), 2)} | {_f(s.get('rps_x_http-v2'), 2)} | "
            f"{s['errors']}{lost} | {s['rounds']} |")
    lines += [
        "",
        "modelship's protocol x the same protocol of each peer (within each round, then the "
        "median; req/s above 1 and CPU, p99 below 1 favour modelship):",
        "",
        "| scenario | protocol | peer | req/s x peer | server CPU x peer | p99 x peer "
        "| per-round req/s x | rounds |",
        "|---|---|---|--:|--:|--:|---|--:|",
    ]
    for r in summary["ratios"]:
        lines.append(
            f"| {r['scenario']} | {r['protocol']} | {r['peer']} | {_f(r['rps_x'], 2)} | "
            f"{_f(r['cpu_x'], 2)} | {_f(r['p99_x'], 2)} | "
            f"{' '.join(str(x) for x in r['per_round_rps_x']) or '-'} | {r['rounds']} |")
    return "\n".join(lines) + "\n"



if __name__ == "__main__":
    raise SystemExit(main())

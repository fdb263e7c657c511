"""What mirroring to a canary costs the stable's clients: shadow off against shadow on,
beside an A/A pair (shadow off against shadow off) that gives the run's own noise.

    .venv/bin/python benchmarks/runtime/shadow.py [--fraction 0.1]   # about 3.5 minutes

Four `modelship-runtime serve` processes of this work tree serve the benchmark's light
model (or `--model heavy`): `off` and `off2` (no shadow, the same settings), `on`
(MODELSHIP_SHADOW_URL pointing at the canary, MODELSHIP_SHADOW_FRACTION `--fraction`)
and the `canary` (the same model). The three stables are pinned to core 0 and take turns
under the load generator, pinned to core 1. The `on` stable's sender process (it starts
it when mirroring switches on) stays on core 0 with it: it is a second process of the
same pod and shares the pod's CPU, at the priority the runtime gives it (SCHED_IDLE by
default). The canary stands for another pod on another node: it is pinned to core 1 at
SCHED_IDLE (`--canary-priority idle`), so it runs only on what the load generator leaves
of that core and never delays the measuring client (`normal` shares core 1 with it as an
equal, which makes the load generator's own latency part of what the `on` runs measure).

Scenarios: closed loops with wrk (`single-c1`, `single-c8`: one row per request at 1 and
8 connections; `batch10-c8`: 10 rows), which keep the stable's core as busy as it can be,
and `rate50-c8`: h2load at a fixed rate, 8 connections, half of what the `off` stable
served at `single-c8` in a calibration run before the rounds (`--rate-share`): the load a
pod carries when it is sized with headroom, where the sender has idle CPU to use. For
each round and scenario the three stables are measured back to back (order rotating), a
warm-up before each measured run; the ratios on/off and off2/off are taken within each
round, then the median over the rounds; the p99 of `on` counts as unchanged when its
median ratio to `off` is within the range of the A/A ratios of the same run. Around each
`on` run the stable's mirrored counters and its sender's CPU time are read, so the table
says how many of its requests were really sent to the canary (and how many dropped or
failed) and what the sender spent per request sent.
Results: benchmarks/runtime/results/shadow-latest.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402
from procs import LOAD_CPU, Server, free_port, run_wrk, write_lua  # noqa: E402
from protocols import run_h2load  # noqa: E402
from servers import REPO, base_env  # noqa: E402

RESULTS = HERE / "results"
RUNTIME = Path(sys.executable).parent / "modelship-runtime"
#: scenario -> (rows per request, connections, fixed rate as a share of the `off`
#: stable's closed-loop single-c8 throughput; None: a closed loop with wrk)
SCENARIOS: dict[str, tuple[int, int, float | None]] = {
    "single-c1": (1, 1, None), "single-c8": (1, 8, None), "batch10-c8": (10, 8, None),
    "rate50-c8": (1, 8, 0.5)}
OUTCOMES = ("sent", "dropped", "failed", "skipped", "shed")
FIGURES = ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")
SIDES = ("off", "off2", "on")


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def mirrored(url: str) -> dict[str, float]:
    """The stable's modelship_shadow_mirrored_total by outcome."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = dict.fromkeys(OUTCOMES, 0.0)
    for line in text.splitlines():
        if line.startswith("modelship_shadow_mirrored_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] += float(line.rsplit(" ", 1)[1])
    return out


def agreement(url: str) -> float:
    """Rows the canary compared (agree + disagree)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("model_shadow_agreement_total{"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sender_of(pid: int, timeout: float = 60.0) -> int:
    """The shadow sender process started by the server `pid`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if ppid == pid and b"modelship_runtime.shadow_sender" in cmdline:
                return int(entry.name)
        time.sleep(0.1)
    raise RuntimeError(f"no shadow sender under {pid} after {timeout}s")


def wait_drained(url: str, timeout: float = 60.0) -> None:
    """Until the stable has nothing queued or in flight to the canary."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("modelship_shadow_pending{") and \
                        float(line.rsplit(" ", 1)[1]) == 0:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{url} still mirroring after {timeout}s")


def measure(url: str, lua: Path, body_file: Path, conns: int, seconds: int,
            rate: float | None, log_file: Path) -> tuple[dict[str, Any], str]:
    """One run: wrk's closed loop, or h2load at `rate` requests per second in all."""
    if rate is None:
        res, raw = run_wrk(f"{url}/predict", lua, conns, seconds)
        return res.to_dict(), raw
    stats = run_h2load(f"{url}/predict", body_file,
                       ["--h1", "-H", "content-type: application/json",
                        f"--rps={rate / conns:.3f}"], conns, seconds, log_file)
    if "p99_ms" not in stats:
        raise RuntimeError(f"h2load measured nothing: {stats['raw'][-400:]}")
    return {"requests": stats["done"], "rps": stats["rps"], "p50_ms": stats["p50_ms"],
            "p99_ms": stats["p99_ms"], "non_2xx": stats["non_2xx"],
            "socket_errors": stats["failed"]}, stats["raw"]


def start_replay(url: str, body_file: Path, rate: float,
                 seconds: float) -> subprocess.Popen[bytes]:
    """h2load at idle priority on the load core, sending the canary `rate` requests a
    second, as the `on` stable's sender would (stopped by the caller)."""
    conns = 4
    return subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, "chrt", "--idle", "0", "h2load", "--h1", "-H",
         "content-type: application/json", "-d", str(body_file), "-t1", f"-c{conns}", "-m1",
         f"--rps={rate / conns:.3f}", f"-D{seconds:.0f}", f"{url}/predict"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start(name: str, model_dir: Path, workdir: Path, body: bytes, cpu: str,
          *, idle: bool = False, **env: str) -> tuple[Server, str]:
    port = free_port()
    environ = base_env()
    environ["PYTHONPATH"] = str(REPO / "runtime")  # this work tree's runtime
    # No gRPC listener (its default port would clash between the four servers).
    environ.update({"MODELSHIP_MODEL_NAME": "bench", "MODELSHIP_GRPC_PORT": "0", **env})
    prefix = ["chrt", "--idle", "0"] if idle else []
    server = Server(name, [*prefix, str(RUNTIME), "serve", "--model-dir", str(model_dir),
                           "--host", "127.0.0.1", "--port", str(port)],
                    environ, workdir / f"{name}.log", cpu=cpu)
    server.start()
    url = f"http://127.0.0.1:{port}"
    server.wait_ready(f"{url}/predict", body, 120)
    return server, url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("light", "heavy"), default="light")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of wrk warm-up per run")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--fraction", type=float, default=1.0,
                   help="MODELSHIP_SHADOW_FRACTION of the `on` server (share mirrored)")
    p.add_argument("--when-busy", choices=("shed", "mirror"), default="shed",
                   help="MODELSHIP_SHADOW_WHEN_BUSY of the `on` server: shed the copies "
                        "of requests that arrive while others are served (the default), "
                        "or mirror them anyway")
    p.add_argument("--sender-cpus", default="",
                   help="move the `on` server's sender process to these cores (default: "
                        "it stays with its server on core 0, as in a pod)")
    p.add_argument("--canary-priority", choices=("idle", "normal"), default="idle",
                   help="the canary's priority on the load generator's core")
    p.add_argument("--replay", action=argparse.BooleanOptionalAction, default=True,
                   help="during the `off` and `off2` runs, send the canary what the `on` "
                        "stable mirrors (h2load at idle priority on the load core, at the "
                        "rate `on` mirrored in a probe), so the canary's work on the other "
                        "core is the same for every side")
    p.add_argument("--canary", choices=("runtime", "sink"), default="sink",
                   help="the canary: a modelship runtime (its model's work lands on the "
                        "load generator's core), or peers/sink_server.py, which answers "
                        "at once (as if the canary ran on another machine)")
    p.add_argument("--rate-share", type=float, default=None,
                   help="override the fixed-rate scenarios' share of the off stable's "
                        "closed-loop throughput")
    args = p.parse_args(argv)
    if not RUNTIME.exists():
        raise SystemExit(f"{RUNTIME} is missing (make setup)")
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    load0 = os.getloadavg()[0]
    workdir = RESULTS / "work" / f"shadow-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    log("training the models")
    files, rows = models.train(workdir / "models")
    model = files[args.model]
    assert model.mlflow_dir is not None, "mlflow is needed to save the model directory"
    first = json.dumps({"features": rows[0]}).encode()
    servers: list[Server] = []
    runs: list[dict[str, Any]] = []
    try:
        if args.canary == "sink":
            port = free_port()
            prefix = ["chrt", "--idle", "0"] if args.canary_priority == "idle" else []
            canary = Server("canary", [*prefix, sys.executable,
                                       str(HERE / "peers" / "sink_server.py"), str(port)],
                            base_env(), workdir / "canary.log", cpu=LOAD_CPU)
            canary.start()
            canary_url = f"http://127.0.0.1:{port}"
            canary.wait_ready(f"{canary_url}/predict", first, 60)
        else:
            canary, canary_url = start("canary", model.mlflow_dir, workdir, first, LOAD_CPU,
                                       idle=args.canary_priority == "idle",
                                       MODELSHIP_MODEL_VERSION="2")
        servers.append(canary)
        off, off_url = start("off", model.mlflow_dir, workdir, first, "0",
                             MODELSHIP_MODEL_VERSION="1")
        servers.append(off)
        off2, off2_url = start("off2", model.mlflow_dir, workdir, first, "0",
                               MODELSHIP_MODEL_VERSION="1")
        servers.append(off2)
        on, on_url = start("on", model.mlflow_dir, workdir, first, "0",
                           MODELSHIP_MODEL_VERSION="1", MODELSHIP_SHADOW_URL=canary_url,
                           MODELSHIP_SHADOW_FRACTION=str(args.fraction),
                           MODELSHIP_SHADOW_WHEN_BUSY=args.when_busy)
        servers.append(on)
        urls = {"off": off_url, "off2": off2_url, "on": on_url}
        pids = {"off": off.pid, "off2": off2.pid, "on": on.pid}
        sender = sender_of(on.pid)
        if args.sender_cpus:
            os.sched_setaffinity(sender, {int(c) for c in args.sender_cpus.split(",")})
        log(f"sender {sender} of `on` on cores {sorted(os.sched_getaffinity(sender))}, "
            f"policy {os.sched_getscheduler(sender)} (SCHED_IDLE is {os.SCHED_IDLE})")
        scenarios = args.scenarios.split(",")
        capacity = None
        if any(SCENARIOS[sc][2] is not None for sc in scenarios):
            lua = workdir / "calibrate.lua"
            write_lua(lua, first.decode())
            run_wrk(f"{off_url}/predict", lua, 8, args.warmup)
            capacity = run_wrk(f"{off_url}/predict", lua, 8, args.duration)[0].rps
            log(f"calibration: `off` served {capacity:.0f} req/s at single-c8")
        rates: dict[str, float] = {}
        for sc in scenarios:
            share = SCENARIOS[sc][2]
            if share is not None and capacity is not None:
                rates[sc] = capacity * (args.rate_share or share)
        bodies: dict[str, tuple[Path, Path]] = {}
        for scenario in scenarios:
            n_rows = SCENARIOS[scenario][0]
            body = json.dumps({"features": rows[0]} if n_rows == 1
                              else {"instances": rows[:n_rows]})
            lua = workdir / f"{scenario}.lua"
            write_lua(lua, body)
            body_file = workdir / f"{scenario}.body"
            body_file.write_text(body)
            bodies[scenario] = (lua, body_file)
        replay_rates: dict[str, float] = {}
        if args.replay:  # what `on` mirrors per second in each scenario, probed
            for scenario in scenarios:
                lua, body_file = bodies[scenario]
                wait_drained(on_url)
                before = mirrored(on_url)
                t0 = time.monotonic()
                measure(on_url, lua, body_file, SCENARIOS[scenario][1], args.warmup,
                        rates.get(scenario), workdir / f"probe-{scenario}.h2log")
                wait_drained(on_url)
                after = mirrored(on_url)
                replay_rates[scenario] = (after["sent"] - before["sent"]) / (
                    time.monotonic() - t0)
                shed = after["shed"] - before["shed"]
                if not replay_rates[scenario] and not shed:  # nothing chosen: a broken setup
                    raise RuntimeError(f"probe {scenario}: the on stable mirrored nothing "
                                       "and shed nothing")
                log(f"probe {scenario}: `on` mirrored {replay_rates[scenario]:.0f}/s, "
                    f"shed {shed:.0f}")
        for rnd in range(args.rounds):
            for s_i, scenario in enumerate(scenarios):
                n_rows, conns, _ = SCENARIOS[scenario]
                rate = rates.get(scenario)
                lua, body_file = bodies[scenario]
                shift = (rnd + s_i) % len(SIDES)
                order = [*SIDES[shift:], *SIDES[:shift]]
                for side in order:
                    url = urls[side]
                    h2log = workdir / f"r{rnd}-{scenario}-{side}.h2log"
                    replay = None
                    if side != "on" and replay_rates.get(scenario):
                        replay = start_replay(canary_url, body_file,
                                              replay_rates[scenario],
                                              args.warmup + args.duration + 30)
                    try:
                        measure(url, lua, body_file, conns, args.warmup, rate, h2log)
                        if side == "on":
                            wait_drained(url)
                        before = mirrored(url) if side == "on" else None
                        compared = agreement(canary_url) if side == "on" else 0.0
                        cpu0 = cpu_seconds(pids[side])
                        sender0 = cpu_seconds(sender) if side == "on" else 0.0
                        res, raw = measure(url, lua, body_file, conns, args.duration, rate,
                                           h2log)
                        if side == "on":
                            wait_drained(url)  # the mirroring of the run's requests counts too
                        cpu = cpu_seconds(pids[side]) - cpu0
                        sender_cpu = cpu_seconds(sender) - sender0 if side == "on" else 0.0
                        if not res["requests"]:
                            raise RuntimeError(f"{scenario} {side}: no request completed")
                        record: dict[str, Any] = {"round": rnd, "scenario": scenario,
                                                  "side": side, "rate": rate, **res,
                                                  "cpu_us_per_request":
                                                      cpu / res["requests"] * 1e6}
                        if before is not None:
                            after = mirrored(url)
                            record["mirrored"] = {k: after[k] - before[k] for k in OUTCOMES}
                            record["canary_rows_compared"] = agreement(canary_url) - compared
                            sent = record["mirrored"]["sent"]
                            record["sender_cpu_us_per_sent"] = (sender_cpu / sent * 1e6
                                                                if sent else 0.0)
                        (workdir / f"r{rnd}-{scenario}-{side}.txt").write_text(raw)
                        runs.append(record)
                        log(f"round {rnd} {scenario} {side}: {res['rps']:.0f} req/s, p50 "
                            f"{res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, "
                            f"{record['cpu_us_per_request']:.0f} us CPU/request"
                            + (f", mirrored {record['mirrored']}, sender "
                               f"{record['sender_cpu_us_per_sent']:.0f} us CPU/sent"
                               if before else ""))
                    finally:
                        if replay is not None:
                            replay.terminate()
                            replay.wait(10)
    finally:
        for server in servers:
            server.stop()
    load = os.getloadavg()[0]
    summary = summarize(runs, args.scenarios.split(","))
    result = {"at": stamp, "model": args.model, "rounds": args.rounds,
              "fraction": args.fraction, "duration_s": args.duration,
              "canary": args.canary, "canary_priority": args.canary_priority,
              "replay": args.replay, "replay_rates": replay_rates,
              "calibrated_rps": capacity,
              "rates": rates,
              "loadavg_1m_at_start": load0, "loadavg_1m_at_end": load, "runs": runs,
              "summary": summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shadow-latest.json").write_text(json.dumps(result, indent=1))
    table = render(summary, args, load0, load)
    (RESULTS / "shadow-latest.md").write_text(table)
    print(table)
    return 0


def summarize(runs: list[dict[str, Any]], scenarios: list[str]) -> list[dict[str, Any]]:
    """Per scenario: medians of each side, the on/off and off2/off (A/A) ratios taken
    within each round, and the spread of the A/A ratios over the rounds."""
    out = []
    for scenario in scenarios:
        by_round: dict[int, dict[str, dict[str, Any]]] = {}
        for r in runs:
            if r["scenario"] == scenario:
                by_round.setdefault(r["round"], {})[r["side"]] = r
        rounds = [v for v in by_round.values() if all(side in v for side in SIDES)]
        if not rounds:
            continue

        def med(side: str, key: str, rounds: list[dict[str, dict[str, Any]]] = rounds
                ) -> float:
            return statistics.median(p[side][key] for p in rounds)

        def ratios(side: str, key: str, rounds: list[dict[str, dict[str, Any]]] = rounds
                   ) -> list[float]:
            return [p[side][key] / p["off"][key] for p in rounds]

        sent = sum(p["on"]["mirrored"]["sent"] for p in rounds)
        requests = sum(p["on"]["requests"] for p in rounds)
        out.append({
            "scenario": scenario,
            **{side: {k: med(side, k) for k in FIGURES} for side in SIDES},
            "ratio": {k: statistics.median(ratios("on", k)) for k in FIGURES},
            "aa_ratio": {k: statistics.median(ratios("off2", k)) for k in FIGURES},
            "aa_range": {k: [min(ratios("off2", k)), max(ratios("off2", k))]
                         for k in FIGURES},
            "on_range": {k: [min(ratios("on", k)), max(ratios("on", k))] for k in FIGURES},
            "mirrored": {o: sum(p["on"]["mirrored"][o] for p in rounds) for o in OUTCOMES},
            "on_requests": requests,
            "sent_share": sent / requests if requests else 0.0,
            "sender_cpu_us_per_sent": med("on", "sender_cpu_us_per_sent"),
            "canary_rows_compared": sum(p["on"]["canary_rows_compared"] for p in rounds),
            "non_2xx": sum(p[s]["non_2xx"] + p[s]["socket_errors"] for p in rounds
                           for s in SIDES),
            "rate": rounds[0]["off"].get("rate"),
        })
        row = out[-1]
        # Unchanged: the median on/off p99 ratio lies within the A/A pair's own range.
        row["p99_unchanged"] = row["ratio"]["p99_ms"] <= row["aa_range"]["p99_ms"][1]
    return out


def verdict(s: dict[str, Any]) -> str:
    """The "p99 unchanged" cell: with nothing sent to the canary there is no mirroring
    to judge (only the choosing and shedding), and the cell says so."""
    if not s["mirrored"]["sent"]:
        return "nothing sent: not judged"
    return "yes" if s["p99_unchanged"] else "**no**"


def render(summary: list[dict[str, Any]], args: argparse.Namespace, load0: float,
           load: float) -> str:
    lines = [
        f"shadow on (fraction {args.fraction:g}) vs off, beside off2 vs off (A/A), model "
        f"{args.model}, when busy: {args.when_busy}, {args.rounds} rounds x {args.duration} s "
        "(load average "
        f"{load0:.1f} at the start, {load:.1f} at the end); sender "
        f"{'on cores ' + args.sender_cpus if args.sender_cpus else 'on the stable core'}, "
        f"canary ({args.canary}) at {args.canary_priority} priority on the load core, "
        f"{'the same traffic replayed to it' if args.replay else 'nothing'} during the "
        "off runs",
        "",
        "Ratios are medians of the per-round ratios, [min-max] over the rounds; p99 "
        "unchanged: the on/off median within the A/A range.",
        "",
        "| scenario | off req/s | req/s on/off | req/s A/A | off p50 ms | p50 on/off "
        "| p50 A/A | off p99 ms | on p99 ms | p99 on/off | p99 A/A | p99 unchanged "
        "| off CPU us/req | CPU on/off | CPU A/A | sender CPU us/sent "
        "| sent / requests (dropped, failed, shed) | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|---|--:|",
    ]

    def r(s: dict[str, Any], key: str, which: str) -> str:
        lo, hi = s["on_range" if which == "ratio" else "aa_range"][key]
        return f"{s[which][key]:.2f} [{lo:.2f}-{hi:.2f}]"

    for s in summary:
        m = s["mirrored"]
        name = s["scenario"] + (f" ({s['rate']:.0f}/s)" if s.get("rate") else "")
        lines.append(
            f"| {name} | {s['off']['rps']:.0f} | {r(s, 'rps', 'ratio')} "
            f"| {r(s, 'rps', 'aa_ratio')} | {s['off']['p50_ms']:.2f} "
            f"| {r(s, 'p50_ms', 'ratio')} | {r(s, 'p50_ms', 'aa_ratio')} "
            f"| {s['off']['p99_ms']:.2f} | {s['on']['p99_ms']:.2f} "
            f"| {r(s, 'p99_ms', 'ratio')} | {r(s, 'p99_ms', 'aa_ratio')} "
            f"| {verdict(s)} "
            f"| {s['off']['cpu_us_per_request']:.0f} | {r(s, 'cpu_us_per_request', 'ratio')} "
            f"| {r(s, 'cpu_us_per_request', 'aa_ratio')} | {s['sender_cpu_us_per_sent']:.0f} "
            f"| {m['sent']:.0f} / {s['on_requests']} ({s['sent_share']:.0%}; "
            f"{m['dropped']:.0f}, {m['failed']:.0f}, {m['shed']:.0f}) | {s['non_2xx']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

"""What mirroring to a canary costs the stable's clients: shadow off against shadow on.

    .venv/bin/python benchmarks/runtime/shadow.py          # about 2 minutes

Three `modelship-runtime serve` processes of this work tree serve the benchmark's light
model (or `--model heavy`): `off` (no shadow), `on` (MODELSHIP_SHADOW_URL pointing at
the canary, fraction 1.0: every request is mirrored) and the `canary` (the same model).
`off` and `on` are pinned to core 0 and take turns under wrk, pinned to core 1; the
canary is pinned to core 1 too (in a cluster it runs in another pod, on another node if
the scheduler wills, so core 0 is kept for the stable; wrk and the canary share core 1,
which, if anything, slows the `on` runs' load generator). For each round and scenario,
both stables are measured back to back (order alternating), a wrk warm-up before each
measured run; the ratios on/off are taken within each round, then the median over the
rounds. Around each `on` run the stable's mirrored counters are read, so the table says
how many of its requests were really sent to the canary (and how many dropped or failed).
Results: benchmarks/runtime/results/shadow-latest.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
from servers import REPO, base_env  # noqa: E402

RESULTS = HERE / "results"
RUNTIME = Path(sys.executable).parent / "modelship-runtime"
#: scenario -> (rows per request, wrk connections)
SCENARIOS = {"single-c1": (1, 1), "single-c8": (1, 8), "batch10-c8": (10, 8)}
OUTCOMES = ("sent", "dropped", "failed", "skipped")
FIGURES = ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")


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


def start(name: str, model_dir: Path, workdir: Path, body: bytes, cpu: str,
          **env: str) -> tuple[Server, str]:
    port = free_port()
    environ = base_env()
    environ["PYTHONPATH"] = str(REPO / "runtime")  # this work tree's runtime
    environ.update({"MODELSHIP_MODEL_NAME": "bench", **env})
    server = Server(name, [str(RUNTIME), "serve", "--model-dir", str(model_dir),
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
    args = p.parse_args(argv)
    if not RUNTIME.exists():
        raise SystemExit(f"{RUNTIME} is missing (make setup)")
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
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
        canary, canary_url = start("canary", model.mlflow_dir, workdir, first, LOAD_CPU,
                                   MODELSHIP_MODEL_VERSION="2")
        servers.append(canary)
        off, off_url = start("off", model.mlflow_dir, workdir, first, "0",
                             MODELSHIP_MODEL_VERSION="1")
        servers.append(off)
        on, on_url = start("on", model.mlflow_dir, workdir, first, "0",
                           MODELSHIP_MODEL_VERSION="1", MODELSHIP_SHADOW_URL=canary_url,
                           MODELSHIP_SHADOW_FRACTION=str(args.fraction))
        servers.append(on)
        urls = {"off": off_url, "on": on_url}
        pids = {"off": off.pid, "on": on.pid}
        for rnd in range(args.rounds):
            for s_i, scenario in enumerate(args.scenarios.split(",")):
                n_rows, conns = SCENARIOS[scenario]
                body = json.dumps({"features": rows[0]} if n_rows == 1
                                  else {"instances": rows[:n_rows]})
                lua = workdir / f"{scenario}.lua"
                write_lua(lua, body)
                order = ["off", "on"] if (rnd + s_i) % 2 == 0 else ["on", "off"]
                for side in order:
                    url = urls[side]
                    run_wrk(f"{url}/predict", lua, conns, args.warmup)
                    if side == "on":
                        wait_drained(url)
                    before = mirrored(url) if side == "on" else None
                    compared = agreement(canary_url) if side == "on" else 0.0
                    cpu0 = cpu_seconds(pids[side])
                    res, raw = run_wrk(f"{url}/predict", lua, conns, args.duration)
                    if side == "on":
                        wait_drained(url)  # the mirroring of the run's requests counts too
                    cpu = cpu_seconds(pids[side]) - cpu0
                    record: dict[str, Any] = {"round": rnd, "scenario": scenario,
                                              "side": side, **res.to_dict(),
                                              "cpu_us_per_request": cpu / res.requests * 1e6}
                    if before is not None:
                        after = mirrored(url)
                        record["mirrored"] = {k: after[k] - before[k] for k in OUTCOMES}
                        record["canary_rows_compared"] = agreement(canary_url) - compared
                    (workdir / f"r{rnd}-{scenario}-{side}.txt").write_text(raw)
                    runs.append(record)
                    log(f"round {rnd} {scenario} {side}: {res.rps:.0f} req/s, p50 "
                        f"{res.p50_ms:.2f} ms, p99 {res.p99_ms:.2f} ms, "
                        f"{record['cpu_us_per_request']:.0f} us CPU/request"
                        + (f", mirrored {record['mirrored']}" if before else ""))
    finally:
        for server in servers:
            server.stop()
    load = os.getloadavg()[0]
    summary = summarize(runs, args.scenarios.split(","))
    result = {"at": stamp, "model": args.model, "rounds": args.rounds,
              "duration_s": args.duration, "loadavg_1m_at_end": load, "runs": runs,
              "summary": summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shadow-latest.json").write_text(json.dumps(result, indent=1))
    table = render(summary, args, load)
    (RESULTS / "shadow-latest.md").write_text(table)
    print(table)
    return 0


def summarize(runs: list[dict[str, Any]], scenarios: list[str]) -> list[dict[str, Any]]:
    """Per scenario: medians of each side, and the on/off ratios taken within each round."""
    out = []
    for scenario in scenarios:
        by_round: dict[int, dict[str, dict[str, Any]]] = {}
        for r in runs:
            if r["scenario"] == scenario:
                by_round.setdefault(r["round"], {})[r["side"]] = r
        pairs = [v for v in by_round.values() if "on" in v and "off" in v]
        if not pairs:
            continue

        def med(side: str, key: str, pairs: list[dict[str, dict[str, Any]]] = pairs) -> float:
            return statistics.median(p[side][key] for p in pairs)

        def ratio(key: str, pairs: list[dict[str, dict[str, Any]]] = pairs) -> float:
            return statistics.median(p["on"][key] / p["off"][key] for p in pairs)

        sent = sum(p["on"]["mirrored"]["sent"] for p in pairs)
        requests = sum(p["on"]["requests"] for p in pairs)
        out.append({
            "scenario": scenario,
            "off": {k: med("off", k) for k in FIGURES},
            "on": {k: med("on", k) for k in FIGURES},
            "ratio": {k: ratio(k) for k in FIGURES},
            "mirrored": {o: sum(p["on"]["mirrored"][o] for p in pairs) for o in OUTCOMES},
            "on_requests": requests,
            "sent_share": sent / requests if requests else 0.0,
            "canary_rows_compared": sum(p["on"]["canary_rows_compared"] for p in pairs),
            "non_2xx": sum(p[s]["non_2xx"] + p[s]["socket_errors"] for p in pairs
                           for s in ("on", "off")),
        })
    return out


def render(summary: list[dict[str, Any]], args: argparse.Namespace, load: float) -> str:
    lines = [
        f"shadow off vs on (fraction {args.fraction:g}), model {args.model}, "
        f"{args.rounds} rounds x {args.duration} s "
        f"(load average at the end: {load:.1f})",
        "",
        "| scenario | off req/s | on req/s | req/s on/off | off p50 ms | on p50 ms | p50 on/off "
        "| off p99 ms | on p99 ms | p99 on/off | off CPU us/req | on CPU us/req "
        "| mirrored sent / requests (dropped, failed) | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|",
    ]
    for s in summary:
        m = s["mirrored"]
        lines.append(
            f"| {s['scenario']} | {s['off']['rps']:.0f} | {s['on']['rps']:.0f} | "
            f"{s['ratio']['rps']:.2f} | {s['off']['p50_ms']:.2f} | {s['on']['p50_ms']:.2f} | "
            f"{s['ratio']['p50_ms']:.2f} | {s['off']['p99_ms']:.2f} | {s['on']['p99_ms']:.2f} "
            f"| {s['ratio']['p99_ms']:.2f} | {s['off']['cpu_us_per_request']:.0f} "
            f"| {s['on']['cpu_us_per_request']:.0f} | {m['sent']:.0f} / {s['on_requests']} "
            f"({s['sent_share']:.0%}; {m['dropped']:.0f}, {m['failed']:.0f}) | {s['non_2xx']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

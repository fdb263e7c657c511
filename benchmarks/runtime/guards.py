"""What API keys and rate limits cost per request: one runtime without them, one with API
keys, one with API keys and a Redis-backed rate limit (a limit no run reaches), measured
in turn with wrk in the same run, so the ratios compare runs seconds apart.

    .venv/bin/python benchmarks/runtime/guards.py [--rounds 3] [--duration 5]

Needs wrk, taskset and redis-server. Servers are pinned to core 0, wrk to core 1; one row
per request (``POST /predict``) at concurrency 8, a LogisticRegression on 20 features.
Prints req/s and p50/p99 per variant and round, then each variant's median ratio to the
unguarded runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from wrkparse import parse_wrk  # noqa: E402

RUNTIME = str(Path(sys.executable).parent / "modelship-runtime")
KEY = "bench-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    args = ap.parse_args()
    import numpy as np
    import skops.io
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    work = Path(tempfile.mkdtemp(prefix="guards-"))
    X, y = make_classification(n_samples=2000, n_features=20, random_state=0)
    (work / "model").mkdir()
    skops.io.dump(LogisticRegression(max_iter=1000).fit(X, y), work / "model" / "m.skops")
    (work / "keys").write_text(KEY + "\n" + "\n".join(f"other-{i:04d}" for i in range(99)))
    body = json.dumps({"features": np.round(X[0], 6).tolist()})
    lua = work / "post.lua"
    lua.write_text('wrk.method = "POST"\nwrk.body = ' + json.dumps(body) +
                   '\nwrk.headers["Content-Type"] = "application/json"\n'
                   f'wrk.headers["X-API-Key"] = "{KEY}"\n')
    redis_port = free_port()
    redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port",
                              str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
    variants = {
        "plain": {},
        "api-keys": {"MODELSHIP_API_KEYS_FILE": str(work / "keys")},
        "keys+ratelimit": {"MODELSHIP_API_KEYS_FILE": str(work / "keys"),
                           "MODELSHIP_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                           "MODELSHIP_RATE_LIMIT_REQUESTS": "1000000000",
                           "MODELSHIP_CACHE_TTL_SECONDS": "1"},
    }
    procs: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    try:
        for name, env in variants.items():
            port = free_port()
            proc = subprocess.Popen(["taskset", "-c", "0", RUNTIME, "serve", "--model-dir",
                                     str(work / "model"), "--host", "127.0.0.1", "--port",
                                     str(port)], env={**base, **env,
                                                       "MODELSHIP_MICROBATCH": "true"},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs[name] = (f"http://127.0.0.1:{port}", proc)
            wait(procs[name][0], proc)
        results: dict[str, list[dict[str, float]]] = {n: [] for n in variants}
        names = list(variants)
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                url = procs[name][0]
                cmd = ["taskset", "-c", "1", "wrk", "-t1", "-c8", "--latency", "-s", str(lua)]
                subprocess.run([*cmd, "-d2", f"{url}/predict"], capture_output=True,
                               check=True)
                out = subprocess.run([*cmd, f"-d{args.duration}", f"{url}/predict"],
                                     capture_output=True, text=True, check=True).stdout
                r = parse_wrk(out)
                results[name].append({"rps": r.rps, "p50": r.p50_ms, "p99": r.p99_ms})
                print(f"round {rnd} {name:15s} {r.rps:8.0f} req/s p50 {r.p50_ms:6.2f} ms "
                      f"p99 {r.p99_ms:6.2f} ms non-2xx {r.non_2xx} "
                      f"socket errors {r.socket_errors}", flush=True)
        for name in names[1:]:
            ratios = [a["rps"] / b["rps"] for a, b in zip(results[name], results["plain"],
                                                           strict=True)]
            p50 = [a["p50"] / b["p50"] for a, b in zip(results[name], results["plain"],
                                                       strict=True)]
            each = ", ".join(f"{x:.3f}" for x in ratios)
            print(f"{name}: req/s ratio to plain, median of rounds "
                  f"{statistics.median(ratios):.3f} (rounds {each}); p50 ratio "
                  f"{statistics.median(p50):.3f}")
    finally:
        for _, proc in procs.values():
            proc.terminate()
            proc.wait(20)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

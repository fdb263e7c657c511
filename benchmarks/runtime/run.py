"""Runtime benchmark of issue 6: modelship-runtime against MLServer and KServe.

    .venv/bin/python benchmarks/runtime/run.py            # or: make bench-runtime

Creates the peers' venvs under benchmarks/runtime/.venvs/ (once) and trains the two
models. Then, for each of 3 rounds and each model: start every server pinned to core 0,
one after another, timing each cold start to its first 200 prediction; then for each
scenario run every server in turn (order rotated per round and scenario), each a wrk
warm-up and a measured wrk run pinned to core 1; read peak RSS; stop all by pid.
Afterwards the installed size of the runtime's dependencies against a bare FastAPI +
scikit-learn install. Results: benchmarks/runtime/results/latest.{json,md} (and a
timestamped copy). See README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402
import report  # noqa: E402
from procs import Server, run_wrk, write_lua  # noqa: E402
from servers import REPO, TARGETS, VENVS, ModelFiles, Target  # noqa: E402

RESULTS = HERE / "results"
Record = dict[str, Any]

#: scenario -> (rows per request, wrk connections)
SCENARIOS: dict[str, tuple[int, int]] = {
    "single-c1": (1, 1),
    "single-c8": (1, 8),
    "single-c32": (1, 32),
    "batch100-c8": (100, 8),
}

#: venv name -> packages, as a user would install each server
VENV_PACKAGES: dict[str, list[str]] = {
    # editable, so the benchmark always serves the runtime as it is in the work tree
    "modelship": ["-e", f"{REPO}/runtime"],
    "mlserver": ["mlserver==1.7.*", "mlserver-sklearn==1.7.*", "uvloop<0.22"],
    "kserve": ["kserve", "scikit-learn", "joblib"],
    "bare": ["fastapi", "uvicorn[standard]", "scikit-learn", "joblib"],
    # for the installed-size comparison only
    "size-runtime": [f"{REPO}/runtime"],
    "size-bare": ["fastapi", "uvicorn", "scikit-learn"],
}
SIZE_LABELS = {
    "size-runtime": "modelship-runtime-deps",
    "size-bare": "fastapi+uvicorn+scikit-learn",
    "mlserver": "mlserver+mlserver-sklearn",
    "kserve": "kserve+scikit-learn",
}
VERSIONED = ["modelship-runtime", "mlserver", "mlserver-sklearn", "kserve", "fastapi", "uvicorn"]
VERSIONED += ["scikit-learn", "numpy", "skops", "pandas"]
_NOT_SHIPPED = ("pip", "setuptools", "_distutils_hack", "wheel", "pkg_resources", "distutils-")


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def ensure_venv(name: str, fresh: bool = False) -> Path:
    """Create benchmarks/runtime/.venvs/NAME with its packages unless already complete."""
    path = VENVS / name
    stamp = path / ".installed"
    if fresh and path.exists():
        shutil.rmtree(path)
    if stamp.exists():
        return path
    log(f"creating venv {name}: pip install {' '.join(VENV_PACKAGES[name])}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True, timeout=300)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, timeout=600)
    subprocess.run([*pip, *VENV_PACKAGES[name]], check=True, timeout=1800)
    stamp.write_text(" ".join(VENV_PACKAGES[name]) + "\n")
    return path


def site_packages_mb(venv: Path) -> float:
    """Bytes under site-packages, without pip/setuptools and __pycache__, in MB."""
    total = 0
    for sp in venv.glob("lib/python*/site-packages"):
        for entry in sp.iterdir():
            if entry.name.startswith(_NOT_SHIPPED):
                continue
            files = [entry] if entry.is_file() else entry.rglob("*")
            for f in files:
                if f.is_file() and "__pycache__" not in f.parts and not f.is_symlink():
                    total += f.stat().st_size
    return total / 1e6


def versions(venv: Path, dists: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for d in sys.argv[1:]:\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code, *dists],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, str] = json.loads(out.stdout)
    return result


def git_state() -> str:
    """HEAD of the work tree, and whether runtime/ differs from it (the runtime served)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "runtime"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted runtime/ changes' if dirty else ''}"


def runtime_usable() -> bool:
    """True once `modelship-runtime serve --help` works in its benchmark venv."""
    try:
        venv = ensure_venv("modelship")
    except subprocess.SubprocessError as e:
        log(f"cannot install the runtime: {e}")
        return False
    exe = venv / "bin" / "modelship-runtime"
    proc = subprocess.run([str(exe), "serve", "--help"], capture_output=True, timeout=60)
    return proc.returncode == 0


def check_answer(url: str, body: str) -> str:
    """One request outside wrk: the status and the start of the answer, for the log."""
    req = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return f"{resp.status} {resp.read(160)!r}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read(300)!r}"


@dataclass
class Live:
    """A started server and what to send it."""

    target: Target
    server: Server
    url: str
    cold_start_s: float
    #: the work tree the server started from (the runtime is installed editable)
    git: str = ""


def start_all(
    order: list[Target],
    model: ModelFiles,
    rows: list[list[float]],
    rnd: int,
    args: argparse.Namespace,
    workdir: Path,
    live: list[Live],
) -> None:
    """Start the servers one after another (cold starts never overlap) into `live`."""
    for target in order:
        launch = target.launch(model, workdir)
        log_path = workdir / "logs" / f"r{rnd}-{model.name}-{target.name}.log"
        srv = Server(target.name, launch.argv, launch.env, log_path)
        single = target.body(rows[:1], single=True)
        try:
            srv.start()
            cold = srv.wait_ready(launch.predict_url, single.encode(), args.ready_timeout)
        except (RuntimeError, OSError) as e:
            log(f"  {target.name}/{model.name}: FAILED to start: {e}")
            srv.stop()
            continue
        live.append(Live(target, srv, launch.predict_url, cold, git_state()))
        log(f"  {target.name}/{model.name}: ready in {cold:.2f}s (pid {srv.pid})")
        if rnd == 1:
            for label, body in (("single", single), ("batch", target.body(rows, single=False))):
                log(f"    {label} answer: {check_answer(launch.predict_url, body)}")


def measure(
    lv: Live,
    scenario: str,
    model: ModelFiles,
    rows: list[list[float]],
    rnd: int,
    args: argparse.Namespace,
    workdir: Path,
) -> Record:
    """A warm-up, then one measured wrk run of `scenario` against one live server."""
    n_rows, conns = SCENARIOS[scenario]
    body = lv.target.body(rows[:n_rows], single=n_rows == 1)
    lua = workdir / f"{lv.target.name}-{n_rows}.lua"
    write_lua(lua, body)
    if args.warmup > 0:
        run_wrk(lv.url, lua, conns, args.warmup)
    load_before = os.getloadavg()[0]
    res, raw = run_wrk(lv.url, lua, conns, args.duration)
    rec: Record = {
        "round": rnd,
        "model": model.name,
        "server": lv.target.name,
        "scenario": scenario,
        "loadavg_1m": load_before,
        **res.to_dict(),
    }
    if res.requests == 0:  # nothing answered in time: no latency to report
        rec["p50_ms"] = rec["p99_ms"] = None
    (workdir / "wrk").mkdir(exist_ok=True)
    name = f"r{rnd}-{model.name}-{lv.target.name}-{scenario}.txt"
    (workdir / "wrk" / name).write_text(raw)
    log(
        f"    {scenario:12s} {lv.target.name:17s} {res.rps:9.1f} req/s  p50 {res.p50_ms:8.2f} ms"
        f"  p99 {res.p99_ms:8.2f} ms  non-2xx {res.non_2xx}  sock-err {res.socket_errors}"
    )
    return rec


def model_round(
    order: list[Target],
    model: ModelFiles,
    rows: list[list[float]],
    rnd: int,
    args: argparse.Namespace,
    workdir: Path,
) -> tuple[list[Record], list[Record]]:
    """Every server of one model: start each, then per scenario run each in turn, stop all.

    Servers wait idle on core 0 while another is measured, so the runs a ratio compares
    are seconds apart rather than minutes; the server order rotates with each scenario.
    """
    live: list[Live] = []
    runs: list[Record] = []
    try:
        start_all(order, model, rows, rnd, args, workdir, live)
        chosen = [sc for sc in SCENARIOS if sc in args.scenarios.split(",")]
        for i, scenario in enumerate(chosen):
            turn = live[i % len(live) :] + live[: i % len(live)] if live else []
            for lv in turn:
                if lv.target.scenarios is not None and scenario not in lv.target.scenarios:
                    continue
                try:
                    runs.append(measure(lv, scenario, model, rows, rnd, args, workdir))
                except (subprocess.SubprocessError, ValueError) as e:
                    log(f"    {scenario} {lv.target.name}: FAILED: {e}")
        starts = [
            {
                "round": rnd,
                "model": model.name,
                "server": lv.target.name,
                "cold_start_s": lv.cold_start_s,
                "peak_rss_mib": lv.server.peak_rss_mib(),
                "git": lv.git,
            }
            for lv in live
        ]
        return starts, runs
    finally:
        for lv in live:
            lv.server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=6, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of wrk warm-up before each run")
    p.add_argument(
        "--servers",
        default="modelship,modelship-v1,modelship-v2,mlserver,kserve,fastapi-bare,fastapi-constant",
    )
    p.add_argument("--models", default="light,heavy")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="subset, for a quick look")
    p.add_argument("--ready-timeout", type=float, default=90.0)
    p.add_argument("--max-minutes", type=float, default=30.0, help="stop starting new sessions")
    p.add_argument("--skip-size", action="store_true", help="skip the installed-size venvs")
    p.add_argument("--fresh-venvs", action="store_true", help="recreate every venv")
    args = p.parse_args(argv)

    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (apt-get install -y wrk util-linux)", file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        print("needs 2 cores: servers on core 0, wrk on core 1", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    workdir = RESULTS / "work" / stamp
    workdir.mkdir(parents=True, exist_ok=True)

    names = [n for n in args.servers.split(",") if n]
    if any(n.startswith("modelship") for n in names) and not runtime_usable():
        log("modelship-runtime is not usable yet (`serve --help` fails): running without it")
        names = [n for n in names if not n.startswith("modelship")]
    targets = [TARGETS[n] for n in names]
    for venv in sorted({t.venv for t in targets if t.venv}):
        ensure_venv(venv, args.fresh_venvs)
    meta: Record = {
        "started": started.isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "servers": names,
        "cpu_count": os.cpu_count(),
        "workdir": str(workdir),
        "versions": {
            v: versions(VENVS / v, VERSIONED) for v in sorted({t.venv for t in targets if t.venv})
        },
    }
    meta["git"] = git_state()
    log("training models")
    files, rows = models.train(workdir / "models")
    runs: list[Record] = []
    starts: list[Record] = []
    model_names = [m for m in args.models.split(",") if m]
    stopped_early = False
    for rnd in range(1, args.rounds + 1):
        order = targets[rnd - 1 :] + targets[: rnd - 1]
        log(f"round {rnd}/{args.rounds}: {', '.join(t.name for t in order)}")
        for model_name in model_names:
            if time.monotonic() - t0 > args.max_minutes * 60:
                stopped_early = True
                break
            todo = [t for t in order if t.name != "fastapi-constant" or model_name == "light"]
            st, rs = model_round(todo, files[model_name], rows, rnd, args, workdir)
            starts.extend(st)
            runs.extend(rs)
        meta["rounds_done"] = rnd
        _write(stamp, meta, runs, starts, {})
        if stopped_early:
            log(f"time limit of {args.max_minutes} min reached: stopping after round {rnd}")
            break

    sizes: dict[str, float] = {}
    if not args.skip_size:
        for venv in ("size-runtime", "size-bare", "mlserver", "kserve"):
            try:
                sizes[SIZE_LABELS[venv]] = site_packages_mb(ensure_venv(venv))
            except subprocess.SubprocessError as e:
                log(f"size of {venv}: FAILED: {e}")
    md = _write(stamp, meta, runs, starts, sizes)
    print(md)
    log(f"done in {(time.monotonic() - t0) / 60:.1f} min; results in {RESULTS}")
    return 0


def _write(
    stamp: str, meta: Record, runs: list[Record], starts: list[Record], sizes: dict[str, float]
) -> str:
    summary = report.summarise(runs, starts)
    tgts = report.targets(summary, sizes)
    md = report.markdown(summary, sizes, tgts, meta)
    data = {
        "meta": meta,
        "summary": summary,
        "sizes_mb": sizes,
        "targets": tgts,
        "runs": runs,
        "starts": starts,
    }
    RESULTS.mkdir(exist_ok=True)
    for name in (f"runtime-{stamp}", "latest"):
        (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(md)
    return md


if __name__ == "__main__":
    raise SystemExit(main())

"""Runtime benchmark of issue 6: modelship-runtime against MLServer and KServe.

    .venv/bin/python benchmarks/runtime/run.py            # or: make bench-runtime

Creates the peers' venvs under benchmarks/runtime/.venvs/ (once), trains the two
models, then for each of 3 rounds, each model and each server (order rotated every
round so no server always runs first): start the server pinned to core 0, time its
cold start to the first 200 prediction, then for each scenario a wrk warm-up and a
measured wrk run pinned to core 1, read its peak RSS, stop it by pid. Afterwards the
installed size of the runtime's dependencies against a bare FastAPI + scikit-learn
install. Results: benchmarks/runtime/results/latest.{json,md} (and a timestamped copy).
See README.md for what each figure means.
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
    "mlserver": ["mlserver==1.7.*", "mlserver-sklearn==1.7.*", "uvloop<0.22"],
    "kserve": ["kserve", "scikit-learn", "joblib"],
    "bare": ["fastapi", "uvicorn[standard]", "scikit-learn", "joblib"],
    # for the installed-size comparison only
    "size-runtime": [f"{REPO}[runtime]"],
    "size-bare": ["fastapi", "uvicorn", "scikit-learn"],
}
SIZE_LABELS = {
    "size-runtime": "modelship-runtime-deps",
    "size-bare": "fastapi+uvicorn+scikit-learn",
    "mlserver": "mlserver+mlserver-sklearn",
    "kserve": "kserve+scikit-learn",
}
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


def runtime_usable() -> bool:
    """True once `modelship-runtime serve --help` works in the project venv."""
    exe = REPO / ".venv" / "bin" / "modelship-runtime"
    if not exe.exists():
        return False
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


def session(
    target: Target,
    model: ModelFiles,
    rows: list[list[float]],
    rnd: int,
    args: argparse.Namespace,
    workdir: Path,
) -> tuple[Record, list[Record]]:
    """One server process: cold start, every scenario, peak RSS, stop."""
    launch = target.launch(model, workdir)
    srv = Server(
        target.name,
        launch.argv,
        launch.env,
        workdir / "logs" / f"r{rnd}-{model.name}-{target.name}.log",
    )
    runs: list[Record] = []
    single = target.body(rows[:1], single=True)
    try:
        srv.start()
        cold = srv.wait_ready(launch.predict_url, single.encode(), timeout_s=args.ready_timeout)
        log(f"  {target.name}/{model.name}: ready in {cold:.2f}s (pid {srv.pid})")
        if rnd == 1:
            for label, body in (("single", single), ("batch", target.body(rows, single=False))):
                log(f"    {label} answer: {check_answer(launch.predict_url, body)}")
        for scenario, (n_rows, conns) in SCENARIOS.items():
            if target.scenarios is not None and scenario not in target.scenarios:
                continue
            body = single if n_rows == 1 else target.body(rows[:n_rows], single=False)
            lua = workdir / f"{target.name}-{n_rows}.lua"
            write_lua(lua, body)
            if args.warmup > 0:
                run_wrk(launch.predict_url, lua, conns, args.warmup)
            load_before = os.getloadavg()[0]
            res, raw = run_wrk(launch.predict_url, lua, conns, args.duration)
            rec = {
                "round": rnd,
                "model": model.name,
                "server": target.name,
                "scenario": scenario,
                "loadavg_1m": load_before,
                **res.to_dict(),
            }
            if res.requests == 0:  # nothing answered in time: no latency to report
                rec["p50_ms"] = rec["p99_ms"] = None
            runs.append(rec)
            (workdir / "wrk").mkdir(exist_ok=True)
            (workdir / "wrk" / f"r{rnd}-{model.name}-{target.name}-{scenario}.txt").write_text(raw)
            log(
                f"    {scenario:12s} {res.rps:9.1f} req/s  p50 {res.p50_ms:8.2f} ms  "
                f"p99 {res.p99_ms:8.2f} ms  non-2xx {res.non_2xx}  sock-err {res.socket_errors}"
            )
        rss = srv.peak_rss_mib()
        start = {
            "round": rnd,
            "model": model.name,
            "server": target.name,
            "cold_start_s": cold,
            "peak_rss_mib": rss,
        }
        return start, runs
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=6, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of wrk warm-up before each run")
    p.add_argument("--servers", default="modelship,mlserver,kserve,fastapi-bare,fastapi-constant")
    p.add_argument("--models", default="light,heavy")
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
    if "modelship" in names and not runtime_usable():
        log("modelship-runtime is not usable yet (`serve --help` fails): running without it")
        names.remove("modelship")
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
            v: versions(
                VENVS / v,
                [
                    "mlserver",
                    "mlserver-sklearn",
                    "kserve",
                    "fastapi",
                    "uvicorn",
                    "scikit-learn",
                    "numpy",
                ],
            )
            for v in sorted({t.venv for t in targets if t.venv})
        },
    }
    if "modelship" in names:
        meta["versions"]["modelship"] = versions(
            REPO / ".venv", ["modelship", "fastapi", "uvicorn", "scikit-learn", "numpy", "mlflow"]
        )

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
            for target in order:
                if target.name == "fastapi-constant" and model_name != model_names[0]:
                    continue
                if time.monotonic() - t0 > args.max_minutes * 60:
                    stopped_early = True
                    break
                try:
                    start, rs = session(target, files[model_name], rows, rnd, args, workdir)
                except (RuntimeError, subprocess.SubprocessError, ValueError) as e:
                    log(f"  {target.name}/{model_name}: FAILED: {e}")
                    continue
                starts.append(start)
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

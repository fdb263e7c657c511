"""Cold start alone: modelship-runtime (this tree, and optionally a baseline tree) against
KServe, measured as run.py measures it, in one run.

    .venv/bin/python benchmarks/runtime/coldstart.py [--rounds 7] [--baseline DIR]

Each start is the benchmark's: the server spawned pinned to core 0 (`taskset -c 0`), the
time from spawn to the first 200 answer to a real one-row prediction request (polled every
20 ms), then the server is stopped. Per round and model, every server starts once, one
after another (never overlapping), in an order rotating with the round; the ratio of
modelship to each other server is taken within the round, then the median over rounds.
The servers use the venvs run.py creates under .venvs/ (modelship: this tree, editable;
kserve). ``--baseline DIR``: a checkout of another revision (e.g. `git archive REV runtime
| tar -x -C DIR`), served by the same venv with DIR/runtime first on PYTHONPATH.
Also reported: the server process's CPU time (user + system, from /proc) at its first
answer, which the shared machine's load disturbs less than wall time.

The floor, in the same rounds and order: no server, a bare Python process (the modelship
venv's interpreter, pinned alike, the collector off as `serve` starts) that imports what a
prediction needs, loads the same model and predicts the same row, then prints one line;
timed from spawn to that line. ``floor-joblib`` loads the joblib file KServe loads;
``floor-skops`` the MLflow directory's skops file the runtime loads, with skops.io imported
as the runtime imports it (without its estimator list) and the types it names trusted.
What a server costs above that is its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402
from procs import SERVER_CPU, Server, free_port  # noqa: E402
from run import ensure_venv, log  # noqa: E402
from servers import REPO, VENVS, KServe, Launch, ModelFiles, Modelship, Target  # noqa: E402


class Baseline(Modelship):
    """modelship-runtime of another tree, served by the same venv."""

    name = "modelship-baseline"

    def __init__(self, tree: Path) -> None:
        self.tree = tree

    def launch(self, model: ModelFiles, workdir: Path) -> Launch:
        launch = super().launch(model, workdir)
        launch.env["PYTHONPATH"] = str(self.tree / "runtime")
        return launch


class ThisTree(Baseline):
    """modelship-runtime of this tree: its runtime/ first on PYTHONPATH, whichever tree
    the shared venv's editable install points at."""

    name = "modelship"


FLOOR = """\
import gc, sys
gc.disable()
import json
import numpy as np
fmt, path, row = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if fmt == "joblib":
    import joblib
    model = joblib.load(path)
else:
    import sklearn.utils
    real, sklearn.utils.all_estimators = sklearn.utils.all_estimators, lambda *a, **k: []
    import skops.io
    sklearn.utils.all_estimators = real
    model = skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
print("predicted", model.predict(np.array([row], dtype=np.float64)).tolist(), flush=True)
sys.stdin.read()  # stay until the parent has read the CPU time
"""


class Floor(Target):
    """No server: import, load the model and predict one row in a bare process."""

    role = "floor"
    venv = "modelship"

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.name = f"floor-{fmt}"

    def model_file(self, model: ModelFiles) -> Path:
        if self.fmt == "joblib":
            return model.joblib_path
        if model.mlflow_dir is None:
            raise RuntimeError("the skops floor needs the MLflow model directory")
        return model.mlflow_dir / "model.skops"

    def run(self, model: ModelFiles, row: list[float], log_path: Path) -> tuple[float, float]:
        """(Seconds from spawn to the printed prediction, CPU seconds by then)."""
        argv = ["taskset", "-c", SERVER_CPU, str(VENVS / self.venv / "bin" / "python"), "-c",
                FLOOR, self.fmt, str(self.model_file(model)), json.dumps(row)]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err)
            assert proc.stdin is not None and proc.stdout is not None
            try:
                line = proc.stdout.readline()
                took = time.perf_counter() - started
                if not line.startswith(b"predicted ["):
                    raise RuntimeError(f"{self.name} printed no prediction; see {log_path}")
                cpu = cpu_seconds(proc.pid)
            finally:
                proc.stdin.close()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        return took, cpu


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process and its reaped children, in seconds."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--models", default="light,heavy")
    p.add_argument("--baseline", type=Path, help="a tree holding runtime/ to compare with")
    args = p.parse_args(argv)
    targets: list[Target] = [ThisTree(REPO), KServe(), Floor("joblib"), Floor("skops")]
    if args.baseline:
        targets.insert(1, Baseline(args.baseline.resolve()))
    for venv in ("modelship", "kserve"):
        ensure_venv(venv)
    work = Path(tempfile.mkdtemp(prefix="modelship-cold-"))
    files, rows = models.train(work / "models")
    times: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    ratios: dict[tuple[str, str, str], list[float]] = {}
    for rnd in range(args.rounds):
        for model_name in args.models.split(","):
            model = files[model_name]
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            got: dict[str, float] = {}
            for target in order:
                log_path = work / "logs" / f"r{rnd}-{model_name}-{target.name}.log"
                if isinstance(target, Floor):
                    got[target.name], cpu = target.run(model, rows[0], log_path)
                    cpus.setdefault((model_name, target.name), []).append(cpu)
                    times.setdefault((model_name, target.name), []).append(got[target.name])
                    continue
                launch = target.launch(model, work)
                # gRPC on, as by default, on a free port (the default 8081 may be taken)
                launch.env.setdefault("MODELSHIP_GRPC_PORT", str(free_port()))
                srv = Server(target.name, launch.argv, launch.env, log_path)
                body = target.body(rows[:1], single=True).encode()
                try:
                    srv.start()
                    got[target.name] = srv.wait_ready(launch.predict_url, body, 90.0)
                    cpus.setdefault((model_name, target.name), []).append(cpu_seconds(srv.pid))
                finally:
                    srv.stop()
                times.setdefault((model_name, target.name), []).append(got[target.name])
            log(f"round {rnd + 1} {model_name}: " + ", ".join(
                f"{n} {t:.2f}s" for n, t in got.items()))
            for name in got:  # within the round: this one over modelship, over each floor
                for over in ("modelship", "floor-joblib", "floor-skops"):
                    if name != over:
                        ratios.setdefault((model_name, name, over), []).append(
                            got[name] / got[over])
    floors = ("floor-joblib", "floor-skops")
    print(f"\n{args.rounds} rounds; medians (ratios within each round).\n")
    print("| model | process | spawn to first prediction (s) | CPU s by then | "
          "modelship x this | this x floor-joblib | this x floor-skops |\n"
          "|---|---|--:|--:|--:|--:|--:|")

    def ratio(model_name: str, name: str, over: str, invert: bool = False) -> str:
        values = ratios.get((model_name, name, over))
        if not values:
            return "-"
        return f"{statistics.median(1 / v if invert else v for v in values):.2f}"

    for (model_name, name), values in times.items():
        print(f"| {model_name} | {name} | {statistics.median(values):.2f} | "
              f"{statistics.median(cpus[(model_name, name)]):.2f} | "
              f"{ratio(model_name, name, 'modelship', invert=True)} | "
              + " | ".join(ratio(model_name, name, f) for f in floors) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

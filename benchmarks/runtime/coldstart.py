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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402
from procs import Server, free_port  # noqa: E402
from run import ensure_venv, log  # noqa: E402
from servers import KServe, Launch, ModelFiles, Modelship, Target  # noqa: E402


class Baseline(Modelship):
    """modelship-runtime of another tree, served by the same venv."""

    name = "modelship-baseline"

    def __init__(self, tree: Path) -> None:
        self.tree = tree

    def launch(self, model: ModelFiles, workdir: Path) -> Launch:
        launch = super().launch(model, workdir)
        launch.env["PYTHONPATH"] = str(self.tree / "runtime")
        return launch


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
    targets: list[Target] = [Modelship(), KServe()]
    if args.baseline:
        targets.insert(1, Baseline(args.baseline.resolve()))
    for venv in ("modelship", "kserve"):
        ensure_venv(venv)
    work = Path(tempfile.mkdtemp(prefix="modelship-cold-"))
    files, rows = models.train(work / "models")
    times: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    ratios: dict[tuple[str, str], list[float]] = {}
    for rnd in range(args.rounds):
        for model_name in args.models.split(","):
            model = files[model_name]
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            got: dict[str, float] = {}
            for target in order:
                launch = target.launch(model, work)
                # gRPC on, as by default, on a free port (the default 8081 may be taken)
                launch.env.setdefault("MODELSHIP_GRPC_PORT", str(free_port()))
                srv = Server(target.name, launch.argv, launch.env,
                             work / "logs" / f"r{rnd}-{model_name}-{target.name}.log")
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
            for name in got:
                if name != "modelship":
                    ratios.setdefault((model_name, name), []).append(
                        got["modelship"] / got[name])
    print(f"\n{args.rounds} rounds; medians.\n")
    print("| model | server | cold start to first 200 (s) | CPU s at first 200 |"
          " modelship x this |\n|---|---|--:|--:|--:|")
    for (model_name, name), values in times.items():
        ratio = ratios.get((model_name, name))
        print(f"| {model_name} | {name} | {statistics.median(values):.2f} | "
              f"{statistics.median(cpus[(model_name, name)]):.2f} | "
              f"{statistics.median(ratio):.2f} |" if ratio else
              f"| {model_name} | {name} | {statistics.median(values):.2f} | "
              f"{statistics.median(cpus[(model_name, name)]):.2f} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

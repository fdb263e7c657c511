"""Size of the runtime image's virtualenv against bare FastAPI + scikit-learn, built alike.

    .venv/bin/python benchmarks/runtime/size.py [--extra grpcio protobuf] [--keep DIR]

Builds, under one temporary folder (or DIR, kept):

* ``runtime``: the virtualenv exactly as Dockerfile.runtime builds it: its build-stage
  COPY sources copied into an empty context, then ``scripts/build-venv.sh runtime VENV``
  (requirements/build.lock, then requirements/runtime.lock hash-checked, wheels only,
  then the runtime distribution, setuptools and wheel removed);
* ``runtime+EXTRA`` (with ``--extra``): that virtualenv plus ``pip install EXTRA``, for
  dependencies about to join the lock;
* ``bare``: the same interpreter's venv with requirements/build.lock, then fastapi,
  uvicorn and scikit-learn at the versions runtime.lock pins, setuptools and wheel
  removed the same way: what serving a model with FastAPI alone installs.

Reported: ``du`` of each whole virtualenv (disk use, 1 KiB blocks, what the image layer
holds, bytecode included) and the ratio runtime / bare; the same without folders named
``tests`` (build-venv.sh removes the wheels' test suites from the image's venv, a plain
install keeps them: this column compares like with like); the largest distributions of
the runtime's venv (bytes of the files each one's RECORD lists that are still on disk,
``__pycache__`` included). Printed as Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PYTHON = os.environ.get("PYTHON", "python3.11")


def du_mb(path: Path, *, without_tests: bool = False) -> float:
    """``du -sk`` in MB; ``without_tests``: not counting folders named ``tests``."""
    extra = ["--exclude=tests"] if without_tests else []
    out = subprocess.run(["du", "-sk", *extra, str(path)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[0]) / 1024


def build_runtime(root: Path) -> Path:
    """The Dockerfile's build stage: its COPY sources into a fresh context, then the script."""
    context = root / "context"
    (context / "scripts").mkdir(parents=True)
    (context / "requirements").mkdir()
    shutil.copy2(REPO / "scripts" / "build-venv.sh", context / "scripts")
    for lock in ("build.lock", "runtime.lock"):
        shutil.copy2(REPO / "requirements" / lock, context / "requirements")
    shutil.copytree(REPO / "runtime", context / "runtime",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    venv = root / "runtime"
    env = {**os.environ, "PYTHON": PYTHON, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    for phase in ("deps", "project"):
        subprocess.run(["sh", "scripts/build-venv.sh", "runtime", str(venv), phase],
                       cwd=context, env=env, check=True, stdout=subprocess.DEVNULL)
    return venv


def pinned(name: str) -> str:
    text = (REPO / "requirements" / "runtime.lock").read_text()
    m = re.search(rf"^{re.escape(name)}==([^\s;\\]+)", text, re.M)
    if m is None:
        raise SystemExit(f"{name} is not in requirements/runtime.lock")
    return m[1]


def build_bare(root: Path) -> Path:
    venv = root / "bare"
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--require-hashes", "--only-binary=:all:", "-r",
                    str(REPO / "requirements" / "build.lock")], check=True)
    subprocess.run([*pip, "--only-binary=:all:", *(f"{d}=={pinned(d)}" for d in
                    ("fastapi", "uvicorn", "scikit-learn"))], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "uninstall", "--yes", "--quiet",
                    "setuptools", "wheel"], check=True)
    return venv


def with_extra(venv: Path, root: Path, extra: list[str]) -> Path:
    copy = root / "runtime-extra"
    shutil.copytree(venv, copy, symlinks=True)
    # a copied venv's scripts name the old path; run pip through the copy's interpreter
    subprocess.run([str(copy / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", "--only-binary=:all:", *extra], check=True)
    return copy


def per_distribution(venv: Path) -> list[tuple[str, str, float]]:
    """(name, version, MB) of every distribution, largest first."""
    code = (
        "import importlib.metadata as m, json, os\n"
        "out = []\n"
        "for d in m.distributions():\n"
        "    total = 0\n"
        "    for f in d.files or []:\n"
        "        p = d.locate_file(f)\n"
        "        if os.path.isfile(p) and not os.path.islink(p):\n"
        "            total += os.path.getsize(p)\n"
        "    out.append((d.metadata['Name'], d.version, total / 1048576))\n"
        "print(json.dumps(sorted(out, key=lambda x: -x[2])))\n"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True,
                         text=True, check=True)
    return [tuple(x) for x in json.loads(out.stdout)]  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--extra", nargs="*", default=[], help="packages to add to a copy")
    p.add_argument("--keep", type=Path, help="build here and keep the venvs")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--repo", type=Path, help="the tree to build (default: this checkout)")
    args = p.parse_args(argv)
    if args.repo is not None:
        global REPO
        REPO = args.repo.resolve()
    root = args.keep or Path(tempfile.mkdtemp(prefix="modelship-size-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        runtime = build_runtime(root)
        bare = build_bare(root)
        venvs = {"runtime (Dockerfile.runtime's venv)": runtime,
                 "bare fastapi + uvicorn + scikit-learn": bare}
        if args.extra:
            venvs[f"runtime + {' '.join(args.extra)}"] = with_extra(runtime, root, args.extra)
        base = du_mb(bare)
        base_stripped = du_mb(bare, without_tests=True)
        print("| virtualenv | du MB | x bare | du MB without `tests` folders | x bare without"
              " them |\n|---|--:|--:|--:|--:|")
        for name, venv in venvs.items():
            mb, stripped = du_mb(venv), du_mb(venv, without_tests=True)
            print(f"| {name} | {mb:.1f} | {mb / base:.2f} | {stripped:.1f} | "
                  f"{stripped / base_stripped:.2f} |")
        print("\n| distribution (runtime venv) | version | MB |\n|---|---|--:|")
        for name, version, mb in per_distribution(runtime)[:args.top]:
            print(f"| {name} | {version} | {mb:.1f} |")
        if args.extra:
            extra = {n.lower() for n in args.extra}
            print("\n| added distribution | version | MB |\n|---|---|--:|")
            for name, version, mb in per_distribution(root / "runtime-extra"):
                if name.lower() in extra:
                    print(f"| {name} | {version} | {mb:.1f} |")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

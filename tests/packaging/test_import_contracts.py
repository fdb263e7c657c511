"""The layers of pyproject.toml's [tool.importlinter] hold: `lint-imports` passes.

`make lint` runs it too; this test makes `make test` (and so CI) fail on a broken
contract. The second test shows the check is live: the same contracts on a copy of the
code with one forbidden import added are reported broken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACTS = 4


def _lint_imports(code: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(code / "operator"), str(code / "runtime"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(REPO / "pyproject.toml")],
        cwd=code, env=env, capture_output=True, text=True, timeout=120,
    )


def test_import_contracts_are_kept() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {CONTRACTS} kept, 0 broken." in result.stdout, result.stdout


def test_a_forbidden_import_breaks_a_contract(tmp_path: Path) -> None:
    for part in ("operator/modelship_operator", "runtime/modelship_runtime"):
        shutil.copytree(REPO / part, tmp_path / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    gates = tmp_path / "operator/modelship_operator/rollout/gates.py"
    gates.write_text(gates.read_text() + "\nfrom modelship_operator import k8s  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Pure modules do no I/O and hold no Kubernetes client BROKEN" in result.stdout
    assert "modelship_operator.rollout.gates -> modelship_operator.k8s" in result.stdout

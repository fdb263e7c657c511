"""Each distribution declares exactly what its package imports (deptry).

An image installs its distribution's dependencies and nothing else (requirements/IMAGE.lock
is compiled from IMAGE/pyproject.toml), so an import that only the other image's
distribution declares, or that arrives only as some dependency's dependency, fails the pod
at start (or with that dependency's next release). deptry runs in each distribution's
folder with its pyproject.toml: DEP001 an import nothing declares, DEP002 a declared
dependency nothing imports, DEP003 an import only a dependency's dependency brings, DEP004
a development dependency imported by shipped code. It maps modules to distributions
through the environment it runs in, this one, where every dependency is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from artifacts import REPO

DISTRIBUTIONS = ("operator", "runtime")


def _deptry(folder: Path, out: Path) -> tuple[int, list[dict[str, Any]], str]:
    """deptry on `folder` with its pyproject.toml: (exit code, violations, output)."""
    pytest.importorskip("deptry", reason="deptry not installed (make setup installs it)")
    result = subprocess.run([sys.executable, "-m", "deptry", ".", "--json-output", str(out)],
                            cwd=folder, capture_output=True, text=True, timeout=120)
    assert out.exists(), result.stdout + result.stderr
    violations: list[dict[str, Any]] = json.loads(out.read_text())
    return result.returncode, violations, result.stdout + result.stderr


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_imports_match_the_declared_dependencies(distribution: str, tmp_path: Path) -> None:
    code, violations, output = _deptry(REPO / distribution, tmp_path / "deptry.json")
    found = [f"{v['location']['file']}:{v['location']['line']}: {v['error']['code']} "
             f"{v['error']['message']}" for v in violations]
    assert found == [] and code == 0, "\n".join(found) or output
    # It scanned the whole package, not an empty or other folder.
    sources = list((REPO / distribution / f"modelship_{distribution}").rglob("*.py"))
    scanned = re.search(r"Scanning (\d+) files", output)
    assert scanned is not None and int(scanned[1]) == len(sources), output


def test_an_import_only_another_distribution_declares_is_caught(tmp_path: Path) -> None:
    """The operator image's failure: prometheus_client imported, declared only by the
    runtime; requests, which registry.py imports, undeclared; scikit-learn and the runtime's
    package itself, which only the runtime image has."""
    copy = tmp_path / "operator"
    shutil.copytree(REPO / "operator", copy,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    pyproject = copy / "pyproject.toml"
    text = pyproject.read_text()
    for line in ('    "prometheus-client>=0.20",\n', '    "requests>=2.31",\n'):
        assert line in text
        text = text.replace(line, "")
    pyproject.write_text(text)
    (copy / "modelship_operator" / "stray.py").write_text(
        "import sklearn\nfrom modelship_runtime import metrics\n")
    code, violations, output = _deptry(copy, tmp_path / "deptry.json")
    assert code == 1, output
    flagged = {(v["module"], v["location"]["file"]) for v in violations}
    assert ("prometheus_client", "modelship_operator/rollout/analysis.py") in flagged
    assert ("requests", "modelship_operator/registry.py") in flagged
    assert ("sklearn", "modelship_operator/stray.py") in flagged
    assert ("modelship_runtime", "modelship_operator/stray.py") in flagged
    assert {v["error"]["code"] for v in violations} <= {"DEP001", "DEP003"}


def test_a_declared_dependency_nothing_imports_is_caught(tmp_path: Path) -> None:
    copy = tmp_path / "runtime"
    shutil.copytree(REPO / "runtime", copy,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    pyproject = copy / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('dependencies = [\n', 'dependencies = [\n    "kopf",\n', 1))
    code, violations, output = _deptry(copy, tmp_path / "deptry.json")
    assert code == 1, output
    assert [(v["error"]["code"], v["module"]) for v in violations] == [("DEP002", "kopf")]

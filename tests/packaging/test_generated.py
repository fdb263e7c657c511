"""One source of truth: the chart's and the kustomize base's CRD copies, their RBAC
rules and the README's ModelDeployment reference are what scripts/sync_generated.py
makes now from crds/, operator/modelship_operator/rbac.py and the CRD's descriptions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_files_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "sync_generated.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr + "\nRun `make sync` and commit the result."


def test_chart_and_kustomize_crds_equal_the_source() -> None:
    source = (REPO / "crds" / "modelship.io_modeldeployments.yaml").read_bytes()
    for copy in ("charts/modelship/crds", "kustomize/base/crds"):
        assert (REPO / copy / "modelship.io_modeldeployments.yaml").read_bytes() == source

"""checkov's Kubernetes checks on what we ship: the chart rendered with peering and
monitoring on, the prod kustomize overlay and `modelship render` of every example. One
checkov run without skips over the three; every failure must be a check that
tests/packaging/checkov.yaml skips with a reason, and every skip must still be needed.

checkov is installed into its own virtualenv (.venv/checkov, by `make setup`): its pinned
dependencies would otherwise downgrade packages the rest of the suite uses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from artifacts import REPO, kustomize_build, render_chart

SKIPS_FILE = Path(__file__).parent / "checkov.yaml"


def _checkov() -> str:
    local = REPO / ".venv" / "checkov" / "bin" / "checkov"
    found = str(local) if local.exists() else shutil.which("checkov")
    if found is None:
        pytest.skip("checkov not installed: `make setup` puts it in .venv/checkov")
    return found


def skips() -> dict[str, str]:
    """Skipped check id -> the comment above it that gives the reason."""
    reasons: dict[str, str] = {}
    comment: list[str] = []
    in_list = False
    for line in SKIPS_FILE.read_text().splitlines():
        stripped = line.strip()
        if line.startswith("skip-check:"):
            in_list = True
        elif in_list and stripped.startswith("#"):
            comment.append(stripped.lstrip("# "))
        elif in_list and stripped.startswith("- "):
            reasons[stripped[2:]] = " ".join(comment)
            comment = []
    return reasons


@pytest.fixture(scope="module")
def findings(tmp_path_factory: pytest.TempPathFactory,
             examples_rendered: list[dict[str, Any]]) -> dict[str, dict[str, set[str]]]:
    """artifact -> {"passed"|"failed": check ids}, from one checkov run."""
    checkov = _checkov()
    folder = tmp_path_factory.mktemp("checkov")
    artifacts = {
        "chart": render_chart({"replicas": 2, "monitoring": {
            "podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True}}}),
        "kustomize": kustomize_build(REPO / "kustomize" / "overlays" / "prod"),
        "render": examples_rendered,
    }
    for name, objects in artifacts.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump_all(objects))
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_OUTPUT_LOGS": "1"}
    result = subprocess.run(
        [checkov, "-d", str(folder), "--framework", "kubernetes", "--skip-download",
         "--compact", "-o", "json"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    out: dict[str, dict[str, set[str]]] = {n: {"passed": set(), "failed": set()}
                                           for n in artifacts}
    for report in reports if isinstance(reports, list) else [reports]:
        for outcome in ("passed", "failed"):
            for check in report["results"][f"{outcome}_checks"]:
                name = Path(check["file_path"]).stem
                out[name][outcome].add(check["check_id"])
    return out


def test_every_skip_has_a_reason() -> None:
    reasons = skips()
    assert reasons, "no skip list parsed"
    for check, reason in reasons.items():
        assert re.fullmatch(r"CKV2?_K8S_\d+", check), check
        assert len(reason) > 40 and check in reason, f"{check}: no reason given"
    config = yaml.safe_load(SKIPS_FILE.read_text())
    assert config["skip-check"] == list(reasons)


@pytest.mark.parametrize("artifact", ["chart", "kustomize", "render"])
def test_checkov_passes(findings: dict[str, dict[str, set[str]]], artifact: str) -> None:
    result = findings[artifact]
    assert len(result["passed"]) > 20, "checkov ran no checks on it"
    unexpected = result["failed"] - set(skips())
    assert not unexpected, f"{artifact}: checkov fails {sorted(unexpected)}"


def test_no_skip_is_stale(findings: dict[str, dict[str, set[str]]]) -> None:
    failed = set().union(*(r["failed"] for r in findings.values()))
    assert set(skips()) <= failed, f"skips nothing needs: {sorted(set(skips()) - failed)}"

"""GitOps readers of a ModelDeployment's status, on every state the operator reports.

- Argo CD: the health check exactly as kustomize/components/argocd-health ships it (taken
  from `kubectl kustomize` output of a kustomization that installs Argo CD's argocd-cm
  with the component), run as Argo CD runs it (argocd_lua.py: Lua 5.1, Argo CD's
  libraries only, the object as global `obj`).
- Flux: kstatus's rules for custom resources (kstatus.py, ported from cli-utils).

The objects are built with the operator's status functions, as reconcile.py calls them,
and the expected results are docs/gitops.md's table, which must cover every reason of the
README's Troubleshooting table.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argocd_lua
import kstatus
import pytest
import yaml
from artifacts import REPO, kustomize_build
from modelship_operator import status
from modelship_operator.resolve import MODEL_RESOLVED, REGISTRY_AVAILABLE

COMPONENT = REPO / "kustomize" / "components" / "argocd-health"
HEALTH_LUA = REPO / "docs" / "argocd" / "health.lua"
HEALTH_KEY = "resource.customizations.health.modelship.io_ModelDeployment"
GITOPS_PAGE = (REPO / "docs" / "gitops.md").read_text()
README = (REPO / "README.md").read_text()

# argocd-cm as Argo CD's manifests/install.yaml ships it: no namespace, no data.
ARGOCD_CM = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "argocd-cm",
                          "labels": {"app.kubernetes.io/name": "argocd-cm",
                                     "app.kubernetes.io/part-of": "argocd"}}}


def _build_with_component(root: Path, configmap: dict[str, Any], namespace: str | None
                          ) -> list[dict[str, Any]]:
    root.mkdir(parents=True)
    (root / "argocd-cm.yaml").write_text(yaml.safe_dump(configmap))
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["argocd-cm.yaml"],
        "components": [os.path.relpath(COMPONENT, root)],
    }
    if namespace is not None:
        kustomization["namespace"] = namespace
    (root / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return kustomize_build(root)


@pytest.fixture(scope="module")
def shipped_lua(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The health check as the component puts it into Argo CD's argocd-cm."""
    objects = _build_with_component(tmp_path_factory.mktemp("argocd") / "install",
                                     ARGOCD_CM, "argocd")
    assert [(o["kind"], o["metadata"]["name"], o["metadata"]["namespace"]) for o in objects] \
        == [("ConfigMap", "argocd-cm", "argocd")]
    lua: str = objects[0]["data"][HEALTH_KEY]
    return lua


def test_component_patches_an_argocd_cm_that_names_its_namespace(tmp_path: Path) -> None:
    """Argo CD installed with its namespace written in the manifests: the component's
    patch finds argocd-cm by kind and name and keeps the settings already there."""
    configmap = copy.deepcopy(ARGOCD_CM)
    configmap["metadata"]["namespace"] = "gitops"
    configmap["data"] = {"url": "https://argocd.example.com", "timeout.reconciliation": "180s"}
    objects = _build_with_component(tmp_path / "install", configmap, None)
    assert len(objects) == 1
    assert objects[0]["metadata"]["namespace"] == "gitops"
    assert objects[0]["data"] == {**configmap["data"], HEALTH_KEY: HEALTH_LUA.read_text()}


def test_patch_file_works_with_kubectl_patch(tmp_path: Path) -> None:
    """docs/gitops.md's command for an existing installation, run offline (--local)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found")
    live = {**copy.deepcopy(ARGOCD_CM), "data": {"url": "https://argocd.example.com"}}
    live["metadata"]["namespace"] = "argocd"
    (tmp_path / "live.yaml").write_text(yaml.safe_dump(live))
    result = subprocess.run(
        [kubectl, "patch", "--local", "-f", str(tmp_path / "live.yaml"), "-o", "yaml",
         "--patch-file", str(COMPONENT / "argocd-cm.yaml")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["data"] == {"url": "https://argocd.example.com",
                                                     HEALTH_KEY: HEALTH_LUA.read_text()}
    assert f"--patch-file {COMPONENT.relative_to(REPO)}/argocd-cm.yaml" in GITOPS_PAGE


def test_component_ships_the_source(shipped_lua: str) -> None:
    assert shipped_lua == HEALTH_LUA.read_text()


def test_docs_page_shows_the_check_as_shipped(shipped_lua: str) -> None:
    assert "```lua\n" + shipped_lua + "```" in GITOPS_PAGE
    assert HEALTH_KEY in GITOPS_PAGE


# --- the states the operator reports ----------------------------------------------------


@dataclass(frozen=True)
class Sample:
    obj: dict[str, Any]
    row: str  # the reason, or the words of docs/gitops.md's row that describe it
    argo: str  # Argo CD health
    flux: str  # kstatus
    words: str  # in Argo CD's message (the operator's message reaches the UI)


def _md(phase: str | None, conditions: list[dict[str, Any]], *, generation: int = 3,
        observed: int | None = 3, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": "ml", "generation": generation,
                     "uid": "5f0c2f57-7c2b-4f5e-9d38-0d6c1c3b2a11"},
        "spec": {"model": {"name": "iris-classifier", "version": "4"}, "replicas": 2,
                 "ingress": {"host": "iris.example.com"}},
        "status": {"conditions": status.merge_conditions(None, conditions,
                                                         "2026-11-22T20:00:00Z")},
    }
    if phase is not None:
        obj["status"]["phase"] = phase
    if observed is not None:
        obj["status"]["observedGeneration"] = observed
    obj["status"].update(extra)
    return obj


CANARY = "canary of version 4 at 10% (step 1/3); version 3 serves the rest"
STABLE = {"version": "3", "replicas": 2, "readyReplicas": 2}


def _canary(reason: str, message: str) -> dict[str, Any]:
    # reconcile.py _serving_status, a canary in flight.
    return _md("Progressing", status.kstatus(False, True, False, reason, message, 3),
               stable=STABLE, canary={"version": "4", "weight": 10, "step": 0})


def _rolled_back(reason: str, why: str) -> dict[str, Any]:
    # reconcile.py _serving_status after an automatic rollback.
    message = (f"version 4 was rolled back ({why}); version 3 serves all traffic; "
               "change spec.model to try again")
    return _md("RolledBack", status.kstatus(False, False, True, reason, message, 3),
               stable=STABLE)


def _registry(reason: str, message: str, resolved: str) -> dict[str, Any]:
    # reconcile.py _registry_problem on a first pass (no observedGeneration written),
    # with resolve.py's conditions.
    return _md("Pending", [
        *status.kstatus(False, True, False, reason, message, 1),
        status.condition(MODEL_RESOLVED, False, reason, message, 1),
        status.condition(REGISTRY_AVAILABLE, resolved == "up", reason, message, 1),
    ], generation=1, observed=None)


def _deleting() -> dict[str, Any]:
    obj = _md("Ready", status.serving(2, 2, "3", 3)[1], stable=STABLE)
    obj["metadata"]["deletionTimestamp"] = "2026-11-22T20:01:00Z"
    return obj


def _no_status() -> dict[str, Any]:
    obj = _md(None, [], generation=1, observed=None)
    del obj["status"]
    return obj


SAMPLES: dict[str, Sample] = {
    "ready": Sample(_md("Ready", status.serving(2, 2, "3", 3)[1], stable=STABLE),
                    "Serving", "Healthy", "Current", "2/2 replicas ready"),
    "replicas-not-ready": Sample(_md("Pending", status.serving(2, 1, "3", 3)[1]),
                                 "ReplicasNotReady", "Progressing", "InProgress", "1/2"),
    "registry-unavailable": Sample(
        _registry("RegistryUnavailable", "MLflow at http://mlflow.mlflow:5000 unreachable: "
                  "connection refused", "down"),
        "RegistryUnavailable", "Progressing", "InProgress", "unreachable"),
    "unauthorized": Sample(
        _registry("Unauthorized", "MLflow at http://mlflow.mlflow:5000 refused the "
                  "credentials", "down"),
        "Unauthorized", "Progressing", "InProgress", "refused the credentials"),
    "version-not-found": Sample(
        _registry("ModelVersionNotFound", "Model Version (name=iris-classifier, version=4) "
                  "not found", "up"),
        "ModelVersionNotFound", "Progressing", "InProgress", "not found"),
    "version-not-ready": Sample(
        _registry("ModelVersionNotReady", "model 'iris-classifier' version 4 is "
                  "PENDING_REGISTRATION", "up"),
        "ModelVersionNotReady", "Progressing", "InProgress", "PENDING_REGISTRATION"),
    "canary": Sample(_canary("RolloutInProgress", CANARY), "RolloutInProgress", "Progressing",
                     "InProgress", "canary of version 4"),
    "analysis-inconclusive": Sample(
        _canary("AnalysisInconclusive", f"{CANARY}; the step holds: 12 requests < "
                "minRequests 20"),
        "AnalysisInconclusive", "Progressing", "InProgress", "the step holds"),
    "paused": Sample(_canary("RolloutPaused", f"{CANARY}; paused by spec.rollout.paused"),
                     "RolloutPaused", "Suspended", "InProgress", "paused by spec.rollout"),
    "rolled-back": Sample(_rolled_back("RolledBack", "error rate 0.12 > 0.01"), "RolledBack",
                          "Degraded", "Failed", "was rolled back (error rate"),
    "progress-deadline": Sample(
        _rolled_back("ProgressDeadlineExceeded", "ProgressDeadlineExceeded: no progress in "
                     "600s"),
        "ProgressDeadlineExceeded", "Degraded", "Failed", "no progress in 600s"),
    "invalid-spec": Sample(
        _md("Failed", status.stalled("spec.rollout.steps: the last step must be 100",
                                     "InvalidSpec", 3)),
        "InvalidSpec", "Degraded", "Failed", "spec.rollout.steps"),
    "api-error": Sample(
        _md("Failed", status.stalled('403 Forbidden: ingresses.networking.k8s.io "iris" is '
                                     "forbidden", "ApiError", 3)),
        "ApiError", "Degraded", "Failed", "forbidden"),
    "child-conflict": Sample(
        _md("Failed", status.stalled("left alone, and not applied: Service iris--canary is "
                                     "held by ModelDeployment other", "ChildConflict", 3)),
        "ChildConflict", "Degraded", "Failed", "left alone"),
    "new-generation": Sample(
        _md("Ready", status.serving(2, 2, "3", 3)[1], generation=4, stable=STABLE),
        "`status.observedGeneration` < `metadata.generation`", "Progressing", "InProgress",
        "generation 4"),
    "no-status": Sample(_no_status(), "no `status`", "Progressing", "Current",
                        "Waiting for the modelship operator"),
    "deleting": Sample(_deleting(), "`metadata.deletionTimestamp` set", "Progressing",
                       "Terminating", "deleted"),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_argo_cd_health(shipped_lua: str, name: str) -> None:
    sample = SAMPLES[name]
    health, message = argocd_lua.health(shipped_lua, sample.obj)
    assert health == sample.argo, message
    assert sample.words in message


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_flux_kstatus(name: str) -> None:
    sample = SAMPLES[name]
    assert kstatus.compute(sample.obj).status == sample.flux


def test_kstatus_carries_the_operator_message() -> None:
    for name, type_ in (("canary", "Reconciling"), ("rolled-back", "Stalled"),
                        ("invalid-spec", "Stalled")):
        obj = SAMPLES[name].obj
        cond = next(c for c in obj["status"]["conditions"] if c["type"] == type_)
        assert kstatus.compute(obj).message == cond["message"] != ""


def test_the_phase_decides_when_conditions_are_missing(shipped_lua: str) -> None:
    for phase, expected in (("RolledBack", "Degraded"), ("Failed", "Degraded"),
                            ("Progressing", "Progressing"), ("Pending", "Progressing"),
                            ("Ready", "Progressing")):
        assert argocd_lua.health(shipped_lua, _md(phase, []))[0] == expected, phase


# --- docs/gitops.md's table is what both readers say -------------------------------------


def _table(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with `header`."""
    lines = text.split("\n" + header, 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    assert lines, header
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]


GITOPS_ROWS = _table(GITOPS_PAGE, "| state | phase | condition (reason) |")


def _samples_of(cell: str) -> list[str]:
    reasons = set(re.findall(r"`([A-Z][A-Za-z]+)`", cell))
    return [name for name, s in SAMPLES.items() if s.row in reasons or s.row == cell]


def test_the_docs_table_is_what_the_readers_say(shipped_lua: str) -> None:
    matched: list[str] = []
    for state, phase, cell, argo, flux in GITOPS_ROWS:
        names = _samples_of(cell)
        assert names, f"no sample for the row {state!r}"
        for name in names:
            obj = SAMPLES[name].obj
            assert (argocd_lua.health(shipped_lua, obj)[0], kstatus.compute(obj).status) \
                == (argo, flux), state
            if phase.startswith("`"):
                assert obj["status"]["phase"] == phase.strip("`"), name
            for type_, value in re.findall(r"(\w+)=(True|False)", cell):
                cond = next(c for c in obj["status"]["conditions"] if c["type"] == type_)
                assert (cond["status"], cond["reason"]) == (value, SAMPLES[name].row), name
        matched += names
    assert sorted(matched) == sorted(SAMPLES)


def test_every_troubleshooting_reason_has_its_row() -> None:
    section = README.split("## Troubleshooting", 1)[1]
    rows = _table(section, "| phase | condition (reason) |")
    ours = {(phase, reason): cell.split(" (", 1)[0] for _, phase, cell, _, _ in GITOPS_ROWS
            for reason in re.findall(r"`([A-Z][A-Za-z]+)`", cell)}
    reasons = 0
    for phase, cell, *_ in rows:
        condition = cell.split(" (", 1)[0]
        for reason in re.findall(r"`([A-Z][A-Za-z]+)`", cell):
            assert ours.get((phase, reason)) == condition, (phase, reason)
            reasons += 1
    assert reasons >= 10


# --- the two readers themselves ---------------------------------------------------------


def test_argo_cd_sandbox_has_only_base_and_table() -> None:
    assert argocd_lua.health('return {status = "Healthy", message = table.concat({"a", '
                             '"b"}, "-") .. os.date("!%Y", 0)}', {}) == ("Healthy", "a-b1970")
    for script in ('return {status = string.upper("healthy")}', "return {status = math.pi}",
                   'return {status = ("x"):upper()}', 'return {status = os.getenv("HOME")}',
                   'return {status = require("io")}'):
        with pytest.raises(argocd_lua.LuaHealthError):
            argocd_lua.health(script, {})
    assert argocd_lua.health('return {status = "Fine"}', {}) == ("Unknown", argocd_lua.INVALID)
    with pytest.raises(argocd_lua.LuaHealthError):
        argocd_lua.health("return 3", {})


# cli-utils pkg/kstatus/status/status_compute_test.go, TestCRDGenericStatus.
CLI_UTILS_CASES = {
    "crdNoStatus": ({"metadata": {"generation": 1}}, "Current"),
    "crdMismatchStatusGeneration": ({"metadata": {"generation": 2},
                                     "status": {"observedGeneration": 1}}, "InProgress"),
    "crdReady": ({"metadata": {"generation": 1}, "status": {"conditions": [
        {"type": "Ready", "status": "True", "message": "All looks ok", "reason": "AllOk"}]}},
                 "Current"),
    "crdNotReady": ({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
                     "conditions": [{"type": "Ready", "status": "False",
                                     "reason": "NotReadyYet"}]}}, "InProgress"),
    "crdNoCondition": ({"metadata": {"generation": 1}, "status": {"conditions": [
        {"type": "SomeCondition", "status": "False"}]}}, "Current"),
}


@pytest.mark.parametrize("case", sorted(CLI_UTILS_CASES))
def test_kstatus_port_passes_cli_utils_cases(case: str) -> None:
    body, expected = CLI_UTILS_CASES[case]
    obj = {"apiVersion": "something/v1", "kind": "MyCR", **body}
    obj["metadata"] |= {"name": "test", "namespace": "qual"}
    assert kstatus.compute(obj).status == expected


def test_kstatus_port_first_abnormal_condition_wins_and_errors_are_errors() -> None:
    both = [{"type": "Stalled", "status": "True", "message": "stuck"},
            {"type": "Reconciling", "status": "True", "message": "working"}]
    obj = {"apiVersion": "x.io/v1", "kind": "Y", "metadata": {"generation": 1},
           "status": {"conditions": both}}
    assert kstatus.compute(obj) == kstatus.Result("Failed", "stuck")
    obj["status"]["conditions"] = both[::-1]
    assert kstatus.compute(obj) == kstatus.Result("InProgress", "working")
    for bad in ({"metadata": {"generation": "1"}},
                {"metadata": {"generation": 1}, "status": {"observedGeneration": 1.0}},
                {"metadata": {"generation": 1}, "status": {"conditions": {"type": "Ready"}}}):
        with pytest.raises(kstatus.KstatusError):
            kstatus.compute({"apiVersion": "x.io/v1", "kind": "Y", **bad})
    with pytest.raises(kstatus.KstatusError):
        kstatus.compute({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {}})

"""GitOps readers of a ModelDeployment's status: the Argo CD health check
(docs/argocd/health.lua) run by a real Lua 5.1 interpreter (Argo CD's gopher-lua speaks
5.1) through lupa, and Flux's kstatus, whose rules are transcribed below from
sigs.k8s.io/cli-utils pkg/kstatus/status (Compute, checkGenericProperties,
checkGeneration, checkReadyCondition). Both read the same samples, built with the
operator's own status functions where it has them, and must agree."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from artifacts import REPO
from lupa import lua51
from modelship_operator import status

HEALTH_LUA = REPO / "docs" / "argocd" / "health.lua"


def argo_health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) of Argo CD's health check for `obj`."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    check = runtime.eval("function() " + HEALTH_LUA.read_text() + " end")
    result = check()
    return str(result.status), str(result.message)


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus's status of a custom resource (no kind-specific rules apply to it)."""
    if obj["metadata"].get("deletionTimestamp"):
        return "Terminating"
    generation = obj["metadata"].get("generation")
    observed = obj.get("status", {}).get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress"
    conditions = obj.get("status", {}).get("conditions", [])
    for cond in conditions:
        if cond["type"] == "Reconciling" and cond["status"] == "True":
            return "InProgress"
        if cond["type"] == "Stalled" and cond["status"] == "True":
            return "Failed"
    for cond in conditions:
        if cond["type"] == "Ready":
            if cond["status"] == "True":
                return "Current"
            if cond["status"] in ("False", "Unknown"):
                return "InProgress"
    return "Current"


AGREES = {"Healthy": {"Current"}, "Progressing": {"InProgress", "Terminating"},
          "Degraded": {"Failed"}}


def _md(phase: str | None, conditions: list[dict[str, Any]], generation: int = 3,
        observed: int | None = 3, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": "ml", "generation": generation},
        "spec": {"model": {"name": "iris-classifier", "version": "4"}},
        "status": {"conditions": status.merge_conditions(None, conditions,
                                                         "2026-11-22T20:00:00Z")},
    }
    if phase is not None:
        obj["status"]["phase"] = phase
    if observed is not None:
        obj["status"]["observedGeneration"] = observed
    obj["status"].update(extra)
    return obj


def _canary() -> list[dict[str, Any]]:
    # As reconcile.py writes them while a canary runs.
    message = "canary of version 4 at 10% (step 1/3); version 3 serves the rest"
    return [
        status.condition(status.READY, False, "RolloutInProgress", message, 3),
        status.condition(status.RECONCILING, True, "RolloutInProgress", message, 3),
        status.condition(status.STALLED, False, "RolloutInProgress", "", 3),
    ]


def _rolled_back() -> list[dict[str, Any]]:
    # As reconcile.py writes them after an automatic rollback.
    message = ("version 4 was rolled back (error rate 0.12 > 0.01); version 3 serves all "
               "traffic; change spec.model to try again")
    return [
        status.condition(status.READY, False, "RolledBack", message, 3),
        status.condition(status.RECONCILING, False, "RolledBack", message, 3),
        status.condition(status.STALLED, True, "RolledBack", message, 3),
    ]


SAMPLES: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (object, Argo CD health, a word its message must contain)
    "ready": (_md("Ready", status.serving(2, 2, "3", 3)[1],
                  stable={"version": "3", "replicas": 2, "readyReplicas": 2}),
              "Healthy", "2/2 replicas ready"),
    "pending": (_md("Pending", status.serving(2, 1, "3", 3)[1]), "Progressing", "1/2"),
    "canary": (_md("Progressing", _canary(), canary={"version": "4", "weight": 10}),
               "Progressing", "canary of version 4"),
    "new-generation": (_md("Ready", status.serving(2, 2, "3", 3)[1], generation=4),
                       "Progressing", "generation 4"),
    "stalled": (_md("Failed", status.stalled("no MLflow tracking URI: set "
                                             "spec.model.registry.trackingUri", "NoRegistry",
                                             3)),
                "Degraded", "trackingUri"),
    "rolled-back": (_md("RolledBack", _rolled_back()), "Degraded", "rolled back"),
    "deleting": (_md("Ready", status.serving(2, 2, "3", 3)[1],
                     ) | {"metadata": {"name": "iris", "generation": 3,
                                       "deletionTimestamp": "2026-11-22T20:01:00Z"}},
                 "Progressing", "deleted"),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_argo_cd_health(name: str) -> None:
    obj, expected, words = SAMPLES[name]
    health, message = argo_health(copy.deepcopy(obj))
    assert (health, words in message) == (expected, True), message


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_flux_kstatus_agrees(name: str) -> None:
    obj, expected, _ = SAMPLES[name]
    assert kstatus(obj) in AGREES[expected]


def test_before_the_operator_reports() -> None:
    """No status yet: Argo CD waits (Progressing); kstatus, by its documented rule for
    unknown kinds without conditions, says Current. The operator writes status on its
    first pass, so the window is short; docs/gitops.md says so."""
    obj = _md(None, [])
    del obj["status"]
    assert argo_health(obj)[0] == "Progressing"
    assert kstatus(obj) == "Current"


def test_the_phase_alone_decides_when_conditions_are_missing() -> None:
    for phase, expected in (("RolledBack", "Degraded"), ("Failed", "Degraded"),
                            ("Progressing", "Progressing"), ("Pending", "Progressing")):
        assert argo_health(_md(phase, []))[0] == expected


def test_docs_page_shows_the_health_check_as_it_is() -> None:
    page = (REPO / "docs" / "gitops.md").read_text()
    assert "```lua\n" + HEALTH_LUA.read_text() + "```" in page
    assert "resource.customizations.health.modelship.io_ModelDeployment" in page


def test_lua_is_lua_5_1() -> None:
    # gopher-lua has no goto, integer division or bitwise operators (Lua 5.2+).
    source = Path(HEALTH_LUA).read_text()
    for newer in ("goto ", "//", "&", "|", "~ ", "<<", ">>"):
        assert newer not in source.replace("~=", ""), newer

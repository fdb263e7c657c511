"""kstatus's status of a custom resource, as Flux (and `kubectl wait`-like tools built on
cli-utils) compute it: a port of `status.Compute` from sigs.k8s.io/cli-utils,
pkg/kstatus/status at commit 5895ad6c17dd06b99c1e5c8af17e2b12a3504fad (2025-10-21):

- status.go `Compute`: the generic properties decide if they can; otherwise a kind with
  its own rules (`legacyTypes` in core.go: Pod, Deployment, Job, ... all built-in kinds)
  uses them; otherwise `checkReadyCondition`; otherwise Current ("Resource is current").
- generic.go `checkGenericProperties`: a non-empty metadata.deletionTimestamp is
  Terminating; then `checkGeneration` (status.observedGeneration, when present, differing
  from metadata.generation is InProgress); then, in list order, the first condition
  Reconciling=True is InProgress and Stalled=True is Failed.
- status.go `checkReadyCondition`: the first condition of type Ready decides: True is
  Current, False or Unknown is InProgress; any other status string is skipped.
- Errors, as Go returns them: a non-string deletionTimestamp, a non-integer generation or
  observedGeneration (unstructured.NestedString / NestedInt64), and status.conditions that
  do not convert to `[]BasicCondition` (util.go GetObjectWithConditions) raise
  KstatusError.

Flux's kustomize-controller uses fluxcd/cli-utils, a fork with the same pkg/kstatus
rules. Only custom resources are ported: asking for a kind in `legacyTypes` raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CURRENT, IN_PROGRESS, FAILED, TERMINATING = "Current", "InProgress", "Failed", "Terminating"

# core.go legacyTypes: kinds with rules of their own, not ported here.
LEGACY_TYPES = frozenset({
    "Service", "Pod", "Secret", "PersistentVolumeClaim", "apps/StatefulSet", "apps/DaemonSet",
    "extensions/DaemonSet", "apps/Deployment", "extensions/Deployment", "apps/ReplicaSet",
    "extensions/ReplicaSet", "policy/PodDisruptionBudget", "batch/CronJob", "ConfigMap",
    "batch/Job", "apiextensions.k8s.io/CustomResourceDefinition",
})


class KstatusError(ValueError):
    """Compute would return an error for this object."""


@dataclass(frozen=True)
class Result:
    status: str
    message: str


def _nested(obj: Mapping[str, Any], *path: str) -> tuple[Any, bool]:
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            raise KstatusError(f"{'.'.join(path)}: {value!r} is not a map")
        if key not in value:
            return None, False
        value = value[key]
    return value, True


def _nested_int(obj: Mapping[str, Any], *path: str) -> tuple[int, bool]:
    value, found = _nested(obj, *path)
    if not found:
        return 0, False
    if isinstance(value, bool) or not isinstance(value, int):
        raise KstatusError(f"{'.'.join(path)}: {value!r} is not an int64")
    return value, True


def _conditions(obj: Mapping[str, Any]) -> list[dict[str, str]]:
    """status.conditions as GetObjectWithConditions converts them."""
    status = obj.get("status")
    if status is None:
        return []
    if not isinstance(status, Mapping):
        raise KstatusError(f"status: {status!r} is not an object")
    conditions = status.get("conditions")
    if conditions is None:
        return []
    if not isinstance(conditions, list):
        raise KstatusError(f"status.conditions: {conditions!r} is not a list")
    out = []
    for cond in conditions:
        if not isinstance(cond, Mapping):
            raise KstatusError(f"status.conditions: {cond!r} is not an object")
        fields = {}
        for key in ("type", "status", "reason", "message"):
            value = cond.get(key)
            if value is not None and not isinstance(value, str):
                raise KstatusError(f"status.conditions[].{key}: {value!r} is not a string")
            fields[key] = value or ""
        out.append(fields)
    return out


def _check_generation(obj: Mapping[str, Any]) -> Result | None:
    generation, found = _nested_int(obj, "metadata", "generation")
    if not found:
        return None
    observed, found = _nested_int(obj, "status", "observedGeneration")
    if found and observed != generation:
        return Result(IN_PROGRESS, f"{obj.get('kind', '')} generation is {generation}, "
                                   f"but latest observed generation is {observed}")
    return None


def _check_generic_properties(obj: Mapping[str, Any]) -> Result | None:
    deletion, found = _nested(obj, "metadata", "deletionTimestamp")
    if found and not isinstance(deletion, str):
        raise KstatusError(f"metadata.deletionTimestamp: {deletion!r} is not a string")
    if found and deletion:
        return Result(TERMINATING, "Resource scheduled for deletion")
    result = _check_generation(obj)
    if result is not None:
        return result
    for cond in _conditions(obj):
        if cond["type"] == "Reconciling" and cond["status"] == "True":
            return Result(IN_PROGRESS, cond["message"])
        if cond["type"] == "Stalled" and cond["status"] == "True":
            return Result(FAILED, cond["message"])
    return None


def _check_ready_condition(obj: Mapping[str, Any]) -> Result | None:
    for cond in _conditions(obj):
        if cond["type"] != "Ready":
            continue
        if cond["status"] == "True":
            return Result(CURRENT, "Resource is Ready")
        if cond["status"] in ("False", "Unknown"):
            return Result(IN_PROGRESS, cond["message"])
    return None


def compute(obj: Mapping[str, Any]) -> Result:
    """kstatus's Result for a custom resource (a JSON-shaped object)."""
    result = _check_generic_properties(obj)
    if result is not None:
        return result
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    kind = str(obj.get("kind", ""))
    key = f"{group}/{kind}" if group else kind
    if key in LEGACY_TYPES:
        raise KstatusError(f"{key} has kind-specific kstatus rules, which are not ported")
    result = _check_ready_condition(obj)
    if result is not None:
        return result
    return Result(CURRENT, "Resource is current")

"""Conditions and phase of a ModelDeployment (pure functions).

The conditions follow kstatus (sigs.k8s.io/cli-utils/pkg/kstatus), which Flux and
`kubectl wait` read: `Ready` is True only when the object serves as asked;
`Reconciling` is True while the operator works towards that; `Stalled` is True when
it cannot get there without a change to the spec (abnormal-true polarity for the last
two). `observedGeneration` says which spec the conditions describe.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
CHILDREN_OWNED = "ChildrenOwned"
CHILD_CONFLICT = "ChildConflict"


def now_iso() -> str:
    """UTC now in RFC 3339, as Kubernetes writes timestamps."""
    return datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0).isoformat().replace(
        "+00:00", "Z"
    )


def condition(
    type_: str, status: bool | None, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    """One condition in wire form; `status` None means Unknown."""
    text = "Unknown" if status is None else ("True" if status else "False")
    cond: dict[str, Any] = {"type": type_, "status": text, "reason": reason, "message": message}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def merge_conditions(
    old: Iterable[Mapping[str, Any]] | None, new: Iterable[dict[str, Any]], at: str
) -> list[dict[str, Any]]:
    """New conditions with `lastTransitionTime` kept from `old` where the status did not move.

    Conditions of other types in `old` (set by other parts of the operator) are kept.
    """
    previous = {str(c.get("type")): dict(c) for c in (old or [])}
    result: list[dict[str, Any]] = []
    seen: set[str] = set()
    for cond in new:
        before = previous.get(cond["type"])
        stamped = dict(cond)
        if before is not None and before.get("status") == cond["status"]:
            stamped["lastTransitionTime"] = before.get("lastTransitionTime") or at
        else:
            stamped["lastTransitionTime"] = at
        result.append(stamped)
        seen.add(cond["type"])
    for type_, cond in previous.items():
        if type_ not in seen:
            result.append(cond)
    order = {READY: 0, RECONCILING: 1, STALLED: 2}
    return sorted(result, key=lambda c: (order.get(c["type"], 9), c["type"]))


def kstatus(
    ready: bool,
    reconciling: bool,
    is_stalled: bool,
    reason: str,
    message: str,
    generation: int | None,
    reconciling_message: str | None = None,
) -> list[dict[str, Any]]:
    """The three kstatus conditions, sharing one reason and message."""
    return [
        condition(READY, ready, reason, message, generation),
        condition(
            RECONCILING,
            reconciling,
            reason,
            message if reconciling_message is None else reconciling_message,
            generation,
        ),
        condition(STALLED, is_stalled, reason, message if is_stalled else "", generation),
    ]


def stalled(message: str, reason: str, generation: int | None) -> list[dict[str, Any]]:
    """Conditions for a spec the operator cannot honour."""
    return kstatus(
        False, False, True, reason, message, generation, "waiting for a change to the spec"
    )


def serving(
    desired_replicas: int, ready_replicas: int, version: str, generation: int | None
) -> tuple[str, list[dict[str, Any]]]:
    """Phase and conditions from the stable Deployment's readiness.

    With autoscaling, `desired_replicas` is the HPA's minimum; with 0 replicas asked
    for, the deployment is Ready as soon as it exists (scaled to zero on purpose).
    """
    message = f"version {version}: {ready_replicas}/{desired_replicas} replicas ready"
    if ready_replicas >= desired_replicas:
        return "Ready", kstatus(True, False, False, "Serving", message, generation)
    return "Pending", kstatus(False, True, False, "ReplicasNotReady", message, generation)


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status keys whose value differs: an empty dict means write nothing.

    The patch is a JSON merge patch, which merges nested objects: a key that the desired
    value no longer has (``status.canary.heldSince`` once a step passes) is sent as null,
    so it is removed rather than kept from before.
    """
    return {
        key: _removing(current.get(key), value)
        for key, value in desired.items()
        if current.get(key) != value
    }


def _removing(old: Any, new: Any) -> Any:
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    result = {k: _removing(old.get(k), v) for k, v in new.items()}
    for k in old:
        if k not in new:
            result[k] = None
    return result


def children_owned(
    conflicts: list[str], current: Iterable[Mapping[str, Any]] | None, generation: int | None
) -> list[dict[str, Any]]:
    """The `ChildrenOwned` condition: False (reason ChildConflict) naming each conflict.

    Present once a conflict was seen (True again when it is gone), absent before.
    """
    if not conflicts:
        seen = any(c.get("type") == CHILDREN_OWNED for c in current or [])
        return [condition(CHILDREN_OWNED, True, "Owned", "", generation)] if seen else []
    message = (
        f"left alone, and not applied: {'; '.join(conflicts)}. Delete or rename the other "
        "object, or give this ModelDeployment another name"
    )
    return [condition(CHILDREN_OWNED, False, CHILD_CONFLICT, message, generation)]


def held_back(conditions: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The first `ChildrenOwned` condition in `conditions` when it is False, else None.

    Newest first: pass this pass's conditions before the stored ones. While it holds,
    the ModelDeployment is not Ready but Stalled: an object of another owner stands
    where one of its children should be, and only a person can move it.
    """
    owned = next((c for c in conditions if c.get("type") == CHILDREN_OWNED), None)
    return owned if owned is not None and owned.get("status") == "False" else None

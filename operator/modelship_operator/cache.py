"""What the watches tell: the children of every ModelDeployment, without a request.

kopf indexes (one per child kind, fed by the watch streams kopf keeps open anyway) hold
each child the operator manages, trimmed to what a pass compares, under the key
``(namespace, label value of its owner's name)``. kopf fills every index from its first
LIST before any handler runs, so the first pass after a restart sees every child that
exists and writes nothing it need not.

A pass reads a :class:`Snapshot` copied from the indexes on the event loop (the
indexes change there; the pass runs in a thread). The operator's own writes reach the
indexes only when their watch events come back, a moment later; so the per-object
loop keeps what its last pass applied and deleted (:class:`Overlay`) and lays it over
the next snapshot until the watch has caught up. Without it, the pass that the first
of those events wakes would see the rest of its own children missing and apply them
again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelship_operator import api
from modelship_operator.apply import DEPLOYMENT_LABEL, MANAGED_BY_LABEL, MANAGER

Key = tuple[str, str, str]
"""(apiVersion, kind, name) of a child, as apply.py keys them."""

MANAGED = {MANAGED_BY_LABEL: MANAGER}
"""The label every child carries; the indexes watch only objects that have it."""

# Fields a pass never reads, dropped so that 10,000 ModelDeployments' children fit in
# memory: managedFields is often the largest part of an object.
_DROPPED_METADATA = ("managedFields",)
# Status is read only from Deployments (replicas, readyReplicas); other kinds' status
# (an HPA's current metrics, an Ingress's load balancer) changes often and means nothing
# to a pass.
_STATUS_KEPT = {"Deployment": ("replicas", "readyReplicas", "updatedReplicas",
                               "availableReplicas", "observedGeneration")}


def trim(body: Mapping[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """A plain copy of a child with only what a pass compares or reports."""
    obj: dict[str, Any] = {"apiVersion": api_version, "kind": kind}
    for key, value in body.items():
        if key in ("apiVersion", "kind", "status"):
            continue
        obj[key] = _plain(value)
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for dropped in _DROPPED_METADATA:
            meta.pop(dropped, None)
    kept = _STATUS_KEPT.get(kind)
    status = body.get("status")
    if kept and isinstance(status, Mapping):
        obj["status"] = {k: _plain(status[k]) for k in kept if k in status}
    return obj


def _plain(value: Any) -> Any:
    """Deep copy into plain dicts and lists (kopf hands out read-only views)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def owner_name(meta: Mapping[str, Any]) -> str | None:
    """The name of the ModelDeployment that controls an object, if one does."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == api.KIND and ref.get("controller") and ref.get("name"):
            return str(ref["name"])
    return None


def index_key(meta: Mapping[str, Any]) -> tuple[str, str] | None:
    """Where a child is indexed: (namespace, its deployment label), or None to skip it."""
    value = (meta.get("labels") or {}).get(DEPLOYMENT_LABEL)
    if not value:
        return None
    return (str(meta.get("namespace") or "default"), str(value))


def version_of(obj: Mapping[str, Any] | None) -> int | None:
    """resourceVersion as a number, when it is one (etcd's are); None otherwise."""
    raw = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(raw))
    except (TypeError, ValueError):
        return None


def newer(candidate: Mapping[str, Any] | None, than: Mapping[str, Any] | None) -> bool:
    """True when `candidate` is a later state of the object than `than`.

    resourceVersions are opaque by contract but etcd's grow; where either is not a
    number, the watched one (`than`) is trusted.
    """
    a, b = version_of(candidate), version_of(than)
    return a is not None and b is not None and a > b


@dataclass
class Overlay:
    """The operator's own recent writes to one ModelDeployment's children."""

    applied: dict[Key, dict[str, Any]] = field(default_factory=dict)
    deleted: dict[Key, int | None] = field(default_factory=dict)
    """Deleted keys, with the resourceVersion the object had when it was deleted."""

    def record(self, applied: Mapping[Key, dict[str, Any]], deleted: Iterable[Key],
               live: Mapping[Key, dict[str, Any]]) -> None:
        for key, obj in applied.items():
            self.applied[key] = obj
            self.deleted.pop(key, None)
        for key in deleted:
            self.deleted[key] = version_of(live.get(key))
            self.applied.pop(key, None)

    def over(self, watched: dict[Key, dict[str, Any]]) -> dict[Key, dict[str, Any]]:
        """`watched` with this overlay's writes where the watch has not shown them yet.

        An entry the watch has caught up with (same or later resourceVersion, or a
        deleted object gone from it) is dropped from the overlay.
        """
        merged = dict(watched)
        for key, obj in list(self.applied.items()):
            seen = watched.get(key)
            if seen is not None and not newer(obj, seen):
                del self.applied[key]  # the watch has it (or something later)
            else:
                merged[key] = obj
        for key, version in list(self.deleted.items()):
            seen = watched.get(key)
            if seen is None or (version is not None and (version_of(seen) or 0) > version):
                del self.deleted[key]  # gone from the watch, or made again since
            else:
                merged.pop(key, None)
        return merged

    def __bool__(self) -> bool:
        return bool(self.applied or self.deleted)


def children(
    indexes: Iterable[Mapping[tuple[str, str], Iterable[Mapping[str, Any]]]],
    namespace: str,
    label: str,
    owner_uid: str,
) -> dict[Key, dict[str, Any]]:
    """The children of one ModelDeployment found in the indexes, keyed like apply.py.

    Only objects this owner controls are its children (a namesake's children share the
    label value until the hash of a long name tells them apart; the uid does).
    """
    found: dict[Key, dict[str, Any]] = {}
    for index in indexes:
        for obj in index.get((namespace, label), ()):
            meta = obj.get("metadata") or {}
            refs = meta.get("ownerReferences") or []
            if not any(r.get("uid") == owner_uid and r.get("controller") for r in refs):
                continue
            found[(str(obj["apiVersion"]), str(obj["kind"]), str(meta["name"]))] = dict(obj)
    return found

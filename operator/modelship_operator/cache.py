"""What the watches tell: the children of every ModelDeployment, without a request.

kopf indexes (one per child kind, fed by the watch streams kopf keeps open anyway) hold
each child the operator manages, trimmed to what a pass compares and packed (compressed
JSON, :class:`Packed`), under the key ``(namespace, label value of its owner's name)``.
kopf fills every index from its first LIST before any handler runs, so the first pass
after a restart sees every child that exists and writes nothing it need not.

A pass reads a :class:`Snapshot` copied from the indexes on the event loop (the
indexes change there; the pass runs in a thread). The operator's own writes reach the
indexes only when their watch events come back, a moment later; so the per-object
loop keeps what its last pass applied and deleted (:class:`Overlay`) and lays it over
the next snapshot until the watch has caught up. Without it, the pass that the first
of those events wakes would see the rest of its own children missing and apply them
again.
"""

from __future__ import annotations

import hashlib
import json
import zlib
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
        obj[key] = plain(value)
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for dropped in _DROPPED_METADATA:
            meta.pop(dropped, None)
    kept = _STATUS_KEPT.get(kind)
    status = body.get("status")
    if kept and isinstance(status, Mapping):
        obj["status"] = {k: plain(status[k]) for k in kept if k in status}
    return obj


def plain(value: Any) -> Any:
    """Deep copy into plain dicts and lists (kopf hands out read-only views)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Packed:
    """A trimmed child as the index holds it: compressed JSON (about 3 KB for a
    ModelDeployment's children, against about 54 KB as Python objects), and the uid of
    its controller to pick an owner's children without unpacking the others."""

    owner_uid: str | None
    data: bytes


def pack(obj: Mapping[str, Any]) -> Packed:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    owner = next((str(r.get("uid")) for r in refs if r.get("controller")), None)
    text = json.dumps(obj, separators=(",", ":"), default=str)
    return Packed(owner, zlib.compress(text.encode(), 1))


def unpack(packed: Packed) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(zlib.decompress(packed.data))
    return obj


def digest(obj: Mapping[str, Any]) -> str:
    """What a pass would read of a trimmed child, as a short hash (resourceVersion aside)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    text = json.dumps({**obj, "metadata": meta}, sort_keys=True, separators=(",", ":"),
                      default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


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


OVERLAY_SECONDS = 30.0
"""How long the loop trusts its own writes over a watch that has not shown them."""


@dataclass
class Overlay:
    """The operator's own recent writes to one ModelDeployment's children.

    An entry goes when the watch shows the write (or something later), when the watch
    reports that child deleted (:meth:`forget`), or after OVERLAY_SECONDS, whichever
    comes first: the watch is the truth, the overlay only bridges its delay.
    """

    applied: dict[Key, tuple[dict[str, Any], float]] = field(default_factory=dict)
    deleted: dict[Key, tuple[int | None, float]] = field(default_factory=dict)
    """Deleted keys, with the resourceVersion the object had when it was deleted."""

    def record(self, applied: Mapping[Key, dict[str, Any]], deleted: Iterable[Key],
               live: Mapping[Key, dict[str, Any]], now: float) -> None:
        for key, obj in applied.items():
            self.applied[key] = (obj, now)
            self.deleted.pop(key, None)
        for key in deleted:
            self.deleted[key] = (version_of(live.get(key)), now)
            self.applied.pop(key, None)

    def forget(self, keys: Iterable[Key], now: float) -> None:
        """The watch reported these children deleted: what was applied there is gone."""
        for key in keys:
            self.applied.pop(key, None)
            self.deleted.pop(key, None)
        self._expire(now)

    def _expire(self, now: float) -> None:
        for key in [k for k, (_, at) in self.applied.items() if now - at >= OVERLAY_SECONDS]:
            del self.applied[key]
        for key in [k for k, (_, at) in self.deleted.items() if now - at >= OVERLAY_SECONDS]:
            del self.deleted[key]

    def expiry(self) -> float | None:
        """When the oldest entry expires (the loop looks again then); None when empty."""
        times = [at for _, at in self.applied.values()] + [at for _, at in self.deleted.values()]
        return min(times) + OVERLAY_SECONDS if times else None

    def over(self, watched: dict[Key, dict[str, Any]], now: float) -> dict[Key, dict[str, Any]]:
        """`watched` with this overlay's writes where the watch has not shown them yet.

        An entry the watch has caught up with (same or later resourceVersion, or a
        deleted object gone from it) is dropped from the overlay.
        """
        self._expire(now)
        merged = dict(watched)
        for key, (obj, _) in list(self.applied.items()):
            seen = watched.get(key)
            if seen is not None and not newer(obj, seen):
                del self.applied[key]  # the watch has it (or something later)
            else:
                merged[key] = obj
        for key, (version, _) in list(self.deleted.items()):
            seen = watched.get(key)
            if seen is None or (version is not None and (version_of(seen) or 0) > version
                                and not (seen.get("metadata") or {}).get("deletionTimestamp")):
                del self.deleted[key]  # gone from the watch, or made again since
            else:
                merged.pop(key, None)
        return merged


def children(
    indexes: Iterable[Mapping[tuple[str, str], Iterable[Packed]]],
    namespace: str,
    label: str,
    owner_uid: str,
) -> dict[Key, dict[str, Any]]:
    """The children of one ModelDeployment found in the indexes, keyed like apply.py.

    Only objects this owner controls are its children (a namesake's children share the
    label value until the hash of a long name tells them apart; the uid does). Each is
    unpacked into a fresh dict the pass may keep.
    """
    found: dict[Key, dict[str, Any]] = {}
    for index in indexes:
        for packed in index.get((namespace, label), ()):
            if packed.owner_uid != owner_uid:
                continue
            obj = unpack(packed)
            found[(str(obj["apiVersion"]), str(obj["kind"]), str(obj["metadata"]["name"]))] = obj
    return found

"""Bring the live children of a ModelDeployment to what render asked for.

`decide()` is pure: it compares a desired child with the live one and says Create,
Update or Existed, as KServe's reconcilers do. A child is left alone only when both
hold: the hash of the desired object recorded on the live one at the last apply is
unchanged (so a field that render dropped still triggers an apply, which server-side
apply turns into a removal), and every desired field is present in the live object
with the same value (so a hand edit or a deleted field is repaired). That makes a
resync with nothing changed cost only reads.

`sync_children()` does the I/O: one list per child kind (which also finds children the
spec no longer asks for), server-side apply for Create/Update, delete for orphans.

It never writes over, nor deletes, an object of another owner. Server-side apply would
take one over without a word (with one field manager for every ModelDeployment, even
its ownerReferences), so before creating a child the name is looked up: an object
there whose controller is someone else, or that has no controller and is not labelled
as this ModelDeployment's, is left alone and reported as a :class:`Conflict`; so is
every desired child that names it (an Ingress routing to a Service, an HPA scaling a
Deployment, a Deployment running as a ServiceAccount), so that nothing of ours sends
traffic, scale or identity to an object we do not own. Deletion only ever concerns
the objects :func:`list_children` found, all of them controlled by this owner.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelship_operator.k8s import ApiError, Kind, KubeClient, kind_of
from modelship_operator.naming import label_value

HASH_ANNOTATION = "modelship.io/applied-hash"
DEPLOYMENT_LABEL = "modelship.io/deployment"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGER = "modelship"


class Action(enum.Enum):
    CREATE = "Create"
    UPDATE = "Update"
    EXISTED = "Existed"


def object_hash(obj: Mapping[str, Any]) -> str:
    """A stable digest of a desired object (without the hash annotation itself)."""
    clean = json.loads(json.dumps(obj))
    meta = clean.get("metadata", {})
    meta.get("annotations", {}).pop(HASH_ANNOTATION, None)
    if "annotations" in meta and not meta["annotations"]:
        del meta["annotations"]
    text = json.dumps(clean, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_hash(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `obj` carrying its own hash as an annotation."""
    stamped: dict[str, Any] = json.loads(json.dumps(obj))
    annotations = stamped.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[HASH_ANNOTATION] = object_hash(obj)
    return stamped


def contains(live: Any, desired: Any) -> bool:
    """True when every field of `desired` is in `live` with the same value.

    Dicts may have extra keys in `live` (defaults the API server filled in); lists must
    have the same length and match item by item.
    """
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return False
        return all(key in live and contains(live[key], value) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(contains(a, b) for a, b in zip(live, desired, strict=True))
    if isinstance(desired, bool) or isinstance(live, bool):
        return live is desired
    return bool(live == desired)


def decide(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> Action:
    """Create, Update or Existed for one child."""
    if live is None:
        return Action.CREATE
    recorded = (live.get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)
    if recorded != object_hash(desired):
        return Action.UPDATE
    stamped = with_hash(desired)
    return Action.EXISTED if contains(live, stamped) else Action.UPDATE


def _key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


@dataclass
class SyncResult:
    """What one pass changed, and the live objects afterwards (by apiVersion, kind, name)."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    live: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    """Desired children left unapplied: held by another owner, or naming one that is."""
    applied: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    """The objects this pass applied, as the API server answered."""
    removed: list[tuple[str, str, str]] = field(default_factory=list)
    """The keys of the objects this pass deleted."""

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)

    def summary(self) -> str:
        parts = []
        for verb, names in (
            ("created", self.created),
            ("updated", self.updated),
            ("deleted", self.deleted),
        ):
            if names:
                parts.append(f"{verb} {', '.join(names)}")
        return "; ".join(parts) or "no change"


def _owned_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid and ref.get("controller") for ref in refs)


@dataclass(frozen=True)
class Conflict:
    """A desired child not applied: `holder` has its name, or the one it names."""

    kind: str
    name: str
    holder: str
    """Who has the name: ``ModelDeployment iris-canary (uid ...)``, or why nobody may."""
    via: str = ""
    """For a child skipped because it names a held object: that object, ``Service iris``."""

    def __str__(self) -> str:
        if self.via:
            return f"{self.kind} {self.name} (it names {self.via})"
        return f"{self.kind} {self.name} is held by {self.holder}"


def holder(obj: Mapping[str, Any], owner_uid: str, owner_name: str) -> str | None:
    """Who holds a live object that is not this owner's, or None when it may be applied.

    Ours: controlled by `owner_uid`, or controlled by nobody and labelled as made by the
    operator for a ModelDeployment of this name (an orphan, e.g. after a deletion with
    ``--cascade=orphan``, which is adopted).
    """
    meta = obj.get("metadata", {})
    controllers = [ref for ref in meta.get("ownerReferences") or [] if ref.get("controller")]
    if controllers:
        ref = controllers[0]
        if ref.get("uid") == owner_uid:
            return None
        return f"{ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})"
    labels = meta.get("labels") or {}
    if labels.get(DEPLOYMENT_LABEL) == label_value(owner_name) and (
        labels.get(MANAGED_BY_LABEL) == MANAGER
    ):
        return None
    return "someone else (no controller, and not labelled as this ModelDeployment's)"


def references(obj: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of the other objects a child names: its routes, scale target, identity."""
    spec = obj.get("spec") or {}
    found: set[tuple[str, str]] = set()
    kind = obj.get("kind")
    if kind == "Deployment":
        account = ((spec.get("template") or {}).get("spec") or {}).get("serviceAccountName")
        if account:
            found.add(("ServiceAccount", account))
    elif kind == "HorizontalPodAutoscaler":
        target = spec.get("scaleTargetRef") or {}
        found.add((target.get("kind", ""), target.get("name", "")))
    elif kind == "Ingress":
        backends = [spec.get("defaultBackend") or {}]
        for rule in spec.get("rules") or []:
            backends += [p.get("backend") or {} for p in (rule.get("http") or {}).get("paths", [])]
        found |= {("Service", b["service"]["name"]) for b in backends if b.get("service")}
    elif kind == "HTTPRoute":
        for rule in spec.get("rules") or []:
            found |= {
                (ref.get("kind", "Service"), ref["name"])
                for ref in rule.get("backendRefs") or []
                if ref.get("name")
            }
    return found


def list_children(
    client: KubeClient,
    kinds: Iterable[Kind],
    namespace: str,
    owner_name: str,
    owner_uid: str,
) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Live children of one ModelDeployment, found by label and owner reference.

    A kind whose API is not served (Gateway API not installed) has no children.
    """
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    value = label_value(owner_name)  # long or odd names are shortened with a hash
    for kind in kinds:
        try:
            items = client.list(kind, namespace, f"{DEPLOYMENT_LABEL}={value}")
        except ApiError as exc:
            if exc.not_found:
                continue
            raise
        for item in items:
            labels = item.get("metadata", {}).get("labels") or {}
            if labels.get(DEPLOYMENT_LABEL) != value or not _owned_by(item, owner_uid):
                continue
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
            found[_key(item)] = item
    return found


def sync_children(
    client: KubeClient,
    desired: list[dict[str, Any]],
    child_kinds: Iterable[tuple[str, str]],
    namespace: str,
    owner_name: str,
    owner_uid: str,
    field_manager: str,
    live: dict[tuple[str, str, str], dict[str, Any]] | None = None,
) -> SyncResult:
    """Apply what differs, delete what is no longer desired; reads first, writes only on change.

    `live` is the result of :func:`list_children` when the caller listed already.
    Deletions come after every apply, so a Service retargeted to new pods is applied
    before the Deployment it used to select is deleted.
    """
    if live is None:
        kinds = [kind_of(api_version, kind) for api_version, kind in child_kinds]
        live = list_children(client, kinds, namespace, owner_name, owner_uid)
    result = SyncResult()
    wanted = {_key(obj) for obj in desired}
    blocked = _held(client, desired, live, namespace, owner_name, owner_uid, result)
    for obj in desired:
        key = _key(obj)
        if key in blocked:
            continue
        action = decide(obj, live.get(key))
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        if action is Action.EXISTED:
            result.live[key] = live[key]
            continue
        result.live[key] = result.applied[key] = client.apply(with_hash(obj), field_manager)
        (result.created if action is Action.CREATE else result.updated).append(label)
    for key in live:
        if key in wanted:
            continue
        if client.delete(kind_of(key[0], key[1]), namespace, key[2]):
            result.deleted.append(f"{key[1]}/{key[2]}")
        result.removed.append(key)  # gone either way
    return result


def _held(
    client: KubeClient,
    desired: list[dict[str, Any]],
    live: Mapping[tuple[str, str, str], dict[str, Any]],
    namespace: str,
    owner_name: str,
    owner_uid: str,
    result: SyncResult,
) -> set[tuple[str, str, str]]:
    """Keys of the desired children not to apply; each gets a Conflict in `result`.

    Only children missing from `live` are looked up (a GET each): `live` holds this
    owner's children already, so a pass that creates nothing reads nothing more.
    """
    blocked: dict[tuple[str, str, str], str] = {}
    for obj in desired:
        key = _key(obj)
        if key in live:
            continue
        existing = client.get(kind_of(key[0], key[1]), namespace, key[2])
        who = None if existing is None else holder(existing, owner_uid, owner_name)
        if who is not None:
            blocked[key] = f"{key[1]} {key[2]}"
            result.conflicts.append(Conflict(key[1], key[2], who))
    grew = bool(blocked)
    while grew:  # a child naming a blocked one is blocked too, and so on
        grew = False
        names = {(k[1], k[2]): label for k, label in blocked.items()}
        for obj in desired:
            key = _key(obj)
            via = next((names[ref] for ref in sorted(references(obj)) if ref in names), None)
            if key not in blocked and via is not None:
                blocked[key] = f"{key[1]} {key[2]}"
                result.conflicts.append(Conflict(key[1], key[2], "", via))
                grew = True
    return set(blocked)

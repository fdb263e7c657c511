"""The Secret examples of the documentation and examples/, and the keys the operator's
pods read from each Secret a ModelDeployment names, taken from what the operator renders.

An example is a ``kubectl create secret generic|tls NAME ...`` command in a shell block,
or a ``kind: Secret`` object in a YAML block or a file under examples/.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from artifacts import REPO
from docs_blocks import blocks, commands, yaml_blocks

TLS = "kubernetes.io/tls"
TLS_KEYS = frozenset({"tls.crt", "tls.key"})


@dataclass
class SecretExample:
    where: str
    name: str
    namespace: str | None
    type: str
    data: dict[str, str]


def _from_kubectl(words: list[str], where: str) -> SecretExample | None:
    if words[:1] != ["kubectl"] or "create" not in words:
        return None
    rest = words[words.index("create") + 1:]
    if rest[:1] != ["secret"]:
        return None
    kind, name, flags = rest[1], rest[2], rest[3:]
    namespace = None
    for i, w in enumerate(words):
        if w in ("-n", "--namespace"):
            namespace = words[i + 1]
        elif w.startswith("--namespace="):
            namespace = w.split("=", 1)[1]
    data: dict[str, str] = {}
    secret_type = TLS if kind == "tls" else "Opaque"
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(flags):
        flag = flags[i]
        if "=" in flag and flag.startswith("--"):
            pairs.append(tuple(flag.split("=", 1)))  # type: ignore[arg-type]
        elif flag.startswith("--") and i + 1 < len(flags):
            pairs.append((flag, flags[i + 1]))
            i += 1
        i += 1
    for flag, value in pairs:
        if flag == "--from-literal":
            key, literal = value.split("=", 1)
            data[key] = literal
        elif flag == "--from-file":
            key = value.split("=", 1)[0] if "=" in value else Path(value).name
            data[key] = f"(the file {value})"
        elif flag in ("--cert", "--key") and kind == "tls":
            data["tls.crt" if flag == "--cert" else "tls.key"] = f"(the file {value})"
        elif flag == "--type":
            secret_type = value
        elif flag not in ("--namespace", "-n", "--dry-run", "--output", "-o"):
            raise ValueError(f"{where}: kubectl create secret flag {flag} is not understood")
    return SecretExample(where, name, namespace, secret_type, data)


def _from_object(obj: Any, where: str) -> SecretExample | None:
    if not isinstance(obj, dict) or obj.get("kind") != "Secret":
        return None
    data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    data.update(obj.get("stringData") or {})
    meta = obj.get("metadata") or {}
    return SecretExample(where, meta["name"], meta.get("namespace"),
                         obj.get("type", "Opaque"), data)


def documented() -> list[SecretExample]:
    """Every Secret example of the documentation and examples/."""
    found: list[SecretExample] = []
    for block in blocks():
        for words in commands(block.body):
            example = _from_kubectl(words, block.where)
            if example is not None:
                found.append(example)
    sources = yaml_blocks() + [(str(p.relative_to(REPO)), p.read_text())
                               for p in sorted((REPO / "examples").glob("**/*.y*ml"))]
    for where, text in sources:
        for obj in yaml.safe_load_all(text):
            example = _from_object(obj, where)
            if example is not None:
                found.append(example)
    return found


@dataclass
class Reads:
    """How the pods (and Ingress) of one ModelDeployment use one Secret."""

    required: set[str] = field(default_factory=set)  # secretKeyRef, or a volume's items
    optional: set[str] = field(default_factory=set)  # secretKeyRef with optional: true
    whole: bool = False  # mounted as a directory of all its keys
    tls: bool = False  # an Ingress's TLS Secret (the controller reads tls.crt, tls.key)
    by: set[str] = field(default_factory=set)  # which objects say so

    @property
    def by_pods(self) -> bool:
        return bool(self.required or self.optional or self.whole)


def reads(objects: list[dict[str, Any]]) -> dict[str, Reads]:
    """Secret name -> how the rendered `objects` use it."""
    out: dict[str, Reads] = {}

    def of(name: str, by: str) -> Reads:
        entry = out.setdefault(name, Reads())
        entry.by.add(by)
        return entry

    for obj in objects:
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Ingress":
            for tls in obj["spec"].get("tls", []):
                of(tls["secretName"], label).tls = True
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            for entry in c.get("env", []):
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    r = of(ref["name"], f"{label} env {entry['name']}")
                    (r.optional if ref.get("optional") else r.required).add(ref["key"])
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    of(source["secretRef"]["name"], f"{label} envFrom").whole = True
        secret_volumes = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
        for name, secret in secret_volumes.items():
            r = of(secret["secretName"], f"{label} volume {name}")
            if "items" in secret:
                r.required |= {item["key"] for item in secret["items"]}
            else:
                r.whole = True
        # A path into a Secret's mount (an env value, an argument) needs that one file.
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            words = [e.get("value", "") for e in c.get("env", [])] + c.get("command", [])
            for mount in c.get("volumeMounts", []):
                secret = secret_volumes.get(mount["name"])
                prefix = mount["mountPath"].rstrip("/") + "/"
                for word in words:
                    if secret is not None and word.startswith(prefix):
                        r = of(secret["secretName"], f"{label} {c['name']} reads {word}")
                        r.required.add(word[len(prefix):].split("/")[0])
    return out


def problems(example: SecretExample, use: Reads) -> list[str]:
    """What is wrong with `example` for a Secret used as `use` says (empty: nothing)."""
    keys = set(example.data)
    found = []
    if use.tls:
        if example.type != TLS or keys != TLS_KEYS:
            found.append(f"{example.name} is an Ingress TLS Secret: type {TLS} with the keys "
                         f"tls.crt and tls.key, not {example.type} with {sorted(keys)}")
        return found
    if missing := use.required - keys:
        found.append(f"{example.name} lacks {sorted(missing)}: the pods read them "
                     f"({', '.join(sorted(use.by))}) and would not start")
    if not use.whole:
        if unread := keys - use.required - use.optional:
            found.append(f"{example.name} has {sorted(unread)}, which no pod reads (it reads "
                         f"{sorted(use.required | use.optional)})")
        if use.optional and not use.required and not keys & use.optional:
            found.append(f"{example.name} holds none of {sorted(use.optional)}")
    elif not keys:
        found.append(f"{example.name} has no key: the runtime needs at least one")
    return found

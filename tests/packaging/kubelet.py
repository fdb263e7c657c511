"""What a kubelet makes of one rendered pod's Secrets, so that a test can start the
runtime exactly as a pod would, from documented Secret examples.

- ``env`` entries: ``value`` as is; ``valueFrom.secretKeyRef`` / ``configMapKeyRef``
  resolved from the given objects, a missing object or key left out when the reference
  is optional and an error otherwise, with the kubelet's own message
  (``couldn't find key url in Secret ml/iris-redis``: the pod stays in
  CreateContainerConfigError).
- ``secret`` volumes: a directory laid out as the kubelet's atomic writer does
  (``..data`` -> a timestamped directory holding one file per key, and one symlink per
  key), all keys or only ``items``.
- emptyDir volumes: empty directories.

Paths under a container's mount points (in env values and command arguments) are moved
to the directories standing in for the volumes. Anything else a pod spec can ask for
(fieldRef, envFrom, projected volumes...) raises, so a test never runs on a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PodError(Exception):
    """The pod would not start: the message is what the kubelet would report."""


@dataclass
class Container:
    env: dict[str, str]
    command: list[str]
    mounts: dict[str, Path]  # mountPath -> local directory


def _lookup(kind: str, ref: dict[str, Any], objects: dict[str, dict[str, str]],
            namespace: str) -> str | None:
    data = objects.get(ref["name"])
    optional = bool(ref.get("optional"))
    if data is None:
        if optional:
            return None
        raise PodError(f'{kind.lower()} "{ref["name"]}" not found')
    if ref["key"] not in data:
        if optional:
            return None
        raise PodError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
    return data[ref["key"]]


def _write_secret_volume(root: Path, data: dict[str, str]) -> None:
    stamp = root / "..2025_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for key, value in data.items():
        (stamp / key).write_text(value)
    (root / "..data").symlink_to(stamp.name)
    for key in data:
        (root / key).symlink_to(f"..data/{key}")


def _volume(volume: dict[str, Any], where: Path, secrets: dict[str, dict[str, str]],
            namespace: str) -> None:
    if "emptyDir" in volume:
        where.mkdir(parents=True)
        return
    if set(volume) == {"name", "configMap"} and volume["configMap"].get("optional"):
        # No ConfigMap is made here (the operator makes NAME--shadow during a rollout):
        # an optional one that does not exist is an empty directory, as the kubelet mounts.
        where.mkdir(parents=True)
        return
    if set(volume) != {"name", "secret"}:
        raise NotImplementedError(f"volume {volume}")
    spec = volume["secret"]
    data = secrets.get(spec["secretName"])
    if data is None:
        if spec.get("optional"):
            where.mkdir(parents=True)
            return
        raise PodError(f'secret "{spec["secretName"]}" not found')
    if "items" in spec:
        chosen = {}
        for item in spec["items"]:
            if item["key"] not in data:
                if spec.get("optional"):
                    continue
                raise PodError(f"couldn't find key {item['key']} in Secret "
                               f"{namespace}/{spec['secretName']}")
            chosen[item["path"]] = data[item["key"]]
        data = chosen
    _write_secret_volume(where, data)


def _move(value: str, mounts: dict[str, Path]) -> str:
    for mount, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(local) + value[len(mount):]
    return value


def container(pod: dict[str, Any], name: str, root: Path, *, namespace: str,
              secrets: dict[str, dict[str, str]],
              config_maps: dict[str, dict[str, str]] | None = None) -> Container:
    """The container `name` of `pod` (a pod spec) as its process would see it; volumes
    are made under `root`. Raises PodError where the kubelet would refuse to start it."""
    config_maps = config_maps or {}
    spec = next(c for c in [*pod.get("initContainers", []), *pod["containers"]]
                if c["name"] == name)
    if "envFrom" in spec:
        raise NotImplementedError("envFrom")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in spec.get("volumeMounts", []):
        local = root / mount["name"]
        if not local.exists():
            _volume(volumes[mount["name"]], local, secrets, namespace)
        mounts[mount["mountPath"]] = local
    env: dict[str, str] = {}
    for entry in spec.get("env", []):
        if "valueFrom" not in entry:
            env[entry["name"]] = _move(entry.get("value", ""), mounts)
            continue
        source = entry["valueFrom"]
        if set(source) == {"secretKeyRef"}:
            value = _lookup("Secret", source["secretKeyRef"], secrets, namespace)
        elif set(source) == {"configMapKeyRef"}:
            value = _lookup("ConfigMap", source["configMapKeyRef"], config_maps, namespace)
        else:
            raise NotImplementedError(f"valueFrom {source}")
        if value is not None:
            env[entry["name"]] = value
    command = [_move(word, mounts) for word in [*spec.get("command", []),
                                                *spec.get("args", [])]]
    return Container(env, command, mounts)

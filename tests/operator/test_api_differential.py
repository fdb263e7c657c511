"""Mutate valid manifests one field at a time; the CRD and pydantic must agree on each.

The corpus holds cases a person thought of. This holds the cases nobody did: every
field of a few rich manifests is set in turn to each value of a small pool of awkward
values (null, empty, zero, negative, too big, wrong type, nested junk), or removed, and
an unknown key is added to every object. Each variant must get the same verdict from
crdcheck (the API server's view) and from the operator's models.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from modelship_operator.api import ModelDeployment

sys.path.insert(0, str(Path(__file__).parent))

from crdcheck import CRDChecker

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "modelship.io_modeldeployments.yaml"
CORPUS = Path(__file__).parent / "corpus" / "valid"
SEEDS = [
    REPO / "examples" / "full.yaml",
    REPO / "examples" / "gateway.yaml",
    CORPUS / "with-status.yaml",
    CORPUS / "env-and-resources.yaml",
    CORPUS / "alias.yaml",
    CORPUS / "disruption-budget-percent.yaml",
    CORPUS / "prometheus-provider.yaml",
]
_REMOVE = object()
POOL: list[Any] = [
    None, "", 0, -1, 1, 100, 101, 1001, 1.5, True, "x", "3", "50%", "1m", "250m", "Iris",
    "a" * 300, [], [1], {}, {"a": 1}, _REMOVE,
]

Path_ = tuple[str | int, ...]


def _paths(value: Any, path: Path_ = ()) -> Iterator[Path_]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, (*path, i))
    if path:
        yield path


def _objects(value: Any, path: Path_ = ()) -> Iterator[Path_]:
    if isinstance(value, dict):
        yield path
        for key, child in value.items():
            yield from _objects(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _objects(child, (*path, i))


def _set(manifest: dict[str, Any], path: Path_, value: Any) -> dict[str, Any]:
    result = copy.deepcopy(manifest)
    parent: Any = result
    for part in path[:-1]:
        parent = parent[part]
    if value is _REMOVE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(value)
    return result


def _variants(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in _paths(manifest):
        if path[0] not in ("spec", "status"):
            continue
        for value in POOL:
            # status models ignore fields they do not know (a newer operator may have
            # written them; the API server prunes unknown status fields on a write), so a
            # mapping put where the status has an object is no disagreement.
            if path[0] == "status" and isinstance(value, dict) and value:
                continue
            shown = "<removed>" if value is _REMOVE else repr(value)[:20]
            yield f"{'.'.join(map(str, path))} = {shown}", _set(manifest, path, value)
    for path in _objects(manifest.get("spec", {}), ("spec",)):
        yield f"{'.'.join(map(str, path))} + unknown key", _set(manifest, (*path, "zz"), 1)


def _pydantic_accepts(manifest: dict[str, Any]) -> bool:
    try:
        ModelDeployment.model_validate(manifest)
    except pydantic.ValidationError:
        return False
    return True


@pytest.fixture(scope="module")
def checker() -> CRDChecker:
    return CRDChecker.from_crd(yaml.safe_load(CRD_PATH.read_text()))


@pytest.mark.parametrize("seed", SEEDS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_single_field_change_gets_one_verdict(checker: CRDChecker, seed: Path) -> None:
    manifest = yaml.safe_load(seed.read_text())
    disagreements = []
    rejected = 0
    for label, variant in _variants(manifest):
        crd_accepts = not checker.check(variant)
        rejected += not crd_accepts
        if crd_accepts != _pydantic_accepts(variant):
            disagreements.append(f"{label}: CRD {'accepts' if crd_accepts else 'rejects'}")
    assert disagreements == []
    assert rejected > 0, "no variant was invalid: the pool tests nothing"

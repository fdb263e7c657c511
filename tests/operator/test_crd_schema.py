"""The CRD as a document: valid for the API server, explained, and api.py's twin.

test_api_corpus.py compares verdicts on manifests; this file compares the two schemas
themselves, field by field, so that a field, default or bound added on one side only
fails here even before a corpus file exercises it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from modelship_operator import api
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).parent))

from crdcheck import defaulted

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "modelship.io_modeldeployments.yaml"
_SCALAR_KEYWORDS = ("type", "minimum", "maximum", "minLength", "maxLength", "pattern", "enum")


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    data = yaml.safe_load(CRD_PATH.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    root = version["schema"]["openAPIV3Schema"]
    assert isinstance(root, dict)
    return root


@pytest.mark.parametrize("version", ["1.29", "1.37"])
def test_crd_passes_kubernetes_validate_strict(crd: dict[str, Any], version: str) -> None:
    used = kubernetes_validate.validate(crd, version, strict=True)
    assert used == version, f"validated against {used}, not {version}"


def _properties(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for key, sub in node.get("properties", {}).items():
        found.append((f"{path}.{key}", sub))
        found += _properties(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        found += _properties(node["items"], path + "[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += _properties(node["additionalProperties"], path + ".*")
    return found


def test_every_field_has_a_description(schema: dict[str, Any]) -> None:
    fields = _properties(schema, "")
    assert len(fields) > 90
    missing = [path for path, node in fields if not node.get("description", "").strip()]
    # The API server refuses a root metadata schema holding anything but its type and
    # name/generateName restrictions, a description included (test_crd_structural.py).
    assert missing == [".metadata"]


def test_names_and_version(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{api.PLURAL}.{api.GROUP}"
    assert (spec["group"], spec["scope"]) == (api.GROUP, "Namespaced")
    assert spec["names"] == {
        "kind": api.KIND,
        "listKind": "ModelDeploymentList",
        "plural": api.PLURAL,
        "singular": "modeldeployment",
        "shortNames": ["md"],
        "categories": ["modelship"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (api.VERSION, True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd: dict[str, Any]) -> None:
    (version,) = crd["spec"]["versions"]
    columns = [
        (c["name"].upper(), c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]
    ]
    assert columns == [
        ("MODEL", "string", ".spec.model.name"),
        ("STABLE", "string", ".status.stable.version"),
        ("CANARY", "string", ".status.canary.version"),
        ("WEIGHT", "integer", ".status.canary.weight"),
        ("READY", "string", '.status.conditions[?(@.type=="Ready")].status'),
        ("URL", "string", ".status.url"),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ]


def test_conditions_are_a_map_keyed_by_type(schema: dict[str, Any]) -> None:
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_rules_have_bounded_cost(schema: dict[str, Any]) -> None:
    """Every list a rule sits in or on has maxItems, so the cost estimator accepts it."""
    unbounded: list[str] = []

    def walk(node: dict[str, Any], path: str, lists: list[tuple[str, dict[str, Any]]]) -> None:
        here = [*lists, (path, node)] if node.get("type") == "array" else lists
        if node.get("x-kubernetes-validations"):
            unbounded.extend(p for p, n in here if "maxItems" not in n)
        for key, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{key}", here)
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]", here)

    walk(schema, "", [])
    assert unbounded == []


# --- the CRD mirrors api.py --------------------------------------------------------------


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Drop pydantic's `| None` and follow $ref; also return the model name, if any."""
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) == 1:
            node = {**{k: v for k, v in node.items() if k != "anyOf"}, **options[0]}
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}, name
    return node, None


def _default(model: type[BaseModel], name: str) -> Any:
    field = model.model_fields[name]
    if field.is_required():
        return None
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True, mode="json")
    return value


def _scalar(js: dict[str, Any]) -> dict[str, Any]:
    """Value keywords of a pydantic JSON schema in OpenAPI 3.0 spelling."""
    out = {k: js[k] for k in _SCALAR_KEYWORDS if k in js}
    if "const" in js:
        out["enum"] = [js["const"]]
    if "exclusiveMinimum" in js:
        out["minimum"], out["exclusiveMinimum"] = js["exclusiveMinimum"], True
    return out


def _compare(js: dict[str, Any], crd: dict[str, Any], path: str, defs: dict[str, Any],
             model: type[BaseModel] | None, diffs: list[str]) -> None:
    js, name = _resolve(js, defs)
    if name is not None:
        model = getattr(api, name)
    if crd.get("x-kubernetes-int-or-string"):
        merged: dict[str, Any] = {}
        for option in js["anyOf"]:
            merged.update({k: v for k, v in _scalar(option).items() if k != "type"})
        mine = {k: crd[k] for k in _SCALAR_KEYWORDS if k in crd}
        if merged != mine:
            diffs.append(f"{path}: api.py {merged} != CRD {mine}")
        return
    if js.get("type") == "object" and "properties" in js:
        assert model is not None, path
        if set(js["properties"]) != set(crd.get("properties", {})):
            diffs.append(f"{path}: api.py {sorted(js['properties'])} != CRD "
                         f"{sorted(crd.get('properties', {}))}")
        if set(js.get("required", [])) != set(crd.get("required", [])):
            diffs.append(f"{path}: required {js.get('required')} != CRD {crd.get('required')}")
        by_alias = {f.alias or n: n for n, f in model.model_fields.items()}
        for key in set(js["properties"]) & set(crd.get("properties", {})):
            default = _default(model, by_alias[key])
            sub = crd["properties"][key]
            # The server defaults a default, so `rollout: {}` stands for the whole object.
            stored = defaulted(sub, sub["default"]) if "default" in sub else None
            if default is not None and stored != default:
                diffs.append(f"{path}.{key}: default {default!r} != CRD {stored!r}")
            if default is None and "default" in sub:
                diffs.append(f"{path}.{key}: CRD has a default api.py does not")
            _compare(js["properties"][key], crd["properties"][key], f"{path}.{key}", defs,
                     model, diffs)
        return
    if js.get("type") == "object":
        extra = js.get("additionalProperties")
        if isinstance(extra, dict):
            _compare(extra, crd.get("additionalProperties", {}), f"{path}.*", defs, None, diffs)
        elif not crd.get("x-kubernetes-preserve-unknown-fields"):
            diffs.append(f"{path}: free-form in api.py, not preserved in the CRD")
        return
    if js.get("type") == "array":
        for key in ("minItems", "maxItems"):
            if js.get(key) != crd.get(key):
                diffs.append(f"{path}: {key} {js.get(key)} != CRD {crd.get(key)}")
        _compare(js["items"], crd["items"], f"{path}[]", defs, None, diffs)
        return
    mine = {k: crd[k] for k in (*_SCALAR_KEYWORDS, "exclusiveMinimum") if k in crd}
    if _scalar(js) != mine:
        diffs.append(f"{path}: api.py {_scalar(js)} != CRD {mine}")


@pytest.mark.parametrize("part", ["spec", "status"])
def test_crd_mirrors_the_api_models(schema: dict[str, Any], part: str) -> None:
    js = api.ModelDeployment.model_json_schema(by_alias=True)
    diffs: list[str] = []
    _compare(js["properties"][part], schema["properties"][part], part, js["$defs"], None, diffs)
    assert diffs == []


def test_mirror_check_sees_a_difference(schema: dict[str, Any]) -> None:
    """The comparison above is not vacuous: a changed bound is reported."""
    js = api.ModelDeployment.model_json_schema(by_alias=True)
    js["$defs"]["ModelDeploymentSpec"]["properties"]["replicas"]["maximum"] = 999
    diffs: list[str] = []
    _compare(js["properties"]["spec"], schema["properties"]["spec"], "spec", js["$defs"], None,
             diffs)
    assert diffs == ["spec.replicas: api.py {'type': 'integer', 'minimum': 0, 'maximum': 999} "
                     "!= CRD {'type': 'integer', 'minimum': 0, 'maximum': 1000}"]

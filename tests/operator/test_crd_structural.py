"""The CRDs we ship pass the API server's own checks of a CRD, and each check can fail.

crd_structural.py carries the API server's CRD validation over from its source; every
rule it implements is shown here failing on a small CRD that breaks it (with the path the
finding names) and passing on the same CRD mended. The two faults a real API server found
in our CRD are reproduced on a copy of it.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from crd_structural import (
    STATIC_ESTIMATED_COST_LIMIT,
    STATIC_ESTIMATED_CRD_COST_LIMIT,
    Finding,
    check_crd,
    estimate_cost,
    rule_costs,
)
from crdcheck import CRDChecker

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "modelship.io_modeldeployments.yaml"
ROOT = "spec.versions[0].schema.openAPIV3Schema"
SPEC = f"{ROOT}.properties[spec]"
MIB3 = 3 * 1024 * 1024

Schema = dict[str, Any]


def _crd(
    spec_props: Schema | None = None,
    *,
    spec: Schema | None = None,
    root: Schema | None = None,
    meta: Schema | None = None,
    status: bool = True,
    printer: list[Schema] | None = None,
    name: str = "widgets.example.com",
) -> dict[str, Any]:
    """A small valid CRD, with the given parts swapped in."""
    spec_node: Schema = {"type": "object", "properties": spec_props or {"x": {"type": "string"}}}
    spec_node.update(spec or {})
    root_node: Schema = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": meta if meta is not None else {"type": "object"},
            "spec": spec_node,
        },
    }
    root_node.update(root or {})
    version: Schema = {
        "name": "v1",
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": root_node},
    }
    if status:
        version["subresources"] = {"status": {}}
    if printer is not None:
        version["additionalPrinterColumns"] = printer
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"kind": "Widget", "listKind": "WidgetList", "plural": "widgets",
                      "singular": "widget"},
            "versions": [version],
        },
    }


def _rule(rule: str, **extra: Any) -> list[Schema]:
    return [{"rule": rule, **extra}]


def _string_list(**extra: Any) -> Schema:
    return {"type": "array", "items": {"type": "string", **extra.pop("items", {})}, **extra}


def _keyed_list(keys: list[str], required: list[str], **extra: Any) -> Schema:
    return {
        "type": "array",
        "x-kubernetes-list-map-keys": keys,
        "items": {"type": "object", "required": required,
                  "properties": {"name": {"type": "string"}, "v": {"type": "string"}}},
        **extra,
    }


def _costly(items: int) -> Schema:
    """A list node whose rule costs 2 + items x (3 + 1 + ceil(0.1 x 40001) x ceil(0.25 x 8)),
    2 + 8,006 x items: 6,404,802 for 800 items, 16 of which pass 100,000,000."""
    return {
        "type": "array",
        "maxItems": items,
        "items": {"type": "string", "maxLength": 10000},
        "x-kubernetes-validations": _rule("self.all(s, s.matches('^[a-z]+$'))"),
    }


# (id, broken CRD, mended CRD, check, path of the finding, part of its message)
Case = tuple[str, Callable[[], dict[str, Any]], Callable[[], dict[str, Any]], str, str, str]
CASES: list[Case] = [
    # ---- openapi: ValidateCustomResourceDefinitionOpenAPISchema / specStandardValidatorV3
    ("unknown keyword",
     lambda: _crd({"x": {"type": "string", "maxlength": 3}}),
     lambda: _crd({"x": {"type": "string", "maxLength": 3}}),
     "openapi", f"{SPEC}.properties[x].maxlength", "unknown field"),
    ("type not an OpenAPI type",
     lambda: _crd({"x": {"type": "str"}}),
     lambda: _crd({"x": {"type": "string"}}),
     "openapi", f"{SPEC}.properties[x].type", "Unsupported value"),
    ("type null",
     lambda: _crd({"x": {"type": "null"}}),
     lambda: _crd({"x": {"type": "string", "nullable": True}}),
     "openapi", f"{SPEC}.properties[x].type", "use nullable"),
    ("default in the root metadata",
     lambda: _crd(meta={"type": "object", "default": {}}),
     lambda: _crd(meta={"type": "object"}),
     "openapi", f"{ROOT}.properties[metadata].default", "must not be set in top-level metadata"),
    ("$ref",
     lambda: _crd({"x": {"type": "string", "$ref": "#/definitions/x"}}),
     lambda: _crd({"x": {"type": "string"}}),
     "openapi", f"{SPEC}.properties[x].$ref", "$ref is not supported"),
    ("items as an array",
     lambda: _crd({"x": {"type": "array", "items": [{"type": "string"}]}}),
     lambda: _crd({"x": {"type": "array", "items": {"type": "string"}}}),
     "openapi", f"{SPEC}.properties[x].items", "must be a schema object and not an array"),
    ("uniqueItems",
     lambda: _crd({"x": _string_list(uniqueItems=True)}),
     lambda: _crd({"x": _string_list(**{"x-kubernetes-list-type": "set"})}),
     "openapi", f"{SPEC}.properties[x].uniqueItems", "uniqueItems cannot be set to true"),
    ("additionalProperties with properties",
     lambda: _crd({"x": {"type": "object", "properties": {"a": {"type": "string"}},
                         "additionalProperties": {"type": "string"}}}),
     lambda: _crd({"x": {"type": "object", "additionalProperties": {"type": "string"}}}),
     "openapi", f"{SPEC}.properties[x].additionalProperties", "mutual exclusive"),
    ("x-kubernetes-preserve-unknown-fields false",
     lambda: _crd({"x": {"type": "object", "x-kubernetes-preserve-unknown-fields": False}}),
     lambda: _crd({"x": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}),
     "openapi", f"{SPEC}.properties[x].x-kubernetes-preserve-unknown-fields",
     "must be true or undefined"),
    ("x-kubernetes-map-type on a string",
     lambda: _crd({"x": {"type": "string", "x-kubernetes-map-type": "atomic"}}),
     lambda: _crd({"x": {"type": "object", "x-kubernetes-map-type": "atomic",
                         "additionalProperties": {"type": "string"}}}),
     "openapi", f"{SPEC}.properties[x].type", "must be object if x-kubernetes-map-type"),
    ("x-kubernetes-list-type on an object",
     lambda: _crd({"x": {"type": "object", "x-kubernetes-list-type": "atomic"}}),
     lambda: _crd({"x": _string_list(**{"x-kubernetes-list-type": "atomic"})}),
     "openapi", f"{SPEC}.properties[x].type", "must be array if x-kubernetes-list-type"),
    ("list-map-keys without list-type map",
     lambda: _crd({"x": _keyed_list(["name"], ["name"])}),
     lambda: _crd({"x": _keyed_list(["name"], ["name"], **{"x-kubernetes-list-type": "map"})}),
     "openapi", f"{SPEC}.properties[x].x-kubernetes-list-type",
     "must be map if x-kubernetes-list-map-keys is non-empty"),
    ("list-map key neither required nor defaulted",
     lambda: _crd({"x": _keyed_list(["name"], [], **{"x-kubernetes-list-type": "map"})}),
     lambda: _crd({"x": _keyed_list(["name"], ["name"], **{"x-kubernetes-list-type": "map"})}),
     "openapi", f"{SPEC}.properties[x].items.properties[name].default",
     "must have a default or be a required property"),
    ("list-map key not an item property",
     lambda: _crd({"x": _keyed_list(["id"], [], **{"x-kubernetes-list-type": "map"})}),
     lambda: _crd({"x": _keyed_list(["name"], ["name"], **{"x-kubernetes-list-type": "map"})}),
     "openapi", f"{SPEC}.properties[x].x-kubernetes-list-map-keys",
     "entries must all be names of item properties"),
    ("set of granular objects",
     lambda: _crd({"x": {"type": "array", "x-kubernetes-list-type": "set",
                         "items": {"type": "object", "additionalProperties": {"type": "string"}}}}),
     lambda: _crd({"x": {"type": "array", "x-kubernetes-list-type": "set",
                         "items": {"type": "object", "x-kubernetes-map-type": "atomic",
                                   "additionalProperties": {"type": "string"}}}}),
     "openapi", f"{SPEC}.properties[x].items.x-kubernetes-map-type", "must be atomic"),
    ("nullable items of a set",
     lambda: _crd({"x": _string_list(items={"nullable": True},
                                     **{"x-kubernetes-list-type": "set"})}),
     lambda: _crd({"x": _string_list(**{"x-kubernetes-list-type": "set"})}),
     "openapi", f"{SPEC}.properties[x].items.nullable", "cannot be nullable"),
    ("blank rule message",
     lambda: _crd(spec={"x-kubernetes-validations": _rule("has(self.x)", message="  ")}),
     lambda: _crd(spec={"x-kubernetes-validations": _rule("has(self.x)", message="x is required")}),
     "openapi", f"{SPEC}.x-kubernetes-validations[0].message", "must be non-empty if specified"),
    ("multi-line rule without a message",
     lambda: _crd(spec={"x-kubernetes-validations": _rule("has(self.x) ||\n has(self.y)")},
                  spec_props={"x": {"type": "string"}, "y": {"type": "string"}}),
     lambda: _crd(spec={"x-kubernetes-validations": _rule("has(self.x) ||\n has(self.y)",
                                                          message="set x or y")},
                  spec_props={"x": {"type": "string"}, "y": {"type": "string"}}),
     "openapi", f"{SPEC}.x-kubernetes-validations[0].message",
     "message must be specified if rule contains line breaks"),
    ("unknown rule reason",
     lambda: _crd(spec={"x-kubernetes-validations": _rule("has(self.x)", reason="Missing")}),
     lambda: _crd(spec={"x-kubernetes-validations": _rule("has(self.x)",
                                                          reason="FieldValueRequired")}),
     "openapi", f"{SPEC}.x-kubernetes-validations[0].reason", "Unsupported value"),
    ("fieldPath to no field",
     lambda: _crd(spec={"x-kubernetes-validations": _rule("has(self.x)", fieldPath=".y")}),
     lambda: _crd(spec={"x-kubernetes-validations": _rule("has(self.x)", fieldPath=".x")}),
     "openapi", f"{SPEC}.x-kubernetes-validations[0].fieldPath", "must be a valid path"),
    ("oldSelf under an atomic list",
     lambda: _crd({"x": _string_list(items={
         "x-kubernetes-validations": _rule("self == oldSelf")})}),
     lambda: _crd({"x": _string_list(items={
         "x-kubernetes-validations": _rule("size(self) < 64")})}),
     "cel", f"{SPEC}.properties[x].items.x-kubernetes-validations[0].rule",
     f"uncorrelatable portion of the schema within {SPEC}.properties[x]"),
    ("optionalOldSelf without oldSelf",
     lambda: _crd(spec={"x-kubernetes-validations": _rule("has(self.x)", optionalOldSelf=True)}),
     lambda: _crd(spec={"x-kubernetes-validations": _rule("has(self.x)")}),
     "cel", f"{SPEC}.x-kubernetes-validations[0].optionalOldSelf",
     "may not be set if oldSelf is not used"),
    # ---- root: validateCustomResourceDefinitionValidation
    ("nullable root",
     lambda: _crd(root={"nullable": True}),
     lambda: _crd(root={"nullable": False}),
     "root", f"{ROOT}.nullable", "nullable cannot be true at the root"),
    ("keyword not allowed at the root with the status subresource",
     lambda: _crd(root={"minProperties": 1}),
     lambda: _crd(root={"minProperties": 1}, status=False),
     "root", ROOT, "if the status subresource is enabled"),
    # ---- structural: ValidateStructural
    ("field without a type",
     lambda: _crd({"x": {"description": "no type"}}),
     lambda: _crd({"x": {"description": "any value",
                         "x-kubernetes-preserve-unknown-fields": True}}),
     "structural", f"{SPEC}.properties[x].type", "must not be empty for specified object fields"),
    ("array items without a type",
     lambda: _crd({"x": {"type": "array", "items": {"minLength": 1}}}),
     lambda: _crd({"x": _string_list(items={"minLength": 1})}),
     "structural", f"{SPEC}.properties[x].items.type",
     "must not be empty for specified array items"),
    ("array without items",
     lambda: _crd({"x": {"type": "array"}}),
     lambda: _crd({"x": _string_list()}),
     "structural", f"{SPEC}.properties[x].items", "must be specified"),
    ("additionalProperties at the root",
     lambda: _crd(root={"properties": {}, "additionalProperties": {"type": "string"}},
                  status=False),
     lambda: _crd(status=False),
     "structural", f"{ROOT}.additionalProperties", "must not be used at the root"),
    ("root not an object",
     lambda: _crd(root={"type": "array", "items": {"type": "string"}, "properties": {}},
                  status=False),
     lambda: _crd(status=False),
     "structural", f"{ROOT}.type", "must be object at the root"),
    ("root metadata restricting labels",
     lambda: _crd(meta={"type": "object", "properties": {"labels": {"type": "object"}}}),
     lambda: _crd(meta={"type": "object",
                        "properties": {"name": {"type": "string", "maxLength": 63}}}),
     "structural", f"{ROOT}.properties[metadata]",
     "must not specify anything other than name and generateName"),
    ("root metadata without type object",
     lambda: _crd(meta={"x-kubernetes-preserve-unknown-fields": True}),
     lambda: _crd(meta={"type": "object"}),
     "structural", f"{ROOT}.properties[metadata].type", "must be object"),
    ("root kind not a string",
     lambda: _crd(root={"properties": {"kind": {"type": "integer"},
                                       "spec": {"type": "object"}}}),
     lambda: _crd(root={"properties": {"kind": {"type": "string"},
                                       "spec": {"type": "object"}}}),
     "structural", f"{ROOT}.properties[kind].type", "must be string"),
    ("int-or-string that also preserves unknown fields",
     lambda: _crd({"x": {"x-kubernetes-int-or-string": True,
                         "x-kubernetes-preserve-unknown-fields": True}}),
     lambda: _crd({"x": {"x-kubernetes-int-or-string": True}}),
     "structural", f"{SPEC}.properties[x].x-kubernetes-preserve-unknown-fields",
     "must be false if x-kubernetes-int-or-string is true"),
    ("embedded resource that is a string",
     lambda: _crd({"x": {"type": "string", "x-kubernetes-embedded-resource": True}}),
     lambda: _crd({"x": {"type": "object", "x-kubernetes-embedded-resource": True,
                         "x-kubernetes-preserve-unknown-fields": True}}),
     "structural", f"{SPEC}.properties[x].type",
     "must be object if x-kubernetes-embedded-resource is true"),
    ("description under anyOf",
     lambda: _crd({"x": {"type": "string", "anyOf": [{"description": "a", "pattern": "^a"},
                                                     {"pattern": "^b"}]}}),
     lambda: _crd({"x": {"type": "string", "anyOf": [{"pattern": "^a"}, {"pattern": "^b"}]}}),
     "structural", f"{SPEC}.properties[x].anyOf[0].description", "must be empty to be structural"),
    ("type under anyOf outside the int-or-string pattern",
     lambda: _crd({"x": {"type": "string", "anyOf": [{"type": "string", "maxLength": 3},
                                                     {"pattern": "^b"}]}}),
     lambda: _crd({"x": {"type": "string", "anyOf": [{"maxLength": 3}, {"pattern": "^b"}]}}),
     "structural", f"{SPEC}.properties[x].anyOf[0].type", "must be empty to be structural"),
    ("rule under allOf",
     lambda: _crd({"x": {"type": "string",
                         "allOf": [{"x-kubernetes-validations": _rule("self != ''")}]}}),
     lambda: _crd({"x": {"type": "string", "x-kubernetes-validations": _rule("self != ''")}}),
     "structural", f"{SPEC}.properties[x].allOf[0].x-kubernetes-validations",
     "must be empty to be structural"),
    ("metadata in a nested context",
     lambda: _crd(spec={"anyOf": [{"properties": {"metadata": {"minProperties": 1}}},
                                  {"required": ["x"]}]}),
     lambda: _crd(spec={"anyOf": [{"properties": {"x": {"minLength": 1}}}, {"required": ["x"]}]}),
     "structural", f"{SPEC}.anyOf[0].properties[metadata]",
     "must not be specified in a nested context"),
    ("pattern Go's regexp cannot compile",
     lambda: _crd({"x": {"type": "string", "pattern": "(?<=a)b"}}),
     lambda: _crd({"x": {"type": "string", "pattern": "^a+b$"}}),
     "structural", f"{SPEC}.properties[x].pattern", "must be a valid regular expression"),
    # ---- completeness: validateStructuralCompleteness
    ("root value validation of an undeclared property",
     lambda: _crd(root={"allOf": [{"properties": {"nope": {"minLength": 1}}}]}, status=False),
     lambda: _crd(root={"allOf": [{"properties": {"spec": {"minProperties": 1}}}]}, status=False),
     "completeness", f"{ROOT}.properties[nope]", "because it is defined in"),
    # ---- default: ValidateDefaults
    ("default of the wrong type",
     lambda: _crd({"x": {"type": "integer", "default": "a"}}),
     lambda: _crd({"x": {"type": "integer", "default": 1}}),
     "default", f"{SPEC}.properties[x].default", "is not of type 'integer'"),
    ("default with an unknown field",
     lambda: _crd({"x": {"type": "object", "default": {"b": "1"},
                         "properties": {"a": {"type": "string"}}}}),
     lambda: _crd({"x": {"type": "object", "default": {"a": "1"},
                         "properties": {"a": {"type": "string"}}}}),
     "default", f"{SPEC}.properties[x].default.b", "must not have unknown fields"),
    ("default missing a required field that has a default of its own",
     lambda: _crd({"x": {"type": "object", "default": {}, "required": ["a"],
                         "properties": {"a": {"type": "string", "default": "z"}}}}),
     lambda: _crd({"x": {"type": "object", "default": {"a": "z"}, "required": ["a"],
                         "properties": {"a": {"type": "string", "default": "z"}}}}),
     "default", f"{SPEC}.properties[x].default", "'a' is a required property"),
    ("default {} under a rule reading a defaulted field without has()",
     lambda: _crd({"x": {"type": "object", "default": {},
                         "x-kubernetes-validations": _rule("self.mode != 'off'"),
                         "properties": {"mode": {"type": "string", "default": "on"}}}}),
     lambda: _crd({"x": {"type": "object", "default": {},
                         "x-kubernetes-validations": _rule("!has(self.mode) || self.mode != 'off'"),
                         "properties": {"mode": {"type": "string", "default": "on"}}}}),
     "default", f"{SPEC}.properties[x].default", "no such key: mode"),
    ("default breaking a rule below it",
     lambda: _crd({"x": _string_list(default=[""], maxItems=4, items={
         "maxLength": 8, "x-kubernetes-validations": _rule("size(self) > 0", message="empty")})}),
     lambda: _crd({"x": _string_list(default=["a"], maxItems=4, items={
         "maxLength": 8, "x-kubernetes-validations": _rule("size(self) > 0", message="empty")})}),
     "default", f"{SPEC}.properties[x].default[0]", "empty"),
    # ---- cel: what the server's CEL compiler refuses
    ("rule selecting an undeclared field",
     lambda: _crd(spec={"x-kubernetes-validations": _rule("self.nope == 'a'")}),
     lambda: _crd(spec={"x-kubernetes-validations": _rule("!has(self.x) || self.x == 'a'")}),
     "cel", f"{SPEC}.x-kubernetes-validations[0].rule", "undefined field 'nope'"),
    ("rule naming an undeclared variable",
     lambda: _crd(spec={"x-kubernetes-validations": _rule("other.x == 'a'")}),
     lambda: _crd(spec={"x-kubernetes-validations": _rule("self == self")}),
     "cel", f"{SPEC}.x-kubernetes-validations[0].rule", "undeclared reference to 'other'"),
    ("rule that is not a bool",
     lambda: _crd(spec={"x-kubernetes-validations": _rule("1 + 2")}),
     lambda: _crd(spec={"x-kubernetes-validations": _rule("1 + 2 == 3")}),
     "cel", f"{SPEC}.x-kubernetes-validations[0].rule", "must evaluate to a bool"),
    ("rule that does not parse",
     lambda: _crd(spec={"x-kubernetes-validations": _rule("has(self.x) &&")}),
     lambda: _crd(spec={"x-kubernetes-validations": _rule("has(self.x)")}),
     "cel", f"{SPEC}.x-kubernetes-validations[0].rule", "compilation failed"),
    # ---- has: the lint
    ("optional field read without has()",
     lambda: _crd(spec={"x-kubernetes-validations": _rule("self.x != ''")}),
     lambda: _crd(spec={"x-kubernetes-validations": _rule("!has(self.x) || self.x != ''")}),
     "has", f"{SPEC}.x-kubernetes-validations[0].rule", "reads self.x without has()"),
    ("map key read without has() or in",
     lambda: _crd({"m": {"type": "object", "additionalProperties": {"type": "string"}}},
                  spec={"required": ["m"], "x-kubernetes-validations": _rule("self.m.k == 'v'")}),
     lambda: _crd({"m": {"type": "object", "additionalProperties": {"type": "string"}}},
                  spec={"required": ["m"],
                        "x-kubernetes-validations": _rule("!('k' in self.m) || self.m.k == 'v'")}),
     "has", f"{SPEC}.x-kubernetes-validations[0].rule", "reads key 'k' of map self.m"),
    ("optional field of a list item read without has()",
     lambda: _crd({"l": {"type": "array", "maxItems": 5, "items": {
         "type": "object", "properties": {"a": {"type": "integer"}}}}},
                  spec={"required": ["l"],
                        "x-kubernetes-validations": _rule("self.l.all(i, i.a > 0)")}),
     lambda: _crd({"l": {"type": "array", "maxItems": 5, "items": {
         "type": "object", "properties": {"a": {"type": "integer"}}}}},
                  spec={"required": ["l"],
                        "x-kubernetes-validations": _rule("self.l.all(i, !has(i.a) || i.a > 0)")}),
     "has", f"{SPEC}.x-kubernetes-validations[0].rule", "reads i.a without has()"),
    ("has() through an optional object",
     lambda: _crd({"o": {"type": "object", "properties": {"a": {"type": "string"}}}},
                  spec={"x-kubernetes-validations": _rule("has(self.o.a)")}),
     lambda: _crd({"o": {"type": "object", "properties": {"a": {"type": "string"}}}},
                  spec={"x-kubernetes-validations": _rule("has(self.o) && has(self.o.a)")}),
     "has", f"{SPEC}.x-kubernetes-validations[0].rule", "reads self.o without has()"),
    # ---- cost: StaticEstimatedCostLimit and StaticEstimatedCRDCostLimit
    ("rule too costly on an unbounded list of unbounded strings",
     lambda: _crd({"l": {"type": "array", "items": {"type": "string"},
                         "x-kubernetes-validations": _rule("self.all(s, s.matches('^[a-z]+$'))")}}),
     lambda: _crd({"l": {"type": "array", "maxItems": 10,
                         "items": {"type": "string", "maxLength": 64},
                         "x-kubernetes-validations": _rule("self.all(s, s.matches('^[a-z]+$'))")}}),
     "cost", f"{SPEC}.properties[l].x-kubernetes-validations[0].rule",
     f"exceeds budget {STATIC_ESTIMATED_COST_LIMIT}"),
    ("rules too costly together",
     lambda: _crd({f"l{i}": _costly(800) for i in range(16)}),
     lambda: _crd({f"l{i}": _costly(800) for i in range(15)}),
     "cost", ROOT, f"for entire OpenAPIv3 schema exceeds budget {STATIC_ESTIMATED_CRD_COST_LIMIT}"),
    ("function the estimator does not know",
     lambda: _crd({"x": {"type": "string", "maxLength": 8,
                         "x-kubernetes-validations": _rule("self.frobnicate()")}}),
     lambda: _crd({"x": {"type": "string", "maxLength": 8,
                         "x-kubernetes-validations": _rule("self.lowerAscii() == self")}}),
     "cost", f"{SPEC}.properties[x].x-kubernetes-validations[0].rule", "cannot estimate the cost"),
    # ---- crd: ValidateCustomResourceDefinition outside the schema
    ("name not plural.group",
     lambda: _crd(name="widget.example.com"),
     lambda: _crd(name="widgets.example.com"),
     "crd", "metadata.name", 'must be spec.names.plural+"."+spec.group'),
    ("printer column of an unknown type",
     lambda: _crd(printer=[{"name": "X", "type": "text", "jsonPath": ".spec.x"}]),
     lambda: _crd(printer=[{"name": "X", "type": "string", "jsonPath": ".spec.x"}]),
     "crd", "spec.versions[0].additionalPrinterColumns[0].type", "must be one of"),
]


@pytest.mark.parametrize(("props", "path", "fragment"), [
    ({"x": "string"}, f"{SPEC}.properties[x]", "must be a schema object"),
    ({"x": {"type": ["string", "null"]}}, f"{SPEC}.properties[x].type", "must be a string"),
])
def test_a_malformed_schema_is_named(props: Schema, path: str, fragment: str) -> None:
    findings = check_crd(_crd(props))
    assert _matching(findings, "openapi", path, fragment), findings


def _matching(findings: list[Finding], check: str, path: str, fragment: str) -> list[Finding]:
    return [f for f in findings if f.check == check and f.path == path and fragment in f.message]


def test_the_small_crd_passes() -> None:
    assert check_crd(_crd()) == []


@pytest.mark.parametrize(("broken", "mended", "check", "path", "fragment"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_check_fails_its_broken_crd_and_passes_the_mended_one(
    broken: Callable[[], dict[str, Any]],
    mended: Callable[[], dict[str, Any]],
    check: str,
    path: str,
    fragment: str,
) -> None:
    findings = check_crd(broken())
    assert _matching(findings, check, path, fragment), "\n".join(map(str, findings))
    assert check_crd(mended()) == []


@pytest.mark.parametrize("rule", [
    "has(self.x) && self.x != ''",
    "!has(self.x) || self.x != ''",
    "has(self.x) ? self.x != '' : true",
    "!(has(self.x) && has(self.y)) || self.x != self.y",
    "(has(self.x) && has(self.y)) && self.x.startsWith(self.y)",
    "self.l.map(i, has(i.a), i.a).all(a, a > 0)",
    "self.l.all(i, has(i.a) && i.a > 0) && self.l.all(i, !has(i.a) || i.a < 9)",
])
def test_guards_the_lint_accepts(rule: str) -> None:
    items = {"type": "object", "properties": {"a": {"type": "integer"}}}
    crd = _crd({"x": {"type": "string", "maxLength": 8}, "y": {"type": "string", "maxLength": 8},
                "l": {"type": "array", "maxItems": 8, "items": items}},
               spec={"required": ["l"], "x-kubernetes-validations": _rule(rule)})
    assert check_crd(crd) == []


# ------------------------------------------------------------------ the CEL cost model


def _cost(rule: str, props: Schema) -> int:
    crd = _crd(props, spec={"required": sorted(props), "x-kubernetes-validations": _rule(rule)})
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    (cost,) = rule_costs(schema)
    assert cost.cardinality == 1
    return cost.cost


STRINGS = {"s": {"type": "string", "maxLength": 10},
           "l": {"type": "array", "maxItems": 4, "items": {"type": "string", "maxLength": 2}},
           "n": {"type": "integer"}, "m": {"type": "integer"}}


# Each figure worked out by hand from cel-go's checker/cost.go and the sizes of
# SchemaDeclType: self and each select cost 1, a literal 0, a list literal 10; s has size
# 4 x 10 = 40, each item of l 4 x 2 = 8, l itself 4.
@pytest.mark.parametrize(("rule", "cost"), [
    # 2 + 2 reads, + 1 for the comparison of ints
    ("self.n <= self.m", 5),
    # list 10; all: range 10 + init 0 + result 1 + 3 x (cond 2 + step 1 + (1 + 0 + 1))
    ("[1, 2, 3].all(i, i > 0)", 26),
    # 2 + ceil(0.1 x (40 + 1)) x ceil(0.25 x len('^a+$'))
    ("self.s.matches('^a+$')", 2 + 5 * 1),
    # 2 + ceil(0.1 x 3)
    ("self.s.startsWith('abc')", 3),
    # concat: 2 + ceil(0.1 x (1 + 40)); equality: ceil(0.1 x min(41, 1))
    ("'a' + self.s == 'b'", 2 + 5 + 1),
    # exists: range 2 + result 1 + 4 x (cond 3 + step 1 + (1 + 0 + 1))
    ("self.l.exists(x, x == 'a')", 2 + 1 + 4 * 6),
    # exists_one: range 2 + result 2 + 4 x (predicate 2 + 2)
    ("self.l.exists_one(x, x == 'a')", 2 + 2 + 4 * 4),
    # map: range 2 + init 10 + result 1 + 4 x (12 + (1 + 0 + ceil(0.1 x 9)))
    ("self.l.map(x, x + 'a').size() > 0", 2 + 10 + 1 + 4 * 14 + 1 + 1),
    # contains: 2 + ceil(0.1 x 40) x ceil(0.1 x 2)
    ("self.s.contains('ab')", 6),
])
def test_the_cost_model_on_worked_examples(rule: str, cost: int) -> None:
    assert _cost(rule, STRINGS) == cost


@pytest.mark.parametrize(("string", "size"), [
    ({"type": "string", "maxLength": 10}, 40),  # 4 bytes a rune
    ({"type": "string", "enum": ["a", "bbb"]}, 3),  # the longest value
    ({"type": "string"}, MIB3 - 2),  # the request limit less ""
])
def test_string_sizes_follow_the_server(string: Schema, size: int) -> None:
    # contains costs 2 reads + ceil(0.1 x size) x ceil(0.1 x 2)
    assert _cost("self.s.contains('ab')", {"s": string}) == 2 + -(-size // 10)


@pytest.mark.parametrize(("items", "cardinality"), [
    ({"type": "array", "maxItems": 7}, 7),
    # unbounded: 3 MiB / (min serialized size of {"a":0} + 1): 2 + len("a") + 1 + 4 = 8
    ({"type": "array"}, MIB3 // 9),
])
def test_cardinality_of_a_rule_under_a_list(items: Schema, cardinality: int) -> None:
    node = {**items, "items": {"type": "object", "required": ["a"],
                               "properties": {"a": {"type": "integer"}},
                               "x-kubernetes-validations": _rule("self.a > 0")}}
    crd = _crd({"l": node})
    (cost,) = rule_costs(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert (cost.cost, cost.cardinality) == (3, cardinality)


# ------------------------------------------------------------------ the server's own figures
#
# Kubernetes tests its cost estimator with TestCostEstimation in apiextensions-apiserver's
# pkg/apiserver/schema/cel/compilation_test.go: a schema generator, a rule, the MaxCost it
# expects with no size limits, and the MaxCost with maxItems/maxProperties/maxLength set to
# a given limit. The same schemas, written as OpenAPI, and the same figures.

Generator = Callable[[int | None], Schema]


def _limit(node: Schema, key: str, limit: int | None) -> Schema:
    return node if limit is None else {**node, key: limit}


def _item(kind: str) -> Schema:
    if kind == "int-or-string":
        return {"x-kubernetes-int-or-string": True}
    if kind in ("duration", "date", "date-time"):
        return {"type": "string", "format": kind}
    return {"type": kind}


def _list_of(item: Schema) -> Generator:
    return lambda n: _limit({"type": "array", "items": item}, "maxItems", n)


def _map_of(value: Schema) -> Generator:
    return lambda n: _limit({"type": "object", "additionalProperties": value}, "maxProperties", n)


def _string(**extra: Any) -> Generator:
    return lambda n: _limit({"type": "string", **extra}, "maxLength", n)


def _strings_map(n: int | None) -> Schema:
    value = _limit({"type": "string"}, "maxLength", n)
    return _limit({"type": "object", "additionalProperties": value}, "maxProperties", n)


def _strings_list(n: int | None) -> Schema:
    return _limit({"type": "array", "items": _limit({"type": "string"}, "maxLength", n)},
                  "maxItems", n)


def _replace_object(n: int | None) -> Schema:
    return {"type": "object", "properties": {
        "str": _limit({"type": "string"}, "maxLength", n),
        "before": {"type": "string", "maxLength": 2},
        "after": {"type": "string", "maxLength": 4}}}


def _split_object(n: int | None) -> Schema:
    text = _limit({"type": "string"}, "maxLength", n)
    return {"type": "object", "properties": {"str": text, "separator": text}}


_OBJECT_ITEM = {"type": "object", "required": ["required"],
                "properties": {"required": {"type": "string"}, "optional": {"type": "string"}}}
_NUMBERS = _list_of(_item("number"))
_EACH = "self.all(x, true)"

# (name, schema for a limit, rule, cost without limits, the limit, cost with it); None:
# the server's test only wants the cost over the limit.
K8S_COST_CASES: list[tuple[str, Generator, str, int | None, int, int]] = [
    ("number array with all", _NUMBERS, _EACH, 4718591, 10, 32),
    ("string array with all", _list_of(_item("string")), _EACH, 3145727, 20, 62),
    ("boolean array with all", _list_of(_item("boolean")), _EACH, 1887437, 5, 17),
    ("array of number arrays with all", _list_of({"type": "array", "items": _item("number")}),
     _EACH, 3145727, 100, 302),
    ("array of objects with all", _list_of(_OBJECT_ITEM), _EACH, 555128, 50, 152),
    ("map of numbers with all", _map_of(_item("number")), _EACH, 1348169, 10, 32),
    ("map of strings with all", _map_of(_item("string")), _EACH, 1179647, 3, 11),
    ("map of booleans with all", _map_of(_item("boolean")), _EACH, 943718, 100, 302),
    ("string with contains", _string(), "self.contains('test')", 314574, 10, 5),
    ("string with startsWith", _string(), "self.startsWith('test')", 2, 15, 2),
    ("string with endsWith", _string(), "self.endsWith('test')", 2, 30, 2),
    ("concat string", _string(), 'size(self + "hello") > size("hello")', 314578, 4, 7),
    ("index of array with numbers", _NUMBERS, "self[1] == 0.0", 2, 5000, 2),
    ("index of array with strings", _list_of(_item("string")), "self[1] == self[1]",
     314577, 8, 314577),
    ("O(n^2) loop with numbers", _NUMBERS, "self.all(x, self.all(y, true))", None, 10, 352),
    ("O(n^3) loop with numbers", _NUMBERS, "self.all(x, self.all(y, self.all(z, true)))",
     None, 10, 3552),
    ("regex matches simple", _string(), 'self.matches("x")', 314574, 50, 22),
    ("regex matches empty string", _string(), '"".matches("(((((((((())))))))))[0-9]")',
     7, 10, 7),
    ("regex matches empty regex", _string(), 'self.matches("")', 1, 100, 1),
    ("map of strings with value length", _strings_map, "self.all(x, x.contains(self[x]))",
     2752507, 10, 72),
    ("set array maxLength to zero", _NUMBERS, "self[3] == 0.0", 2, 0, 2),
    ("set map maxLength to zero", _map_of(_item("number")), 'self["x"] == 0.0', 2, 0, 2),
    ("set string maxLength to zero", _string(), 'self == "x"', 2, 0, 1),
    ("set bytes maxLength to zero", _string(format="byte"), 'self == b"x"', 2, 0, 1),
    ("set maxLength greater than estimated maxLength", _NUMBERS, "self.all(x, x == 0.0)",
     6291454, 3 * 1024 * 2048, 25165826),
    ("int-or-string array with all", _list_of(_item("int-or-string")), _EACH, 4718591, 10, 32),
    ("index of array with int-or-strings", _list_of(_item("int-or-string")), "self[0] == 5",
     3, 10, 3),
    ("index of array with booleans", _list_of(_item("boolean")), "self[0] == false", 2, 25, 2),
    ("index of array of objects", _list_of(_OBJECT_ITEM), "self[0] == null", 2, 422, 2),
    ("index of array of array of numbers", _list_of({"type": "array", "items": _item("number")}),
     "self[0][0] == -1.0", 3, 51, 3),
    ("array of number maps with all", _list_of(_map_of(_item("number"))(None)),
     "self.all(x, x.y == 25.2)", 6291452, 12, 74),
    ("index of array of number maps", _list_of(_map_of(_item("number"))(None)),
     "self[0].x > 2.0", 4, 3000, 4),
    ("duration array with all", _list_of(_item("duration")), _EACH, 2359295, 5, 17),
    ("index of duration array", _list_of(_item("duration")), "self[0].getHours() == 2",
     4, 525, 4),
    ("date array with all", _list_of(_item("date")), _EACH, 725936, 15, 47),
    ("index of date array", _list_of(_item("date")), "self[2].getDayOfMonth() == 13",
     4, 42, 4),
    ("date-time array with all", _list_of(_item("date-time")), _EACH, 428963, 25, 77),
    ("index of date-time array", _list_of(_item("date-time")), "self[2].getMinutes() == 45",
     4, 99, 4),
    ("map of int-or-strings with all", _map_of(_item("int-or-string")), _EACH,
     1348169, 15, 47),
    ("map of number maps with all", _map_of(_map_of(_item("number"))(None)), _EACH,
     1179647, 10, 32),
    ("map of number arrays with all", _map_of(_NUMBERS(None)), _EACH, 1179647, 25, 77),
    ("map of durations with all", _map_of(_item("duration")), _EACH, 1048577, 5, 17),
    ("map of dates with all", _map_of(_item("date")), _EACH, 524288, 10, 32),
    ("map of date-times with all", _map_of(_item("date-time")), _EACH, 349526, 25, 77),
    ("extended library regex find", _string(), "self.find('[0-9]+') == ''", 629147, 10, 11),
    ("extended library join", _strings_list, "self.join(' ') == 'aa bb'",
     329853068905, 10, 43),
    ("extended library isSorted", _strings_list, "self.isSorted() == true",
     329854432052, 10, 52),
    ("extended library replace", _replace_object,
     "self.str.replace(self.before, self.after) == 'does not matter'", 629154, 4, 12),
    ("extended library split", _split_object, "self.str.split(self.separator) == []",
     629160, 10, 22),
    ("extended library lowerAscii", _string(), "self.lowerAscii() == 'lower!'",
     314575, 10, 6),
    ("check cost of size call", _map_of(_item("integer")), "oldSelf.size() == self.size()",
     5, 10, 5),
    ("check cost of timestamp comparison", _map_of(_item("date-time")),
     'self["a"] == self["b"]', 8, 7, 8),
    ("check cost of duration comparison", _map_of(_item("duration")),
     'self["c"] == self["d"]', 8, 42, 8),
    ("enums with maxLength equals to the longest possible value",
     _string(enum=["A", "B", "C", "LongValue"]), "self.contains('A')", 2, 1000, 401),
    ("IntOrString type with quantity rule",
     lambda n: _limit({"x-kubernetes-int-or-string": True}, "maxLength", n),
     "isQuantity(self)", 314574, 20, 9),
]


@pytest.mark.parametrize(("generate", "rule", "unbounded", "limit", "bounded"),
                         [case[1:] for case in K8S_COST_CASES],
                         ids=[case[0] for case in K8S_COST_CASES])
def test_cost_equals_the_servers_own_expectation(
    generate: Callable[[int | None], Schema], rule: str, unbounded: int | None, limit: int,
    bounded: int,
) -> None:
    cost = estimate_cost(generate(None), rule)
    if unbounded is None:
        assert cost > STATIC_ESTIMATED_COST_LIMIT
    else:
        assert cost == unbounded
    assert estimate_cost(generate(limit), rule) == bounded


# ------------------------------------------------------------------ what we ship


SHIPPED_DIRS = ("crds", "charts", "kustomize", "examples", "docs")


def _shipped() -> dict[str, list[dict[str, Any]]]:
    """Every CRD in the folders users install or copy from (Helm templates are not YAML)."""
    found: dict[str, list[dict[str, Any]]] = {}
    paths = [p for top in SHIPPED_DIRS for p in (REPO / top).rglob("*.y*ml")]
    for path in sorted(paths):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("charts/modelship/templates/"):
            continue
        text = path.read_text()
        if "CustomResourceDefinition" not in text:
            continue
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when there
        docs = [d for d in yaml.load_all(text, Loader=loader) if isinstance(d, dict)]
        crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
        if crds:
            found[rel] = crds
    return found


SHIPPED = _shipped()


def test_every_crd_we_ship_is_found() -> None:
    names = {rel: sorted(d["metadata"]["name"] for d in docs) for rel, docs in SHIPPED.items()}
    ours = ["modeldeployments.modelship.io"]
    kopf = ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]
    assert names == {
        "charts/modelship/crds/kopf.dev_peerings.yaml": kopf,
        "charts/modelship/crds/modelship.io_modeldeployments.yaml": ours,
        "crds/modelship.io_modeldeployments.yaml": ours,
        "kustomize/base/crds/modelship.io_modeldeployments.yaml": ours,
        "kustomize/components/peering/kopf.dev_peerings.yaml": kopf,
    }


@pytest.mark.parametrize("rel", sorted(SHIPPED))
def test_shipped_crd_passes_every_check(rel: str) -> None:
    for crd in SHIPPED[rel]:
        assert check_crd(crd) == [], crd["metadata"]["name"]


def _rule_count(node: Any) -> int:
    if not isinstance(node, dict):
        return 0
    entries = node.get("x-kubernetes-validations") or []
    # Each rule is costed, and so is each messageExpression.
    count = len(entries) + sum(1 for e in entries if e.get("messageExpression"))
    count += sum(_rule_count(p) for p in (node.get("properties") or {}).values())
    return count + _rule_count(node.get("items")) + _rule_count(node.get("additionalProperties"))


def test_our_rules_are_all_costed_within_the_limits() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    costs = rule_costs(schema)
    assert len(costs) == _rule_count(schema) >= 8
    assert all(c.cost > 0 and c.total <= STATIC_ESTIMATED_COST_LIMIT for c in costs)
    assert sum(c.total for c in costs) <= STATIC_ESTIMATED_CRD_COST_LIMIT


# ------------------------------------------------------------------ the faults a server found


def _ours() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def _analysis(crd: dict[str, Any]) -> Schema:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    node: Schema = schema["properties"]["spec"]["properties"]["rollout"]["properties"]["analysis"]
    return node


def test_regression_root_metadata_with_a_description_is_refused() -> None:
    crd = _ours()
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"][
        "description"] = "Standard object metadata."
    findings = check_crd(crd)
    assert [(f.check, f.path) for f in findings] == [("structural", f"{ROOT}.properties[metadata]")]
    assert "must not specify anything other than name and generateName" in findings[0].message


def test_regression_default_under_an_unguarded_rule_is_refused() -> None:
    crd = _ours()
    analysis = _analysis(crd)
    assert analysis["default"] == {}
    old_rule = "self.provider != 'prometheus' || size(self.prometheusUrl) > 0"
    analysis["x-kubernetes-validations"][0]["rule"] = old_rule
    findings = check_crd(crd)
    path = f"{SPEC}.properties[rollout].properties[analysis].default"
    assert [(f.check, f.path) for f in findings] == [("default", path)]
    assert "no such key: provider" in findings[0].message
    # What the custom-resource checks saw: every object is defaulted before its rules run,
    # so the same rule passes there and only the CRD-level check finds the fault.
    resource = {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": "iris"},
                "spec": {"model": {"name": "iris", "version": "1"}}}
    assert CRDChecker.from_crd(crd).check(resource) == []


def test_checking_leaves_the_crd_alone() -> None:
    crd = _ours()
    before = copy.deepcopy(crd)
    assert check_crd(crd) == []
    assert crd == before

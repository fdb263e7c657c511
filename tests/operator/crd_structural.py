"""Check a CustomResourceDefinition the way the API server does before it accepts one.

crdcheck.py checks custom resources against a CRD; this module checks the CRD itself,
which a kube-apiserver does in apiextensions-apiserver's CRD validation and answers with
a 422 when it fails. No API server runs here, so the rules are carried over from its
source (kubernetes/apiextensions-apiserver, read at 1aa2717, July 2026, and
kubernetes/apiserver, google/cel-go for the CEL cost model), each function naming the Go
function it follows:

- ``openapi``: ValidateCustomResourceDefinitionOpenAPISchema and specStandardValidatorV3
  (pkg/apis/apiextensions/validation/validation.go): OpenAPI types only, no ``$ref``,
  ``id``, ``definitions``, ``dependencies``, ``patternProperties``, ``additionalItems`` or
  item arrays; ``uniqueItems: true`` refused; ``additionalProperties`` and ``properties``
  exclusive; no default in the root ``metadata``/``kind``/``apiVersion``; the
  ``x-kubernetes-*`` extensions only where they mean something (map-type on objects,
  list-type on arrays, list-map-keys with list-type map, map-list keys scalar, required or
  defaulted and not nullable, set/map items not nullable, set items atomic); the shape of
  each ``x-kubernetes-validations`` entry (message, reason, fieldPath, optionalOldSelf)
  and ``oldSelf`` only where old and new values correlate. Unknown keywords are refused
  too (kubectl's default strict field validation refuses them; without it they would be
  dropped silently).
- ``root``: validateCustomResourceDefinitionValidation: with the status subresource only
  some keywords at the root; never ``nullable`` there.
- ``structural``: ValidateStructural (pkg/apiserver/schema/validation.go): a ``type`` on
  every node except where ``x-kubernetes-int-or-string`` or
  ``x-kubernetes-preserve-unknown-fields`` allow none, ``object`` at the root, ``items``
  on arrays, no ``additionalProperties`` at the root; the root ``metadata`` may hold its
  type and at most name/generateName restrictions, nothing else (a ``description`` there
  is refused); embedded resources are objects; inside ``allOf``/``anyOf``/``oneOf``/
  ``not`` only value validations (no type, description, title, default, nullable,
  additionalProperties, extensions, rules or ``metadata``), except the two int-or-string
  ``anyOf`` patterns; patterns compile as RE2 (Go's syntax).
- ``completeness``: validateStructuralCompleteness (complete.go): a property or items named
  in a root value validation exists in the structural schema.
- ``default``: ValidateDefaults (pkg/apiserver/schema/defaulting/validation.go): every
  ``default`` has no unknown field (pruning would change it), passes the OpenAPI schema of
  its node, and then every CEL rule at its node and below, with nested defaults NOT
  applied: ``default: {}`` under a rule reading ``self.provider`` fails there even when
  ``provider`` has a default of its own. The API server skips defaults under
  ``additionalProperties``; this module checks them too, since defaulting fills nulls
  there.
- ``cel``: compile checks of cel/compilation.go that need no full CEL type checker: the
  rule parses, names only ``self``, ``oldSelf`` and macro variables, selects only fields
  the schema declares (an undeclared field is a compile error on the server), and is not
  known to give a non-bool.
- ``has``: not the server's, a lint of this module: a rule that reads an optional field
  (neither in ``required`` nor with a ``default``, so possibly absent after defaulting) or
  a map key without a ``has()`` (or ``'key' in map``) test guarding it fails with "no such
  key" on an object that omits it. Guards follow ``&&``, ``||``, ``!`` and ``?:`` the way
  CEL short-circuits: in ``A && B`` the facts true of ``A`` hold in ``B``, in ``A || B`` and
  the else branch the facts false of ``A``. ``has(self.a.b)`` itself reads ``self.a``.
  Fields that are only defaulted are not flagged: on a stored object they are there, and
  where they are not (inside a CRD default) the ``default`` check evaluates the rule.
  Not covered: list indices out of range, and reads through a ``nullable`` field that
  holds null.
- ``cost``: the server refuses a rule whose estimated cost, times the number of times it
  can run, exceeds StaticEstimatedCostLimit (10,000,000), and a CRD whose rules together
  exceed StaticEstimatedCRDCostLimit (100,000,000) (validation.go, getExpressionCost and
  TotalCost).
- ``crd``: a few checks of ValidateCustomResourceDefinition outside the schema: the name
  is plural.group, the group has a dot, one storage version, printer column types.

The server stops at the first stage that fails (a schema that is not structural has its
defaults and rules left unchecked); this module runs every stage, so that one run names
every fault.

How the cost is estimated, and how it relates to the server's. The server type-checks each
rule with cel-go and runs cel-go's static estimator (checker/cost.go) with Kubernetes'
size estimator (cel/compilation.go sizeEstimator, library/cost.go). Here the same model is
rebuilt over cel-python's parse tree, with the same constants:

- sizes come from the schema as the server's SchemaDeclType (apiserver pkg/cel/common/
  schemas.go) derives them: a string's size is 4 x maxLength (bytes per rune), else the
  longest enum value, else 3 MiB - 2 (the request limit); a list's is maxItems, else
  (3 MiB - 2) / (minimum serialized item size + 1); a map's maxProperties, else
  (3 MiB - 2) / (minimum serialized value size + 6); int-or-string like a string;
  formats byte, duration, date and date-time as the server sizes them; a scalar or object
  reached through the schema has size 0 (its type's MaxElements), one computed has 1;
- costs: 1 per identifier and field select, 0 per literal, 10 per list and 30 per map
  literal, 0 for has() (Kubernetes turns cel-go's presence-test cost off), 1 per call
  plus its arguments, and the size-dependent calls as cel-go and Kubernetes price them
  (string traversal 0.1 per byte, regex 0.25 per pattern byte: matches costs
  ceil(0.1 (len+1)) x ceil(0.25 len(pattern)); == costs 0.1 per byte of the smaller side;
  ``in`` on a list its size; ``+`` on strings 0.1 per byte of the result; the Kubernetes
  library's string, list, regex, quantity, URL, IP and format functions by their own
  formulas); a comprehension (all, exists, exists_one, map, filter) costs its range,
  init and result plus range size x (loop condition + step), with the macros expanded
  exactly as cel-go's parser expands them;
- a rule's total is that cost times its cardinality: the product of maxItems /
  maxProperties of the lists and maps above its node, or, when one of them is unbounded,
  3 MiB / (minimum serialized size of the node + 1).

The model is checked against the server's own expectations: the 55 cases of Kubernetes'
TestCostEstimation (apiextensions-apiserver pkg/apiserver/schema/cel/compilation_test.go),
each with and without size limits, are in test_crd_structural.py, and this module gives
exactly the server's cost for every one. Where it cannot know what the server knows it
errs upwards, so that a rule it accepts the server accepts: where cel-go would pick an
overload by a type this module does not infer (an int-or-string operand), it takes the
dearest; a call it does not know is reported as a problem, not guessed. It does not model
the optional-field syntax (``self.?field``), which cel-python's parser does not accept
(such a rule is reported as not parsing), nor cel-go's type checking beyond field names;
``oldSelf`` rules are checked for placement, not evaluated on defaults.
"""

from __future__ import annotations

import codecs
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import celpy
import re2
from lark import Token, Tree

sys.path.insert(0, str(Path(__file__).parent))

from crdcheck import CRDChecker, Problem

# validation.go and apis/cel/config.go
STATIC_ESTIMATED_COST_LIMIT = 10_000_000
STATIC_ESTIMATED_CRD_COST_LIMIT = 100_000_000
MAX_REQUEST_SIZE_BYTES = 3 * 1024 * 1024
_UNKNOWN = 2**64 - 1  # cel-go's unknown size: math.MaxUint64

_OPENAPI_TYPES = {"string", "number", "integer", "boolean", "array", "object"}
_META_FIELDS = {"metadata", "kind", "apiVersion"}
_KNOWN_KEYWORDS = {
    "id", "$schema", "$ref", "description", "type", "format", "title", "default", "maximum",
    "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern",
    "maxItems", "minItems", "uniqueItems", "multipleOf", "enum", "maxProperties", "minProperties",
    "required", "items", "allOf", "oneOf", "anyOf", "not", "properties", "additionalProperties",
    "patternProperties", "dependencies", "additionalItems", "definitions", "externalDocs",
    "example", "nullable", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type", "x-kubernetes-map-type", "x-kubernetes-validations",
}
_RULE_KEYS = {"rule", "message", "messageExpression", "reason", "fieldPath", "optionalOldSelf"}
# validation.go allowedFieldsAtRootSchema, as JSON keys
_ROOT_WITH_STATUS = {
    "description", "type", "format", "title", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems",
    "uniqueItems", "multipleOf", "required", "items", "properties", "externalDocs", "example",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations",
}
_BOOL_KEYWORDS = {
    "exclusiveMaximum", "exclusiveMinimum", "uniqueItems", "nullable",
    "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string",
}
_STRING_KEYWORDS = {"description", "format", "title", "pattern", "id"}
_REASONS = {"FieldValueRequired", "FieldValueForbidden", "FieldValueInvalid", "FieldValueDuplicate"}
_PRINTER_TYPES = {"integer", "number", "string", "boolean", "date"}
_PRINTER_FORMATS = {"int32", "int64", "float", "double", "byte", "date", "date-time", "password"}


@dataclass(frozen=True)
class Finding:
    """One reason the API server would refuse the CRD (or, check "has", a lint's)."""

    check: str  # openapi, root, structural, completeness, default, cel, has, cost, crd
    path: str  # field path as the API server prints it
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.path}: {self.message}"


@dataclass(frozen=True)
class RuleCost:
    """The estimated cost of one rule, as the server weighs it against its limits."""

    path: str  # ....x-kubernetes-validations[i].rule
    rule: str
    cost: int  # one evaluation
    cardinality: int  # how many times it can run in one object

    @property
    def total(self) -> int:
        return min(self.cost * self.cardinality, _UNKNOWN)


def check_crd(crd: dict[str, Any]) -> list[Finding]:
    """Every reason the API server would refuse `crd`, plus the has() lint's findings."""
    findings = _crd_level(crd)
    for i, version in enumerate(crd.get("spec", {}).get("versions") or []):
        path = f"spec.versions[{i}].schema.openAPIV3Schema"
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if not isinstance(schema, dict):
            findings.append(Finding("crd", path, "Required value"))
            continue
        status = (version.get("subresources") or {}).get("status") is not None
        findings += check_schema(schema, path, status_subresource=status)
    return findings


def check_schema(
    schema: dict[str, Any], path: str = "openAPIV3Schema", *, status_subresource: bool = False
) -> list[Finding]:
    """Every finding on one version's openAPIV3Schema."""
    findings = _root_level(schema, path, status_subresource)
    findings += _openapi(schema, path, _Ctx())
    if not _well_formed(schema):
        # the later stages read the tree; the findings above already name what is wrong
        return findings
    findings += _structural(schema, "root", path)
    findings += _completeness(schema, path)
    costs, rule_findings = _rules(schema, path)
    findings += rule_findings
    findings += _cost_findings(costs, path)
    findings += _defaults(schema, path, top=True)
    return findings


def estimate_cost(node: dict[str, Any], rule: str) -> int:
    """The estimated cost of one evaluation of `rule` with `self` bound to `node` (not a
    resource root): what the server's cel.Compile reports as MaxCost."""
    analyzer = _Analyzer("rule", _decl(node))
    return analyzer.run(_parse(rule)).cost


def _well_formed(node: Any) -> bool:
    """Every schema in the tree is a mapping, and every type a string."""
    if not isinstance(node, dict) or not isinstance(node.get("type", ""), str):
        return False
    subs: list[Any] = list((node.get("properties") or {}).values())
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict) or (key == "not" and key in node):
            subs.append(node[key])
    for key in ("allOf", "anyOf", "oneOf"):
        subs += list(node.get(key) or [])
    if isinstance(node.get("items"), list):
        subs += node["items"]
    return all(_well_formed(sub) for sub in subs)


def rule_costs(schema: dict[str, Any], path: str = "openAPIV3Schema") -> list[RuleCost]:
    """The estimated cost of every rule (and messageExpression) of `schema`."""
    costs, _ = _rules(schema, path)
    return costs


# --------------------------------------------------------------------------- CRD level


def _crd_level(crd: dict[str, Any]) -> list[Finding]:
    """A few of ValidateCustomResourceDefinition's checks outside the schemas."""
    found: list[Finding] = []
    spec = crd.get("spec") or {}
    group = spec.get("group") or ""
    names = spec.get("names") or {}
    if "." not in group:
        found.append(Finding("crd", "spec.group", "should be a domain with at least one dot"))
    # singular and listKind are defaulted (apiextensions/v1 defaults.go) before validation
    for key in ("plural", "kind"):
        if not names.get(key):
            found.append(Finding("crd", f"spec.names.{key}", "Required value"))
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        found.append(Finding("crd", "spec.names.listKind", "kind and listKind may not be the same"))
    wanted = f"{names.get('plural')}.{group}"
    if (crd.get("metadata") or {}).get("name") != wanted:
        found.append(
            Finding("crd", "metadata.name", f'must be spec.names.plural+"."+spec.group ({wanted})')
        )
    if spec.get("scope") not in ("Cluster", "Namespaced"):
        found.append(Finding("crd", "spec.scope", "Unsupported value"))
    if spec.get("preserveUnknownFields") is True:
        found.append(
            Finding(
                "crd",
                "spec.preserveUnknownFields",
                "cannot set to true, set x-kubernetes-preserve-unknown-fields instead",
            )
        )
    versions = spec.get("versions") or []
    if not versions:
        found.append(
            Finding(
                "crd", "spec.versions", "must have exactly one version marked as storage version"
            )
        )
    if sum(1 for v in versions if v.get("storage")) != 1:
        found.append(
            Finding(
                "crd", "spec.versions", "must have exactly one version marked as storage version"
            )
        )
    if len({v.get("name") for v in versions}) != len(versions):
        found.append(Finding("crd", "spec.versions", "must contain unique version names"))
    for i, version in enumerate(versions):
        for j, col in enumerate(version.get("additionalPrinterColumns") or []):
            cpath = f"spec.versions[{i}].additionalPrinterColumns[{j}]"
            if not col.get("name"):
                found.append(Finding("crd", f"{cpath}.name", "Required value"))
            if col.get("type") not in _PRINTER_TYPES:
                found.append(
                    Finding("crd", f"{cpath}.type", f"must be one of {sorted(_PRINTER_TYPES)}")
                )
            if col.get("format") and col["format"] not in _PRINTER_FORMATS:
                found.append(
                    Finding("crd", f"{cpath}.format", f"must be one of {sorted(_PRINTER_FORMATS)}")
                )
            if not col.get("jsonPath"):
                found.append(Finding("crd", f"{cpath}.JSONPath", "Required value"))
    return found


def _root_level(schema: dict[str, Any], path: str, status: bool) -> list[Finding]:
    """validateCustomResourceDefinitionValidation's checks of the root node."""
    found: list[Finding] = []
    if status:
        if schema.get("type", "") not in ("", "object"):
            found.append(
                Finding(
                    "root",
                    f"{path}.type",
                    'only "object" is allowed as the type at the root of the '
                    "schema if the status subresource is enabled",
                )
            )
        extra = sorted(
            k for k, v in schema.items() if k not in _ROOT_WITH_STATUS and not _is_zero(k, v)
        )
        if extra:
            found.append(
                Finding(
                    "root",
                    path,
                    f"only {sorted(_ROOT_WITH_STATUS)} are allowed at the root of "
                    f"the schema if the status subresource is enabled, not {extra}",
                )
            )
    if schema.get("nullable"):
        found.append(Finding("root", f"{path}.nullable", "nullable cannot be true at the root"))
    return found


def _is_zero(key: str, value: Any) -> bool:
    """Whether `value` is the Go zero value of keyword `key` (so the server sees it unset)."""
    if key in _BOOL_KEYWORDS:
        return value is False
    if key in _STRING_KEYWORDS:
        return bool(value == "")
    return value is None


# --------------------------------------------------------------------------- OpenAPI


@dataclass(frozen=True)
class _Ctx:
    """The state ValidateCustomResourceDefinitionOpenAPISchema carries down the tree."""

    is_root: bool = True
    inside_meta: bool = False
    no_defaults: str = ""  # why defaults are forbidden here ("" = allowed)
    uncorrelatable: str = ""  # path of the ancestor that makes oldSelf unusable

    def child(self, **changes: Any) -> _Ctx:
        values = {**self.__dict__, "is_root": False, **changes}
        return _Ctx(**values)


def _openapi(node: Any, path: str, ctx: _Ctx) -> list[Finding]:
    """ValidateCustomResourceDefinitionOpenAPISchema with specStandardValidatorV3.validate."""
    if not isinstance(node, dict):
        return [Finding("openapi", path, "must be a schema object")]
    found: list[Finding] = []
    add = found.append
    for key in sorted(set(node) - _KNOWN_KEYWORDS):
        add(Finding("openapi", f"{path}.{key}", "unknown field"))
    kind = node.get("type", "")
    if not isinstance(kind, str):
        add(Finding("openapi", f"{path}.type", "must be a string"))
        kind = ""
    if kind == "null":
        add(
            Finding(
                "openapi",
                f"{path}.type",
                "type cannot be set to null, use nullable as an alternative",
            )
        )
    elif kind and kind not in _OPENAPI_TYPES:
        add(
            Finding(
                "openapi",
                f"{path}.type",
                f"Unsupported value: {kind!r}: supported values: {sorted(_OPENAPI_TYPES)}",
            )
        )
    if "default" in node and ctx.no_defaults:
        add(Finding("openapi", f"{path}.default", f"must not be set {ctx.no_defaults}"))
    for key in (
        "id",
        "$schema",
        "additionalItems",
        "patternProperties",
        "definitions",
        "dependencies",
        "$ref",
    ):
        if key in node and not _is_zero(key, node[key]):
            add(Finding("openapi", f"{path}.{key}", f"{key} is not supported"))
    if isinstance(node.get("items"), list):
        add(Finding("openapi", f"{path}.items", "items must be a schema object and not an array"))
    if ctx.inside_meta and node.get("x-kubernetes-embedded-resource"):
        add(
            Finding(
                "openapi",
                f"{path}.x-kubernetes-embedded-resource",
                "must not be used inside of resource meta",
            )
        )
    if node.get("uniqueItems"):
        add(
            Finding(
                "openapi",
                f"{path}.uniqueItems",
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            )
        )
    extra = node.get("additionalProperties")
    props = node.get("properties") or {}
    if extra is not None:
        if props and (extra is False or isinstance(extra, dict)):
            add(
                Finding(
                    "openapi",
                    f"{path}.additionalProperties",
                    "additionalProperties and properties are mutual exclusive",
                )
            )
        if isinstance(extra, dict):
            sub = ctx.child(
                no_defaults="inside additionalProperties applying to object metadata"
                if ctx.inside_meta
                else ctx.no_defaults
            )
            found += _openapi(extra, f"{path}.additionalProperties", sub)
    for name, prop in props.items():
        sub = ctx.child()
        if node.get("x-kubernetes-map-type") == "atomic" and not ctx.uncorrelatable:
            sub = sub.child(uncorrelatable=path)
        if (ctx.is_root or node.get("x-kubernetes-embedded-resource")) and name in _META_FIELDS:
            sub = sub.child(inside_meta=True)
            if ctx.is_root:
                sub = sub.child(no_defaults=f"in top-level {name}")
        found += _openapi(prop, f"{path}.properties[{name}]", sub)
    if "not" in node:
        found += _openapi(node["not"], f"{path}.not", ctx.child())
    for key in ("allOf", "oneOf", "anyOf"):
        for i, sub_node in enumerate(node.get(key) or []):
            found += _openapi(sub_node, f"{path}.{key}[{i}]", ctx.child())
    if isinstance(node.get("items"), dict):
        sub = ctx.child()
        if node.get("x-kubernetes-list-type") != "map" and not ctx.uncorrelatable:
            sub = sub.child(uncorrelatable=path)
        found += _openapi(node["items"], f"{path}.items", sub)
    found += _extensions(node, path)
    found += _validation_entries(node, path, ctx)
    return found


def _extensions(node: dict[str, Any], path: str) -> list[Finding]:
    """The x-kubernetes-* checks of ValidateCustomResourceDefinitionOpenAPISchema."""
    found: list[Finding] = []
    add = found.append
    kind = node.get("type", "")
    if node.get("x-kubernetes-preserve-unknown-fields") is False:
        add(
            Finding(
                "openapi",
                f"{path}.x-kubernetes-preserve-unknown-fields",
                "must be true or undefined",
            )
        )
    map_type = node.get("x-kubernetes-map-type")
    if map_type is not None:
        if kind != "object":
            add(
                Finding(
                    "openapi",
                    f"{path}.type",
                    "must be object if x-kubernetes-map-type is specified",
                )
            )
        if map_type not in ("atomic", "granular"):
            add(
                Finding(
                    "openapi",
                    f"{path}.x-kubernetes-map-type",
                    "Unsupported value: supported values: atomic, granular",
                )
            )
    list_type = node.get("x-kubernetes-list-type")
    items = node.get("items") if isinstance(node.get("items"), dict) else None
    if list_type is not None and kind != "array":
        add(
            Finding(
                "openapi", f"{path}.type", "must be array if x-kubernetes-list-type is specified"
            )
        )
    elif list_type == "set" and items is not None:
        if (
            items.get("type") == "array"
            and items.get("x-kubernetes-list-type", "atomic") != "atomic"
        ):
            add(
                Finding(
                    "openapi",
                    f"{path}.items.x-kubernetes-list-type",
                    "must be atomic as item of a list with x-kubernetes-list-type=set",
                )
            )
        if items.get("type") == "object" and items.get("x-kubernetes-map-type") != "atomic":
            add(
                Finding(
                    "openapi",
                    f"{path}.items.x-kubernetes-map-type",
                    "must be atomic as item of a list with x-kubernetes-list-type=set",
                )
            )
    if list_type is not None and list_type not in ("atomic", "set", "map"):
        add(
            Finding(
                "openapi",
                f"{path}.x-kubernetes-list-type",
                "Unsupported value: supported values: atomic, set, map",
            )
        )
    keys = node.get("x-kubernetes-list-map-keys") or []
    if keys and list_type != "map":
        add(
            Finding(
                "openapi",
                f"{path}.x-kubernetes-list-type",
                "must be map if x-kubernetes-list-map-keys is non-empty",
            )
        )
    if list_type == "map":
        if not keys:
            add(
                Finding(
                    "openapi",
                    f"{path}.x-kubernetes-list-map-keys",
                    "must not be empty if x-kubernetes-list-type is map",
                )
            )
        if "items" not in node:
            add(
                Finding(
                    "openapi",
                    f"{path}.items",
                    "must have a schema if x-kubernetes-list-type is map",
                )
            )
        elif items is None:
            add(
                Finding(
                    "openapi",
                    f"{path}.items",
                    "must only have a single schema if x-kubernetes-list-type is map",
                )
            )
        elif items.get("type") != "object":
            add(
                Finding(
                    "openapi",
                    f"{path}.items.type",
                    "must be object if parent array's x-kubernetes-list-type is map",
                )
            )
        else:
            item_props = items.get("properties") or {}
            seen: set[str] = set()
            for key in keys:
                if key not in item_props:
                    add(
                        Finding(
                            "openapi",
                            f"{path}.x-kubernetes-list-map-keys",
                            "entries must all be names of item properties",
                        )
                    )
                elif item_props[key].get("type") in ("array", "object"):
                    add(
                        Finding(
                            "openapi",
                            f"{path}.items.properties[{key}].type",
                            "must be a scalar type if parent array's x-kubernetes-list-type is map",
                        )
                    )
                if key in seen:
                    add(
                        Finding(
                            "openapi",
                            f"{path}.x-kubernetes-list-map-keys",
                            "must not contain duplicate entries",
                        )
                    )
                seen.add(key)
    # validateMapListKeysMapSet
    if list_type in ("set", "map") and items is not None:
        if items.get("nullable"):
            add(
                Finding(
                    "openapi",
                    f"{path}.items.nullable",
                    f"cannot be nullable when x-kubernetes-list-type is {list_type}",
                )
            )
        if list_type == "map":
            required = set(items.get("required") or [])
            for key in keys:
                prop = (items.get("properties") or {}).get(key)
                if prop is None:
                    continue
                if key not in required and prop.get("default") is None:
                    add(
                        Finding(
                            "openapi",
                            f"{path}.items.properties[{key}].default",
                            "this property is in x-kubernetes-list-map-keys, so it must have "
                            "a default or be a required property",
                        )
                    )
                if prop.get("nullable"):
                    add(
                        Finding(
                            "openapi",
                            f"{path}.items.properties[{key}].nullable",
                            "this property is in x-kubernetes-list-map-keys, so it cannot be "
                            "nullable",
                        )
                    )
    return found


def _validation_entries(node: dict[str, Any], path: str, ctx: _Ctx) -> list[Finding]:
    """The checks of each x-kubernetes-validations entry that need no compiler."""
    found: list[Finding] = []
    add = found.append
    for i, entry in enumerate(node.get("x-kubernetes-validations") or []):
        epath = f"{path}.x-kubernetes-validations[{i}]"
        if not isinstance(entry, dict):
            add(Finding("openapi", epath, "must be an object"))
            continue
        for key in sorted(set(entry) - _RULE_KEYS):
            add(Finding("openapi", f"{epath}.{key}", "unknown field"))
        rule = str(entry.get("rule") or "")
        message = entry.get("message")
        trimmed = (message or "").strip()
        if not rule.strip():
            add(Finding("openapi", f"{epath}.rule", "rule is not specified"))
        elif message is not None and message != "" and not trimmed:
            add(Finding("openapi", f"{epath}.message", "must be non-empty if specified"))
        elif "\n" in trimmed or "\r" in trimmed:
            add(Finding("openapi", f"{epath}.message", "must not contain line breaks"))
        elif ("\n" in rule.strip() or "\r" in rule.strip()) and not trimmed:
            add(
                Finding(
                    "openapi",
                    f"{epath}.message",
                    "message must be specified if rule contains line breaks",
                )
            )
        expr = entry.get("messageExpression")
        if expr is not None and expr != "" and not str(expr).strip():
            add(
                Finding(
                    "openapi",
                    f"{epath}.messageExpression",
                    "messageExpression must be non-empty if specified",
                )
            )
        if entry.get("reason") is not None and entry["reason"] not in _REASONS:
            add(
                Finding(
                    "openapi",
                    f"{epath}.reason",
                    f"Unsupported value: supported values: {sorted(_REASONS)}",
                )
            )
        field_path = entry.get("fieldPath")
        if field_path is not None and field_path != "":
            if not str(field_path).strip():
                add(Finding("openapi", f"{epath}.fieldPath", "must be non-empty if specified"))
            elif "\n" in field_path or "\r" in field_path:
                add(Finding("openapi", f"{epath}.fieldPath", "must not contain line breaks"))
            elif not _field_path_valid(node, field_path):
                add(Finding("openapi", f"{epath}.fieldPath", "must be a valid path"))
        uses_old_self = _uses_old_self(rule)
        if uses_old_self and ctx.uncorrelatable:
            add(
                Finding(
                    "cel",
                    f"{epath}.rule",
                    "oldSelf cannot be used on the uncorrelatable portion of the schema "
                    f"within {ctx.uncorrelatable}",
                )
            )
        if not uses_old_self and entry.get("optionalOldSelf") is not None:
            add(
                Finding(
                    "cel",
                    f"{epath}.optionalOldSelf",
                    "may not be set if oldSelf is not used in rule",
                )
            )
    return found


def _uses_old_self(rule: str) -> bool:
    try:
        tree = celpy.Environment().compile(rule)
    except Exception:
        return False
    return any(
        isinstance(t, Token) and t.type == "IDENT" and str(t) == "oldSelf"
        for t in tree.scan_values(lambda v: isinstance(v, Token))
    )


def _field_path_valid(node: dict[str, Any], path: str) -> bool:
    """cel.ValidFieldPath: .name selects a property, ['key'] a property or a map key."""
    current: dict[str, Any] | None = node
    i = 0
    while i < len(path):
        if current is None:
            return False
        if path[i] == ".":
            j = i + 1
            while j < len(path) and path[j] not in ".[":
                j += 1
            name = path[i + 1 : j]
            current = (current.get("properties") or {}).get(name)
            i = j
        elif path.startswith("['", i):
            end = path.find("']", i + 2)
            if end < 0:
                return False
            name = path[i + 2 : end]
            props = current.get("properties") or {}
            extra = current.get("additionalProperties")
            current = (
                props.get(name) if name in props else (extra if isinstance(extra, dict) else None)
            )
            i = end + 2
        else:
            return False
    return current is not None


# --------------------------------------------------------------------------- structural


_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def _structural(node: Any, level: str, path: str) -> list[Finding]:
    """validateStructuralInvariants of pkg/apiserver/schema/validation.go."""
    if not isinstance(node, dict):
        return []
    found: list[Finding] = []
    add = found.append
    kind = node.get("type", "")
    items = node.get("items")
    if kind == "array" and items is None:
        add(Finding("structural", f"{path}.items", "Required value: must be specified"))
    if isinstance(items, dict):
        found += _structural(items, "item", f"{path}.items")
    for name, prop in (node.get("properties") or {}).items():
        found += _structural(prop, "field", f"{path}.properties[{name}]")
    extra = node.get("additionalProperties")
    if extra is not None:
        if level == "root":
            add(
                Finding(
                    "structural",
                    f"{path}.additionalProperties",
                    "Forbidden: must not be used at the root",
                )
            )
        if isinstance(extra, dict):
            found += _structural(extra, "field", f"{path}.additionalProperties")
    int_or_string = bool(node.get("x-kubernetes-int-or-string"))
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    embedded = bool(node.get("x-kubernetes-embedded-resource"))
    if int_or_string and preserve:
        add(
            Finding(
                "structural",
                f"{path}.x-kubernetes-preserve-unknown-fields",
                "must be false if x-kubernetes-int-or-string is true",
            )
        )
    if int_or_string and embedded:
        add(
            Finding(
                "structural",
                f"{path}.x-kubernetes-embedded-resource",
                "must be false if x-kubernetes-int-or-string is true",
            )
        )
    any_of = node.get("anyOf") or []
    all_of = node.get("allOf") or []
    skip_any_of = any_of == _INT_OR_STRING
    skip_first = (
        bool(all_of) and isinstance(all_of[0], dict) and all_of[0].get("anyOf") == _INT_OR_STRING
    )
    found += _value_validation(node, skip_any_of, skip_first, path)
    if embedded and kind != "object":
        add(
            Finding(
                "structural",
                f"{path}.type",
                "must be object if x-kubernetes-embedded-resource is true",
            )
        )
    elif not kind and not int_or_string and not preserve:
        what = {
            "root": "at the root",
            "item": "for specified array items",
            "field": "for specified object fields",
        }[level]
        add(Finding("structural", f"{path}.type", f"Required value: must not be empty {what}"))
    if embedded and extra is not None:
        add(
            Finding(
                "structural",
                f"{path}.additionalProperties",
                "must not be used if x-kubernetes-embedded-resource is set",
            )
        )
    if level == "root" and kind and kind != "object":
        add(Finding("structural", f"{path}.type", "must be object at the root"))
    props = node.get("properties") or {}
    check_meta = level == "root" or embedded
    for name in ("kind", "apiVersion"):
        if name in props and check_meta and props[name].get("type", "") != "string":
            add(Finding("structural", f"{path}.properties[{name}].type", "must be string"))
    if "metadata" in props:
        found += _metadata(
            props["metadata"], check_meta, level == "root", f"{path}.properties[metadata]"
        )
    if embedded and not preserve and not props:
        add(
            Finding(
                "structural",
                f"{path}.properties",
                "must not be empty if x-kubernetes-embedded-resource is true without "
                "x-kubernetes-preserve-unknown-fields",
            )
        )
    return found


def _metadata(meta: Any, check_meta: bool, root: bool, path: str) -> list[Finding]:
    """validateStructuralMetadataInvariants: the root metadata restricts name/generateName only."""
    if not isinstance(meta, dict):
        return []
    found: list[Finding] = []
    if check_meta and meta.get("type", "") != "object":
        found.append(Finding("structural", f"{path}.type", "must be object"))
    if root:
        props = set(meta.get("properties") or {})
        leftover = sorted(
            k
            for k, v in meta.items()
            if k not in ("type", "default", "properties") and not _is_zero(k, v)
        )
        if props and props not in ({"name"}, {"generateName"}, {"name", "generateName"}):
            leftover.append(f"properties {sorted(props)}")
        if leftover:
            found.append(
                Finding(
                    "structural",
                    path,
                    "Forbidden: must not specify anything other than name and "
                    "generateName, but metadata is implicitly specified "
                    f"(found {', '.join(leftover)})",
                )
            )
    return found


def _value_validation(
    node: dict[str, Any], skip_any_of: bool, skip_first: bool, path: str
) -> list[Finding]:
    """validateValueValidation: the junctors hold value validations only; patterns compile."""
    found: list[Finding] = []
    if not skip_any_of:
        for i, sub in enumerate(node.get("anyOf") or []):
            found += _nested(sub, False, f"{path}.anyOf[{i}]")
    for i, sub in enumerate(node.get("allOf") or []):
        found += _nested(sub, skip_first and i == 0, f"{path}.allOf[{i}]")
    for i, sub in enumerate(node.get("oneOf") or []):
        found += _nested(sub, False, f"{path}.oneOf[{i}]")
    if "not" in node:
        found += _nested(node["not"], False, f"{path}.not")
    pattern = node.get("pattern")
    if pattern:
        options = re2.Options()
        options.log_errors = False
        try:
            re2.compile(pattern, options)
        except Exception as error:
            reason = error.args[0].decode() if error.args and isinstance(error.args[0], bytes) \
                else str(error)
            found.append(
                Finding(
                    "structural",
                    f"{path}.pattern",
                    f"must be a valid regular expression, but isn't: {reason}",
                )
            )
    return found


def _nested(node: Any, skip_any_of: bool, path: str) -> list[Finding]:
    """validateNestedValueValidation: what a value validation under a junctor may not hold."""
    if not isinstance(node, dict):
        return []
    found = _value_validation(node, skip_any_of, False, path)
    add = found.append
    if isinstance(node.get("items"), dict):
        found += _nested(node["items"], False, f"{path}.items")
    for name, prop in (node.get("properties") or {}).items():
        found += _nested(prop, False, f"{path}.properties[{name}]")
    forbidden = [
        ("type", bool(node.get("type")), "must be empty to be structural"),
        (
            "additionalProperties",
            isinstance(node.get("additionalProperties"), dict)
            or node.get("additionalProperties") is True,
            "must be undefined to be structural",
        ),
        ("default", node.get("default") is not None, "must be undefined to be structural"),
        ("title", bool(node.get("title")), "must be empty to be structural"),
        ("description", bool(node.get("description")), "must be empty to be structural"),
        ("nullable", bool(node.get("nullable")), "must be false to be structural"),
        (
            "x-kubernetes-preserve-unknown-fields",
            bool(node.get("x-kubernetes-preserve-unknown-fields")),
            "must be false to be structural",
        ),
        (
            "x-kubernetes-embedded-resource",
            bool(node.get("x-kubernetes-embedded-resource")),
            "must be false to be structural",
        ),
        (
            "x-kubernetes-int-or-string",
            bool(node.get("x-kubernetes-int-or-string")),
            "must be false to be structural",
        ),
        (
            "x-kubernetes-list-map-keys",
            bool(node.get("x-kubernetes-list-map-keys")),
            "must be empty to be structural",
        ),
        (
            "x-kubernetes-list-type",
            node.get("x-kubernetes-list-type") is not None,
            "must be undefined to be structural",
        ),
        (
            "x-kubernetes-map-type",
            node.get("x-kubernetes-map-type") is not None,
            "must be undefined to be structural",
        ),
        (
            "x-kubernetes-validations",
            bool(node.get("x-kubernetes-validations")),
            "must be empty to be structural",
        ),
    ]
    for key, present, message in forbidden:
        if present:
            add(Finding("structural", f"{path}.{key}", f"Forbidden: {message}"))
    if "metadata" in (node.get("properties") or {}):
        add(
            Finding(
                "structural",
                f"{path}.properties[metadata]",
                "Forbidden: must not be specified in a nested context",
            )
        )
    return found


def _completeness(root: dict[str, Any], path: str) -> list[Finding]:
    """validateStructuralCompleteness: run, as the server runs it, on the root's junctors."""
    found: list[Finding] = []
    for key in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(root.get(key) or []):
            found += _complete(sub, root, path, f"{path}.{key}[{i}]")
    if "not" in root:
        found += _complete(root["not"], root, path, f"{path}.not")
    return found


def _complete(v: Any, s: dict[str, Any] | None, spath: str, vpath: str) -> list[Finding]:
    if not isinstance(v, dict):
        return []
    if s is None:
        return [Finding("completeness", spath, f"Required value: because it is defined in {vpath}")]
    found: list[Finding] = []
    for key in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(v.get(key) or []):
            found += _complete(sub, s, spath, f"{vpath}.{key}[{i}]")
    if "not" in v:
        found += _complete(v["not"], s, spath, f"{vpath}.not")
    if isinstance(v.get("items"), dict):
        items = s.get("items") if isinstance(s.get("items"), dict) else None
        found += _complete(v["items"], items, f"{spath}.items", f"{vpath}.items")
    for name, sub in (v.get("properties") or {}).items():
        target = (s.get("properties") or {}).get(name)
        if target is None:
            found.append(
                Finding(
                    "completeness",
                    f"{spath}.properties[{name}]",
                    f"Required value: because it is defined in {vpath}.properties[{name}]",
                )
            )
        else:
            found += _complete(
                sub, target, f"{spath}.properties[{name}]", f"{vpath}.properties[{name}]"
            )
    return found


# --------------------------------------------------------------------------- defaults


def _defaults(node: Any, path: str, top: bool = False) -> list[Finding]:
    """ValidateDefaults: each default pruned, valid for its node, and passing its rules."""
    if not isinstance(node, dict):
        return []
    found: list[Finding] = []
    if node.get("default") is not None:
        found += _check_default(node, f"{path}.default")
    for name, prop in (node.get("properties") or {}).items():
        if top and name in _META_FIELDS:
            continue  # defaults there are refused by the openapi check
        found += _defaults(prop, f"{path}.properties[{name}]")
    if isinstance(node.get("items"), dict):
        found += _defaults(node["items"], f"{path}.items")
    if isinstance(node.get("additionalProperties"), dict):
        found += _defaults(node["additionalProperties"], f"{path}.additionalProperties")
    return found


def _check_default(node: dict[str, Any], path: str) -> list[Finding]:
    value = node["default"]
    unknown = list(_unknown_fields(node, value, ""))
    found = [Finding("default", _at(path, p), "must not have unknown fields") for p in unknown]
    try:
        checker = CRDChecker.from_schema(node)
        problems = checker.check_as_is(value)
    except Exception as error:  # a rule cel-python cannot run, a pattern re cannot compile
        return [*found, Finding("default", path, f"could not be checked: {error}")]
    problems = [p for p in problems if p.message != "unknown field"]
    schema_problems = [p for p in problems if p.rule is None]
    # The server runs the CEL rules only on a default the OpenAPI schema accepts.
    for problem in schema_problems or problems:
        found.append(Finding("default", _at(path, problem.path), _default_message(problem)))
    return found


_NO_SUCH_KEY = re.compile(r"no such member in mapping: \\?'([^'\\]*)")


def _default_message(problem: Problem) -> str:
    rule = problem.rule
    if rule is None:
        return f"Invalid value: {problem.message}"
    missing = _NO_SUCH_KEY.search(problem.message)
    if missing:
        text = f"rule {rule.rule!r} fails: no such key: {missing.group(1)}"
    elif problem.message.startswith("rule "):
        text = problem.message
    else:
        text = f"failed rule {rule.rule!r}: {problem.message or 'false'}"
    where = f"the rule at {rule.path.replace('[]', '[*]')!r} below this node" if rule.path \
        else "the rule of this node"
    return (
        f"Invalid value: {text} ({where}, evaluated on the default as given: "
        f"nested defaults are not applied to it)"
    )


def _at(path: str, inner: str) -> str:
    if not inner:
        return path
    return f"{path}{inner}" if inner.startswith("[") else f"{path}.{inner}"


def _unknown_fields(node: dict[str, Any], value: Any, vpath: str) -> Iterator[str]:
    """Paths pruning would remove from `value` (pruning/algorithm.go, no embedded meta)."""
    if isinstance(value, dict):
        if (
            node.get("x-kubernetes-preserve-unknown-fields")
            and not node.get("properties")
            and not isinstance(node.get("additionalProperties"), dict)
        ):
            return
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        for key, child in value.items():
            sub = props.get(key)
            if sub is None and isinstance(extra, dict):
                sub = extra
            child_path = f"{vpath}.{key}" if vpath else key
            if sub is None:
                if not node.get("x-kubernetes-preserve-unknown-fields") and extra is not True:
                    yield child_path
                continue
            yield from _unknown_fields(sub, child, child_path)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, child in enumerate(value):
            yield from _unknown_fields(node["items"], child, f"{vpath}[{i}]")


# --------------------------------------------------------------------------- CEL types


@dataclass
class _Decl:
    """What the server's SchemaDeclType makes of a schema node, as far as cost needs."""

    kind: str  # object, map, list, string, bytes, int, double, bool, dyn, duration, timestamp
    min_size: int
    max_elements: int = 0
    fields: dict[str, _Decl] = field(default_factory=dict)  # escaped CEL names
    present: set[str] = field(default_factory=set)  # required or defaulted (escaped)
    elem: _Decl | None = None


_RESERVED = {
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function",
    "if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while",
}


def _escape(name: str) -> str | None:
    """apiserver cel.Escape: the CEL name of a property, None when it has none."""
    if name in _RESERVED:
        return f"__{name}__"
    if not name or not (name[0].isalpha() or name[0] == "_") or not name.isascii():
        return None
    if any(not (c.isalnum() or c in "_.-/") for c in name):
        return None
    out = name.replace("__", "__underscores__")
    return out.replace(".", "__dot__").replace("-", "__dash__").replace("/", "__slash__")


def _string_decl(node: dict[str, Any]) -> _Decl:
    fmt = node.get("format", "")
    if fmt == "byte":
        size = node["maxLength"] if "maxLength" in node else MAX_REQUEST_SIZE_BYTES - 2
        return _Decl("bytes", 2, max(size, 0))
    if fmt == "duration":
        return _Decl("duration", 3, 32)
    if fmt == "date":
        return _Decl("timestamp", 12, 12)
    if fmt == "date-time":
        return _Decl("timestamp", 21, 32)
    if "maxLength" in node:
        return _Decl("string", 2, max(node["maxLength"], 0) * 4)
    if node.get("enum"):
        longest = max((len(e.encode()) for e in node["enum"] if isinstance(e, str)), default=0)
        return _Decl("string", 2, longest)
    return _Decl("string", 2, MAX_REQUEST_SIZE_BYTES - 2)


def _decl(node: dict[str, Any], resource_root: bool = False) -> _Decl | None:
    """SchemaDeclType (apiserver pkg/cel/common/schemas.go) with the sizes cost needs."""
    if node.get("x-kubernetes-int-or-string"):
        size = node["maxLength"] * 4 if "maxLength" in node else MAX_REQUEST_SIZE_BYTES - 2
        return _Decl("dyn", 1, size)
    kind = node.get("type", "")
    if kind == "array":
        items = node.get("items")
        if not isinstance(items, dict):
            return None
        elem = _decl(items, bool(items.get("x-kubernetes-embedded-resource")))
        if elem is None:
            return None
        count = (
            node["maxItems"]
            if "maxItems" in node
            else (MAX_REQUEST_SIZE_BYTES - 2) // (elem.min_size + 1)
        )
        return _Decl("list", 2, max(count, 0), elem=elem)
    if kind == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            elem = _decl(extra, bool(extra.get("x-kubernetes-embedded-resource")))
            if elem is None:
                return None
            count = (
                node["maxProperties"]
                if "maxProperties" in node
                else (MAX_REQUEST_SIZE_BYTES - 2) // (elem.min_size + 6)
            )
            return _Decl("map", 2, max(count, 0), elem=elem)
        props = dict(node.get("properties") or {})
        required = set(node.get("required") or [])
        decl = _Decl("object", 2, 0)
        for name, prop in props.items():
            sub = _decl(prop, bool(prop.get("x-kubernetes-embedded-resource")))
            escaped = _escape(name)
            if sub is None:
                continue
            if escaped is not None:
                decl.fields[escaped] = sub
                if name in required or prop.get("default") is not None:
                    decl.present.add(escaped)
            if name in required and prop.get("default") is None:
                decl.min_size += len(name) + sub.min_size + 4
        if resource_root:
            _with_type_and_object_meta(decl, props)
        return decl
    if kind == "string":
        return _string_decl(node)
    if kind == "boolean":
        return _Decl("bool", 4)
    if kind == "number":
        return _Decl("double", 1)
    if kind == "integer":
        return _Decl("int", 1)
    return None


def _with_type_and_object_meta(decl: _Decl, props: dict[str, Any]) -> None:
    """model.WithTypeAndObjectMeta: kind, apiVersion and metadata.name/generateName exist."""
    meta_props = (props.get("metadata") or {}).get("properties") or {}
    name_len = min(meta_props.get("name", {}).get("maxLength", 253), 253)
    gen_len = min(meta_props.get("generateName", {}).get("maxLength", 252), 252)
    meta = _Decl(
        "object",
        2,
        0,
        fields={
            "name": _Decl("string", 2, name_len * 4),
            "generateName": _Decl("string", 2, gen_len * 4),
        },
        present={"name"},
    )
    decl.fields["kind"] = _Decl("string", 2, MAX_REQUEST_SIZE_BYTES - 2)
    decl.fields["apiVersion"] = _Decl("string", 2, MAX_REQUEST_SIZE_BYTES - 2)
    decl.fields["metadata"] = meta
    decl.present |= {"kind", "apiVersion", "metadata"}


# --------------------------------------------------------------------------- CEL syntax


@dataclass
class _Expr:
    """A CEL expression as cel-go's checker sees it, built from cel-python's parse tree."""

    op: str  # lit, ident, select, has, call, list, map, comp
    name: str = ""  # ident name, selected field, function, macro
    args: list[_Expr] = field(default_factory=list)
    target: _Expr | None = None  # receiver of a member call, operand of a select/has
    value: Any = None  # literal value
    kind: str = ""  # literal kind
    var: str = ""  # comprehension variable


class _Unsupported(Exception):
    pass


_BINARY = {
    "relation_lt": "_<_",
    "relation_le": "_<=_",
    "relation_gt": "_>_",
    "relation_ge": "_>=_",
    "relation_eq": "_==_",
    "relation_ne": "_!=_",
    "relation_in": "@in",
    "addition_add": "_+_",
    "addition_sub": "_-_",
    "multiplication_mul": "_*_",
    "multiplication_div": "_/_",
    "multiplication_mod": "_%_",
}
_MACROS = {"all", "exists", "exists_one", "map", "filter"}


def _parse(rule: str) -> _Expr:
    return _ast(celpy.Environment().compile(rule))


def _ast(tree: Any) -> _Expr:
    if not isinstance(tree, Tree):
        raise _Unsupported(f"unexpected token {tree!r}")
    data = tree.data
    ch = [c for c in tree.children if c is not None]
    if (
        data
        in (
            "expr",
            "conditionalor",
            "conditionaland",
            "relation",
            "addition",
            "multiplication",
            "unary",
            "member",
            "primary",
        )
        and len(ch) == 1
    ):
        return _ast(ch[0])
    if data == "expr":
        return _Expr("call", "_?_:_", [_ast(c) for c in ch])
    if data == "conditionalor":
        return _Expr("call", "_||_", [_ast(ch[0]), _ast(ch[1])])
    if data == "conditionaland":
        return _Expr("call", "_&&_", [_ast(ch[0]), _ast(ch[1])])
    if data in ("relation", "addition", "multiplication"):
        operator, rhs = ch
        return _Expr("call", _BINARY[operator.data], [_ast(operator.children[0]), _ast(rhs)])
    if data == "unary":
        operand = _ast(ch[1])
        if ch[0].data == "unary_neg" and operand.op == "lit" and operand.kind in ("int", "double"):
            # cel-go's parser folds a negated number into one literal
            return _Expr("lit", value=-operand.value, kind=operand.kind)
        return _Expr("call", "!_" if ch[0].data == "unary_not" else "-_", [operand])
    if data == "member_dot":
        return _Expr("select", str(ch[1]), target=_ast(ch[0]))
    if data == "member_dot_arg":
        target = _ast(ch[0])
        args = _exprlist(ch[2]) if len(ch) > 2 else []
        name = str(ch[1])
        if name in _MACROS and len(args) in (2, 3) and args[0].op == "ident":
            return _Expr("comp", name, args[1:], target=target, var=args[0].name)
        return _Expr("call", name, args, target=target)
    if data == "member_index":
        return _Expr("call", "_[_]", [_ast(ch[0]), _ast(ch[1])])
    if data == "ident_arg":
        name = str(ch[0])
        args = _exprlist(ch[1]) if len(ch) > 1 else []
        if name == "has":
            if len(args) != 1 or args[0].op != "select":
                raise _Unsupported("invalid argument to has() macro")
            return _Expr("has", args[0].name, target=args[0].target)
        return _Expr("call", name, args)
    if data == "ident":
        return _Expr("ident", str(ch[0]))
    if data == "paren_expr":
        return _ast(ch[0])
    if data == "list_lit":
        return _Expr("list", args=_exprlist(ch[0]) if ch else [])
    if data == "map_lit":
        pairs = [_ast(c) for c in ch[0].children] if ch else []
        return _Expr("map", args=pairs)
    if data == "literal" and isinstance(ch[0], Token):
        return _literal(ch[0])
    raise _Unsupported(f"{data} is not supported here")


def _exprlist(tree: Any) -> list[_Expr]:
    return [_ast(c) for c in tree.children if c is not None]


def _literal(token: Token) -> _Expr:
    text = str(token)
    kind = token.type
    if kind in ("STRING_LIT", "MLSTRING_LIT", "BYTES_LIT"):
        raw = text
        is_bytes = kind == "BYTES_LIT"
        if is_bytes:
            raw = raw[1:]
        is_raw = raw[:1] in "rR"
        if is_raw:
            raw = raw[1:]
        quote = 3 if raw[:3] in ('"""', "'''") else 1
        body = raw[quote:-quote]
        if not is_raw:
            body = codecs.decode(body.encode("latin-1", "backslashreplace"), "unicode_escape")
        return _Expr("lit", value=body, kind="bytes" if is_bytes else "string")
    if kind == "BOOL_LIT":
        return _Expr("lit", value=text == "true", kind="bool")
    if kind == "NULL_LIT":
        return _Expr("lit", value=None, kind="null")
    if kind == "FLOAT_LIT":
        return _Expr("lit", value=float(text), kind="double")
    if kind == "UINT_LIT":
        return _Expr("lit", value=int(text[:-1], 0), kind="uint")
    return _Expr("lit", value=int(text, 0), kind="int")


def _canon(expr: _Expr) -> str:
    """A key's text for guard facts: a string literal is the key itself (so that
    `'k' in self.m` guards `self.m.k` and `self.m['k']`), anything else its structure."""
    if expr.op == "lit" and expr.kind == "string":
        return str(expr.value)
    parts = [expr.op, expr.name, repr(expr.value), expr.var]
    parts += [_canon(a) for a in expr.args]
    if expr.target is not None:
        parts.append(_canon(expr.target))
    return "\x00" + "(" + ",".join(parts) + ")"


# --------------------------------------------------------------------------- CEL analysis


@dataclass
class _Info:
    """What the estimator knows of an expression: cost, size, type, access path."""

    cost: int
    size: int = _UNKNOWN
    kind: str = "dyn"
    decl: _Decl | None = None
    path: tuple[str, ...] | None = None  # ("self", "a", "b") for guard facts
    elem: _Info | None = None  # of a list/map: one element (key for maps when iterating)


def _sat_add(*values: int) -> int:
    return min(sum(values), _UNKNOWN)


def _sat_mul(a: int, b: int) -> int:
    return min(a * b, _UNKNOWN)


def _factor(size: int, factor: float) -> int:
    """cel-go's multiplyByCostFactor: ceil(size * factor), saturating."""
    if size >= _UNKNOWN:
        return _UNKNOWN
    return min(math.ceil(size * factor), _UNKNOWN)


_SCALARS = {"bool", "int", "uint", "double", "duration", "timestamp", "null"}


def _type_size(kind: str) -> int:
    """cel-go's computeTypeSize: 1 for a scalar, unknown for anything else."""
    return 1 if kind in _SCALARS else _UNKNOWN


def _from_decl(decl: _Decl | None, path: tuple[str, ...] | None, cost: int) -> _Info:
    """A value reached through the schema: its size is the server's sizeEstimator's,
    the MaxElements of its type (0 for scalars and objects, which have none)."""
    if decl is None:
        return _Info(cost, path=path)
    size = decl.max_elements
    elem = None
    if decl.kind in ("list", "map"):
        elem = _from_decl(decl.elem, None, 0)
    return _Info(cost, size, decl.kind, decl, path, elem)


_NAMESPACES = {"format", "strings", "math", "optional", "base64", "sets", "lists"}
_CONVERSIONS = {
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "dyn",
    "type",
    "duration",
    "timestamp",
}
# library/cost.go: parsers cost 0.1 per byte of their argument
_PARSERS = {
    "url", "isURL", "quantity", "isQuantity", "ip", "isIP", "cidr", "isCIDR", "semver",
    "isSemver",
}
# library/cost.go and cel-go's default: 1 (plus arguments)
_UNIT_COST = {
    "getScheme", "getHost", "getHostname", "getPort", "getEscapedPath", "getQuery", "sign",
    "asInteger", "isInteger", "asApproximateFloat", "isGreaterThan", "isLessThan", "compareTo",
    "add", "sub", "major", "minor", "patch", "masked", "prefixLength", "family",
    "isUnspecified", "isLoopback", "isLinkLocalMulticast", "isLinkLocalUnicast",
    "isGlobalUnicast", "charAt", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear",
    "getFullYear", "getHours", "getMilliseconds", "getMinutes", "getMonth", "getSeconds",
}


class _Analyzer:
    """Walks one rule: estimates its cost, checks field names, lints has() guards."""

    def __init__(self, path: str, self_decl: _Decl | None) -> None:
        self.path = path
        self.self_decl = self_decl
        self.findings: list[Finding] = []
        self._reported: set[tuple[str, str]] = set()

    def report(self, check: str, message: str) -> None:
        if (check, message) not in self._reported:
            self._reported.add((check, message))
            self.findings.append(Finding(check, self.path, message))

    def run(self, expr: _Expr) -> _Info:
        env = {
            "self": _from_decl(self.self_decl, ("self",), 1),
            "oldSelf": _from_decl(self.self_decl, ("oldSelf",), 1),
        }
        return self.walk(expr, env, frozenset())

    # -- guards ---------------------------------------------------------------------

    @staticmethod
    def _syntactic_path(expr: _Expr) -> tuple[str, ...] | None:
        if expr.op == "ident":
            return (expr.name,)
        if expr.op == "select" and expr.target is not None:
            base = _Analyzer._syntactic_path(expr.target)
            return None if base is None else (*base, expr.name)
        if expr.op == "call" and expr.name == "_[_]":
            base = _Analyzer._syntactic_path(expr.args[0])
            return None if base is None else (*base, _canon(expr.args[1]))
        return None

    def facts(self, expr: _Expr) -> tuple[frozenset[tuple[str, ...]], frozenset[tuple[str, ...]]]:
        """(paths present when `expr` is true, paths present when it is false)."""
        empty: frozenset[tuple[str, ...]] = frozenset()
        if expr.op == "has" and expr.target is not None:
            base = self._syntactic_path(expr.target)
            return (frozenset({(*base, expr.name)}), empty) if base is not None else (empty, empty)
        if expr.op != "call":
            return empty, empty
        if expr.name == "!_":
            yes, no = self.facts(expr.args[0])
            return no, yes
        if expr.name in ("_&&_", "_||_"):
            a_yes, a_no = self.facts(expr.args[0])
            b_yes, b_no = self.facts(expr.args[1])
            if expr.name == "_&&_":
                return a_yes | b_yes, a_no & b_no
            return a_yes & b_yes, a_no | b_no
        if expr.name == "@in":
            base = self._syntactic_path(expr.args[1])
            if base is not None:
                return frozenset({(*base, _canon(expr.args[0]))}), empty
        return empty, empty

    @staticmethod
    def _known(facts: frozenset[tuple[str, ...]], path: tuple[str, ...] | None) -> bool:
        if path is None:
            return False
        return any(fact[: len(path)] == path for fact in facts)

    def _read(
        self,
        operand: _Info,
        name: str,
        facts: frozenset[tuple[str, ...]],
        path: tuple[str, ...] | None,
        shown: str,
    ) -> None:
        """The has() lint for reading `name` out of `operand`."""
        decl = operand.decl
        if decl is None:
            return
        if decl.kind == "object":
            if name not in decl.fields:
                self.report("cel", f"compilation failed: undefined field {name!r} in {shown}")
            elif name not in decl.present and not self._known(facts, path):
                self.report(
                    "has",
                    f"reads {'.'.join(path or (shown, name))} without has(): "
                    f"the field is optional (neither required nor defaulted), "
                    f"so the rule fails with 'no such key' when it is absent",
                )
        elif decl.kind == "map" and not self._known(facts, path):
            self.report(
                "has",
                f"reads key {name!r} of map {shown} without has() or 'in': "
                f"the rule fails with 'no such key' when it is absent",
            )

    # -- walk -----------------------------------------------------------------------

    def walk(self, expr: _Expr, env: dict[str, _Info], facts: frozenset[tuple[str, ...]]) -> _Info:
        op = expr.op
        if op == "lit":
            size = len(expr.value) if expr.kind in ("string", "bytes") else 1
            return _Info(0, size, expr.kind)
        if op == "ident":
            if expr.name not in env:
                self.report("cel", f"compilation failed: undeclared reference to {expr.name!r}")
                return _Info(1)
            bound = env[expr.name]
            return _Info(1, bound.size, bound.kind, bound.decl, (expr.name,), bound.elem)
        if op == "select":
            assert expr.target is not None
            operand = self.walk(expr.target, env, facts)
            path = None if operand.path is None else (*operand.path, expr.name)
            self._read(operand, expr.name, facts, path, self._shown(expr.target))
            sub = self._child_decl(operand, expr.name)
            info = _from_decl(sub, path, _sat_add(operand.cost, 1))
            if operand.decl is not None and operand.decl.kind == "map":
                # the server's sizeEstimator finds no field of a map: size by type
                info.size = _type_size(info.kind)
            return info
        if op == "has":
            assert expr.target is not None
            operand = self.walk(expr.target, env, facts)
            if (
                operand.decl is not None
                and operand.decl.kind == "object"
                and expr.name not in operand.decl.fields
            ):
                self.report(
                    "cel",
                    f"compilation failed: undefined field {expr.name!r} "
                    f"in {self._shown(expr.target)}",
                )
            return _Info(operand.cost, 1, "bool")  # presence tests cost 0 on the server
        if op == "list":
            items = [self.walk(a, env, facts) for a in expr.args]
            elem = _Info(
                0,
                max((i.size for i in items), default=0),
                self._union_kind([i.kind for i in items]),
            )
            return _Info(_sat_add(10, *(i.cost for i in items)), len(items), "list", elem=elem)
        if op == "map":
            parts = [self.walk(a, env, facts) for a in expr.args]
            keys = parts[0::2]
            elem = _Info(
                0, max((k.size for k in keys), default=0), self._union_kind([k.kind for k in keys])
            )
            return _Info(_sat_add(30, *(p.cost for p in parts)), len(keys), "map", elem=elem)
        if op == "comp":
            return self._comprehension(expr, env, facts)
        return self._call(expr, env, facts)

    @staticmethod
    def _shown(expr: _Expr) -> str:
        path = _Analyzer._syntactic_path(expr)
        return ".".join(path) if path else "an expression"

    @staticmethod
    def _union_kind(kinds: list[str]) -> str:
        unique = set(kinds)
        return unique.pop() if len(unique) == 1 else "dyn"

    @staticmethod
    def _child_decl(operand: _Info, name: str) -> _Decl | None:
        decl = operand.decl
        if decl is None:
            return None
        if decl.kind == "object":
            return decl.fields.get(name)
        if decl.kind == "map":
            return decl.elem
        return None

    def _comprehension(
        self, expr: _Expr, env: dict[str, _Info], facts: frozenset[tuple[str, ...]]
    ) -> _Info:
        """The macro expanded as cel-go's parser expands it, costed as cel-go costs it."""
        assert expr.target is not None
        rng = self.walk(expr.target, env, facts)
        if rng.kind == "map" and rng.decl is not None:
            var = _Info(1, 0, "string", None, (expr.var,))  # keys: size 0, as the server's
        elif rng.kind == "map":
            var = _Info(1, rng.elem.size if rng.elem else _UNKNOWN, "string", None, (expr.var,))
        elif rng.elem is not None:
            var = _Info(1, rng.elem.size, rng.elem.kind, rng.elem.decl, (expr.var,), rng.elem.elem)
        else:
            var = _Info(1, path=(expr.var,))
        inner = {**env, expr.var: var}
        facts = frozenset(f for f in facts if f[0] != expr.var)  # the variable shadows
        bodies = [self.walk(expr.args[0], inner, facts)]
        if len(expr.args) == 2:  # map(x, p, f): f runs only where p holds
            bodies.append(self.walk(expr.args[1], inner, facts | self.facts(expr.args[0])[0]))
        count = rng.size
        macro = expr.name
        if macro == "all":  # init true; cond @not_strictly_false(r); step r && p; result r
            init, per, result, kind = 0, _sat_add(2, 1, bodies[0].cost), 1, "bool"
        elif macro == "exists":  # init false; cond @not_strictly_false(!r); step r || p
            init, per, result, kind = 0, _sat_add(3, 1, bodies[0].cost), 1, "bool"
        elif macro == "exists_one":  # init 0; cond true; step p ? r + 1 : r; result r == 1
            init, per, result, kind = 0, _sat_add(bodies[0].cost, 2), 2, "bool"
        elif macro == "map" and len(bodies) == 1:  # init []; step r + [f]
            init, per, result, kind = 10, _sat_add(12, bodies[0].cost), 1, "list"
        elif macro == "map":  # step p ? r + [f] : r
            init, per, result, kind = 10, _sat_add(bodies[0].cost, 12, bodies[1].cost), 1, "list"
        else:  # filter: step p ? r + [x] : r
            init, per, result, kind = 10, _sat_add(bodies[0].cost, 13), 1, "list"
        cost = _sat_add(rng.cost, init, result, _sat_mul(count, per))
        if kind == "bool":
            return _Info(cost, 1, "bool")
        elem = bodies[-1] if macro == "map" else var
        return _Info(cost, count, "list", elem=_Info(0, elem.size, elem.kind, elem.decl))

    def _call(self, expr: _Expr, env: dict[str, _Info], facts: frozenset[tuple[str, ...]]) -> _Info:
        name = expr.name
        if name == "_&&_" or name == "_||_":
            lhs = self.walk(expr.args[0], env, facts)
            yes, no = self.facts(expr.args[0])
            rhs = self.walk(expr.args[1], env, facts | (yes if name == "_&&_" else no))
            return _Info(_sat_add(lhs.cost, rhs.cost), 1, "bool")
        if name == "_?_:_":
            cond = self.walk(expr.args[0], env, facts)
            yes, no = self.facts(expr.args[0])
            a = self.walk(expr.args[1], env, facts | yes)
            b = self.walk(expr.args[2], env, facts | no)
            kind = a.kind if a.kind == b.kind else "dyn"
            decl = a.decl if a.decl is b.decl else None
            return _Info(_sat_add(cond.cost, max(a.cost, b.cost)), max(a.size, b.size), kind, decl)
        if name == "_[_]":
            return self._index(expr, env, facts)
        if expr.target is not None and expr.target.op == "ident" \
                and expr.target.name not in env and expr.target.name in _NAMESPACES:
            # a namespaced function such as format.dns1123Label(), not a member call
            expr = _Expr("call", f"{expr.target.name}.{name}", expr.args)
            name = expr.name
        target = self.walk(expr.target, env, facts) if expr.target is not None else None
        args = [self.walk(a, env, facts) for a in expr.args]
        base = _sat_add(target.cost if target else 0, *(a.cost for a in args))
        operands = ([target] if target else []) + args
        fn, size, kind = self._function(name, target, args, operands)
        if fn is None:
            self.report(
                "cost",
                f"cannot estimate the cost of {name!r}: a function this module does not model",
            )
            return _Info(_UNKNOWN, _UNKNOWN, kind)
        return _Info(_sat_add(base, fn), size, kind)

    def _index(
        self, expr: _Expr, env: dict[str, _Info], facts: frozenset[tuple[str, ...]]
    ) -> _Info:
        container = self.walk(expr.args[0], env, facts)
        index = self.walk(expr.args[1], env, facts)
        path = self._syntactic_path(expr)
        if container.kind == "map":
            key = _canon(expr.args[1])
            self._read(container, key, facts, path, self._shown(expr.args[0]))
        cost = _sat_add(container.cost, index.cost, 1)
        elem = container.elem
        if elem is None:
            return _Info(cost, path=path)
        return _Info(cost, elem.size, elem.kind, elem.decl, path, elem.elem)

    def _function(
        self, name: str, target: _Info | None, args: list[_Info], operands: list[_Info]
    ) -> tuple[int | None, int, str]:
        """(the call's own cost, result size, result kind) as cel-go's checker/cost.go and
        Kubernetes' library/cost.go price it; where the overload depends on a type this
        module does not know (dyn), the dearest overload."""
        sizes = [o.size for o in operands]
        first = sizes[0] if sizes else 0
        second = sizes[1] if len(sizes) > 1 else 0
        kinds = [o.kind for o in operands]
        text = {"string", "bytes"}
        if name in ("_==_", "_!=_"):
            return _factor(min(first, second), 0.1), 1, "bool"
        if name in ("_<_", "_<=_", "_>_", "_>=_"):
            if kinds[0] in text:
                return _factor(min(first, second), 0.1), 1, "bool"
            if kinds[0] == "dyn" or kinds[1] == "dyn":
                return max(1, _factor(min(first, second), 0.1)), 1, "bool"
            return 1, 1, "bool"
        if name == "@in":
            if kinds[1] == "map":
                return 1, 1, "bool"
            return second, 1, "bool"  # in_list: the list's size
        if name == "_+_":
            total = _sat_add(first, second)
            if kinds[0] in text or kinds[1] in text:
                return _factor(total, 0.1), total, kinds[0] if kinds[0] in text else kinds[1]
            if kinds[0] == "list" or kinds[1] == "list":
                return 1, total, "list"
            if "dyn" in kinds[:2]:
                return max(1, _factor(total, 0.1)), total, "dyn"
            return 1, 1, kinds[0]
        if name in ("_-_", "_*_", "_/_", "_%_", "-_"):
            return 1, 1, kinds[0] if kinds else "dyn"
        if name == "!_":
            return 1, 1, "bool"
        if name == "size":
            return 1, 1, "int"
        if name in ("matches", "find", "findAll"):
            cost = _sat_mul(_factor(_sat_add(first, 1), 0.1), _factor(second, 0.25))
            kind = {"matches": "bool", "find": "string", "findAll": "list"}[name]
            return cost, (1 if name == "matches" else first), kind
        if name == "contains":
            return _sat_mul(_factor(first, 0.1), _factor(second, 0.1)), 1, "bool"
        if name in ("startsWith", "endsWith"):
            return _factor(second, 0.1), 1, "bool"
        if name in ("lowerAscii", "upperAscii", "substring", "trim"):
            return _factor(first, 0.1), first, "string"
        if name == "replace" and len(sizes) >= 3:
            # library/cost.go: the estimate's minimum sizes are 0, so the replacement can
            # happen size + 1 times and the result is (size + 1) x replacement + size
            size = _sat_add(_sat_mul(_sat_add(first, 1), sizes[2]), first)
            return _factor(first, 0.2), size, "string"
        if name == "split":
            return _factor(first, 0.2), first, "list"
        if name == "join" and target is not None:
            item_size = target.elem.size if target.elem else _UNKNOWN
            total = _sat_mul(target.size, item_size)
            if args:
                total = _sat_add(total, _sat_mul(args[0].size, max(target.size, 1) - 1))
            return _factor(total, 0.1), total, "string"
        if name in ("isSorted", "sum", "max", "min", "indexOf", "lastIndexOf") and target:
            if target.kind == "list":
                item = target.elem
                per = 1 + (_factor(item.size, 0.1) if item and item.kind in text else 0)
                return _sat_mul(target.size, per), 1, "dyn"
            return _factor(target.size, 0.1), 1, "int"
        if name in _CONVERSIONS:
            # cel-go prices string<->bytes by size, every other conversion at 1
            source = kinds[0] if kinds else ""
            if name in ("bytes", "string") and source in ("string", "bytes", "dyn") \
                    and source != name:
                return _factor(first, 0.1), first, name
            return 1, _type_size(name), name
        if name in _PARSERS:  # library/cost.go: size x 0.1
            return _factor(args[-1].size if args else first, 0.1), 1, "dyn"
        if name in ("containsIP", "containsCIDR"):
            cost = 4 if name == "containsIP" else 7
            if kinds[-1] in ("string", "dyn"):
                cost = _sat_add(cost, _factor(sizes[-1], 0.1))
            return cost, 1, "bool"
        if name == "validate" and target is not None and target.kind == "format":
            # library/cost.go: size x 0.1, times MaxNameFormatRegexSize (128) x 0.25
            return _factor(_factor(second, 0.1), 128 * 0.25), _UNKNOWN, "dyn"
        if name.startswith("format.") or name in _UNIT_COST:  # 1, as cel-go's default
            return 1, 1, "dyn" if not name.startswith("format.") else "format"
        return None, _UNKNOWN, "dyn"


# --------------------------------------------------------------------------- rules


def _rule_nodes(
    node: dict[str, Any], path: str, card: int | None, root: dict[str, Any]
) -> Iterator[tuple[dict[str, Any], str, int | None]]:
    """Every structural node with rules, and its MaxCardinality (None = unbounded)."""
    if node.get("x-kubernetes-validations"):
        yield node, path, card
    factor = _max_elements(node)
    child = None if card is None or factor is None else card * factor
    for name, prop in (node.get("properties") or {}).items():
        if isinstance(prop, dict):
            yield from _rule_nodes(prop, f"{path}.properties[{name}]", child, root)
    if isinstance(node.get("items"), dict):
        yield from _rule_nodes(node["items"], f"{path}.items", child, root)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _rule_nodes(
            node["additionalProperties"], f"{path}.additionalProperties", child, root
        )


def _max_elements(node: dict[str, Any]) -> int | None:
    """extractMaxElements of cel_validation.go."""
    kind = node.get("type")
    if kind == "object":
        if node.get("additionalProperties") is not None:
            return max(node["maxProperties"], 0) if "maxProperties" in node else None
        return 1
    if kind == "array":
        return max(node["maxItems"], 0) if "maxItems" in node else None
    return 1


def _rules(schema: dict[str, Any], path: str) -> tuple[list[RuleCost], list[Finding]]:
    costs: list[RuleCost] = []
    findings: list[Finding] = []
    for node, npath, card in _rule_nodes(schema, path, 1, schema):
        decl = _decl(
            node, resource_root=node is schema or bool(node.get("x-kubernetes-embedded-resource"))
        )
        if card is None:
            min_size = decl.min_size if decl is not None else 0
            card = MAX_REQUEST_SIZE_BYTES // (min_size + 1)
        for i, entry in enumerate(node["x-kubernetes-validations"]):
            if not isinstance(entry, dict):
                continue
            for key in ("rule", "messageExpression"):
                text = entry.get(key)
                if not isinstance(text, str) or not text.strip():
                    continue
                rpath = f"{npath}.x-kubernetes-validations[{i}].{key}"
                try:
                    expr = _parse(text)
                except _Unsupported as error:
                    findings.append(Finding("cel", rpath, f"compilation failed: {error}"))
                    continue
                except Exception as error:
                    findings.append(Finding("cel", rpath, f"compilation failed: {_syntax(error)}"))
                    continue
                analyzer = _Analyzer(rpath, decl)
                info = analyzer.run(expr)
                if key == "messageExpression":
                    analyzer.findings = [f for f in analyzer.findings if f.check != "has"]
                findings += analyzer.findings
                wanted = "bool" if key == "rule" else "string"
                if info.kind not in (wanted, "dyn"):
                    findings.append(
                        Finding("cel", rpath, f"cel expression must evaluate to a {wanted}")
                    )
                costs.append(RuleCost(rpath, text, info.cost, card))
    return costs, findings


def _syntax(error: Exception) -> str:
    """cel-python's parse error (the rule, then a caret) as one line."""
    lines = str(error).splitlines()
    if len(lines) >= 2 and "^" in lines[1]:
        return f"syntax error at column {lines[1].index('^') + 1} of {lines[0].strip()!r}"
    return " ".join(str(error).split()) or repr(error)


def _cost_findings(costs: list[RuleCost], path: str) -> list[Finding]:
    found = [
        Finding(
            "cost",
            c.path,
            f"Forbidden: estimated rule cost {c.total} ({c.cost} x cardinality "
            f"{c.cardinality}) exceeds budget {STATIC_ESTIMATED_COST_LIMIT} (try "
            f"simplifying the rule, or adding maxItems, maxProperties, and maxLength)",
        )
        for c in costs
        if c.total > STATIC_ESTIMATED_COST_LIMIT and c.cost < _UNKNOWN  # unknown: said already
    ]
    total = min(sum(c.total for c in costs), _UNKNOWN)
    if total > STATIC_ESTIMATED_CRD_COST_LIMIT:
        found.append(
            Finding(
                "cost",
                path,
                f"Forbidden: x-kubernetes-validations estimated rule cost total "
                f"{total} for entire OpenAPIv3 schema exceeds budget "
                f"{STATIC_ESTIMATED_CRD_COST_LIMIT}",
            )
        )
    return found

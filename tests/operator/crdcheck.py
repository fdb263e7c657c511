"""Check a custom resource against its CRD the way the API server does, without one.

No kube-apiserver can run here, so this module does the parts of its work that decide
whether a ModelDeployment is admitted, in the server's order:

1. nulls of non-nullable fields are pruned, then schema defaults are applied (a default
   is itself defaulted, so ``rollout: {}`` grows its steps and analysis);
2. the structural OpenAPI v3 schema is checked with ``jsonschema`` (draft 4 semantics, as
   OpenAPI 3.0's), mapping ``x-kubernetes-int-or-string``, ``nullable`` and
   ``x-kubernetes-preserve-unknown-fields``; unknown fields are errors, as with kubectl's
   default ``--validate=strict``; ``pattern`` is matched by RE2, the syntax and semantics
   of Go's regexp (``$`` is the end of the text);
   list-map keys must be unique;
3. every ``x-kubernetes-validations`` rule is evaluated by the real CEL evaluator of
   ``cel-python``, with ``self`` bound to the node the rule sits on. A rule under a node
   that already failed the schema is not evaluated (its ``self`` would not be well
   typed); the server reports such a manifest invalid either way. Property names are
   escaped as the server escapes them for CEL (``namespace`` is ``self.__namespace__``,
   ``a-b`` is ``self.a__dash__b``); keys of maps (additionalProperties) are not.

What it does not do: CEL cost estimation (crd_structural.py checks the CRD itself),
``oldSelf`` transition rules, formats, ``metadata`` beyond a name. A rule's
``messageExpression`` is evaluated for the message, as the server does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import celpy
import jsonschema
import re2
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from jsonschema import Draft4Validator, validators
from jsonschema.exceptions import ValidationError


@dataclass(frozen=True)
class Rule:
    """One x-kubernetes-validations entry and the schema node it sits on."""

    path: str  # dotted path of the node, e.g. "spec.rollout.steps" ("[]" for items)
    rule: str
    message: str


@dataclass(frozen=True)
class Problem:
    """One reason the API server would refuse the object."""

    path: str  # where in the object, e.g. "spec.rollout.steps[1]"
    message: str
    rule: Rule | None = None  # set when a CEL rule failed

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class _Compiled:
    rule: Rule
    program: celpy.Runner
    message: celpy.Runner | None = None  # the entry's messageExpression, when it has one


@dataclass
class CRDChecker:
    """Admission checks of one version of a CRD; build it with `from_crd`."""

    schema: dict[str, Any]
    rules: list[Rule] = field(default_factory=list)
    _programs: dict[tuple[str, str], _Compiled] = field(default_factory=dict)
    # cel-python interprets a parse tree and is slow (milliseconds a rule); rules are
    # pure, so a verdict is remembered per rule and value.
    _verdicts: dict[tuple[str, str, str], Problem | None] = field(default_factory=dict)
    _validator: Any = None

    @classmethod
    def from_crd(cls, crd: dict[str, Any], version: str = "v1alpha1") -> CRDChecker:
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        return cls.from_schema(served["schema"]["openAPIV3Schema"], top=True)

    @classmethod
    def from_schema(cls, schema: dict[str, Any], top: bool = False) -> CRDChecker:
        """Checks of values of one schema node; `top` for a resource's root schema."""
        checker = cls(schema=schema)
        env = celpy.Environment()
        for path, node in _walk_schema(schema, ""):
            for entry in node.get("x-kubernetes-validations", []):
                rule = Rule(path=path, rule=entry["rule"], message=entry.get("message", ""))
                program = env.program(env.compile(rule.rule))
                expression = entry.get("messageExpression")
                message = env.program(env.compile(expression)) if expression else None
                checker.rules.append(rule)
                checker._programs[(path, rule.rule)] = _Compiled(rule, program, message)
        structural = _to_jsonschema(schema, top=top)
        Draft4Validator.check_schema(structural)
        checker._validator = _Validator(structural)
        return checker

    def defaulted(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A copy of `obj` with nulls pruned and defaults applied, as it would be stored."""
        result: dict[str, Any] = defaulted(self.schema, obj)
        return result

    def check(self, obj: dict[str, Any]) -> list[Problem]:
        """Every reason the API server would reject `obj`; empty when it would admit it."""
        return self.check_as_is(self.defaulted(obj))

    def check_as_is(self, stored: Any) -> list[Problem]:
        """Every reason the schema refuses `stored` as given: no pruning, no defaulting.

        This is what the API server runs on each `default` of a CRD it is given
        (defaulting/validation.go): the value must pass the OpenAPI schema of its node and,
        when it does, every CEL rule at that node and below, nested defaults not applied.
        """
        problems = [_problem(e) for e in self._validator.iter_errors(stored)]
        problems += _list_map_problems(self.schema, stored, "")
        broken = {p.path for p in problems}
        problems += self._cel_problems(self.schema, stored, "", "", broken)
        return problems

    def _cel_problems(
        self, schema: dict[str, Any], value: Any, spath: str, vpath: str, broken: set[str]
    ) -> list[Problem]:
        if any(b == vpath or b.startswith(vpath + ".") or b.startswith(vpath + "[")
               for b in broken if vpath):
            return []
        problems: list[Problem] = []
        for entry in schema.get("x-kubernetes-validations", []):
            key = (spath, entry["rule"], json.dumps(value, sort_keys=True))
            if key not in self._verdicts:
                self._verdicts[key] = _evaluate(self._programs[key[:2]], _cel_names(schema, value))
            problem = self._verdicts[key]
            if problem is not None:
                problems.append(Problem(vpath, problem.message, problem.rule))
        for _, sub, child, sub_spath, sub_vpath in _children(schema, value, spath, vpath):
            problems += self._cel_problems(sub, child, sub_spath, sub_vpath, broken)
        return problems


def defaulted(schema: dict[str, Any], value: Any) -> Any:
    """A copy of `value` with nulls pruned and the defaults of `schema` applied."""
    result = copy.deepcopy(value)
    _prune_and_default(schema, result)
    return result


# CEL's reserved words: a property so named is reached as __word__ (apiextensions' rule).
_CEL_RESERVED = {
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for",
    "function", "if", "import", "let", "loop", "package", "namespace", "return", "var",
    "void", "while",
}


def _cel_name(name: str) -> str:
    """A property name as CEL expressions in a CRD reach it."""
    if name in _CEL_RESERVED:
        return f"__{name}__"
    return (name.replace("__", "__underscores__").replace(".", "__dot__")
            .replace("-", "__dash__").replace("/", "__slash__"))


def _cel_names(schema: dict[str, Any], value: Any) -> Any:
    """`value` with the properties of `schema` (at every depth) under their CEL names."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for key, child in value.items():
            if key in props:
                out[_cel_name(key)] = _cel_names(props[key], child)
            else:
                out[key] = _cel_names(extra, child) if isinstance(extra, dict) else child
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_cel_names(schema["items"], item) for item in value]
    return value


def _evaluate(compiled: _Compiled, value: Any) -> Problem | None:
    """The problem `compiled`'s rule finds in `value` (a path is filled in by the caller)."""
    try:
        outcome = compiled.program.evaluate({"self": json_to_cel(value)})
    except CELEvalError as error:
        return Problem("", f"rule {compiled.rule.rule!r}: {error}", compiled.rule)
    if isinstance(outcome, CELEvalError):
        return Problem("", f"rule {compiled.rule.rule!r}: {outcome}", compiled.rule)
    if not bool(outcome):
        return Problem("", _message(compiled, value), compiled.rule)
    return None


def _message(compiled: _Compiled, value: Any) -> str:
    """The messageExpression's string, as the server reports it; else the static message
    (the server also falls back to it when the expression fails or gives no string)."""
    if compiled.message is not None:
        try:
            text = compiled.message.evaluate({"self": json_to_cel(value)})
        except CELEvalError:
            return compiled.rule.message
        if isinstance(text, str) and text.strip():
            return str(text)
    return compiled.rule.message


def _children(
    schema: dict[str, Any], value: Any, spath: str, vpath: str
) -> Iterator[tuple[str | int, dict[str, Any], Any, str, str]]:
    """(key, sub-schema, sub-value, schema path, value path) of each child with a schema."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            if key in props:
                yield key, props[key], child, _join(spath, key), _join(vpath, key)
            elif isinstance(extra, dict):
                yield key, extra, child, _join(spath, "*"), _join(vpath, key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, child in enumerate(value):
            yield i, schema["items"], child, spath + "[]", f"{vpath}[{i}]"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk_schema(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk_schema(sub, _join(path, key))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk_schema(schema["additionalProperties"], _join(path, "*"))
    if isinstance(schema.get("items"), dict):
        yield from _walk_schema(schema["items"], path + "[]")


def _prune_and_default(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in list(value):
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if value[key] is None and sub is not None and not sub.get("nullable", False):
                del value[key]
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for _, sub, child, _, _ in _children(schema, value, "", ""):
            _prune_and_default(sub, child)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _prune_and_default(schema["items"], item)


_KEYWORDS = {
    "type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "uniqueItems",
    "required", "minProperties", "maxProperties", "multipleOf",
}


def _to_jsonschema(node: dict[str, Any], top: bool = False) -> dict[str, Any]:
    """The structural schema as a draft-4 JSON Schema with the API server's meaning."""
    out = {k: v for k, v in node.items() if k in _KEYWORDS}
    if "anyOf" in node:
        out["anyOf"] = [_to_jsonschema(s) for s in node["anyOf"]]
    if "properties" in node:
        out["properties"] = {k: _to_jsonschema(s) for k, s in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _to_jsonschema(node["additionalProperties"])
    elif node.get("type") == "object" and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False  # strict field validation: unknown = error
    if isinstance(node.get("items"), dict):
        out["items"] = _to_jsonschema(node["items"])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if top:
        # The server checks metadata with ObjectMeta's own rules; a name is what we need.
        out["properties"]["metadata"] = {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}},
        }
    return out


def _go_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """`pattern` as Go's regexp reads it: `$` is the end of the text, not of a line."""
    del validator, schema
    if isinstance(instance, str) and not re2.search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = validators.extend(Draft4Validator, {"pattern": _go_pattern})


def _problem(error: jsonschema.ValidationError) -> Problem:
    path = _format(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return Problem(_join(path, unknown[0]) if unknown else path, "unknown field")
    return Problem(path, error.message)


def _format(parts: Any) -> str:
    path = ""
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
    return path


def _list_map_problems(schema: dict[str, Any], value: Any, path: str) -> list[Problem]:
    problems: list[Problem] = []
    if isinstance(value, list) and schema.get("x-kubernetes-list-type") == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen: set[tuple[Any, ...]] = set()
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            key = tuple(repr(item.get(k)) for k in keys)
            if key in seen:
                problems.append(Problem(f"{path}[{i}]", f"duplicate entry for key {key}"))
            seen.add(key)
    for _, sub, child, _, vpath in _children(schema, value, "", path):
        problems += _list_map_problems(sub, child, vpath)
    return problems

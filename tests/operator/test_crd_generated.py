"""The CRD is generated from api.py's models: committed, copied and written the same.

The committed crds/modelship.io_modeldeployments.yaml must be what scripts/crd_schema.py
makes from api.py now (so a model changed without `make sync` fails here), the chart's and
the kustomize base's copies must equal it byte for byte, and the conversion from a
pydantic model to a structural schema is checked on a small model of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import yaml
from modelship_operator import api
from pydantic import BaseModel, ConfigDict, Field

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import crd_schema

REPO = Path(__file__).resolve().parents[2]
CRD = "crds/modelship.io_modeldeployments.yaml"
COPIES = ["charts/modelship/crds/modelship.io_modeldeployments.yaml",
          "kustomize/base/crds/modelship.io_modeldeployments.yaml"]


@pytest.fixture(scope="module")
def generated() -> str:
    return crd_schema.crd_text()


def test_the_committed_crd_is_what_api_py_generates(generated: str) -> None:
    committed = (REPO / CRD).read_text()
    assert committed == generated, f"{CRD} is stale: run `make sync` and commit the result"


@pytest.mark.parametrize("copy", COPIES)
def test_the_chart_and_kustomize_copies_equal_it(generated: str, copy: str) -> None:
    assert (REPO / copy).read_text() == generated, f"{copy} is stale: run `make sync`"


def _walk(node: Any, path: str = "") -> list[tuple[str, str, Any]]:
    found: list[tuple[str, str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((path, key, value))
            found += _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for n, value in enumerate(node):
            found += _walk(value, f"{path}/{n}")
    return found


def test_the_schema_is_structural_in_form(generated: str) -> None:
    """No reference, no null type, no union but int-or-string, no pydantic titles."""
    (version,) = yaml.safe_load(generated)["spec"]["versions"]
    entries = _walk(version["schema"]["openAPIV3Schema"])
    assert len(entries) > 1000
    assert [(p, k) for p, k, _ in entries if k in ("$ref", "$defs", "allOf", "oneOf", "title",
                                                   "nullable", "const")] == []
    assert [p for p, k, v in entries if k == "type" and v == "null"] == []
    unions = [p for p, k, _ in entries if k == "anyOf"]
    assert unions, "the int-or-string fields are gone"
    for path, key, value in entries:
        if key == "anyOf":
            assert value == [{"type": "integer"}, {"type": "string"}], path


class _Inner(BaseModel):
    """Inner: never shown where the field describes it."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid",
                              json_schema_extra=api.validations(api.cel("self.a > 0", "a > 0")))
    a: Annotated[int, Field(gt=0, le=5)] = 1
    """An   integer,
    folded onto one line."""


class _Item(BaseModel):
    """One item."""

    key: str


class _Sample(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)
    inner: _Inner = Field(default_factory=_Inner)
    """The inner part."""
    optional: _Inner | None = None
    """Optional, not nullable."""
    count: Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern="^[0-9]+%$")] | None = None
    """A count or a percent."""
    free: dict[str, Any] | None = None
    """Anything."""
    sizes: Annotated[dict[str, float], Field(max_length=3)] = Field(default_factory=dict)
    """Sizes by name."""
    mode: Literal["a", "b"] = "a"
    """A mode."""
    items: list[_Item] = Field(default_factory=list, max_length=4,
                               json_schema_extra=api.list_map("key"))
    """Items keyed by key."""
    needed: str = Field(min_length=1)
    """Required."""


def test_a_model_becomes_a_structural_schema() -> None:
    assert crd_schema.structural_schema(_Sample) == {
        "type": "object",
        "required": ["needed"],
        "properties": {
            "inner": {
                "type": "object", "description": "The inner part.", "default": {},
                "x-kubernetes-validations": [{"rule": "self.a > 0", "message": "a > 0"}],
                "properties": {"a": {
                    "type": "integer", "description": "An integer, folded onto one line.",
                    "default": 1, "minimum": 0, "exclusiveMinimum": True, "maximum": 5,
                }},
            },
            "optional": {
                "type": "object", "description": "Optional, not nullable.",
                "x-kubernetes-validations": [{"rule": "self.a > 0", "message": "a > 0"}],
                "properties": {"a": {
                    "type": "integer", "description": "An integer, folded onto one line.",
                    "default": 1, "minimum": 0, "exclusiveMinimum": True, "maximum": 5,
                }},
            },
            "count": {
                "description": "A count or a percent.", "minimum": 0, "pattern": "^[0-9]+%$",
                "x-kubernetes-int-or-string": True,
                "anyOf": [{"type": "integer"}, {"type": "string"}],
            },
            "free": {"type": "object", "description": "Anything.",
                     "x-kubernetes-preserve-unknown-fields": True},
            "sizes": {"type": "object", "description": "Sizes by name.", "default": {},
                      "maxProperties": 3, "additionalProperties": {"type": "number"}},
            "mode": {"type": "string", "description": "A mode.", "default": "a",
                     "enum": ["a", "b"]},
            "items": {
                "type": "array", "description": "Items keyed by key.", "default": [],
                "maxItems": 4, "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["key"],
                "items": {"type": "object", "description": "One item.", "required": ["key"],
                          "properties": {"key": {"type": "string"}}},
            },
            "needed": {"type": "string", "description": "Required.", "minLength": 1},
        },
    }


class _FloatOrText(BaseModel):
    value: float | str


class _ChangedDefault(BaseModel):
    inner: _Inner = Field(default_factory=lambda: _Inner(a=2))


@pytest.mark.parametrize(("model", "problem"), [
    (_FloatOrText, "a union other than int | str"),
    (_ChangedDefault, "a default model must be the model's own defaults"),
])
def test_what_a_structural_schema_cannot_say_is_refused(
    model: type[BaseModel], problem: str
) -> None:
    with pytest.raises(crd_schema.SchemaError, match=problem):
        crd_schema.structural_schema(model)

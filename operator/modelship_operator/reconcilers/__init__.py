"""One module per child kind, each with a pure ``render`` of the desired object.

A reconciler's ``render`` returns the kind-specific part of one child: apiVersion, kind,
metadata.name (plus any labels or annotations of its own) and the spec.
:func:`modelship_operator.render.render` assembles them and adds the namespace, the
standard labels and the ownerReference in one place. Deciding and applying is the
business of :mod:`modelship_operator.apply`.

:class:`RenderError` lives here (and is re-exported by ``render``) so that every
reconciler can raise it without importing the assembler.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal, localcontext
from typing import Any

from modelship_operator import naming


class RenderError(ValueError):
    """A spec the schema lets through but the operator cannot honour.

    `field` is the JSON path of the culprit in wire names, e.g.
    ``spec.model.registry.trackingUri``; ``str(error)`` says what is wrong with it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def __str__(self) -> str:
        return str(self.args[0])


def require_subdomain(value: str, field: str, what: str = "a Kubernetes object name") -> str:
    """`value` unchanged when it is a DNS-1123 subdomain, else RenderError for `field`."""
    if not naming.is_dns_subdomain(value):
        raise RenderError(
            field,
            f"{value!r} is not a valid {what}: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters",
        )
    return value


def require_label(value: str, field: str, what: str = "namespace name") -> str:
    """`value` unchanged when it is a DNS-1123 label, else RenderError for `field`."""
    if not naming.is_dns_1123_label(value):
        raise RenderError(
            field,
            f"{value!r} is not a valid {what}: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters",
        )
    return value


def require_annotation_keys(annotations: dict[str, str], field: str) -> dict[str, str]:
    """`annotations` unchanged when every key is a qualified name, else RenderError."""
    for key in annotations:
        prefix, _, name = key.rpartition("/")
        if (prefix and not naming.is_dns_subdomain(prefix)) or not (
            name and naming.is_label_value(name)
        ):
            raise RenderError(
                f"{field}[{key!r}]",
                f"{key!r} is not a valid annotation key: [prefix/]name, where name is at "
                "most 63 characters of letters, digits, '-', '_' and '.', starting and "
                "ending with a letter or digit, and prefix a DNS subdomain",
            )
    return annotations


# What the API server refuses in an Ingress Prefix path, and the Gateway API's CRD in an
# HTTPRoute PathPrefix value.
_BAD_PATH_PARTS = ("//", "/./", "/../", "%2f", "%2F", "#")
_BAD_PATH_ENDS = ("/..", "/.")


def require_path(path: str, field: str) -> str:
    """`path` unchanged when it is a clean absolute URL path prefix, else RenderError."""
    bad = next((p for p in _BAD_PATH_PARTS if p in path), None)
    bad = bad or next((e for e in _BAD_PATH_ENDS if path.endswith(e)), None)
    if not path.startswith("/") or len(path) > 1024 or bad:
        raise RenderError(
            field,
            f"{path!r} is not a valid path prefix: it must start with '/', be at most 1024 "
            "characters, and contain no '//', '/./', '/../', '%2f' or '#', nor end in "
            "'/.' or '/..'",
        )
    return path


# --- resource quantities in the API server's canonical form ------------------------------

_QUANTITY = re.compile(
    r"^(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<bin>[KMGTPE]i)|(?P<dec>[numkMGTPE])|[eE](?P<exp>[+-]?[0-9]+))?$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {e: s for s, e in _DECIMAL.items()}
_BINARY_SUFFIX = {k: s for s, k in _BINARY.items()}


def canonical_quantity(quantity: int | str) -> str:
    """`quantity` as the API server writes it back (``1000m`` -> ``1``, ``1024Mi`` ->
    ``1Gi``, ``0.5`` -> ``500m``, ``2`` -> ``"2"``), so that a live object compares equal
    to what was applied. Text that is not a quantity is returned unchanged (the API
    models reject it before this point).

    Kubernetes' rules (resource.Quantity.CanonicalizeBytes): precision beyond 10^-9 is
    rounded up; a binary (``Ki``...) amount below 1024 or not whole is shown decimal;
    decimal amounts take the largest SI suffix (a power of 1000) that keeps the number
    whole; exponent notation stays exponent notation.
    """
    text = str(quantity)
    match = _QUANTITY.match(text)
    if match is None:
        return text
    with localcontext() as ctx:
        ctx.prec = 100
        value = Decimal(match["num"])
        if match["bin"]:
            value *= Decimal(1024) ** _BINARY[match["bin"]]
        elif match["exp"] is not None:
            value = value.scaleb(int(match["exp"]))
        else:
            value = value.scaleb(_DECIMAL[match["dec"] or ""])
        value = (value.scaleb(9).to_integral_value(rounding=ROUND_CEILING)).scaleb(-9)
        if value == 0:
            return "0"
        if match["bin"] and abs(value) >= 1024 and value == value.to_integral_value():
            number, power = int(value), 0
            while power < 6 and number % 1024 == 0:
                number, power = number // 1024, power + 1
            return f"{number}{_BINARY_SUFFIX.get(power, '')}"
        nanos = int(value.scaleb(9))
        exponent = -9
        while nanos % 1000 == 0 and exponent < 18:
            nanos, exponent = nanos // 1000, exponent + 3
        if match["exp"] is not None:
            return f"{nanos}e{exponent}" if exponent else str(nanos)
        return f"{nanos}{_DECIMAL_SUFFIX[exponent]}"


def canonical_resources(resources: Mapping[str, Any]) -> dict[str, Any]:
    """A container's ``resources`` with every quantity in canonical form."""
    out: dict[str, Any] = {}
    for section, amounts in resources.items():
        if isinstance(amounts, Mapping):
            out[section] = {name: canonical_quantity(q) for name, q in amounts.items()}
        else:
            out[section] = amounts
    return out

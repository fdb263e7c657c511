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

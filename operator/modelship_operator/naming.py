"""Child names that no two ModelDeployments can share, and label values Kubernetes accepts.

A ModelDeployment's children are named after it, one object of each kind in its
namespace: ``NAME`` (ServiceAccount, the stable Service, Ingress, HTTPRoute, PDB,
NetworkPolicy), ``NAME--canary`` (the canary Service and canary Ingress) and
``NAME-TAG`` (the Deployment and HPA of one model version, e.g. ``iris-v3``). Two
ModelDeployments in one namespace never produce the same name for one kind, because
the name of a ModelDeployment is restricted (:func:`md_name_problem`; the CRD holds the
same rule in CEL):

- a DNS-1035 label (what a Service name must be), so ``NAME`` is used as it is;
- no ``--`` in it, so ``NAME--canary`` is never another ModelDeployment's ``NAME``, and
  the first ``--`` of a canary name says where ``NAME`` ends;
- at most :data:`MAX_MD_NAME` characters, so every child name fits without shortening:
  a Deployment name ``NAME-TAG`` stays within 46 characters, which keeps its pods'
  names (``NAME-TAG-<pod-template-hash>-<5 random>``) whole within 63, so a pod's name
  says which Deployment it belongs to.

A version TAG never contains ``-`` (``v`` and the version when that is at most 8 lowercase
letters or digits, as MLflow's version numbers are; else ``h`` and 8 hex digits of its
sha256), so the last ``-`` of a Deployment name says where ``NAME`` ends: two
ModelDeployments never share a Deployment name, whatever their versions. Within one
ModelDeployment two versions share a tag only when their hashes meet; render refuses
that rollout rather than let one Deployment stand for both.

An MLflow model name or version may be anything at all (spaces, capitals, slashes,
unicode); as a label value (at most 63 characters of [A-Za-z0-9._-], alphanumeric at
both ends) text that already fits is used unchanged, and anything else is cleaned,
shortened and suffixed with 7 hex digits of the sha256 of the original text.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
HASH_LEN = 7

MAX_MD_NAME = 36
"""Longest ModelDeployment name: ``NAME-h<8 hex>`` is then 46 characters."""
MAX_DEPLOYMENT_NAME = 46
"""Longest Deployment name whose pods' names are not shortened by the API server.

A pod of Deployment D is named D-<pod-template-hash, up to 10>-<5 random>; the
generated part is appended to a base of at most 58 characters (63 - 5)."""
SEPARATOR = "--"
"""Joins NAME and a child's role; no ModelDeployment name contains it."""
CANARY = "canary"
SHADOW = "shadow"
MAX_VERSION_TEXT = 8
VERSION_HASH_LEN = 8
MD_NAME_RULE = (
    f"at most {MAX_MD_NAME} characters: lowercase letters, digits and '-', starting with "
    f"a letter, ending with a letter or digit, and no '{SEPARATOR}' (its children are "
    f"named NAME, NAME-vVERSION and NAME{SEPARATOR}{CANARY})"
)

DNS_1035_PATTERN = r"[a-z]([-a-z0-9]*[a-z0-9])?"
"""A DNS-1035 label (a Service name; a ModelDeployment name, within MAX_MD_NAME)."""
_DNS_1035 = re.compile(DNS_1035_PATTERN)
_DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_VERSION_TEXT = re.compile(rf"[a-z0-9]{{1,{MAX_VERSION_TEXT}}}")


def short_hash(text: str, length: int = HASH_LEN) -> str:
    """The first `length` hex digits of sha256(text)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def is_dns_label(text: str) -> bool:
    """A valid DNS-1035 label (what a Service name must be)."""
    return len(text) <= MAX_LABEL and _DNS_1035.fullmatch(text) is not None


def is_dns_1123_label(text: str) -> bool:
    """A valid DNS-1123 label (a namespace name, for instance)."""
    return len(text) <= MAX_LABEL and _DNS_1123_LABEL.fullmatch(text) is not None


def is_dns_subdomain(text: str) -> bool:
    """A valid DNS-1123 subdomain (what most object names must be)."""
    return len(text) <= 253 and _DNS_SUBDOMAIN.fullmatch(text) is not None


def is_label_value(text: str) -> bool:
    """A valid label value (the empty string included)."""
    return len(text) <= MAX_LABEL and _LABEL_VALUE.fullmatch(text) is not None


def label_value(text: str) -> str:
    """`text` as a label value: unchanged when valid, else cleaned, shortened + hashed."""
    if is_label_value(text):
        return text
    digest = short_hash(text)
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    cleaned = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
    cleaned = cleaned[: MAX_LABEL - HASH_LEN - 1]
    cleaned = re.sub(r"[^A-Za-z0-9]+$", "", cleaned)
    return f"{cleaned}-{digest}" if cleaned else digest


# --- the names of a ModelDeployment's children ------------------------------------------


def md_name_problem(name: str) -> str | None:
    """Why `name` cannot name a ModelDeployment, or None when it can."""
    if len(name) > MAX_MD_NAME or not is_dns_label(name) or SEPARATOR in name:
        return f"{name!r} is not a valid ModelDeployment name: use {MD_NAME_RULE}"
    return None


def _checked(md_name: str) -> str:
    problem = md_name_problem(md_name)
    if problem is not None:
        raise ValueError(f"metadata.name: {problem}")
    return md_name


def version_tag(version: str) -> str:
    """The part of a Deployment name that stands for `version`; it never contains '-'.

    ``v3`` for version 3 (any 1 to 8 lowercase letters or digits are kept as they are),
    else ``h`` and 8 hex digits of the version's sha256.
    """
    if _VERSION_TEXT.fullmatch(version):
        return f"v{version}"
    return f"h{short_hash(version, VERSION_HASH_LEN)}"


def service_name(md_name: str) -> str:
    """The stable Service (and ServiceAccount, PDB, NetworkPolicy, Ingress, HTTPRoute): NAME.

    Raises ValueError for a name :func:`md_name_problem` refuses.
    """
    return _checked(md_name)


def canary_service_name(md_name: str) -> str:
    """The canary Service and canary Ingress: ``NAME--canary``."""
    return f"{_checked(md_name)}{SEPARATOR}{CANARY}"


def shadow_config_name(md_name: str) -> str:
    """The ConfigMap of the shadow phase's mirroring settings: ``NAME--shadow``."""
    return f"{_checked(md_name)}{SEPARATOR}{SHADOW}"


def shadow_token_name(md_name: str) -> str:
    """The Secret holding the stable and canary pods' shared shadow token:
    ``NAME--shadow-token``."""
    return f"{_checked(md_name)}{SEPARATOR}{SHADOW}-token"


def deployment_name(md_name: str, version: str) -> str:
    """The Deployment (and its HPA) serving one model version: ``NAME-vVERSION``."""
    return f"{_checked(md_name)}-{version_tag(version)}"

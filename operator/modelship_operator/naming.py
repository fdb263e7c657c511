"""Child names and label values that Kubernetes always accepts.

A ModelDeployment's name may be any DNS subdomain (up to 253 characters, dots allowed,
a digit first), and an MLflow model name anything at all (spaces, capitals, slashes,
unicode). Children need DNS-1035 labels (a Service name: at most 63 characters,
lowercase letters, digits and '-', a letter first) and label values (at most 63
characters of [A-Za-z0-9._-], alphanumeric at both ends). Text that already fits is
used unchanged; anything else is cleaned and shortened, and gets a suffix of 7 hex
digits of the sha256 of the original text, so the result is deterministic and two
different inputs almost never meet.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
HASH_LEN = 7

_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
# Longest suffix kept readable after a shortened name ("-v12345", "-canary").
_MAX_KEPT_SUFFIX = 20


def short_hash(text: str) -> str:
    """The first 7 hex digits of sha256(text)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_LEN]


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


def _clean_dns(text: str) -> str:
    """Lowercase, runs of anything else than [a-z0-9] turned into one '-', trimmed."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower())
    return cleaned.strip("-")


def dns_label(text: str, suffix: str = "") -> str:
    """``text + suffix`` as a DNS-1035 label: unchanged when valid, else cleaned + hashed.

    A short, clean `suffix` (such as ``-v3``) stays readable at the end of a shortened
    name; the hash covers the whole original ``text + suffix``.
    """
    whole = text + suffix
    if is_dns_label(whole):
        return whole
    digest = short_hash(whole)
    tail = _clean_dns(suffix)
    if not tail or len(tail) > _MAX_KEPT_SUFFIX:
        base, tail = _clean_dns(whole), ""
    else:
        base = _clean_dns(text)
    if not base or not base[0].isalpha():
        base = f"md-{base}".rstrip("-")
    room = MAX_LABEL - HASH_LEN - 1 - (len(tail) + 1 if tail else 0)
    base = base[:room].rstrip("-")
    return "-".join(part for part in (base, digest, tail) if part)


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


def service_name(md_name: str) -> str:
    """The stable Service (and ServiceAccount, PDB, NetworkPolicy, Ingress, HTTPRoute)."""
    return dns_label(md_name)


def canary_service_name(md_name: str) -> str:
    """The canary Service ``NAME-canary`` (issue 3)."""
    return dns_label(md_name, "-canary")


def deployment_name(md_name: str, version: str) -> str:
    """The Deployment (and its HPA) serving one model version: ``NAME-vVERSION``."""
    return dns_label(md_name, f"-v{version}")

"""Which MLflow registries the operator talks to, and keeping their secrets out of sight.

A ModelDeployment's author is trusted within its namespace only. The operator reads the
Secret spec.model.registry.credentialsSecret names (it has ``get`` on Secrets in every
namespace it serves) and sends it to the tracking server the spec names; the runtime pods
get the same Secret and URI. So the host of the tracking URI must be one the platform
trusts (operator setting ``allowed_tracking_hosts``; by default only the host of
``default_tracking_uri``): any other is refused before a Secret is read or a child
rendered. The check runs on the host as both URL parsers involved see it (the standard
library's and requests'): a URI they disagree on is refused.

Credentials never sit in a URI (the CRD refuses ``user:password@`` in trackingUri, and
the settings refuse it in default_tracking_uri); :func:`redact` still removes them from
any text the operator writes (status, Events, logs), in case one got through.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import requests

from modelship_operator import api
from modelship_operator.settings import OperatorSettings

HOST_NOT_ALLOWED = "TrackingHostNotAllowed"

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][-+.A-Za-z0-9]*://)[^/?#\s@]*@")


def redact(text: str) -> str:
    """`text` with the user information of every URL in it (``user:password@``) replaced
    by ``***@``."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


class RedactingFilter(logging.Filter):
    """A log filter that passes every record with :func:`redact` applied to its message.

    kopf logs whole objects at debug level (``--verbose``), a URI with a password in an
    object stored before the CRD refused it included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def redact_logs(logger: logging.Logger | None = None) -> None:
    """Put a :class:`RedactingFilter` on every handler of `logger` (default: the root)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def tracking_uri(md: api.ModelDeployment, settings: OperatorSettings) -> str | None:
    """The tracking URI the ModelDeployment uses: its own, else the operator's default."""
    return md.spec.model.registry.tracking_uri or settings.default_tracking_uri or None


def host_of(uri: str) -> str | None:
    """The host of an http(s) URI, lower case, when the standard library and requests
    (which the operator's and MLflow's clients send with) agree on it."""
    if not re.fullmatch(r"[!-~]+", uri):
        return None  # clients strip or drop spaces and control characters: no one host
    prepared = requests.PreparedRequest()
    try:
        parts = urlsplit(uri)
        prepared.prepare_url(uri, None)
        theirs = urlsplit(prepared.url or "").hostname
    except (ValueError, requests.RequestException):
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if (theirs or "").lower() != parts.hostname.lower():
        return None
    return parts.hostname.lower()


def allowed_hosts(settings: OperatorSettings) -> list[str]:
    """The host patterns tracking URIs may name (see the module docstring)."""
    if settings.allowed_tracking_hosts:
        return [h.strip().lower() for h in settings.allowed_tracking_hosts if h.strip()]
    default = host_of(settings.default_tracking_uri or "")
    return [default] if default else []


def host_problem(uri: str, allowed: Sequence[str]) -> str | None:
    """Why the operator will not use `uri`, or None when its host is allowed."""
    host = host_of(uri)
    if host is None:
        return (f"spec.model.registry.trackingUri: {redact(uri)!r} is not an http:// or "
                "https:// URL with a host")
    if not any(fnmatch.fnmatchcase(host, pattern) for pattern in allowed):
        trusted = ", ".join(allowed) or "none: the operator has no default tracking URI"
        return (f"spec.model.registry.trackingUri: host {host} is not one the operator "
                f"trusts (allowed_tracking_hosts: {trusted}); nothing is rendered and no "
                "credentials are read")
    return None


def registry_problem(md: api.ModelDeployment, settings: OperatorSettings) -> str | None:
    """Why the operator will not use this ModelDeployment's registry; None: it may."""
    uri = tracking_uri(md, settings)
    if uri is None:
        return None  # reported elsewhere: no tracking URI at all
    return host_problem(uri, allowed_hosts(settings))

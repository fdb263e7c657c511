"""Credentials out of everything the runtime says: ``user:password@`` in URIs.

A tracking URI (``https://user:token@mlflow...``), a Redis URL
(``redis://:password@redis:6379/0``) or a model source may carry credentials, and they
reach logs and error messages through our own text and through the exceptions of the
libraries underneath. :func:`redact` rewrites the userinfo of every URI in a text to
``***@``; :class:`RedactingFormatter` applies it to every log record the runtime emits
(message, ``extra`` fields and tracebacks: the whole formatted line).
"""

from __future__ import annotations

import logging
import re

# scheme://userinfo@ : the userinfo is everything up to the last '@' before the host part
# (no '/', '?', '#', whitespace, quotes or backslash in between: none of them is legal
# there unencoded), so passwords holding '@' are covered too.
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s@\"'<>\\]*(?:@[^/?#\s@\"'<>\\]*)*@")


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` of every URI in it replaced by ``***@``."""
    if "://" not in text:
        return text
    return _USERINFO.sub(r"\g<scheme>***@", text)


class RedactingFormatter(logging.Formatter):
    """Wraps a formatter and redacts the whole line it makes (message, extra fields and
    traceback alike), whoever logged it."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        """The inner formatter's line, redacted."""
        return redact(self.inner.format(record))

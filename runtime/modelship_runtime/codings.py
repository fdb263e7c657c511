"""Compressed request bodies: ``Content-Encoding: gzip`` or ``deflate``.

tritonclient's HTTP client compresses its requests when asked
(``request_compression_algorithm``), and any HTTP client may. A compressed body is
decompressed before anything reads it, and the body's byte cap (``max_body_bytes``)
bounds what it decompresses to, not what came over the wire: a few kilobytes that
inflate to gigabytes (a "zip bomb") are stopped at the cap, having cost no more memory
than the cap. Answers are never compressed: model answers are small and compressing
them costs the server CPU on every request.

``deflate`` is decoded as HTTP defines it (a zlib stream, RFC 9110 8.4.1.2) and, as
browsers and curl also do, as a raw deflate stream when it has no zlib header.
"""

from __future__ import annotations

import zlib

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

SUPPORTED = "gzip, deflate or identity"
_GZIP = 31  # zlib's wbits for a gzip member
_ZLIB = 15
_RAW = -15


def codings(value: bytes) -> list[str]:
    """The codings a ``Content-Encoding`` header lists, in the order they were applied,
    without ``identity``; UnsupportedMediaType (415) for one this server cannot undo."""
    out = []
    for part in value.decode("latin-1").split(","):
        name = part.strip().lower()
        if name in ("", "identity"):
            continue
        if name == "x-gzip":
            name = "gzip"
        if name not in ("gzip", "deflate"):
            raise UnsupportedMediaType(f"Content-Encoding {part.strip()[:32]!r} is not "
                                       f"supported: send the body as {SUPPORTED}")
        out.append(name)
    if len(out) > 2:
        raise UnsupportedMediaType(f"Content-Encoding lists {len(out)} codings; at most 2 "
                                   "are undone")
    return out


def of_request(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The codings a request's ``Content-Encoding`` headers list (:func:`codings`);
    empty for a plain body."""
    found = [v for k, v in headers if k == b"content-encoding"]
    if not found:
        return []
    return codings(b",".join(found))


def decode(raw: bytes, applied: list[str], limit: int) -> bytes:
    """``raw`` with the codings ``applied`` (:func:`codings`) undone, last first:
    PayloadTooLarge (413) when it would exceed ``limit`` bytes, BadRequest (400) when it
    is not a complete stream of its coding."""
    for name in reversed(applied):
        raw = _gunzip(raw, limit) if name == "gzip" else _inflate(raw, limit)
    return raw


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"body is over the {limit} byte limit once decompressed")


def _run(d: zlib._Decompress, data: bytes, limit: int, out: list[bytes], size: int
         ) -> int:
    """Feed ``data`` to ``d`` and append its output to ``out``, never more than
    ``limit`` bytes in all (``size`` already held); the new size."""
    piece = d.decompress(data, limit + 1 - size)
    size += len(piece)
    out.append(piece)
    if size > limit or d.unconsumed_tail:
        raise _too_large(limit)
    return size


def _gunzip(raw: bytes, limit: int) -> bytes:
    out: list[bytes] = []
    size = 0
    data = raw
    while True:  # a gzip body may hold several members, one after another
        d = zlib.decompressobj(_GZIP)
        try:
            size = _run(d, data, limit, out, size)
        except zlib.error as exc:
            raise BadRequest(f"the gzip body cannot be decompressed: {exc}") from None
        if not d.eof:
            raise BadRequest("the gzip body is truncated")
        data = d.unused_data
        if not data:
            return b"".join(out)


def _inflate(raw: bytes, limit: int) -> bytes:
    out: list[bytes] = []
    d = zlib.decompressobj(_ZLIB)
    try:
        _run(d, raw, limit, out, 0)
    except zlib.error:
        out = []
        d = zlib.decompressobj(_RAW)
        try:
            _run(d, raw, limit, out, 0)
        except zlib.error as exc:
            raise BadRequest(f"the deflate body cannot be decompressed: {exc}") from None
    if not d.eof:
        raise BadRequest("the deflate body is truncated")
    if d.unused_data:
        raise BadRequest("the deflate body has bytes after its end")
    return b"".join(out)

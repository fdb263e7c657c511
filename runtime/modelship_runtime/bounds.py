"""Request bodies bounded before they are parsed, and large ones parsed off the event loop.

Parsing is where a hostile body costs: 4 MiB of ``[],`` is 1.4 million empty rows, and
``orjson.loads`` spent ~0.4 s building them on the event loop, long enough for
readiness probes to time out. So before parsing, :func:`precheck` counts the body's
structure with ``bytes.count`` (about 1 ms for 4 MiB, 100 ns for a usual request):

* ``[`` and ``{``: a request carries at most ``max_rows`` rows of one array each, plus
  a few arrays and objects of the protocol's envelope (:data:`ENVELOPE`);
* ``,``: at most ``max_rows`` x ``max_columns`` values (``max_columns`` is the model's
  width when known), plus the separators of the rows and the envelope.

A body over either is refused (400, naming the setting) without being parsed. The
counts are an upper bound of the structure and include characters inside strings, so a
body full of strings of brackets or commas is refused too: no protocol field needs them.

Bodies larger than :data:`OFFLOAD_BYTES` (parsing them costs more than about a
millisecond) are parsed, validated and converted to a float64 matrix on one worker
thread, one body at a time, so the event loop keeps answering health probes and small
requests meanwhile, and the memory that parsed bodies take is that of one body.
``orjson`` and NumPy hold the GIL for each call they make, so the loop still waits for
the longest single call (tens of milliseconds for a 4 MiB body of numbers); only that
bound, never the sum of the calls, is added to the latency of other requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .errors import BadRequest

T = TypeVar("T")

OFFLOAD_BYTES = 64 * 1024
"""Bodies larger than this are parsed on the decode thread."""

ENVELOPE = 16
"""Arrays and objects a request may hold besides its rows (the V2 ``inputs`` list, its
tensor object, ``shape``, ``outputs``, ``parameters``...)."""


def precheck(raw: bytes, max_rows: int, max_columns: int) -> None:
    """Refuse, without parsing it, a body holding more rows or values than allowed."""
    size = len(raw)
    allowed = max_rows * max_columns + max_rows + 4 * ENVELOPE
    if size <= max_rows + ENVELOPE and size < allowed:
        return  # too short to hold too many of either: a usual request is not counted
    containers = raw.count(b"[") + raw.count(b"{")
    if containers > max_rows + ENVELOPE:
        raise BadRequest(
            f"the body holds {containers} JSON arrays and objects; a request carries at "
            f"most {max_rows} rows (MODELSHIP_MAX_ROWS) of one array each")
    separators = raw.count(b",")
    if separators >= allowed:
        raise BadRequest(
            f"the body holds more than {allowed} values; a request carries at most "
            f"{max_rows} rows (MODELSHIP_MAX_ROWS) of {max_columns} values "
            "(MODELSHIP_MAX_COLUMNS, or the model's number of features)")


class Decoder:
    """Runs the parsing of large bodies on one worker thread."""

    def __init__(self, offload_bytes: int = OFFLOAD_BYTES) -> None:
        self.offload_bytes = offload_bytes
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix="modelship-decode")

    async def run(self, raw: bytes, parse: Callable[..., T], *args: Any) -> T:
        """``parse(raw, *args)``, on the worker thread when ``raw`` is large."""
        if len(raw) <= self.offload_bytes:
            return parse(raw, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, parse, raw,
                                                                *args)

    async def offload(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` on the worker thread, whatever its size (decompressing a body,
        whose size on the wire says nothing of what it inflates to)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)

    def close(self) -> None:
        """Stop the worker thread after the bodies already queued."""
        self._executor.shutdown(wait=True)

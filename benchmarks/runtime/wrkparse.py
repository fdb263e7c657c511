"""Parse the text `wrk --latency` prints into numbers.

wrk has no machine-readable output without a Lua `done()` hook, and a hook that
walks the latency histogram costs nothing during the run but couples the benchmark
to wrk's Lua API. Its text is stable across 4.x releases, so we read that instead:
requests/sec, the latency percentiles of `--latency`, socket errors, and the
"Non-2xx or 3xx responses" line (absent when every answer was 2xx/3xx).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}

_RE_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$", re.M)
_RE_REQUESTS = re.compile(
    r"^\s*(\d+) requests in (\d+(?:\.\d+)?)(us|ms|s|m|h), (\d+(?:\.\d+)?)([KMGT]?B) read", re.M
)
_RE_RPS = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)\s*$", re.M)
_RE_NON2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)\s*$", re.M)
_RE_SOCKET = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$", re.M
)
_RE_LAT_AVG = re.compile(
    r"^\s*Latency\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)"
    r"\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)",
    re.M,
)


class WrkParseError(ValueError):
    """The text is not the output of a completed `wrk --latency` run."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run. Latencies in milliseconds; `errors` counts socket errors."""

    requests: int
    duration_s: float
    rps: float
    latency_avg_ms: float
    latency_max_ms: float
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    non_2xx: int = 0
    errors_connect: int = 0
    errors_read: int = 0
    errors_write: int = 0
    errors_timeout: int = 0

    @property
    def p50_ms(self) -> float:
        return self.percentiles_ms["50"]

    @property
    def p99_ms(self) -> float:
        return self.percentiles_ms["99"]

    @property
    def socket_errors(self) -> int:
        return self.errors_connect + self.errors_read + self.errors_write + self.errors_timeout

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["p50_ms"] = self.p50_ms
        d["p99_ms"] = self.p99_ms
        d["socket_errors"] = self.socket_errors
        return d


def _ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_MS[unit]


def _pct_key(raw: str) -> str:
    number = float(raw)
    return str(int(number)) if number.is_integer() else str(number)


def parse_wrk(text: str) -> WrkResult:
    """Parse the stdout of `wrk --latency`; raise WrkParseError when it is incomplete."""
    rps = _RE_RPS.search(text)
    reqs = _RE_REQUESTS.search(text)
    lat = _RE_LAT_AVG.search(text)
    if rps is None or reqs is None or lat is None:
        raise WrkParseError(f"not a completed wrk run: {text[:200]!r}")
    percentiles = {_pct_key(p): _ms(v, u) for p, v, u in _RE_PERCENTILE.findall(text)}
    if "50" not in percentiles or "99" not in percentiles:
        raise WrkParseError("no latency distribution: was wrk run with --latency?")
    non2xx = _RE_NON2XX.search(text)
    sock = _RE_SOCKET.search(text)
    connect, read, write, timeout = (int(g) for g in sock.groups()) if sock else (0, 0, 0, 0)
    return WrkResult(
        requests=int(reqs.group(1)),
        duration_s=_ms(reqs.group(2), reqs.group(3)) / 1000.0,
        rps=float(rps.group(1)),
        latency_avg_ms=_ms(lat.group(1), lat.group(2)),
        latency_max_ms=_ms(lat.group(5), lat.group(6)),
        percentiles_ms=percentiles,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        errors_connect=connect,
        errors_read=read,
        errors_write=write,
        errors_timeout=timeout,
    )

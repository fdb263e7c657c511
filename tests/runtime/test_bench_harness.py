"""The runtime benchmark's wrk-output parser, on outputs captured from real wrk 4.x runs.

Only the parser: the benchmark itself (benchmarks/runtime/run.py) takes minutes and
is run by `make bench-runtime`, never by the test suite.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "runtime" / "wrkparse.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_wrkparse", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


wrkparse = _load()

# python -m http.server answering every POST with 501: all non-2xx
NON_2XX = """\
Running 2s test @ http://127.0.0.1:18999/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.53ms    2.09ms  14.61ms   83.92%
    Req/Sec     1.74k   238.37     2.22k    70.00%
  Latency Distribution
     50%    1.66ms
     75%    3.39ms
     90%    5.52ms
     99%    9.36ms
  3455 requests in 2.00s, 1.83MB read
  Non-2xx or 3xx responses: 3455
Requests/sec:   1724.44
Transfer/sec:      0.91MB
"""

# the bare FastAPI baseline under other load: seconds as the unit
SECONDS = """\
Running 2s test @ http://127.0.0.1:52457/predict
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   361.84ms  497.51ms   1.66s    81.67%
    Req/Sec    45.89    110.61   340.00     88.89%
  Latency Distribution
     50%   25.47ms
     75%  711.21ms
     90%    1.24s~
     99%    1.66s~
  47 requests in 2.00s, 15.74KB read
Requests/sec:     23.45
Transfer/sec:      7.85KB
""".replace("~", " ")  # wrk pads these two lines with a blank

# a server that answered nothing within the run
NOTHING = """\
Running 2s test @ http://127.0.0.1:32871/predict
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     0.00      0.00     0.00      -nan%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  0 requests in 2.01s, 0.00B read
Requests/sec:      0.00
Transfer/sec:       0.00B
"""

# the same run with wrk's socket-error line added, as wrk prints it after timeouts
_READ = "  47 requests in 2.00s, 15.74KB read\n"
SOCKET_ERRORS = SECONDS.replace(
    _READ, _READ + "  Socket errors: connect 0, read 3, write 1, timeout 12\n"
)


def test_non_2xx_and_millisecond_percentiles() -> None:
    r = wrkparse.parse_wrk(NON_2XX)
    assert r.requests == 3455
    assert r.duration_s == pytest.approx(2.0)
    assert r.rps == pytest.approx(1724.44)
    assert r.non_2xx == 3455
    assert r.p50_ms == pytest.approx(1.66)
    assert r.p99_ms == pytest.approx(9.36)
    assert r.percentiles_ms == pytest.approx({"50": 1.66, "75": 3.39, "90": 5.52, "99": 9.36})
    assert r.latency_avg_ms == pytest.approx(2.53)
    assert r.latency_max_ms == pytest.approx(14.61)
    assert r.socket_errors == 0


def test_seconds_are_converted_and_absent_non_2xx_is_zero() -> None:
    r = wrkparse.parse_wrk(SECONDS)
    assert r.requests == 47
    assert r.rps == pytest.approx(23.45)
    assert r.p50_ms == pytest.approx(25.47)
    assert r.percentiles_ms["90"] == pytest.approx(1240.0)
    assert r.p99_ms == pytest.approx(1660.0)
    assert r.latency_max_ms == pytest.approx(1660.0)
    assert r.non_2xx == 0


def test_socket_errors_are_summed() -> None:
    r = wrkparse.parse_wrk(SOCKET_ERRORS)
    assert (r.errors_connect, r.errors_read, r.errors_write, r.errors_timeout) == (0, 3, 1, 12)
    assert r.socket_errors == 16
    assert r.to_dict()["socket_errors"] == 16


def test_microseconds_and_an_empty_run() -> None:
    r = wrkparse.parse_wrk(NOTHING)
    assert r.requests == 0
    assert r.rps == 0.0
    assert r.duration_s == pytest.approx(2.01)


def test_incomplete_output_is_refused() -> None:
    with pytest.raises(wrkparse.WrkParseError):
        wrkparse.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")
    without_latency = "\n".join(
        line for line in NON_2XX.splitlines() if "%" not in line or "Latency" in line
    )
    with pytest.raises(wrkparse.WrkParseError, match="--latency"):
        wrkparse.parse_wrk(without_latency)

"""Settings shared by every test directory.

The runtime serves gRPC on port 8081 by default; runtimes that tests start (and the
helpers under tests/operator and tests/packaging start several at once, in parallel
pytest processes) would all want that one port. Tests that exercise gRPC give each
runtime a free port of its own; every other runtime a test starts has none.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # ports.py, for every test directory

os.environ.setdefault("MODELSHIP_GRPC_PORT", "0")

# The registry servers the tests start serve models only: MLflow's job execution (a pool
# of huey consumer processes per server, ~1 GB each server) has nothing to do there.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """A run stopped with SIGTERM (``timeout``, a CI job's cancel) still tears its fixtures
    down: the servers the tests started (MLflow, redis-server, Prometheus, runtimes) are
    stopped by their fixtures instead of being left running without a parent."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _interrupt)

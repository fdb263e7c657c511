"""Settings every test process starts from.

The runtime serves gRPC on port 8081 by default; runtimes that tests start (and the
helpers under tests/operator and tests/packaging start several at once, in parallel
pytest processes) would all want that one port. Tests that exercise gRPC give each
runtime a free port of its own; every other runtime a test starts has none.
"""

from __future__ import annotations

import os

os.environ.setdefault("MODELSHIP_GRPC_PORT", "0")

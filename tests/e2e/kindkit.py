"""Where the e2e suite finds its cluster and tools (shared by conftest and the tests)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLUSTER = os.environ.get("CLUSTER", "modelship-demo")
CONTEXT = f"kind-{CLUSTER}"


def tool(name: str) -> str | None:
    """`name` from ./bin (where make demo fetches it), else from PATH."""
    local = REPO / "bin" / name
    return str(local) if local.exists() else shutil.which(name)

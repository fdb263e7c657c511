"""The two images: what they are called, and reading their Dockerfiles (stages,
instructions, arguments) for the tests that check them (test_images.py), replay their
build (test_image_envs.py) and keep their names equal everywhere (test_names.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES = {"operator": REPO / "Dockerfile.operator", "runtime": REPO / "Dockerfile.runtime"}
#: The one name of each image, wherever an image is named (chart, kustomize, operator
#: default, demo, README, .github/workflows/images.yml).
IMAGE_NAMES = {"operator": "ghcr.io/modelship/modelship-operator",
               "runtime": "ghcr.io/modelship/modelship-runtime"}
#: The distribution each image installs, from the folder of the same name (IMAGE/).
DISTRIBUTIONS = {"operator": "modelship-operator", "runtime": "modelship-runtime"}


def stages(dockerfile: Path) -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(line)
    return found


def arg_default(dockerfile: Path, name: str) -> str:
    """The default of a global `ARG name=value` (before the first FROM)."""
    match = re.search(rf"^ARG {re.escape(name)}=(\S+)$", dockerfile.read_text(), re.M)
    if match is None:
        raise ValueError(f"{dockerfile.name} has no ARG {name}=...")
    return match.group(1)


def copies(stage: list[str]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from a stage)."""
    found = []
    for instruction in stage:
        if instruction.startswith("COPY ") and "--from" not in instruction:
            words = [w for w in instruction.split()[1:] if not w.startswith("--")]
            found.append((words[:-1], words[-1]))
    return found


def exec_form(stage: list[str], keyword: str) -> list[str]:
    """The JSON (exec) form of the stage's ENTRYPOINT or CMD."""
    for instruction in reversed(stage):
        if instruction.startswith(keyword + " "):
            value = json.loads(instruction[len(keyword) + 1:])
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ValueError(f"{keyword} is not in exec form: {instruction}")
            return value
    raise ValueError(f"the stage has no {keyword}")

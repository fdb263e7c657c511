"""The shell blocks of the documentation, each with what its mark says about running it.

Every ```sh (or bash, shell, console) block of README.md, runtime/README.md and docs/*.md
carries a mark on the line before it:

    <!-- readme-test: runs offline -->                      run here as it is (test_readme)
    <!-- readme-test: talks to a runtime -->                run against a real runtime
    <!-- readme-test: talks to a runtime with API keys -->  ... one with auth on
    <!-- readme-test: skip, REASON -->                      not run, and the reason why

A block talking to a runtime names it as http://localhost:8080 (the runtime's own
address) or http://iris.example.com (the examples' Ingress host); the test puts the real
runtime's address there. A curl line expects a 2xx answer unless its comment starts with
another status: ``curl ... # 401: no key``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from artifacts import REPO

DOCS = sorted([REPO / "README.md", REPO / "runtime" / "README.md",
               *(REPO / "docs").glob("*.md")])
RUNS_OFFLINE = "runs offline"
RUNTIME = "talks to a runtime"
RUNTIME_WITH_KEYS = "talks to a runtime with API keys"
SKIP = "skip, "
RUNTIME_HOSTS = ("http://localhost:8080", "http://iris.example.com")
# What a request to a runtime looks like: curl, and a route the runtime serves.
RUNTIME_ROUTE = re.compile(
    r"/(predict|invocations|v1/models|v2\b|healthz|readyz|metrics)")

_BLOCK = re.compile(r"^(?:<!-- readme-test: (?P<mark>[^>]*?) -->\n)?"
                    r"```(?P<lang>sh|bash|shell|console)\n(?P<body>.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    mark: str | None
    body: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        return self.mark[len(SKIP):] if self.mark and self.mark.startswith(SKIP) else None

    def talks_to_a_runtime(self) -> bool:
        """Whether some command of the block sends curl to a runtime route."""
        return any(c[:1] == ["curl"] and any(RUNTIME_ROUTE.search(w) for w in c)
                   for c in commands(self.body))


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("lang")) + 1
            found.append(Block(path, line, match.group("mark"), match.group("body")))
    return found


def logical_lines(body: str) -> list[str]:
    """The block's lines with backslash continuations joined, comment lines left out."""
    joined = body.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and
            not line.lstrip().startswith("#")]


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment) of one line; a # inside quotes is not a comment."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line, ""


def commands(body: str) -> list[list[str]]:
    """Each command of the block as words (pipelines split at |)."""
    out = []
    for line in logical_lines(body):
        command, _ = split_comment(line)
        for part in re.split(r"\s\|\s", command):
            words = shlex.split(part)
            if words:
                out.append(words)
    return out


def expected_statuses(body: str) -> list[range | int]:
    """What each curl line of the block expects, in order: a status its comment names,
    else any 2xx."""
    expected: list[range | int] = []
    for line in logical_lines(body):
        command, comment = split_comment(line)
        if shlex.split(command)[:1] != ["curl"]:
            continue
        status = re.match(r"([1-5][0-9]{2})\b", comment)
        expected.append(int(status.group(1)) if status else range(200, 300))
    return expected


def yaml_blocks() -> list[tuple[str, str]]:
    """(where, body) of every ```yaml block of the documentation."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.M | re.S):
            where = f"{path.relative_to(REPO)}:{text.count(chr(10), 0, match.start()) + 1}"
            found.append((where, match.group(1)))
    return found

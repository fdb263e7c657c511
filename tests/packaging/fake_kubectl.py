"""A stand-in for kubectl with the few commands the demo's rollout stage sends, answered
from a JSON file the test controls (no cluster runs here).

    FAKE_KUBECTL_STATE=state.json FAKE_KUBECTL_LOG=calls.jsonl python fake_kubectl.py ARGS

The state file maps "NAMESPACE/NAME" to a ModelDeployment object. Supported, as kubectl
answers them: ``-n NS get md NAME -o jsonpath=TEMPLATE`` (field paths, ``[?(@.k=="v")]``
filters and string literals; a missing field prints nothing), ``-n NS patch md NAME
--type merge -p JSON`` (an RFC 7386 merge patch written back to the file), ``-n NS
describe md NAME`` and ``config use-context NAME``. Every call is logged as one JSON line;
anything else is refused with exit status 2, so a script cannot rely on a command the
fake does not really answer.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

RESOURCES = {"md", "modeldeployment", "modeldeployments", "modeldeployments.modelship.io"}


def _format(value: Any) -> str:
    """A value as kubectl's jsonpath prints it (Go's %v for scalars, JSON otherwise)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


_STEP = re.compile(r"\.([A-Za-z0-9_-]+)|\[\?\(@\.([A-Za-z0-9_-]+)==\"([^\"]*)\"\)\]")


def _select(obj: Any, path: str) -> list[Any]:
    values = [obj]
    pos = 0
    while pos < len(path):
        match = _STEP.match(path, pos)
        if match is None:
            raise ValueError(f"unsupported jsonpath {path!r} at {path[pos:]!r}")
        field, key, wanted = match.groups()
        found: list[Any] = []
        for value in values:
            if field is not None and isinstance(value, dict) and field in value:
                found.append(value[field])
            elif key is not None and isinstance(value, list):
                found += [v for v in value if isinstance(v, dict) and str(v.get(key)) == wanted]
        values = found
        pos = match.end()
    return values


def jsonpath(obj: Any, template: str) -> str:
    """kubectl's ``-o jsonpath=TEMPLATE`` for the subset the demo's scripts use."""
    out = []
    for literal, expr in re.findall(r"([^{]*)(?:\{([^}]*)\})?", template):
        out.append(literal)
        if not expr:
            continue
        if expr.startswith('"') and expr.endswith('"'):
            out.append(json.loads(expr))
        elif expr.startswith("."):
            out.append(" ".join(_format(v) for v in _select(obj, expr)))
        else:
            raise ValueError(f"unsupported jsonpath expression {{{expr}}}")
    return "".join(out)


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the state file at once, so a concurrent reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _describe(obj: dict[str, Any]) -> str:
    lines = [f"Name:         {obj['metadata']['name']}",
             f"Namespace:    {obj['metadata']['namespace']}", "Status:"]
    lines += ["  " + line for line in json.dumps(obj.get("status", {}), indent=2).splitlines()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    state_path = Path(os.environ["FAKE_KUBECTL_STATE"])
    with Path(os.environ["FAKE_KUBECTL_LOG"]).open("a") as log:
        log.write(json.dumps(argv) + "\n")
    args = list(argv)
    if args[:2] == ["config", "use-context"] and len(args) == 3:
        print(f'Switched to context "{args[2]}".')
        return 0
    namespace = "default"
    if args[:1] == ["-n"] and len(args) > 1:
        namespace, args = args[1], args[2:]
    if len(args) < 3 or args[1] not in RESOURCES:
        print(f"fake kubectl: unsupported command: {' '.join(argv)}", file=sys.stderr)
        return 2
    verb, name, rest = args[0], args[2], args[3:]
    state = json.loads(state_path.read_text())
    obj = state.get(f"{namespace}/{name}")
    if obj is None:
        print(f'Error from server (NotFound): modeldeployments.modelship.io "{name}" not found',
              file=sys.stderr)
        return 1
    if verb == "get" and len(rest) == 2 and rest[0] == "-o" and rest[1].startswith("jsonpath="):
        sys.stdout.write(jsonpath(obj, rest[1].removeprefix("jsonpath=")))
        return 0
    if verb == "patch" and len(rest) == 4 and rest[:3] == ["--type", "merge", "-p"]:
        state[f"{namespace}/{name}"] = merge_patch(obj, json.loads(rest[3]))
        write_state(state_path, state)
        print(f"modeldeployment.modelship.io/{name} patched")
        return 0
    if verb == "describe" and not rest:
        sys.stdout.write(_describe(obj))
        return 0
    print(f"fake kubectl: unsupported command: {' '.join(argv)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The ``modelship`` command: ``modelship render`` previews what the operator would apply.

A GitOps user runs it before committing a ModelDeployment::

    modelship render -f examples/minimal.yaml | kubectl diff -f -

and previews a rollout mid-way with ``--canary-version V --weight W`` (the objects the
operator applies while version V gets W% of the traffic).

It renders offline with the operator's own code (no cluster, no registry), so what it
prints is what the operator applies, except the ownerReference uid (a placeholder when
the manifest has none) and the hash annotation the operator adds for its change check.

Exit codes (the table in docs/cli.md, which ``EXIT_*`` below follow; a test holds them
together): 0 all rendered; 1 some manifest is invalid or cannot be honoured (stderr names
the field, and nothing is printed for that manifest; the others still are); 2 usage,
unreadable file or YAML that does not parse (nothing printed); 130/143 interrupted;
141 stdout closed early (``| head``). Every expected failure is one line on stderr,
without a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from modelship_operator import __version__, api
from modelship_operator.render import RenderError, RolloutState, render
from modelship_operator.settings import OperatorSettings

#: The distribution on PyPI that ships this package (operator/pyproject.toml).
DISTRIBUTION = "modelship-operator"
EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_SIGNAL_BASE = 128  # interrupted by signal N: 128 + N (SIGINT 130, SIGPIPE 141)


def version_string() -> str:
    """``modelship X``, X from the installed distribution's metadata (the package's own
    ``__version__`` when it is not installed)."""
    from importlib import metadata

    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = __version__
    return f"modelship {version}"


class _Version(argparse.Action):
    """``--version``, looked up only when asked (importlib.metadata is slow to import)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_string())
        parser.exit()


class _Dumper(yaml.SafeDumper):
    """Block-style YAML without anchors, long strings kept on one line."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelship", description="modelship: ship MLflow models to Kubernetes.",
        epilog="Exit codes: docs/cli.md (0 ok, 1 invalid manifest, 2 usage).",
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "render",
        help="print the objects the operator would apply for ModelDeployment manifests",
        description="Print, as a YAML stream, every object the operator would apply for "
        "the ModelDeployments in the given files (documents of other kinds are skipped).",
    )
    r.add_argument(
        "-f", "--filename", dest="files", action="append", required=True, metavar="FILE",
        help="a YAML file of one or more documents; '-' reads stdin; may be repeated",
    )
    r.add_argument(
        "--tracking-uri", metavar="URI",
        help="MLflow tracking URI for manifests that set none "
        "(the operator's MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI)",
    )
    r.add_argument(
        "--image", metavar="IMAGE",
        help="runtime image for manifests that set none (MODELSHIP_OPERATOR_RUNTIME_IMAGE)",
    )
    r.add_argument(
        "--alias-version", metavar="VERSION",
        help="the version spec.model.alias resolves to (rendering does not ask the registry); "
        "default: status.model.resolvedVersion of the manifest",
    )
    r.add_argument(
        "--canary-version", metavar="V",
        help="preview mid-rollout: version V is the canary next to the stable version "
        "(canary Deployment NAME-vV, Service NAME--canary, canary Ingress or HTTPRoute weights)",
    )
    r.add_argument(
        "--weight", type=int, metavar="W",
        help="percent of traffic the canary gets, 0-100 (with --canary-version; default 0, "
        "a canary whose pods are not ready yet)",
    )
    return parser


@dataclass
class _Document:
    source: str  # "FILE" or "FILE#N" for the N-th document (from 1) of a stream
    body: Any


def _read(files: Sequence[str], stdin: TextIO) -> list[_Document]:
    """Every non-empty document of every file; raises SystemExit(2) with a message."""
    docs: list[_Document] = []
    stdin_text: str | None = None
    for name in files:
        try:
            if name == "-":
                if stdin_text is None:
                    stdin_text = stdin.read()
                text, label = stdin_text, "<stdin>"
            else:
                with open(name, encoding="utf-8") as handle:
                    text, label = handle.read(), name
        except OSError as exc:
            raise SystemExit(_fail(f"error: cannot read {name}: {exc.strerror or exc}")) from None
        except UnicodeDecodeError as exc:
            raise SystemExit(_fail(f"error: cannot read {name}: not UTF-8 text ({exc.reason} "
                                   f"at byte {exc.start})")) from None
        try:
            bodies = [b for b in yaml.safe_load_all(text) if b is not None]
        except yaml.YAMLError as exc:
            raise SystemExit(_fail(f"error: {label}: not valid YAML: {exc}")) from None
        for i, body in enumerate(bodies, start=1):
            docs.append(_Document(label if len(bodies) == 1 else f"{label}#{i}", body))
    return docs


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return EXIT_USAGE


def wire_path(body: Any, loc: Sequence[int | str]) -> str:
    """The field path of a pydantic error location in the manifest's own names.

    Steps that are not in the data (the tags pydantic adds for union members and
    validators, e.g. ``int`` or ``function-after[...]``) are left out; list indexes
    are written ``[i]``: ``spec.runtime.env[0].name``.
    """
    path = ""
    node = body
    for part in loc:
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path += f"[{part}]"
            node = node[part]
        elif isinstance(node, dict) and str(part) in node:
            path += f".{part}" if path else str(part)
            node = node[str(part)]
        elif isinstance(node, dict) and isinstance(part, str) and not _is_tag(part):
            path += f".{part}" if path else part  # a missing required field
            node = None
    return path


def _is_tag(part: str) -> bool:
    return "[" in part or part in {"int", "str", "float", "bool", "constrained-str"}


def _errors(body: Any, exc: ValidationError) -> list[str]:
    """One line per field: ``path: message`` (the alternatives of a union joined by 'or')."""
    by_path: dict[str, list[str]] = {}
    for error in exc.errors():
        path = wire_path(body, error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if message not in by_path.setdefault(path, []):
            by_path[path].append(message)
    lines = []
    for path, messages in by_path.items():
        text = " or ".join(messages)
        lines.append(f"{path}: {text}" if path and not text.startswith(path) else text)
    return lines


def _name(body: Any) -> str:
    meta = body.get("metadata") if isinstance(body, dict) else None
    return str(meta.get("name")) if isinstance(meta, dict) and meta.get("name") else "?"


def _render_one(
    doc: _Document,
    settings: OperatorSettings,
    alias_version: str | None,
    canary: tuple[str, int] | None = None,
) -> list[dict[str, Any]] | list[str]:
    """The objects of one manifest, or its error lines (strings)."""
    try:
        md = api.ModelDeployment.model_validate(doc.body)
    except ValidationError as exc:
        return _errors(doc.body, exc)
    version = md.spec.model.version
    if version is None:
        resolved = md.status.model.resolved_version if md.status.model else None
        version = alias_version or resolved
    if not version:
        return [
            f"spec.model.alias: {md.spec.model.alias!r} is resolved by the registry at "
            "apply time; pass --alias-version VERSION to preview it"
        ]
    state = RolloutState(stable_version=version)
    if canary is not None:
        if canary[0] == version:
            return [f"--canary-version {canary[0]}: that is the stable version; a canary "
                    "is another version"]
        state = RolloutState(version, canary_version=canary[0], canary_weight=canary[1])
    try:
        return render(md, state, settings)
    except RenderError as exc:
        hint = " (or pass --tracking-uri)" if exc.field == "spec.model.registry.trackingUri" else ""
        return [f"{exc.field}: {exc}{hint}"]


def render_command(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    canary: tuple[str, int] | None = None
    if args.weight is not None and args.canary_version is None:
        return _fail("error: --weight needs --canary-version")
    if args.canary_version is not None:
        weight = 0 if args.weight is None else args.weight
        if not 0 <= weight <= 100:
            return _fail(f"error: --weight {weight}: must be 0-100")
        if not re.fullmatch(r"[1-9][0-9]*", args.canary_version):
            return _fail(
                f"error: --canary-version {args.canary_version!r}: an MLflow model version "
                "number (1, 2, ...)"
            )
        canary = (args.canary_version, weight)
    overrides: dict[str, Any] = {}
    if args.tracking_uri:
        overrides["default_tracking_uri"] = args.tracking_uri
    if args.image:
        overrides["runtime_image"] = args.image
    try:
        settings = OperatorSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        flag = {"default_tracking_uri": "--tracking-uri", "runtime_image": "--image"}.get(
            str(first["loc"][0]), str(first["loc"][0]))
        return _fail(f"error: {flag}: {str(first['msg']).removeprefix('Value error, ')}")
    docs = _read(args.files, stdin)
    objects: list[dict[str, Any]] = []
    status = 0
    for doc in docs:
        body = doc.body
        if not isinstance(body, dict) or body.get("kind") != api.KIND:
            kind = body.get("kind", "?") if isinstance(body, dict) else type(body).__name__
            print(f"{doc.source}: skipped {kind}/{_name(body)}: not a {api.KIND}", file=sys.stderr)
            continue
        result = _render_one(doc, settings, args.alias_version, canary)
        if result and isinstance(result[0], str):
            status = EXIT_INVALID
            for line in result:
                print(f"{doc.source}: {api.KIND}/{_name(body)}: {line}", file=sys.stderr)
            continue
        objects.extend(obj for obj in result if isinstance(obj, dict))
    if objects:
        stdout.write(
            yaml.dump_all(
                objects, Dumper=_Dumper, sort_keys=False, explicit_start=True,
                default_flow_style=False, allow_unicode=True, width=10_000,
            )
        )
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``modelship`` console script; returns the exit code."""
    args = _parser().parse_args(argv)  # usage errors: argparse exits 2
    try:
        if args.command == "render":
            status = render_command(args, sys.stdin, sys.stdout)
            sys.stdout.flush()
            return status
    except KeyboardInterrupt:
        return EXIT_SIGNAL_BASE + signal.SIGINT
    except BrokenPipeError:
        # The reader left (``modelship render ... | head``): stop quietly, as shell tools
        # do, and keep Python from complaining about stdout again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_SIGNAL_BASE + signal.SIGPIPE
    return EXIT_USAGE  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())

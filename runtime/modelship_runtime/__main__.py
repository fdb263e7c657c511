"""Console script ``modelship-runtime``: ``pull`` a model, or ``serve`` one.

``pull`` is the init container (registry -> a directory on an emptyDir); ``serve`` runs
uvicorn with httptools (guarded against hostile clients: :mod:`.guard`) and uvloop on
one model directory, pulling first when given a URI. Command-line flags override the
``MODELSHIP_`` environment.

Every expected failure (bad arguments or settings, no registry, model not found, refused
credentials, unreachable registry, artifacts the runtime will not fetch, a model that does
not load, a port in use) ends with
one line on stderr, no traceback, and its own exit code: the table in docs/cli.md, which
``EXIT_*`` below follow (a test holds them together). Logs go to stdout.

``serve --model-uri`` pulls into a temporary directory under ``$TMPDIR`` and removes it
on every way out (done, failed, SIGTERM/SIGINT); nothing is written to the working
directory.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from . import __version__
from .errors import ModelLoadError, PullError, UntrustedArtifact
from .logging import configure_logging
from .settings import RuntimeSettings

if TYPE_CHECKING:
    from .guard import Limits
    from .model import Model

logger = logging.getLogger("modelship_runtime")

PROG = "modelship-runtime"
#: The distribution on PyPI that ships this package (runtime/pyproject.toml).
DISTRIBUTION = "modelship-runtime"
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_START = 3  # uvicorn's own code when it cannot bind or start the app
EXIT_NOT_FOUND = 4
EXIT_AUTH = 5
EXIT_UNREACHABLE = 6
EXIT_LOAD = 7
EXIT_UNTRUSTED = 8  # the artifact is refused by the runtime's trust settings
EXIT_SIGNAL_BASE = 128  # stopped by signal N before serving: 128 + N (SIGTERM: 143)


class _Usage(Exception):
    """A command line or setting that cannot be used (exit 2)."""


class _CannotStart(Exception):
    """The server cannot start (exit 3)."""


_PULL_EXIT = {"usage": EXIT_USAGE, "not_found": EXIT_NOT_FOUND, "auth": EXIT_AUTH,
              "unreachable": EXIT_UNREACHABLE, "untrusted": EXIT_UNTRUSTED}


def version_string() -> str:
    """``modelship-runtime X (scikit-learn Y, Python Z)``, X from the installed
    distribution's metadata (the package's own ``__version__`` when not installed)."""
    from importlib import metadata

    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = __version__
    try:
        sklearn = metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        sklearn = "not installed"
    return f"{PROG} {version} (scikit-learn {sklearn}, Python {sys.version.split()[0]})"


class _Version(argparse.Action):
    """``--version``, looked up only when asked (importlib.metadata costs ~90 ms)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_string())
        parser.exit()


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def _grpc_port(text: str) -> int:
    return 0 if text.strip() == "0" else _port(text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG,
                                description="Pull and serve one MLflow scikit-learn model.",
                                epilog="Exit codes: docs/cli.md (0 ok, 2 usage, 3 cannot "
                                "start, 4 not found, 5 unauthorized, 6 registry unreachable, "
                                "7 model does not load, 8 model refused as untrusted).")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True)
    pull = sub.add_parser("pull", help="pull models:/NAME/VERSION, models:/NAME@ALIAS or "
                          "runs:/RUN_ID/PATH to DIR")
    pull.add_argument("--model-uri", required=True)
    pull.add_argument("--dest", required=True, type=Path)
    serve = sub.add_parser("serve", help="serve a pulled directory (or pull a URI first)")
    src = serve.add_mutually_exclusive_group()
    src.add_argument("--model-dir", type=Path)
    src.add_argument("--model-uri")
    serve.add_argument("--host")
    serve.add_argument("--port", type=_port)
    serve.add_argument("--grpc-port", type=_grpc_port,
                       help="port of the V2 gRPC server (0: none; default 8081)")
    return p


def _event_loop() -> str:
    """uvloop when installed."""
    import importlib.util

    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def _limits(settings: RuntimeSettings, on_close: Callable[[str], None]) -> Limits:
    """The connection limits of ``settings``, after raising the open-file limit (the
    connection cap is lowered to stay under it)."""
    from .guard import Limits, connection_cap, raise_fd_limit

    fd_limit = raise_fd_limit()
    cap = connection_cap(settings.max_connections, fd_limit)
    if cap < settings.max_connections:
        logger.warning("MODELSHIP_MAX_CONNECTIONS lowered from %d to %d to stay under the "
                       "open-file limit of %d", settings.max_connections, cap, fd_limit)
    return Limits(max_header_bytes=settings.max_header_bytes,
                  header_timeout=settings.header_timeout_seconds, max_connections=cap,
                  on_close=on_close)


def _drained(signum: int, frame: object) -> None:
    logger.info("shut down after draining in-flight requests", extra={"signal": signum})


def serve(settings: RuntimeSettings, model: Model | None = None) -> int:
    """Run the server until SIGTERM/SIGINT: it drains (:mod:`.drain`), then in-flight
    requests finish. ``model``: one already loaded (``main`` loads it first, so a load
    error is reported plainly)."""
    # No import of scikit-learn or skops on a side thread to save cold start: importing
    # them there while the model loads (which imports them too) raced on scikit-learn's
    # circular imports and failed some starts with "partially initialized module".
    import uvicorn

    from .app import create_app
    from .drain import DrainingServer
    from .guard import guarded_protocol

    app = create_app(settings, model=model)
    limits = _limits(settings, app.state.plane.metrics.connection_closed)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, server_header=False, date_header=False,
                            timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
                            timeout_keep_alive=settings.keepalive_timeout_seconds,
                            http=guarded_protocol(limits), loop=_event_loop())
    if settings.grpc_port:  # gRPC on the same loop, drained with HTTP
        from .grpc_lifecycle import GrpcDrainingServer

        server: DrainingServer = GrpcDrainingServer(config, app.state.drain, app, settings)
    else:
        server = DrainingServer(config, app.state.drain)  # SIGTERM: drain, then shut down
    # uvicorn drains in-flight requests on SIGTERM/SIGINT, then re-raises the signal to
    # the handler that was installed before it; a no-op handler makes that a clean exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _drained)
    server.run()
    failed = not server.started or getattr(server, "grpc_failed", False)
    return EXIT_START if failed else EXIT_OK


class _Stopped(BaseException):
    """SIGTERM/SIGINT before serving: unwinds ``main`` so temporary files are removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@contextlib.contextmanager
def _scratch() -> Iterator[list[Path]]:
    """Temporary directories (append to the list) removed on the way out, whatever it is;
    SIGTERM/SIGINT during the removal are ignored (the process is on its way out)."""
    dirs: list[Path] = []
    try:
        yield dirs
    finally:
        saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _SIGNALS}
        try:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)


def _say(message: str) -> None:
    """One line on stderr, prefixed with the program's name (credentials in URIs
    redacted)."""
    from .redact import redact

    print(f"{PROG}: {redact(' '.join(message.split()))}", file=sys.stderr)


def _settings() -> RuntimeSettings:
    from pydantic import ValidationError

    try:
        return RuntimeSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first.get("loc") else "?"
        name = field if field.isupper() else f"MODELSHIP_{field.upper()}"
        raise _Usage(f"invalid setting {name}={first.get('input')!r}: {first['msg']}"
                     ) from None


def _check_port(host: str, port: int) -> None:
    """Fail now, plainly, when the address cannot be bound (uvicorn would do it after the
    pull and the load, with exit 3 and no word on stderr)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            sock.bind(addr)
    except OSError as exc:
        raise _CannotStart(f"cannot listen on {host}:{port}: "
                           f"{exc.strerror or exc}") from None


def _pull(uri: str, dest: Path, settings: RuntimeSettings) -> None:
    from .pull import pull

    pull(uri, dest, attempts=settings.pull_attempts,
         backoff_seconds=settings.pull_backoff_seconds)


def _serve(args: argparse.Namespace, settings: RuntimeSettings, scratch: list[Path]) -> int:
    updates: dict[str, object] = {}
    if args.host:
        updates["host"] = args.host
    if args.port:
        updates["port"] = args.port
    if args.grpc_port is not None:
        updates["grpc_port"] = args.grpc_port
    uri = args.model_uri or (None if args.model_dir or settings.model_dir
                             else settings.model_uri)
    if args.model_dir:
        updates["model_dir"] = args.model_dir
    settings = settings.model_copy(update=updates)
    if settings.model_dir is None and not uri:
        raise _Usage("serve: give --model-dir or --model-uri "
                     "(or MODELSHIP_MODEL_DIR / MODELSHIP_MODEL_URI)")
    if settings.api_keys_file is not None:
        from .auth import KeyFileError, KeyRing

        try:  # auth on with no usable key would refuse every request
            KeyRing(settings.api_keys_file)
        except KeyFileError as exc:
            raise _Usage(str(exc)) from None
    _check_port(settings.host, settings.port)
    if settings.grpc_port:
        if settings.grpc_port == settings.port:
            raise _Usage(f"the gRPC port {settings.grpc_port} is the HTTP port; set "
                         "MODELSHIP_GRPC_PORT to another (0: no gRPC)")
        _check_port(settings.host, settings.grpc_port)
    if uri:
        dest = Path(tempfile.mkdtemp(prefix="modelship-model-"))
        scratch.append(dest)
        _pull(uri, dest, settings)
        settings = settings.model_copy(update={"model_dir": dest})
    import asyncio

    from .app import load_model, make_model

    model = make_model(settings)
    asyncio.run(load_model(model))
    try:
        return serve(settings, model)
    except SystemExit as exc:  # uvicorn's way of saying it could not bind or start
        if exc.code != EXIT_START:
            raise
        raise _CannotStart(f"the server on {settings.host}:{settings.port} did not start "
                           "(the log above says why)") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``modelship-runtime``; returns the exit code (docs/cli.md)."""
    args = _parser().parse_args(argv)  # usage errors: argparse exits 2
    collecting = gc.isenabled()
    if args.command == "serve":
        # Starting imports some 1,500 modules; the collector would walk their long-lived
        # objects again and again meanwhile (a tenth of the start's CPU). The app's
        # lifespan freezes what is loaded and turns collection back on.
        gc.disable()
    previous = {sig: signal.signal(sig, _stop) for sig in _SIGNALS}
    try:
        with _scratch() as scratch:
            settings = _settings()
            configure_logging(settings.log_level, json=settings.log_json)
            if args.command == "pull":
                _pull(args.model_uri, args.dest, settings)
                return EXIT_OK
            return _serve(args, settings, scratch)
    except _Usage as exc:
        _say(str(exc))
        return EXIT_USAGE
    except _CannotStart as exc:
        logger.error("%s", exc)
        _say(str(exc))
        return EXIT_START
    except PullError as exc:
        logger.error("pull failed: %s", exc.message)
        _say(exc.message if exc.kind == "usage" else f"pull failed: {exc.message}")
        return _PULL_EXIT[exc.kind]
    except UntrustedArtifact as exc:
        logger.error("model refused: %s", exc.message)
        _say(f"model refused: {exc.message}")
        return EXIT_UNTRUSTED
    except ModelLoadError as exc:
        logger.error("model load failed: %s", exc.message)
        _say(f"cannot load model: {exc.message}")
        return EXIT_LOAD
    except _Stopped as exc:
        logger.info("stopped before serving", extra={"signal": exc.signum})
        return EXIT_SIGNAL_BASE + exc.signum
    finally:
        if collecting:
            gc.enable()
        for sig, handler in previous.items():
            if signal.getsignal(sig) is _stop:
                signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())

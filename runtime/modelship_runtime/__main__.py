"""Console script ``modelship-runtime``: ``pull`` a model, or ``serve`` one.

``pull`` is the init container (registry -> a directory on an emptyDir); ``serve`` runs
uvicorn with httptools and uvloop on one model directory, pulling first when given a
URI. Command-line flags override the ``MODELSHIP_`` environment. Exit codes: 0 done,
1 pull failed (the message says what: not found, auth, unreachable), 2 usage or load
error.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
from pathlib import Path

from .errors import ModelLoadError, PullError
from .logging import configure_logging
from .settings import RuntimeSettings

logger = logging.getLogger("modelship_runtime")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelship-runtime",
                                description="Pull and serve one MLflow scikit-learn model.")
    sub = p.add_subparsers(dest="command", required=True)
    pull = sub.add_parser("pull", help="pull models:/NAME/VERSION or models:/NAME@ALIAS to DIR")
    pull.add_argument("--model-uri", required=True)
    pull.add_argument("--dest", required=True, type=Path)
    serve = sub.add_parser("serve", help="serve a pulled directory (or pull a URI first)")
    src = serve.add_mutually_exclusive_group()
    src.add_argument("--model-dir", type=Path)
    src.add_argument("--model-uri")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    return p


def _uvicorn_options() -> tuple[str, str]:
    """(http, loop) implementations: httptools and uvloop when installed."""
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return http, loop


def _drained(signum: int, frame: object) -> None:
    logger.info("shut down after draining in-flight requests", extra={"signal": signum})


def serve(settings: RuntimeSettings) -> int:
    """Run the server until SIGTERM/SIGINT: it drains (:mod:`.drain`), then in-flight
    requests finish."""
    # No import of scikit-learn or skops on a side thread to save cold start: importing
    # them there while the model loads (which imports them too) raced on scikit-learn's
    # circular imports and failed some starts with "partially initialized module".
    import uvicorn

    from .app import create_app
    from .drain import DrainingServer

    app = create_app(settings)
    http, loop = _uvicorn_options()
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, server_header=False, date_header=False,
                            timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
                            http=http, loop=loop)
    server = DrainingServer(config, app.state.drain)  # SIGTERM: drain, then shut down
    # uvicorn drains in-flight requests on SIGTERM/SIGINT, then re-raises the signal to
    # the handler that was installed before it; a no-op handler makes that a clean exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _drained)
    server.run()
    return 3 if not server.started else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``modelship-runtime``."""
    args = _parser().parse_args(argv)
    settings = RuntimeSettings()
    configure_logging(settings.log_level, json=settings.log_json)
    try:
        if args.command == "pull":
            from .pull import pull

            pull(args.model_uri, args.dest, attempts=settings.pull_attempts,
                 backoff_seconds=settings.pull_backoff_seconds)
            return 0
        updates: dict[str, object] = {}
        if args.host:
            updates["host"] = args.host
        if args.port:
            updates["port"] = args.port
        uri = args.model_uri or (None if args.model_dir or settings.model_dir
                                 else settings.model_uri)
        if args.model_dir:
            updates["model_dir"] = args.model_dir
        elif uri:
            from .pull import pull

            dest = Path(tempfile.mkdtemp(prefix="modelship-model-"))
            pull(uri, dest, attempts=settings.pull_attempts,
                 backoff_seconds=settings.pull_backoff_seconds)
            updates["model_dir"] = dest
        settings = settings.model_copy(update=updates)
        if settings.model_dir is None:
            print("modelship-runtime serve: give --model-dir or --model-uri "
                  "(or MODELSHIP_MODEL_DIR / MODELSHIP_MODEL_URI)", file=sys.stderr)
            return 2
        return serve(settings)
    except PullError as exc:
        logger.error("pull failed: %s", exc.message)
        print(f"modelship-runtime: pull failed: {exc.message}", file=sys.stderr)
        return 1
    except ModelLoadError as exc:
        logger.error("model load failed: %s", exc.message)
        print(f"modelship-runtime: cannot load model: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

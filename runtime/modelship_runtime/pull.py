"""Pull one model version from an MLflow registry into a local directory.

This is the init container's job (``modelship-runtime pull``) and what ``serve
--model-uri`` does first. It uses mlflow-skinny's client, so registry credentials come
from the variables MLflow reads (``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_TOKEN``,
``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) and artifacts come through the tracking
server's proxy or straight from the artifact store, as the registry is set up. An alias
is resolved to a version first, and the directory keeps MLflow's layout plus
``modelship.json`` (name, version, alias, source) so ``serve --model-dir`` can report the
version without asking the registry. ``modelship.json`` is written last: its presence
means the pull completed.

Transient failures (registry unreachable, 5xx) are retried with exponential backoff;
a missing model or refused credentials fail at once, with a message saying which. The
registry is not trusted: a listing that would write outside the destination, a symlink
out of the download or an MLmodel naming a path outside it fails the pull at once
(``untrusted``) and nothing is kept. Credentials in URIs never reach a message.

The registry is always named: with neither ``MLFLOW_TRACKING_URI`` nor
``MLFLOW_REGISTRY_URI`` set, MLflow would fall back to ``sqlite:///mlflow.db`` and create
that database in the working directory (then report the model missing from it), so a
pull without a registry is refused before MLflow is imported.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ModelLoadError, PullError, UntrustedArtifact
from .redact import redact
from .trust import inside

logger = logging.getLogger(__name__)

METADATA_FILE = "modelship.json"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))/?$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/`` URI: a name and exactly one of version or alias."""

    name: str
    version: str | None = None
    alias: str | None = None


@dataclass(frozen=True)
class ModelMetadata:
    """What ``modelship.json`` records about a pulled model."""

    name: str
    version: str
    alias: str | None = None
    uri: str | None = None
    source: str | None = None
    run_id: str | None = None


def parse_model_uri(uri: str) -> ModelRef:
    """Parse ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
    m = _URI.match(uri.strip())
    if m is None:
        raise PullError(f"model URI {uri!r} is not models:/NAME/VERSION or models:/NAME@ALIAS",
                        kind="usage")
    return ModelRef(m["name"], m["version"], m["alias"])


def read_metadata(model_dir: Path) -> ModelMetadata | None:
    """The metadata a pull left in ``model_dir``, or None when there is none; a file that
    cannot be read is a ModelLoadError."""
    if not (model_dir / METADATA_FILE).is_file():
        return None
    path = inside(model_dir, METADATA_FILE, METADATA_FILE)
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or "name" not in data or "version" not in data:
        return None

    def opt(key: str) -> str | None:
        value = data.get(key)
        return None if value is None else str(value)

    return ModelMetadata(name=str(data["name"]), version=str(data["version"]),
                         alias=opt("alias"), uri=opt("uri"), source=opt("source"),
                         run_id=opt("run_id"))


@dataclass(frozen=True)
class Registry:
    """Where to pull from: MLflow's tracking and model registry URIs."""

    tracking_uri: str
    registry_uri: str


def registry_from_env() -> Registry:
    """The registry named by ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``; PullError
    (usage) when neither is set."""
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    registry = os.environ.get("MLFLOW_REGISTRY_URI", "").strip()
    if not tracking and not registry:
        raise PullError(
            "no registry to pull from: set MLFLOW_TRACKING_URI (e.g. "
            "MLFLOW_TRACKING_URI=http://mlflow:5000), or serve a pulled directory with "
            "--model-dir", kind="usage")
    return Registry(tracking or registry, registry or tracking)


def _classify(exc: Exception, what: str, where: str) -> PullError:
    code = str(getattr(exc, "error_code", "") or "")
    text = redact(str(exc))
    where = redact(where)
    if "outside the artifact directory" in text or (
            code == "INVALID_PARAMETER_VALUE" and text.startswith("Invalid path")):
        # MLflow refused a listing naming a path with '..', an absolute path or a link out
        return PullError(f"untrusted: the registry at {where} lists a path outside the "
                         f"download directory for {what}; nothing was kept", kind="untrusted")
    missing_alias = code == "INVALID_PARAMETER_VALUE" and "not found" in text.lower()
    if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or missing_alias:
        return PullError(f"not found: {what} does not exist in the registry at {where}",
                         kind="not_found")
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or re.search(r"\b40[13]\b", text):
        return PullError(
            f"auth: the registry at {where} refused the credentials for {what} "
            "(check MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD)", kind="auth"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return PullError(
        f"unreachable: could not fetch {what} from {where}: {first_line[:300]}",
        kind="unreachable",
    )


def _check_download(local: Path, tmp: Path, name: str, version: str) -> None:
    """Refuse a download that left its directory, holds a symlink out of it or whose
    MLmodel names a path outside it (a hostile registry); PullError (untrusted)."""
    from .sklearn import check_model_dir

    try:
        if not local.resolve().is_relative_to(tmp.resolve()):
            raise UntrustedArtifact(f"the download landed in {local}, outside {tmp}")
        check_model_dir(local)
    except UntrustedArtifact as exc:
        raise PullError(f"untrusted: model {name!r} version {version}: {exc.message}; "
                        "nothing was kept", kind="untrusted") from None


def _pull_once(ref: ModelRef, uri: str, dest: Path, reg: Registry) -> ModelMetadata:
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=reg.tracking_uri, registry_uri=reg.registry_uri)
    where = reg.registry_uri
    what = f"model {ref.name!r} " + (
        f"version {ref.version}" if ref.version else f"alias @{ref.alias}"
    )
    try:
        if ref.alias is not None:
            mv = client.get_model_version_by_alias(ref.name, ref.alias)
        else:
            mv = client.get_model_version(ref.name, str(ref.version))
    except Exception as exc:
        raise _classify(exc, what, where) from exc
    version = str(mv.version)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=dest))
    try:
        try:
            local = Path(download_artifacts(
                artifact_uri=f"models:/{ref.name}/{version}", dst_path=str(tmp),
                tracking_uri=reg.tracking_uri, registry_uri=reg.registry_uri))
        except Exception as exc:
            raise _classify(exc, f"artifacts of model {ref.name!r} version {version}",
                            where) from exc
        _check_download(local, tmp, ref.name, version)
        (dest / METADATA_FILE).unlink(missing_ok=True)
        for entry in local.iterdir():
            target = dest / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(entry), str(target))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = ModelMetadata(
        name=ref.name,
        version=version,
        alias=ref.alias,
        uri=uri,
        source=redact(str(getattr(mv, "source", "") or "")) or None,  # no credentials
        run_id=str(getattr(mv, "run_id", "") or "") or None,
    )
    (dest / METADATA_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n")
    return meta


def pull(uri: str, dest: Path, *, attempts: int = 5, backoff_seconds: float = 1.0) -> ModelMetadata:
    """Pull ``uri`` into ``dest``, retrying transient failures; raises PullError."""
    ref = parse_model_uri(uri)
    reg = registry_from_env()
    # Our loop does the retrying, with a clear message per attempt; MLflow's own retries
    # (7 by default, with long backoff) would hide an unreachable registry for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    delay = backoff_seconds
    for attempt in range(1, attempts + 1):
        try:
            meta = _pull_once(ref, uri, dest, reg)
        except PullError as exc:
            if not exc.transient or attempt == attempts:
                raise
            logger.warning(
                "pull failed; retrying",
                extra={"attempt": attempt, "of": attempts, "retry_in_s": delay,
                       "error": exc.message},
            )
            time.sleep(delay)
            delay *= 2
            continue
        logger.info(
            "model pulled",
            extra={"model": meta.name, "version": meta.version, "alias": meta.alias,
                   "dest": str(dest)},
        )
        return meta
    # not reached: the loop returns or raises
    raise PullError(f"pull of {uri} failed", kind="unreachable")

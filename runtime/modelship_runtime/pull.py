"""Pull one model from an MLflow tracking server into a local directory.

This is the init container's job (``modelship-runtime pull``) and what ``serve
--model-uri`` does first. It speaks MLflow's REST API itself (:mod:`.mlflow_rest`), so
the runtime carries no mlflow package; credentials come from the variables MLflow reads
(``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/
``PASSWORD``) and artifacts through the tracking server's artifact proxy.

The URIs served, and what each resolves through:

* ``models:/NAME/VERSION``: that registered version (``model-versions/get``);
* ``models:/NAME@ALIAS``: the version the alias points at now (``registered-models/alias``);
* ``runs:/RUN_ID/PATH``: the run's artifacts under PATH, or (MLflow 3) the model the run
  logged under the name PATH (``logged-models/search``);
* ``models:/MODEL_ID`` (MLflow 3's ``models:/m-...``): that logged model.

Refused at once (PullError ``usage``, exit 2), each with the reason: ``models:/NAME/latest``
and stage names (``models:/NAME/Production``) — they pick a version at pull time from
registry stages, deprecated since MLflow 2.9, so two pods started minutes apart could serve
different versions; pin a version or follow an alias instead — and any URI that does not
go through the tracking server (``file:``, ``s3:``, ``gs:``, ``http(s):`` ...).

The directory keeps MLflow's layout plus ``modelship.json`` (name, version, alias, URI,
source, run id) so ``serve --model-dir`` can report what it serves without asking the
registry. ``modelship.json`` is written last: its presence means the pull completed. A
``runs:/`` or logged model has no registry version: its version is the run id (or the
model id), and its name the last part of its path (or the logged model's name).

Transient failures (registry unreachable, 5xx) are retried with exponential backoff;
a missing model or refused credentials fail at once, with a message saying which. The
registry is not trusted: a listing that would write outside the destination, a symlink
out of the download or an MLmodel naming a path outside it fails the pull at once
(``untrusted``) and nothing is kept. Credentials in URIs never reach a message.

The registry is always named: with neither ``MLFLOW_TRACKING_URI`` nor
``MLFLOW_REGISTRY_URI`` set, the pull is refused (MLflow's client would fall back to a
``mlflow.db`` in the working directory and report the model missing from it).
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
from typing import TYPE_CHECKING, Any

from .errors import ModelLoadError, PullError, UntrustedArtifact
from .redact import redact
from .trust import inside

if TYPE_CHECKING:
    from .mlflow_rest import Client

logger = logging.getLogger(__name__)

METADATA_FILE = "modelship.json"
_MODELS = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))/?$")
_STAGE = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<stage>[^/@]+)/?$")
_LOGGED = re.compile(r"^models:/(?P<id>m-[0-9a-f]{8,64})/?$")
_RUNS = re.compile(r"^runs:/(?P<run_id>[\w-]+)/(?P<path>[^?#]*[^/?#])/?$")
FORMS = ("models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH or "
         "models:/MODEL_ID (m-...)")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model URI: a registered name with exactly one of version or alias, or a
    run id with the artifact path in it, or a logged model's id."""

    name: str
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    path: str | None = None
    model_id: str | None = None

    @property
    def what(self) -> str:
        """How messages name it."""
        if self.run_id is not None:
            return f"run {self.run_id} artifact path {self.path!r}"
        if self.model_id is not None:
            return f"logged model {self.model_id}"
        return f"model {self.name!r} " + (
            f"version {self.version}" if self.version else f"alias @{self.alias}")


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
    """Parse one of :data:`FORMS`; PullError (usage) saying why any other URI is not
    served (see the module docstring)."""
    text = uri.strip()
    if m := _MODELS.match(text):
        return ModelRef(m["name"], m["version"], m["alias"])
    if m := _LOGGED.match(text):
        return ModelRef(m["id"], model_id=m["id"])
    if m := _RUNS.match(text):
        parts = m["path"].split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise PullError(f"model URI {uri!r}: the artifact path must not hold empty, '.' "
                            "or '..' parts", kind="usage")
        return ModelRef(parts[-1], run_id=m["run_id"], path=m["path"])
    if m := _STAGE.match(text):
        stage = m["stage"]
        kind = "'latest'" if stage.lower() == "latest" else f"the stage {stage!r}"
        raise PullError(
            f"model URI {uri!r} is not served: {kind} picks a version when the pod starts "
            "(registry stages, deprecated since MLflow 2.9), so pods started apart could "
            f"serve different versions; pin models:/{m['name']}/VERSION or follow an alias, "
            f"models:/{m['name']}@ALIAS", kind="usage")
    scheme = text.split(":", 1)[0].lower() if ":" in text else ""
    if scheme == "file" or text.startswith("/"):
        raise PullError(f"model URI {uri!r} is a local path: serve the directory with "
                        "--model-dir (MODELSHIP_MODEL_DIR) instead", kind="usage")
    if scheme not in ("", "models", "runs"):
        raise PullError(f"model URI {uri!r} is not served: the runtime pulls through an "
                        f"MLflow tracking server only, from {FORMS}", kind="usage")
    raise PullError(f"model URI {uri!r} is not {FORMS}", kind="usage")


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
    reg = Registry(tracking or registry, registry or tracking)
    for variable, value in (("MLFLOW_TRACKING_URI", reg.tracking_uri),
                            ("MLFLOW_REGISTRY_URI", reg.registry_uri)):
        if not re.match(r"^https?://[^/?#]+", value, re.I):
            raise PullError(
                f"{variable}={value!r} is not an MLflow tracking server's URL: the runtime "
                "talks to one over HTTP (e.g. http://mlflow:5000), not to databases or "
                "files", kind="usage")
    return reg


def _resolve(ref: ModelRef, client: Client) -> tuple[str, ModelMetadata]:
    """(artifact location, metadata) of ``ref``, asking the registry and tracking server."""
    what = ref.what
    if ref.run_id is not None and ref.path is not None:
        info = client.run_info(ref.run_id, f"run {ref.run_id}")
        run_id = str(info.get("run_id") or info.get("run_uuid") or ref.run_id)
        location = f"{str(info.get('artifact_uri', '')).rstrip('/')}/{ref.path}"
        name = ref.name
        if not client.has_artifacts(location, what):
            # MLflow 3 keeps a logged model apart from its run's artifacts; runs:/ID/NAME
            # names the model the run logged as NAME (and runs:/ID/NAME/SUB a folder in it)
            first, _, rest = ref.path.partition("/")
            model = next(client.logged_models_of_run(
                str(info.get("experiment_id", "")), run_id, first, what), None)
            if model is None:
                raise PullError(f"not found: {what} does not exist on the tracking server "
                                f"at {client.tracking_uri}", kind="not_found")
            location = str(model.get("artifact_uri", "")).rstrip("/")
            location = f"{location}/{rest}" if rest else location
            name = str(model.get("name") or first) if not rest else ref.name
        return location, ModelMetadata(name=name, version=run_id, source=location,
                                       run_id=run_id)
    if ref.model_id is not None:
        info = client.logged_model(ref.model_id, what)
        return str(info.get("artifact_uri", "")), ModelMetadata(
            name=str(info.get("name") or ref.model_id), version=ref.model_id,
            source=f"models:/{ref.model_id}",
            run_id=str(info.get("source_run_id") or "") or None)
    if ref.alias is not None:
        mv = client.model_version_by_alias(ref.name, ref.alias, what)
    else:
        mv = client.model_version(ref.name, str(ref.version), what)
    version = str(mv.get("version", ref.version))
    location = client.model_version_download_uri(
        ref.name, version, f"artifacts of model {ref.name!r} version {version}")
    return location, ModelMetadata(name=ref.name, version=version, alias=ref.alias,
                                   source=str(mv.get("source") or "") or None,
                                   run_id=str(mv.get("run_id") or "") or None)


def _check_download(local: Path, tmp: Path, what: str) -> None:
    """Refuse a download that left its directory, holds a symlink out of it or whose
    MLmodel names a path outside it (a hostile registry); PullError (untrusted)."""
    from .sklearn import check_model_dir

    try:
        if not local.resolve().is_relative_to(tmp.resolve()):
            raise UntrustedArtifact(f"the download landed in {local}, outside {tmp}")
        check_model_dir(local)
    except UntrustedArtifact as exc:
        raise PullError(f"untrusted: {what}: {exc.message}; nothing was kept",
                        kind="untrusted") from None


def _pull_once(ref: ModelRef, uri: str, dest: Path, reg: Registry) -> ModelMetadata:
    from .mlflow_rest import Client  # urllib, ssl, http.client: not at serve time

    client = Client(reg.tracking_uri, reg.registry_uri)
    location, meta = _resolve(ref, client)
    meta = ModelMetadata(**{**asdict(meta), "uri": uri,  # no credentials in the source
                            "source": redact(meta.source) if meta.source else None})
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pull-", dir=dest))
    try:
        client.download(location, tmp, f"the artifacts of {ref.what}")
        _check_download(tmp, tmp, ref.what)
        (dest / METADATA_FILE).unlink(missing_ok=True)
        for entry in tmp.iterdir():
            target = dest / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(str(entry), str(target))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (dest / METADATA_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n")
    return meta


def pull(uri: str, dest: Path, *, attempts: int = 5, backoff_seconds: float = 1.0) -> ModelMetadata:
    """Pull ``uri`` into ``dest``, retrying transient failures; raises PullError."""
    ref = parse_model_uri(uri)
    reg = registry_from_env()
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
                   "run_id": meta.run_id, "uri": uri, "dest": str(dest)},
        )
        return meta
    # not reached: the loop returns or raises
    raise PullError(f"pull of {uri} failed", kind="unreachable")

"""The few MLflow REST calls a pull needs, over the standard library's HTTP client.

A pull asks the tracking server three kinds of question (which version does a name and
version or alias name, where are a run's or a logged model's artifacts, which files lie
under an artifact path) and downloads files through the server's artifact proxy
(``mlflow server --serve-artifacts``, ``mlflow-artifacts:/`` locations). That is a
handful of GETs, so the runtime needs neither the mlflow package nor its dependencies
(about 60 MB of the image) and pays nothing for them at start.

Credentials and TLS come from the variables MLflow's own client reads:
``MLFLOW_TRACKING_TOKEN`` (bearer) or ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` (basic),
``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``,
``MLFLOW_TRACKING_CLIENT_CERT_PATH`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT``. Credentials are
sent only to the server they were given for: a redirect to another host drops them.

Every failure is a :class:`~modelship_runtime.errors.PullError` whose ``kind`` says what
the console script exits with: ``not_found`` (404, MLflow's ``RESOURCE_DOES_NOT_EXIST``,
an unknown alias), ``auth`` (401/403), ``unreachable`` (no connection, timeout, 5xx,
429, a truncated download: retried by the caller; any other 4xx counts as not found) and
``untrusted`` (an artifact location the runtime does not read, anywhere but the proxy; a
listing naming a path outside the model's directory). URI credentials never reach a
message.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import shutil
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PullError
from .redact import redact

#: The tracking server's artifact proxy, relative to its base URL.
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
_MAX_DEPTH = 32
_MAX_FILES = 10_000


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True, repr=False)
class Auth:
    """The credentials MLflow's client would send; repr hides them."""

    header: str | None = None

    def __repr__(self) -> str:
        return "Auth(***)" if self.header else "Auth(None)"

    @classmethod
    def from_env(cls) -> Auth:
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if token:
            return cls(f"Bearer {token}")
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if user is not None and password is not None:
            pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            return cls(f"Basic {pair}")
        return cls()


def _ssl_context() -> ssl.SSLContext:
    if _truthy(os.environ.get("MLFLOW_TRACKING_INSECURE_TLS")):
        context = ssl._create_unverified_context()
    else:
        context = ssl.create_default_context(
            cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    client_cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    if client_cert:
        context.load_cert_chain(client_cert)
    return context


class _SameOriginAuth(urllib.request.HTTPRedirectHandler):
    """Follow redirects, dropping the credentials when one leaves the server."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


def _split_userinfo(url: str) -> tuple[str, str]:
    """(the URL without ``user:password@``, that userinfo unquoted, or "")."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, ""
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return (urllib.parse.urlunsplit(parts._replace(netloc=host)),
            f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}")


def _base(url: str) -> str:
    """scheme://netloc of ``url``."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _error_body(exc: urllib.error.HTTPError) -> tuple[str, str]:
    """(MLflow's error_code, its message) from an error answer, blanks when it has none."""
    try:
        data = json.loads(exc.read(64 * 1024) or b"{}")
    except (OSError, ValueError):
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    return str(data.get("error_code") or ""), str(data.get("message") or "")


class Client:
    """One tracking server (and its model registry, when that is another URL)."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None) -> None:
        tracking, userinfo = _split_userinfo(tracking_uri.rstrip("/"))
        registry, registry_userinfo = _split_userinfo((registry_uri or tracking_uri).rstrip("/"))
        self.tracking_uri, self.registry_uri = tracking, registry
        # messages name a server as it was given, its password masked (user:***@host)
        self._shown = {_origin(tracking): redact(_base(tracking_uri)),
                       _origin(registry): redact(_base(registry_uri or tracking_uri))}
        self._auth = Auth.from_env()
        if self._auth.header is None and (userinfo or registry_userinfo):
            # user:password@ in the URI, as MLflow's client (requests) takes it
            pair = base64.b64encode((userinfo or registry_userinfo).encode()).decode("ascii")
            self._auth = Auth(f"Basic {pair}")
        try:
            self._timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 30)
        except ValueError:
            self._timeout = 30.0
        handlers: list[urllib.request.BaseHandler] = [_SameOriginAuth()]
        if any(u.startswith("https:") for u in (self.tracking_uri, self.registry_uri)):
            handlers.append(urllib.request.HTTPSHandler(context=_ssl_context()))
        self._opener = urllib.request.build_opener(*handlers)

    # -- transport ---------------------------------------------------------------------

    def _open(self, url: str, what: str, body: dict[str, Any] | None = None) -> Any:
        """The open answer to one request; PullError naming ``what`` when it fails."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data,
                                         method="GET" if body is None else "POST")
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if self._auth.header:
            request.add_header("Authorization", self._auth.header)
        where = self._shown.get(_origin(url)) or redact(_base(url))
        try:
            return self._opener.open(request, timeout=self._timeout)
        except urllib.error.HTTPError as exc:
            code, message = _error_body(exc)
            exc.close()
            raise _classify(exc.code, code, message, what, where) from None
        except ValueError as exc:  # http.client.InvalidURL: a port that is no number ...
            raise PullError(f"the registry URL {redact(url)} is not usable: "
                            f"{redact(str(exc))[:200]}", kind="usage") from None
        except (OSError, ssl.SSLError) as exc:  # URLError, timeouts, refused connections
            reason = getattr(exc, "reason", exc)
            raise PullError(f"unreachable: could not fetch {what} from {where}: "
                            f"{redact(str(reason))[:300] or type(exc).__name__}",
                            kind="unreachable") from None

    def _json(self, base: str, path: str, what: str, params: dict[str, str] | None = None,
              body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{base}/api/2.0/mlflow/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with self._open(url, what, body) as answer:
            raw = answer.read()
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise PullError(f"unreachable: {base} answered {what} with something other "
                            "than JSON (is it an MLflow tracking server?)",
                            kind="unreachable") from None
        if not isinstance(data, dict):
            raise PullError(f"unreachable: {base} answered {what} with {type(data).__name__}",
                            kind="unreachable")
        return data

    # -- the registry and the tracking server ------------------------------------------

    def model_version(self, name: str, version: str, what: str) -> dict[str, Any]:
        return _object(self._json(self.registry_uri, "model-versions/get", what,
                                  {"name": name, "version": version}), "model_version", what)

    def model_version_by_alias(self, name: str, alias: str, what: str) -> dict[str, Any]:
        return _object(self._json(self.registry_uri, "registered-models/alias", what,
                                  {"name": name, "alias": alias}), "model_version", what)

    def model_version_download_uri(self, name: str, version: str, what: str) -> str:
        data = self._json(self.registry_uri, "model-versions/get-download-uri", what,
                          {"name": name, "version": version})
        return str(_field(data, "artifact_uri", what))

    def run_info(self, run_id: str, what: str) -> dict[str, Any]:
        run = _object(self._json(self.tracking_uri, "runs/get", what, {"run_id": run_id}),
                      "run", what)
        return _object(run, "info", what)

    def logged_model(self, model_id: str, what: str) -> dict[str, Any]:
        data = self._json(self.tracking_uri,
                          f"logged-models/{urllib.parse.quote(model_id, safe='')}", what)
        return _object(_object(data, "model", what), "info", what)

    def logged_models_of_run(self, experiment_id: str, run_id: str, name: str, what: str
                             ) -> Iterator[dict[str, Any]]:
        """The logged models named ``name`` that run ``run_id`` logged (MLflow 3)."""
        quoted = name.replace("'", "\\'")
        token: str | None = None
        while True:
            body: dict[str, Any] = {"experiment_ids": [experiment_id],
                                    "filter": f"name = '{quoted}'", "max_results": 100}
            if token:
                body["page_token"] = token
            data = self._json(self.tracking_uri, "logged-models/search", what, body=body)
            for model in data.get("models") or []:
                info = model.get("info") if isinstance(model, dict) else None
                if isinstance(info, dict) and info.get("source_run_id") == run_id:
                    yield info
            token = data.get("next_page_token") or None
            if not token:
                return

    # -- artifacts ---------------------------------------------------------------------

    def artifact_base(self, artifact_uri: str, what: str) -> str:
        """The proxy URL of an ``mlflow-artifacts:`` location; PullError (untrusted) for
        anywhere else (the runtime reads artifacts through the tracking server only)."""
        parts = urllib.parse.urlsplit(artifact_uri)
        path = parts.path.strip("/")
        if parts.scheme == "mlflow-artifacts":
            if parts.netloc:
                scheme = urllib.parse.urlsplit(self.tracking_uri).scheme
                return f"{scheme}://{parts.netloc}{ARTIFACTS_API}/{path}"
            return f"{self.tracking_uri}{ARTIFACTS_API}/{path}"
        if parts.scheme in ("http", "https") and ARTIFACTS_API in parts.path:
            return artifact_uri.rstrip("/")
        raise PullError(
            f"untrusted: {what} are stored at {redact(artifact_uri)}, which the runtime does "
            "not read; it downloads artifacts through the tracking server's proxy only (run "
            "`mlflow server` with --serve-artifacts, so artifact locations are "
            "mlflow-artifacts:/)", kind="untrusted")

    def _list(self, base: str, rel: str, what: str) -> list[tuple[str, bool, int | None]]:
        """(name, is_dir, size) of the entries directly under ``rel``."""
        origin, _, root = base.partition(ARTIFACTS_API)
        path = posixpath.join(root.strip("/"), rel) if rel else root.strip("/")
        url = f"{origin}{ARTIFACTS_API}?" + urllib.parse.urlencode({"path": path})
        with self._open(url, what) as answer:
            raw = answer.read()
        try:
            files = json.loads(raw or b"{}").get("files") or []
        except (ValueError, AttributeError):
            raise PullError(f"unreachable: the artifact listing of {what} is not MLflow's",
                            kind="unreachable") from None
        entries = []
        for f in files:
            # the proxy lists the names directly under the path asked for: anything else
            # ('..', a path with a '/', an absolute path) would write outside the download
            name = str(f.get("path", "")).rstrip("/") if isinstance(f, dict) else ""
            if name in ("", ".", "..") or any(c in name for c in "/\\\x00"):
                raise PullError(f"untrusted: the registry at {redact(origin)} lists a path "
                                f"outside the download directory for {what} ({name!r}); "
                                "nothing was kept", kind="untrusted")
            size = f.get("file_size")
            entries.append((name, bool(f.get("is_dir")), int(size) if size is not None else None))
        return entries

    def has_artifacts(self, artifact_uri: str, what: str) -> bool:
        return bool(self._list(self.artifact_base(artifact_uri, what), "", what))

    def download(self, artifact_uri: str, dest: Path, what: str) -> int:
        """Every file under ``artifact_uri`` into ``dest`` (kept in their folders); the
        number of files. PullError (not_found) when there is none."""
        base = self.artifact_base(artifact_uri, what)
        root = dest.resolve()
        count = 0
        pending: list[tuple[str, int]] = [("", 0)]
        while pending:
            rel, depth = pending.pop()
            for name, is_dir, size in self._list(base, rel, what):
                child = posixpath.join(rel, name) if rel else name
                target = (root / child).resolve()
                if not target.is_relative_to(root) or depth >= _MAX_DEPTH:
                    raise PullError(f"untrusted: {what} hold {child!r}, outside the model's "
                                    "directory or nested too deep; nothing was kept",
                                    kind="untrusted")
                if is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    pending.append((child, depth + 1))
                    continue
                count += 1
                if count > _MAX_FILES:
                    raise PullError(f"untrusted: {what} hold more than {_MAX_FILES} files",
                                    kind="untrusted")
                target.parent.mkdir(parents=True, exist_ok=True)
                self._fetch(f"{base}/{urllib.parse.quote(child)}", target, size, what)
        if count == 0:
            raise PullError(f"not found: {what} hold no files ({redact(artifact_uri)})",
                            kind="not_found")
        return count

    def _fetch(self, url: str, target: Path, size: int | None, what: str) -> None:
        with self._open(url, what) as answer, target.open("wb") as out:
            try:
                shutil.copyfileobj(answer, out, 1024 * 1024)
            except OSError as exc:
                raise PullError(f"unreachable: the download of {what} broke off: {exc}",
                                kind="unreachable") from None
        got = target.stat().st_size
        if size is not None and got != size:
            raise PullError(f"unreachable: {target.name} of {what} arrived with {got} of "
                            f"{size} bytes", kind="unreachable")


def _field(data: dict[str, Any], key: str, what: str) -> Any:
    value = data.get(key)
    if value is None:
        raise PullError(f"unreachable: the answer about {what} lacks {key!r} (is this an "
                        "MLflow tracking server?)", kind="unreachable")
    return value


def _object(data: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    value = _field(data, key, what)
    if not isinstance(value, dict):
        raise PullError(f"unreachable: the answer about {what} holds no object {key!r}",
                        kind="unreachable")
    return value


def _classify(status: int, code: str, message: str, what: str, where: str) -> PullError:
    """The PullError an error answer means (see the module docstring)."""
    lowered = message.lower()
    missing_alias = code == "INVALID_PARAMETER_VALUE" and "not found" in lowered
    if status == 404 or code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or missing_alias:
        return PullError(f"not found: {what} does not exist in the registry at {where}",
                         kind="not_found")
    if status in (401, 403) or code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return PullError(
            f"auth: the registry at {where} refused the credentials for {what} "
            "(check MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD)", kind="auth")
    detail = f": {' '.join(message.split())[:300]}" if message else ""
    if status >= 500 or status in (408, 429):
        return PullError(f"unreachable: could not fetch {what} from {where}: HTTP {status}"
                         f"{detail}", kind="unreachable")
    return PullError(f"not found: the registry at {where} answered HTTP {status} "
                     f"{code or ''} to the request for {what}{detail}".replace("  ", " "),
                     kind="not_found")

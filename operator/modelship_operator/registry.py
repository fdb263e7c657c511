"""The MLflow model registry, over its REST API.

The operator needs little from MLflow: does a version exist, which version does an
alias point at. The REST API answers both without the mlflow package (which the
operator image does not carry). Credentials are the ones MLflow's own client reads:
a bearer token, or a user name and password for basic auth.

One `Registry` (one HTTP session with a bounded connection pool) serves every call to
one tracking URI with one set of credentials; `Clients` hands out those shared clients,
so a pass of the operator does not open a new connection. `Registry.key` names the
(tracking URI, credentials) pair by a keyed digest of the credentials, never the
credentials themselves, for caches that must not mix what two sets of credentials see.
Every HTTP request is counted in ``modelship_operator_registry_requests_total``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any, NoReturn

import requests
from requests.adapters import HTTPAdapter

from modelship_operator import metrics
from modelship_operator.lru import LRU
from modelship_operator.trust import redact

POOL_SIZE = 8
"""Connections one client keeps open to its tracking server; more concurrent calls wait."""
MAX_CLIENTS = 1024
"""Clients (tracking URI x credentials x timeout) kept by `Clients`; the least used go."""
_DIGEST_KEY = secrets.token_bytes(32)  # a digest cannot be matched outside this process


class RegistryError(Exception):
    """The registry did not give an answer the operator can use.

    `reason` is one of ModelVersionNotFound, Unauthorized, RegistryUnavailable.
    """

    def __init__(self, reason: str, message: str) -> None:
        message = redact(message)  # a URL's user:password@ never reaches status or a log
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        return self.reason == "RegistryUnavailable"


@dataclass(frozen=True, repr=False)
class Credentials:
    """MLflow credentials; repr hides them so they never reach a log line."""

    token: str | None = None
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        return "Credentials(***)"

    def digest(self) -> str:
        """A keyed digest that tells sets of credentials apart, and reveals none."""
        h = hashlib.blake2b(key=_DIGEST_KEY, digest_size=16)
        for part in (self.token, self.username, self.password):
            h.update(b"\x00" if part is None else b"\x01" + part.encode() + b"\x00")
        return h.hexdigest()

    def apply(self, session: requests.Session) -> None:
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif self.username is not None and self.password is not None:
            session.auth = (self.username, self.password)


class Registry:
    """A client of one MLflow tracking server, safe to share between threads.

    Its session keeps at most `pool_size` connections open (callers beyond that wait
    for one) and stores no cookies, so nothing one call receives changes the next.
    """

    def __init__(
        self,
        tracking_uri: str,
        credentials: Credentials | None = None,
        timeout: float = 5.0,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        credentials = credentials or Credentials()
        self.key = (self.tracking_uri, credentials.digest())
        """(tracking URI, digest of the credentials): what this client's answers depend on."""
        self._timeout = timeout
        self._session = requests.Session()
        self._session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, pool_block=True)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        credentials.apply(self._session)

    def close(self) -> None:
        self._session.close()

    def _get(self, operation: str, path: str, params: dict[str, str]) -> dict[str, Any]:
        return self._call(operation, "GET", f"mlflow/{path}", params=params)

    def _post(self, operation: str, path: str, body: dict[str, str]) -> dict[str, Any]:
        return self._call(operation, "POST", f"mlflow/{path}", body=body)

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One REST call, counted as `operation`; `path` is relative to /api/2.0/."""
        try:
            data = self._request(method, path, params, body)
        except RegistryError as exc:
            metrics.record_registry_request(operation, exc.reason)
            raise
        metrics.record_registry_request(operation, "Ok")
        return data

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None,
        body: dict[str, str] | None,
    ) -> dict[str, Any]:
        url = f"{self.tracking_uri}/api/2.0/{path}"
        try:
            response = self._session.request(
                method, url, params=params, json=body, timeout=self._timeout
            )
        except requests.RequestException as exc:
            raise RegistryError(
                "RegistryUnavailable", f"MLflow at {self.tracking_uri} unreachable: {exc}"
            ) from exc
        if response.status_code in (401, 403):
            raise RegistryError(
                "Unauthorized", f"MLflow at {self.tracking_uri} refused the credentials"
            )
        if response.status_code == 404 or (
            response.status_code == 400
            and ("RESOURCE_DOES_NOT_EXIST" in response.text or "not found" in response.text)
        ):
            # A missing alias is a 400 "Registered model alias X not found." in MLflow.
            raise RegistryError("ModelVersionNotFound", _error_message(response))
        if response.status_code == 400:
            raise RegistryError("InvalidRequest", _error_message(response))
        if response.status_code >= 400:
            raise RegistryError(
                "RegistryUnavailable",
                f"MLflow answered {response.status_code}: {_error_message(response)}",
            )
        try:
            data: dict[str, Any] = response.json()
        except ValueError as exc:
            raise RegistryError(
                "RegistryUnavailable", f"MLflow at {self.tracking_uri} answered no JSON"
            ) from exc
        return data

    def resolve_alias(self, name: str, alias: str) -> str:
        """The version the alias points at."""
        data = self._get("resolveAlias", "registered-models/alias", {"name": name, "alias": alias})
        return str(data["model_version"]["version"])

    def get_version(self, name: str, version: str) -> dict[str, Any]:
        """The model version's record; raises ModelVersionNotFound when absent."""
        data = self._get("getVersion", "model-versions/get", {"name": name, "version": version})
        record: dict[str, Any] = data["model_version"]
        return record

    def check_version(self, name: str, version: str) -> str:
        """Check that a version exists, is READY, and that its artifacts can be listed.

        Artifacts behind the tracking server's proxy (``mlflow-artifacts:``) are listed
        through it and must hold an MLmodel file; other stores (s3:, gs:, ...) are read
        by the runtime with its own credentials, so only their URI is checked here.
        Returns the artifact URI.
        """
        record = self.get_version(name, version)
        state = record.get("status", "READY")
        if state != "READY":
            raise RegistryError(
                "ModelVersionNotReady", f"model {name!r} version {version} is {state}"
            )
        where = {"name": name, "version": version}
        uri = str(
            self._get("getDownloadUri", "model-versions/get-download-uri", where)
            .get("artifact_uri", "")
        )
        if uri.startswith("mlflow-artifacts:"):
            path = uri.split(":", 1)[1].lstrip("/")
            listing = self._call(
                "listArtifacts", "GET", "mlflow-artifacts/artifacts", params={"path": path}
            )
            files = {str(f.get("path", "")).rsplit("/", 1)[-1] for f in listing.get("files", [])}
            if "MLmodel" not in files:
                raise RegistryError(
                    "ArtifactsUnavailable",
                    f"model {name!r} version {version}: no MLmodel file under {uri}",
                )
        elif not uri:
            raise RegistryError(
                "ArtifactsUnavailable", f"model {name!r} version {version} has no artifact URI"
            )
        return uri

    def run_artifact(self, name: str, version: str, path: str, max_bytes: int) -> bytes:
        """The file `path` among the artifacts of the run that logged model `version`.

        Read through the tracking server's ``/get-artifact`` (what MLflow's own UI uses),
        so it works whatever the artifact store is, with the registry's credentials.
        Raises RegistryError: ArtifactsUnavailable (the version has no run),
        ArtifactNotFound, ArtifactTooLarge (more than `max_bytes`), Unauthorized,
        RegistryUnavailable.
        """
        run_id = str(self.get_version(name, version).get("run_id") or "")
        what = f"artifact {path!r} of model {name!r} version {version}"
        if not run_id:
            raise RegistryError(
                "ArtifactsUnavailable", f"{what}: the version was not logged by an MLflow run"
            )
        try:
            data = self._artifact(run_id, path, max_bytes, what)
        except RegistryError as exc:
            metrics.record_registry_request("getArtifact", exc.reason)
            raise
        metrics.record_registry_request("getArtifact", "Ok")
        return data

    def _artifact(self, run_id: str, path: str, max_bytes: int, what: str) -> bytes:
        url = f"{self.tracking_uri}/get-artifact"
        try:
            with self._session.get(
                url, params={"path": path, "run_uuid": run_id}, timeout=self._timeout,
                stream=True, allow_redirects=False,
            ) as response:
                if response.status_code != 200:
                    status = response.status_code
                    text = read_bounded(response, 2000).decode("utf-8", "replace")
                    self._artifact_error(status, text, f"{what} (run {run_id})")
                data = read_bounded(response, max_bytes + 1)
        except requests.RequestException as exc:
            raise RegistryError(
                "RegistryUnavailable", f"MLflow at {self.tracking_uri} unreachable: {exc}"
            ) from exc
        if len(data) > max_bytes:
            raise RegistryError("ArtifactTooLarge", f"{what} is larger than {max_bytes} bytes")
        return data

    def _artifact_error(self, status: int, text: str, what: str) -> NoReturn:
        if status in (401, 403):
            raise RegistryError(
                "Unauthorized", f"MLflow at {self.tracking_uri} refused the credentials"
            )
        if status == 404:
            raise RegistryError("ArtifactNotFound", f"{what}: not found")
        if status == 400:
            raise RegistryError("InvalidRequest", f"{what}: {text.strip()[:300]}")
        raise RegistryError("RegistryUnavailable", f"{what}: MLflow answered {status}")

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._post(
            "setAlias", "registered-models/alias",
            {"name": name, "alias": alias, "version": version},
        )

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._post(
            "setVersionTag", "model-versions/set-tag",
            {"name": name, "version": version, "key": key, "value": value[:5000]},
        )


class Clients:
    """The shared `Registry` of each (tracking URI, credentials, timeout), at most
    `maxsize` of them: a pass asks here instead of opening its own session."""

    def __init__(self, maxsize: int = MAX_CLIENTS, pool_size: int = POOL_SIZE) -> None:
        self._pool_size = pool_size
        self._clients: LRU[tuple[str, str, float], Registry] = LRU(maxsize)

    def __len__(self) -> int:
        return len(self._clients)

    def get(
        self, tracking_uri: str, credentials: Credentials | None, timeout: float
    ) -> Registry:
        credentials = credentials or Credentials()
        key = (tracking_uri.rstrip("/"), credentials.digest(), timeout)
        # A client dropped from the LRU is not closed: a pass may still be using it, and
        # its connections close when it is collected.
        return self._clients.setdefault(
            key, lambda: Registry(tracking_uri, credentials, timeout, self._pool_size)
        )


def read_bounded(response: requests.Response, limit: int) -> bytes:
    """At most `limit` bytes of a streamed response's (decoded) body."""
    data = bytearray()
    for chunk in response.iter_content(chunk_size=65536):
        data += chunk
        if len(data) >= limit:
            return bytes(data[:limit])
    return bytes(data)


def _error_message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message", response.text))[:300]
    except ValueError:
        return response.text[:300]

"""A thin, typed layer over the Kubernetes API: server-side apply, get, list, create, delete.

The operator handles children as plain dicts (what render produces) across a dozen kinds
and a CRD, with server-side apply under one field manager. lightkube does the talking
through its public API: a generic resource (``lightkube.generic_resource``) for each kind
of :data:`KINDS`, the core group and the ModelDeployment CRD alike, and ``Client.get``,
``list``, ``apply``, ``patch``, ``create`` and ``delete``; the kubeconfig or the pod's
service account through ``lightkube.KubeConfig``.

Under lightkube sits this module's own transport (lightkube's documented ``transport``
argument), for what the operator needs of every request and lightkube leaves to its
caller: the User-Agent ``modelship-operator``, a bounded retry of answers the API server
asks to have retried (429, and a 5xx with Retry-After), a count of requests, and TLS from
the kubeconfig (a transport of one's own replaces the one lightkube would configure).
One connection pool serves every thread: kopf runs sync handlers in a thread pool.

Errors: every non-2xx answer raises :class:`ApiError`, and so does a connection failure or
a timeout (status 0); :attr:`ApiError.transient` tells a caller whether a retry can help
(409, 429, 5xx, connection failures and timeouts).
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import json
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import lightkube
from lightkube.generic_resource import (
    create_global_resource,
    create_namespaced_resource,
    get_generic_resource,
)
from lightkube.types import CascadeType, PatchType

from modelship_operator.trust import redact

USER_AGENT = "modelship-operator"
ATTEMPTS = 3  # sends of one request at most, the first included
MAX_WAIT = 10.0  # seconds: the longest Retry-After honoured between two of them
THROTTLED_WAIT = 1.0  # seconds before resending a 429 that names no Retry-After
MESSAGE_CHARS = 500  # of an error's message, at most


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the REST API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.split("/")[0] if "/" in self.api_version else ""

    @property
    def version(self) -> str:
        return self.api_version.split("/")[-1]

    def collection_path(self, namespace: str | None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{quote(namespace)}/{self.plural}"
        return f"{base}/{self.plural}"

    def object_path(self, namespace: str | None, name: str) -> str:
        return f"{self.collection_path(namespace)}/{quote(name)}"


KINDS: dict[tuple[str, str], Kind] = {
    (k.api_version, k.kind): k
    for k in (
        Kind("apps/v1", "Deployment", "deployments"),
        Kind("v1", "Service", "services"),
        Kind("v1", "ServiceAccount", "serviceaccounts"),
        Kind("v1", "Secret", "secrets"),
        Kind("v1", "ConfigMap", "configmaps"),
        Kind("v1", "Event", "events"),
        Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
        Kind("networking.k8s.io/v1", "Ingress", "ingresses"),
        Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
        Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
        Kind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
        Kind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),
        Kind("modelship.io/v1alpha1", "ModelDeployment", "modeldeployments"),
    )
}


def kind_of(api_version: str, kind: str) -> Kind:
    """The REST location of a kind; KeyError for a kind the operator never touches."""
    return KINDS[(api_version, kind)]


_resource_lock = threading.Lock()


def resource(kind: Kind) -> Any:
    """lightkube's generic resource class of `kind` (made once, then looked up).

    Generic, not lightkube's typed models, for every kind: objects stay plain dicts."""
    with _resource_lock:  # lightkube's registry is one per process
        found = get_generic_resource(kind.api_version, kind.kind)  # type: ignore[no-untyped-call]
        if found is not None:
            return found
        create = create_namespaced_resource if kind.namespaced else create_global_resource
        return create(kind.group, kind.version, kind.kind, kind.plural)


for _kind in KINDS.values():
    resource(_kind)


class ApiError(Exception):
    """A Kubernetes API call that did not succeed."""

    def __init__(self, status: int, reason: str, message: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """True when the same call may succeed later (conflict, throttling, server trouble)."""
        return self.status in (0, 409, 429) or self.status >= 500

    @property
    def not_found(self) -> bool:
        return self.status == 404


def _clean(text: str) -> str:
    """A message fit for a log line or a status: no URL credentials, bounded."""
    return redact(" ".join(text.split()))[:MESSAGE_CHARS]


def _from_answer(response: httpx2.Response, method: str, path: str) -> ApiError:
    """The error a non-2xx answer means: the API server's Status when the body is one,
    else the HTTP reason and the body's text."""
    reason, message = response.reason_phrase, response.text
    try:
        decoded = json.loads(response.content)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        reason = str(decoded.get("reason") or reason)
        message = str(decoded.get("message") or message)
    return ApiError(response.status_code, _clean(reason), _clean(message), method, path)


def retry_after(response: httpx2.Response) -> float | None:
    """Seconds to wait before sending again, or None when the answer is not to be retried.

    A 429 is always retried (the server did not act on it); a 5xx only when it says when,
    with Retry-After, as client-go does: a write answered 500 may have been carried out.
    """
    status = response.status_code
    if status != 429 and status < 500:
        return None
    header = response.headers.get("Retry-After", "").strip()
    if not header:
        return THROTTLED_WAIT if status == 429 else None
    if header.isdigit():
        return float(header)
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return THROTTLED_WAIT if status == 429 else None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(tz=datetime.UTC)).total_seconds())


def ssl_context(config: lightkube.SingleConfig) -> ssl.SSLContext:
    """Server verification and client certificate as the kubeconfig's cluster and user say."""
    cluster, user = config.cluster, config.user
    if cluster.insecure:
        context = httpx2.create_ssl_context(verify=False, trust_env=False)
    elif cluster.certificate_auth:
        context = ssl.create_default_context(cafile=str(config.abs_file(cluster.certificate_auth)))
    elif cluster.certificate_auth_data:
        pem = base64.b64decode(cluster.certificate_auth_data).decode()
        context = ssl.create_default_context(cadata=pem)
    else:
        context = httpx2.create_ssl_context(trust_env=False)
    if user is not None and (user.client_cert or user.client_cert_data):
        with tempfile.TemporaryDirectory() as folder:  # ssl reads a key pair from files only

            def path(name: str, file: str | None, data: str | None) -> str:
                if data:
                    target = Path(folder) / name
                    target.write_bytes(base64.b64decode(data))
                    return str(target)
                if not file:
                    raise lightkube.ConfigError(f"the kubeconfig user has no {name}")
                return str(config.abs_file(file))

            context.load_cert_chain(
                path("client-certificate", user.client_cert, user.client_cert_data),
                path("client-key", user.client_key, user.client_key_data),
            )
    return context


# A kubeconfig user with no credentials (KubeConfig.from_server makes a config without one).
_ANONYMOUS = lightkube.KubeConfig.from_dict(
    {"clusters": [], "contexts": [], "users": [{"name": "anonymous", "user": {}}]}
).users["anonymous"]


class OperatorTransport(httpx2.BaseTransport):
    """Every request the operator sends: its User-Agent, counted, throttling honoured.

    An answer the server asks to have retried (see :func:`retry_after`) is sent again
    after the wait it names, capped at `max_wait`, `attempts` sends in all; what the last
    send got goes back to the caller. Error answers reach lightkube as opaque bytes:
    :class:`KubeClient` decodes them itself, whatever their body or Content-Type.
    """

    def __init__(
        self,
        inner: httpx2.BaseTransport,
        *,
        attempts: int = ATTEMPTS,
        max_wait: float = MAX_WAIT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._inner = inner
        self._attempts = max(1, attempts)
        self._max_wait = max_wait
        self._sleep = sleep
        self._lock = threading.Lock()
        self.sent = 0

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers["User-Agent"] = USER_AGENT
        attempt = 1
        while True:
            with self._lock:
                self.sent += 1
            response = self._inner.handle_request(request)
            wait = retry_after(response) if attempt < self._attempts else None
            if wait is None:
                break
            response.close()
            self._sleep(min(wait, self._max_wait))
            attempt += 1
        if not response.is_success:
            # lightkube decodes an error body itself only when it is labelled exactly
            # application/json, and fails on an answer without a Content-Type or with a
            # body that is not a Status; the body is read here, and decoded by KubeClient.
            response.read()
            response.headers["Content-Type"] = "application/octet-stream"
        return response

    def close(self) -> None:
        self._inner.close()


class KubeClient:
    """Synchronous client of plain-dict objects; safe to share between kopf's handler threads."""

    def __init__(
        self,
        config: lightkube.KubeConfig | lightkube.SingleConfig,
        timeout: float = 10.0,
        *,
        attempts: int = ATTEMPTS,
        max_wait: float = MAX_WAIT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        single = config.get() if isinstance(config, lightkube.KubeConfig) else config
        if single is None:
            raise lightkube.ConfigError("the kubeconfig selects no context")
        if single.user is None:  # lightkube's client wants a user, even one with nothing
            single = single._replace(user=_ANONYMOUS)
        self._transport = OperatorTransport(
            httpx2.HTTPTransport(verify=ssl_context(single)),
            attempts=attempts,
            max_wait=max_wait,
            sleep=sleep,
        )
        self._client = lightkube.Client(
            single,
            timeout=httpx2.Timeout(timeout),
            trust_env=False,  # no proxy or CA bundle from the environment: the kubeconfig's
            transport=self._transport,
        )

    @classmethod
    def from_environment(cls, timeout: float = 10.0) -> KubeClient:
        """In-cluster credentials when in a pod, else the current kubeconfig context."""
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            try:
                return cls(lightkube.KubeConfig.from_service_account(), timeout=timeout)
            except lightkube.ConfigError:
                pass  # no service account token mounted: a kubeconfig, as outside a pod
        # KUBECONFIG is read now, not when a module was imported.
        return cls.from_kubeconfig(os.environ.get("KUBECONFIG") or "~/.kube/config", timeout)

    @classmethod
    def from_kubeconfig(cls, path: str | os.PathLike[str], timeout: float = 10.0) -> KubeClient:
        """The current context of the kubeconfig file at `path`."""
        return cls(lightkube.KubeConfig.from_file(path), timeout=timeout)

    @property
    def requests_sent(self) -> int:
        """HTTP requests sent so far, each retry counted."""
        return self._transport.sent

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, call: Callable[[], Any]) -> Any:
        """Run one lightkube call; any failure becomes an :class:`ApiError`."""
        try:
            return call()
        except httpx2.HTTPStatusError as exc:  # lightkube.ApiError included
            raise _from_answer(exc.response, method, path) from None
        except httpx2.HTTPError as exc:  # connection refused, reset, timed out, ...
            raise ApiError(0, type(exc).__name__, _clean(str(exc)), method, path) from None

    # -- typed helpers ----------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The live object, or None when it does not exist."""
        res = resource(kind)
        try:
            found = self._call("GET", kind.object_path(namespace, name),
                               lambda: self._client.get(res, name, namespace=namespace))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return dict(found)

    def list(
        self, kind: Kind, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Objects of `kind` in `namespace` (every namespace when None) matching an
        equality-based label selector (``key=value,key2=value2``)."""
        res = resource(kind)
        labels = _selector(label_selector) if label_selector else None
        scope = namespace or (lightkube.ALL_NS if kind.namespaced else None)
        items = self._call(
            "GET", kind.collection_path(namespace),
            lambda: list(self._client.list(res, namespace=scope, labels=labels)),
        )
        return [dict(item) for item in items]

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        """Server-side apply of a whole object under `field_manager` (forcing ownership)."""
        kind = kind_of(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        applied = self._call(
            "PATCH", kind.object_path(meta.get("namespace"), meta["name"]),
            lambda: self._client.patch(
                resource(kind), meta["name"], obj, namespace=meta.get("namespace"),
                patch_type=PatchType.APPLY, field_manager=field_manager, force=True,
            ),
        )
        return dict(applied)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create `obj` (409 Conflict when one of its name exists)."""
        kind = kind_of(obj["apiVersion"], obj["kind"])
        namespace = obj["metadata"].get("namespace")
        created = self._call(
            "POST", kind.collection_path(namespace),
            lambda: self._client.create(resource(kind)(obj), namespace=namespace),
        )
        return dict(created)

    def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        """Delete with background propagation; False when it was already gone."""
        res = resource(kind)
        try:
            self._call(
                "DELETE", kind.object_path(namespace, name),
                lambda: self._client.delete(res, name, namespace=namespace,
                                            cascade=CascadeType.BACKGROUND),
            )
        except ApiError as exc:
            if exc.not_found:
                return False
            raise
        return True

    def patch_status(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch of the status subresource.

        With `resource_version`, the API server refuses the patch (409 Conflict) when the
        object changed since that version: a status computed from what was read then is
        not written over a newer one. The conflict is the caller's to handle.
        """
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        patched = self._call(
            "PATCH", kind.object_path(namespace, name) + "/status",
            lambda: self._client.patch(resource(kind).Status, name, body, namespace=namespace,
                                       patch_type=PatchType.MERGE),
        )
        return dict(patched)


def _selector(text: str) -> dict[str, Any]:
    """``key=value,...`` as lightkube's labels mapping; other selector forms are refused."""
    pairs: dict[str, Any] = {}
    for term in text.split(","):
        key, sep, value = term.partition("=")
        if not sep or not key.strip() or value.startswith("=") or key.endswith("!"):
            raise ValueError(f"not an equality label selector term: {term!r}")
        pairs[key.strip()] = value.strip()
    return pairs

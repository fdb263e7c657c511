"""A thin, typed layer over the Kubernetes API: server-side apply, get, list, delete.

Why not the generated client's typed APIs: the operator handles children as plain dicts
(what render produces) across eight kinds and a CRD, and needs server-side apply with
one field manager. So this module uses the `kubernetes` package for what it is good at
(kubeconfig / in-cluster credentials, TLS, connection pooling) and speaks REST paths
itself from a static table of the kinds it touches (no discovery round-trips).

Errors: every non-2xx answer raises :class:`ApiError`; :attr:`ApiError.transient` tells
a caller whether a retry can help (409, 429, 5xx, connection failures and timeouts).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException


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


class KubeClient:
    """Synchronous JSON client; safe to share between kopf's handler threads."""

    def __init__(self, api_client: k8s_client.ApiClient, timeout: float = 10.0) -> None:
        self._api = api_client
        self._timeout = timeout
        self._lock = threading.Lock()
        self.requests_sent = 0

    @classmethod
    def from_environment(cls, timeout: float = 10.0) -> KubeClient:
        """In-cluster credentials when in a pod, else the current kubeconfig context."""
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except k8s_config.ConfigException:
            # KUBECONFIG is read now, not when the kubernetes package was imported.
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=os.environ.get("KUBECONFIG") or None,
                client_configuration=configuration,
            )
        return cls(k8s_client.ApiClient(configuration), timeout=timeout)

    # -- raw ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> Any:
        """Send one request; the decoded JSON answer, or raise ApiError."""
        configuration = self._api.configuration
        url = configuration.host.rstrip("/") + path
        if query:
            url += "?" + urlencode(query)
        headers = {"Accept": "application/json", "User-Agent": "modelship-operator"}
        for auth in configuration.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        if body is not None:
            # The REST layer serialises JSON and structured YAML (apply-patch+yaml) bodies.
            headers["Content-Type"] = content_type
        with self._lock:
            self.requests_sent += 1
        try:
            response = self._api.rest_client.request(  # type: ignore[no-untyped-call]
                method,
                url,
                headers=headers,
                body=body,
                _request_timeout=self._timeout,
            )
            data = response.read()
            status = response.status
        except (urllib3.exceptions.HTTPError, OSError, ApiException) as exc:
            raise ApiError(0, type(exc).__name__, str(exc), method, path) from exc
        if not 200 <= status < 300:
            reason, message = "", data.decode(errors="replace")[:500]
            try:
                decoded = json.loads(data)
                reason = str(decoded.get("reason", ""))
                message = str(decoded.get("message", message))[:500]
            except (ValueError, AttributeError):
                pass
            raise ApiError(status, reason, message, method, path)
        return json.loads(data) if data else None

    # -- typed helpers ----------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The live object, or None when it does not exist."""
        try:
            result: dict[str, Any] = self.request("GET", kind.object_path(namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return result

    def list(
        self, kind: Kind, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        result = self.request("GET", kind.collection_path(namespace), query=query)
        items: list[dict[str, Any]] = list((result or {}).get("items") or [])
        return items

    def apply(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        """Server-side apply of a whole object under `field_manager` (forcing ownership)."""
        kind = kind_of(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        result: dict[str, Any] = self.request(
            "PATCH",
            kind.object_path(meta.get("namespace"), meta["name"]),
            obj,
            content_type="application/apply-patch+yaml",
            query={"fieldManager": field_manager, "force": "true"},
        )
        return result

    def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        """Delete with background propagation; False when it was already gone."""
        try:
            self.request(
                "DELETE",
                kind.object_path(namespace, name),
                {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
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
        not written over a newer one.
        """
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        result: dict[str, Any] = self.request(
            "PATCH",
            kind.object_path(namespace, name) + "/status",
            body,
            content_type="application/merge-patch+json",
        )
        return result

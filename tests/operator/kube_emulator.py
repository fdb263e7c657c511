"""A Kubernetes API for the operator's integration tests: KMock's KubernetesEmulator.

The emulator runs on its own event loop in a thread and serves real HTTP on a loopback
port; the operator talks to it through a kubeconfig, exactly as it talks to a cluster.
Two additions make it closer to a real API server for what the operator relies on:

- server-side apply (PATCH with application/apply-patch+yaml) creates a missing object,
  and with a single field manager the applied object replaces the fields it set before
  (so a field dropped from the applied object is removed, as SSA does);
- metadata.uid, generation (bumped on a spec change), resourceVersion and
  creationTimestamp are kept, and a patch or update that names a resourceVersion other
  than the stored one is refused with 409 Conflict.

It also tells which requests came from the operator (its User-Agent) so tests can count
them, records who controlled each object a request wrote or deleted, before and after
(:class:`Write`), and can answer chosen requests with an error a given number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
from kmock._internal import enums  # the action enum is the emulator's own vocabulary
from modelship_operator.k8s import KINDS

OPERATOR_AGENT = "modelship-operator"


@dataclass(frozen=True)
class Write:
    """One write or delete of a named object, with its controller before and after."""

    method: str
    plural: str
    namespace: str | None
    name: str
    uid: str | None  # the object's own uid before the request (None: it did not exist)
    controller_before: str | None  # uid of its controller ownerReference, if any
    controller_after: str | None  # as the request body sets it (None for a delete)
    agent: str


def _controller(obj: Any) -> str | None:
    refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return next((str(r.get("uid")) for r in refs if r.get("controller")), None)


def _removals(old: Any, new: Any) -> Any:
    """A merge patch turning `old` into `new`: keys absent from `new` become None."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return new
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        patch[key] = _removals(old.get(key), value) if key in old else value
    return patch


class ApplyingEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """KubernetesEmulator with server-side apply and object metadata bookkeeping."""

    faults: list[tuple[Callable[[kmock.Request], bool], int, list[int]]]
    log: list[tuple[str, str, dict[str, str], str]]
    writes: list[Write]
    _counter: int
    _index: dict[tuple[str, str, str, str | None], list[Any]]
    _indexed: int

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        object.__setattr__(self, "faults", [])
        object.__setattr__(self, "_counter", 0)
        object.__setattr__(self, "log", [])
        object.__setattr__(self, "writes", [])
        object.__setattr__(self, "_index", {})
        object.__setattr__(self, "_indexed", -1)

    def _record_write(self, request: kmock.Request) -> None:
        method = str(request.method.value)
        if method not in ("POST", "PUT", "PATCH", "DELETE") or request.subresource is not None:
            return
        body = request.data if isinstance(request.data, dict) else {}
        name = request.name or (body.get("metadata") or {}).get("name")
        if request.resource is None or not name:
            return
        key = (request.resource, request.namespace, name)
        before = None
        if key in self.objects and not self.objects[key].deleted:
            before = self.objects[key].raw
        self.writes.append(
            Write(
                method, request.resource.plural, request.namespace, str(name),
                ((before or {}).get("metadata") or {}).get("uid"),
                _controller(before),
                None if method == "DELETE" else _controller(body),
                request.headers.get("User-Agent", ""),
            )
        )

    def _next_rv(self) -> str:
        object.__setattr__(self, "_counter", self._counter + 1)
        return str(self._counter)

    async def _handle(self, request: kmock.Request) -> Any:
        self.log.append(
            (
                str(request.method.value),
                request.url.path,
                dict(request.params),
                request.headers.get("User-Agent", ""),
            )
        )
        try:
            for matcher, status, remaining in self.faults:
                if remaining[0] > 0 and matcher(request):
                    remaining[0] -= 1
                    raise kmock.KubernetesError(
                        status=status, reason="Injected", message="injected"
                    )
            self._record_write(request)
            if request.resource is not None and isinstance(request.data, dict):
                request = await self._bookkeep(request)
            return await super()._handle(request)
        finally:
            # kmock matches every request against its whole request history, which makes
            # a long run quadratic; our own log above keeps what the tests read.
            with contextlib.suppress(ValueError):
                self._requests.remove(request)
            self._trim_history(request)

    def _trim_history(self, request: kmock.Request) -> None:
        """Keep the last two versions of a written object: kmock keeps every version (a deep
        copy per write), which at thousands of objects is most of the process's memory."""
        if request.resource is None or str(request.method.value) == "GET":
            return
        name = request.name
        namespace = request.namespace
        if name is None and isinstance(request.data, dict):
            meta = request.data.get("metadata") or {}
            name, namespace = meta.get("name"), namespace or meta.get("namespace")
        key = (request.resource, namespace, name)
        if name is not None and key in self.objects:
            history = self.objects[key].history
            while len(history) > 2:
                history.pop(0)

    # Requests that name an object: one dict lookup instead of kmock's scan of every stored
    # object (O(objects) per request, hours at ten thousand ModelDeployments).
    def _KubernetesEmulator__get_objs(self, request: kmock.Request, strict: bool) -> list[Any]:
        if request.resource is not None and request.name is not None and (
            strict or request.namespace is not None
        ):
            key = (request.resource, request.namespace, request.name)
            return [self.objects[key]] if key in self.objects else []
        if request.resource is None:
            candidates = list(self.objects.items())
        else:
            # Lists and watches: only the keys of that resource (and namespace), from an
            # index rebuilt when objects were added (kmock never forgets a key).
            if len(self.objects) != self._indexed:
                index: dict[tuple[str, str, str, str | None], list[Any]] = {}
                for key in self.objects:
                    r = key[0]
                    index.setdefault((r.group, r.version, r.plural, None), []).append(key)
                    index.setdefault((r.group, r.version, r.plural, key[1]), []).append(key)
                object.__setattr__(self, "_index", index)
                object.__setattr__(self, "_indexed", len(self.objects))
            wanted = request.resource
            keys = self._index.get(
                (wanted.group, wanted.version, wanted.plural, request.namespace), [])
            candidates = [(key, self.objects[key]) for key in keys]
        return [
            obj
            for (resource, namespace, name), obj in candidates
            if self._KubernetesEmulator__check(request, resource, namespace, name, strict)
        ]

    # kmock's own object matching runs its generic criteria engine for every stored
    # object on every request (about 50 ms per request at 300 objects); requests parsed
    # from URLs always name a concrete resource, so plain comparisons do the same job.
    def _KubernetesEmulator__check(
        self,
        request: kmock.Request,
        resource: kmock.resource,
        namespace: str | None,
        name: str,
        strict: bool,
    ) -> bool:
        wanted = request.resource
        if wanted is None or (resource.group, resource.version, resource.plural) != (
            wanted.group,
            wanted.version,
            wanted.plural,
        ):
            return False
        if strict:
            namespace_ok = namespace == request.namespace
        else:
            namespace_ok = request.namespace is None or namespace == request.namespace
        return namespace_ok and (request.name is None or name == request.name)

    async def _serve_list(self, request: kmock.Request) -> Any:
        """Lists honour equality-based label selectors, as the API server does."""
        result = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector and isinstance(result, dict):
            wanted = dict(term.split("=", 1) for term in selector.split(",") if "=" in term)
            result["items"] = [
                item
                for item in result["items"]
                if all(
                    (item.get("metadata", {}).get("labels") or {}).get(k) == v
                    for k, v in wanted.items()
                )
            ]
        return result

    async def _bookkeep(self, request: kmock.Request) -> kmock.Request:
        content_type = request.headers.get("Content-Type", "")
        key = (request.resource, request.namespace, request.name)
        existing = self.objects[key] if request.name and key in self.objects else None
        alive = existing is not None and not existing.deleted
        now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data = json.loads(json.dumps(request.data))
        apply_create = (
            request.action == enums.action.UPDATE and "apply-patch" in content_type and not alive
        )
        if request.action == enums.action.CREATE or apply_create:
            meta = data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta["generation"] = 1
            meta["resourceVersion"] = self._next_rv()
            meta.setdefault("creationTimestamp", now)
            if request.namespace and "namespace" not in meta:
                meta["namespace"] = request.namespace
            if apply_create:
                # Server-side apply creates what is missing: store it, then let the
                # emulator's own update path patch it (with the same data) and answer.
                async with self._lock:
                    if key in self.objects:
                        self.objects[key].create(data)
                    else:
                        self.objects[key] = data
                    await self._buses[request.resource].put(
                        {"type": "ADDED", "object": self.objects[key].raw}
                    )
            return _replace_data(request, data)
        if request.action == enums.action.UPDATE and alive:
            assert existing is not None
            old = existing.raw
            old_meta = old.get("metadata", {})
            meta = data.setdefault("metadata", {})
            wanted_rv = meta.get("resourceVersion")
            if "apply-patch" not in content_type and wanted_rv is not None and (
                str(wanted_rv) != str(old_meta.get("resourceVersion"))
            ):
                # A write conditional on the version it was computed from, as the API
                # server does it: refused when the object changed since.
                raise kmock.KubernetesError(
                    status=409, reason="Conflict",
                    message="the object has been modified; please apply your changes to "
                    "the latest version and try again",
                )
            if "apply-patch" in content_type:
                # One field manager: the applied object is the whole truth for its fields.
                data = {k: _removals(old.get(k), v) for k, v in data.items()}
                for k in old:
                    if k not in data and k not in ("status", "metadata", "apiVersion", "kind"):
                        data[k] = None
                meta = data.setdefault("metadata", {})
                for k in ("uid", "creationTimestamp", "generation", "resourceVersion"):
                    meta.pop(k, None)
                    if k in old_meta:
                        meta[k] = old_meta[k]
            if request.subresource is None and "spec" in data:
                merged = json.loads(json.dumps(old.get("spec")))
                if isinstance(merged, dict) and isinstance(data["spec"], dict):
                    merged = _merge(merged, data["spec"])
                else:
                    merged = data["spec"]
                if merged != old.get("spec"):
                    meta["generation"] = int(old_meta.get("generation") or 1) + 1
            meta["resourceVersion"] = self._next_rv()
            return _replace_data(request, data)
        return request


def _replace_data(request: kmock.Request, data: dict[str, Any]) -> kmock.Request:
    """Swap the parsed body in place (a rebuilt Request no longer matches kmock's reactions)."""
    request.data.clear()
    request.data.update(data)
    return request


def _merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


class Cluster:
    """The emulator on a background loop, with thread-safe helpers for tests."""

    def __init__(self, workdir: Path, without: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.without = without
        """Plurals of kinds this API does not serve (e.g. a cluster without Gateway API)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stack: Any = None
        self.emulator: ApplyingEmulator | None = None
        self.url = ""

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Cluster:
        self._thread.start()
        self._call(self._start())
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "test-token"}}],
                    "contexts": [
                        {"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}
                    ],
                    "current-context": "emulator",
                }
            )
        )
        return self

    async def _start(self) -> None:
        from contextlib import AsyncExitStack

        self._stack = AsyncExitStack()
        emulator = ApplyingEmulator()
        for kind in KINDS.values():
            if kind.plural in self.without:
                continue
            group = kind.group
            key = f"{group}/{kind.version}/{kind.plural}" if group else f"v1/{kind.plural}"
            emulator.resources[key] = kmock.ResourceInfo(
                kind=kind.kind,
                namespaced=kind.namespaced,
                verbs=["get", "list", "watch", "create", "update", "patch", "delete"],
                subresources=["status"] if kind.kind == "ModelDeployment" else [],
                shortnames=["md"] if kind.kind == "ModelDeployment" else [],
            )
        # What every real cluster serves and kopf waits for in discovery.
        emulator.resources["v1/namespaces"] = kmock.ResourceInfo(
            kind="Namespace", namespaced=False, verbs=["get", "list", "watch"]
        )
        emulator.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = (
            kmock.ResourceInfo(
                kind="CustomResourceDefinition", namespaced=False, verbs=["get", "list", "watch"]
            )
        )
        await self._stack.enter_async_context(emulator)
        server = await self._stack.enter_async_context(kmock.Server(emulator))
        self.emulator = emulator
        self.url = str(server.url).rstrip("/")

    def stop(self) -> None:
        if self._stack is not None:
            self._call(self._stack.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _call(self, coro: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=timeout)

    def _sync(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return self._call(run())

    # -- reading state --------------------------------------------------------------------

    def objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Live (not deleted) objects of a resource plural, e.g. 'deployments'."""

        def pick() -> list[dict[str, Any]]:
            assert self.emulator is not None
            found = []
            for (resource, ns, _name), obj in self.emulator.objects.items():
                if resource.plural != plural or obj.deleted:
                    continue
                if namespace is not None and ns != namespace:
                    continue
                found.append(json.loads(json.dumps(obj.raw)))
            return found

        result: list[dict[str, Any]] = self._sync(pick)
        return result

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        for obj in self.objects(plural, namespace):
            if obj.get("metadata", {}).get("name") == name:
                return obj
        return None

    def requests(self, since: int = 0) -> list[tuple[str, str, dict[str, str], str]]:
        """(method, path, query, user-agent) of every request served so far (from the
        `since`-th on)."""

        def snapshot() -> list[tuple[str, str, dict[str, str], str]]:
            assert self.emulator is not None
            return self.emulator.log[since:]

        result: list[tuple[str, str, dict[str, str], str]] = self._sync(snapshot)
        return result

    def inspect(self, fn: Callable[[ApplyingEmulator], Any]) -> Any:
        """`fn(emulator)`, run on the emulator's loop (between requests); keep it short."""
        emulator = self.emulator
        assert emulator is not None
        return self._sync(lambda: fn(emulator))

    def writes(self) -> list[Write]:
        """Every write or delete of a named object served so far, in order."""

        def snapshot() -> list[Write]:
            assert self.emulator is not None
            return list(self.emulator.writes)

        result: list[Write] = self._sync(snapshot)
        return result

    def inject(self, matcher: Callable[[kmock.Request], bool], status: int, times: int) -> None:
        """Answer the next `times` requests matching `matcher` with HTTP `status`."""

        def add() -> None:
            assert self.emulator is not None
            self.emulator.faults.append((matcher, status, [times]))

        self._sync(add)

    # -- acting as a user or a kubelet ----------------------------------------------------

    def http(self, method: str, path: str, body: Any = None, content_type: str = "") -> Any:
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", content_type or "application/json")
        req.add_header("User-Agent", "test-user")
        with urllib.request.urlopen(req, timeout=10) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def create_md(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        ns = manifest["metadata"].get("namespace", "default")
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": ns}}
        result: dict[str, Any] = self.http(
            "POST", f"/apis/modelship.io/v1alpha1/namespaces/{ns}/modeldeployments", body
        )
        return result

    def patch_md(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.http(
            "PATCH",
            f"/apis/modelship.io/v1alpha1/namespaces/{namespace}/modeldeployments/{name}",
            patch,
            "application/merge-patch+json",
        )

    def publish_endpoint(self, namespace: str, service: str, deployment: str, port: int) -> None:
        """Play the EndpointSlice controller: one ready pod of `deployment` behind `service`,
        on 127.0.0.1:`port`, its name as a ReplicaSet gives it."""
        self.http("POST", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-x7k2p", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": ["127.0.0.1"],
                "conditions": {"ready": True},
                "targetRef": {"kind": "Pod", "namespace": namespace,
                              "name": f"{deployment}-6d4f9c7b8-abc12"},
            }],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        })

    def mark_ready(self, namespace: str, name: str, replicas: int) -> None:
        """Play the kubelet and the Deployment controller: report ready pods."""
        self.http(
            "PATCH",
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/status",
            {"status": {"replicas": replicas, "readyReplicas": replicas}},
            "application/merge-patch+json",
        )

    def delete(self, path: str) -> None:
        self.http("DELETE", path)


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition"
) -> Any:
    """Poll until `predicate` returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def operator_requests(cluster: Cluster) -> list[tuple[str, str, dict[str, str], str]]:
    """Every request not sent by the test itself (our client and kopf's)."""
    return [r for r in cluster.requests() if r[3] != "test-user"]

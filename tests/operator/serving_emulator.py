"""The serving side of a cluster, in Kubernetes' own order of events, for one namespace.

`Pods` plays three parts against the emulated API:

- the kubelet: a Deployment that appears gets a real `modelship-runtime serve` process
  (one process stands for all its replicas; the model directory comes from the test,
  the MODELSHIP_ env from the Deployment's runtime container), reported ready with
  ``status.readyReplicas = spec.replicas``; a Deployment that goes gets SIGTERM sent to
  its process at once;
- the EndpointSlice controller: one slice per Service and selected pod (what the
  operator's `pods` analysis provider reads);
- kube-proxy and the ingress controller: `Router` sends each request as they would
  (Ingress ``NAME`` and its canary twin by weight, then a Service's endpoints, each
  process weighted by its Deployment's replicas), but from the picture of the cluster as
  it was `lag` seconds ago. Endpoint removal reaches real routers a second or two after
  a pod is told to stop, and that window is where requests get lost.

`Traffic` sends requests through the router from threads and keeps every outcome.
"""

from __future__ import annotations

import bisect
import contextlib
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kube_emulator import Cluster
from runtime_proc import Runtime

CANARY_ANNOTATION = "nginx.ingress.kubernetes.io/canary"
WEIGHT_ANNOTATION = "nginx.ingress.kubernetes.io/canary-weight"


@dataclass
class Pod:
    """The process standing for the pods of one Deployment."""

    deployment: str
    version: str
    labels: dict[str, str]
    runtime: Runtime
    ready: bool = False
    failed: str | None = None
    sigterm_at: float | None = None
    exit_code: int | None = None

    @property
    def url(self) -> str:
        return self.runtime.url


@dataclass(frozen=True)
class Endpoint:
    url: str
    version: str
    deployment: str
    weight: int  # pods behind it


@dataclass(frozen=True)
class Picture:
    """What routers know: each Service's endpoints, and the Ingress split (if any)."""

    services: Mapping[str, tuple[Endpoint, ...]]
    ingress: tuple[str, str | None, int] | None = None  # (service, canary service, weight)


class Router:
    """Routes a request from the picture of the cluster as it was `lag` seconds ago."""

    def __init__(self, lag: float, service: str) -> None:
        self.lag = lag
        self.service = service  # what a request without an Ingress goes to
        self._times: list[float] = []
        self._pictures: list[Picture] = []
        self._lock = threading.Lock()
        self._random = random.Random(11)

    def observe(self, now: float, picture: Picture) -> None:
        with self._lock:
            if self._pictures and self._pictures[-1] == picture:
                return
            self._times.append(now)
            self._pictures.append(picture)

    def current(self, now: float | None = None) -> Picture | None:
        """The picture routers act on at `now` (None before any has arrived)."""
        moment = (time.monotonic() if now is None else now) - self.lag
        with self._lock:
            i = bisect.bisect_right(self._times, moment)
            return self._pictures[i - 1] if i else None

    def pick(self) -> Endpoint | None:
        """The endpoint the next request goes to; None: no endpoint (a 503 at the proxy)."""
        picture = self.current()
        if picture is None:
            return None
        with self._lock:
            service = self.service
            if picture.ingress is not None:
                main, canary, weight = picture.ingress
                service = canary if canary and self._random.uniform(0, 100) < weight else main
            endpoints = picture.services.get(service, ())
            if not endpoints:
                return None
            return self._random.choices(endpoints, [e.weight for e in endpoints])[0]


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class Pods:
    """Kubelet, EndpointSlice controller and routers for the namespace `ns`."""

    def __init__(self, cluster: Cluster, ns: str, models: Mapping[str, Path], logs: Path,
                 lag: float = 1.5, service: str = "iris") -> None:
        self.cluster = cluster
        self.ns = ns
        self.models = models
        self.logs = logs
        self.router = Router(lag, service)
        self.service = service
        self.pods: dict[str, Pod] = {}
        self.errors: list[str] = []
        self._slices: dict[str, tuple[str, str]] = {}  # slice name -> (service, url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Pods:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        for pod in self.pods.values():
            pod.runtime.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # the test reads these; the loop goes on
                self.errors.append(repr(exc))
            time.sleep(0.1)

    # -- one look at the cluster -----------------------------------------------------------

    def _sync(self) -> None:
        now = time.monotonic()
        deployments = {d["metadata"]["name"]: d for d in self.cluster.objects("deployments",
                                                                               self.ns)}
        for name, dep in deployments.items():
            if name not in self.pods:
                self._schedule(dep)
        for name, pod in self.pods.items():
            if name not in deployments and pod.sigterm_at is None:
                self._terminate(pod)
        for name, dep in deployments.items():
            pod = self.pods[name]
            wanted = (dep.get("spec") or {}).get("replicas", 1)
            ready = (dep.get("status") or {}).get("readyReplicas")
            if pod.ready and pod.sigterm_at is None and ready != wanted:
                self.cluster.mark_ready(self.ns, name, int(wanted))
        picture = self._picture(deployments)
        self.router.observe(now, picture)
        self._publish(picture)

    def _schedule(self, dep: dict[str, Any]) -> None:
        meta = dep["metadata"]
        labels = dict(dep["spec"]["template"]["metadata"]["labels"])
        version = next(e["value"] for e in self._env(dep) if e["name"] == "MODELSHIP_MODEL_VERSION")
        env = {e["name"]: e["value"] for e in self._env(dep)
               if e["name"].startswith("MODELSHIP_") and "value" in e}
        env["MODELSHIP_LOG_LEVEL"] = "INFO"
        # Emulated pods share one host: each gets its own HTTP port, and none the rendered
        # gRPC port (they would all want the same one).
        env["MODELSHIP_GRPC_PORT"] = "0"
        runtime = Runtime(["--model-dir", str(self.models[version])],
                          self.logs / f"{meta['name']}.log", env=env)
        pod = Pod(meta["name"], version, labels, runtime)
        self.pods[meta["name"]] = pod

        def boot() -> None:
            try:
                runtime.start()
                pod.ready = True
            except Exception as exc:
                pod.failed = repr(exc)
                self.errors.append(f"{pod.deployment}: {exc!r}")

        threading.Thread(target=boot, daemon=True).start()

    @staticmethod
    def _env(dep: dict[str, Any]) -> list[dict[str, Any]]:
        (main,) = [c for c in dep["spec"]["template"]["spec"]["containers"]
                   if c["name"] == "runtime"]
        return list(main.get("env") or [])

    def _terminate(self, pod: Pod) -> None:
        """The kubelet's part (without a preStop hook): SIGTERM now, then wait for the exit."""
        pod.sigterm_at = time.monotonic()
        proc = pod.runtime.proc
        if proc is None or proc.poll() is not None:
            pod.exit_code = proc.returncode if proc is not None else None
            return
        proc.terminate()

        def reap() -> None:
            try:
                pod.exit_code = proc.wait(120)
            except Exception as exc:
                self.errors.append(f"{pod.deployment} did not exit: {exc!r}")
                proc.kill()

        threading.Thread(target=reap, daemon=True).start()

    def _picture(self, deployments: Mapping[str, dict[str, Any]]) -> Picture:
        services: dict[str, tuple[Endpoint, ...]] = {}
        for svc in self.cluster.objects("services", self.ns):
            selector = (svc.get("spec") or {}).get("selector") or {}
            services[svc["metadata"]["name"]] = tuple(
                Endpoint(pod.url, pod.version, name,
                         max(1, int((deployments[name].get("spec") or {}).get("replicas", 1))))
                for name, pod in sorted(self.pods.items())
                if name in deployments and pod.ready and pod.sigterm_at is None
                and _selects(selector, pod.labels)
            )
        ingress: tuple[str, str | None, int] | None = None
        ingresses = {i["metadata"]["name"]: i for i in self.cluster.objects("ingresses", self.ns)}
        main = ingresses.get(self.service)
        if main is not None:
            canary = ingresses.get(f"{self.service}--canary")
            notes = ((canary or {}).get("metadata") or {}).get("annotations") or {}
            if canary is not None and notes.get(CANARY_ANNOTATION) == "true":
                ingress = (_backend(main), _backend(canary), int(notes.get(WEIGHT_ANNOTATION, 0)))
            else:
                ingress = (_backend(main), None, 0)
        return Picture(services, ingress)

    def _publish(self, picture: Picture) -> None:
        """EndpointSlices as the controller writes them: one per Service and pod."""
        wanted: dict[str, tuple[str, Endpoint]] = {}
        for service, endpoints in picture.services.items():
            for endpoint in endpoints:
                wanted[f"{service}-{endpoint.deployment}"] = (service, endpoint)
        base = f"/apis/discovery.k8s.io/v1/namespaces/{self.ns}/endpointslices"
        for name in [n for n in self._slices if n not in wanted]:
            with contextlib.suppress(Exception):
                self.cluster.delete(f"{base}/{name}")
            del self._slices[name]
        for name, (service, endpoint) in wanted.items():
            if self._slices.get(name) == (service, endpoint.url):
                continue
            port = int(endpoint.url.rsplit(":", 1)[1])
            self.cluster.http("POST", base, {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": self.ns,
                             "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True},
                               "targetRef": {"kind": "Pod", "namespace": self.ns,
                                             "name": f"{endpoint.deployment}-abc12"}}],
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            })
            self._slices[name] = (service, endpoint.url)

    # -- what the test asks ------------------------------------------------------------------

    def pod(self, deployment: str) -> Pod | None:
        return self.pods.get(deployment)

    def routed(self, deployment: str) -> bool:
        """Whether routers still send requests to `deployment`'s pods."""
        picture = self.router.current()
        return picture is not None and any(
            e.deployment == deployment for eps in picture.services.values() for e in eps)

    def gone(self, deployment: str) -> Pod | None:
        """The pod once its Deployment is deleted, its process exited and no router
        sends it anything; None until then."""
        pod = self.pods.get(deployment)
        if pod is None or pod.exit_code is None or self.routed(deployment):
            return None
        return pod


def _backend(ingress: Mapping[str, Any]) -> str:
    rule = ingress["spec"]["rules"][0]
    return str(rule["http"]["paths"][0]["backend"]["service"]["name"])


@dataclass(frozen=True)
class Outcome:
    phase: str
    sent_at: float
    deployment: str | None
    result: int | str  # status code, or what went wrong


@dataclass
class Traffic:
    """Requests through the router from `threads` threads until stopped."""

    router: Router
    body: Callable[[int], object]
    threads: int = 2
    pause: float = 0.005
    phase: str = "start"
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, n: int) -> None:
        i = n
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                phase, sent = self.phase, time.monotonic()
                endpoint = self.router.pick()
                if endpoint is None:
                    self.outcomes.append(Outcome(phase, sent, None, "no endpoint"))
                else:
                    try:
                        r = client.post(f"{endpoint.url}/predict", json=self.body(i))
                        result: int | str = r.status_code
                    except httpx.HTTPError as exc:
                        result = type(exc).__name__
                    self.outcomes.append(Outcome(phase, sent, endpoint.deployment, result))
                i += self.threads
                time.sleep(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(15)

    def of(self, phase: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.phase == phase]

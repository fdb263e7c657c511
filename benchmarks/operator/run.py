"""Scale benchmark of the operator: N ModelDeployments to Ready, then a quiet cluster.

The real operator (`kopf run -m modelship_operator.handlers`) runs against KMock's
emulated Kubernetes API (`tests/operator/kube_emulator.py`, in a process of its own by
default) and a real `mlflow server` (`tests/operator/mlflow_proc.py`) behind a small
counting proxy, so every registry call the operator makes is counted at the MLflow side.

Before the clock starts, `--models` registered models get two versions each (one run's
MLmodel file) and the alias `champion` on version 2. The N ModelDeployments spread over
`--namespaces` namespaces and share those models: most pin version 1 or 2, a fraction
(`--alias-fraction`) follows the alias, so an operator that shares registry calls
between ModelDeployments shows it.

For each size it measures:

- time to converge: from the first create until every ModelDeployment is Ready for its
  current generation (the benchmark plays the kubelet: a Deployment's pods turn ready);
- a quiet window (`--quiet-seconds`, after `--settle-seconds`): the operator's API
  requests by verb (GET of one object, LIST, WATCH, PATCH, POST, PUT, DELETE) per
  ModelDeployment per minute, by resource; writes; registry calls per minute;
- operator RSS, peak and at the end, and CPU;
- the latency of a spec change (spec.replicas of `--changes` ModelDeployments in
  different namespaces, one after the other): from the PATCH until the Deployment has
  the new replicas and status.observedGeneration has caught up; the median.

Targets (printed beside the figures; `--check` exits 1 when one is missed): no write
and under 0.1 reads per ModelDeployment per minute in the quiet window; peak RSS under
the operator memory limit of charts/modelship/values.yaml; median spec-change latency
under 5 s. A figure that could not be measured misses its target.

Exits 1, naming ModelDeployments that are not Ready and why, unless all are Ready within
--timeout seconds of the first create; with `--sizes`, the sizes run from small to large
and the first failure ends the run (the figures of the sizes that completed are printed).

Usage: .venv/bin/python benchmarks/operator/run.py --count 1000
       .venv/bin/python benchmarks/operator/run.py --sizes 1000,5000,10000 --check
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "operator"))

from kube_emulator import ApplyingEmulator, Cluster  # noqa: E402
from mlflow_proc import BIN, MlflowServer  # noqa: E402
from modelship_operator import naming, rbac  # noqa: E402

Request = tuple[str, str, dict[str, str], str]  # method, path, query, user agent

USER_AGENT = "test-user"  # the benchmark's own requests (kube_emulator's convention)
SETUP_SECONDS = 300.0  # bound on the start of MLflow and of the operator
CHANGE_SECONDS = 60.0  # bound on one spec change reaching its Deployment
REPLICAS = 2
CHANGED_REPLICAS = 3
ALIAS = "champion"
WRITES = ("POST", "PUT", "PATCH", "DELETE")
READS = ("GET", "LIST", "WATCH")
MAX_READS_PER_MD_MINUTE = 0.1
MAX_CHANGE_SECONDS = 5.0
VALUES = REPO / "charts" / "modelship" / "values.yaml"

# The MLmodel file of the one artifact every version points at. The operator checks that
# it is listed; no pod loads it (the emulated API runs no pods).
MLMODEL = """artifact_path: model
flavors:
  python_function:
    loader_module: mlflow.sklearn
    model_path: model.pkl
  sklearn:
    pickled_model: model.pkl
    serialization_format: cloudpickle
"""


class BenchError(RuntimeError):
    """The run could not produce its figures; the message says why."""


# -- the workload ------------------------------------------------------------------------


def model_name(m: int) -> str:
    return f"bench-model-{m:02d}"


def namespace(i: int, namespaces: int) -> str:
    return f"bench-{i % namespaces:02d}"


def follows_alias(i: int, fraction: float) -> bool:
    """Whether ModelDeployment i follows the alias: an even spread, `fraction` of them."""
    return int((i + 1) * fraction) > int(i * fraction)


def manifest(i: int, args: argparse.Namespace) -> dict[str, Any]:
    m = i % args.models
    model: dict[str, str] = {"name": model_name(m)}
    if follows_alias(i, args.alias_fraction):
        model["alias"] = ALIAS
    else:
        model["version"] = str(1 + (i // args.models) % 2)
    return {
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"model-{i:05d}", "namespace": namespace(i, args.namespaces)},
        "spec": {
            # The registry is the operator's default tracking URI (MLflow, through the proxy).
            "model": model,
            "replicas": REPLICAS,
            "ingress": {"host": f"m{i}.example.com"},
        },
    }


def register_models(uri: str, models: int) -> None:
    """`models` registered models, each with versions 1 and 2 (one run's MLmodel file)
    and the alias `champion` on version 2, over MLflow's REST API."""
    session = requests.Session()

    def call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = session.request(method, f"{uri}/api/2.0/{path}", timeout=60, **kwargs)
        if response.status_code != 200:
            raise BenchError(f"MLflow {method} {path}: {response.status_code} {response.text}")
        return dict(response.json()) if response.content else {}

    run = call("POST", "mlflow/runs/create", json={"experiment_id": "0"})["run"]["info"]
    artifacts = run["artifact_uri"]  # mlflow-artifacts:/0/<run id>/artifacts
    if not artifacts.startswith("mlflow-artifacts:/"):
        raise BenchError(f"MLflow stores artifacts at {artifacts}, not behind its proxy")
    path = artifacts.removeprefix("mlflow-artifacts:/")
    call("PUT", f"mlflow-artifacts/artifacts/{path}/model/MLmodel", data=MLMODEL.encode())
    for m in range(models):
        call("POST", "mlflow/registered-models/create", json={"name": model_name(m)})
        for number in ("1", "2"):
            version = call("POST", "mlflow/model-versions/create", json={
                "name": model_name(m), "source": f"{artifacts}/model", "run_id": run["run_id"],
            })["model_version"]
            if version["version"] != number or version["status"] != "READY":
                raise BenchError(f"{model_name(m)}: unexpected version {version}")
        call("POST", "mlflow/registered-models/alias",
             json={"name": model_name(m), "alias": ALIAS, "version": "2"})


# -- the registry proxy ------------------------------------------------------------------


class CountingProxy:
    """An HTTP proxy in front of MLflow that records the time, method and path of every
    call through it (the operator's registry calls)."""

    def __init__(self, upstream_port: int) -> None:
        self.calls: list[tuple[float, str, str]] = []
        lock = threading.Lock()
        calls = self.calls
        local = threading.local()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                with lock:
                    calls.append((time.monotonic(), self.command, self.path.split("?", 1)[0]))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "keep-alive", "host")}
                # MLflow closes a connection idle for 5 s (uvicorn's keep-alive): a reused
                # one that fails is retried once on a fresh one, as HTTP clients' pools do.
                for attempt in (1, 2):
                    conn = getattr(local, "conn", None)
                    reused = conn is not None
                    if conn is None:
                        conn = local.conn = http.client.HTTPConnection(
                            "127.0.0.1", upstream_port, timeout=60)
                    try:
                        conn.request(self.command, self.path, body=body, headers=headers)
                        response = conn.getresponse()
                        payload = response.read()
                        break
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        local.conn = None
                        if reused and attempt == 1:
                            continue
                        self.send_error(502, "MLflow unreachable")
                        return
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "keep-alive", "transfer-encoding",
                                           "content-length", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def between(self, start: float, end: float) -> list[tuple[str, str]]:
        return [(method, path) for t, method, path in list(self.calls) if start <= t < end]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the emulated API, in this process or its own ---------------------------------------


def _md_scan(emulator: ApplyingEmulator) -> dict[str, Any]:
    """ModelDeployments: how many, how many Ready for their generation, up to five that are
    not (with phase and reason); and the Deployments whose pods are not all ready."""
    total = ready = 0
    late: list[str] = []
    pending: list[tuple[str, str, int, int]] = []
    for (resource, ns, name), obj in emulator.objects.items():
        if obj.deleted or resource.plural not in ("modeldeployments", "deployments"):
            continue
        raw = obj.raw
        if resource.plural == "modeldeployments":
            total += 1
            if is_ready(raw):
                ready += 1
            elif len(late) < 5:
                late.append(describe(raw))
        else:
            want = int((raw.get("spec") or {}).get("replicas") or 0)
            have = int((raw.get("status") or {}).get("readyReplicas") or 0)
            if want != have:
                generation = int((raw.get("metadata") or {}).get("generation") or 1)
                pending.append((str(ns), str(name), want, generation))
    return {"total": total, "ready": ready, "late": late, "pending": pending}


class Emulator:
    """The emulated API (tests/operator/kube_emulator.Cluster) behind a few coarse calls,
    so that it can run in a process of its own (through a multiprocessing manager)."""

    def __init__(self, workdir: str) -> None:
        self._cluster = Cluster(Path(workdir))

    def start(self) -> tuple[str, str]:
        self._cluster.start()
        return self._cluster.url, str(self._cluster.kubeconfig)

    def stop(self) -> None:
        self._cluster.stop()

    def pid(self) -> int:
        return os.getpid()

    def request_count(self) -> int:
        return int(self._cluster.inspect(lambda e: len(e.log)))

    def requests(self, since: int = 0) -> list[Request]:
        return self._cluster.requests(since)

    def scan(self) -> dict[str, Any]:
        return dict(self._cluster.inspect(_md_scan))


class _Manager(BaseManager):
    pass


_Manager.register("Emulator", Emulator)


def start_emulator(workdir: Path, own_process: bool) -> tuple[Any, Callable[[], None]]:
    """An Emulator and the function that shuts down what hosts it."""
    if not own_process:
        return Emulator(str(workdir)), lambda: None
    manager = _Manager(ctx=multiprocessing.get_context("fork"))
    manager.start()
    return manager.Emulator(str(workdir)), manager.shutdown  # type: ignore[attr-defined]


class Api:
    """The benchmark's own client of the emulated API (User-Agent test-user)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
        return session

    def call(self, method: str, path: str, body: Any = None, content_type: str = "") -> Any:
        response = self._session().request(
            method, self.url + path, data=None if body is None else json.dumps(body),
            headers={"Content-Type": content_type or "application/json"}, timeout=60,
        )
        if response.status_code >= 400:
            raise BenchError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def create_md(self, body: dict[str, Any]) -> None:
        ns = body["metadata"]["namespace"]
        self.call("POST", f"/apis/modelship.io/v1alpha1/namespaces/{ns}/modeldeployments", body)

    def md(self, ns: str, name: str) -> dict[str, Any]:
        return dict(self.call(
            "GET", f"/apis/modelship.io/v1alpha1/namespaces/{ns}/modeldeployments/{name}"))

    def patch_md(self, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call(
            "PATCH", f"/apis/modelship.io/v1alpha1/namespaces/{ns}/modeldeployments/{name}",
            patch, "application/merge-patch+json"))

    def deployment(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.call("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"))
        except BenchError as exc:
            if ": 404 " in str(exc):
                return None
            raise

    def mark_ready(self, ns: str, name: str, replicas: int, generation: int) -> None:
        """Play the kubelet and the Deployment controller: report ready pods."""
        self.call(
            "PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}/status",
            {"status": {"replicas": replicas, "readyReplicas": replicas,
                        "updatedReplicas": replicas, "availableReplicas": replicas,
                        "observedGeneration": generation}},
            "application/merge-patch+json",
        )


# -- reading the results ----------------------------------------------------------------


def is_ready(md: dict[str, Any]) -> bool:
    """Ready for its current spec: phase Ready, Ready=True, observedGeneration current."""
    status = md.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return (status.get("phase") == "Ready" and bool(ready) and ready[0].get("status") == "True"
            and status.get("observedGeneration") == md["metadata"].get("generation"))


def describe(md: dict[str, Any]) -> str:
    status = md.get("status") or {}
    reconciling = [c for c in status.get("conditions") or [] if c.get("type") == "Reconciling"]
    why = f"{reconciling[0].get('reason')}: {reconciling[0].get('message')}" if reconciling \
        else "no conditions"
    return f"{md['metadata']['name']}: phase {status.get('phase')}, {why}"


def peak_rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmHWM:")


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS:")


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_limit_mib(values: Path = VALUES) -> float:
    """The operator container's memory limit in the chart's default values, in MiB."""
    limit = str(yaml.safe_load(values.read_text())["resources"]["limits"]["memory"])
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20,
             "G": 1e9 / 2**20}
    for suffix in sorted(units, key=len, reverse=True):
        if limit.endswith(suffix):
            return float(limit.removesuffix(suffix)) * units[suffix]
    return float(limit) / 2**20


def poll(predicate: Callable[[], bool], deadline: float, proc: subprocess.Popen[bytes],
         what: str, every: float = 0.25) -> None:
    """Until `predicate()` holds; BenchError at `deadline` or if the operator exits."""
    while not predicate():
        if proc.poll() is not None:
            raise BenchError(f"the operator exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(every)


def by_operator(requests_: Iterable[Request]) -> list[Request]:
    """Requests from the operator (its client and kopf's), not from the benchmark."""
    return [r for r in requests_ if r[3] != USER_AGENT]


def classify(method: str, path: str, query: dict[str, str]) -> tuple[str, str]:
    """(verb, resource) of a request: verb GET (one object), LIST, WATCH or the HTTP
    method of a write; resource as 'deployments' or 'modeldeployments/status'."""
    parts = path.strip("/").split("/")
    if "namespaces" in parts[:-1]:
        rest = parts[parts.index("namespaces") + 2:]
    else:
        rest = parts[2:] if parts[0] == "api" else parts[3:]
    resource = "/".join(rest[:1] + rest[2:3])
    verb = method
    if method == "GET":
        verb = "WATCH" if query.get("watch") in ("true", "1") else "LIST" if len(rest) == 1 \
            else "GET"
    return verb, resource


def resource_of(path: str) -> str:
    return classify("GET", path, {})[1]


def breakdown(requests_: list[Request], per: float) -> dict[str, float]:
    """Requests by verb and resource, divided by `per`, most frequent first."""
    tally: dict[str, int] = {}
    for method, path, query, _ in requests_:
        verb, resource = classify(method, path, query)
        key = f"{verb} {resource}"
        tally[key] = tally.get(key, 0) + 1
    return {k: round(v / per, 4) for k, v in sorted(tally.items(), key=lambda kv: -kv[1])}


def by_verb(requests_: list[Request]) -> dict[str, int]:
    tally = dict.fromkeys((*READS, *WRITES), 0)
    for method, path, query, _ in requests_:
        verb = classify(method, path, query)[0]
        tally[verb] = tally.get(verb, 0) + 1
    return tally


def target(measured: float | None, limit: float, inclusive: bool = False) -> dict[str, Any]:
    """A figure beside its target; a figure that could not be measured misses it."""
    met = measured is not None and (measured <= limit if inclusive else measured < limit)
    return {"measured": measured, "target": f"{'<=' if inclusive else '<'} {limit:g}",
            "met": met}


# -- one size ---------------------------------------------------------------------------


def bench(args: argparse.Namespace, count: int, workdir: Path) -> dict[str, Any]:
    begun = time.monotonic()

    def say(what: str) -> None:
        print(f"[{count} {time.monotonic() - begun:7.1f}s] {what}", file=sys.stderr, flush=True)

    load_start = os.getloadavg()
    setup_deadline = begun + SETUP_SECONDS
    emulator, shutdown = start_emulator(workdir, args.emulator == "process")
    mlflow = MlflowServer(workdir)
    proxy: CountingProxy | None = None
    proc: subprocess.Popen[bytes] | None = None
    cluster_up = False
    log = (workdir / "operator.log").open("wb")
    try:
        with ThreadPoolExecutor(1) as pool:
            # MLflow starts while the emulated API does.
            mlflow_up = pool.submit(mlflow.start, SETUP_SECONDS)
            url, kubeconfig = emulator.start()
            cluster_up = True
            try:
                mlflow_up.result()
            except (RuntimeError, TimeoutError) as exc:
                raise BenchError(f"MLflow: {exc}") from exc
        mlflow_seconds = time.monotonic() - begun
        say(f"MLflow up at {mlflow.uri}; registering {args.models} models")
        started = time.monotonic()
        register_models(mlflow.uri, args.models)
        register_seconds = time.monotonic() - started
        proxy = CountingProxy(mlflow.port)
        api = Api(url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
        env.update(
            KUBECONFIG=kubeconfig,
            MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI=proxy.uri,
            MODELSHIP_OPERATOR_VERIFY_MODEL_VERSIONS="true",
            MODELSHIP_OPERATOR_METRICS_PORT="0",  # no metrics endpoint: 8080 may be taken
            PYTHONUNBUFFERED="1",
        )
        if args.resync is not None:
            env["MODELSHIP_OPERATOR_RESYNC_INTERVAL_SECONDS"] = str(args.resync)
        if args.alias_poll is not None:
            env["MODELSHIP_OPERATOR_ALIAS_POLL_SECONDS"] = str(args.alias_poll)
        proc = subprocess.Popen(
            [str(BIN / "kopf"), "run", "--standalone", "--all-namespaces", "-m",
             "modelship_operator.handlers"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )
        # Startup and discovery are not part of the figures: wait for the operator's watch.
        poll(lambda: any(r[0] == "GET" and r[1].endswith("/modeldeployments")
                         and "watch" in r[2] for r in by_operator(emulator.requests())),
             setup_deadline, proc, "the operator to watch ModelDeployments")
        baseline = emulator.request_count()
        cpu_start = cpu_seconds(proc.pid)
        emulator_pid = emulator.pid()
        emulator_cpu_start = cpu_seconds(emulator_pid)
        registry_start = time.monotonic()
        setup_seconds = time.monotonic() - begun
        say(f"operator up; creating {count} ModelDeployments in {args.namespaces} namespaces")

        # -- converge: create every ModelDeployment, play the kubelet, wait for Ready ----
        started = time.monotonic()
        deadline = started + args.timeout
        creator = ThreadPoolExecutor(4)
        list(creator.map(lambda i: api.create_md(manifest(i, args)), range(count)))
        creates_seconds = time.monotonic() - started
        say(f"created in {creates_seconds:.1f}s; waiting for Ready")
        last: dict[str, Any] = {}
        kubelet_marks = 0

        def converged() -> bool:
            nonlocal last, kubelet_marks
            last = emulator.scan()
            # The kubelet's part: the pods of every Deployment that wants more turn ready.
            list(creator.map(lambda d: api.mark_ready(*d), last["pending"]))
            kubelet_marks += len(last["pending"])
            return bool(last["total"] == count and last["ready"] == count)

        step = max(0.5, min(2.0, count / 5000))
        next_report = time.monotonic() + 30
        try:
            while not converged():
                if proc.poll() is not None:
                    raise BenchError(f"the operator exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise BenchError("timed out")
                if time.monotonic() > next_report:
                    say(f"{last['ready']}/{count} Ready")
                    next_report += 30
                time.sleep(step)
        except BenchError as exc:
            late = last.get("late") or []
            raise BenchError(
                f"{exc}: {last.get('ready', 0)}/{count} Ready within {args.timeout:g}s; "
                f"not Ready: {'; '.join(late)}{' ...' if last.get('ready', 0) + 5 < count else ''}"
            ) from exc
        creator.shutdown()
        converge_seconds = time.monotonic() - started
        converged_at = time.monotonic()
        cpu_converge = cpu_seconds(proc.pid) - cpu_start
        emulator_cpu_converge = cpu_seconds(emulator_pid) - emulator_cpu_start
        converge_requests = by_operator(emulator.requests(baseline))
        registry_converge = len(proxy.between(registry_start, converged_at))
        rss_converged = rss_kib(proc.pid)
        say(f"all {count} Ready in {converge_seconds:.1f}s; settling {args.settle_seconds:g}s")

        # -- a quiet window ---------------------------------------------------------------
        time.sleep(args.settle_seconds)
        before = emulator.request_count()
        cpu_before = cpu_seconds(proc.pid)
        quiet_start = time.monotonic()
        say(f"quiet window of {args.quiet_seconds:g}s")
        # How many requests had been served at each tenth of the window: when a window's
        # requests fall (periodic, or a backlog draining at its start).
        marks: list[int] = []
        while time.monotonic() < quiet_start + args.quiet_seconds:
            if proc.poll() is not None:
                raise BenchError(f"the operator exited with {proc.returncode} in the quiet window")
            tenth = (len(marks) + 1) * args.quiet_seconds / 10
            if time.monotonic() >= quiet_start + tenth and len(marks) < 9:
                marks.append(emulator.request_count())
            time.sleep(min(0.5, quiet_start + args.quiet_seconds - time.monotonic() + 0.01))
        quiet_end = time.monotonic()
        after = emulator.request_count()
        marks.append(after)
        quiet_seconds = quiet_end - quiet_start
        quiet_minutes = quiet_seconds / 60
        cpu_quiet = cpu_seconds(proc.pid) - cpu_before
        served = emulator.requests(before)[: after - before]
        window = by_operator(served)
        tenths = [by_operator(served[(marks[k - 1] if k else before) - before:marks[k] - before])
                  for k in range(len(marks))]
        # Status writes of ModelDeployments that follow the alias (True) or pin a version.
        status_writes = [follows_alias(int(r[1].split("/")[-2].removeprefix("model-")),
                                       args.alias_fraction)
                         for r in window
                         if classify(*r[:3]) == ("PATCH", "modeldeployments/status")]
        verbs = by_verb(window)
        writes = sum(verbs[v] for v in WRITES)
        reads = sum(verbs[v] for v in READS)
        registry_quiet = proxy.between(quiet_start, quiet_end)
        say(f"quiet: {reads} reads, {writes} writes, {len(registry_quiet)} registry calls")

        # -- spec changes -----------------------------------------------------------------
        latencies: list[float | None] = []
        stride = max(1, count // max(1, args.changes))
        for k in range(min(args.changes, count)):
            i = (k * stride + k) % count
            latencies.append(spec_change(api, manifest(i, args), proc))
        change_problems = sum(1 for t in latencies if t is None)
        measured = [t for t in latencies if t is not None]
        say(f"spec changes: {['-' if t is None else round(t, 2) for t in latencies]}")
        # The kubelet's part for the changed Deployments, so the run ends converged.
        for ns, name, replicas, generation in emulator.scan()["pending"]:
            api.mark_ready(ns, name, replicas, generation)

        peak_mib = peak_rss_kib(proc.pid) / 1024
        end_mib = rss_kib(proc.pid) / 1024
        limit = memory_limit_mib()
        if args.requests_log is not None:
            with args.requests_log.open("w") as out:
                for number, (method, path, query, agent) in enumerate(emulator.requests()):
                    phase = "setup" if number < baseline else "converge" if number < before \
                        else "quiet" if number < after else "changes"
                    out.write(json.dumps({"phase": phase, "method": method, "path": path,
                                          "query": query, "agent": agent}) + "\n")
        denied = [r for r in by_operator(emulator.requests())
                  if not rbac.allows(r[0], r[1], r[2])]
        per_md_minute = count * quiet_minutes
        median = statistics.median(measured) if measured and not change_problems else None
        result = {
            "modeldeployments": count,
            "namespaces": args.namespaces,
            "models": args.models,
            "following_alias": sum(follows_alias(i, args.alias_fraction) for i in range(count)),
            "ready": count,
            "emulator": args.emulator,
            "resync_interval_seconds": args.resync if args.resync is not None else "default",
            "alias_poll_seconds": args.alias_poll if args.alias_poll is not None else "default",
            "load_average_at_start": round(load_start[0], 2),
            "load_average_at_end": round(os.getloadavg()[0], 2),
            "setup_seconds": round(setup_seconds, 2),
            "mlflow_start_seconds": round(mlflow_seconds, 2),
            "mlflow_registration_seconds": round(register_seconds, 2),
            "create_seconds": round(creates_seconds, 2),
            "converge_seconds": round(converge_seconds, 2),
            "converge_requests_per_md": round(len(converge_requests) / count, 2),
            "converge_writes_per_md": round(
                sum(1 for r in converge_requests if r[0] in WRITES) / count, 2),
            "converge_requests_per_md_by_kind": breakdown(converge_requests, count),
            "converge_registry_calls": registry_converge,
            "operator_cpu_seconds_converge": round(cpu_converge, 1),
            "emulator_cpu_seconds_converge": round(emulator_cpu_converge, 1),
            "quiet_seconds": round(quiet_seconds, 1),
            "quiet_requests_by_verb": verbs,
            "quiet_requests_per_md_minute": {
                v: round(n / per_md_minute, 4) for v, n in verbs.items()},
            "quiet_requests_per_md_minute_by_kind": breakdown(window, per_md_minute),
            "quiet_writes": writes,
            "quiet_writes_by_tenth_of_window": [
                sum(1 for r in part if r[0] in WRITES) for part in tenths],
            "quiet_status_writes_of_md_following_alias": sum(status_writes),
            "quiet_status_writes_of_md_pinned": len(status_writes) - sum(status_writes),
            "quiet_reads_per_md_minute": round(reads / per_md_minute, 4),
            "quiet_registry_calls_per_minute": round(len(registry_quiet) / quiet_minutes, 2),
            "quiet_registry_calls_by_path": _tally(path for _, path in registry_quiet),
            "operator_cpu_seconds_per_quiet_minute": round(cpu_quiet / quiet_minutes, 2),
            "spec_change_seconds": [None if t is None else round(t, 3) for t in latencies],
            "spec_change_median_seconds": None if median is None else round(median, 3),
            "operator_rss_mib_converged": round(rss_converged / 1024, 1),
            "operator_rss_mib_end": round(end_mib, 1),
            "operator_peak_rss_mib": round(peak_mib, 1),
            "emulator_peak_rss_mib": round(peak_rss_kib(emulator_pid) / 1024, 1),
            "kubelet_marks": kubelet_marks,
            "requests_outside_rbac": len(denied),
        }
        result["targets"] = {
            "quiet_writes": target(writes, 0, inclusive=True),
            "quiet_reads_per_md_minute": target(result["quiet_reads_per_md_minute"],
                                                MAX_READS_PER_MD_MINUTE),
            "operator_peak_rss_mib": target(result["operator_peak_rss_mib"], limit),
            "spec_change_median_seconds": target(result["spec_change_median_seconds"],
                                                 MAX_CHANGE_SECONDS),
        }
        return result
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                say("the operator did not stop within 30s of SIGTERM; killing it")
                proc.kill()
                proc.wait(timeout=20)
            say("operator stopped")
        log.close()
        if proxy is not None:
            proxy.stop()
        if cluster_up:
            emulator.stop()
        shutdown()
        mlflow.stop(grace=0)  # a throwaway registry: no need to wait for a clean exit
        say("emulated API and MLflow stopped")


def _tally(items: Iterable[str]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for item in items:
        tally[item] = tally.get(item, 0) + 1
    return dict(sorted(tally.items(), key=lambda kv: -kv[1]))


def spec_change(api: Api, md: dict[str, Any], proc: subprocess.Popen[bytes]) -> float | None:
    """Seconds from a PATCH of spec.replicas until the Deployment has them and the status
    has caught up with the new generation; None if that did not happen within the bound."""
    ns, name = md["metadata"]["namespace"], md["metadata"]["name"]
    version = ((api.md(ns, name).get("status") or {}).get("stable") or {}).get("version")
    if not version:
        return None
    deployment = naming.deployment_name(name, str(version))
    started = time.monotonic()
    generation = int(api.patch_md(ns, name, {"spec": {"replicas": CHANGED_REPLICAS}})
                     ["metadata"]["generation"])

    def caught_up() -> bool:
        dep = api.deployment(ns, deployment) or {}
        if (dep.get("spec") or {}).get("replicas") != CHANGED_REPLICAS:
            return False
        observed = (api.md(ns, name).get("status") or {}).get("observedGeneration") or 0
        return int(observed) >= generation

    try:
        poll(caught_up, started + CHANGE_SECONDS, proc, f"the spec change of {ns}/{name}",
             every=0.05)
    except BenchError as exc:
        print(f"spec change: {exc}", file=sys.stderr)
        return None
    return time.monotonic() - started


# -- the command ------------------------------------------------------------------------


def wait_for_load(limit: float, bound: float) -> None:
    """Until the 1-minute load average is under `limit` (at most `bound` seconds)."""
    deadline = time.monotonic() + bound
    while os.getloadavg()[0] >= limit:
        if time.monotonic() > deadline:
            raise BenchError(f"load average still {os.getloadavg()[0]:.2f} >= {limit:g} "
                             f"after {bound:g}s")
        print(f"load average {os.getloadavg()[0]:.2f} >= {limit:g}; waiting",
              file=sys.stderr, flush=True)
        time.sleep(15)


def summary(result: dict[str, Any]) -> str:
    lines = [f"{result['modeldeployments']} ModelDeployments: converged in "
             f"{result['converge_seconds']} s"]
    for name, t in result["targets"].items():
        lines.append(f"  {name:28} {t['measured']!s:>10}  target {t['target']:10} "
                     f"{'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="ModelDeployments (>= 1)")
    parser.add_argument("--sizes", help="comma-separated counts, run one after the other "
                        "(smallest first), instead of --count")
    parser.add_argument("--namespaces", type=int, default=10,
                        help="namespaces the ModelDeployments spread over")
    parser.add_argument("--models", type=int, default=10, help="registered models they share")
    parser.add_argument("--alias-fraction", type=float, default=0.2,
                        help=f"fraction of ModelDeployments following the alias {ALIAS}")
    parser.add_argument("--resync", type=float, default=None,
                        help="the operator's resync interval, seconds (default: its own)")
    parser.add_argument("--alias-poll", type=float, default=None,
                        help="how often the operator resolves a followed alias again, "
                             "seconds (default: its own)")
    parser.add_argument("--quiet-seconds", type=float, default=120.0,
                        help="length of the quiet window")
    parser.add_argument("--settle-seconds", type=float, default=10.0,
                        help="pause between convergence and the quiet window")
    parser.add_argument("--changes", type=int, default=5, help="spec changes to time")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds from the first create within which every "
                             "ModelDeployment must be Ready (default: 300, or 0.15 s per "
                             "ModelDeployment if more)")
    parser.add_argument("--emulator", choices=("process", "thread"), default="process",
                        help="run the emulated API in a process of its own or in a thread "
                             "of the benchmark's")
    parser.add_argument("--max-load", type=float, default=None,
                        help="before each size, wait (up to 10 minutes) until the 1-minute "
                             "load average is below this")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a figure misses its target")
    parser.add_argument("--requests-log", type=Path, metavar="FILE",
                        help="write every API request (JSON lines, with the phase) to FILE")
    args = parser.parse_args(argv)
    try:
        sizes = sorted(int(s) for s in args.sizes.split(",")) if args.sizes else [args.count]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, not {args.sizes!r}")
    if min(sizes) < 1 or args.namespaces < 1 or args.models < 1:
        parser.error("--count (or every size), --namespaces and --models must be at least 1")
    if not 0 <= args.alias_fraction <= 1:
        parser.error("--alias-fraction must be between 0 and 1")
    if (args.resync is not None and args.resync <= 0) or args.quiet_seconds <= 0 \
            or (args.alias_poll is not None and args.alias_poll <= 0) \
            or args.settle_seconds < 0 or args.changes < 0 \
            or (args.timeout is not None and args.timeout <= 0):
        parser.error("--resync, --alias-poll, --timeout and --quiet-seconds must be above 0, "
                     "--settle-seconds and --changes not negative")
    results: list[dict[str, Any]] = []
    failed = False
    for count in sizes:
        workdir = Path(tempfile.mkdtemp(prefix="modelship-bench-"))
        size_args = argparse.Namespace(**vars(args))
        if args.timeout is None:
            size_args.timeout = max(300.0, 0.15 * count)
        try:
            if args.max_load is not None:
                wait_for_load(args.max_load, 600)
            result = bench(size_args, count, workdir)
        except BenchError as exc:
            print(f"bench-operator failed at {count}: {exc} (logs kept in {workdir})",
                  file=sys.stderr)
            results.append({"modeldeployments": count, "error": str(exc)})
            failed = True
            break
        shutil.rmtree(workdir, ignore_errors=True)
        results.append(result)
        print(summary(result), file=sys.stderr, flush=True)
    print(json.dumps(results if args.sizes else results[0], indent=2))
    if failed:
        return 1
    missed = [f"{r['modeldeployments']}: {name}" for r in results
              for name, t in r["targets"].items() if not t["met"]]
    if args.check and missed:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shadow traffic between real `modelship-runtime serve` processes, as in a rollout.

Stable runtimes are started with MODELSHIP_SHADOW_URL pointing at a canary runtime (or at
a closed port, or at a server that never answers); clients talk to the stables only. The
canaries' /metrics say how their predictions compared with the stables'; the stables'
say what became of every request they chose to mirror. Every wait is on a condition
(counters reaching a figure, nothing left pending), with generous bounds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import free_port
from modelship_operator.rollout.analysis import parse_metrics
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

RUNTIME = Path(sys.executable).parent / "modelship-runtime"
NAME = "shadowed"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples_of(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


class Pod:
    """One `modelship-runtime serve` process on a free port, stopped by its pid."""

    def __init__(self, name: str, model_dir: Path, version: str, logs: Path,
                 port: int | None = None, **env: str) -> None:
        self.name = name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logs / f"{name}.log"
        self.model_dir = model_dir
        self.env = {**os.environ, "MODELSHIP_LOG_LEVEL": "WARNING", "MODELSHIP_DRAIN_SECONDS": "0",
                    "MODELSHIP_MODEL_NAME": NAME, "MODELSHIP_MODEL_VERSION": version, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.grpc = ""  # host:port of its gRPC listener, when on

    def spawn(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(RUNTIME), "serve", "--model-dir", str(self.model_dir),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def wait_ready(self, timeout: float = 180.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready in {timeout}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)

    def text(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def scrape(self) -> Samples:
        return samples_of(self.text())

    def outcomes(self) -> dict[str, float]:
        samples = self.scrape()
        return {o: total(samples, "modelship_shadow_mirrored_total", outcome=o)
                for o in ("sent", "dropped", "failed", "skipped", "shed")}

    def pending(self) -> float:
        return total(self.scrape(), "modelship_shadow_pending")

    def logged(self, message: str) -> list[dict[str, Any]]:
        lines = self.log.read_bytes().splitlines()
        records = [orjson.loads(line) for line in lines if line.startswith(b"{")]
        return [r for r in records if r.get("message") == message]


class SilentServer:
    """A TCP server that accepts connections and never answers (a canary stuck)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        """Close the port and every connection: from now on, connections are refused."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)
        for conn in self.accepted:
            conn.close()


class Cluster:
    """The processes of these tests and the models they serve."""

    def __init__(self, pods: dict[str, Pod], silent: SilentServer, X: np.ndarray,
                 stable: Any, shuffled: Any, stuck: SilentServer | None = None) -> None:
        self.pods = pods
        self.silent = silent
        self.stuck = stuck
        self.X = X
        self.stable = stable
        self.shuffled = shuffled
        self.config = Path()

    def __getitem__(self, name: str) -> Pod:
        return self.pods[name]


@pytest.fixture(scope="module")
def cluster(local_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Canaries `same` (the stable's model) and `shuffled` (trained on shuffled labels);
    stables mirroring to them, to a stuck server, at a quarter; and one not mirroring."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    logs = tmp_path_factory.mktemp("shadow-logs")
    X, y = local_models.X, local_models.y
    shuffled = LogisticRegression(max_iter=1000).fit(
        X, np.random.default_rng(7).permutation(y))
    shuffled_dir = tmp_path_factory.mktemp("shuffled")
    joblib.dump(shuffled, shuffled_dir / "model.joblib")
    stable_dir = local_models.lr_dir
    silent = SilentServer()
    quick = {"MODELSHIP_SHADOW_TIMEOUT_SECONDS": "10"}
    pods = {
        "plain": Pod("plain", stable_dir, "1", logs),
        "shuffled": Pod("shuffled", shuffled_dir, "2", logs, MODELSHIP_LOG_LEVEL="INFO",
                        MODELSHIP_SHADOW_LOG_PER_MINUTE="3"),
    }
    # The `same` canary mirrors its own clients' requests back to stable `to-same`.
    to_same_port = free_port()
    pods["same"] = Pod("same", stable_dir, "2", logs, **quick,
                       MODELSHIP_SHADOW_URL=f"http://127.0.0.1:{to_same_port}")
    pods["to-same"] = Pod("to-same", stable_dir, "1", logs, port=to_same_port, **quick,
                          MODELSHIP_SHADOW_URL=pods["same"].url)
    grpc_port = free_port()
    pods["grpc-to-same"] = Pod("grpc-to-same", stable_dir, "1", logs, **quick,
                               MODELSHIP_GRPC_PORT=str(grpc_port),
                               MODELSHIP_SHADOW_URL=pods["same"].url)
    pods["grpc-to-same"].grpc = f"127.0.0.1:{grpc_port}"
    pods["busy-mirror"] = Pod("busy-mirror", stable_dir, "1", logs, **quick,
                              MODELSHIP_SHADOW_URL=pods["same"].url,
                              MODELSHIP_SHADOW_WHEN_BUSY="mirror")
    pods["to-shuffled"] = Pod("to-shuffled", stable_dir, "1", logs, **quick,
                              MODELSHIP_SHADOW_URL=pods["shuffled"].url)
    pods["quarter"] = Pod("quarter", stable_dir, "1", logs, **quick,
                          MODELSHIP_SHADOW_URL=pods["same"].url, MODELSHIP_SHADOW_FRACTION="0.25",
                          MODELSHIP_SHADOW_SENDER_PRIORITY="low")
    pods["to-stuck"] = Pod("to-stuck", stable_dir, "1", logs,
                           MODELSHIP_SHADOW_URL=f"http://127.0.0.1:{silent.port}",
                           MODELSHIP_SHADOW_TIMEOUT_SECONDS="3", MODELSHIP_SHADOW_QUEUE="8",
                           MODELSHIP_SHADOW_CONCURRENCY="2")
    # Stables whose sender process the tests stop, kill, or orphan: they mirror to a
    # server that never answers (copies stay pending for the longest timeout) or to `same`.
    stuck = SilentServer()
    held = {"MODELSHIP_SHADOW_URL": f"http://127.0.0.1:{stuck.port}",
            "MODELSHIP_SHADOW_TIMEOUT_SECONDS": "60"}
    pods["sender-killed"] = Pod("sender-killed", stable_dir, "1", logs, **held)
    pods["sender-stopped"] = Pod("sender-stopped", stable_dir, "1", logs, **quick,
                                 MODELSHIP_SHADOW_URL=pods["same"].url)
    # A stable told what to do by a mounted file (the operator's ConfigMap NAME--shadow).
    config = tmp_path_factory.mktemp("shadow-config") / "shadow.json"
    config.write_text("{}")
    pods["by-file"] = Pod("by-file", stable_dir, "1", logs, **quick,
                          MODELSHIP_SHADOW_CONFIG_FILE=str(config),
                          MODELSHIP_SHADOW_CONFIG_POLL_SECONDS="0.2")
    try:
        for pod in pods.values():
            pod.spawn()
        for pod in pods.values():
            pod.wait_ready()
        cluster = Cluster(pods, silent, X, local_models.lr, shuffled, stuck)
        cluster.config = config
        yield cluster
    finally:
        for pod in pods.values():
            pod.stop()
        silent.close()
        stuck.close()


def settle(*pods: Pod, sent: dict[str, float]) -> None:
    """Wait until each pod has nothing pending and `sent[pod]` requests accounted for."""
    for pod in pods:
        def done(pod: Pod = pod) -> bool:
            return pod.pending() == 0 and sum(pod.outcomes().values()) >= sent[pod.name]

        wait_for(f"{pod.name}: {sent[pod.name]} mirrored requests accounted for", done)


def compared(before: Samples, after: Samples) -> dict[str, float]:
    """Rows a canary compared between two scrapes, by result."""
    return {r: total(after, "model_shadow_agreement_total", result=r)
            - total(before, "model_shadow_agreement_total", result=r)
            for r in ("agree", "disagree")}


def sent_and_agreed(stable: Pod, before_out: dict[str, float], requests: int, canary: Pod,
                    before: Samples, rows: int) -> Samples:
    """Once settled: every one of `requests` sent by `stable` (none dropped, failed,
    skipped or shed) and all `rows` agreed at `canary`; the canary's scrape."""
    settle(stable, sent={stable.name: sum(before_out.values()) + requests})
    assert delta(stable.outcomes(), before_out) == {"sent": requests, "dropped": 0,
                                                    "failed": 0, "skipped": 0, "shed": 0}
    after = canary.scrape()
    assert compared(before, after) == {"agree": rows, "disagree": 0}
    return after


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def test_a_canary_with_the_same_model_agrees_on_every_row(cluster: Cluster) -> None:
    stable, canary = cluster["to-same"], cluster["same"]
    X = cluster.X
    before_out, before = stable.outcomes(), canary.scrape()
    rows = 0
    triton = httpclient.InferenceServerClient(stable.url.removeprefix("http://"),
                                              connection_timeout=60, network_timeout=60)
    with httpx.Client(timeout=30) as client:
        for i in range(70):
            kind = i % 7
            if kind == 0:
                r = client.post(f"{stable.url}/predict", json={"features": X[i].tolist()})
                got, n = [r.json()["prediction"]], 1
            elif kind == 1:
                r = client.post(f"{stable.url}/predict", json={"instances": X[i:i + 4].tolist()})
                got, n = r.json()["predictions"], 4
            elif kind == 2:
                r = client.post(f"{stable.url}/v1/models/{NAME}:predict",
                                json={"instances": X[i:i + 2].tolist()})
                got, n = r.json()["predictions"], 2
            elif kind == 3:
                r = client.post(f"{stable.url}/v2/models/{NAME}/versions/1/infer", json={
                    "inputs": [{"name": "x", "shape": [3, X.shape[1]], "datatype": "FP64",
                                "data": X[i:i + 3].ravel().tolist()}]})
                got, n = r.json()["outputs"][0]["data"], 3
            elif kind == 4:  # tritonclient at its defaults: binary tensors both ways
                tensor = httpclient.InferInput("x", [2, X.shape[1]], "FP64")
                tensor.set_data_from_numpy(X[i:i + 2])
                # every other one gzipped: the copy goes with its Content-Encoding
                result = triton.infer(NAME, [tensor], request_compression_algorithm=(
                    "gzip" if i % 14 == 4 else None))
                got, n = result.as_numpy("predict").tolist(), 2
                assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"]
                r = httpx.Response(200)
            elif kind == 5:  # an `mlflow models serve` client, JSON
                r = client.post(f"{stable.url}/invocations", json={
                    "dataframe_split": {"data": X[i:i + 2].tolist()}})
                got, n = r.json()["predictions"], 2
            else:  # and CSV
                csv_text = "\n".join(",".join(map(repr, row)) for row in X[i:i + 3].tolist())
                header = ",".join(f"f{j}" for j in range(X.shape[1]))
                r = client.post(f"{stable.url}/invocations", content=f"{header}\n{csv_text}\n",
                                headers={"Content-Type": "text/csv"})
                got, n = r.json()["predictions"], 3
            assert r.status_code == 200, r.text
            assert got == cluster.stable.predict(X[i:i + n]).tolist()
            rows += n
    triton.close()
    after = sent_and_agreed(stable, before_out, 70, canary, before, rows)
    assert total(after, "model_shadow_uncompared_total") == \
        total(before, "model_shadow_uncompared_total")
    received = {route: total(after, "model_shadow_requests_total", route=route, status="200")
                - total(before, "model_shadow_requests_total", route=route, status="200")
                for route in ("/predict", "/v1/models/{name}:predict", "/v2/models/{name}/infer",
                              "/invocations")}
    assert received == {"/predict": 20, "/v1/models/{name}:predict": 10,
                        "/v2/models/{name}/infer": 20, "/invocations": 20}


#: Datatypes of the mirrored gRPC calls: raw (tritonclient) and typed contents.
RAW_TYPES = {"FP32": np.float32, "UINT8": np.uint8, "INT16": np.int16, "FP16": np.float16,
             "BOOL": np.bool_, "UINT64": np.uint64}
CONTENTS_TYPES = {"FP64": (np.float64, "fp64_contents"), "UINT16": (np.uint16, "uint_contents"),
                  "INT8": (np.int8, "int_contents"), "BOOL": (np.bool_, "bool_contents")}


def _as(batch: np.ndarray, dtype: type[np.generic]) -> np.ndarray:
    """``batch`` as a client holding ``dtype`` sends it: integers rounded x10 (unsigned:
    their magnitude) within range, booleans the positive values."""
    kind = np.dtype(dtype).kind
    if kind == "b":
        return batch > 0
    if kind in "iu":
        batch = np.round(batch * 10)
        batch = np.abs(batch) if kind == "u" else batch
        batch = np.clip(batch, np.iinfo(dtype).min, np.iinfo(dtype).max)
    return batch.astype(dtype)


def test_grpc_predictions_are_mirrored_as_binary_v2_requests(cluster: Cluster) -> None:
    """tritonclient.grpc at its defaults (raw tensors) and typed contents, of the numeric
    datatypes: the canary gets each call's rows (as FP64) over its V2 HTTP route and
    compares them row by row."""
    stable, canary = cluster["grpc-to-same"], cluster["same"]
    X = cluster.X
    before_out, before = stable.outcomes(), canary.scrape()
    client = grpcclient.InferenceServerClient(stable.grpc)
    rows = 0
    raw_types, contents_types = list(RAW_TYPES), list(CONTENTS_TYPES)
    for i in range(12):
        n = 1 + i % 3
        batch = X[i:i + n]
        if i % 2:
            datatype = raw_types[i // 2 % len(raw_types)]
            sent = _as(batch, RAW_TYPES[datatype])
            tensor = grpcclient.InferInput("input-0", list(batch.shape), datatype)
            tensor.set_data_from_numpy(sent)
            got = client.infer(NAME, [tensor], headers={"x-request-id": f"g-{i}"}
                               ).as_numpy("predict").tolist()
        else:
            datatype = contents_types[i // 2 % len(contents_types)]
            dtype, field = CONTENTS_TYPES[datatype]
            sent = _as(batch, dtype)
            request = service_pb2.ModelInferRequest(model_name=NAME, id=f"typed-{i}")
            tensor = request.inputs.add(name="input-0", datatype=datatype,
                                        shape=list(batch.shape))
            getattr(tensor.contents, field).extend(sent.ravel().tolist())
            with grpc.insecure_channel(stable.grpc) as channel:
                response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    request, timeout=30)
            got = list(response.outputs[0].contents.int64_contents)
        want = cluster.stable.predict(sent.astype(np.float64))
        assert got == want.tolist()
        rows += n
    client.close()
    after = sent_and_agreed(stable, before_out, 12, canary, before, rows)
    assert total(after, "model_shadow_requests_total", route="/v2/models/{name}/infer",
                 status="200") - total(before, "model_shadow_requests_total",
                                       route="/v2/models/{name}/infer", status="200") == 12
    assert total(after, "model_shadow_uncompared_total") == \
        total(before, "model_shadow_uncompared_total")


def test_a_canary_trained_on_shuffled_labels_disagrees_and_clients_see_only_the_stable(
        cluster: Cluster) -> None:
    stable, canary = cluster["to-shuffled"], cluster["shuffled"]
    X = cluster.X
    before_out, before_text = stable.outcomes(), canary.text()
    before = samples_of(before_text)
    expected_disagree = 0
    with httpx.Client(timeout=30) as client:
        for i in range(50):
            batch = X[5 * i:5 * i + 5]
            r = client.post(f"{stable.url}/predict", json={"instances": batch.tolist()},
                            headers={"X-Request-ID": f"rq-{i}"})
            assert r.status_code == 200
            assert r.headers["x-model-version"] == "1"
            # The client gets the stable's answer, never the canary's.
            assert r.json()["predictions"] == cluster.stable.predict(batch).tolist()
            expected_disagree += int((cluster.stable.predict(batch)
                                      != cluster.shuffled.predict(batch)).sum())
    assert expected_disagree >= 0.3 * 250  # the premise: shuffled labels make another model
    settle(stable, sent={stable.name: sum(before_out.values()) + 50})
    assert delta(stable.outcomes(), before_out)["sent"] == 50
    after_text = canary.text()
    after = samples_of(after_text)
    disagree = total(after, "model_shadow_agreement_total", result="disagree") - \
        total(before, "model_shadow_agreement_total", result="disagree")
    agree = total(after, "model_shadow_agreement_total", result="agree") - \
        total(before, "model_shadow_agreement_total", result="agree")
    assert (agree + disagree, disagree) == (250, expected_disagree)
    # The operator's analysis reads the same figures from the canary's /metrics.
    window = parse_metrics(after_text) - parse_metrics(before_text)
    assert (window.agree, window.disagree, window.uncompared) == (agree, disagree, 0)
    # A bounded sample of disagreeing requests is logged, by the clients' request ids.
    logged = canary.logged("shadow disagreement")
    assert len(logged) == 3
    for record in logged:
        assert record["request_id"] in {f"rq-{i}" for i in range(50)}
        assert record["stable_version"] == "1" and record["model_version"] == "2"
        assert record["rows"] == 5 and 1 <= record["differing_rows"] <= 5
        assert all(e["stable"] != e["canary"] for e in record["examples"])


def test_a_stuck_or_closed_canary_costs_the_stable_clients_nothing(cluster: Cluster) -> None:
    stable, plain = cluster["to-stuck"], cluster["plain"]
    X = cluster.X
    latencies: dict[str, list[float]] = {"to-stuck": [], "plain": []}

    def burst(n: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(n):
                for pod in (stable, plain):
                    t0 = time.perf_counter()
                    r = client.post(f"{pod.url}/predict", json={"features": X[i].tolist()})
                    latencies[pod.name].append(time.perf_counter() - t0)
                    assert r.status_code == 200
                    assert r.json()["prediction"] == cluster.stable.predict(X[i:i + 1])[0]

    before = stable.outcomes()
    burst(80)  # the canary accepts connections and never answers
    settle(stable, sent={stable.name: sum(before.values()) + 80})
    stuck = delta(stable.outcomes(), before)
    assert stuck["sent"] == 0 and stuck["skipped"] == 0
    assert stuck["failed"] >= 1 and stuck["failed"] + stuck["dropped"] == 80

    cluster.silent.close()  # now the port is closed: connections are refused
    before = stable.outcomes()
    burst(80)
    settle(stable, sent={stable.name: sum(before.values()) + 80})
    closed = delta(stable.outcomes(), before)
    assert closed["sent"] == 0 and closed["failed"] + closed["dropped"] == 80

    # No client waited for the canary: not one answer took the mirror's timeout (3 s),
    # and the typical answer is as quick as from the stable that mirrors nothing.
    assert max(latencies["to-stuck"]) < 3.0
    ours, theirs = (statistics.median(latencies[p]) for p in ("to-stuck", "plain"))
    assert ours <= 1.5 * theirs + 0.005, (ours, theirs)
    assert total(stable.scrape(), "http_requests_total", status="200", route="/predict") >= 160


def test_copies_of_requests_arriving_while_others_are_served_are_shed(
        cluster: Cluster) -> None:
    """16 clients at once: the default stable mirrors only requests that arrive while
    nothing else is served and counts the others `shed`; `busy-mirror`
    (MODELSHIP_SHADOW_WHEN_BUSY=mirror) mirrors them all. Clients get every answer."""
    X = cluster.X
    burst: dict[str, dict[str, float]] = {}
    for name in ("to-same", "busy-mirror"):
        pod = cluster[name]
        before = pod.outcomes()

        def client(k: int, pod: Pod = pod) -> None:
            with httpx.Client(timeout=60) as c:
                for i in range(10):
                    r = c.post(f"{pod.url}/predict", json={"features": X[k + i].tolist()})
                    assert r.status_code == 200
                    assert r.json()["prediction"] == cluster.stable.predict(X[k + i:k + i + 1])[0]

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(client, range(16)))
        settle(pod, sent={name: sum(before.values()) + 160})
        burst[name] = delta(pod.outcomes(), before)
    shed, mirrored = burst["to-same"], burst["busy-mirror"]
    assert shed["shed"] > 0 and shed["failed"] == shed["skipped"] == 0, shed
    assert mirrored["shed"] == 0 and mirrored["sent"] + mirrored["dropped"] == 160, mirrored


def test_a_quarter_of_the_requests_are_mirrored(cluster: Cluster) -> None:
    stable, canary = cluster["quarter"], cluster["same"]
    X = cluster.X
    before_out, before = stable.outcomes(), canary.scrape()
    with httpx.Client(timeout=30) as client:
        for i in range(400):
            r = client.post(f"{stable.url}/predict", json={"features": X[i % len(X)].tolist()})
            assert r.status_code == 200
    wait_for("nothing pending", lambda: stable.pending() == 0)
    mirrored = delta(stable.outcomes(), before_out)
    # Binomial(400, 0.25): mean 100, sd 8.7; these bounds are 4.6 sd away.
    assert 60 <= mirrored["sent"] <= 140, mirrored
    assert mirrored["dropped"] == mirrored["failed"] == mirrored["skipped"] == 0
    received = total(canary.scrape(), "model_shadow_requests_total") - \
        total(before, "model_shadow_requests_total")
    assert received == mirrored["sent"]


def test_a_mirrored_request_is_never_mirrored_again(cluster: Cluster) -> None:
    # `to-same` mirrors to `same`, and `same` mirrors to `to-same`: clients of each.
    a, b = cluster["to-same"], cluster["same"]
    X = cluster.X
    out_a, out_b = a.outcomes(), b.outcomes()
    got_a = total(a.scrape(), "model_shadow_requests_total")
    got_b = total(b.scrape(), "model_shadow_requests_total")
    with httpx.Client(timeout=30) as client:
        for i in range(20):
            for pod in (a, b):
                r = client.post(f"{pod.url}/predict", json={"features": X[i].tolist()})
                assert r.status_code == 200
    settle(a, b, sent={a.name: sum(out_a.values()) + 20, b.name: sum(out_b.values()) + 20})
    # A client request may reach one while it answers the other's copy: shed, not sent.
    sent_a, sent_b = delta(a.outcomes(), out_a), delta(b.outcomes(), out_b)
    assert sent_a["sent"] + sent_a["shed"] == 20 and sent_a["sent"] > 0, sent_a
    assert sent_b["sent"] + sent_b["shed"] == 20 and sent_b["sent"] > 0, sent_b
    for _ in range(2):  # twice: a loop would keep both busy, and the counts growing
        wait_for("nothing pending", lambda: a.pending() == 0 and b.pending() == 0)
        assert delta(a.outcomes(), out_a) == sent_a
        assert delta(b.outcomes(), out_b) == sent_b
        assert total(a.scrape(), "model_shadow_requests_total") - got_a == sent_b["sent"]
        assert total(b.scrape(), "model_shadow_requests_total") - got_b == sent_a["sent"]


def test_the_mounted_config_turns_mirroring_on_and_off_without_a_restart(
        cluster: Cluster) -> None:
    """The operator's ConfigMap, as the kubelet projects it: another version's config or
    `{}` mirrors nothing; the pod's own version mirrors to the named URL; back to `{}`
    stops. The process is the same throughout."""
    stable, canary = cluster["by-file"], cluster["same"]
    assert stable.proc is not None
    pid = stable.proc.pid
    X = cluster.X

    def send(n: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(n):
                r = client.post(f"{stable.url}/predict", json={"features": X[i].tolist()})
                assert r.status_code == 200

    def switched(on: bool) -> bool:
        """Whether mirroring is on, judged from one request's fate: once nothing is
        pending (a copy waits in the hand-off batch, then with the sender), it was
        mirrored if the outcomes grew. (The stable hands a copy over before it serves
        the next request, the /metrics that says what is pending.)"""
        before = sum(stable.outcomes().values())
        send(1)
        wait_for("nothing pending", lambda: stable.pending() == 0)
        return (sum(stable.outcomes().values()) > before) is on

    send(10)
    assert sum(stable.outcomes().values()) == 0  # `{}`: nothing chosen for mirroring
    cluster.config.write_text(orjson.dumps(
        {"mirrorFrom": "7", "url": canary.url, "fraction": 1.0}).decode())
    send(10)
    assert sum(stable.outcomes().values()) == 0  # another version's config: not ours
    cluster.config.write_text(orjson.dumps(
        {"mirrorFrom": "1", "mirrorTo": "2", "url": canary.url, "fraction": 1.0}).decode())
    wait_for("mirroring switched on", lambda: switched(True))
    before = stable.outcomes()
    send(20)
    settle(stable, sent={stable.name: sum(before.values()) + 20})
    assert delta(stable.outcomes(), before)["sent"] == 20
    cluster.config.write_text("{}")
    wait_for("mirroring switched off", lambda: switched(False))
    before = stable.outcomes()
    send(20)
    assert stable.outcomes() == before
    cluster.config.write_text("not json")
    send(5)
    assert stable.outcomes() == before and stable.proc.poll() is None
    assert stable.proc.pid == pid


# --- the sender process ----------------------------------------------------------------

def senders(pid: int) -> list[int]:
    """The shadow sender processes started by process `pid`, still running."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == pid and stat[0] != "Z" and b"modelship_runtime.shadow_sender" in cmdline:
            found.append(int(entry.name))
    return found


def test_the_sender_runs_only_on_cpu_the_serving_process_leaves(cluster: Cluster) -> None:
    """By default the sender is SCHED_IDLE (the serving process preempts it whenever it
    wakes); MODELSHIP_SHADOW_SENDER_PRIORITY=low makes it nice 19 instead. The serving
    process keeps its own priority."""
    default, low = cluster["to-same"], cluster["quarter"]
    idle_pid = one_sender(default)
    wait_for("the default sender at SCHED_IDLE",
             lambda: os.sched_getscheduler(idle_pid) == os.SCHED_IDLE)
    low_pid = one_sender(low)
    wait_for("the low sender at nice 19",
             lambda: os.getpriority(os.PRIO_PROCESS, low_pid) == 19)
    assert os.sched_getscheduler(low_pid) == os.SCHED_OTHER
    for pod in (default, low):
        assert pod.proc is not None
        assert os.sched_getscheduler(pod.proc.pid) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, pod.proc.pid) == 0


def running(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def one_sender(pod: Pod) -> int:
    """The pid of the pod's one sender process (once there is one)."""
    assert pod.proc is not None
    pid = pod.proc.pid
    wait_for(f"{pod.name}: one sender process", lambda: len(senders(pid)) == 1)
    return senders(pid)[0]


def post_rows(pod: Pod, rows: np.ndarray, n: int, *, many: bool = False) -> list[float]:
    """`n` prediction requests (one row each, or all of `rows` each); their latencies."""
    took = []
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            body = {"instances": rows.tolist()} if many else {"features": rows[i].tolist()}
            t0 = time.perf_counter()
            r = client.post(f"{pod.url}/predict", json=body)
            took.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return took


def test_a_killed_sender_costs_clients_nothing_and_goes_when_its_server_stops(
        cluster: Cluster) -> None:
    stable = cluster["sender-killed"]
    X = cluster.X
    post_rows(stable, X, 20)
    # The canary never answers: all 20 wait in the sender (the timeout is 60 s).
    wait_for("20 pending", lambda: stable.pending() == 20)
    first = one_sender(stable)
    os.kill(first, 9)
    wait_for("the 20 unsettled copies dropped",
             lambda: stable.pending() == 0 and stable.outcomes()["dropped"] == 20)
    assert stable.outcomes() == {"sent": 0, "dropped": 20, "failed": 0, "skipped": 0,
                                 "shed": 0}
    post_rows(stable, X, 10)  # no client sees the sender's death
    # A new sender is started; every copy is accounted for, pending or settled.
    second = one_sender(stable)
    assert second != first
    assert sum(stable.outcomes().values()) + stable.pending() == 30
    assert stable.logged("shadow sender exited")
    # A server that stops closes its end of the socket: its sender exits with it.
    assert stable.proc is not None
    stable.proc.terminate()
    stable.proc.wait(30)
    wait_for(f"sender {second} gone", lambda: not running(second), 30)


def test_a_full_socket_drops_copies_never_blocks_and_a_killed_server_leaves_no_sender(
        cluster: Cluster) -> None:
    stable = cluster["sender-stopped"]
    X = cluster.X
    rows = np.resize(X, (1000, X.shape[1]))  # 1000 rows: a 160 KB body per request
    post_rows(stable, X, 1)
    sender = one_sender(stable)
    wait_for("the first copy sent", lambda: stable.outcomes()["sent"] == 1)
    os.kill(sender, 19)  # SIGSTOP: the sender reads nothing more
    try:
        took = post_rows(stable, rows, 120, many=True)  # 19 MB: more than the socket holds
        out = stable.outcomes()
        assert out["dropped"] > 0 and out["sent"] == 1, out
        assert stable.pending() > 0
    finally:
        os.kill(sender, 18)  # SIGCONT
    settle(stable, sent={stable.name: 121})
    out = stable.outcomes()
    assert out["sent"] > 1 and out["sent"] + out["dropped"] == 121, out
    assert out["failed"] == out["skipped"] == 0
    # No answer waited on the stopped sender.
    assert statistics.median(took) < 1.0 and max(took) < 10.0
    assert stable.proc is not None and senders(stable.proc.pid) == [sender]
    # A server killed outright cannot close anything; the kernel closes its end of the
    # socket, and the sender exits (no orphan left behind).
    stable.proc.kill()
    stable.proc.wait(30)
    wait_for(f"sender {sender} gone", lambda: not running(sender), 30)

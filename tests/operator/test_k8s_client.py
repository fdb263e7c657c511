"""KubeClient (operator/modelship_operator/k8s.py) against a real HTTP server on loopback.

The server answers what each test scripts, as an API server would (a Status body, a
Retry-After, a proxy's HTML page, silence), and records every request as it arrived:
method, path, query, headers, body and the client's port (one port per connection).
The operator's integration tests drive the same client against the emulated API.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import trustme
from modelship_operator.k8s import (
    MAX_WAIT,
    MESSAGE_CHARS,
    THROTTLED_WAIT,
    USER_AGENT,
    ApiError,
    KubeClient,
    kind_of,
)

TOKEN = "s3cr3t-token-never-shown"
NS = "ml"
DEPLOYMENTS = kind_of("apps/v1", "Deployment")
MDS = kind_of("modelship.io/v1alpha1", "ModelDeployment")
ROUTE = f"/apis/apps/v1/namespaces/{NS}/deployments/iris"


@dataclass
class Answer:
    status: int = 200
    body: Any = None  # dict/list: JSON; str or bytes: as is; None: empty
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    port: int


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": message}


class Api(ThreadingHTTPServer):
    """Scripted answers per (method, path): each one once, the last one for good."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.script: dict[tuple[str, str], list[Answer]] = {}
        self.peer_certs: list[Any] = []

    @property
    def url(self) -> str:
        scheme = "https" if isinstance(self.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"

    def answer(self, method: str, path: str, *answers: Answer) -> None:
        with self.lock:
            self.script[(method, path)] = list(answers)

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()
            self.script.clear()

    def next_answer(self, method: str, path: str) -> Answer:
        with self.lock:
            queue = self.script.get((method, path))
            if not queue:
                return Answer(404, status_body(404, "NotFound", f"{path} not found"))
            return queue.pop(0) if len(queue) > 1 else queue[0]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client may reuse a connection
    server: Api

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if isinstance(self.connection, ssl.SSLSocket):
            self.server.peer_certs.append(self.connection.getpeercert())
        seen = Seen(self.command, parts.path, dict(parse_qsl(parts.query)), dict(self.headers),
                    json.loads(raw) if raw else None, self.client_address[1])
        with self.server.lock:
            self.server.seen.append(seen)
        answer = self.server.next_answer(self.command, parts.path)
        time.sleep(answer.delay)
        if isinstance(answer.body, (dict, list)):
            payload = json.dumps(answer.body).encode()
            answer.headers.setdefault("Content-Type", "application/json")
        elif isinstance(answer.body, str):
            payload = answer.body.encode()
        else:
            payload = answer.body or b""
        self.send_response_only(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_DELETE = _serve


def _serve(api: Api) -> Iterator[Api]:
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.shutdown()
        api.server_close()


@pytest.fixture(scope="module")
def module_api() -> Iterator[Api]:
    yield from _serve(Api())


@pytest.fixture()
def api(module_api: Api) -> Api:
    module_api.reset()
    return module_api


def kubeconfig(path: Path, server: str, user: dict[str, Any] | None = None,
               cluster: dict[str, Any] | None = None) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "test", "user": user if user is not None else {"token": TOKEN}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    return path


class Waits(list[float]):
    """The client's sleep: records each wait instead of taking it."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture()
def waits() -> Waits:
    return Waits()


@pytest.fixture()
def client(api: Api, tmp_path: Path, waits: Waits) -> Iterator[KubeClient]:
    from lightkube import KubeConfig

    config = KubeConfig.from_file(kubeconfig(tmp_path / "kubeconfig", api.url))
    kube = KubeClient(config, timeout=5, sleep=waits)
    yield kube
    kube.close()


def deployment(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "iris", "namespace": NS, "labels": {"app": "iris"}},
            "spec": {"replicas": 2, **spec}}


# --- what each verb sends ---------------------------------------------------------------------


def test_apply_is_a_forced_server_side_apply_of_the_plain_dict(api: Api,
                                                               client: KubeClient) -> None:
    obj = deployment()
    live = {**obj, "metadata": {**obj["metadata"], "uid": "u1", "resourceVersion": "7"}}
    api.answer("PATCH", ROUTE, Answer(200, live))
    assert client.apply(obj, "modelship") == live
    (seen,) = api.seen
    assert (seen.method, seen.path, seen.body) == ("PATCH", ROUTE, obj)
    assert seen.query == {"fieldManager": "modelship", "force": "true"}
    assert seen.headers["Content-Type"] == "application/apply-patch+yaml"
    assert seen.headers["User-Agent"] == USER_AGENT
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"


def test_status_patch_names_the_version_and_a_conflict_is_the_callers(
    api: Api, client: KubeClient
) -> None:
    path = f"/apis/modelship.io/v1alpha1/namespaces/{NS}/modeldeployments/iris/status"
    patched = {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
               "metadata": {"name": "iris", "resourceVersion": "8"}, "status": {"phase": "Ready"}}
    api.answer("PATCH", path, Answer(200, patched),
               Answer(409, status_body(409, "Conflict", "the object has been modified")))
    assert client.patch_status(MDS, NS, "iris", {"phase": "Ready"}, "7") == patched
    assert api.seen[0].body == {"status": {"phase": "Ready"}, "metadata": {"resourceVersion": "7"}}
    assert api.seen[0].headers["Content-Type"] == "application/merge-patch+json"
    with pytest.raises(ApiError) as conflict:
        client.patch_status(MDS, NS, "iris", {"phase": "Failed"}, "7")
    assert (conflict.value.status, conflict.value.reason) == (409, "Conflict")
    assert conflict.value.message == "the object has been modified"
    assert len(api.seen) == 2  # not retried: a conflict is not the transport's to resolve
    api.answer("PATCH", path, Answer(200, patched))
    assert client.patch_status(MDS, NS, "iris", {"phase": "Ready"}) == patched
    assert api.seen[2].body == {"status": {"phase": "Ready"}}


def test_get_list_create_and_delete(api: Api, client: KubeClient) -> None:
    events = f"/api/v1/namespaces/{NS}/events"
    event = {"apiVersion": "v1", "kind": "Event",
             "metadata": {"name": "iris.1", "namespace": NS}, "reason": "Promoted",
             "involvedObject": {"kind": "ModelDeployment", "name": "iris"}}
    api.answer("POST", events, Answer(201, event))
    assert client.create(event) == event
    assert (api.seen[-1].path, api.seen[-1].body) == (events, event)

    api.answer("GET", f"/apis/apps/v1/namespaces/{NS}/deployments",
               Answer(200, {"kind": "DeploymentList", "metadata": {"resourceVersion": "9"},
                            "items": [deployment(), deployment(replicas=3)]}))
    items = client.list(DEPLOYMENTS, NS, "modelship.io/deployment=iris,tier=predictor")
    assert [item["spec"]["replicas"] for item in items] == [2, 3]
    assert type(items[0]) is dict
    assert api.seen[-1].query == {"labelSelector": "modelship.io/deployment=iris,tier=predictor"}
    api.answer("GET", "/apis/apps/v1/deployments", Answer(200, {"items": []}))
    assert client.list(DEPLOYMENTS, None) == []  # every namespace
    assert api.seen[-1].path == "/apis/apps/v1/deployments" and api.seen[-1].query == {}
    with pytest.raises(ValueError, match="not an equality label selector term: 'tier!=x'"):
        client.list(DEPLOYMENTS, NS, "a=b,tier!=x")

    api.answer("GET", ROUTE, Answer(200, deployment()))
    assert client.get(DEPLOYMENTS, NS, "iris") == deployment()
    assert client.get(DEPLOYMENTS, NS, "other") is None  # the server's 404

    api.answer("DELETE", ROUTE, Answer(200, status_body(200, "", "")))
    assert client.delete(DEPLOYMENTS, NS, "iris") is True
    assert api.seen[-1].query == {"propagationPolicy": "Background"}
    assert client.delete(DEPLOYMENTS, NS, "gone") is False
    assert {seen.headers["User-Agent"] for seen in api.seen} == {USER_AGENT}


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "status", "reason", "message"),
    [
        (Answer(403, status_body(403, "Forbidden", 'deployments.apps "iris" is forbidden')),
         403, "Forbidden", 'deployments.apps "iris" is forbidden'),
        (Answer(502, "<html><body>" + "Bad gateway " * 100 + "</body></html>",
                {"Content-Type": "text/html"}),
         502, "Bad Gateway", "<html><body>Bad gateway Bad gateway"),
        (Answer(500), 500, "Internal Server Error", ""),  # no body, no Content-Type
        (Answer(400, "{not json", {"Content-Type": "application/json"}),
         400, "Bad Request", "{not json"),
        (Answer(422, {"kind": "Status", "code": "weird", "message": "see https://u:pw@x.example/"}),
         422, "Unprocessable Entity", "see https://***@x.example/"),
    ],
    ids=["status", "html-page", "empty", "broken-json", "odd-status"],
)
def test_every_error_answer_is_a_typed_api_error(
    api: Api, client: KubeClient, answer: Answer, status: int, reason: str, message: str
) -> None:
    api.answer("GET", ROUTE, answer)
    with pytest.raises(ApiError) as info:
        client.get(DEPLOYMENTS, NS, "iris")
    error = info.value
    assert (error.status, error.reason) == (status, reason)
    assert error.message.startswith(message)
    assert len(error.message) <= MESSAGE_CHARS
    assert str(error).startswith(f"GET {ROUTE}: {status} {reason}: ")
    assert error.transient is (status >= 500)
    assert TOKEN not in str(error)
    assert len(api.seen) == 1  # nothing here asked for a retry


def test_throttling_is_retried_after_the_wait_the_server_names(
    api: Api, client: KubeClient, waits: Waits
) -> None:
    throttled = Answer(429, status_body(429, "TooManyRequests", "slow down"), {"Retry-After": "2"})
    api.answer("GET", ROUTE, throttled, throttled, Answer(200, deployment()))
    assert client.get(DEPLOYMENTS, NS, "iris") == deployment()
    assert waits == [2.0, 2.0]
    assert len(api.seen) == 3 and {s.headers["User-Agent"] for s in api.seen} == {USER_AGENT}
    assert client.requests_sent == 3

    waits.clear()
    api.answer("GET", ROUTE, Answer(429, status_body(429, "TooManyRequests", "slow down")))
    with pytest.raises(ApiError) as info:
        client.get(DEPLOYMENTS, NS, "iris")
    assert (info.value.status, info.value.reason, info.value.transient) == (
        429, "TooManyRequests", True)
    assert waits == [THROTTLED_WAIT, THROTTLED_WAIT]  # 3 sends, then the caller decides


def test_a_server_error_is_retried_only_when_it_says_when(
    api: Api, client: KubeClient, waits: Waits
) -> None:
    api.answer("GET", ROUTE, Answer(503, status_body(503, "ServiceUnavailable", "etcd down"),
                                    {"Retry-After": "3600"}))
    with pytest.raises(ApiError) as info:
        client.get(DEPLOYMENTS, NS, "iris")
    assert (info.value.status, info.value.message, info.value.transient) == (
        503, "etcd down", True)
    assert waits == [MAX_WAIT, MAX_WAIT] and len(api.seen) == 3

    waits.clear()
    api.reset()
    later = email.utils.format_datetime(
        datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(seconds=5), usegmt=True)
    api.answer("PATCH", ROUTE,
               Answer(504, status_body(504, "Timeout", "t"), {"Retry-After": later}),
               Answer(200, deployment()))
    assert client.apply(deployment(), "modelship") == deployment()
    assert len(waits) == 1 and 0 < waits[0] <= 5.0  # an HTTP date counts too

    waits.clear()
    api.reset()
    api.answer("PATCH", ROUTE, Answer(500, status_body(500, "InternalError", "boom")),
               Answer(200, deployment()))
    with pytest.raises(ApiError) as once:  # a write may have been done: not sent again
        client.apply(deployment(), "modelship")
    assert (once.value.status, once.value.transient, waits, len(api.seen)) == (500, True, [], 1)


def test_retry_after_is_really_waited(api: Api, tmp_path: Path) -> None:
    api.answer("GET", ROUTE, Answer(429, {}, {"Retry-After": "1"}), Answer(200, deployment()))
    kube = KubeClient.from_kubeconfig(kubeconfig(tmp_path / "kubeconfig", api.url))
    start = time.monotonic()
    assert kube.get(DEPLOYMENTS, NS, "iris") == deployment()
    assert time.monotonic() - start >= 1.0
    assert len(api.seen) == 2
    kube.close()


def test_connection_failures_and_timeouts_are_transient(api: Api, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    nobody = KubeClient.from_kubeconfig(
        kubeconfig(tmp_path / "closed", f"http://127.0.0.1:{closed}"), timeout=2)
    with pytest.raises(ApiError) as refused:
        nobody.list(DEPLOYMENTS, NS)
    assert (refused.value.status, refused.value.reason, refused.value.transient) == (
        0, "ConnectError", True)

    api.answer("GET", ROUTE, Answer(200, deployment(), delay=1.5))
    slow = KubeClient.from_kubeconfig(kubeconfig(tmp_path / "slow", api.url), timeout=0.3)
    with pytest.raises(ApiError) as timed_out:
        slow.get(DEPLOYMENTS, NS, "iris")
    assert (timed_out.value.status, timed_out.value.reason, timed_out.value.transient) == (
        0, "ReadTimeout", True)
    assert len(api.seen) == 1  # not sent again by the client
    nobody.close()
    slow.close()


# --- sharing --------------------------------------------------------------------------------


def test_threads_share_one_client_and_its_connections(api: Api, client: KubeClient) -> None:
    api.answer("GET", ROUTE, Answer(200, deployment()))
    threads, each = 8, 20
    results: list[dict[str, Any] | None] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(each):
            got = client.get(DEPLOYMENTS, NS, "iris")
            with lock:
                results.append(got)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert results == [deployment()] * (threads * each)
    assert client.requests_sent == len(api.seen) == threads * each
    connections = {seen.port for seen in api.seen}
    assert 1 <= len(connections) <= threads  # reused, not one per request


# --- configuration ----------------------------------------------------------------------------


def test_from_environment_reads_kubeconfig_when_called(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig", api.url)))
    api.answer("GET", ROUTE, Answer(200, deployment()))
    kube = KubeClient.from_environment(timeout=5)
    assert kube.get(DEPLOYMENTS, NS, "iris") == deployment()
    assert api.seen[0].headers["Authorization"] == f"Bearer {TOKEN}"
    kube.close()


@pytest.fixture(scope="module")
def tls() -> Iterator[tuple[Api, trustme.CA, trustme.LeafCert]]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED  # the user's client certificate
    user = ca.issue_cert("modelship-operator@test")
    yield from ((api, ca, user) for api in _serve(Api(server_context)))


def test_tls_from_the_kubeconfig(tls: tuple[Api, trustme.CA, trustme.LeafCert],
                                 tmp_path: Path) -> None:
    api, ca, user = tls
    api.reset()
    api.answer("GET", ROUTE, Answer(200, deployment()))

    def b64(blob: trustme.Blob) -> str:
        return base64.b64encode(blob.bytes()).decode()

    user_entry = {"client-certificate-data": b64(user.cert_chain_pems[0]),
                  "client-key-data": b64(user.private_key_pem)}
    trusted = KubeClient.from_kubeconfig(kubeconfig(
        tmp_path / "data", api.url, user_entry,
        {"certificate-authority-data": b64(ca.cert_pem)}))
    assert trusted.get(DEPLOYMENTS, NS, "iris") == deployment()
    assert ("email", "modelship-operator@test") in api.peer_certs[-1]["subjectAltName"]

    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    user.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "user.pem"))
    files = KubeClient.from_kubeconfig(kubeconfig(
        tmp_path / "files", api.url,
        {"client-certificate": "user.pem", "client-key": "user.pem"},
        {"certificate-authority": "ca.crt"}))  # relative to the kubeconfig's folder
    assert files.get(DEPLOYMENTS, NS, "iris") == deployment()

    untrusting = KubeClient.from_kubeconfig(kubeconfig(tmp_path / "none", api.url, user_entry))
    with pytest.raises(ApiError) as info:
        untrusting.get(DEPLOYMENTS, NS, "iris")
    assert (info.value.status, info.value.transient) == (0, True)
    assert "CERTIFICATE_VERIFY_FAILED" in info.value.message
    for kube in (trusted, files, untrusting):
        kube.close()

"""Registry trust under kopf: a tracking host outside the allowlist is refused before any
Secret is read or request sent, and a password in a tracking URI is shown nowhere."""

from __future__ import annotations

import base64
import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kube_emulator import Cluster, operator_requests, wait_for

NS = "ml"
TOKEN = "tok-8d0e1f-must-stay-home"
PASSWORD = "pw-51c3e7-never-shown"


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(f"{self.command} {self.path} {self.headers.get('Authorization')}")
        self.send_response(404)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def collector() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback that records every request: the host an author names."""
    seen: list[str] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def md(name: str, registry: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"model": {"name": "iris", "version": "1", "registry": registry}},
    }


def cond(cluster: Cluster, name: str, type_: str) -> dict[str, Any]:
    obj = cluster.get("modeldeployments", NS, name) or {}
    conditions = (obj.get("status") or {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), {})


def test_untrusted_host_gets_a_condition_and_never_the_secret(
    cluster: Cluster, operator: Callable[..., Any], collector: tuple[str, list[str]]
) -> None:
    evil_uri, seen = collector
    for secret in ("team-db", "mlflow-auth"):
        cluster.http("POST", f"/api/v1/namespaces/{NS}/secrets", {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": secret, "namespace": NS},
            "data": {"MLFLOW_TRACKING_TOKEN": base64.b64encode(TOKEN.encode()).decode()}})
    # The trusted registry is the default's host, 127.0.0.1, on a port nothing listens on.
    op = operator(MODELSHIP_OPERATOR_DEFAULT_TRACKING_URI="http://127.0.0.1:9",
                  MODELSHIP_OPERATOR_VERIFY_MODEL_VERSIONS="true",
                  MODELSHIP_OPERATOR_REGISTRY_TIMEOUT_SECONDS="2")
    # localhost is the same machine, but not a host the operator was told to trust.
    cluster.create_md(md("exfil", {"trackingUri": evil_uri, "credentialsSecret": "team-db"}))
    # Stored before the CRD refused it (the emulator runs no CEL): the operator refuses too.
    cluster.create_md(md("inline", {
        "trackingUri": f"http://ml:{PASSWORD}@127.0.0.1:9", "credentialsSecret": "team-db"}))
    # The control: a trusted host gets the Secret read (then fails to connect).
    cluster.create_md(md("trusted", {"trackingUri": "http://127.0.0.1:9",
                                     "credentialsSecret": "mlflow-auth"}))

    refused = wait_for(lambda: cond(cluster, "exfil", "ModelResolved").get("status") == "False"
                       and cond(cluster, "exfil", "ModelResolved"), what="exfil refused")
    assert refused["reason"] == "TrackingHostNotAllowed"
    assert "host localhost is not one the operator trusts" in refused["message"]
    stalled = cond(cluster, "exfil", "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "TrackingHostNotAllowed")
    inline = wait_for(lambda: cond(cluster, "inline", "Stalled").get("status") == "True"
                      and cond(cluster, "inline", "Stalled"), what="inline refused")
    assert "no user or password in the URI" in inline["message"]
    wait_for(lambda: cond(cluster, "trusted", "RegistryAvailable").get("status") == "False",
             what="the trusted registry tried")

    # Give the refused ones more passes (resyncs every second) before counting.
    passes = len(operator_requests(cluster))
    wait_for(lambda: len(operator_requests(cluster)) > passes + 10, what="more passes")
    with urllib.request.urlopen(op.metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    assert 'reason="TrackingHostNotAllowed"' in metrics
    op.stop()
    secret_reads = {p.rsplit("/", 1)[-1] for m, p, _, _ in operator_requests(cluster)
                    if m == "GET" and "/secrets/" in p}
    assert secret_reads == {"mlflow-auth"}  # the control read its own; team-db never
    assert seen == []  # nothing ever reached the untrusted host
    children = [o for plural in ("deployments", "services", "networkpolicies", "serviceaccounts")
                for o in cluster.objects(plural, NS)
                if o["metadata"]["labels"].get("modelship.io/deployment") in ("exfil", "inline")]
    assert children == []
    shown = json.dumps([cluster.objects("events", NS),
                        [o.get("status") for o in cluster.objects("modeldeployments", NS)],
                        [o for o in cluster.objects("deployments", NS)]])
    assert PASSWORD not in shown and PASSWORD not in op.output() and PASSWORD not in metrics
    assert TOKEN not in shown and TOKEN not in op.output()

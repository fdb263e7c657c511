"""spec.rollout.webhooks against a real HTTP server on a loopback port (hook_server.py):
what is sent, retries, timeouts, refusals, the promotion gate and the host allowlist."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ports
import pytest
from hook_server import HANG, HookServer, hook_server
from modelship_operator import webhooks
from modelship_operator.api import ModelDeployment, WebhookSpec
from modelship_operator.settings import OperatorSettings

ANY_HOST: list[str] = []


@pytest.fixture()
def server() -> Iterator[HookServer]:
    with hook_server() as running:
        yield running


def hook(url: str, name: str = "chat", type_: str = "event", **extra: Any) -> WebhookSpec:
    return WebhookSpec.model_validate({"name": name, "type": type_, "url": url, **extra})


def md() -> ModelDeployment:
    return ModelDeployment.model_validate({
        "metadata": {"name": "iris", "namespace": "ml"},
        "spec": {"model": {"name": "iris-classifier", "version": "4"}},
    })


def body(event: str = "StepPassed") -> dict[str, Any]:
    return webhooks.payload(md(), event, stable="3", canary="4", weight=10, step=0,
                            analysis={"errorRate": 0.0, "requests": 314}, reason="gates passed",
                            at=1_800_000_000.0)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    return ports.free_port()


# --- what a hook receives -------------------------------------------------------------------


def test_payload_has_the_documented_fields() -> None:
    sent = body("Promoted")
    assert sent == {
        "event": "Promoted", "namespace": "ml", "name": "iris", "model": "iris-classifier",
        "stable": "3", "canary": "4", "weight": 10, "step": 0,
        "analysis": {"errorRate": 0.0, "requests": 314}, "reason": "gates passed",
        "time": "2027-01-15T08:00:00.000000Z",
    }


def test_success_posts_json_with_the_documented_headers(server: HookServer) -> None:
    server.answer("/hook", (204, ""))
    result = webhooks.call(hook(server.url + "/hook"), body(), allowed_hosts=ANY_HOST)
    assert result == webhooks.WebhookResult(True, 204, "webhook chat (127.0.0.1): 204")
    (got,) = server.hits("/hook")
    assert got.body == body()
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"].startswith("modelship-operator/")
    assert got.headers["X-Modelship-Event"] == "StepPassed"
    assert got.headers["X-Modelship-Webhook"] == "chat"


# --- retries ----------------------------------------------------------------------------------


def test_figures_strict_json_cannot_carry_are_sent_as_null(server: HookServer) -> None:
    sent = {**body(), "analysis": {"latencyP95Ms": float("nan"), "errorRate": float("inf"),
                                   "requests": 3, "window": (1, 2)}}
    assert webhooks.call(hook(server.url + "/hook"), sent, allowed_hosts=ANY_HOST).ok
    (got,) = server.hits("/hook")
    assert got.body["analysis"] == {"latencyP95Ms": None, "errorRate": None, "requests": 3,
                                    "window": [1, 2]}


def test_retries_after_500_then_succeeds(server: HookServer) -> None:
    server.answer("/hook", 500, 503, 200)
    result = webhooks.call(hook(server.url + "/hook", retries=2), body(), allowed_hosts=ANY_HOST)
    assert result.ok and result.status == 200
    assert len(server.hits("/hook")) == 3


def test_gives_up_after_its_retries(server: HookServer) -> None:
    server.answer("/hook", 500, (502, "bad gateway"), 200)
    result = webhooks.call(hook(server.url + "/hook", retries=1), body(), allowed_hosts=ANY_HOST)
    assert (result.ok, result.status) == (False, 502)
    assert result.message == "webhook chat (127.0.0.1): 502: bad gateway (after 2 tries)"
    assert len(server.hits("/hook")) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_a_client_error_is_an_answer_not_retried(server: HookServer, status: int) -> None:
    server.answer("/hook", status)
    result = webhooks.call(hook(server.url + "/hook", retries=3), body(), allowed_hosts=ANY_HOST)
    assert (result.ok, result.status) == (False, status)
    assert len(server.hits("/hook")) == 1


def test_429_is_retried(server: HookServer) -> None:
    server.answer("/hook", 429, 200)
    result = webhooks.call(hook(server.url + "/hook", retries=1), body(), allowed_hosts=ANY_HOST)
    assert result.ok
    assert len(server.hits("/hook")) == 2


def test_the_budget_bounds_all_tries(server: HookServer) -> None:
    """Five retries of 0.5, 1, 2, 4, 8 s would take 15 s; a 1 s budget allows two tries."""
    server.answer("/hook", *[500] * 6)
    result = webhooks.call(hook(server.url + "/hook", retries=5), body(), allowed_hosts=ANY_HOST,
                           budget_seconds=1.0)
    assert not result.ok and result.status == 500
    assert 1 <= len(server.hits("/hook")) <= 2


# --- no answer ---------------------------------------------------------------------------------


def test_timeout(server: HookServer) -> None:
    """The server holds the request until the test ends: only the timeout can end the call."""
    server.answer("/slow", HANG, HANG)
    result = webhooks.call(hook(server.url + "/slow", timeoutSeconds=1, retries=1), body(),
                           allowed_hosts=ANY_HOST)
    assert (result.ok, result.status) == (False, None)
    assert result.message == "webhook chat (127.0.0.1): no answer within 1s (after 2 tries)"
    assert len(server.hits("/slow")) == 2


def test_connection_refused() -> None:
    url = f"http://127.0.0.1:{closed_port()}/hook"
    result = webhooks.call(hook(url, retries=1), body(), allowed_hosts=ANY_HOST)
    assert (result.ok, result.status) == (False, None)
    assert result.message.startswith("webhook chat (127.0.0.1): cannot connect")
    assert result.message.endswith("(after 2 tries)")


def test_a_redirect_is_not_followed(server: HookServer) -> None:
    server.answer("/hook", (307, "", {"Location": server.url + "/elsewhere"}))
    result = webhooks.call(hook(server.url + "/hook"), body(), allowed_hosts=ANY_HOST)
    assert (result.ok, result.status) == (False, 307)
    assert "redirect, not followed" in result.message
    assert server.hits("/elsewhere") == []


def test_messages_never_show_the_url_path_or_query(server: HookServer) -> None:
    server.answer("/services/T0/B0/s3cr3t-path", 500)
    result = webhooks.call(hook(server.url + "/services/T0/B0/s3cr3t-path?token=s3cr3t-q",
                                retries=0), body(), allowed_hosts=ANY_HOST)
    assert not result.ok
    assert "s3cr3t" not in result.message
    assert "127.0.0.1" in result.message


# --- the host allowlist --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        ("http://hooks.example.com/x", [], True),
        ("http://hooks.example.com/x", ["hooks.example.com"], True),
        ("https://HOOKS.Example.com:8443/x", ["hooks.example.com"], True),
        ("http://a.ml-tools.svc.cluster.local/x", ["*.svc.cluster.local"], True),
        ("http://169.254.169.254/latest/meta-data", ["*.svc.cluster.local"], False),
        ("http://kubernetes.default.svc/api", ["hooks.example.com"], False),
        ("http://hooks.example.com@evil.example.net/x", ["hooks.example.com"], False),
        ("http://hooks.example.com.evil.example.net/x", ["hooks.example.com"], False),
        ("http://10.0.0.7:8080/x", ["10.0.0.*"], True),
    ],
)
def test_host_allowed(url: str, allowed: list[str], ok: bool) -> None:
    assert webhooks.host_allowed(url, allowed) is ok


def test_a_host_outside_the_allowlist_is_never_called(server: HookServer) -> None:
    settings = OperatorSettings(webhook_allowed_hosts=["hooks.example.com"])
    result = webhooks.call(hook(server.url + "/hook"), body(),
                           allowed_hosts=settings.webhook_allowed_hosts)
    assert (result.ok, result.status) == (False, None)
    assert "webhook_allowed_hosts" in result.message
    assert server.received == []
    allowed = OperatorSettings(webhook_allowed_hosts=["127.0.0.1"]).webhook_allowed_hosts
    assert webhooks.call(hook(server.url + "/hook"), body(), allowed_hosts=allowed).ok


def test_allowlist_setting_reads_csv_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSHIP_OPERATOR_WEBHOOK_ALLOWED_HOSTS", " *.svc, hooks.example.com ,")
    assert OperatorSettings().webhook_allowed_hosts == ["*.svc", "hooks.example.com"]
    monkeypatch.setenv("MODELSHIP_OPERATOR_WEBHOOK_ALLOWED_HOSTS", '["a.example.com"]')
    assert OperatorSettings().webhook_allowed_hosts == ["a.example.com"]
    monkeypatch.delenv("MODELSHIP_OPERATOR_WEBHOOK_ALLOWED_HOSTS")
    assert OperatorSettings().webhook_allowed_hosts == []


# --- notify and confirm_promotion -----------------------------------------------------------------


def test_notify_calls_every_event_hook_and_never_raises(server: HookServer) -> None:
    hooks = [
        hook(server.url + "/a", name="a"),
        hook(f"http://127.0.0.1:{closed_port()}/b", name="b", retries=0),
        hook(server.url + "/gate", name="gate", type_="confirm-promotion"),
    ]
    results = webhooks.notify(hooks, "Promoted", body("StepPassed"), allowed_hosts=ANY_HOST)
    assert set(results) == {"a", "b"}
    assert results["a"].ok and not results["b"].ok
    (got,) = server.hits("/a")
    assert got.body["event"] == "Promoted"
    assert got.headers["X-Modelship-Event"] == "Promoted"
    assert server.hits("/gate") == []


def test_confirm_promotion_2xx(server: HookServer) -> None:
    server.answer("/gate", 200)
    server.answer("/gate2", 202)
    hooks = [hook(server.url + "/gate", name="gate", type_="confirm-promotion"),
             hook(server.url + "/gate2", name="gate2", type_="confirm-promotion"),
             hook(server.url + "/chat", name="chat")]
    ok, message = webhooks.confirm_promotion(hooks, body(), allowed_hosts=ANY_HOST)
    assert ok, message
    assert message == "promotion confirmed by gate, gate2"
    assert [h.body["event"] for h in server.hits("/gate")] == ["ConfirmPromotion"]
    assert server.hits("/chat") == []


def test_confirm_promotion_403_holds(server: HookServer) -> None:
    server.answer("/gate", 200)
    server.answer("/freeze", (403, "change freeze until Monday\n"))
    hooks = [hook(server.url + "/gate", name="gate", type_="confirm-promotion"),
             hook(server.url + "/freeze", name="freeze", type_="confirm-promotion")]
    ok, message = webhooks.confirm_promotion(hooks, body(), allowed_hosts=ANY_HOST)
    assert not ok
    assert message == ("promotion not confirmed: webhook freeze (127.0.0.1): 403: "
                       "change freeze until Monday")
    assert len(server.hits("/freeze")) == 1  # a refusal is an answer: not asked again


def test_confirm_promotion_unreachable_holds() -> None:
    gate = hook(f"http://127.0.0.1:{closed_port()}/gate", name="gate", type_="confirm-promotion",
                retries=0)
    ok, message = webhooks.confirm_promotion([gate], body(), allowed_hosts=ANY_HOST)
    assert not ok
    assert "cannot connect" in message


def test_confirm_promotion_without_such_hooks(server: HookServer) -> None:
    ok, message = webhooks.confirm_promotion([hook(server.url + "/chat")], body(),
                                             allowed_hosts=ANY_HOST)
    assert (ok, message) == (True, "")
    assert server.received == []

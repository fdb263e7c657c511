"""Pure parts of the operator core: the change check, conditions, RBAC mapping, resolution."""

from __future__ import annotations

from typing import Any

import pytest
from modelship_operator import api, rbac, status
from modelship_operator.apply import Action, contains, decide, object_hash, with_hash
from modelship_operator.plan import url_of
from modelship_operator.reconcile import backoff
from modelship_operator.registry import RegistryError
from modelship_operator.resolve import Resolver

DESIRED = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "iris", "labels": {"a": "1"}},
    "spec": {"ports": [{"port": 80, "name": "http"}], "selector": {"x": "y"}},
}


def live_of(desired: dict[str, Any], **extra_spec: Any) -> dict[str, Any]:
    live = with_hash(desired)
    live["metadata"]["uid"] = "u"
    live["metadata"]["resourceVersion"] = "7"
    live["spec"] = {**live["spec"], **extra_spec}
    live["spec"]["ports"] = [{**p, "protocol": "TCP"} for p in live["spec"]["ports"]]
    return live


def test_decide_create_existed_update() -> None:
    assert decide(DESIRED, None) is Action.CREATE
    # Server defaults (clusterIP, protocol) do not count as a change.
    assert decide(DESIRED, live_of(DESIRED, clusterIP="10.0.0.1")) is Action.EXISTED
    # A hand edit of a field we own is repaired.
    edited = live_of(DESIRED)
    edited["spec"]["selector"] = {"x": "z"}
    assert decide(DESIRED, edited) is Action.UPDATE
    # A field render dropped: the recorded hash differs, so we re-apply (SSA removes it).
    smaller = {**DESIRED, "spec": {"ports": DESIRED["spec"]["ports"]}}
    assert decide(smaller, live_of(DESIRED)) is Action.UPDATE


@pytest.mark.parametrize(
    ("live", "desired", "expected"),
    [
        ({"a": 1, "b": 2}, {"a": 1}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ([{"a": 1, "x": 0}], [{"a": 1}], True),
        ([{"a": 1}, {"a": 2}], [{"a": 1}], False),
        (True, 1, False),
        (1, True, False),
        ("1", 1, False),
    ],
)
def test_contains(live: Any, desired: Any, expected: bool) -> None:
    assert contains(live, desired) is expected


def test_hash_ignores_its_own_annotation() -> None:
    assert object_hash(with_hash(DESIRED)) == object_hash(DESIRED)


def test_merge_conditions_keeps_transition_time_when_status_stays() -> None:
    old = [{"type": "Ready", "status": "False", "reason": "X", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"},
           {"type": "RegistryAvailable", "status": "True", "reason": "R", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    new = status.kstatus(False, True, False, "Y", "m", 3)
    merged = status.merge_conditions(old, new, "2026-02-02T00:00:00Z")
    by_type = {c["type"]: c for c in merged}
    assert by_type["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert by_type["Reconciling"]["lastTransitionTime"] == "2026-02-02T00:00:00Z"
    assert by_type["RegistryAvailable"] == old[1]  # other owners' conditions stay
    assert [c["type"] for c in merged][:3] == ["Ready", "Reconciling", "Stalled"]
    assert status.status_patch({"phase": "Ready", "url": "u"}, {"phase": "Ready", "url": "v"}) == {
        "url": "v"
    }


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/apis/apps/v1/namespaces/ml/deployments", {}, ("apps", "deployments", "list")),
        ("GET", "/apis/apps/v1/deployments", {"watch": "true"}, ("apps", "deployments", "watch")),
        ("PATCH", "/apis/modelship.io/v1alpha1/namespaces/ml/modeldeployments/i/status", {},
         ("modelship.io", "modeldeployments/status", "patch")),
        ("POST", "/api/v1/namespaces/ml/events", {}, ("", "events", "create")),
        ("GET", "/api/v1/namespaces/ml/secrets/s", {}, ("", "secrets", "get")),
        ("GET", "/apis", {}, None),
    ],
)
def test_request_attributes(
    method: str, path: str, query: dict[str, str], expected: tuple[str, str, str] | None
) -> None:
    assert rbac.request_attributes(method, path, query) == expected


def test_rbac_denies_what_the_operator_must_not_do() -> None:
    assert not rbac.allows("DELETE", "/api/v1/namespaces/ml/secrets/s")
    assert not rbac.allows("GET", "/api/v1/namespaces/ml/pods/p")
    assert not rbac.allows("PATCH", "/apis/modelship.io/v1alpha1/namespaces/ml/modeldeployments/x"
                           "/scale")
    assert rbac.cluster_role()["rules"][0]["resources"] == ["modeldeployments"]


def test_backoff_grows_and_caps() -> None:
    assert [backoff(r) for r in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def md(**spec: Any) -> api.ModelDeployment:
    return api.ModelDeployment.model_validate(
        {"metadata": {"name": "iris", "namespace": "ml"},
         "spec": {"model": {"name": "m", "alias": "champion"}, **spec}}
    )


def test_url_of() -> None:
    assert url_of(md(ingress={"host": "a.example.com", "tlsSecret": "t"})) == "https://a.example.com/"
    assert url_of(md(gateway={"parentRefs": [{"name": "g"}], "hostnames": ["b.example.com"]})) == (
        "http://b.example.com/"
    )
    assert url_of(md()) == "http://iris.ml.svc.cluster.local/"


class FakeRegistry:
    tracking_uri = "http://mlflow"
    key = ("http://mlflow", "no-credentials")

    def __init__(self) -> None:
        self.calls = 0
        self.answer: str | RegistryError = "4"

    def resolve_alias(self, name: str, alias: str) -> str:
        self.calls += 1
        if isinstance(self.answer, RegistryError):
            raise self.answer
        return self.answer

    def check_version(self, name: str, version: str) -> str:
        return "mlflow-artifacts:/x"


def test_resolver_polls_with_jitter_and_backs_off() -> None:
    fake = FakeRegistry()
    resolver = Resolver(poll_seconds=30, verify=True, rng=lambda: 1.0)  # +10% jitter
    current = {"stable": {"version": "3"}, "observedGeneration": 1}
    first = resolver.resolve(md(), current, lambda: fake, now=0.0)  # type: ignore[arg-type,return-value]
    assert (first.target, first.wanted, fake.calls) == ("4", "4", 1)
    assert {c["type"]: c["status"] for c in first.conditions} == {
        "ModelResolved": "True", "RegistryAvailable": "True"}
    resolver.resolve(md(), current, lambda: fake, now=32.0)  # type: ignore[arg-type,return-value]
    assert fake.calls == 1 and not resolver.due("ml", "iris", 32.0)  # next poll at 33 s
    assert resolver.due("ml", "iris", 33.0)
    fake.answer = RegistryError("RegistryUnavailable", "down")
    down = resolver.resolve(md(), current, lambda: fake, now=33.0)  # type: ignore[arg-type,return-value]
    assert down.target == "4"  # the last answer stands; serving is not touched
    assert {c["type"]: c["status"] for c in down.conditions} == {
        "ModelResolved": "False", "RegistryAvailable": "False"}
    assert not resolver.due("ml", "iris", 33.5) and resolver.due("ml", "iris", 34.2)  # ~1 s
    resolver.resolve(md(), current, lambda: fake, now=34.2)  # type: ignore[arg-type,return-value]
    assert not resolver.due("ml", "iris", 35.9) and resolver.due("ml", "iris", 36.5)  # ~2 s
    # A spec change asks at once, whatever the schedule, unless the answer is seconds old.
    fake.answer = "5"
    forced = resolver.resolve(md(), current, lambda: fake, now=36.0, force=True)  # type: ignore[arg-type,return-value]
    assert forced.target == "4" and fake.calls == 3  # asked 1.8 s ago: that answer stands
    forced = resolver.resolve(md(), current, lambda: fake, now=40.0, force=True)  # type: ignore[arg-type,return-value]
    assert forced.target == "5" and fake.calls == 4


def test_resolver_falls_back_to_what_serves_when_the_version_is_missing() -> None:
    fake = FakeRegistry()
    fake.answer = RegistryError("ModelVersionNotFound", "alias champion not found")
    resolver = Resolver(poll_seconds=30, verify=True)
    current = {"stable": {"version": "3"}}
    result = resolver.resolve(md(), current, lambda: fake, now=0.0)  # type: ignore[arg-type,return-value]
    assert result.target == "3" and result.wanted is None
    assert result.conditions[0]["reason"] == "ModelVersionNotFound"
    assert resolver.resolve(md(), {}, lambda: fake, now=100.0).target is None  # type: ignore[arg-type,return-value]

"""Header routing and the gateway mirror, as render makes them mid-rollout.

`RolloutState.header_routing` (set once the canary's pods are ready) routes requests
carrying spec.rollout.headerRouting's header and value to the canary at any weight:
ingress-nginx canary-by-header annotations, or a first HTTPRoute rule matching the
header. `RolloutState.mirror` (the shadow phase, via gateway) puts a RequestMirror filter
on the HTTPRoute's weighted rule. Every object passes the strict checks of
test_render_validate, the HTTPRoute the real Gateway API v1.1.0 CRD among them.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from modelship_operator.render import (
    CANARY_ANNOTATION,
    CANARY_BY_HEADER_ANNOTATION,
    CANARY_BY_HEADER_VALUE_ANNOTATION,
    CANARY_WEIGHT_ANNOTATION,
    Retiring,
    RolloutState,
    render,
)
from test_render_validate import (  # the strict checks and their schema cache
    SETTINGS,
    _cached_schemas,  # noqa: F401  (an autouse fixture, imported to apply here too)
    check_httproute,
    check_object,
    make,
)

MODEL = {"name": "iris-classifier", "version": "3"}
HEADER = {"header": "X-Modelship-Canary", "value": "qa-team.2"}
ROUTING: dict[str, dict[str, Any]] = {
    "ingress": {"ingress": {"host": "iris.example.com", "path": "/models", "className": "nginx"}},
    "gateway": {"gateway": {"parentRefs": [{"name": "public", "namespace": "gateway"}],
                            "hostnames": ["iris.example.com"], "path": "/models"}},
    "neither": {},
}
WEIGHTS = [0, 10, 100]


def spec(routing: str, **rollout: Any) -> dict[str, Any]:
    return {"model": MODEL, "replicas": 2, "rollout": rollout, **ROUTING[routing]}


def rendered(spec_: dict[str, Any], state: RolloutState) -> dict[tuple[str, str], Any]:
    objects = render(make(spec_), state, SETTINGS)
    for obj in objects:
        check_object(obj)
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


# --- header routing ----------------------------------------------------------------------


@pytest.mark.parametrize("weight", WEIGHTS)
def test_ingress_header_routing_annotates_the_canary_ingress(weight: int) -> None:
    objs = rendered(spec("ingress", headerRouting=HEADER),
                    RolloutState("3", "4", weight, header_routing=True))
    canary = objs[("Ingress", "iris--canary")]["metadata"]["annotations"]
    assert canary[CANARY_BY_HEADER_ANNOTATION] == "X-Modelship-Canary"
    # With a value, ingress-nginx sends exactly that value to the canary; any other value
    # of the header (even "always") falls through to the weight.
    assert canary[CANARY_BY_HEADER_VALUE_ANNOTATION] == "qa-team.2"
    assert canary[CANARY_ANNOTATION] == "true"
    assert canary[CANARY_WEIGHT_ANNOTATION] == str(weight)
    main = objs[("Ingress", "iris")]["metadata"].get("annotations", {})
    assert not any(key.startswith("nginx.ingress.kubernetes.io/canary") for key in main)


def test_header_value_defaults_to_always() -> None:
    objs = rendered(spec("ingress", headerRouting={"header": "X-Canary"}),
                    RolloutState("3", "4", 0, header_routing=True))
    canary = objs[("Ingress", "iris--canary")]["metadata"]["annotations"]
    assert (canary[CANARY_BY_HEADER_ANNOTATION], canary[CANARY_BY_HEADER_VALUE_ANNOTATION]) == (
        "X-Canary", "always")


@pytest.mark.parametrize("weight", WEIGHTS)
def test_gateway_header_routing_adds_a_first_rule_to_the_canary(weight: int) -> None:
    objs = rendered(spec("gateway", headerRouting=HEADER),
                    RolloutState("3", "4", weight, header_routing=True))
    rules = objs[("HTTPRoute", "iris")]["spec"]["rules"]
    assert len(rules) == 2
    by_header, weighted = rules
    path = {"type": "PathPrefix", "value": "/models"}
    assert by_header["matches"] == [{
        "path": path,
        "headers": [{"type": "Exact", "name": "X-Modelship-Canary", "value": "qa-team.2"}],
    }]
    assert by_header["backendRefs"] == [{"name": "iris--canary", "port": 80}]
    assert "filters" not in by_header
    assert weighted["matches"] == [{"path": path}]
    assert [(r["name"], r["weight"]) for r in weighted["backendRefs"]] == [
        ("iris", 100 - weight), ("iris--canary", weight)]


@pytest.mark.parametrize("routing", list(ROUTING))
def test_no_header_route_until_the_flag_is_set(routing: str) -> None:
    """Before the state machine says the canary's pods are ready, no header leads there."""
    objs = rendered(spec(routing, headerRouting=HEADER), RolloutState("3", "4", 0))
    for obj in objs.values():
        assert CANARY_BY_HEADER_ANNOTATION not in obj["metadata"].get("annotations", {})
        if obj["kind"] == "HTTPRoute":
            assert len(obj["spec"]["rules"]) == 1
            assert "headers" not in obj["spec"]["rules"][0]["matches"][0]


@pytest.mark.parametrize("routing", list(ROUTING))
def test_the_flag_alone_renders_nothing_without_header_routing(routing: str) -> None:
    plain = render(make(spec(routing)), RolloutState("3", "4", 10), SETTINGS)
    flagged = render(make(spec(routing)), RolloutState("3", "4", 10, header_routing=True),
                     SETTINGS)
    assert flagged == plain


@pytest.mark.parametrize("weight", WEIGHTS)
def test_replica_split_cannot_route_by_header(weight: int) -> None:
    """No router in replica-split mode reads headers: header routing renders nothing."""
    with_header = spec("neither", headerRouting=HEADER)
    plain = render(make(with_header), RolloutState("3", "4", weight), SETTINGS)
    flagged = render(make(with_header), RolloutState("3", "4", weight, header_routing=True),
                     SETTINGS)
    assert flagged == plain
    assert {o["kind"] for o in flagged}.isdisjoint({"Ingress", "HTTPRoute"})


@pytest.mark.parametrize("routing", ["ingress", "gateway"])
def test_no_header_route_to_a_former_canary(routing: str) -> None:
    """Once the rollout is over, its canary's Ingress or backend stays at weight 0 while
    versions retire, but no header route leads there any more."""
    state = RolloutState("3", retiring=(Retiring("4"),), former_canary="4",
                         header_routing=True, mirror=True)
    objs = rendered(spec(routing, headerRouting=HEADER, shadow={"via": "gateway"})
                    if routing == "gateway" else spec(routing, headerRouting=HEADER), state)
    if routing == "ingress":
        annotations = objs[("Ingress", "iris--canary")]["metadata"]["annotations"]
        assert annotations[CANARY_WEIGHT_ANNOTATION] == "0"
        assert CANARY_BY_HEADER_ANNOTATION not in annotations
    else:
        (rule,) = objs[("HTTPRoute", "iris")]["spec"]["rules"]
        assert "filters" not in rule
        assert [(r["name"], r["weight"]) for r in rule["backendRefs"]] == [
            ("iris", 100), ("iris--canary", 0)]


# --- the gateway mirror (shadow via gateway) ---------------------------------------------


@pytest.mark.parametrize("weight", [0, 10])
def test_gateway_mirror_copies_the_weighted_rule_to_the_canary(weight: int) -> None:
    objs = rendered(spec("gateway", shadow={"via": "gateway"}),
                    RolloutState("3", "4", weight, mirror=True))
    (rule,) = objs[("HTTPRoute", "iris")]["spec"]["rules"]
    assert rule["filters"] == [{
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"name": "iris--canary", "port": 80}},
    }]
    assert [(r["name"], r["weight"]) for r in rule["backendRefs"]] == [
        ("iris", 100 - weight), ("iris--canary", weight)]


def test_gateway_mirror_and_header_routing_together() -> None:
    objs = rendered(spec("gateway", shadow={"via": "gateway"}, headerRouting=HEADER),
                    RolloutState("3", "4", 0, header_routing=True, mirror=True))
    by_header, weighted = objs[("HTTPRoute", "iris")]["spec"]["rules"]
    # Requests sent to the canary by header are not mirrored to it a second time.
    assert "filters" not in by_header
    assert weighted["filters"][0]["requestMirror"]["backendRef"]["name"] == "iris--canary"


@pytest.mark.parametrize(
    ("routing", "shadow"),
    [("gateway", None), ("gateway", {"via": "runtime"}), ("ingress", {"via": "runtime"}),
     ("neither", {"fraction": 0.5})],
)
def test_mirror_flag_renders_nothing_unless_shadow_is_via_gateway(
    routing: str, shadow: dict[str, Any] | None
) -> None:
    """No routing object changes; with a shadow via runtime only ConfigMap NAME--shadow
    does (the stable's pods mirror, tests/operator/test_render.py)."""
    extra = {"shadow": shadow} if shadow else {}
    plain = render(make(spec(routing, **extra)), RolloutState("3", "4", 0), SETTINGS)
    flagged = render(make(spec(routing, **extra)), RolloutState("3", "4", 0, mirror=True),
                     SETTINGS)

    def routing_objects(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [o for o in objs if o["kind"] != "ConfigMap"]

    assert routing_objects(flagged) == routing_objects(plain)
    configs = [(a, b) for a, b in zip(plain, flagged, strict=True) if a["kind"] == "ConfigMap"]
    runtime_shadow = bool(shadow) and shadow.get("via", "runtime") == "runtime"
    assert bool(configs) == runtime_shadow
    assert all(a["data"] != b["data"] for a, b in configs)


def test_no_mirror_until_the_flag_is_set() -> None:
    objs = rendered(spec("gateway", shadow={"via": "gateway"}), RolloutState("3", "4", 0))
    (rule,) = objs[("HTTPRoute", "iris")]["spec"]["rules"]
    assert "filters" not in rule


# --- the checks refuse what the Gateway API v1.1 standard CRD refuses ----------------------


def _route() -> dict[str, Any]:
    objs = rendered(spec("gateway", shadow={"via": "gateway"}, headerRouting=HEADER),
                    RolloutState("3", "4", 0, header_routing=True, mirror=True))
    return copy.deepcopy(objs[("HTTPRoute", "iris")])


def test_checks_refuse_a_mirror_percentage() -> None:
    """v1.1's standard channel has no requestMirror.percent (later versions' experimental
    channel does): a rendered one would be refused by the API server."""
    route = _route()
    route["spec"]["rules"][1]["filters"][0]["requestMirror"]["percent"] = 50
    with pytest.raises(AssertionError, match="percent: unknown field"):
        check_httproute(route, "1.37")


def test_checks_refuse_a_mirror_filter_without_its_backend() -> None:
    route = _route()
    del route["spec"]["rules"][1]["filters"][0]["requestMirror"]
    with pytest.raises(AssertionError, match="requestMirror must be specified"):
        check_httproute(route, "1.37")


def test_checks_refuse_a_bad_header_name() -> None:
    route = _route()
    route["spec"]["rules"][0]["matches"][0]["headers"][0]["name"] = "X Canary"
    with pytest.raises(AssertionError, match="headers"):
        check_httproute(route, "1.37")

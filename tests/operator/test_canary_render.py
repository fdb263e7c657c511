"""What render makes of a rollout mid-way: tables of RolloutState(stable, canary, weight)
across the three ways traffic is split (ingress-nginx canary Ingress, Gateway API
weighted backendRefs, replica proportions behind one Service) with and without
autoscaling. Every object at every weight passes kubernetes-validate --strict (the
checks of test_render_validate)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from modelship_operator.render import (
    CANARY_ANNOTATION,
    CANARY_WEIGHT_ANNOTATION,
    RolloutState,
    render,
)
from test_render_validate import (  # the strict checks and their schema cache
    SETTINGS,
    _cached_schemas,  # noqa: F401  (an autouse fixture, imported to apply here too)
    check_object,
    make,
)

MODEL = {"name": "iris-classifier", "version": "3"}
ROUTING: dict[str, dict[str, Any]] = {
    "ingress": {"ingress": {"host": "iris.example.com", "path": "/", "className": "nginx",
                            "tlsSecret": "iris-tls"}},
    "gateway": {"gateway": {"parentRefs": [{"name": "public", "namespace": "gateway"}],
                            "hostnames": ["iris.example.com"]}},
    "neither": {},
}
WEIGHTS = [0, 1, 10, 33, 50, 99, 100]
REPLICAS = 4
AUTOSCALING = {"minReplicas": 2, "maxReplicas": 10, "targetCPUUtilization": 70}


def objects(routing: str, weight: int, *, autoscaling: bool = False,
            replicas: int = REPLICAS) -> dict[tuple[str, str], dict[str, Any]]:
    spec: dict[str, Any] = {"model": MODEL, "replicas": replicas, **ROUTING[routing]}
    if autoscaling:
        spec["autoscaling"] = AUTOSCALING
    rendered = render(make(spec), RolloutState("3", "4", weight), SETTINGS)
    return {(o["kind"], o["metadata"]["name"]): o for o in rendered}


def selector(service: dict[str, Any]) -> dict[str, str]:
    return dict(service["spec"]["selector"])


# --- every split, every weight: the canary side exists and every object is valid ---------


@pytest.mark.parametrize("autoscaling", [False, True], ids=["replicas", "hpa"])
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("routing", list(ROUTING))
def test_canary_side_is_rendered_and_valid(routing: str, weight: int, autoscaling: bool) -> None:
    objs = objects(routing, weight, autoscaling=autoscaling)
    for obj in objs.values():
        check_object(obj)
    stable_dep, canary_dep = objs[("Deployment", "iris-v3")], objs[("Deployment", "iris-v4")]
    assert {k for k in objs if k[0] == "Deployment"} == {("Deployment", "iris-v3"),
                                                         ("Deployment", "iris-v4")}
    # The canary's pods carry its version, never a track: promotion restarts nothing.
    pod_labels = canary_dep["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["modelship.io/model-version"] == "4"
    assert not any("track" in key or "canary" in key for key in pod_labels)
    # Promotion restarts nothing: the canary's pod template is the one version 4 gets
    # once it is the stable version.
    spec: dict[str, Any] = {"model": MODEL, "replicas": REPLICAS, **ROUTING[routing]}
    if autoscaling:
        spec["autoscaling"] = AUTOSCALING
    promoted = render(make(spec), RolloutState("4"), SETTINGS)
    after = next(o for o in promoted if o["kind"] == "Deployment")
    assert after["metadata"]["name"] == "iris-v4"
    assert canary_dep["spec"]["template"] == after["spec"]["template"]
    assert canary_dep["spec"]["selector"] == after["spec"]["selector"]
    assert canary_dep["spec"]["template"] != stable_dep["spec"]["template"]
    # Service NAME--canary selects the canary's pods only: the pods provider finds them
    # through its EndpointSlices.
    canary_svc = objs[("Service", "iris--canary")]
    assert selector(canary_svc) == {"modelship.io/deployment": "iris",
                                    "modelship.io/model-version": "4"}
    assert canary_svc["spec"]["ports"] == objs[("Service", "iris")]["spec"]["ports"]
    # Exactly one of each routing object per way of splitting.
    kinds = [k for k, _ in objs]
    assert kinds.count("Ingress") == (2 if routing == "ingress" else 0)
    assert kinds.count("HTTPRoute") == (1 if routing == "gateway" else 0)
    assert kinds.count("HorizontalPodAutoscaler") == (2 if autoscaling else 0)


# --- ingress-nginx: a second Ingress with the canary annotations --------------------------


@pytest.mark.parametrize("weight", WEIGHTS)
def test_ingress_canary_annotations_carry_the_weight(weight: int) -> None:
    objs = objects("ingress", weight)
    main, canary = objs[("Ingress", "iris")], objs[("Ingress", "iris--canary")]
    annotations = canary["metadata"]["annotations"]
    assert annotations[CANARY_ANNOTATION] == "true"
    assert annotations[CANARY_WEIGHT_ANNOTATION] == str(weight)
    assert CANARY_ANNOTATION not in main["metadata"].get("annotations", {})
    # ingress-nginx pairs a canary Ingress with the main one by host and path.
    main_rule, canary_rule = main["spec"]["rules"][0], canary["spec"]["rules"][0]
    assert canary_rule["host"] == main_rule["host"]
    assert canary_rule["http"]["paths"][0]["path"] == main_rule["http"]["paths"][0]["path"]
    assert canary["spec"]["ingressClassName"] == main["spec"]["ingressClassName"]
    backend = canary_rule["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "iris--canary"
    assert main_rule["http"]["paths"][0]["backend"]["service"]["name"] == "iris"
    # The stable Service keeps selecting the stable version only.
    assert selector(objs[("Service", "iris")])["modelship.io/model-version"] == "3"


# --- Gateway API: one HTTPRoute, two weighted backendRefs ---------------------------------


@pytest.mark.parametrize("weight", WEIGHTS)
def test_httproute_weights_sum_to_100(weight: int) -> None:
    route = objects("gateway", weight)[("HTTPRoute", "iris")]
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [("iris", 100 - weight),
                                                        ("iris--canary", weight)]
    assert sum(r["weight"] for r in refs) == 100


# --- sizes: replicas and HPA bounds follow the weight, never below one pod -----------------


@pytest.mark.parametrize(
    ("weight", "canary_min", "canary_max"),
    [(0, 1, 1), (1, 1, 1), (10, 1, 1), (33, 1, 4), (50, 1, 5), (99, 2, 10), (100, 2, 10)],
)
@pytest.mark.parametrize("routing", list(ROUTING))
def test_canary_hpa_bounds_follow_the_weight(
    routing: str, weight: int, canary_min: int, canary_max: int
) -> None:
    objs = objects(routing, weight, autoscaling=True)
    canary, stable = (objs[("HorizontalPodAutoscaler", n)] for n in ("iris-v4", "iris-v3"))
    assert canary["spec"]["scaleTargetRef"]["name"] == "iris-v4"
    assert (canary["spec"]["minReplicas"], canary["spec"]["maxReplicas"]) == (
        canary_min, canary_max)
    assert 1 <= canary["spec"]["minReplicas"] <= canary["spec"]["maxReplicas"]
    # The stable side keeps its full bounds until promotion; the HPAs own the replicas.
    assert (stable["spec"]["minReplicas"], stable["spec"]["maxReplicas"]) == (2, 10)
    for name in ("iris-v3", "iris-v4"):
        assert "replicas" not in objs[("Deployment", name)]["spec"]


# With a routing object the weight splits traffic; replicas only size the canary, and the
# stable side keeps all of its own.
@pytest.mark.parametrize(
    ("weight", "canary_replicas"),
    [(0, 1), (1, 1), (10, 1), (33, 2), (50, 2), (99, 4), (100, 4)],
)
@pytest.mark.parametrize("routing", ["ingress", "gateway"])
def test_routed_canary_is_sized_by_weight(routing: str, weight: int, canary_replicas: int) -> None:
    objs = objects(routing, weight)
    assert objs[("Deployment", "iris-v4")]["spec"]["replicas"] == canary_replicas
    assert objs[("Deployment", "iris-v3")]["spec"]["replicas"] == REPLICAS


# Neither ingress nor gateway: Service NAME selects both versions and the replica counts
# carry the split. Coarse by nature; the stable side keeps all its replicas at weight 0
# (the canary is not ready yet) and at least one pod at 100 (a rollback has pods to go to).
@pytest.mark.parametrize(
    ("replicas", "weight", "stable", "canary"),
    [
        (4, 0, 4, 1),
        (4, 10, 3, 1),
        (4, 50, 2, 2),
        (4, 99, 1, 4),
        (4, 100, 1, 4),
        (10, 10, 9, 1),
        (10, 33, 6, 4),
        (10, 50, 5, 5),
        (10, 90, 1, 9),
        (2, 10, 1, 1),
        (1, 50, 1, 1),
    ],
)
def test_split_by_replicas_proportions(replicas: int, weight: int, stable: int,
                                       canary: int) -> None:
    objs = objects("neither", weight, replicas=replicas)
    for obj in objs.values():
        check_object(obj)
    assert objs[("Deployment", "iris-v3")]["spec"]["replicas"] == stable
    assert objs[("Deployment", "iris-v4")]["spec"]["replicas"] == canary
    # The canary's share of pods is the weight, rounded up to whole pods.
    if 0 < weight < 100 and stable + canary == replicas:
        assert canary == math.ceil(replicas * weight / 100)
    if weight == 0:
        # Not one request to the canary's pods before it has weight, ready or not.
        assert selector(objs[("Service", "iris")])["modelship.io/model-version"] == "3"
    else:
        assert selector(objs[("Service", "iris")]) == {"modelship.io/deployment": "iris"}
    assert selector(objs[("Service", "iris--canary")])["modelship.io/model-version"] == "4"


def test_no_canary_renders_the_stable_side_alone() -> None:
    for routing in ROUTING:
        spec = {"model": MODEL, "replicas": REPLICAS, **ROUTING[routing]}
        plain = render(make(spec), RolloutState("3"), SETTINGS)
        # A canary of the stable version itself is no canary (a reverted spec).
        same = render(make(spec), RolloutState("3", "3", 50), SETTINGS)
        assert plain == same
        names = {o["metadata"]["name"] for o in plain}
        assert "iris--canary" not in names and "iris-v4" not in names
        dep = next(o for o in plain if o["kind"] == "Deployment")
        assert dep["spec"]["replicas"] == REPLICAS
        svc = next(o for o in plain if o["kind"] == "Service")
        assert selector(svc)["modelship.io/model-version"] == "3"


@pytest.mark.parametrize("routing", list(ROUTING))
def test_every_step_of_a_rollout_renders_valid_objects(routing: str) -> None:
    """The object sets of a whole rollout, [10, 50, 100] then promotion, all valid, and
    the routing objects' weights rise with the steps."""
    spec = {"model": MODEL, "replicas": REPLICAS, "autoscaling": AUTOSCALING,
            "rollout": {"steps": [10, 50, 100]}, **ROUTING[routing]}
    md = make(spec)
    states = [RolloutState("3", "4", w) for w in (0, 10, 50, 100)] + [RolloutState("4")]
    seen = []
    for state in states:
        rendered = render(md, state, SETTINGS)
        for obj in rendered:
            check_object(obj)
        seen.append({(o["kind"], o["metadata"]["name"]) for o in rendered})
    assert ("Deployment", "iris-v3") not in seen[-1]
    assert ("Service", "iris--canary") not in seen[-1]
    assert ("Deployment", "iris-v4") in seen[-1]

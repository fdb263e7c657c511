"""Unit tests of render: parametrised tables per child kind, as KServe's reconciler tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from modelship_operator import naming, render
from modelship_operator.api import EnvVar, ModelDeployment
from modelship_operator.reconcilers import canonical_quantity
from modelship_operator.reconcilers import deployment as dep
from modelship_operator.render import RenderError, RolloutState, desired_kinds
from modelship_operator.settings import OperatorSettings
from pydantic import ValidationError

SETTINGS = OperatorSettings(default_tracking_uri="http://mlflow.mlflow:5000")
UID = "6f1c3a2e-0000-4000-8000-000000000001"


def make(name: str = "iris", namespace: str = "ml", **spec: Any) -> ModelDeployment:
    body: dict[str, Any] = {"model": {"name": "iris-classifier", "version": "3"}}
    body.update(spec)
    return ModelDeployment.model_validate(
        {
            "apiVersion": "modelship.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace, "uid": UID},
            "spec": body,
        }
    )


def objects(md: ModelDeployment, version: str = "3", **kw: Any) -> dict[str, dict[str, Any]]:
    settings = kw.pop("settings", SETTINGS)
    return {o["kind"]: o for o in render.render(md, RolloutState(version), settings)}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def pod(md: ModelDeployment, **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = objects(md, **kw)["Deployment"]["spec"]["template"]["spec"]
    return spec


# --- which children ----------------------------------------------------------------------

BASE = ["ServiceAccount", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"]


@pytest.mark.parametrize(
    ("spec", "kinds"),
    [
        ({}, BASE),
        ({"autoscaling": {"maxReplicas": 3}}, [*BASE[:3], "HorizontalPodAutoscaler", *BASE[3:]]),
        ({"ingress": {"host": "iris.example.com"}}, [*BASE, "Ingress"]),
        ({"gateway": {"parentRefs": [{"name": "public"}]}}, [*BASE, "HTTPRoute"]),
    ],
)
def test_children_for_spec(spec: dict[str, Any], kinds: list[str]) -> None:
    out = render.render(make(**spec), RolloutState("3"), SETTINGS)
    assert [o["kind"] for o in out] == kinds


def test_desired_kinds_cover_everything_render_makes() -> None:
    md = make(autoscaling={"maxReplicas": 3}, ingress={"host": "a.example.com"})
    gw = make(gateway={"parentRefs": [{"name": "gw"}]}, rollout={"shadow": {"fraction": 0.5}})
    made = {
        (o["apiVersion"], o["kind"])
        for m in (md, gw)
        for o in render.render(m, RolloutState("3"), SETTINGS)
    }
    assert made == set(desired_kinds())
    assert len(desired_kinds()) == len(set(desired_kinds()))


def test_every_child_has_namespace_labels_and_owner() -> None:
    md = make(autoscaling={"maxReplicas": 3}, ingress={"host": "a.example.com"})
    for obj in render.render(md, RolloutState("3"), SETTINGS):
        meta = obj["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "modelship.io/v1alpha1",
                "kind": "ModelDeployment",
                "name": "iris",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert {
            "app.kubernetes.io/name": "modelship-runtime",
            "app.kubernetes.io/instance": "iris",
            "app.kubernetes.io/managed-by": "modelship",
            "modelship.io/deployment": "iris",
            "modelship.io/model": "iris-classifier",
        }.items() <= meta["labels"].items()
        assert meta["labels"]["app.kubernetes.io/component"] in {"predictor", "endpoint"}


def test_render_is_deterministic_and_pure() -> None:
    md = make(cache={"redisSecret": "r"}, auth={"apiKeySecret": "k"})
    before = md.model_dump()
    settings = OperatorSettings(default_tracking_uri="http://x")
    resources_before = copy.deepcopy(settings.default_resources)
    a = render.render(md, RolloutState("3"), settings)
    a[1]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "1Gi"
    b = render.render(md, RolloutState("3"), settings)
    assert b == render.render(md, RolloutState("3"), settings)
    assert md.model_dump() == before
    assert settings.default_resources == resources_before
    assert b[1]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "memory": "512Mi"
    }


# --- Deployment ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "replicas"),
    [
        ({}, 1),
        ({"replicas": 0}, 0),
        ({"replicas": 5}, 5),
        ({"replicas": 5, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}, None),
    ],
)
def test_deployment_replicas(spec: dict[str, Any], replicas: int | None) -> None:
    d = objects(make(**spec))["Deployment"]
    assert d["spec"].get("replicas") == replicas
    assert ("replicas" in d["spec"]) == (replicas is not None)


def test_deployment_names_labels_and_selector() -> None:
    d = objects(make(), version="7")["Deployment"]
    assert d["metadata"]["name"] == "iris-v7"
    assert d["metadata"]["labels"]["modelship.io/model-version"] == "7"
    selector = {"modelship.io/deployment": "iris", "modelship.io/model-version": "7"}
    assert d["spec"]["selector"] == {"matchLabels": selector}
    pod_labels = d["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert not any("track" in k or v in {"stable", "canary"} for k, v in pod_labels.items())
    assert d["spec"]["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }


def test_pod_containers_commands_and_probes() -> None:
    p = pod(make(model={"name": "Iris Classifier", "version": "3"}))
    (init,) = p["initContainers"]
    (main,) = p["containers"]
    assert init["command"] == [
        "modelship-runtime", "pull", "--model-uri", "models:/Iris Classifier/3", "--dest", "/models"
    ]
    assert main["command"] == [
        "modelship-runtime", "serve", "--model-dir", "/models", "--port", "8080"
    ]
    assert main["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                             {"name": "grpc", "containerPort": 8081, "protocol": "TCP"}]
    assert env_of(main)["MODELSHIP_GRPC_PORT"] == "8081"
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
    assert p["serviceAccountName"] == "iris"
    assert p["automountServiceAccountToken"] is False


def test_restricted_security_context_everywhere() -> None:
    p = pod(make(auth={"apiKeySecret": "k"}))
    assert p["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for c in p["initContainers"] + p["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == 10001
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize(
    ("spec", "settings", "image", "resources"),
    [
        ({}, SETTINGS, "ghcr.io/modelship/modelship-runtime:0.1.0", SETTINGS.default_resources),
        (
            {"runtime": {"image": "reg.example.com/rt:2", "resources": {"limits": {"cpu": 2}}}},
            SETTINGS,
            "reg.example.com/rt:2",
            {"limits": {"cpu": "2"}},
        ),
        (
            {},
            OperatorSettings(default_tracking_uri="http://x", runtime_image="rt:9"),
            "rt:9",
            {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        ),
    ],
)
def test_image_and_resources(
    spec: dict[str, Any], settings: OperatorSettings, image: str, resources: dict[str, Any]
) -> None:
    p = pod(make(**spec), settings=settings)
    for c in p["initContainers"] + p["containers"]:
        assert c["image"] == image
        assert c["resources"] == resources


@pytest.mark.parametrize(
    ("spec", "settings", "init_env", "main_env"),
    [
        (
            {},
            SETTINGS,
            {"MLFLOW_TRACKING_URI": "http://mlflow.mlflow:5000", "HOME": "/tmp"},
            {"MODELSHIP_MODEL_NAME": "iris-classifier", "MODELSHIP_MODEL_VERSION": "3"},
        ),
        (
            {"model": {"name": "m", "version": "3", "registry": {"trackingUri": "https://ml"}}},
            SETTINGS,
            {"MLFLOW_TRACKING_URI": "https://ml"},
            {"MODELSHIP_MODEL_NAME": "m"},
        ),
        (
            {"model": {"name": "m", "version": "3", "registry": {"credentialsSecret": "creds"}}},
            SETTINGS,
            {
                key: {"secretKeyRef": {"name": "creds", "key": key, "optional": True}}
                for key in dep.ENV_REGISTRY_CREDENTIALS
            },
            {},
        ),
        (
            {"cache": {"redisSecret": "redis", "ttlSeconds": 42}},
            SETTINGS,
            {},
            {
                "REDIS_URL": {"secretKeyRef": {"name": "redis", "key": "url"}},
                "MODELSHIP_CACHE_TTL_SECONDS": "42",
            },
        ),
        (
            {"auth": {"apiKeySecret": "keys"}},
            SETTINGS,
            {},
            {"MODELSHIP_API_KEYS_FILE": "/etc/modelship/auth"},  # the Secret, every key
        ),
        (
            {"runtime": {"env": [{"name": "A", "value": "1"}], "logging": {"level": "DEBUG"}}},
            SETTINGS,
            {"A": "1"},
            {"A": "1", "MODELSHIP_LOG_LEVEL": "DEBUG"},
        ),
    ],
)
def test_runtime_env(
    spec: dict[str, Any],
    settings: OperatorSettings,
    init_env: dict[str, Any],
    main_env: dict[str, Any],
) -> None:
    p = pod(make(**spec), settings=settings)
    assert init_env.items() <= env_of(p["initContainers"][0]).items()
    assert main_env.items() <= env_of(p["containers"][0]).items()


def test_registry_settings_stay_out_of_the_serving_container() -> None:
    md = make(model={"name": "m", "version": "3", "registry": {"credentialsSecret": "c"}})
    main = env_of(pod(md)["containers"][0])
    assert not any(k.startswith("MLFLOW_") for k in main)


def test_user_env_comes_last_and_never_replaces_the_operators() -> None:
    user = [{"name": "MODELSHIP_MODEL_VERSION", "value": "x"}, {"name": "Z", "value": "z"}]
    with pytest.raises(ValidationError, match="MODELSHIP_MODEL_VERSION is set by the operator"):
        make(runtime={"env": user})
    # Past the API (a spec built without validation), ours still wins.
    md = make()
    runtime = md.spec.runtime.model_copy(
        update={"env": [EnvVar.model_construct(name=e["name"], value=e["value"], value_from=None)
                        for e in user]})
    forced = md.model_copy(update={"spec": md.spec.model_copy(update={"runtime": runtime})})
    main = pod(forced)["containers"][0]
    names = [e["name"] for e in main["env"]]
    assert len(names) == len(set(names))
    assert names[-1] == "Z"
    assert env_of(main)["MODELSHIP_MODEL_VERSION"] == "3"


def test_empty_env_value_is_left_out_as_the_api_server_does() -> None:
    main = pod(make(runtime={"env": [{"name": "EMPTY", "value": ""}]}))["containers"][0]
    assert main["env"][-1] == {"name": "EMPTY"}


def test_auth_mounts_the_secret_read_only() -> None:
    p = pod(make(auth={"apiKeySecret": "iris-keys"}))
    assert {"name": "api-keys", "secret": {"secretName": "iris-keys"}} in p["volumes"]
    assert {"name": "api-keys", "mountPath": "/etc/modelship/auth", "readOnly": True} in p[
        "containers"
    ][0]["volumeMounts"]
    assert all(m["name"] != "api-keys" for m in p["initContainers"][0]["volumeMounts"])


# --- Service, HPA, PDB, NetworkPolicy, ServiceAccount -----------------------------------------


def test_service_selects_the_stable_version() -> None:
    svc = objects(make(), version="4")["Service"]
    assert svc["metadata"]["name"] == "iris"
    assert svc["spec"]["selector"] == {
        "modelship.io/deployment": "iris",
        "modelship.io/model-version": "4",
    }
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP",
         "appProtocol": "kubernetes.io/h2c"},
    ]


def test_grpc_port_0_renders_no_grpc_port_anywhere() -> None:
    settings = OperatorSettings(default_tracking_uri="x", runtime_grpc_port=0)
    children = objects(make(), settings=settings)
    (main,) = (c for c in children["Deployment"]["spec"]["template"]["spec"]["containers"]
               if c["name"] == "runtime")
    assert [p["name"] for p in main["ports"]] == ["http"]
    assert env_of(main)["MODELSHIP_GRPC_PORT"] == "0"  # the runtime serves no gRPC either
    assert [p["name"] for p in children["Service"]["spec"]["ports"]] == ["http"]
    assert {p["port"] for rule in children["NetworkPolicy"]["spec"]["ingress"]
            for p in rule["ports"]} == {8080}


def test_grpc_reflection_off_is_passed_to_the_runtime_and_on_renders_nothing() -> None:
    def runtime_env(settings: OperatorSettings) -> dict[str, str]:
        children = objects(make(), settings=settings)
        (main,) = (c for c in children["Deployment"]["spec"]["template"]["spec"]["containers"]
                   if c["name"] == "runtime")
        return env_of(main)

    off = OperatorSettings(default_tracking_uri="x", runtime_grpc_reflection=False)
    assert runtime_env(off)["MODELSHIP_GRPC_REFLECTION"] == "false"
    # on (the runtime's default) adds nothing: Deployments rendered before stay the same
    assert "MODELSHIP_GRPC_REFLECTION" not in runtime_env(
        OperatorSettings(default_tracking_uri="x"))


def test_grpc_port_must_differ_from_the_http_port() -> None:
    with pytest.raises(ValueError, match="runtime_grpc_port 8080 is runtime_port"):
        OperatorSettings(default_tracking_uri="x", runtime_grpc_port=8080)


@pytest.mark.parametrize(
    ("autoscaling", "expected_metrics"),
    [
        ({"maxReplicas": 4}, [("cpu", 80)]),
        ({"maxReplicas": 4, "targetCPUUtilization": 60}, [("cpu", 60)]),
        (
            {"maxReplicas": 4, "targetCPUUtilization": 70, "targetMemoryUtilization": 80},
            [("cpu", 70), ("memory", 80)],
        ),
        # null is pruned as the API server does: the default applies.
        ({"maxReplicas": 4, "targetCPUUtilization": None}, [("cpu", 80)]),
    ],
)
def test_hpa(autoscaling: dict[str, Any], expected_metrics: list[tuple[str, int]] | None) -> None:
    h = objects(make(autoscaling={"minReplicas": 2, **autoscaling}))["HorizontalPodAutoscaler"]
    assert h["metadata"]["name"] == "iris-v3"
    assert h["metadata"]["labels"]["modelship.io/model-version"] == "3"
    assert h["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "iris-v3"
    }
    assert (h["spec"]["minReplicas"], h["spec"]["maxReplicas"]) == (2, 4)
    metrics = [
        (m["resource"]["name"], m["resource"]["target"]["averageUtilization"])
        for m in h["spec"].get("metrics", [])
    ]
    assert metrics == (expected_metrics or [])
    assert ("metrics" in h["spec"]) == (expected_metrics is not None)


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (None, {"maxUnavailable": 1}),
        ({}, {"maxUnavailable": 1}),
        ({"minAvailable": 1}, {"minAvailable": 1}),
        ({"minAvailable": "50%"}, {"minAvailable": "50%"}),
        ({"maxUnavailable": 2}, {"maxUnavailable": 2}),
        ({"maxUnavailable": "25%"}, {"maxUnavailable": "25%"}),
    ],
)
def test_pdb(budget: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    spec: dict[str, Any] = {} if budget is None else {"disruptionBudget": budget}
    p = objects(make(**spec))["PodDisruptionBudget"]
    selector = {"matchLabels": {"modelship.io/deployment": "iris"}}
    assert p["spec"] == {**expected, "selector": selector}


def test_networkpolicy_selects_every_version_and_both_directions() -> None:
    np = objects(make(), settings=OperatorSettings(default_tracking_uri="http://m:5000",
                                                   runtime_port=9000))["NetworkPolicy"]
    assert np["spec"]["podSelector"] == {"matchLabels": {"modelship.io/deployment": "iris"}}
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]} == {9000, 8081}
    egress = [p for rule in np["spec"]["egress"] for p in rule["ports"]]
    assert {"protocol": "UDP", "port": 53} in egress
    assert {"protocol": "TCP"} not in egress  # no port left open to every TCP port


def test_serviceaccount() -> None:
    sa = objects(make())["ServiceAccount"]
    assert sa["metadata"]["name"] == "iris"
    assert sa["automountServiceAccountToken"] is False


# --- Ingress and HTTPRoute ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ingress", "class_name", "tls", "annotations"),
    [
        ({"host": "iris.example.com"}, None, None, None),
        (
            {"host": "iris.example.com", "className": "nginx", "tlsSecret": "iris-tls",
             "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "8m"}},
            "nginx",
            [{"hosts": ["iris.example.com"], "secretName": "iris-tls"}],
            {"nginx.ingress.kubernetes.io/proxy-body-size": "8m"},
        ),
    ],
)
def test_ingress(
    ingress: dict[str, Any],
    class_name: str | None,
    tls: list[dict[str, Any]] | None,
    annotations: dict[str, str] | None,
) -> None:
    ing = objects(make(ingress={**ingress, "path": "/iris"}))["Ingress"]
    assert ing["metadata"]["name"] == "iris"
    assert ing["metadata"].get("annotations") == annotations
    assert ing["spec"].get("ingressClassName") == class_name
    assert ing["spec"].get("tls") == tls
    assert ing["spec"]["rules"] == [
        {
            "host": "iris.example.com",
            "http": {
                "paths": [
                    {
                        "path": "/iris",
                        "pathType": "Prefix",
                        "backend": {"service": {"name": "iris", "port": {"number": 80}}},
                    }
                ]
            },
        }
    ]


def test_httproute() -> None:
    gateway = {
        "parentRefs": [{"name": "public", "namespace": "gateway", "sectionName": "https"}],
        "hostnames": ["iris.example.com"],
        "path": "/v1",
    }
    route = objects(make(gateway=gateway))["HTTPRoute"]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"]["name"] == "iris"
    assert route["spec"] == {
        "parentRefs": [
            {
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "name": "public",
                "namespace": "gateway",
                "sectionName": "https",
            }
        ],
        "hostnames": ["iris.example.com"],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                "backendRefs": [{"name": "iris", "port": 80}],
            }
        ],
    }


# --- names of long and odd inputs -----------------------------------------------------------


def test_longest_name_and_odd_model_name_give_valid_names_and_labels() -> None:
    name = "a" * naming.MAX_MD_NAME
    md = make(name=name, model={"name": "Team / Iris Classifier ✓", "version": "9" * 20},
              autoscaling={"maxReplicas": 2}, ingress={"host": "x.example.com"})
    out = render.render(md, RolloutState("9" * 20), SETTINGS)
    for obj in out:
        assert naming.is_dns_label(obj["metadata"]["name"])
        assert obj["metadata"]["ownerReferences"][0]["name"] == name
        for value in obj["metadata"]["labels"].values():
            assert naming.is_label_value(value)
    by_kind = {o["kind"]: o for o in out}
    deployment = by_kind["Deployment"]["metadata"]["name"]
    assert deployment == f"{name}-{naming.version_tag('9' * 20)}"
    assert deployment.startswith(f"{name}-h") and len(deployment) == naming.MAX_DEPLOYMENT_NAME
    assert by_kind["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment
    assert by_kind["Service"]["spec"]["selector"].items() <= by_kind["Deployment"]["spec"][
        "template"
    ]["metadata"]["labels"].items()
    assert by_kind["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"][
        "name"
    ] == by_kind["Service"]["metadata"]["name"] == name


def test_a_name_whose_children_could_collide_is_refused_before_render() -> None:
    with pytest.raises(ValidationError, match=r"'iris--canary' is not a valid"):
        make(name="iris--canary")
    with pytest.raises(ValidationError, match=r"at most 36 characters"):
        make(name="a" * 37)


def _hash_twins() -> tuple[str, str]:
    """Two versions whose hashed tags meet (a birthday search over 32 bits)."""
    seen: dict[str, str] = {}
    for i in range(2_000_000):
        version = f"x-{i}"
        tag = naming.version_tag(version)
        if tag in seen:
            return seen[tag], version
        seen[tag] = version
    raise AssertionError("no two versions with the same hashed tag")


def test_two_versions_that_would_share_a_deployment_are_refused() -> None:
    stable, canary = _hash_twins()
    md = make(ingress={"host": "x.example.com"})
    with pytest.raises(RenderError, match="map to the same Deployment") as info:
        render.render(md, RolloutState(stable, canary, 10), SETTINGS)
    assert info.value.field == "spec.model.version"
    assert stable in str(info.value) and canary in str(info.value)


# --- specs the schema lets through but the operator cannot honour --------------------------


@pytest.mark.parametrize(
    ("spec", "settings", "field"),
    [
        ({}, OperatorSettings(), "spec.model.registry.trackingUri"),
        ({}, OperatorSettings(default_tracking_uri=""), "spec.model.registry.trackingUri"),
        (
            {"model": {"name": "m", "version": "1", "registry": {"credentialsSecret": "Bad_Name"}}},
            SETTINGS,
            "spec.model.registry.credentialsSecret",
        ),
        ({"cache": {"redisSecret": "no spaces"}}, SETTINGS, "spec.cache.redisSecret"),
        ({"auth": {"apiKeySecret": "UPPER"}}, SETTINGS, "spec.auth.apiKeySecret"),
        ({"ingress": {"host": "a.b", "tlsSecret": "x_y"}}, SETTINGS, "spec.ingress.tlsSecret"),
        ({"ingress": {"host": "a.b", "className": "A"}}, SETTINGS, "spec.ingress.className"),
        ({"ingress": {"host": "a.b", "path": "/a//b"}}, SETTINGS, "spec.ingress.path"),
        (
            {"ingress": {"host": "a.b", "annotations": {"bad key": "v"}}},
            SETTINGS,
            "spec.ingress.annotations['bad key']",
        ),
        (
            {"gateway": {"parentRefs": [{"name": "gw"}], "hostnames": ["ok.example", "Bad:80"]}},
            SETTINGS,
            "spec.gateway.hostnames[1]",
        ),
        (
            {"gateway": {"parentRefs": [{"name": "gw", "namespace": "Not.Valid"}]}},
            SETTINGS,
            "spec.gateway.parentRefs[0].namespace",
        ),
        (
            {"gateway": {"parentRefs": [{"name": "gw", "sectionName": "HTTPS"}]}},
            SETTINGS,
            "spec.gateway.parentRefs[0].sectionName",
        ),
    ],
)
def test_render_error_names_the_field(
    spec: dict[str, Any], settings: OperatorSettings, field: str
) -> None:
    """Refused before anything is applied, with the field's path: by the API models when
    they check it, otherwise by render."""
    try:
        md = make(**spec)
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        assert wire_path(loc) == field
        return
    with pytest.raises(RenderError) as info:
        render.render(md, RolloutState("3"), settings)
    assert info.value.field == field
    assert str(info.value)
    assert isinstance(info.value, ValueError)


def wire_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.startswith("function-"):
            path += f".{part}" if path else part
    return path


def test_render_error_without_a_version() -> None:
    with pytest.raises(RenderError) as info:
        render.render(make(), RolloutState(""), SETTINGS)
    assert info.value.field == "spec.model.version"


def test_rollout_state_defaults_to_no_canary() -> None:
    state = RolloutState("3")
    assert (state.canary_version, state.canary_weight) == (None, 0)
    with pytest.raises(AttributeError):
        state.stable_version = "4"  # type: ignore[misc]


def test_public_surface() -> None:
    assert set(render.__all__) == {
        "RenderError", "Retiring", "RolloutState", "desired_kinds", "owner_reference", "render"
    }


def test_no_two_places_share_a_mutable_part() -> None:
    """Shared dicts would leak edits between containers and turn into YAML anchors."""
    md = make(cache={"redisSecret": "r"}, runtime={"env": [{"name": "A", "value": "1"}]})
    seen: dict[int, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict | list):
            assert id(node) not in seen, node
            seen[id(node)] = node
            for child in node.values() if isinstance(node, dict) else node:
                walk(child)

    walk(render.render(md, RolloutState("3"), SETTINGS))


# --- quantities as the API server echoes them (so a resync compares equal) -------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("250m", "250m"), ("1000m", "1"), (1, "1"), ("0.5", "500m"), ("1.5", "1500m"),
        (".5", "500m"), ("0.1m", "100u"), ("1.0000000001", "1000000001n"), ("2000", "2k"),
        ("1000k", "1M"), ("0", "0"), ("0Mi", "0"), ("256Mi", "256Mi"), ("1024Mi", "1Gi"),
        ("1.5Gi", "1536Mi"), ("0.5Ki", "512"), ("1023Ki", "1023Ki"), ("1e3", "1e3"),
        ("1E3", "1e3"), ("12e6", "12e6"), ("1.5e3", "1500"), ("+1", "1"), ("-1", "-1"),
    ],
)
def test_canonical_quantity(given: int | str, canonical: str) -> None:
    assert canonical_quantity(given) == canonical


def test_resources_are_rendered_canonical() -> None:
    md = make(runtime={"resources": {"requests": {"cpu": "0.25", "memory": "1024Mi"},
                                     "limits": {"cpu": 1}}})
    (main,) = pod(md)["containers"]
    assert main["resources"] == {"requests": {"cpu": "250m", "memory": "1Gi"},
                                 "limits": {"cpu": "1"}}


def test_shadow_via_runtime_mounts_a_config_the_stable_reads_without_a_restart() -> None:
    """The ConfigMap NAME--shadow turns mirroring on and off; the pod template is the same
    in and out of the shadow phase, so no pod restarts when it starts or ends."""
    import json

    md = make(rollout={"shadow": {"fraction": 0.25}})
    quiet = render.render(md, RolloutState("3", canary_version="4"), SETTINGS)
    shadowing = render.render(md, RolloutState("3", canary_version="4", mirror=True), SETTINGS)

    def by(out: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
        return next(o for o in out if o["kind"] == kind and o["metadata"]["name"] == name)

    for dep_name in ("iris-v3", "iris-v4"):
        assert by(quiet, "Deployment", dep_name) == by(shadowing, "Deployment", dep_name)
        pod = by(shadowing, "Deployment", dep_name)["spec"]["template"]["spec"]
        assert {"name": "shadow", "configMap": {"name": "iris--shadow", "optional": True}} in (
            pod["volumes"])
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["MODELSHIP_SHADOW_CONFIG_FILE"] == "/etc/modelship/shadow/shadow.json"
        # Stable and canary read the same shadow token, from the Secret the operator makes.
        (token,) = [e for e in pod["containers"][0]["env"]
                    if e["name"] == "MODELSHIP_SHADOW_TOKEN"]
        assert token["valueFrom"] == {"secretKeyRef": {"name": "iris--shadow-token",
                                                       "key": "token"}}
    assert json.loads(by(quiet, "ConfigMap", "iris--shadow")["data"]["shadow.json"]) == {}
    config = json.loads(by(shadowing, "ConfigMap", "iris--shadow")["data"]["shadow.json"])
    assert config == {"mirrorFrom": "3", "mirrorTo": "4", "fraction": 0.25,
                      "url": "http://iris--canary.ml.svc:80"}
    # Without a shadow phase in the spec: no ConfigMap, no mount.
    plain = render.render(make(), RolloutState("3", canary_version="4", mirror=True), SETTINGS)
    assert not [o for o in plain if o["kind"] == "ConfigMap"]
    assert "MODELSHIP_SHADOW_TOKEN" not in str(plain)

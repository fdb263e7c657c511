"""What a ModelDeployment's author may not do, and what the operator renders to hold them to it.

Each refusal and each rendered bound has a case here: the variables the operator owns,
registry trust (the tracking host allowlist, credentials out of URIs), the NetworkPolicy's
shape, the emptyDir sizeLimit, runtime tuning fields and the ingress rate limits.
"""

from __future__ import annotations

from typing import Any

import pytest
from modelship_operator import render, trust
from modelship_operator.api import ModelDeployment, operator_env_problem
from modelship_operator.reconcilers import RenderError
from modelship_operator.reconcilers import deployment as dep
from modelship_operator.render import RolloutState
from modelship_operator.settings import OperatorSettings
from modelship_runtime.settings import RuntimeSettings
from pydantic import AliasChoices, ValidationError

SETTINGS = OperatorSettings(default_tracking_uri="http://mlflow.mlflow:5000",
                            namespace="modelship-system")


def make(name: str = "iris", **spec: Any) -> ModelDeployment:
    body: dict[str, Any] = {"model": {"name": "iris-classifier", "version": "3"}, **spec}
    return ModelDeployment.model_validate({
        "apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ml", "uid": "u-1"}, "spec": body,
    })


def children(md: ModelDeployment, settings: OperatorSettings = SETTINGS,
             state: RolloutState | None = None) -> list[dict[str, Any]]:
    return render.render(md, state or RolloutState("3"), settings)


def kind(objs: list[dict[str, Any]], k: str, name: str | None = None) -> dict[str, Any]:
    (obj,) = [o for o in objs if o["kind"] == k and name in (None, o["metadata"]["name"])]
    return obj


def runtime_env(md: ModelDeployment, settings: OperatorSettings = SETTINGS) -> dict[str, str]:
    pod = kind(children(md, settings), "Deployment")["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    return {e["name"]: e.get("value", "") for e in main["env"]}


# --- the variables the operator owns ------------------------------------------------------


@pytest.mark.parametrize("name", [
    "MODELSHIP_API_KEYS_FILE", "MODELSHIP_ALLOW_PICKLE", "modelship_allow_pickle",
    "MODELSHIP_REDIS_URL", "REDIS_URL", "redis_url", "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_REGISTRY_URI", "HOME", "MODELSHIP_SHADOW_TOKEN", "MODELSHIP_MAX_ROWS",
])
def test_operator_variables_are_refused_naming_them(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make(runtime={"env": [{"name": name, "value": "x"}]})
    assert f"spec.runtime.env: {name} is set by the operator" in str(caught.value)


@pytest.mark.parametrize("name", [
    "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "XMODELSHIP_A", "REDIS_URL_2", "OMP_NUM_THREADS",
])
def test_other_variables_pass(name: str) -> None:
    assert runtime_env(make(runtime={"env": [{"name": name, "value": "1"}]}))[name] == "1"


def _runtime_env_names() -> set[str]:
    """Every variable name the runtime's settings read (prefix + field, and aliases)."""
    prefix = RuntimeSettings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for field_name, field in RuntimeSettings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {str(a) for a in alias.choices}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def test_every_variable_the_runtime_reads_is_the_operators() -> None:
    names = _runtime_env_names()
    assert {"REDIS_URL", "MODELSHIP_REDIS_URL", "MODELSHIP_API_KEYS_FILE"} <= names
    # pydantic-settings matches names in any case: so must the rule.
    free = [n for n in names for v in (n, n.lower()) if operator_env_problem(v) is None]
    assert free == []


def test_every_variable_the_operator_renders_is_refused_in_the_spec() -> None:
    md = make(runtime={"limits": {"maxRows": 5}, "logging": {"level": "INFO"}},
              model={"name": "m", "version": "3",
                     "registry": {"credentialsSecret": "creds"}},
              cache={"redisSecret": "r"}, auth={"apiKeySecret": "k"},
              rollout={"shadow": {"fraction": 0.5}})
    pod = kind(children(md), "Deployment")["spec"]["template"]["spec"]
    names = {e["name"] for c in [*pod["initContainers"], *pod["containers"]] for e in c["env"]}
    assert len(names) >= 12
    assert [n for n in names if operator_env_problem(n) is None] == []


def test_tuning_fields_render_only_what_is_set() -> None:
    assert not {k for k in runtime_env(make()) if k.startswith(("MODELSHIP_MAX",
                                                                   "MODELSHIP_RATE",
                                                                   "MODELSHIP_LOG"))}
    env = runtime_env(make(runtime={
        "limits": {"maxConcurrency": 8, "maxConnections": 100, "maxBodyBytes": 65536,
                   "maxRows": 100, "maxColumns": 10, "maxHeaderBytes": 8192,
                   "headerTimeoutSeconds": 5, "keepAliveTimeoutSeconds": 2.5},
        "microbatch": {"enabled": False, "maxSize": 16, "maxWaitMs": 1.5},
        "logging": {"level": "WARNING", "json": False, "accessLog": True},
        "rateLimit": {"requests": 600},
        "trustedTypes": ["mypkg.features.Clipper", "xgboost.sklearn.XGBClassifier"],
    }))
    assert {k: v for k, v in env.items() if k not in runtime_env(make())} == {
        "MODELSHIP_MAX_CONCURRENCY": "8", "MODELSHIP_MAX_CONNECTIONS": "100",
        "MODELSHIP_MAX_BODY_BYTES": "65536", "MODELSHIP_MAX_ROWS": "100",
        "MODELSHIP_MAX_COLUMNS": "10", "MODELSHIP_MAX_HEADER_BYTES": "8192",
        "MODELSHIP_HEADER_TIMEOUT_SECONDS": "5", "MODELSHIP_KEEPALIVE_TIMEOUT_SECONDS": "2.5",
        "MODELSHIP_MICROBATCH": "false", "MODELSHIP_MICROBATCH_MAX_SIZE": "16",
        "MODELSHIP_MICROBATCH_MAX_WAIT_MS": "1.5", "MODELSHIP_LOG_LEVEL": "WARNING",
        "MODELSHIP_LOG_JSON": "false", "MODELSHIP_ACCESS_LOG": "true",
        "MODELSHIP_RATE_LIMIT_REQUESTS": "600", "MODELSHIP_RATE_LIMIT_PERIOD_SECONDS": "60",
        "MODELSHIP_MAX_BATCH_SIZE": "100",
        "MODELSHIP_TRUSTED_TYPES": "mypkg.features.Clipper,xgboost.sklearn.XGBClassifier",
    }
    partial = runtime_env(make(runtime={"limits": {"maxRows": 7}}))
    assert [k for k in partial if k.startswith("MODELSHIP_MAX")] == [
        "MODELSHIP_MAX_ROWS", "MODELSHIP_MAX_BATCH_SIZE"]


def test_the_runtime_reads_the_tuning_it_already_knows() -> None:
    """The fields that name settings the runtime has today reach it with their values."""
    env = runtime_env(make(runtime={"microbatch": {"enabled": False, "maxSize": 16,
                                                   "maxWaitMs": 1.5},
                                    "logging": {"level": "WARNING", "json": False},
                                    "limits": {"maxRows": 7, "maxBodyBytes": 2048},
                                    "rateLimit": {"requests": 9, "periodSeconds": 30},
                                    "trustedTypes": ["a.B", "c.d.E"]}))
    ours = {k: v for k, v in env.items() if k.startswith("MODELSHIP_")}
    read = RuntimeSettings.model_validate({k.removeprefix("MODELSHIP_").lower(): v
                                           for k, v in ours.items()
                                           if k.removeprefix("MODELSHIP_").lower()
                                           in RuntimeSettings.model_fields})
    assert (read.microbatch, read.microbatch_max_size, read.microbatch_max_wait_ms) == (
        False, 16, 1.5)
    assert (read.log_level, read.log_json) == ("WARNING", False)
    assert (read.max_batch_size, read.max_body_bytes) == (7, 2048)
    assert (read.rate_limit_requests, read.rate_limit_period_seconds) == (9, 30)
    assert read.trusted_types == ["a.B", "c.d.E"]


@pytest.mark.parametrize(("spec", "setting", "expected"), [
    (None, None, None),
    (None, False, "false"),
    (False, None, "false"),
    (False, True, "false"),
    (True, None, "true"),
    (True, True, "true"),
    (None, True, "true"),
])
def test_allow_pickle(spec: bool | None, setting: bool | None, expected: str | None) -> None:
    runtime = {} if spec is None else {"allowPickle": spec}
    settings = SETTINGS.model_copy(update={"runtime_allow_pickle": setting})
    assert runtime_env(make(runtime=runtime), settings).get("MODELSHIP_ALLOW_PICKLE") == expected


def test_allow_pickle_is_refused_where_the_operator_forbids_it() -> None:
    settings = SETTINGS.model_copy(update={"runtime_allow_pickle": False})
    with pytest.raises(RenderError, match="refuses pickled models") as caught:
        children(make(runtime={"allowPickle": True}), settings)
    assert caught.value.field == "spec.runtime.allowPickle"


# --- storage ------------------------------------------------------------------------------


@pytest.mark.parametrize(("runtime", "setting", "expected"), [
    ({}, "2Gi", "2Gi"),
    ({}, "500Mi", "500Mi"),
    ({"modelStorage": {"sizeLimit": "1.5Gi"}}, "2Gi", "1536Mi"),
    ({"modelStorage": {}}, "3G", "3G"),
])
def test_every_emptydir_has_a_size_limit(runtime: dict[str, Any], setting: str,
                                         expected: str) -> None:
    settings = SETTINGS.model_copy(update={"runtime_model_storage_limit": setting})
    pod = kind(children(make(runtime=runtime), settings), "Deployment")["spec"]["template"][
        "spec"]
    dirs = [v for v in pod["volumes"] if "emptyDir" in v]
    assert {v["name"] for v in dirs} == {"models", "tmp"}
    assert [v["emptyDir"] for v in dirs] == [{"sizeLimit": expected}] * 2


# --- registry trust -----------------------------------------------------------------------


@pytest.mark.parametrize(("uri", "allowed", "ok"), [
    ("http://mlflow.mlflow:5000", [], True),  # the default's host
    ("https://MLFLOW.mlflow/prefix", [], True),
    ("http://attacker.example.com", [], False),
    ("http://mlflow.mlflow.attacker.example.com", [], False),
    ("http://attacker.example.com#@mlflow.mlflow", [], False),
    ("http://attacker.example.com\\@mlflow.mlflow", [], False),  # parsers disagree
    ("ftp://mlflow.mlflow", [], False),
    ("http://mlflow.team-a.svc", ["*.team-a.svc"], True),
    ("http://mlflow.team-b.svc", ["*.team-a.svc"], False),
    ("http://mlflow.mlflow:5000", ["*.team-a.svc"], False),  # a list replaces the default
    ("http://anything.example", ["*"], True),
    (" http://mlflow.mlflow:5000", [], False),  # parsers strip what the check must see
    ("http://mlflow.mlflow:5000\n", [], False),
    ("ht\ttp://mlflow.mlflow:5000", [], False),
])
def test_tracking_host_allowlist(uri: str, allowed: list[str], ok: bool) -> None:
    settings = SETTINGS.model_copy(update={"allowed_tracking_hosts": allowed})
    problem = trust.host_problem(uri, trust.allowed_hosts(settings))
    assert (problem is None) == ok, problem
    if not ok:
        assert problem is not None and problem.startswith("spec.model.registry.trackingUri")


@pytest.mark.parametrize("uri", [
    " http://ml:s3cret-pw@mlflow.mlflow:5000", "\thttp://ml:s3cret-pw@mlflow.mlflow:5000",
    "ht\ttp://ml:s3cret-pw@mlflow.mlflow:5000", "http://mlflow.mlflow:5000/\x01",
])
def test_tracking_uris_with_spaces_or_control_characters_are_refused(uri: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make(model={"name": "m", "version": "1", "registry": {"trackingUri": uri}})
    errors = caught.value.errors(include_input=False)
    assert "printable ASCII only" in errors[0]["msg"]
    assert "s3cret" not in str(errors)


def test_without_a_default_or_a_list_no_host_is_trusted() -> None:
    settings = OperatorSettings()
    problem = trust.host_problem("http://mlflow.mlflow:5000", trust.allowed_hosts(settings))
    assert problem is not None and "the operator has no default tracking URI" in problem


def test_allowed_hosts_setting_reads_a_list_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELSHIP_OPERATOR_ALLOWED_TRACKING_HOSTS", "a.example, *.b.svc")
    assert OperatorSettings().allowed_tracking_hosts == ["a.example", "*.b.svc"]


@pytest.mark.parametrize("uri", [
    "http://ml:s3cret-pw@mlflow.mlflow:5000", "https://token@mlflow.example.com/x",
])
def test_credentials_in_a_tracking_uri_are_refused_without_echoing_them(uri: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make(model={"name": "m", "version": "1", "registry": {"trackingUri": uri}})
    errors = caught.value.errors(include_input=False)
    assert "no user or password in the URI" in errors[0]["msg"]
    assert "s3cret" not in str(errors) and "token@" not in str(errors)
    with pytest.raises(ValidationError, match="no user or password"):
        OperatorSettings(default_tracking_uri=uri)


def test_redact_removes_user_information_from_any_text() -> None:
    text = "MLflow at http://ml:s3cret@mlflow:5000/x unreachable (https://t0k@h); http://h/a@b"
    assert trust.redact(text) == (
        "MLflow at http://***@mlflow:5000/x unreachable (https://***@h); http://h/a@b")


# --- the NetworkPolicy --------------------------------------------------------------------


def _policy(md: ModelDeployment, **settings: Any) -> dict[str, Any]:
    spec: dict[str, Any] = kind(children(md, SETTINGS.model_copy(update=settings)),
                                "NetworkPolicy")["spec"]
    return spec


OWN = {"podSelector": {"matchLabels": {"modelship.io/deployment": "iris"}}}
PORT = [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 8081}]  # HTTP, gRPC


def test_networkpolicy_admits_named_sources_only() -> None:
    spec = _policy(make())
    assert spec["ingress"] == [
        {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
                  for ns in ("ingress-nginx", "monitoring", "modelship-system")],
         "ports": PORT},
        {"from": [OWN], "ports": PORT},  # the stable's pods mirror to NAME--canary's
    ]
    allow = {"allowFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}},
         "podSelector": {"matchLabels": {"app": "web"}}},
        {"podSelector": {}},
    ]}
    spec = _policy(make(networkPolicy=allow), network_policy_namespaces=["gw"])
    assert spec["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": n}}}
        for n in ("gw", "modelship-system")]
    assert spec["ingress"][2] == {"from": allow["allowFrom"], "ports": PORT}
    assert all(rule.get("from") for rule in spec["ingress"])  # no rule admits everyone


@pytest.mark.parametrize(("md_spec", "settings", "ports"), [
    ({}, {}, [5000]),
    ({"model": {"name": "m", "version": "1", "registry": {"trackingUri": "https://ml.x"}}},
     {}, [443]),
    ({"model": {"name": "m", "version": "1", "registry": {"trackingUri": "http://ml.x/p"}}},
     {}, [80]),
    ({"cache": {"redisSecret": "r"}}, {}, [5000, 6379]),
    ({"cache": {"redisSecret": "r"}}, {"network_policy_redis_ports": [6380],
                                      "network_policy_egress_ports": [9000, 443]},
     [443, 5000, 6380, 9000]),
])
def test_networkpolicy_egress_is_dns_mirror_registry_and_redis(
    md_spec: dict[str, Any], settings: dict[str, Any], ports: list[int]
) -> None:
    spec = _policy(make(**md_spec), **settings)
    assert spec["egress"] == [
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"to": [OWN], "ports": PORT},
        {"ports": [{"protocol": "TCP", "port": p} for p in ports]},
    ]


def test_networkpolicy_ports_are_the_deployments_container_ports() -> None:
    from modelship_operator.reconcilers import networkpolicy

    objs = children(make(), SETTINGS.model_copy(update={"runtime_port": 9100}))
    ports = networkpolicy.serving_ports(kind(objs, "Deployment"))
    assert ports == [{"protocol": "TCP", "port": 9100}, {"protocol": "TCP", "port": 8081}]
    spec = kind(objs, "NetworkPolicy")["spec"]
    assert all(rule["ports"] == ports for rule in spec["ingress"])
    deployment = kind(objs, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"].append(
        {"name": "other", "containerPort": 9101, "protocol": "TCP"})
    assert networkpolicy.serving_ports(deployment)[-1] == {"protocol": "TCP", "port": 9101}


def test_networkpolicy_egress_cidrs_narrow_the_outward_rule() -> None:
    spec = _policy(make(), network_policy_egress_cidrs=["10.0.0.0/8", "192.168.1.0/24"])
    assert spec["egress"][2] == {
        "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}, {"ipBlock": {"cidr": "192.168.1.0/24"}}],
        "ports": [{"protocol": "TCP", "port": 5000}]}
    with pytest.raises(ValidationError, match="does not appear to be an IPv4 or IPv6 network"):
        OperatorSettings(network_policy_egress_cidrs=["mlflow.example.com"])


def test_networkpolicy_label_keys_are_checked() -> None:
    md = make(networkPolicy={"allowFrom": [{"podSelector": {"matchLabels": {"bad key": "x"}}}]})
    with pytest.raises(RenderError) as caught:
        children(md)
    assert caught.value.field.startswith("spec.networkPolicy.allowFrom[0].podSelector.matchLabels")


# --- ingress rate limits ------------------------------------------------------------------


def test_rate_limits_are_on_the_main_and_the_canary_ingress() -> None:
    md = make(ingress={"host": "iris.example.com",
                       "annotations": {"nginx.ingress.kubernetes.io/limit-rps": "999"},
                       "rateLimit": {"requestsPerSecond": 20, "connections": 5}})
    objs = children(md, state=RolloutState("3", canary_version="4", canary_weight=10))
    for name in ("iris", "iris--canary"):
        notes = kind(objs, "Ingress", name)["metadata"]["annotations"]
        assert notes["nginx.ingress.kubernetes.io/limit-rps"] == "20"
        assert notes["nginx.ingress.kubernetes.io/limit-connections"] == "5"
    assert kind(objs, "Ingress", "iris--canary")["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/canary-weight"] == "10"


def test_no_rate_limit_annotations_by_default() -> None:
    notes = kind(children(make(ingress={"host": "iris.example.com",
                                        "rateLimit": {"connections": 3}})),
                 "Ingress")["metadata"]["annotations"]
    assert notes == {"nginx.ingress.kubernetes.io/limit-connections": "3"}
    plain = kind(children(make(ingress={"host": "iris.example.com"})), "Ingress")
    assert "annotations" not in plain["metadata"]


def test_deployment_module_lists_every_limit_variable() -> None:
    assert set(dep.ENV_LIMITS.values()) == {
        "MODELSHIP_MAX_CONCURRENCY", "MODELSHIP_MAX_CONNECTIONS", "MODELSHIP_MAX_BODY_BYTES",
        "MODELSHIP_MAX_ROWS", "MODELSHIP_MAX_COLUMNS", "MODELSHIP_MAX_HEADER_BYTES",
        "MODELSHIP_HEADER_TIMEOUT_SECONDS", "MODELSHIP_KEEPALIVE_TIMEOUT_SECONDS"}


# --- the kubelet's $(NAME) expansion ------------------------------------------------------


def test_author_text_reaches_the_pod_literally_not_expanded_by_the_kubelet() -> None:
    """The kubelet expands ``$(NAME)`` in command, args and env values; a model name of
    ``$(MLFLOW_TRACKING_TOKEN)`` would otherwise put the registry token in the pull's
    "not found" message. ``$$`` is the kubelet's escape for ``$``."""
    md = make(model={"name": "$(MLFLOW_TRACKING_TOKEN)", "version": "3",
                     "registry": {"trackingUri": "http://mlflow.mlflow:5000/$(HOME)",
                                  "credentialsSecret": "mlflow-creds"}})
    pod = kind(children(md), "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (main,) = pod["containers"]
    assert "models:/$$(MLFLOW_TRACKING_TOKEN)/3" in init["command"]
    for container in (init, main):
        values = [e["value"] for e in container["env"] if "value" in e]
        texts = values + container["command"]
        for text in texts:
            unescaped = text.replace("$$", "")
            assert "$(" not in unescaped, (container["name"], text)
    assert runtime_env(md)["MODELSHIP_MODEL_NAME"] == "$$(MLFLOW_TRACKING_TOKEN)"

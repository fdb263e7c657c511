"""Every rendered object is one the API server would take: kubernetes-validate --strict
against the real Kubernetes 1.29 and 1.37 OpenAPI schemas, for every example manifest,
a table of hand-picked variants and hypothesis-generated ones.

kubernetes-validate has no schema for CRD kinds: for an HTTPRoute it raises
SchemaNotFoundError (its CLI only warns). So an HTTPRoute is checked here in three
parts: its metadata against Kubernetes' own ObjectMeta schema from the same strict
schema files; the whole object against the real Gateway API v1.1.0 HTTPRoute CRD
(gateway-api/, unmodified upstream) as the API server would admit it, with crdcheck
(structural schema, unknown fields refused, every CEL rule by cel-python); and its spec
against a pydantic transcription of that CRD's constraints on the fields we render
(patterns, lengths, enums, the CEL rules on PathPrefix values), which also refuses any
field we never meant to render. The schemas do not check name formats
either (an object name is a plain string in OpenAPI), so names, label keys and values
and annotation keys are checked as the API server would.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from crdcheck import CRDChecker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modelship_operator import naming
from modelship_operator.api import ModelDeployment
from modelship_operator.render import RenderError, RolloutState, render
from modelship_operator.settings import OperatorSettings
from pydantic import BaseModel, ConfigDict, Field, model_validator
from referencing import Registry, Resource

K8S_VERSIONS = ["1.29", "1.37"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = OperatorSettings(default_tracking_uri="http://mlflow.mlflow:5000")


@pytest.fixture(scope="module", autouse=True)
def _cached_schemas() -> Iterator[None]:
    """Parse each schema file once (kubernetes-validate re-reads 2 MB per call)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            kubernetes_validate.utils,
            "schema_contents",
            functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents),
        )
        # Built here, not inside a hypothesis example: cel-python raises the recursion
        # limit when it sets up, which hypothesis reports as an error.
        httproute_crd()
        yield


# --- HTTPRoute: the Gateway API CRD's rules for what we render ------------------------------

_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_GROUP = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_KIND = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _ParentRef(_Strict):
    group: Annotated[str, Field(max_length=253, pattern=_GROUP)] = "gateway.networking.k8s.io"
    kind: Annotated[str, Field(min_length=1, max_length=63, pattern=_KIND)] = "Gateway"
    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: Annotated[str, Field(min_length=1, max_length=63, pattern=_DNS_LABEL)] | None = None
    sectionName: (
        Annotated[str, Field(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN)] | None
    ) = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None


class _PathMatch(_Strict):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: Annotated[str, Field(max_length=1024)] = "/"

    @model_validator(mode="after")
    def _cel(self) -> _PathMatch:
        if self.type in ("Exact", "PathPrefix"):
            v = self.value
            assert v.startswith("/"), "value must be an absolute path"
            for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
                assert bad not in v, f"must not contain {bad!r}"
            assert not v.endswith(("/..", "/.")), "must not end with '/..' or '/.'"
        return self


class _HeaderMatch(_Strict):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: Annotated[str, Field(min_length=1, max_length=256,
                               pattern=r"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$")]
    value: Annotated[str, Field(min_length=1, max_length=4096)]


class _Match(_Strict):
    path: _PathMatch | None = None
    headers: Annotated[list[_HeaderMatch], Field(max_length=16)] = []


class _MirrorBackendRef(_Strict):
    group: Annotated[str, Field(max_length=253, pattern=_GROUP)] = ""
    kind: Annotated[str, Field(min_length=1, max_length=63, pattern=_KIND)] = "Service"
    name: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)]


class _RequestMirror(_Strict):
    backendRef: _MirrorBackendRef  # v1.1 standard: no percent or fraction


class _Filter(_Strict):
    type: Literal["RequestMirror"]
    requestMirror: _RequestMirror


class _BackendRef(_Strict):
    group: Annotated[str, Field(max_length=253, pattern=_GROUP)] = ""
    kind: Annotated[str, Field(min_length=1, max_length=63, pattern=_KIND)] = "Service"
    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: Annotated[str, Field(min_length=1, max_length=63, pattern=_DNS_LABEL)] | None = None
    port: Annotated[int, Field(ge=1, le=65535)]  # required for a Service backend (CEL)
    weight: Annotated[int, Field(ge=0, le=1000000)] = 1


class _Rule(_Strict):
    matches: Annotated[list[_Match], Field(max_length=8)] = []
    filters: Annotated[list[_Filter], Field(max_length=16)] = []
    backendRefs: Annotated[list[_BackendRef], Field(max_length=16)] = []


class _HTTPRouteSpec(_Strict):
    parentRefs: Annotated[list[_ParentRef], Field(max_length=32)] = []
    hostnames: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=253, pattern=_HOSTNAME)]],
        Field(max_length=16),
    ] = []
    rules: Annotated[list[_Rule], Field(max_length=16)] = []


class _HTTPRoute(_Strict):
    apiVersion: Literal["gateway.networking.k8s.io/v1"]
    kind: Literal["HTTPRoute"]
    metadata: dict[str, Any]
    spec: _HTTPRouteSpec


@functools.cache
def _object_meta_validator(version: str) -> jsonschema.Draft202012Validator:
    defs = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json", version
    )
    registry: Registry = Resource.from_contents(defs) @ Registry()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": "https://kubernetes.io/api/_definitions.json"
        "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    }
    return jsonschema.Draft202012Validator(schema, registry=registry)


GATEWAY_API_CRD = Path(__file__).parent / "gateway-api" / "httproutes-v1.1.0.yaml"


@functools.cache
def httproute_crd() -> CRDChecker:
    """The admission checks of the real HTTPRoute v1 CRD (Gateway API v1.1.0 standard)."""
    return CRDChecker.from_crd(yaml.safe_load(GATEWAY_API_CRD.read_text()), "v1")


def check_httproute(obj: dict[str, Any], version: str) -> None:
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(obj, version, strict=True)
    _object_meta_validator(version).validate(obj["metadata"])
    problems = httproute_crd().check(obj)
    assert problems == [], f"the HTTPRoute CRD refuses it: {[str(p) for p in problems]}"
    _HTTPRoute.model_validate(obj)


# --- what the schemas leave to the API server ------------------------------------------------

_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def check_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    assert not prefix or naming.is_dns_subdomain(prefix), key
    assert len(name) <= 63 and _QUALIFIED_NAME.match(name), key


def check_names(obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    # Every child name is a DNS-1035 label: valid for a Service and for every other kind.
    assert naming.is_dns_label(meta["name"]), meta["name"]
    assert naming.is_dns_1123_label(meta["namespace"])
    for labels in _all_labels(obj):
        for key, value in labels.items():
            check_key(key)
            assert naming.is_label_value(value), (key, value)
    for key in meta.get("annotations", {}):
        check_key(key)


def _all_labels(obj: dict[str, Any]) -> Iterator[dict[str, str]]:
    yield obj["metadata"]["labels"]
    spec = obj.get("spec", {})
    for holder in (spec.get("selector"), spec.get("podSelector")):
        if isinstance(holder, dict):
            yield holder.get("matchLabels", holder)
    if "template" in spec:
        yield spec["template"]["metadata"]["labels"]


def check_object(obj: dict[str, Any]) -> None:
    check_names(obj)
    for version in K8S_VERSIONS:
        if obj["kind"] == "HTTPRoute":
            check_httproute(obj, version)
        else:
            kubernetes_validate.validate(obj, version, strict=True)


def check_all(md: ModelDeployment, version: str = "3") -> list[dict[str, Any]]:
    objects = render(md, RolloutState(version), SETTINGS)
    for obj in objects:
        try:
            check_object(obj)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {path}: {exc.message}")
    return objects


def make(spec: dict[str, Any], name: str = "iris", namespace: str = "ml") -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "apiVersion": "modelship.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace, "uid": "u-1"},
            "spec": spec,
        }
    )


# --- examples/ -----------------------------------------------------------------------------


def _example_manifests() -> list[Any]:
    found = []
    for path in sorted(EXAMPLES.glob("**/*.y*ml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("kind") == "ModelDeployment":
                found.append(pytest.param(doc, id=f"{path.relative_to(EXAMPLES)}#{i}"))
    return found


@pytest.mark.parametrize("manifest", _example_manifests())
def test_examples_render_valid_objects(manifest: dict[str, Any]) -> None:
    md = ModelDeployment.model_validate(manifest)
    version = md.spec.model.version or "1"  # an alias resolves to some version
    objects = check_all(md, version)
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "ServiceAccount"}


# --- a table of variants ---------------------------------------------------------------------

MODEL = {"name": "iris-classifier", "version": "3"}
FULL: dict[str, Any] = {
    "model": {
        "name": "iris-classifier",
        "version": "3",
        "registry": {"trackingUri": "http://mlflow:5000", "credentialsSecret": "mlflow-auth"},
    },
    "runtime": {
        "image": "registry.example.com/modelship-runtime:0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                      "limits": {"cpu": 2, "memory": "1Gi"}},
        "env": [
            {"name": "LOG_FORMAT", "value": "json"},
            {"name": "AWS_ACCESS_KEY_ID",
             "valueFrom": {"secretKeyRef": {"name": "s3", "key": "id"}}},
        ],
        "limits": {"maxConcurrency": 8, "maxConnections": 100, "maxBodyBytes": 65536,
                   "maxRows": 100, "maxColumns": 10, "maxHeaderBytes": 8192,
                   "headerTimeoutSeconds": 5, "keepAliveTimeoutSeconds": 2.5},
        "microbatch": {"enabled": True, "maxSize": 16, "maxWaitMs": 1.5},
        "logging": {"level": "DEBUG", "json": False, "accessLog": True},
        "allowPickle": False,
        "modelStorage": {"sizeLimit": "1.5Gi"},
        "rateLimit": {"requests": 100, "periodSeconds": 10},
    },
    "networkPolicy": {"allowFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "frontend"}}},
        {"podSelector": {}},
        {"namespaceSelector": {}},
    ]},
    "replicas": 2,
    "autoscaling": {"minReplicas": 2, "maxReplicas": 10, "targetCPUUtilization": 70,
                    "targetMemoryUtilization": 80},
    "ingress": {"host": "iris.example.com", "path": "/", "className": "nginx",
                "tlsSecret": "iris-tls",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "8m"},
                "rateLimit": {"requestsPerSecond": 20, "connections": 5}},
    "rollout": {"steps": [10, 50, 100], "interval": "60s"},
    "cache": {"redisSecret": "iris-redis", "ttlSeconds": 300},
    "auth": {"apiKeySecret": "iris-api-keys"},
    "disruptionBudget": {"minAvailable": 1},
}

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "minimal": ("iris", {"model": MODEL}),
    "zero-replicas": ("iris", {"model": MODEL, "replicas": 0}),
    "full": ("iris", FULL),
    "autoscaling-cpu": ("iris", {"model": MODEL, "autoscaling": {"maxReplicas": 3}}),
    "gateway": ("iris", {"model": MODEL, "gateway": {
        "parentRefs": [{"name": "public", "namespace": "gateway", "sectionName": "https"},
                       {"name": "internal"}],
        "hostnames": ["iris.example.com", "*.models.example.com"], "path": "/iris"}}),
    "gateway-no-hostnames": ("iris", {"model": MODEL, "gateway": {"parentRefs": [{"name": "g"}]}}),
    "ingress-wildcard": ("iris", {"model": MODEL, "ingress": {"host": "*.example.com"}}),
    "pdb-percent": ("iris", {"model": MODEL, "disruptionBudget": {"maxUnavailable": "50%"}}),
    "pdb-min-percent": ("iris", {"model": MODEL, "disruptionBudget": {"minAvailable": "50%"}}),
    "pdb-empty": ("iris", {"model": MODEL, "disruptionBudget": {}}),
    "alias": ("iris", {"model": {"name": "iris", "alias": "champion"}}),
    "longest-name": ("a" * 36, {**FULL}),
    "suffix-like-name": ("team-fraud-v2-canary", {"model": MODEL, "ingress": {"host": "a.b"}}),
    "long-version": ("m" * 36, {"model": {"name": "iris", "version": "9" * 40},
                               "gateway": {"parentRefs": [{"name": "g"}]}}),
    "odd-model-name": ("iris", {"model": {"name": "Team / Iris Classifier ✓ 模型", "version": "3"},
                                "autoscaling": {"maxReplicas": 2}}),
    "long-model-name": ("iris", {"model": {"name": "M" * 256, "version": "99999999999999999"}}),
}


@pytest.mark.parametrize(("name", "spec"), VARIANTS.values(), ids=list(VARIANTS))
def test_variants_render_valid_objects(name: str, spec: dict[str, Any]) -> None:
    version = spec["model"].get("version", "12")
    check_all(make(spec, name=name), version)


# --- generated variants ------------------------------------------------------------------------

_segment = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?\Z")
object_names = st.lists(_segment, min_size=1, max_size=10).map(".".join).filter(
    lambda s: len(s) <= 253
)
# What the CRD admits as a ModelDeployment's name (naming.md_name_problem).
md_names = st.from_regex(r"\A[a-z]([-a-z0-9]{0,34}[a-z0-9])?\Z").filter(lambda s: "--" not in s)
namespaces = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
secret_names = object_names
quantities = st.sampled_from(["100m", "1", "0.5", "2Gi", "512Mi", "1e3", "250M", 2, 1])
hosts = st.lists(_segment, min_size=1, max_size=4).map(".".join)
paths = st.sampled_from(["/", "/iris", "/v1/models/", "/a-b_c.d/e"])

runtime = st.fixed_dictionaries(
    {},
    optional={
        "image": st.sampled_from(
            ["modelship-runtime:0.2.0", "r.example.com/a/b@sha256:" + "a" * 64]
        ),
        "imagePullPolicy": st.sampled_from(["Always", "IfNotPresent", "Never"]),
        "resources": st.fixed_dictionaries(
            {},
            optional={
                "requests": st.dictionaries(st.sampled_from(["cpu", "memory"]), quantities),
                "limits": st.dictionaries(st.sampled_from(["cpu", "memory"]), quantities),
            },
        ),
        "env": st.lists(
            st.fixed_dictionaries(
                {"name": st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,20}\Z"), "value": st.text(max_size=20)}
            ),
            max_size=3,
        ),
    },
)
autoscaling = st.integers(1, 20).flatmap(
    lambda lo: st.fixed_dictionaries(
        {"minReplicas": st.just(lo), "maxReplicas": st.integers(lo, 50)},
        optional={
            "targetCPUUtilization": st.integers(1, 100),
            "targetMemoryUtilization": st.integers(1, 100),
        },
    )
)
ingress = st.fixed_dictionaries(
    {"host": hosts},
    optional={
        "path": paths,
        "className": st.sampled_from(["nginx", "traefik", "alb.ingress.k8s.aws"]),
        "tlsSecret": secret_names,
        "annotations": st.dictionaries(
            st.sampled_from(["nginx.ingress.kubernetes.io/proxy-body-size", "a/b", "plain"]),
            st.text(max_size=10),
            max_size=2,
        ),
    },
)
gateway = st.fixed_dictionaries(
    {"parentRefs": st.lists(
        st.fixed_dictionaries(
            {"name": object_names},
            optional={"namespace": namespaces, "sectionName": st.sampled_from(["http", "https"])},
        ),
        # One Gateway listed twice is a RenderError (test_repeated_parent_is_a_render_error).
        min_size=1, max_size=3, unique_by=lambda ref: (ref["name"], ref.get("namespace")),
    )},
    optional={"hostnames": st.lists(hosts, max_size=3), "path": paths},
)
budget: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"minAvailable": st.one_of(st.integers(0, 5), st.just("50%"))}),
    st.fixed_dictionaries({"maxUnavailable": st.one_of(st.integers(0, 5), st.just("25%"))}),
)
specs = st.fixed_dictionaries(
    {
        "model": st.fixed_dictionaries(
            {"name": st.text(min_size=1, max_size=256).filter(str.strip),
             "version": st.integers(1, 10**6).map(str)},
            optional={"registry": st.fixed_dictionaries(
                {}, optional={"trackingUri": st.just("https://mlflow.example.com"),
                              "credentialsSecret": secret_names})},
        )
    },
    optional={
        "runtime": runtime,
        "replicas": st.integers(0, 1000),
        "autoscaling": autoscaling,
        "cache": st.fixed_dictionaries(
            {"redisSecret": secret_names}, optional={"ttlSeconds": st.integers(1, 86400)}
        ),
        "auth": st.fixed_dictionaries({"apiKeySecret": secret_names}),
        "disruptionBudget": budget,
    },
)
routing: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.just({}),
    ingress.map(lambda i: {"ingress": i}),
    gateway.map(lambda g: {"gateway": g}),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs, routing, md_names, namespaces)
def test_generated_variants_render_valid_objects(
    spec: dict[str, Any], route: dict[str, Any], name: str, namespace: str
) -> None:
    md = make({**spec, **route}, name=name, namespace=namespace)
    check_all(md, md.spec.model.version or "1")


# --- the checks themselves catch what they should ---------------------------------------------


def _first(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return next(o for o in render(make(spec), RolloutState("3"), SETTINGS) if o["kind"] == kind)


def test_strict_schema_rejects_an_unknown_field() -> None:
    obj = _first("Deployment", {"model": MODEL})
    obj["spec"]["template"]["spec"]["containers"][0]["secrityContext"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        check_object(obj)


def test_httproute_check_rejects_a_bad_route() -> None:
    obj = _first("HTTPRoute", {"model": MODEL, "gateway": {"parentRefs": [{"name": "g"}]}})
    check_object(obj)
    obj["spec"]["rules"][0]["matches"][0]["path"]["value"] = "/a//b"
    with pytest.raises(AssertionError, match="must not contain '//'"):
        check_object(obj)  # the real CRD's CEL rule
    with pytest.raises(ValueError, match="must not contain"):
        _HTTPRoute.model_validate(obj)  # the transcription
    obj = _first("HTTPRoute", {"model": MODEL, "gateway": {"parentRefs": [{"name": "g"}]}})
    obj["metadata"]["labels"] = {"a": 1}
    with pytest.raises(jsonschema.ValidationError):
        check_httproute(obj, "1.37")


def test_name_check_rejects_bad_names_and_labels() -> None:
    obj = _first("Service", {"model": MODEL})
    obj["metadata"]["labels"]["modelship.io/model"] = "Iris Classifier"
    with pytest.raises(AssertionError):
        check_names(obj)
    obj = _first("Service", {"model": MODEL})
    obj["metadata"]["name"] = "1-" + "a" * 70
    with pytest.raises(AssertionError):
        check_names(obj)


@pytest.mark.parametrize("path", ["/a//b", "/a/./b", "/a/../b", "/a%2Fb", "/a#b", "/a/.."])
@pytest.mark.parametrize("where", ["ingress", "gateway"])
def test_unclean_paths_are_a_render_error(path: str, where: str) -> None:
    route = (
        {"ingress": {"host": "a.example.com", "path": path}}
        if where == "ingress"
        else {"gateway": {"parentRefs": [{"name": "g"}], "path": path}}
    )
    with pytest.raises(RenderError) as info:
        render(make({"model": MODEL, **route}), RolloutState("3"), SETTINGS)
    assert info.value.field == f"spec.{where}.path"


@pytest.mark.parametrize(
    ("refs", "bad", "message"),
    [
        ([{"name": "g"}, {"name": "g"}], 1, "same Gateway and listener"),
        ([{"name": "g", "sectionName": "a"}, {"name": "g", "sectionName": "a"}], 1,
         "same Gateway and listener"),
        ([{"name": "g", "namespace": "n"}, {"name": "g", "namespace": "n",
                                            "sectionName": "a"}], 1, "give each"),
    ],
)
def test_repeated_parent_is_a_render_error(
    refs: list[dict[str, str]], bad: int, message: str
) -> None:
    """The HTTPRoute CRD refuses one Gateway twice without distinct listeners."""
    with pytest.raises(RenderError, match=message) as info:
        render(make({"model": MODEL, "gateway": {"parentRefs": refs}}), RolloutState("3"),
               SETTINGS)
    assert info.value.field == f"spec.gateway.parentRefs[{bad}]"


@pytest.mark.parametrize(
    "refs",
    [
        [{"name": "g", "sectionName": "a"}, {"name": "g", "sectionName": "b"}],
        [{"name": "g"}, {"name": "g", "namespace": "n"}],
        [{"name": "g"}, {"name": "h"}],
    ],
)
def test_distinct_parents_are_valid(refs: list[dict[str, str]]) -> None:
    check_all(make({"model": MODEL, "gateway": {"parentRefs": refs}}))


def test_canary_building_blocks_are_valid() -> None:
    """The hooks the canary issue will use render valid objects already: a second
    versioned Deployment and HPA with scaled bounds, a Service ``NAME--canary``, a canary
    Ingress with extra annotations, an HTTPRoute with two weighted backends."""
    from modelship_operator.reconcilers import deployment, hpa, httproute, ingress, service
    from modelship_operator.render import _finish

    md = make(FULL)
    assert md.spec.autoscaling is not None and md.spec.ingress is not None
    canary = naming.canary_service_name("iris")
    gw = make({"model": MODEL, "gateway": {"parentRefs": [{"name": "g"}]}})
    assert gw.spec.gateway is not None
    parts = [
        _finish(md, deployment.render(md, "4", SETTINGS)),
        _finish(md, hpa.render(md, "4", md.spec.autoscaling, min_replicas=1, max_replicas=2)),
        _finish(md, service.render(md, "4", name=canary)),
        _finish(md, ingress.render(
            md, md.spec.ingress, name=canary, service=canary,
            extra_annotations={"nginx.ingress.kubernetes.io/canary": "true",
                               "nginx.ingress.kubernetes.io/canary-weight": "10"},
        )),
        _finish(gw, httproute.render(gw, gw.spec.gateway, backends=[("iris", 90), (canary, 10)])),
    ]
    for obj in parts:
        check_object(obj)
    assert parts[0]["metadata"]["name"] == "iris-v4"
    assert parts[2]["spec"]["selector"]["modelship.io/model-version"] == "4"
    assert [b["weight"] for b in parts[4]["spec"]["rules"][0]["backendRefs"]] == [90, 10]

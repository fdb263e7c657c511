"""Pydantic models of the ModelDeployment API (modelship.io/v1alpha1).

The CRD in crds/ is what the API server enforces; these models are what the operator
trusts. The CRD's schema is generated from them (scripts/crd_schema.py, make sync): a
field's docstring is its description, its type, default and bounds are the schema's, and
a rule the schema keywords cannot say is a CEL rule attached here with :func:`cel` next to
the Python validator that is its twin. tests/operator holds the pairs to the same verdicts:
test_crd_schema.py compares the two schemas field by field, test_api_corpus.py runs a
corpus of valid and invalid manifests through both, and test_api_differential.py runs
one-field mutations of rich manifests through both; test_crd_generated.py fails when the
committed CRD is not what the models make now. Python attributes are snake_case; the wire
names are the camelCase aliases.

Status models ignore fields they do not know, where spec models reject them: a status
may have been written by a newer operator during an upgrade, and must still be read.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Annotated, Any, Final, Literal, NotRequired, TypedDict

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from modelship_operator import naming

GROUP: Final = "modelship.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "modelship.io/v1alpha1"
KIND: Final = "ModelDeployment"
PLURAL: Final = "modeldeployments"

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
HOSTNAME_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# resource.Quantity as the API server parses it (the pattern kubebuilder puts in CRDs).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def _without_nulls(value: Any) -> Any:
    """A mapping minus its null values, as the API server prunes them before validating."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    return value


# A URI whose authority holds user information (user:password@); the CRD's CEL rule too.
USERINFO_PATTERN = r"^[A-Za-z][-+.A-Za-z0-9]*://[^/?#]*@"
PRINTABLE_URI_PATTERN = r"[!-~]+"

# The name of a Kubernetes object (a Secret, an IngressClass, a Gateway).
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
SecretName = ObjectName
Hostname = Annotated[str, Field(
    min_length=1, max_length=253, pattern=HOSTNAME_PATTERN,
    description='A host name, e.g. iris.example.com. A leading "*." makes a wildcard.',
)]
Quantity = int | Annotated[str, Field(pattern=QUANTITY_PATTERN)]


class CelRule(TypedDict):
    """One x-kubernetes-validations entry of the CRD."""

    rule: str
    message: str
    messageExpression: NotRequired[str]


def cel(rule: str, message: str, message_expression: str | None = None) -> CelRule:
    """A CEL rule the API server checks on the field or model it is attached to with
    :func:`validations`; `message` is what a client sees when it fails."""
    out = CelRule(rule=rule, message=message)
    if message_expression is not None:
        out["messageExpression"] = message_expression
    return out


def validations(*rules: CelRule) -> dict[str, Any]:
    """``json_schema_extra`` of a model or field carrying CEL rules into the CRD."""
    return {"x-kubernetes-validations": list(rules)}


def list_map(*keys: str) -> dict[str, Any]:
    """``json_schema_extra`` of a list the API server treats as a map keyed by `keys`:
    entries with equal keys are refused, and server-side apply merges entry by entry."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as ``90s``, ``1m30s`` or ``500ms``."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use a number and a unit, e.g. 60s or 1m30s")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


class _Model(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields rejected.

    Types are strict, as the API server's are: ``replicas: "3"`` or ``paused: "true"``
    is an error, not a coercion. A field given as null counts as absent (its default
    applies), because the API server prunes nulls of non-nullable fields before
    defaulting and validating.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=True,
        use_attribute_docstrings=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _prune_nulls(cls, data: Any) -> Any:
        return _without_nulls(data)

    def dump(self) -> dict[str, Any]:
        """The wire form: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class RegistrySpec(_Model):
    tracking_uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        json_schema_extra=validations(
            cel(f"!self.matches('{USERINFO_PATTERN}')",
                "spec.model.registry.trackingUri: no user or password in the URI; "
                "put them in credentialsSecret"),
            cel(f"self.matches('^{PRINTABLE_URI_PATTERN}$')",
                "spec.model.registry.trackingUri: printable ASCII only, no spaces or control "
                "characters (write an international host as punycode)"),
        ),
    )
    """MLflow tracking server URI, e.g. http://mlflow.mlflow:5000. Defaults to the operator's
    setting. Its host must be one the operator trusts (operator setting allowed_tracking_hosts);
    credentials go in credentialsSecret, never in the URI."""
    credentials_secret: SecretName | None = None
    """Name of a Secret in this namespace with the key MLFLOW_TRACKING_TOKEN, or the keys
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD."""

    @field_validator("tracking_uri")
    @classmethod
    def _no_userinfo(cls, uri: str | None) -> str | None:
        if uri is not None and not re.fullmatch(PRINTABLE_URI_PATTERN, uri):
            # Clients strip or drop spaces and control characters before parsing, so a
            # URI with any would reach a host, or carry a password, that no check saw.
            raise ValueError("spec.model.registry.trackingUri: printable ASCII only, no spaces "
                             "or control characters (write an international host as punycode)")
        if uri is not None and re.match(USERINFO_PATTERN, uri):
            raise ValueError("spec.model.registry.trackingUri: no user or password in the URI; "
                             "put them in credentialsSecret")
        return uri


class ModelSpec(_Model):
    model_config = ConfigDict(json_schema_extra=validations(
        cel("has(self.version) != has(self.alias)",
            "exactly one of spec.model.version and spec.model.alias must be set"),
    ))

    name: str = Field(min_length=1, max_length=256)
    """Name of the MLflow registered model, e.g. iris-classifier. May contain spaces and
    capitals."""
    version: str | None = Field(default=None, pattern=r"^[1-9][0-9]*$")
    """Fixed model version to serve, as a decimal string such as "3". Changing it starts a rollout;
    reverting it aborts one. Exclusive with alias."""
    alias: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9_-]+$",
    )
    """MLflow alias to follow, e.g. champion. The operator resolves it to a version and starts a
    rollout when the alias moves. Exclusive with version."""
    promote_alias: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9_-]+$",
    )
    """Alias the operator sets in MLflow on the version a rollout promotes, e.g. production. Unset:
    no alias is set. Either way the operator tags the version a rollout ends with in MLflow
    (modelship.io/deployed on promotion, modelship.io/rolled-back with the reason on rollback), so
    the registry credentials need write access to model versions; status.lastRollout.writeBack
    reports a write that failed (it is retried)."""
    registry: RegistrySpec = Field(default_factory=RegistrySpec)
    """Where the MLflow registry is and how to authenticate; unset fields take the operator's
    defaults."""

    @model_validator(mode="after")
    def _one_of_version_alias(self) -> ModelSpec:
        if (self.version is None) == (self.alias is None):
            raise ValueError("exactly one of spec.model.version and spec.model.alias must be set")
        return self


# Variables the operator sets, or the runtime and MLflow read for configuration the
# operator owns: spec.runtime.env may not name them (any case: pydantic-settings matches
# MODELSHIP_* and REDIS_URL case-insensitively). The same expression is the CRD's CEL rule.
OPERATOR_ENV_PATTERN = (
    r"(?i)^(MODELSHIP_.*|REDIS_URL|MLFLOW_TRACKING_.*|MLFLOW_REGISTRY_URI|HOME)$"
)
OPERATOR_ENV_SUMMARY = "MODELSHIP_*, REDIS_URL, MLFLOW_TRACKING_*, MLFLOW_REGISTRY_URI, HOME"


def operator_env_problem(name: str) -> str | None:
    """Why spec.runtime.env may not set `name`, or None when it may."""
    if re.match(OPERATOR_ENV_PATTERN, name):
        return (f"spec.runtime.env: {name} is set by the operator ({OPERATOR_ENV_SUMMARY}); "
                "use the fields of spec.runtime instead")
    return None


class EnvVar(_Model):
    """One environment variable; value and valueFrom are exclusive."""

    # A core/v1 EnvVar; valueFrom is passed through to the container unchecked.
    model_config = ConfigDict(json_schema_extra=validations(
        cel("!(has(self.value) && has(self.valueFrom))",
            "spec.runtime.env: set at most one of value and valueFrom"),
        cel(f"!self.name.matches('{OPERATOR_ENV_PATTERN}')",
            f"spec.runtime.env: the operator sets {OPERATOR_ENV_SUMMARY}; use the fields of "
            "spec.runtime instead",
            f"'spec.runtime.env: ' + self.name + ' is set by the operator "
            f"({OPERATOR_ENV_SUMMARY}); use the fields of spec.runtime instead'"),
    ))

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    """Name of the variable. Not one the operator sets or the runtime reads for its own
    configuration (MODELSHIP_*, REDIS_URL, MLFLOW_TRACKING_*, MLFLOW_REGISTRY_URI, HOME, in any
    case): spec.runtime's other fields set those."""
    value: str | None = None
    """Literal value."""
    value_from: dict[str, Any] | None = None
    """A core/v1 EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef), passed to
    the container as is."""

    @field_validator("name")
    @classmethod
    def _not_the_operators(cls, name: str) -> str:
        problem = operator_env_problem(name)
        if problem is not None:
            raise ValueError(problem)
        return name

    @model_validator(mode="after")
    def _value_or_value_from(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("spec.runtime.env: set at most one of value and valueFrom")
        return self


class RuntimeLimits(_Model):
    # Bounds the runtime puts on clients (MODELSHIP_MAX_* and timeouts); unset: its own.
    max_concurrency: Annotated[int, Field(ge=1, le=100_000)] | None = None
    """Requests one pod works on at once (MODELSHIP_MAX_CONCURRENCY); more wait or are refused."""
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """Open client connections one pod accepts (MODELSHIP_MAX_CONNECTIONS)."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=1_073_741_824)] | None = None
    """Largest request body in bytes (MODELSHIP_MAX_BODY_BYTES); more is a 413."""
    max_rows: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    """Most rows (instances) one request may carry (MODELSHIP_MAX_ROWS)."""
    max_columns: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """Most features one row may carry (MODELSHIP_MAX_COLUMNS)."""
    max_header_bytes: Annotated[int, Field(ge=1024, le=1_048_576)] | None = None
    """Largest request head (request line and headers) in bytes (MODELSHIP_MAX_HEADER_BYTES)."""
    header_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] | None = None
    """Longest wait for a client to send a request's head (MODELSHIP_HEADER_TIMEOUT_SECONDS)."""
    keep_alive_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] | None = None
    """How long an idle kept-alive connection stays open (MODELSHIP_KEEPALIVE_TIMEOUT_SECONDS)."""


class MicrobatchSpec(_Model):
    enabled: bool | None = None
    """Batch concurrent requests (MODELSHIP_MICROBATCH)."""
    max_size: Annotated[int, Field(ge=1, le=100_000)] | None = None
    """Most rows one shared predict call takes (MODELSHIP_MICROBATCH_MAX_SIZE)."""
    max_wait_ms: Annotated[float, Field(ge=0, le=100)] | None = None
    """Longest wait for concurrent requests to join a batch, in milliseconds
    (MODELSHIP_MICROBATCH_MAX_WAIT_MS)."""


class LoggingSpec(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    """Log level (MODELSHIP_LOG_LEVEL)."""
    json_lines: bool | None = Field(default=None, alias="json")
    """One JSON object per line (MODELSHIP_LOG_JSON); false for plain text."""
    access_log: bool | None = None
    """Log every request (MODELSHIP_ACCESS_LOG)."""


class ModelStorageSpec(_Model):
    size_limit: Annotated[str, Field(pattern=QUANTITY_PATTERN)] | None = None
    """sizeLimit of each of the two emptyDirs, e.g. 2Gi; a pod writing more is evicted. Unset: the
    operator's setting runtime_model_storage_limit."""


# A fully-qualified Python type name, e.g. xgboost.sklearn.XGBClassifier.
TypeName = Annotated[str, Field(
    min_length=3, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
    description="A type name, module path and class, e.g. mypkg.features.Clipper.",
)]


class RuntimeRateLimit(_Model):
    requests: Annotated[int, Field(ge=1, le=1_000_000_000)]
    """Requests one API key may make per period."""
    period_seconds: Annotated[int, Field(ge=1, le=86_400)] = 60
    """Length of the period, in seconds."""


class ResourceRequirements(_Model):
    requests: Annotated[dict[str, Quantity], BeforeValidator(_without_nulls)] | None = None
    """Minimum resources by name, e.g. cpu 250m and memory 256Mi."""
    limits: Annotated[dict[str, Quantity], BeforeValidator(_without_nulls)] | None = None
    """Maximum resources by name, e.g. memory 512Mi."""


class RuntimeSpec(_Model):
    image: str | None = Field(default=None, min_length=1)
    """modelship runtime image. Defaults to the image the operator was released with."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Image pull policy of the runtime container."""
    resources: ResourceRequirements | None = None
    """Compute resources of the runtime container, as in a Pod's container."""
    env: list[EnvVar] = Field(default_factory=list, max_length=256)
    """Extra environment variables of the runtime container, as in a Pod's container."""
    limits: RuntimeLimits | None = None
    """Bounds the runtime puts on its clients; an unset field keeps the runtime's default."""
    microbatch: MicrobatchSpec | None = None
    """Predicting concurrent requests together in one estimator call; an unset field keeps the
    runtime's default."""
    logging: LoggingSpec | None = None
    """The runtime's logs; an unset field keeps the runtime's default."""
    allow_pickle: bool | None = None
    """Load models serialized with pickle (MODELSHIP_ALLOW_PICKLE; unpickling runs code from the
    artifact). false always holds; true is refused where the operator's setting runtime_allow_pickle
    is false. Unset: the operator's setting."""
    trusted_types: list[TypeName] = Field(default_factory=list, max_length=64)
    """Fully-qualified type names a skops model may hold beyond skops' safe defaults and
    scikit-learn's own (MODELSHIP_TRUSTED_TYPES), e.g. xgboost.sklearn.XGBClassifier. Only these
    settings grant trust, never the model's own metadata."""
    model_storage: ModelStorageSpec | None = None
    """The emptyDir volumes the model is pulled into (/models) and /tmp."""
    rate_limit: RuntimeRateLimit | None = None
    """Per-API-key request limit the runtime enforces (MODELSHIP_RATE_LIMIT_REQUESTS per
    MODELSHIP_RATE_LIMIT_PERIOD_SECONDS); unset: no limit."""


class AutoscalingSpec(_Model):
    model_config = ConfigDict(json_schema_extra=validations(
        cel("self.minReplicas <= self.maxReplicas",
            "spec.autoscaling.minReplicas must be less than or equal to "
            "spec.autoscaling.maxReplicas"),
    ))

    min_replicas: Annotated[int, Field(ge=1)] = 1
    """Lower bound of the replica count."""
    max_replicas: Annotated[int, Field(ge=1)]
    """Upper bound of the replica count."""
    target_cpu_utilization: Annotated[int | None, Field(ge=1, le=100)] = Field(
        default=80, alias="targetCPUUtilization"
    )
    """Average CPU utilisation, in percent of the CPU request, that the autoscaler aims at."""
    target_memory_utilization: Annotated[int | None, Field(ge=1, le=100)] = None
    """Average memory utilisation, in percent of the memory request, that the autoscaler aims at.
    Unset = not a target."""

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                "spec.autoscaling.minReplicas must be less than or equal to maxReplicas"
            )
        return self


class IngressRateLimit(_Model):
    """Per-client-IP limits that ingress-nginx enforces (limit-rps, limit-connections)."""

    requests_per_second: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """Requests per second one client IP may make (limit-rps); more get 503."""
    connections: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """Concurrent connections one client IP may hold (limit-connections)."""


class IngressSpec(_Model):
    host: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    )
    """Host name clients use, e.g. iris.example.com. A leading "*." makes a wildcard."""
    path: str = Field(default="/", pattern=r"^/")
    """URL path prefix routed to the model."""
    class_name: ObjectName | None = None
    """IngressClass to use, e.g. nginx. Unset = the cluster's default class."""
    tls_secret: SecretName | None = None
    """Name of a kubernetes.io/tls Secret in this namespace; set to serve HTTPS."""
    annotations: Annotated[dict[str, str], BeforeValidator(_without_nulls)] | None = None
    """Extra annotations on the Ingress, e.g. for cert-manager."""
    rate_limit: IngressRateLimit | None = None
    """Per-client-IP limits ingress-nginx enforces on the Ingress and the canary Ingress
    (nginx.ingress.kubernetes.io/limit-rps and limit-connections); they win over the same keys in
    annotations."""


class ParentRef(_Model):
    """A reference to a Gateway."""

    name: ObjectName
    """Name of the Gateway."""
    namespace: str | None = Field(
        default=None, min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN
    )
    """Namespace of the Gateway. Unset = this namespace."""
    section_name: ObjectName | None = None
    """Name of one listener of the Gateway. Unset = every listener that allows the route."""


class GatewaySpec(_Model):
    parent_refs: list[ParentRef] = Field(min_length=1, max_length=32)
    """Gateways the HTTPRoute attaches to."""
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)
    """Host names the route matches. Empty = the hosts of the Gateway's listeners."""
    path: str = Field(default="/", pattern=r"^/")
    """URL path prefix routed to the model."""


class AnalysisQueries(_Model):
    error_rate: str | None = Field(default=None, min_length=1)
    """PromQL giving the canary's error rate (0 to 1)."""
    latency_p95_ms: str | None = Field(default=None, min_length=1, alias="latencyP95Ms")
    """PromQL giving the canary's p95 latency in milliseconds."""
    requests: str | None = Field(default=None, min_length=1)
    """PromQL giving the canary's request count over the step."""


class AnalysisSpec(_Model):
    model_config = ConfigDict(json_schema_extra=validations(
        cel("!has(self.provider) || self.provider != 'prometheus' || "
            "(has(self.prometheusUrl) && size(self.prometheusUrl) > 0)",
            "spec.rollout.analysis.prometheusUrl is required when provider is prometheus"),
    ))

    provider: Literal["pods", "prometheus"] = "pods"
    """Where metrics come from. pods scrapes the runtime pods' /metrics; prometheus queries a
    Prometheus server."""
    prometheus_url: str = Field(default="", max_length=2048, alias="prometheusUrl")
    """Base URL of the Prometheus server, e.g. http://prometheus.monitoring:9090. Required for
    provider prometheus."""
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    """Highest share of failed requests (5xx) the canary may have, from 0 to 1."""
    max_latency_p95_ms: Annotated[float, Field(gt=0)] = Field(
        default=500, alias="maxLatencyP95Ms"
    )
    """Highest 95th-percentile request latency of the canary, in milliseconds."""
    min_requests: Annotated[int, Field(ge=0)] = 20
    """Fewest canary requests the error-rate and latency gates need (at least one, even at 0); with
    fewer they are inconclusive and the step holds."""
    failure_limit: Annotated[int, Field(ge=1)] = 2
    """Failed analyses, counted in total over one rollout (not only consecutive ones), at which the
    rollout rolls back on its own. Inconclusive analyses do not count; a canary that loses its ready
    pods while it has weight counts as one failure."""
    max_prediction_shift: Annotated[float | None, Field(gt=0)] = None
    """Largest allowed Population Stability Index (PSI) between the canary's predicted-class
    distribution in a step and the stable version's (recorded before traffic moved, plus its
    predictions in the same step). Common readings: below 0.1 no real shift, 0.1-0.25 moderate,
    above 0.25 large. Unset = not compared."""
    min_predictions: Annotated[int, Field(ge=1)] = 200
    """Fewest predictions the prediction-shift gate needs on each side; with fewer it is
    inconclusive and the step holds."""
    min_agreement: Annotated[float | None, Field(ge=0, le=1)] = None
    """Shadow phase, classifiers: lowest share of mirrored rows on which the canary predicts the
    stable's class (needs minPredictions compared rows). Unset = not judged."""
    max_mean_abs_diff: Annotated[float | None, Field(ge=0)] = None
    """Shadow phase, regressors: largest mean absolute difference between the canary's and the
    stable's predictions on mirrored rows (needs minPredictions compared rows). Unset = not
    judged."""
    confidence: Annotated[float, Field(ge=0.5, le=0.999)] = 0.95
    """One-sided confidence level of the error-rate and latency gates: a gate fails only when its
    figure is above the threshold at this confidence (Wilson score bounds on the counts), not on one
    noisy point estimate."""
    queries: AnalysisQueries | None = None
    """PromQL overrides for provider prometheus; unset fields use the built-in queries."""

    @model_validator(mode="after")
    def _prometheus_url(self) -> AnalysisSpec:
        if self.provider == "prometheus" and not self.prometheus_url:
            raise ValueError(
                "spec.rollout.analysis.prometheusUrl is required when provider is prometheus"
            )
        return self


class ShadowSpec(_Model):
    fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Share of the stable's prediction requests mirrored to the canary (via runtime only; the
    Gateway API v1.1 mirror copies every request)."""
    via: Literal["runtime", "gateway"] = "runtime"
    """runtime - the stable's pods copy requests to the canary's Service after answering, carrying
    their own predictions, so the canary compares its answers request by request; gateway - the
    HTTPRoute's RequestMirror filter (needs spec.gateway; no per-request agreement, the other gates
    apply)."""


class ConfigMapKeyRef(_Model):
    name: ObjectName
    """ConfigMap name."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
    """Key of the ConfigMap's data holding the JSON."""


class SmokeTestSpec(_Model):
    model_config = ConfigDict(json_schema_extra=validations(
        cel("has(self.configMap) != has(self.artifact)",
            "spec.rollout.smokeTest: set exactly one of configMap and artifact"),
    ))

    config_map: ConfigMapKeyRef | None = None
    """A ConfigMap of the namespace holding the golden set as JSON: {"instances": [[...], ...],
    "expected": [...]}."""
    artifact: Annotated[str, Field(min_length=1, max_length=512,
                                   pattern=r"^[A-Za-z0-9_](\.?[-_/A-Za-z0-9])*$")] | None = None
    """Path of the golden set among the artifacts of the model version's MLflow run, e.g. smoke.json
    (same JSON form)."""
    min_accuracy: Annotated[float, Field(ge=0, le=1)] = 1.0
    """Share of golden rows whose prediction must equal the expected one."""

    @model_validator(mode="after")
    def _one_source(self) -> SmokeTestSpec:
        if (self.config_map is None) == (self.artifact is None):
            raise ValueError(
                "spec.rollout.smokeTest: set exactly one of configMap and artifact"
            )
        return self


HEADER_NAME_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9]*$"


class HeaderRoutingSpec(_Model):
    header: Annotated[str, Field(min_length=1, max_length=128, pattern=HEADER_NAME_PATTERN)]
    """Header name, e.g. X-Modelship-Canary."""
    value: Annotated[str, Field(min_length=1, max_length=256,
                                pattern=r"^[A-Za-z0-9][-._A-Za-z0-9]*$")] = "always"
    """Header value that selects the canary."""


class WebhookSpec(_Model):
    """One webhook."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
    """Unique name of the webhook."""
    type: Literal["event", "confirm-promotion"] = "event"
    """event or confirm-promotion."""
    url: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://[^ ]+$")]
    """http(s) URL the operator POSTs to."""
    timeout_seconds: Annotated[int, Field(ge=1, le=60)] = 5
    """Timeout of one call."""
    retries: Annotated[int, Field(ge=0, le=5)] = 2
    """Further tries after a failed call."""


CanaryWeight = Annotated[int, Field(ge=1, le=100, description="A canary weight in percent.")]


class RolloutSpec(_Model):
    steps: list[CanaryWeight] = Field(
        default_factory=lambda: [10, 50, 100],
        min_length=1,
        max_length=20,
        # At most 20 steps: the list of indexes keeps the first rule's cost bounded.
        json_schema_extra=validations(
            cel("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]"
                ".all(i, i < size(self) ? self[i - 1] < self[i] : true)",
                "spec.rollout.steps must be strictly ascending"),
            cel("size(self) == 0 || self[size(self) - 1] == 100",
                "spec.rollout.steps must end at 100"),
        ),
    )
    """Percent of traffic sent to the canary at each step, strictly ascending, the last one 100
    (promotion). [100] switches at once after one analysis."""
    interval: str = Field(default="60s", pattern=DURATION_PATTERN)
    """Time spent at each step before its analysis, as a duration such as 60s, 5m or 1m30s."""
    warmup: str = Field(default="0s", pattern=DURATION_PATTERN)
    """Time after a step's weight takes effect whose requests no analysis judges (caches warming,
    connections moving); the step's interval starts after it. A duration such as 10s; 0s judges from
    the moment the weight is set."""
    progress_deadline_seconds: Annotated[int, Field(ge=1)] = 600
    """Longest time a rollout may go without progress beyond what its schedule asks (canary pods not
    ready, a step that gets no traffic or stays inconclusive after its warmup and interval); past it
    the rollout rolls back with reason ProgressDeadlineExceeded."""
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    """The metrics a step must pass for the rollout to go on."""
    shadow: ShadowSpec | None = None
    """A shadow phase before the first weighted step: the canary answers copies of the stable's
    requests, its answers are never returned to clients, and the phase is analysed like a step (with
    minAgreement / maxMeanAbsDiff when the runtime mirrors). Unset = no shadow phase."""
    smoke_test: SmokeTestSpec | None = None
    """A golden set of input rows with their expected predictions, posted by the operator to the
    canary's pods once they are ready and before any mirrored or real traffic; below minAccuracy the
    rollout rolls back at once."""
    header_routing: HeaderRoutingSpec | None = None
    """Requests carrying this header and value reach the canary whatever its weight, once its pods
    are ready (testers). Ingress: ingress-nginx canary-by-header; Gateway API: an HTTPRoute rule
    matching the header. Replica-split mode (neither) cannot route by header."""
    webhooks: list[WebhookSpec] = Field(default_factory=list, max_length=8,
                                        json_schema_extra=list_map("name"))
    """HTTP callbacks: type event receives a JSON POST at rollout start, each step, promotion and
    rollback (with the figures); type confirm-promotion must answer 2xx before a promotion happens
    (the rollout holds until it does)."""
    paused: bool = False
    """Hold the canary at its current weight; analyses and promotion wait until it is false
    again."""

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in pairwise(steps)):
            raise ValueError("spec.rollout.steps must be strictly ascending")
        if steps[-1] != 100:
            raise ValueError("spec.rollout.steps must end at 100")
        return steps

    @property
    def interval_seconds(self) -> float:
        return parse_duration(self.interval)

    @property
    def warmup_seconds(self) -> float:
        return parse_duration(self.warmup)


class CacheSpec(_Model):
    redis_secret: SecretName
    """Name of a Secret in this namespace whose key url holds the Redis URL, e.g.
    redis://redis:6379/0."""
    ttl_seconds: Annotated[int, Field(ge=1)] = 300
    """How long a cached prediction lives, in seconds."""


class AuthSpec(_Model):
    api_key_secret: SecretName
    """Name of a Secret in this namespace whose values are the accepted API keys: every key of the
    Secret counts, whatever its name, one API key per line. The Secret is mounted whole into the
    serving pods and read when a pod starts; a Secret without any key stops the pod with a message
    saying so."""


# A pod count or a percent of pods, as a PodDisruptionBudget takes it.
PodCount = Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=r"^[0-9]+%$")]


class DisruptionBudgetSpec(_Model):
    model_config = ConfigDict(json_schema_extra=validations(
        cel("!(has(self.minAvailable) && has(self.maxUnavailable))",
            "spec.disruptionBudget: set at most one of minAvailable and maxUnavailable"),
    ))

    min_available: PodCount | None = None
    """Pods that must stay available during a voluntary disruption, as a number or a percent such as
    50%."""
    max_unavailable: PodCount | None = None
    """Pods that may be unavailable during a voluntary disruption, as a number or a percent such as
    25%."""

    @model_validator(mode="after")
    def _one(self) -> DisruptionBudgetSpec:
        if self.min_available is not None and self.max_unavailable is not None:
            raise ValueError(
                "spec.disruptionBudget: set at most one of minAvailable and maxUnavailable"
            )
        return self


LabelValue = Annotated[str, Field(max_length=63,
                                  pattern=r"^([A-Za-z0-9]([-._A-Za-z0-9]*[A-Za-z0-9])?)?$")]


MatchLabels = Annotated[dict[str, LabelValue], BeforeValidator(_without_nulls),
                        Field(max_length=16)]


class LabelSelector(_Model):
    match_labels: MatchLabels = Field(default_factory=dict)
    """Labels the object must all carry."""


class NamespaceSelector(LabelSelector):
    match_labels: MatchLabels = Field(default_factory=dict)
    """Labels the namespace must all carry."""


class PodSelector(LabelSelector):
    match_labels: MatchLabels = Field(default_factory=dict)
    """Labels the pod must all carry."""


class NetworkPeer(_Model):
    """Pods matching podSelector in the namespaces matching namespaceSelector; podSelector alone
    means this namespace."""

    model_config = ConfigDict(json_schema_extra=validations(
        cel("has(self.namespaceSelector) || has(self.podSelector)",
            "spec.networkPolicy.allowFrom: set namespaceSelector, podSelector or both"),
    ))

    namespace_selector: NamespaceSelector | None = None
    """Namespaces, by their labels (kubernetes.io/metadata.name is the name); {} is every
    namespace."""
    pod_selector: PodSelector | None = None
    """Pods, by their labels; {} is every pod."""

    @model_validator(mode="after")
    def _some_selector(self) -> NetworkPeer:
        if self.namespace_selector is None and self.pod_selector is None:
            raise ValueError(
                "spec.networkPolicy.allowFrom: set namespaceSelector, podSelector or both"
            )
        return self


class NetworkPolicySpec(_Model):
    allow_from: list[NetworkPeer] = Field(default_factory=list, max_length=16)
    """More sources, as NetworkPolicy peers."""


class ModelDeploymentSpec(_Model):
    model_config = ConfigDict(json_schema_extra=validations(
        cel("!(has(self.ingress) && has(self.gateway))",
            "spec.ingress and spec.gateway are mutually exclusive; set at most one"),
        cel("!has(self.rollout) || !has(self.rollout.shadow) || !has(self.rollout.shadow.via) "
            "|| self.rollout.shadow.via != 'gateway' || has(self.gateway)",
            "spec.rollout.shadow.via gateway needs spec.gateway"),
    ))

    model: ModelSpec
    """The MLflow registered model and which of its versions to serve: a fixed version, or an alias
    the operator follows (a move of the alias starts a rollout)."""
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    """The serving container; unset fields take the operator's defaults."""
    replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    """Number of pods serving the stable version when autoscaling is not set."""
    autoscaling: AutoscalingSpec | None = None
    """Scale the serving pods with a HorizontalPodAutoscaler (autoscaling/v2) instead of a fixed
    replica count. A canary's bounds scale with its weight."""
    ingress: IngressSpec | None = None
    """Expose the model through a networking.k8s.io/v1 Ingress. Exclusive with gateway. A canary
    gets a second Ingress, NAME--canary, carrying ingress-nginx's canary annotations
    (nginx.ingress.kubernetes.io/canary and canary-weight): the weighted split works with
    ingress-nginx only. Other controllers ignore those annotations and see two Ingresses for the
    same host and path, so the canary's weight is not honoured; with them use spec.gateway (any
    Gateway API implementation) instead."""
    gateway: GatewaySpec | None = None
    """Expose the model through a Gateway API HTTPRoute (gateway.networking.k8s.io/v1). Exclusive
    with ingress."""
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    """How a new model version takes over from the stable one."""
    cache: CacheSpec | None = None
    """Cache predictions in Redis. Redis being down means no cache, never an error."""
    auth: AuthSpec | None = None
    """Require an API key on prediction requests."""
    disruption_budget: DisruptionBudgetSpec | None = None
    """A PodDisruptionBudget for the serving pods; set at most one of minAvailable and
    maxUnavailable."""
    network_policy: NetworkPolicySpec | None = None
    """Who may reach the serving pods' port, beyond the sources the operator always admits (the
    namespaces of its settings, e.g. the ingress controller's, its own and monitoring's; and this
    ModelDeployment's own pods, for shadow mirroring)."""

    @model_validator(mode="after")
    def _ingress_or_gateway(self) -> ModelDeploymentSpec:
        if self.ingress is not None and self.gateway is not None:
            raise ValueError("spec.ingress and spec.gateway are mutually exclusive")
        shadow = self.rollout.shadow
        if shadow is not None and shadow.via == "gateway" and self.gateway is None:
            raise ValueError("spec.rollout.shadow.via gateway needs spec.gateway")
        names = [w.name for w in self.rollout.webhooks]
        if len(names) != len(set(names)):
            raise ValueError("spec.rollout.webhooks: names must be unique")
        return self


# --- status -------------------------------------------------------------------------


class Condition(_Model):
    """One condition."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    type: str
    """Ready, Reconciling or Stalled."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str = ""
    """One CamelCase word for why the condition is what it is."""
    message: str = ""
    """Details for a person."""
    last_transition_time: str | None = None
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The metadata.generation the condition was set for."""


class _StatusModel(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class GateStatus(_StatusModel):
    gate: str
    """errorRate, latencyP95, predictionShift or requests."""
    verdict: str
    """Pass, Fail or Inconclusive."""
    figure: float | None = None
    """The figure the gate judged."""
    message: str | None = None
    """Why, with the counts."""


class AnalysisResult(_StatusModel):
    error_rate: float | None = None
    """Share of failed canary requests."""
    latency_p95_ms: float | None = Field(default=None, alias="latencyP95Ms")
    """95th-percentile canary latency in milliseconds."""
    requests: int | None = None
    """Canary requests counted."""
    errors: int | None = None
    """Canary requests answered with a 5xx."""
    predictions: int | None = None
    """Canary predictions counted (with maxPredictionShift)."""
    verdict: str | None = None
    """Pass, Fail or Inconclusive (the step holds, and its window keeps growing)."""
    compared: int | None = None
    """Shadow phase - mirrored rows the canary compared with the stable's predictions."""
    agreement: float | None = None
    """Shadow phase - share of compared rows on which the canary predicted the stable's class."""
    mean_abs_diff: float | None = None
    """Shadow phase - mean absolute difference from the stable's predictions."""
    gates: list[GateStatus] | None = Field(default=None, max_length=16)
    """Each gate's verdict."""
    prediction_shift: float | None = None
    """Population Stability Index of the canary's predicted classes against the stable version's."""
    passed: bool | None = None
    """Whether the analysis passed; unset when it was inconclusive."""
    at: str | None = None
    """When the analysis ran (RFC 3339)."""
    window_seconds: float | None = None
    """Length of the window the analysis judged, from the step's start plus warm-up."""


Counts = Annotated[dict[str, float], BeforeValidator(_without_nulls)]


class PodCounters(_StatusModel):
    """One pod's counters."""

    requests: float | None = None
    """Prediction requests."""
    errors: float | None = None
    """Prediction requests answered with a 5xx."""
    buckets: Counts | None = None
    """Cumulative request-duration histogram, upper bound in seconds to count."""
    classes: Counts | None = None
    """Predicted rows by class label."""
    agree: float | None = None
    """Mirrored rows on which the canary predicted the stable's class."""
    disagree: float | None = None
    """Mirrored rows on which it did not."""
    abs_diff_sum: float | None = None
    """Sum of |canary - stable| over mirrored rows (regressors)."""
    abs_diff_count: float | None = None
    """Mirrored rows compared by difference (regressors)."""
    uncompared: float | None = None
    """Mirrored requests that could not be compared."""


PodsCounters = Annotated[dict[str, PodCounters], BeforeValidator(_without_nulls),
                         Field(max_length=200)]


class StepCounters(_StatusModel):
    step: str | None = None
    """The stepStartedAt of the step these counters belong to (RFC 3339)."""
    at: str | None = None
    """When the counters were read, i.e. when the window opened (RFC 3339)."""
    canary: PodsCounters | None = None
    """The canary pods' counters, pod by pod."""
    stable: PodsCounters | None = None
    """The stable pods' counters, pod by pod."""


class ClassBaseline(_StatusModel):
    at: str | None = None
    """When they were recorded (RFC 3339)."""
    predictions: float | None = None
    """Predicted rows counted."""
    classes: Counts | None = None
    """Predicted rows by class label."""


class StableStatus(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    version: str | None = None
    """Model version."""
    replicas: int = 0
    """Pods of the stable Deployment."""
    ready_replicas: int = 0
    """Ready pods of the stable Deployment."""


class CanaryStatus(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    version: str
    """Model version under analysis."""
    weight: int = 0
    """Percent of traffic sent to the canary now."""
    step: int = 0
    """Index into spec.rollout.steps of the current step."""
    failed_analyses: int = 0
    """Analyses failed so far in this rollout."""
    replicas: int = 0
    """Pods of the canary Deployment."""
    ready_replicas: int = 0
    """Ready pods of the canary Deployment."""
    started_at: str | None = None
    """When the rollout started (RFC 3339)."""
    step_started_at: str | None = None
    """When the current step's weight was set (RFC 3339 with microseconds); its analysis judges the
    requests served from this moment plus spec.rollout.warmup on."""
    progress_at: str | None = None
    """When the rollout last made progress (RFC 3339); the progress deadline counts from here."""
    paused_at: str | None = None
    """When spec.rollout.paused stopped the rollout's clock (RFC 3339); unset when not paused."""
    held_since: str | None = None
    """Since when the current step's analysis has been inconclusive (RFC 3339); unset otherwise."""
    smoke_test_passed: bool | None = None
    """The golden-set smoke test passed (spec.rollout.smokeTest)."""
    shadow: bool | None = None
    """The canary is in its shadow phase (weight 0, answering mirrored requests only)."""
    shadow_passed: bool | None = None
    """The shadow phase passed its analysis."""
    step_counters: StepCounters | None = None
    """The runtime counters of both sides when the current step's window opened (provider pods), so
    an operator restart judges the whole step."""
    baseline: ClassBaseline | None = None
    """The stable version's predicted-class counts before traffic moved to the canary, the reference
    of the prediction-shift gate."""
    last_analysis: AnalysisResult | None = None
    """Figures of the latest analysis."""


class ModelStatus(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    resolved_version: str | None = None
    """The version spec.model.version or spec.model.alias resolved to."""


class LastRolloutStatus(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    version: str
    """The model version the rollout moved to."""
    outcome: str
    """Promoted, RolledBack or Aborted."""
    reason: str = ""
    """What decided the outcome, with the figures of the deciding analysis."""
    write_back: str | None = None
    """Whether the outcome was written back to MLflow (promoteAlias, version tags): Done, or Failed
    with the error (retried)."""


class RetiringStatus(_Model):
    """One retiring version."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    version: str
    """Model version whose Deployment is kept."""
    since: str
    """When traffic was moved off it (RFC 3339)."""


Phase = Literal["Pending", "Ready", "Progressing", "RolledBack", "Failed"]


class ModelDeploymentStatus(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    observed_generation: int | None = None
    """The metadata.generation this status describes."""
    phase: Phase | None = None
    """Summary of the deployment's state."""
    url: str | None = None
    """Where clients send predictions."""
    model: ModelStatus | None = None
    """The model as resolved in the registry."""
    stable: StableStatus | None = None
    """The version serving stable traffic."""
    canary: CanaryStatus | None = None
    """The rollout in progress; absent when none is."""
    last_rollout: LastRolloutStatus | None = None
    """How the most recent rollout ended; a rolled-back version is not tried again until spec.model
    changes."""
    retiring: list[RetiringStatus] | None = None
    """Model versions traffic has just left (promotion, rollback). Their Deployments are kept until
    routers have moved on (the operator's retire_after_seconds), then deleted; absent when none
    are."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=list_map("type"))
    """Latest observations of the deployment's state (kstatus conventions), one per type."""

    @field_validator("conditions")
    @classmethod
    def _one_condition_per_type(cls, conditions: list[Condition]) -> list[Condition]:
        types = [c.type for c in conditions]
        if len(types) != len(set(types)):
            raise ValueError("status.conditions: one condition per type")
        return conditions


class ObjectMeta(BaseModel):
    """The part of metadata the operator reads."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str
    """Restricted beyond Kubernetes' own rule so that child names never collide
    (:func:`modelship_operator.naming.md_name_problem`; the CRD's root CEL rule)."""
    namespace: str = "default"
    uid: str = "00000000-0000-0000-0000-000000000000"
    generation: int = 1
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _child_names_stay_apart(cls, name: str) -> str:
        problem = naming.md_name_problem(name)
        if problem is not None:
            raise ValueError(problem)
        return name


class ModelDeployment(BaseModel):
    """ModelDeployment serves one MLflow registered model (scikit-learn flavour) behind a
    stable endpoint, and moves traffic to a new model version with a metric-gated canary that
    promotes or rolls back by itself. Its name is at most 36 characters (lowercase letters,
    digits and '-', a letter first, no '--'), so that the names of its children (NAME,
    NAME-vVERSION, NAME--canary) are never those of another ModelDeployment's.
    """

    # The whole object as read from the API server or a file; the docstring above is the
    # CRD's description of it.
    model_config = ConfigDict(
        extra="ignore", frozen=True, populate_by_name=True, use_attribute_docstrings=True,
        json_schema_extra=validations(cel(
            f"size(self.metadata.name) <= {naming.MAX_MD_NAME} && "
            f"self.metadata.name.matches('^{naming.DNS_1035_PATTERN}$') && "
            f"!self.metadata.name.contains('{naming.SEPARATOR}')",
            f"metadata.name: {naming.MD_NAME_RULE}",
        )),
    )
    api_version: Literal["modelship.io/v1alpha1"] = Field(
        default=API_VERSION, alias="apiVersion"
    )
    """APIVersion defines the versioned schema of this representation of an object:
    modelship.io/v1alpha1."""
    kind: Literal["ModelDeployment"] = KIND
    """Kind is the REST resource this object represents, ModelDeployment."""
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    """The model to serve, how to run it, how to expose it and how to roll out a new version."""
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)
    """What the operator observed and did; written by the operator only."""

    @model_validator(mode="before")
    @classmethod
    def _prune_nulls(cls, data: Any) -> Any:
        return _without_nulls(data)

    @classmethod
    def from_body(cls, body: Any) -> ModelDeployment:
        """Parse a raw object (dict or kopf Body); raises pydantic.ValidationError."""
        return cls.model_validate(dict(body))

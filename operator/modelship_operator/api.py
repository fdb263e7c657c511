"""Pydantic models of the ModelDeployment API (modelship.io/v1alpha1).

The CRD in crds/ is what the API server enforces; these models are what the operator
trusts. Both must accept and reject the same manifests, so every rule here has a twin in
the CRD: a schema keyword or a CEL rule. tests/operator holds them to that three ways:
test_crd_schema.py compares the two schemas field by field, test_api_corpus.py runs a
corpus of valid and invalid manifests through both, and test_api_differential.py runs
one-field mutations of rich manifests through both. Python attributes are snake_case;
the wire names are the camelCase aliases.

Status models ignore fields they do not know, where spec models reject them: a status
may have been written by a newer operator during an upgrade, and must still be read.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Annotated, Any, Final, Literal

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
Hostname = Annotated[str, Field(min_length=1, max_length=253, pattern=HOSTNAME_PATTERN)]
Quantity = int | Annotated[str, Field(pattern=QUANTITY_PATTERN)]


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
        description="MLflow tracking server URI; defaults to the operator's setting.",
    )

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
    credentials_secret: SecretName | None = Field(
        default=None,
        description="Secret with MLFLOW_TRACKING_TOKEN or "
        "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD keys.",
    )


class ModelSpec(_Model):
    name: str = Field(min_length=1, max_length=256, description="MLflow registered model name.")
    version: str | None = Field(
        default=None, pattern=r"^[1-9][0-9]*$", description="Fixed model version."
    )
    alias: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="MLflow alias to follow, e.g. champion.",
    )
    registry: RegistrySpec = Field(default_factory=RegistrySpec)
    promote_alias: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Alias set to the version a rollout promotes.",
    )

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
    """A core/v1 EnvVar; ``valueFrom`` is passed through to the container unchecked."""

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = None
    value_from: dict[str, Any] | None = None

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
    """Bounds the runtime puts on clients (MODELSHIP_MAX_* and timeouts); unset: its own."""

    max_concurrency: Annotated[int, Field(ge=1, le=100_000)] | None = None
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    max_body_bytes: Annotated[int, Field(ge=1024, le=1_073_741_824)] | None = None
    max_rows: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    max_columns: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    max_header_bytes: Annotated[int, Field(ge=1024, le=1_048_576)] | None = None
    header_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] | None = None
    keep_alive_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] | None = None


class MicrobatchSpec(_Model):
    enabled: bool | None = None
    max_size: Annotated[int, Field(ge=1, le=100_000)] | None = None
    max_wait_ms: Annotated[float, Field(ge=0, le=100)] | None = None


class LoggingSpec(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    json_lines: bool | None = Field(default=None, alias="json")
    access_log: bool | None = None


class ModelStorageSpec(_Model):
    size_limit: Annotated[str, Field(pattern=QUANTITY_PATTERN)] | None = None


# A fully-qualified Python type name, e.g. xgboost.sklearn.XGBClassifier.
TypeName = Annotated[str, Field(min_length=3, max_length=256,
                                pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")]


class RuntimeRateLimit(_Model):
    requests: Annotated[int, Field(ge=1, le=1_000_000_000)]
    period_seconds: Annotated[int, Field(ge=1, le=86_400)] = 60


class ResourceRequirements(_Model):
    requests: Annotated[dict[str, Quantity], BeforeValidator(_without_nulls)] | None = None
    limits: Annotated[dict[str, Quantity], BeforeValidator(_without_nulls)] | None = None


class RuntimeSpec(_Model):
    image: str | None = Field(default=None, min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    resources: ResourceRequirements | None = None
    env: list[EnvVar] = Field(default_factory=list, max_length=256)
    limits: RuntimeLimits | None = None
    microbatch: MicrobatchSpec | None = None
    logging: LoggingSpec | None = None
    allow_pickle: bool | None = None
    trusted_types: list[TypeName] = Field(default_factory=list, max_length=64)
    model_storage: ModelStorageSpec | None = None
    rate_limit: RuntimeRateLimit | None = None


class AutoscalingSpec(_Model):
    min_replicas: Annotated[int, Field(ge=1)] = 1
    max_replicas: Annotated[int, Field(ge=1)]
    target_cpu_utilization: Annotated[int | None, Field(ge=1, le=100)] = Field(
        default=80, alias="targetCPUUtilization"
    )
    target_memory_utilization: Annotated[int | None, Field(ge=1, le=100)] = None

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
    connections: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class IngressSpec(_Model):
    host: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    )
    path: str = Field(default="/", pattern=r"^/")
    class_name: ObjectName | None = None
    tls_secret: SecretName | None = None
    annotations: Annotated[dict[str, str], BeforeValidator(_without_nulls)] | None = None
    rate_limit: IngressRateLimit | None = None


class ParentRef(_Model):
    name: ObjectName
    namespace: str | None = Field(
        default=None, min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN
    )
    section_name: ObjectName | None = None


class GatewaySpec(_Model):
    parent_refs: list[ParentRef] = Field(min_length=1, max_length=32)
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)
    path: str = Field(default="/", pattern=r"^/")


class AnalysisQueries(_Model):
    error_rate: str | None = Field(default=None, min_length=1)
    latency_p95_ms: str | None = Field(default=None, min_length=1, alias="latencyP95Ms")
    requests: str | None = Field(default=None, min_length=1)


class AnalysisSpec(_Model):
    provider: Literal["pods", "prometheus"] = "pods"
    prometheus_url: str = Field(default="", max_length=2048, alias="prometheusUrl")
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    max_latency_p95_ms: Annotated[float, Field(gt=0)] = Field(
        default=500, alias="maxLatencyP95Ms"
    )
    min_requests: Annotated[int, Field(ge=0)] = 20
    failure_limit: Annotated[int, Field(ge=1)] = 2
    max_prediction_shift: Annotated[float | None, Field(gt=0)] = None
    min_predictions: Annotated[int, Field(ge=1)] = 200
    min_agreement: Annotated[float | None, Field(ge=0, le=1)] = None
    max_mean_abs_diff: Annotated[float | None, Field(ge=0)] = None
    confidence: Annotated[float, Field(ge=0.5, le=0.999)] = 0.95
    queries: AnalysisQueries | None = None

    @model_validator(mode="after")
    def _prometheus_url(self) -> AnalysisSpec:
        if self.provider == "prometheus" and not self.prometheus_url:
            raise ValueError(
                "spec.rollout.analysis.prometheusUrl is required when provider is prometheus"
            )
        return self


class ShadowSpec(_Model):
    fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    via: Literal["runtime", "gateway"] = "runtime"


class ConfigMapKeyRef(_Model):
    name: ObjectName
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]


class SmokeTestSpec(_Model):
    config_map: ConfigMapKeyRef | None = None
    artifact: Annotated[str, Field(min_length=1, max_length=512,
                                   pattern=r"^[A-Za-z0-9_](\.?[-_/A-Za-z0-9])*$")] | None = None
    min_accuracy: Annotated[float, Field(ge=0, le=1)] = 1.0

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
    value: Annotated[str, Field(min_length=1, max_length=256,
                                pattern=r"^[A-Za-z0-9][-._A-Za-z0-9]*$")] = "always"


class WebhookSpec(_Model):
    name: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
    type: Literal["event", "confirm-promotion"] = "event"
    url: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://[^ ]+$")]
    timeout_seconds: Annotated[int, Field(ge=1, le=60)] = 5
    retries: Annotated[int, Field(ge=0, le=5)] = 2


class RolloutSpec(_Model):
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [10, 50, 100], min_length=1, max_length=20
    )
    interval: str = Field(default="60s", pattern=DURATION_PATTERN)
    warmup: str = Field(default="0s", pattern=DURATION_PATTERN)
    progress_deadline_seconds: Annotated[int, Field(ge=1)] = 600
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    paused: bool = False
    shadow: ShadowSpec | None = None
    smoke_test: SmokeTestSpec | None = None
    header_routing: HeaderRoutingSpec | None = None
    webhooks: list[WebhookSpec] = Field(default_factory=list, max_length=8)

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
    ttl_seconds: Annotated[int, Field(ge=1)] = 300


class AuthSpec(_Model):
    api_key_secret: SecretName


# A pod count or a percent of pods, as a PodDisruptionBudget takes it.
PodCount = Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=r"^[0-9]+%$")]


class DisruptionBudgetSpec(_Model):
    min_available: PodCount | None = None
    max_unavailable: PodCount | None = None

    @model_validator(mode="after")
    def _one(self) -> DisruptionBudgetSpec:
        if self.min_available is not None and self.max_unavailable is not None:
            raise ValueError(
                "spec.disruptionBudget: set at most one of minAvailable and maxUnavailable"
            )
        return self


LabelValue = Annotated[str, Field(max_length=63,
                                  pattern=r"^([A-Za-z0-9]([-._A-Za-z0-9]*[A-Za-z0-9])?)?$")]


class LabelSelector(_Model):
    match_labels: Annotated[dict[str, LabelValue], BeforeValidator(_without_nulls),
                            Field(max_length=16)] = Field(default_factory=dict)


class NetworkPeer(_Model):
    namespace_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None

    @model_validator(mode="after")
    def _some_selector(self) -> NetworkPeer:
        if self.namespace_selector is None and self.pod_selector is None:
            raise ValueError(
                "spec.networkPolicy.allowFrom: set namespaceSelector, podSelector or both"
            )
        return self


class NetworkPolicySpec(_Model):
    allow_from: list[NetworkPeer] = Field(default_factory=list, max_length=16)


class ModelDeploymentSpec(_Model):
    model: ModelSpec
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    autoscaling: AutoscalingSpec | None = None
    ingress: IngressSpec | None = None
    gateway: GatewaySpec | None = None
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    cache: CacheSpec | None = None
    auth: AuthSpec | None = None
    disruption_budget: DisruptionBudgetSpec | None = None
    network_policy: NetworkPolicySpec | None = None

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
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class _StatusModel(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class GateStatus(_StatusModel):
    gate: str
    verdict: str
    figure: float | None = None
    message: str | None = None


class AnalysisResult(_StatusModel):
    error_rate: float | None = None
    latency_p95_ms: float | None = Field(default=None, alias="latencyP95Ms")
    requests: int | None = None
    errors: int | None = None
    predictions: int | None = None
    prediction_shift: float | None = None
    verdict: str | None = None
    compared: int | None = None
    agreement: float | None = None
    mean_abs_diff: float | None = None
    gates: list[GateStatus] | None = Field(default=None, max_length=16)
    passed: bool | None = None
    at: str | None = None
    window_seconds: float | None = None


Counts = Annotated[dict[str, float], BeforeValidator(_without_nulls)]


class PodCounters(_StatusModel):
    requests: float | None = None
    errors: float | None = None
    buckets: Counts | None = None
    classes: Counts | None = None
    agree: float | None = None
    disagree: float | None = None
    abs_diff_sum: float | None = None
    abs_diff_count: float | None = None
    uncompared: float | None = None


PodsCounters = Annotated[dict[str, PodCounters], BeforeValidator(_without_nulls),
                         Field(max_length=200)]


class StepCounters(_StatusModel):
    step: str | None = None
    at: str | None = None
    canary: PodsCounters | None = None
    stable: PodsCounters | None = None


class ClassBaseline(_StatusModel):
    at: str | None = None
    predictions: float | None = None
    classes: Counts | None = None


class StableStatus(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    version: str | None = None
    replicas: int = 0
    ready_replicas: int = 0


class CanaryStatus(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    version: str
    weight: int = 0
    step: int = 0
    failed_analyses: int = 0
    replicas: int = 0
    ready_replicas: int = 0
    started_at: str | None = None
    step_started_at: str | None = None
    progress_at: str | None = None
    paused_at: str | None = None
    held_since: str | None = None
    smoke_test_passed: bool | None = None
    shadow: bool | None = None
    shadow_passed: bool | None = None
    step_counters: StepCounters | None = None
    baseline: ClassBaseline | None = None
    last_analysis: AnalysisResult | None = None


class ModelStatus(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    resolved_version: str | None = None


class LastRolloutStatus(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    version: str
    outcome: str
    reason: str = ""
    write_back: str | None = None


class RetiringStatus(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    version: str
    since: str


Phase = Literal["Pending", "Ready", "Progressing", "RolledBack", "Failed"]


class ModelDeploymentStatus(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )
    observed_generation: int | None = None
    phase: Phase | None = None
    url: str | None = None
    model: ModelStatus | None = None
    stable: StableStatus | None = None
    canary: CanaryStatus | None = None
    last_rollout: LastRolloutStatus | None = None
    retiring: list[RetiringStatus] | None = None
    conditions: list[Condition] = Field(default_factory=list)

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
    """A whole ModelDeployment object as read from the API server or a file."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
    api_version: Literal["modelship.io/v1alpha1"] = Field(
        default=API_VERSION, alias="apiVersion"
    )
    kind: Literal["ModelDeployment"] = KIND
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)

    @model_validator(mode="before")
    @classmethod
    def _prune_nulls(cls, data: Any) -> Any:
        return _without_nulls(data)

    @classmethod
    def from_body(cls, body: Any) -> ModelDeployment:
        """Parse a raw object (dict or kopf Body); raises pydantic.ValidationError."""
        return cls.model_validate(dict(body))

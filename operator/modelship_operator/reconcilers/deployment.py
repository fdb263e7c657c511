"""The Deployment that serves one model version: ``NAME-vVERSION``.

One Deployment per live version, never per track: its pods carry the version label
and nothing that says "stable" or "canary", so promoting a canary only retargets the
Service and restarts no pod. The selector (ModelDeployment + version) is fixed for the
Deployment's life, as Kubernetes requires.

Pod layout: an init container pulls ``models:/NAME/VERSION`` into an emptyDir at
/models (``modelship-runtime pull``); the runtime container serves it
(``modelship-runtime serve``). Only the init container gets the registry URI and
credentials: the serving container never talks to the registry. The root filesystem is
read-only; /models and /tmp are emptyDirs and HOME points at /tmp.

Termination loses no request: a preStop pause holds SIGTERM back while the pod's removal
from endpoints reaches the routers, then the runtime drains (readiness fails, requests
are still answered for MODELSHIP_DRAIN_SECONDS) and finishes what is in flight; the
grace period covers all three (operator settings ``runtime_*_seconds``).
"""

from __future__ import annotations

from typing import Any

from modelship_operator import labels, naming
from modelship_operator.api import ModelDeployment
from modelship_operator.reconcilers import (
    RenderError,
    canonical_quantity,
    canonical_resources,
    require_subdomain,
)
from modelship_operator.settings import OperatorSettings

# --- the runtime's interface: every env name and path the pods depend on ----------------
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_REGISTRY_CREDENTIALS = (  # keys of spec.model.registry.credentialsSecret, as MLflow reads them
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)
ENV_MODEL_NAME = "MODELSHIP_MODEL_NAME"
ENV_MODEL_VERSION = "MODELSHIP_MODEL_VERSION"
ENV_REDIS_URL = "REDIS_URL"
ENV_CACHE_TTL = "MODELSHIP_CACHE_TTL_SECONDS"
ENV_API_KEYS_FILE = "MODELSHIP_API_KEYS_FILE"
ENV_DRAIN = "MODELSHIP_DRAIN_SECONDS"
ENV_SHUTDOWN_TIMEOUT = "MODELSHIP_SHUTDOWN_TIMEOUT_SECONDS"
ENV_HOME = "HOME"
ENV_SHADOW_FILE = "MODELSHIP_SHADOW_CONFIG_FILE"
ENV_SHADOW_TOKEN = "MODELSHIP_SHADOW_TOKEN"
SHADOW_TOKEN_KEY = "token"
ENV_ALLOW_PICKLE = "MODELSHIP_ALLOW_PICKLE"
ENV_LIMITS = {  # spec.runtime.limits field -> the runtime's variable
    "max_concurrency": "MODELSHIP_MAX_CONCURRENCY",
    "max_connections": "MODELSHIP_MAX_CONNECTIONS",
    "max_body_bytes": "MODELSHIP_MAX_BODY_BYTES",
    "max_rows": "MODELSHIP_MAX_ROWS",
    "max_columns": "MODELSHIP_MAX_COLUMNS",
    "max_header_bytes": "MODELSHIP_MAX_HEADER_BYTES",
    "header_timeout_seconds": "MODELSHIP_HEADER_TIMEOUT_SECONDS",
    "keep_alive_timeout_seconds": "MODELSHIP_KEEPALIVE_TIMEOUT_SECONDS",
}
ENV_MAX_BATCH_SIZE = "MODELSHIP_MAX_BATCH_SIZE"
ENV_TRUSTED_TYPES = "MODELSHIP_TRUSTED_TYPES"
ENV_MICROBATCH = "MODELSHIP_MICROBATCH"
ENV_MICROBATCH_MAX_SIZE = "MODELSHIP_MICROBATCH_MAX_SIZE"
ENV_MICROBATCH_MAX_WAIT_MS = "MODELSHIP_MICROBATCH_MAX_WAIT_MS"
ENV_LOG_LEVEL = "MODELSHIP_LOG_LEVEL"
ENV_LOG_JSON = "MODELSHIP_LOG_JSON"
ENV_ACCESS_LOG = "MODELSHIP_ACCESS_LOG"
ENV_RATE_LIMIT_REQUESTS = "MODELSHIP_RATE_LIMIT_REQUESTS"
ENV_RATE_LIMIT_PERIOD = "MODELSHIP_RATE_LIMIT_PERIOD_SECONDS"
SHADOW_MOUNT = "/etc/modelship/shadow"
SHADOW_FILE = f"{SHADOW_MOUNT}/shadow.json"  # the key of ConfigMap NAME--shadow
REDIS_SECRET_KEY = "url"  # the key of spec.cache.redisSecret, as the CRD documents it
# spec.auth.apiKeySecret is mounted whole and the runtime reads every file in the
# directory: each key of the Secret holds accepted API keys, one per line, whatever its name.
AUTH_MOUNT = "/etc/modelship/auth"
API_KEYS_FILE = AUTH_MOUNT
MODEL_DIR = "/models"
TMP_DIR = "/tmp"
RUNTIME_COMMAND = "modelship-runtime"
PYTHON_COMMAND = "python3"  # the runtime is a Python console script: its image has one
PORT_NAME = "http"
GRPC_PORT_NAME = "grpc"
ENV_GRPC_PORT = "MODELSHIP_GRPC_PORT"
ENV_GRPC_REFLECTION = "MODELSHIP_GRPC_REFLECTION"
READINESS_PATH = "/readyz"
LIVENESS_PATH = "/healthz"
METRICS_PATH = "/metrics"
# ---------------------------------------------------------------------------------------

INIT_CONTAINER = "pull-model"
CONTAINER = "runtime"
GRACE_MARGIN_SECONDS = 5


def grace_seconds(settings: OperatorSettings) -> int:
    """terminationGracePeriodSeconds: preStop, then the runtime's drain, then its wait for
    requests in flight, and a margin; the kubelet kills the pod only after all that."""
    return (settings.runtime_prestop_seconds + settings.runtime_drain_seconds
            + settings.runtime_shutdown_timeout_seconds + GRACE_MARGIN_SECONDS)


def prestop(seconds: int) -> dict[str, Any]:
    """The preStop hook that holds SIGTERM back `seconds` (an exec: every cluster runs it)."""
    return {"exec": {"command": [PYTHON_COMMAND, "-c", f"import time; time.sleep({seconds})"]}}


def model_uri(model_name: str, version: str) -> str:
    return f"models:/{model_name}/{version}"


def _secret_env(name: str, secret: str, key: str, *, optional: bool) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def literal(text: str) -> str:
    """``text`` as the kubelet must pass it on: it expands ``$(NAME)`` in a container's
    command, args and env values to other variables of the container (a Secret's among
    them), and ``$$`` is its escape for one ``$``."""
    return text.replace("$", "$$")


def _literal_env(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**e, "value": literal(e["value"])} if "value" in e else e for e in entries]


def _merge_env(ours: list[dict[str, Any]], users: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours, then the user's. The API refuses a user entry naming a variable the operator
    owns (:func:`modelship_operator.api.operator_env_problem`); should one get here all
    the same, ours wins and it is dropped.

    Server-side apply treats ``env`` as a map keyed by name, so a name may occur once.
    """
    merged: dict[str, dict[str, Any]] = {e["name"]: e for e in _literal_env(ours)}
    for entry in users:
        merged.setdefault(entry["name"], entry)
    return list(merged.values())


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def tuning_env(md: ModelDeployment, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The runtime settings spec.runtime's fields ask for: only those set (the runtime's
    defaults hold for the rest), plus MODELSHIP_ALLOW_PICKLE as the operator decides it."""
    runtime = md.spec.runtime
    values: dict[str, str] = {}
    if runtime.limits is not None:
        limits = runtime.limits.model_dump()
        for field, env in ENV_LIMITS.items():
            if limits[field] is not None:
                values[env] = _number(limits[field])
        if runtime.limits.max_rows is not None:  # the runtime's older name of the bound
            values[ENV_MAX_BATCH_SIZE] = str(runtime.limits.max_rows)
    batch = runtime.microbatch
    if batch is not None:
        if batch.enabled is not None:
            values[ENV_MICROBATCH] = _flag(batch.enabled)
        if batch.max_size is not None:
            values[ENV_MICROBATCH_MAX_SIZE] = str(batch.max_size)
        if batch.max_wait_ms is not None:
            values[ENV_MICROBATCH_MAX_WAIT_MS] = _number(batch.max_wait_ms)
    logs = runtime.logging
    if logs is not None:
        if logs.level is not None:
            values[ENV_LOG_LEVEL] = logs.level
        if logs.json_lines is not None:
            values[ENV_LOG_JSON] = _flag(logs.json_lines)
        if logs.access_log is not None:
            values[ENV_ACCESS_LOG] = _flag(logs.access_log)
    if runtime.trusted_types:
        values[ENV_TRUSTED_TYPES] = ",".join(runtime.trusted_types)
    if runtime.rate_limit is not None:
        values[ENV_RATE_LIMIT_REQUESTS] = str(runtime.rate_limit.requests)
        values[ENV_RATE_LIMIT_PERIOD] = str(runtime.rate_limit.period_seconds)
    pickle = settings.runtime_allow_pickle
    if runtime.allow_pickle is True and pickle is False:
        raise RenderError(
            "spec.runtime.allowPickle",
            "this cluster's operator refuses pickled models (setting runtime_allow_pickle); "
            "serve a skops model and set allowPickle false or leave it unset",
        )
    if runtime.allow_pickle is not None:
        pickle = runtime.allow_pickle
    if pickle is not None:
        values[ENV_ALLOW_PICKLE] = _flag(pickle)
    return [{"name": k, "value": v} for k, v in values.items()]


def storage_limit(md: ModelDeployment, settings: OperatorSettings) -> str:
    """sizeLimit of the pod's emptyDirs: spec.runtime.modelStorage's, or the operator's."""
    storage = md.spec.runtime.model_storage
    if storage is not None and storage.size_limit is not None:
        return canonical_quantity(storage.size_limit)
    return canonical_quantity(settings.runtime_model_storage_limit)


def _tracking_uri(md: ModelDeployment, settings: OperatorSettings) -> str:
    uri = md.spec.model.registry.tracking_uri or settings.default_tracking_uri
    if not uri:
        raise RenderError(
            "spec.model.registry.trackingUri",
            "no MLflow tracking URI: set spec.model.registry.trackingUri "
            "(the operator has no default)",
        )
    return uri


def _security_context(uid: int) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def render(
    md: ModelDeployment, version: str, settings: OperatorSettings
) -> dict[str, Any]:
    """The Deployment of `version`; replicas omitted when an HPA owns them."""
    spec = md.spec
    name = md.metadata.name
    model = spec.model
    registry_env: list[dict[str, Any]] = [
        {"name": ENV_TRACKING_URI, "value": _tracking_uri(md, settings)}
    ]
    if model.registry.credentials_secret:
        secret = require_subdomain(
            model.registry.credentials_secret,
            "spec.model.registry.credentialsSecret",
            "Secret name",
        )
        registry_env += [
            _secret_env(key, secret, key, optional=True) for key in ENV_REGISTRY_CREDENTIALS
        ]
    common_env = [{"name": ENV_HOME, "value": TMP_DIR}]
    serve_env: list[dict[str, Any]] = [
        {"name": ENV_MODEL_NAME, "value": model.name},
        {"name": ENV_MODEL_VERSION, "value": version},
        {"name": ENV_DRAIN, "value": str(settings.runtime_drain_seconds)},
        {"name": ENV_SHUTDOWN_TIMEOUT, "value": str(settings.runtime_shutdown_timeout_seconds)},
        # in the environment, not a flag: a runtime image from before gRPC ignores it
        {"name": ENV_GRPC_PORT, "value": str(settings.runtime_grpc_port)},
    ]
    if settings.runtime_grpc_port and not settings.runtime_grpc_reflection:
        # only when off: the runtime's default is on, and pods rendered without it stay
        serve_env.append({"name": ENV_GRPC_REFLECTION, "value": "false"})
    serve_env += tuning_env(md, settings)
    size = storage_limit(md, settings)
    volumes: list[dict[str, Any]] = [
        {"name": "models", "emptyDir": {"sizeLimit": size}},
        {"name": "tmp", "emptyDir": {"sizeLimit": size}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "models", "mountPath": MODEL_DIR},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]
    if spec.cache is not None:
        secret = require_subdomain(spec.cache.redis_secret, "spec.cache.redisSecret", "Secret name")
        serve_env += [
            _secret_env(ENV_REDIS_URL, secret, REDIS_SECRET_KEY, optional=False),
            {"name": ENV_CACHE_TTL, "value": str(spec.cache.ttl_seconds)},
        ]
    if spec.rollout.shadow is not None and spec.rollout.shadow.via == "runtime":
        # Mounted, not in env: a shadow phase starts and ends without restarting a pod.
        serve_env.append({"name": ENV_SHADOW_FILE, "value": SHADOW_FILE})
        # Stable and canary pods share a token (the Secret the operator creates): mirrored
        # requests carry it, and the canary compares only those, so a client reaching
        # the canary's pods directly cannot sway the agreement it is judged on.
        serve_env.append(_secret_env(ENV_SHADOW_TOKEN, naming.shadow_token_name(name),
                                     SHADOW_TOKEN_KEY, optional=False))
        volumes.append({"name": "shadow", "configMap": {
            "name": naming.shadow_config_name(name), "optional": True}})
        mounts.append({"name": "shadow", "mountPath": SHADOW_MOUNT, "readOnly": True})
    if spec.auth is not None:
        secret = require_subdomain(
            spec.auth.api_key_secret, "spec.auth.apiKeySecret", "Secret name"
        )
        serve_env.append({"name": ENV_API_KEYS_FILE, "value": API_KEYS_FILE})
        volumes.append({"name": "api-keys", "secret": {"secretName": secret}})
        mounts.append({"name": "api-keys", "mountPath": AUTH_MOUNT, "readOnly": True})
    # The API server drops an empty value (omitempty); leave it out so live == desired.
    user_env = [
        {k: v for k, v in e.dump().items() if not (k == "value" and v == "")}
        for e in spec.runtime.env
    ]

    image = spec.runtime.image or settings.runtime_image
    resources = canonical_resources(
        spec.runtime.resources.dump()
        if spec.runtime.resources is not None
        else settings.default_resources
    )
    pull_policy = (
        {"imagePullPolicy": spec.runtime.image_pull_policy}
        if spec.runtime.image_pull_policy
        else {}
    )
    port = settings.runtime_port
    init = {
        "name": INIT_CONTAINER,
        "image": image,
        **pull_policy,
        "command": [
            RUNTIME_COMMAND, "pull", "--model-uri", literal(model_uri(model.name, version)),
            "--dest", MODEL_DIR,
        ],
        "env": _merge_env(common_env + registry_env, user_env),
        "resources": resources,
        "securityContext": _security_context(settings.runtime_user_id),
        "volumeMounts": mounts[:2],
    }
    runtime = {
        "name": CONTAINER,
        "image": image,
        **pull_policy,
        "command": [
            RUNTIME_COMMAND, "serve", "--model-dir", MODEL_DIR, "--port", str(port),
        ],
        "ports": [{"name": PORT_NAME, "containerPort": port, "protocol": "TCP"}] + (
            [{"name": GRPC_PORT_NAME, "containerPort": settings.runtime_grpc_port,
              "protocol": "TCP"}] if settings.runtime_grpc_port else []),
        "env": _merge_env(common_env + serve_env, user_env),
        "resources": resources,
        "securityContext": _security_context(settings.runtime_user_id),
        "volumeMounts": mounts,
        "startupProbe": _probe(LIVENESS_PATH, 2, 60),
        "readinessProbe": _probe(READINESS_PATH, 5, 3),
        "livenessProbe": _probe(LIVENESS_PATH, 10, 3),
    }
    if settings.runtime_prestop_seconds > 0:
        runtime["lifecycle"] = {"preStop": prestop(settings.runtime_prestop_seconds)}
    uid = settings.runtime_user_id
    pod_labels = {
        **labels.standard(name, model.name, labels.PREDICTOR),
        labels.MODEL_VERSION: naming.label_value(version),
    }
    deployment_spec: dict[str, Any] = {}
    if spec.autoscaling is None:
        deployment_spec["replicas"] = spec.replicas
    deployment_spec.update(
        {
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": labels.version_selector(name, version)},
            # Never below the serving capacity while pods are replaced.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
            },
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                        "prometheus.io/path": METRICS_PATH,
                    },
                },
                "spec": {
                    "serviceAccountName": naming.service_name(name),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": grace_seconds(settings),
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": uid,
                        "runAsGroup": uid,
                        "fsGroup": uid,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "initContainers": [init],
                    "containers": [runtime],
                    "volumes": volumes,
                },
            },
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": naming.deployment_name(name, version),
            "labels": {
                labels.COMPONENT: labels.PREDICTOR,
                labels.MODEL_VERSION: naming.label_value(version),
            },
        },
        "spec": deployment_spec,
    }
